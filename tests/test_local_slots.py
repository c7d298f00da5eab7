"""A table with several rows per person whose engine bounds them: read without the scan.

``UNIQUE (customer_id, slot)`` with ``slot`` NOT NULL and CHECK-ed to k integer values lets
no person hold more than k rows (``connectors/row_bounds.py``); with k at most the
table's ``max_rows_per_unit`` the party reads the table without the over-full scan
(``operators/local.py`` ``with_engine_facts``). Checked: which constraints count (and
which do not), the same rows and answers as the bounded path and as plain DuckDB, and a
slot wider than the bound keeps the scan.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import duckdb
import numpy as np
import pytest
from oracle import HUGE_EPSILON, oracle_federation, plain, same, union_connection

import veilql
from veilql.connectors.base import open_connector
from veilql.connectors.duckdb import KEPT_SET, DuckDBConnector
from veilql.engine.operators.local import fetch
from veilql.engine.rewrite import compile_plan
from veilql.policies.loader import load_federation

DEMO = Path(__file__).resolve().parent.parent / "sample_data" / "demo"
SEED = "0123456789abcdef" * 2
SQL = "SELECT term_months, COUNT(*) AS n, SUM(amount) AS s FROM bank.loans " \
      "GROUP BY term_months ORDER BY term_months"


def test_duckdb_reads_slot_bounds(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE good (u BIGINT, slot INTEGER NOT NULL "
                "CHECK (slot BETWEEN 1 AND 3), UNIQUE (u, slot))")
    con.execute("CREATE TABLE nullable (u BIGINT, slot INTEGER CHECK (slot BETWEEN 1 AND 3), "
                "UNIQUE (u, slot))")  # (u, NULL) may repeat
    con.execute("CREATE TABLE real (u BIGINT, slot DOUBLE NOT NULL "
                "CHECK (slot >= 1 AND slot <= 3), UNIQUE (u, slot))")  # 1.5 is a slot too
    con.execute("CREATE TABLE either (u BIGINT, slot INTEGER NOT NULL "
                "CHECK (slot < 2 OR slot > 5), UNIQUE (u, slot))")
    con.execute("CREATE TABLE keyed (u BIGINT, slot SMALLINT CHECK (slot IN (0, 1)) "
                "CHECK (slot <> 7), id INTEGER UNIQUE, PRIMARY KEY (u, slot))")
    con.execute("CREATE TABLE loose (u BIGINT, slot INTEGER NOT NULL CHECK (slot >= 1), "
                "UNIQUE (u, slot))")
    con.close()
    with DuckDBConnector(db) as conn:
        assert conn.row_bounds("good") == {"u": 3}
        assert conn.row_bounds("GOOD") == {"u": 3}
        assert conn.unique_columns("good") == frozenset()
        for table in ("nullable", "real", "either", "loose"):
            assert conn.row_bounds(table) == {}, table
        assert conn.row_bounds("keyed") == {"u": 2, "id": 1}  # a key's slot is NOT NULL
        assert conn.unique_columns("keyed") == {"id"}


def slotted(root: Path, check: str) -> Path:
    """The demo federation with ``bank.loans`` rebuilt with a slot column (1, 2, 3 per
    person, by loan_id) under ``check`` and UNIQUE (customer_id, slot); the same rows."""
    fed = oracle_federation(DEMO, root)
    db = fed.parent / "data" / "bank.duckdb"
    con = duckdb.connect(str(db))
    try:
        cols = con.execute("SELECT column_name, data_type FROM duckdb_columns() "
                           "WHERE table_name = 'loans' ORDER BY column_index").fetchall()
        body = ", ".join(f"{c} {t}" for c, t in cols)
        names = ", ".join(c for c, _ in cols)
        con.execute("ALTER TABLE loans RENAME TO loans_old")
        con.execute(f"CREATE TABLE loans ({body}, slot INTEGER NOT NULL CHECK ({check}), "
                    "UNIQUE (customer_id, slot))")
        con.execute(f"INSERT INTO loans SELECT {names}, ROW_NUMBER() OVER "
                    "(PARTITION BY customer_id ORDER BY loan_id) FROM loans_old")
        con.execute("DROP TABLE loans_old")
    finally:
        con.close()
    return fed


def _bank(fed: Path) -> DuckDBConnector:
    f = load_federation(fed)
    conn = open_connector(f.party("bank").connector, f.root)
    assert isinstance(conn, DuckDBConnector)
    return conn


def _executed(conn: DuckDBConnector, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    parse = conn._statement
    monkeypatch.setattr(conn, "_statement", lambda sql: (seen.append(sql), parse(sql))[1])
    return seen


def test_slotted_table_is_read_without_the_scan(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    fed_path = slotted(tmp_path / "fed", "slot BETWEEN 1 AND 3")  # k = 3 = max_rows_per_unit
    fed = load_federation(fed_path)
    step = compile_plan(SQL, fed, epsilon=1.0).steps[0]
    with _bank(fed_path) as conn:
        assert conn.row_bounds("loans") == {"customer_id": 3}
        seen = _executed(conn, monkeypatch)
        fast = fetch(step, conn, SEED)
        assert "HAVING COUNT(*) > 3" not in seen[-1] and KEPT_SET not in seen[-1]
        monkeypatch.setattr(conn, "row_bounds", lambda table: {})
        slow = fetch(step, conn, SEED)
        assert f"temp.{KEPT_SET}" in seen[-1]  # bounded, by the kept over-full units
    assert np.array_equal(fast.keys, slow.keys) and np.array_equal(fast.present, slow.present)
    for name in fast.cols:
        assert np.array_equal(fast.cols[name], slow.cols[name]), name
    monkeypatch.setenv("VEIL_LEDGER_DIR", str(tmp_path / "ledgers"))
    with warnings.catch_warnings(), veilql.connect(fed, "oracle") as session:
        warnings.simplefilter("ignore")
        got = session.sql(SQL, epsilon=HUGE_EPSILON, delta=1e-6)
    want = plain(union_connection(fed), SQL)
    assert len(got.rows) == len(want)
    for g, w in zip(got.rows, want, strict=True):
        assert all(same(a, b, 0.02) for a, b in zip(g, w, strict=True)), (got.rows, want)


def test_a_slot_wider_than_the_bound_keeps_the_scan(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # Four slots allowed, three rows per person kept: a person could hold a fourth row.
    fed_path = slotted(tmp_path / "fed", "slot BETWEEN 1 AND 4")
    fed = load_federation(fed_path)
    step = compile_plan(SQL, fed, epsilon=1.0).steps[0]
    with _bank(fed_path) as conn:
        assert conn.row_bounds("loans") == {"customer_id": 4}
        seen = _executed(conn, monkeypatch)
        fetch(step, conn, SEED)
        assert f"temp.{KEPT_SET}" in seen[-1]  # bounded, by the kept over-full units
