"""``veil demo``: the sample federation, and a real cross-party DP query on it.

Run without ``-f`` it describes the bundled sample and asks the design document's
question across the bank, the payments platform and the insurer. The budget is charged
to a throw-away ledger folder (unless ``$VEIL_LEDGER_DIR`` is set), so the demo can run
any number of times without exhausting the sample analyst's budget.
"""

from __future__ import annotations

import os
import tempfile

import click

from veilql.engine.session import Session
from veilql.errors import ConfigError
from veilql.policies.discovery import bundled_sample, find_federation
from veilql.policies.loader import load_federation
from veilql.ui.catalog import describe_federation
from veilql.ui.clicommon import emit, federation_option
from veilql.ui.query import footer, format_result

DEMO_SQL = """SELECT WITH DIFFERENTIAL_PRIVACY OPTIONS (epsilon = 2.0, delta = 0)
       c.region, COUNT(*) AS loans, AVG(l.defaulted) AS default_rate
FROM bank.customers AS c
JOIN bank.loans AS l ON c.customer_id = l.customer_id
JOIN payments.accounts AS a ON a.customer_id = c.customer_id
JOIN insurer.policies AS p ON p.customer_id = c.customer_id
WHERE a.monthly_txn_count > 10 AND p.premium > 0
GROUP BY c.region
ORDER BY c.region"""


@click.command()
@federation_option
def demo(federation: str | None) -> None:
    """Describe the sample federation (or -f FILE) and run a DP query across its parties."""
    if federation:
        emit(describe_federation(load_federation(find_federation(federation))))
        return
    sample = bundled_sample()
    if sample is None:
        raise ConfigError("the bundled sample federation is not installed",
                          "reinstall VeilQL (make demo), or pass -f FEDERATION")
    fed = load_federation(sample)
    emit(describe_federation(fed))
    emit("\nDefault rate by region among insured customers with more than 10 payments a "
         "month,\nanswered on secret shares with differential privacy (analyst alice):\n")
    emit(DEMO_SQL + "\n")
    before = os.environ.get("VEIL_LEDGER_DIR")
    with tempfile.TemporaryDirectory(prefix="veil-demo-") as tmp:
        if not before:
            os.environ["VEIL_LEDGER_DIR"] = tmp
        try:
            with Session(fed, "alice") as session:
                result = session.sql(DEMO_SQL)
        finally:  # the demo's throw-away ledgers must not outlive it (in-process callers)
            if not before:
                os.environ.pop("VEIL_LEDGER_DIR", None)
        emit(format_result(result, "table"))
        emit("\n" + footer(result))
