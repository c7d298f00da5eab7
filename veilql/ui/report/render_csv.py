"""The report as one CSV table: integrity rows first, then budgets, then queries.

A spreadsheet wants one rectangle, so every row starts with ``record`` (``integrity``,
``budget`` or ``query``) and leaves the columns that do not apply empty. Integrity rows come
first, one per party, with ``status`` ``FAILED`` (or ``MISSING`` for a deleted ledger) and
the problems in ``detail`` when a check fails, so a failure is the first thing anyone opening
the file sees. Amounts are the ledger's exact values printed by ``money.fmt`` (``0.5``,
``1e-06``) when that is short, else the nearest double (the JSON keeps them exact), so every
amount is a number a spreadsheet reads. A query row's ``epsilon``/``delta`` is what it asked
for, ``spent_*`` what stands charged; ``outcome`` is released, over budget, refused,
cancelled, failed, open or mixed.

>>> from veilql.ui.report.collect import PartyIntegrity, Report
>>> rep = Report("demo", "2026-01-01T00:00:00+00:00", {},
...              (PartyIntegrity("bank", "b.jsonl", True, False, 3, 2, "edited"),), (), ())
>>> print(render_csv(rep).splitlines()[1])
integrity,,,bank,,FAILED,,,,,,,,,,,,broken at entry 2: edited,,,,,,
"""

from __future__ import annotations

import csv
import io
from fractions import Fraction

from veilql.ui.report.collect import Report
from veilql.ui.report.text import chain_status, readable

COLUMNS: tuple[str, ...] = (
    "record", "time", "analyst", "party", "query_id", "status", "epsilon", "delta",
    "budget_epsilon", "budget_delta", "spent_epsilon", "spent_delta", "remaining_epsilon",
    "remaining_delta", "queries", "verified", "reason", "detail", "outcome", "purpose",
    "identity", "tables", "columns", "mechanism",
)


def amount(value: Fraction | None) -> str:
    """An amount as a spreadsheet number (``text.readable``); empty for unknown."""
    return readable(value)


def rows(report: Report) -> list[dict[str, str]]:
    """The CSV rows as dicts keyed by ``COLUMNS``."""
    out: list[dict[str, str]] = []
    for i in report.integrity:
        status = chain_status(i)
        detail = i.summary()
        if not i.ok and (not i.problems or i.problems[0].kind == "chain"):
            detail = f"broken at entry {i.bad_index}: " + "; ".join(
                [p.message for p in i.problems] or [i.problem or ""])
        elif not i.ok:
            detail = "; ".join(p.message for p in i.problems)
        out.append({"record": "integrity", "party": i.party, "status": status,
                    "queries": "", "detail": detail})
    for b in report.budgets:
        out.append({
            "record": "budget", "analyst": b.analyst, "party": b.party,
            "budget_epsilon": amount(b.budget_epsilon), "budget_delta": amount(b.budget_delta),
            "spent_epsilon": amount(b.spent_epsilon), "spent_delta": amount(b.spent_delta),
            "remaining_epsilon": amount(b.remaining_epsilon),
            "remaining_delta": amount(b.remaining_delta), "queries": str(b.queries),
            "verified": "yes" if b.verified else "NO",
        })
    for q in report.queries:
        out.append({
            "record": "query", "time": q.time, "analyst": q.analyst,
            "party": ";".join(q.parties), "query_id": q.query_id, "status": q.status,
            "epsilon": amount(q.epsilon), "delta": amount(q.delta),
            "spent_epsilon": amount(q.charged_epsilon), "spent_delta": amount(q.charged_delta),
            "verified": "yes" if q.verified else "NO", "reason": "; ".join(q.reasons),
            "detail": q.sql, "outcome": q.outcome, "purpose": q.purpose,
            "identity": q.identity or "", "tables": ";".join(q.tables),
            "columns": ";".join(q.columns), "mechanism": q.mechanism,
        })
    return out


def render_csv(report: Report) -> str:
    """The report as CSV text with a header row (``\\n`` line endings)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows(rows(report))
    return buf.getvalue()
