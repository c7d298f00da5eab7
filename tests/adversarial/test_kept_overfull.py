"""Attack: learn whether some person holds more rows than the bound from how a party runs.

A DuckDB file's connector finds a bounded table's over-full units once and keeps them
(``DuckDBConnector.overfull_table``). The tempting shortcut, skipping the kept table when
it is empty, would make a person's extra rows visible in what the party runs (and so in
the step durations the analyst sees). The hostile analyst runs the same queries on two
federations that differ only in one person having five loans more than the bound; every
statement the bank's engine runs, the kept tables it makes and the released shapes must
be the same. Checked to fail under that shortcut (a temporary mutation).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import duckdb
import pytest
from oracle import HUGE_EPSILON, oracle_federation

import veilql
from veilql.connectors import duckdb as duckdb_connector
from veilql.policies.loader import load_federation

DEMO = Path(__file__).resolve().parents[2] / "sample_data" / "demo"
QUERIES = ["SELECT term_months, SUM(amount) AS s FROM bank.loans GROUP BY term_months",
           "SELECT COUNT(*) AS n FROM bank.loans WHERE amount > 1000",
           "SELECT term_months, COUNT(*) AS n FROM bank.loans GROUP BY term_months"]


def _federation(root: Path, over_full: bool) -> Path:
    fed = oracle_federation(DEMO, root)
    if over_full:  # one person gets five loans more than the three the policy keeps
        con = duckdb.connect(str(fed.parent / "data" / "bank.duckdb"))
        con.execute("INSERT INTO loans SELECT loans.* REPLACE (loan_id + 1000000 * k AS "
                    "loan_id) FROM loans, range(1, 6) AS r(k) WHERE customer_id = "
                    "(SELECT MIN(customer_id) FROM loans)")
        con.close()
    return fed


def _view(root: Path, over_full: bool, monkeypatch: pytest.MonkeyPatch) -> dict:
    """What differs from outside: the bank's statements, kept tables and the answers'
    shapes."""
    statements: list[str] = []
    kept: list[str] = []
    real_statement = duckdb_connector.DuckDBEngine._statement
    real_keep = duckdb_connector.DuckDBConnector._keep_overfull

    def statement(self, sql):  # type: ignore[no-untyped-def]
        if "loans" in sql:
            statements.append(sql.replace(self_seed(sql), "<seed>"))
        return real_statement(self, sql)

    def keep(self, name, table, unit, m):  # type: ignore[no-untyped-def]
        kept.append(f"{name}:{table}:{unit}:{m}")
        return real_keep(self, name, table, unit, m)

    monkeypatch.setattr(duckdb_connector.DuckDBEngine, "_statement", statement)
    monkeypatch.setattr(duckdb_connector.DuckDBConnector, "_keep_overfull", keep)
    monkeypatch.setenv("VEIL_LEDGER_DIR", str(root / "ledgers"))
    fed = load_federation(_federation(root / "fed", over_full))
    shapes = []
    with veilql.connect(fed, "oracle") as session, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for sql in QUERIES * 2:  # each twice: the second run reads what the first kept
            got = session.sql(sql, epsilon=HUGE_EPSILON, delta=0)
            shapes.append((tuple(got.columns), len(got.rows)))
    monkeypatch.undo()
    return {"statements": statements, "kept": kept, "shapes": shapes}


def self_seed(sql: str) -> str:
    """The party's secret seed inside ``sql`` (it differs between the two copies)."""
    at = sql.find(":loans'")
    return sql[sql.rfind("'", 0, at) + 1:at] if at > 0 else "\0"


def test_an_over_full_person_changes_nothing_the_party_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    without = _view(tmp_path / "without", False, monkeypatch)
    with_one = _view(tmp_path / "with", True, monkeypatch)
    assert without["kept"] == with_one["kept"] and len(without["kept"]) == 1  # found once
    assert without["statements"] == with_one["statements"] and without["statements"]
    assert all("temp.__veil_over0" in s for s in without["statements"])
    assert without["shapes"] == with_one["shapes"]
