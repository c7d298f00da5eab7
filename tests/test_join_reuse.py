"""A repeated query over the same join reuses it; a changed table invalidates the reuse."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import duckdb
import pytest
from oracle import HUGE_EPSILON, oracle_federation

import veilql
import veilql.engine.operators.secure_mode as secure_mode
from veilql.engine.dp import LargeEpsilonWarning

DEMO = Path(__file__).resolve().parent.parent / "sample_data" / "demo"
SQL = ("SELECT COUNT(*) AS n, SUM(l.amount) AS total FROM bank.loans l "
       "JOIN insurer.policies p ON l.customer_id = p.customer_id WHERE p.open_claim = 1")


def test_repeated_query_reuses_join_until_a_table_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = secure_mode.join_stage

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(secure_mode, "join_stage", counting)  # the join loop's own name
    fed = oracle_federation(DEMO, tmp_path / "fed")
    csv = tmp_path / "fed" / "data" / "insurer" / "policies.csv"
    bank = duckdb.connect(str(tmp_path / "fed" / "data" / "bank.duckdb"), read_only=True)
    person, loans = bank.execute(
        f"SELECT customer_id, COUNT(*) FROM loans WHERE customer_id NOT IN "
        f"(SELECT customer_id FROM read_csv_auto('{csv}')) GROUP BY 1 ORDER BY 1 LIMIT 1"
    ).fetchone()
    bank.close()
    with warnings.catch_warnings(), veilql.connect(fed, "oracle") as session:
        warnings.simplefilter("ignore", LargeEpsilonWarning)
        first = session.sql(SQL, epsilon=HUGE_EPSILON, delta=0).rows
        stages = len(calls)
        assert stages == 3  # one stage, run at each of the three compute parties
        again = session.sql(SQL, epsilon=HUGE_EPSILON, delta=0).rows
        assert again == first and len(calls) == stages  # reused: no new join
        session.sql(SQL, epsilon=0.5, delta=0)  # another epsilon: same join
        assert len(calls) == stages

        # a customer with loans gets an open claim at the insurer: the table changes
        lines = csv.read_text().splitlines()
        header = lines[0].split(",")
        row = dict.fromkeys(header, "0")
        row.update(customer_id=str(person), product="auto", premium="100.00", open_claim="1",
                   claims_amount="10.00")
        csv.write_text("\n".join([*lines, ",".join(row[h] for h in header)]) + "\n")
        stamp = time.time() + 5
        os.utime(csv, (stamp, stamp))
        changed = session.sql(SQL, epsilon=HUGE_EPSILON, delta=0).rows
        assert len(calls) == 2 * stages  # recomputed
        assert changed[0][0] == first[0][0] + loans
