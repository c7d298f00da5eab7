"""A table whose unit the party's engine keeps unique is read without the over-full scan.

The party decides at run time from its engine's catalog (a one-column PRIMARY KEY or
UNIQUE constraint, ``Connector.unique_columns``) and reads the same rows as the bounded SQL
would (``operators/local.py`` ``with_engine_facts``, ``bound_contributions.engine_sql``).
Checked here: the fast path returns the same rows and answers as the bounded path and as
plain DuckDB at a huge epsilon; a table without a constraint, or with one on another
column, is still bounded (over-full units keep ``max_rows_per_unit`` rows); and, as an
attacker would probe it, which SQL a party runs depends on its schema only, never on
whether some person has more rows than the bound.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import duckdb
import numpy as np
import pytest
from oracle import HUGE_EPSILON, oracle_federation, plain, same, union_connection

import veilql
from veilql.connectors.base import Connector, open_connector
from veilql.connectors.duckdb import KEPT_COLUMN, KEPT_SET, DuckDBConnector
from veilql.engine.operators import local as local_ops
from veilql.engine.operators.local import fetch, with_engine_facts
from veilql.engine.rewrite import compile_plan
from veilql.engine.rewrite.bound_contributions import engine_sql
from veilql.policies.loader import load_federation

DEMO = Path(__file__).resolve().parent.parent / "sample_data" / "demo"
SEED = "0123456789abcdef" * 2

LOCAL = [
    "SELECT region, COUNT(*) AS n FROM bank.customers GROUP BY region ORDER BY region",
    "SELECT region, COUNT(*) AS n, SUM(income) AS s, AVG(income) AS a FROM bank.customers "
    "WHERE age > 40 GROUP BY region ORDER BY region",
    "SELECT COUNT(*) AS n, AVG(age) AS a FROM bank.customers WHERE region = 'north'",
    # a local join at the bank: customers (keyed) beside loans (three rows per person)
    "SELECT c.region, COUNT(*) AS n, SUM(l.amount) AS s FROM bank.customers c JOIN "
    "bank.loans l ON c.customer_id = l.customer_id GROUP BY c.region ORDER BY c.region",
]
SECURE = [  # the bank's keyed table as one side of a secure join
    "SELECT c.region, COUNT(*) AS n, SUM(p.premium) AS s FROM bank.customers c JOIN "
    "insurer.policies p ON c.customer_id = p.customer_id GROUP BY c.region ORDER BY c.region",
]


def declare_keys(db: Path, keys: dict[str, str], extra: dict[str, str] | None = None) -> None:
    """Rebuild the DuckDB file ``db`` with ``keys[table]`` declared its PRIMARY KEY (same
    rows); ``extra[table]``: SQL run after the copy (e.g. more rows)."""
    src = db.with_name(db.name + ".orig")
    db.rename(src)
    con = duckdb.connect(str(db))
    try:
        con.execute(f"ATTACH '{src}' AS src (READ_ONLY)")
        tables = [t for (t,) in con.execute("SELECT table_name FROM duckdb_tables() WHERE "
                                            "database_name = 'src'").fetchall()]
        for table in tables:
            cols = con.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE "
                               f"database_name = 'src' AND table_name = '{table}' "
                               "ORDER BY column_index").fetchall()
            body = ", ".join(f"{c} {t}" + (" PRIMARY KEY" if keys.get(table) == c else "")
                             for c, t in cols)
            con.execute(f"CREATE TABLE {table} ({body})")
            con.execute(f"INSERT INTO {table} SELECT * FROM src.{table}")
        con.execute("DETACH src")
        for sql in (extra or {}).values():
            con.execute(sql)
    finally:
        con.close()
    src.unlink()


@pytest.fixture(scope="module")
def feds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo federation as shipped (no constraint) and with customers keyed."""
    root = tmp_path_factory.mktemp("local-fast")
    out = {"bounded": oracle_federation(DEMO, root / "bounded"),
           "pk": oracle_federation(DEMO, root / "pk")}
    declare_keys(out["pk"].parent / "data" / "bank.duckdb", {"customers": "customer_id"})
    return out


def _bank(fed: Path) -> DuckDBConnector:
    f = load_federation(fed)
    conn = open_connector(f.party("bank").connector, f.root)
    assert isinstance(conn, DuckDBConnector)
    return conn


def _executed(conn: Connector, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every SQL text the connector hands its engine, recorded."""
    seen: list[str] = []
    # Every query of a DuckDB connector (``_execute``'s Arrow path and ``run_rows``'s rows)
    # runs a statement parsed by ``_statement``; other engines run ``_execute``.
    name = "_statement" if isinstance(conn, DuckDBConnector) else "_execute"
    inner = getattr(conn, name)
    monkeypatch.setattr(conn, name, lambda sql: (seen.append(sql), inner(sql))[1])
    return seen


def test_duckdb_reads_one_column_keys(tmp_path: Path) -> None:
    db = tmp_path / "k.duckdb"
    con = duckdb.connect(str(db))
    con.execute('CREATE TABLE a (id BIGINT PRIMARY KEY, y INT UNIQUE, z INT, w INT, '
                'UNIQUE (z, w))')
    con.execute('CREATE TABLE "Mixed" ("Id" BIGINT PRIMARY KEY, v INT)')
    con.execute("CREATE TABLE b (id BIGINT, v INT)")
    con.execute("CREATE VIEW keyed AS SELECT * FROM a")
    con.close()
    with DuckDBConnector(db) as conn:
        assert conn.unique_columns("a") == {"id", "y"}  # not the two-column (z, w)
        assert conn.unique_columns("mixed") == {"id"}
        assert conn.unique_columns("b") == frozenset()
        assert conn.unique_columns("keyed") == frozenset()  # a view declares nothing


def test_only_bounded_sources_of_keyed_tables_are_rewritten(feds: dict[str, Path]) -> None:
    fed = load_federation(feds["bounded"])
    sql = compile_plan(LOCAL[3], fed, epsilon=1.0).steps[0].sql
    assert sql.count("HAVING COUNT(*) > 1") == 2 and sql.count("HAVING COUNT(*) > 3") == 2
    fast = engine_sql(sql, lambda table, unit: table == "customers")
    # customers read as its rows with a unit; loans still bounded to three rows per person
    assert "HAVING COUNT(*) > 1" not in fast and fast.count("HAVING COUNT(*) > 3") == 2
    assert engine_sql(sql, lambda table, unit: False) == sql
    # a source that is not exactly the bounded shape is left alone
    odd = sql.replace("__rn <= 1", "__rn <= 2")
    assert "HAVING COUNT(*) > 1" in engine_sql(odd, lambda table, unit: True)


@pytest.mark.parametrize("sql", [*LOCAL, *SECURE])
def test_fast_path_reads_the_rows_the_bounded_path_reads(feds: dict[str, Path], sql: str,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    fed = load_federation(feds["pk"])
    step = compile_plan(sql, fed, epsilon=1.0).step("bank")
    with _bank(feds["pk"]) as conn:
        seen = _executed(conn, monkeypatch)
        fast = fetch(step, conn, SEED)
        assert "HAVING COUNT(*) > 1" not in seen[-1]  # customers: no over-full scan
        monkeypatch.setattr(conn, "row_bounds", lambda table: {})
        slow = fetch(step, conn, SEED)
        assert f"temp.{KEPT_SET}" in seen[-1]  # still bounded, by the kept over-full units
    assert np.array_equal(fast.keys, slow.keys)
    assert np.array_equal(fast.present, slow.present)
    assert fast.cols.keys() == slow.cols.keys()
    for name in fast.cols:
        assert np.array_equal(fast.cols[name], slow.cols[name]), name


@pytest.mark.parametrize("kind", ["pk", "bounded"])
def test_answers_equal_plain_duckdb(feds: dict[str, Path], kind: str, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VEIL_LEDGER_DIR", str(tmp_path))
    fed = load_federation(feds[kind])
    con = union_connection(fed)
    with warnings.catch_warnings(), veilql.connect(fed, "oracle") as session:
        warnings.simplefilter("ignore")
        for sql in [*LOCAL, *SECURE]:
            got = session.sql(sql, epsilon=HUGE_EPSILON, delta=1e-6)
            want = plain(con, sql)
            keys = {w[0] for w in want}
            rows = [g for g in got.rows if "GROUP BY" not in sql or g[0] in keys]
            assert len(rows) == len(want), (sql, got.rows, want)
            for g, w in zip(rows, want, strict=True):
                for a, b in zip(g, w, strict=True):
                    assert same(a, b, 0.02), (sql, got.rows, want)


def test_over_full_units_are_still_bounded(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """loans at one row per person, keyed on loan_id (not the unit): still bounded, so
    COUNT(*) counts each person once, as plain DuckDB over one row per person does."""
    fed_path = oracle_federation(DEMO, tmp_path / "fed")
    policy = fed_path.parent / "policies" / "bank.toml"
    text = policy.read_text()
    start = text.index("[tables.loans]")
    cut = text.index("max_rows_per_unit = 3", start)
    policy.write_text(text[:cut] + "max_rows_per_unit = 1" + text[cut + 21:])
    declare_keys(fed_path.parent / "data" / "bank.duckdb", {"loans": "loan_id"})
    monkeypatch.setenv("VEIL_LEDGER_DIR", str(tmp_path / "ledgers"))
    fed = load_federation(fed_path)
    with _bank(fed_path) as conn:
        assert conn.unique_columns("loans") == {"loan_id"}
    people, rows = duckdb.connect(str(fed_path.parent / "data" / "bank.duckdb"),
                                  read_only=True).execute(
        "SELECT COUNT(DISTINCT customer_id), COUNT(*) FROM loans").fetchone()
    assert rows > people  # some people have several loans: the bound has work to do
    with warnings.catch_warnings(), veilql.connect(fed, "oracle") as session:
        warnings.simplefilter("ignore")
        got = session.sql("SELECT COUNT(*) AS n FROM bank.loans", epsilon=HUGE_EPSILON,
                          delta=1e-6)
    assert got.rows[0][0] == pytest.approx(people, abs=0.5)


def test_sql_run_depends_on_the_schema_not_on_the_rows(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    """The attack: time the query to learn whether some person has more rows than the
    bound. The party must run the same SQL for neighbouring federations (one person with
    one loan more), so that any difference in time comes from the rows' work alone, not
    from a shortcut taken only when no unit is over-full."""
    texts = []
    for name, extra in (("without", None),
                        ("with", {"loans": "INSERT INTO loans SELECT * REPLACE "
                                           "(loan_id + 1000000 AS loan_id) FROM loans "
                                           "WHERE customer_id = (SELECT MIN(customer_id) "
                                           "FROM loans)"})):
        fed_path = oracle_federation(DEMO, tmp_path / name)
        declare_keys(fed_path.parent / "data" / "bank.duckdb", {"customers": "customer_id"},
                     extra)
        fed = load_federation(fed_path)
        with _bank(fed_path) as conn:
            seen = _executed(conn, monkeypatch)
            for sql in (LOCAL[0], LOCAL[3]):
                plan = compile_plan(sql, fed, epsilon=1.0)
                fetch(plan.steps[0], conn, SEED, reduce=plan)
            texts.append(list(seen))
    assert texts[0] == texts[1]
    assert all(f"temp.{KEPT_SET}" in t for t in texts[0][1:])  # loans: bounded


def test_rewritten_sql_is_kept_per_step(feds: dict[str, Path],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    fed = load_federation(feds["pk"])
    step = compile_plan(LOCAL[0], fed, epsilon=1.0).steps[0]
    with _bank(feds["pk"]) as conn:
        first = with_engine_facts(step, conn)
        assert first.sql != step.sql and "HAVING" not in first.sql
        assert any(k[0] == step.sql for k in local_ops._FAST)
        assert with_engine_facts(step, conn).sql == first.sql
    with _bank(feds["bounded"]) as conn:  # the same step where no key is declared
        kept = with_engine_facts(step, conn)
        assert f"temp.{KEPT_SET}" in kept.sql and "HAVING" not in kept.sql
        monkeypatch.setattr(conn, "dialect", "postgres")  # another engine: the plan's SQL
        assert with_engine_facts(step, conn) is step


def test_demo_copy_is_untouched(feds: dict[str, Path]) -> None:
    """The fixtures rebuild copies; the shipped demo keeps no constraint."""
    with _bank(DEMO / "federation.toml") as conn:
        assert conn.unique_columns("customers") == frozenset()


@pytest.mark.parametrize("sql,expected", [
    (LOCAL[0], True), (LOCAL[1], True),
    (LOCAL[3], False),  # a local join, loans ranked
    ("SELECT branch, COUNT(*) AS n FROM bank.customers GROUP BY branch", False),  # private keys
    ("SELECT COUNT(DISTINCT customer_id) AS n FROM bank.customers", False),
])
def test_memory_is_handed_back_unless_the_step_is_light(feds: dict[str, Path], sql: str,
                                                        expected: bool,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """A light step (one table read without a scan for over-full units: keyed, or with the
    units kept by its DuckDB file connector; public groups, no COUNT(DISTINCT)) skips the
    hand-back of DuckDB's memory; every other one still hands it back. Decided from the
    plan and the schema."""
    released: list[int] = []
    monkeypatch.setattr(local_ops, "release_engine_memory", lambda conn: released.append(1))
    for kind in ("pk", "bounded"):
        fed = load_federation(feds[kind])
        plan = compile_plan(sql, fed, epsilon=1.0, delta=1e-6)
        released.clear()
        with _bank(feds[kind]) as conn:
            assert local_ops.light(with_engine_facts(plan.steps[0], conn), plan) is expected
            fetch(plan.steps[0], conn, SEED, reduce=plan)
        assert bool(released) is not expected, (kind, released)


def test_session_plans_a_repeated_query_once(feds: dict[str, Path]) -> None:
    from veilql.engine.dp import LargeEpsilonWarning
    from veilql.errors import QueryError

    with veilql.connect(feds["pk"], "oracle") as session:
        a = session.plan(LOCAL[0], epsilon=1.0)
        assert session.plan(LOCAL[0], epsilon=1.0) is a
        assert session.plan(LOCAL[0], epsilon=0.5) is not a
        for _ in range(2):  # a refusal is not kept: it is raised again
            with pytest.raises(QueryError):
                session.plan("SELECT loan_id FROM bank.loans", epsilon=1.0)
        for _ in range(2):  # the warning of a large epsilon comes with a kept plan too
            with pytest.warns(LargeEpsilonWarning):
                session.plan(LOCAL[0], epsilon=50.0)


def test_postgres_reads_enforced_one_column_keys(feds: dict[str, Path],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL: PRIMARY KEY, UNIQUE and plain unique indexes count; a partial, an
    expression, a two-column or a mixed-case one does not. The bank's customers keyed
    there read the same rows with and without the scan."""
    pg = pytest.importorskip("pg_fixtures")
    url, why = pg.server_url()
    if url is None:
        pytest.skip(why)
    from veilql.connectors.postgres import PostgresConnector

    with pg.fresh_schema(url) as (con, schema):
        con.execute(f"CREATE TABLE {schema}.a (id bigint PRIMARY KEY, y int UNIQUE, z int, "
                    "w int, v int, UNIQUE (z, w))")
        con.execute(f"CREATE UNIQUE INDEX ON {schema}.a (v) WHERE v > 0")
        con.execute(f"CREATE TABLE {schema}.b (id bigint, k int)")
        con.execute(f"CREATE UNIQUE INDEX ON {schema}.b (k) INCLUDE (id)")
        con.execute(f"CREATE UNIQUE INDEX ON {schema}.b ((id + 1))")
        con.execute(f'CREATE TABLE {schema}."Mixed" ("Id" bigint PRIMARY KEY)')
        con.execute(f"CREATE VIEW {schema}.keyed AS SELECT * FROM {schema}.a")
        pg.load_party(con, schema, feds["bounded"], "bank")
        con.execute(f"ALTER TABLE {schema}.customers ADD PRIMARY KEY (customer_id)")
        sep = "&" if "?" in url else "?"
        with PostgresConnector(f"{url}{sep}schema={schema}") as conn:
            assert conn.unique_columns("a") == {"id", "y"}
            assert conn.unique_columns("b") == {"k"}
            assert conn.unique_columns("Mixed") == frozenset()
            assert conn.unique_columns("keyed") == frozenset()
            assert conn.unique_columns("customers") == {"customer_id"}
            assert conn.unique_columns("loans") == frozenset()
            step = compile_plan(LOCAL[3], load_federation(feds["bounded"]),
                                epsilon=1.0).steps[0]
            seen = _executed(conn, monkeypatch)
            fast = fetch(step, conn, SEED)
            assert "> 1" not in seen[-1] and "> 3" in seen[-1]  # customers unranked only
            monkeypatch.setattr(conn, "row_bounds", lambda table: {})
            slow = fetch(step, conn, SEED)
            assert "> 1" in seen[-1]
    assert np.array_equal(fast.keys, slow.keys) and np.array_equal(fast.present, slow.present)
    for name in fast.cols:
        assert np.array_equal(fast.cols[name], slow.cols[name]), name


def test_a_node_keeps_plans_per_analyst(feds: dict[str, Path]) -> None:
    """One analyst's repeated SQL is planned once; another analyst asking the same SQL gets
    a fresh compile, so the time a node takes shows nothing of others' queries."""
    from veilql.engine.plan_cache import PlanCache

    cache = PlanCache(load_federation(feds["pk"]), size=2)
    a = cache.compile(LOCAL[0], epsilon=1.0, analyst="alice")
    assert cache.compile(LOCAL[0], epsilon=1.0, analyst="alice") is a
    b = cache.compile(LOCAL[0], epsilon=1.0, analyst="bob")
    assert b is not a and b.to_s() == a.to_s()
    cache.compile(LOCAL[1], epsilon=1.0, analyst="bob")  # the third plan: alice's is dropped
    assert cache.compile(LOCAL[0], epsilon=1.0, analyst="alice") is not a


@pytest.mark.parametrize("party,sql", [
    *(("bank", q) for q in [*LOCAL, *SECURE]),
    ("payments", "SELECT segment, SUM(monthly_txn_amount) AS s FROM payments.accounts "
                 "GROUP BY segment"),
    ("insurer", SECURE[0]),
])
def test_duckdb_finds_over_full_units_once_with_the_same_rows(feds: dict[str, Path],
                                                              party: str, sql: str) -> None:
    """On a DuckDB engine a table still bounded finds its over-full units once: a DuckDB
    file's connector once for all queries (a temporary table it keeps), CSV and Parquet
    once per query in a materialized WITH; the rows of the plan's own SQL, row for row."""
    fed = load_federation(feds["bounded"])
    step = compile_plan(sql, fed, epsilon=1.0).step(party)
    with open_connector(fed.party(party).connector, fed.root) as conn:
        mine = with_engine_facts(step, conn)
        kept = isinstance(conn, DuckDBConnector)
        assert ("AS MATERIALIZED" in mine.sql) is not kept, mine.sql
        assert (f"temp.{KEPT_SET}" in mine.sql) is kept and "AS MATERIALIZED" not in step.sql
        a = conn.run(local_ops.bounded_sql(step, SEED)).to_pylist()
        b = conn.run(local_ops.bounded_sql(mine, SEED)).to_pylist()
    assert sorted(map(str, a)) == sorted(map(str, b)) and a


@pytest.mark.parametrize("kind,lo,hi,decimals", [
    ("DECIMAL(12,2)", "0", "500000", 2), ("DOUBLE", "-2.5", "0.145", 2),
    ("INTEGER", "18", "100", 0), ("BIGINT", "-5", "5", 1), ("DOUBLE", "0", "1", 0),
])
def test_case_clamp_gives_the_values_of_least_greatest(kind: str, lo: str, hi: str,
                                                       decimals: int) -> None:
    """DuckDB's CASE clamp (``_case_clamps``) against the plan's LEAST/GREATEST on NULLs,
    NaN, both bounds, values beyond them and halves, in several column types."""
    from veilql.engine.plan.nodes import LocalColumn
    from veilql.engine.rewrite.bound_contributions import _column_sql

    col = LocalColumn("v0", "value", "t.x", bounds=(float(lo), float(hi)), decimals=decimals)
    sql = f"SELECT t.id AS __unit, {_column_sql(col)} AS v0 FROM t"
    fast = engine_sql(sql, lambda table, unit: False, materialize=True)
    assert "LEAST" not in fast and "LEAST" in sql
    con = duckdb.connect()
    con.execute(f"CREATE TABLE t (id INTEGER, x {kind})")
    values = ["NULL", "0", "1", "-1", "0.125", "0.145", "-2.5", "-3", "17", "18", "100",
              "101", "499999.995", "500000", "600000", "2.5", "-0.5", "4.5"]
    if kind == "DOUBLE":
        values += ["'nan'", "'inf'", "'-inf'", "1e300"]
    for i, v in enumerate(values):
        try:
            con.execute(f"INSERT INTO t VALUES ({i}, {v})")
        except duckdb.Error:
            continue  # a value the type cannot hold
    assert con.execute(sql).fetchall() == con.execute(fast).fetchall()


def test_a_histogram_step_still_hands_memory_back(feds: dict[str, Path]) -> None:
    fed = load_federation(feds["pk"])
    plan = compile_plan("SELECT MEDIAN(age) AS m FROM bank.customers", fed, epsilon=1.0,
                        delta=1e-6)
    with _bank(feds["pk"]) as conn:
        assert not local_ops.light(with_engine_facts(plan.steps[0], conn), plan)


def test_a_duckdb_file_keeps_its_over_full_units_once(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """One person with five loans more than the bound: the file's connector finds the
    over-full units once per (table, unit, bound), in a temporary table of its own, and
    every query reads the same rows as the plan's own SQL (the scan per query), row for
    row, the over-full person's rows chosen by the same keyed hash."""
    fed_path = oracle_federation(DEMO, tmp_path / "fed")
    extra = {"loans": "INSERT INTO loans SELECT loans.* REPLACE (loan_id + 1000000 * k AS loan_id) "
                      "FROM loans, range(1, 6) AS r(k) WHERE customer_id = (SELECT "
                      "MIN(customer_id) FROM loans)"}
    declare_keys(fed_path.parent / "data" / "bank.duckdb", {}, extra)
    fed = load_federation(fed_path)
    step = compile_plan("SELECT term_months, SUM(amount) AS s FROM bank.loans "
                        "GROUP BY term_months", fed, epsilon=1.0).steps[0]
    with _bank(fed_path) as conn:
        seen = _executed(conn, monkeypatch)
        mine = with_engine_facts(step, conn)
        assert f"temp.{KEPT_SET}0" in mine.sql and "HAVING" not in mine.sql
        over = conn.run(f"SELECT COUNT(*) AS n FROM temp.{KEPT_SET}0").to_pylist()
        assert over == [{"n": 1}]  # the one person with more than three loans
        a = conn.run(local_ops.bounded_sql(step, SEED)).to_pylist()
        b = conn.run(local_ops.bounded_sql(mine, SEED)).to_pylist()
        assert sorted(map(str, a)) == sorted(map(str, b)) and len(a) < len(
            conn.run("SELECT * FROM loans").to_pylist())
        for _ in range(2):  # later queries: no scan, the same kept table
            fetch(step, conn, SEED)
            assert "HAVING" not in seen[-1] and f"temp.{KEPT_SET}0" in seen[-1]
        assert list(conn._overfull.values()) == [f"{KEPT_SET}0"]


def test_kept_over_full_units_follow_a_rewritten_file(tmp_path: Path) -> None:
    """The file's bytes changed under the open connector all the same (another tool, not
    DuckDB's writer, which its lock keeps out): the kept units are found again before the
    next query reads them. Simulated by a stale fingerprint and a kept table emptied by
    hand: the next query reads the units found again."""
    db = tmp_path / "t.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE t AS SELECT range % 5 AS id, range AS v FROM range(12)")
    con.close()
    with DuckDBConnector(db) as conn:
        kept = conn.overfull_table("t", "id", 2)
        assert kept == (f"temp.{KEPT_SET}0", KEPT_COLUMN)
        count = f"SELECT COUNT(*) AS n FROM temp.{KEPT_SET}0"
        assert conn.run(count).to_pylist() == [{"n": 2}]  # ids 0 and 1 have three rows
        conn._kept_version = "stale"  # as if the file had changed
        conn._con.execute(f"DELETE FROM temp.{KEPT_SET}0")  # a wrong set, to be replaced
        assert conn.run(count).to_pylist() == [{"n": 2}]  # found again before reading
        assert conn._kept_version != "stale"
        assert conn.overfull_table("t", "id", 2) == kept  # the same table, not a second one
        assert conn.overfull_table("T", "ID", 3) == (f"temp.{KEPT_SET}1", KEPT_COLUMN)
        assert conn.overfull_table("missing", "id", 2) is None
