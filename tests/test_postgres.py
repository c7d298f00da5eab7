"""The PostgreSQL connector against a real server: catalog and types, read-only sessions,
schema pinning, table versions, and the whole engine answering the same with the insurer
(or the bank) living in PostgreSQL as with DuckDB.

Skipped, with the reason, when no server is reachable (see ``pg_fixtures.server_url``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from test_oracle import QUERIES as ORACLE_QUERIES

psycopg = pytest.importorskip("psycopg")

from oracle import HUGE_EPSILON, oracle_federation  # noqa: E402
from pg_fixtures import fresh_schema, load_party, server_url  # noqa: E402

import veilql  # noqa: E402
from veilql.connectors.base import ColumnInfo, ConnectorError, open_connector  # noqa: E402
from veilql.connectors.postgres import PostgresConnector, redact  # noqa: E402
from veilql.engine.dp import LargeEpsilonWarning  # noqa: E402
from veilql.errors import ConfigError, ExitCode, QueryError  # noqa: E402

URL, WHY = server_url()
if URL is None:
    pytest.skip(WHY, allow_module_level=True)
assert URL is not None

DEMO = Path(__file__).resolve().parent.parent / "sample_data" / "demo"

_TYPES_DDL = """
CREATE TABLE {s}.kinds (
    id bigint, small smallint, num integer, money numeric(12,2), wide numeric,
    ratio double precision, name text, code varchar(8), flag boolean, day date
);
INSERT INTO {s}.kinds VALUES
    (1, 2, 3, 784.99, 2.5, 0.25, 'north', 'A1', true, '2024-01-02'),
    (2, NULL, NULL, -0.01, NULL, NULL, NULL, NULL, NULL, NULL);
CREATE VIEW {s}.positive AS SELECT id, money FROM {s}.kinds WHERE money > 0;
"""


@pytest.fixture(scope="module")
def kinds() -> Iterator[tuple[Any, str]]:
    """A schema with one table of every mapped type and a view; (admin connection, name)."""
    assert URL is not None
    with fresh_schema(URL) as (con, schema):
        con.execute(_TYPES_DDL.format(s=schema))
        yield con, schema


def _url(schema: str) -> str:
    assert URL is not None
    sep = "&" if "?" in URL else "?"
    return f"{URL}{sep}schema={schema}"


def test_catalog_maps_types_to_duckdb_spelling(kinds: tuple[Any, str]) -> None:
    _, schema = kinds
    with open_connector(_url(schema), Path("/")) as conn:
        assert isinstance(conn, PostgresConnector) and conn.schema == schema
        cat = conn.catalog()
    assert sorted(cat) == ["kinds", "positive"]
    assert cat["kinds"] == [
        ColumnInfo("id", "BIGINT"), ColumnInfo("small", "SMALLINT"),
        ColumnInfo("num", "INTEGER"), ColumnInfo("money", "DECIMAL(12,2)"),
        ColumnInfo("wide", "DOUBLE"), ColumnInfo("ratio", "DOUBLE"),
        ColumnInfo("name", "VARCHAR"), ColumnInfo("code", "VARCHAR"),
        ColumnInfo("flag", "BOOLEAN"), ColumnInfo("day", "DATE"),
    ]
    assert cat["positive"] == [ColumnInfo("id", "BIGINT"), ColumnInfo("money", "DECIMAL(12,2)")]


def test_results_are_typed_arrow_with_exact_decimals(kinds: tuple[Any, str]) -> None:
    _, schema = kinds
    with open_connector(f"postgres:{_url(schema)[len('postgresql:'):]}", Path("/")) as conn:
        table = conn.run("SELECT * FROM kinds ORDER BY id")
        empty = conn.run("SELECT * FROM kinds WHERE id < 0")
    expected = pa.schema([
        ("id", pa.int64()), ("small", pa.int16()), ("num", pa.int32()),
        ("money", pa.decimal128(12, 2)), ("wide", pa.float64()), ("ratio", pa.float64()),
        ("name", pa.string()), ("code", pa.string()), ("flag", pa.bool_()),
        ("day", pa.date32()),
    ])
    assert table.schema == expected and empty.schema == expected and empty.num_rows == 0
    rows = table.to_pylist()
    assert rows[0]["money"] == Decimal("784.99") and rows[1]["money"] == Decimal("-0.01")
    assert rows[0]["wide"] == 2.5 and rows[0]["day"].isoformat() == "2024-01-02"
    assert rows[1]["small"] is None and rows[1]["name"] is None


def test_results_stream_in_batches(kinds: tuple[Any, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows arrive in batches of BATCH_ROWS; a failing query leaves the session usable."""
    import veilql.connectors.postgres as pg

    _, schema = kinds
    monkeypatch.setattr(pg, "BATCH_ROWS", 1)
    with open_connector(_url(schema), Path("/")) as conn:
        table = conn.run("SELECT id, money FROM kinds ORDER BY id")
        assert table.to_pylist() == [{"id": 1, "money": Decimal("784.99")},
                                     {"id": 2, "money": Decimal("-0.01")}]
        assert table.column("money").num_chunks == 3  # two rows, then the empty last batch
        with pytest.raises(ConnectorError) as boom:
            conn.run("SELECT id // (id - id) AS boom FROM kinds")
        # The engine's text stays with the party (.detail), never in the message.
        assert "division by zero" in boom.value.detail  # type: ignore[attr-defined]
        assert "division by zero" not in str(boom.value)
        assert conn.run("SELECT COUNT(*) AS n FROM kinds").to_pylist() == [{"n": 2}]


def test_local_sql_constructs_run_in_postgres(kinds: tuple[Any, str]) -> None:
    """The shapes VeilQL's local SQL uses, written in DuckDB's dialect, give DuckDB's values:
    fixed point by ROUND on NUMERIC (exact), LEAST/GREATEST clamps, MD5(CONCAT) ordering,
    ROW_NUMBER, CASE, and DuckDB's float division."""
    _, schema = kinds
    sql = (
        "SELECT id AS __unit, COALESCE(CAST(ROUND(LEAST(GREATEST(money, 0), 500) * 100) "
        "AS BIGINT), 0) AS v0, COALESCE(CAST(ROUND((-(2 * money)) * 100) AS BIGINT), 0) AS o0, "
        "CASE WHEN name = 'north' THEN 0 ELSE -1 END AS g0, "
        "MD5(CONCAT('ab', '|', CAST(id AS TEXT), '|', CAST(money AS TEXT))) AS h, "
        "ROW_NUMBER() OVER (PARTITION BY code ORDER BY id) AS rn, num / 2 AS half "
        "FROM kinds ORDER BY id"
    )
    with open_connector(_url(schema), Path("/")) as conn:
        got = conn.run(sql).to_pylist()
    import duckdb

    want = duckdb.sql(sql.replace("FROM kinds", "FROM (VALUES (1, 784.99::DECIMAL(12,2), "
                                  "'north', 'A1', 3), (2, -0.01::DECIMAL(12,2), NULL, NULL, "
                                  "NULL)) AS kinds(id, money, name, code, num)")).fetchall()
    assert [tuple(r.values()) for r in got] == want
    assert got[0]["v0"] == 50000 and got[0]["o0"] == -156998 and got[1]["v0"] == 0


def test_rounding_matches_duckdb_for_doubles(kinds: tuple[Any, str]) -> None:
    """Halves round away from zero as in DuckDB, also for double precision, where
    PostgreSQL's own round() goes to even and has no two-argument form."""
    _, schema = kinds
    sql = (
        "SELECT r, ROUND(r * 100) AS f, CAST(ROUND(r * 100) AS BIGINT) AS i, ROUND(r, 2) AS d2, "
        "ROUND(m * 100) AS fm FROM (VALUES (CAST(0.125 AS DOUBLE), CAST(0.125 AS DECIMAL(6,3))), "
        "(-0.125, -0.125), (1.005, 1.005), (0.375, 0.375), (2.5, 2.5), (-0.004, -0.004), "
        "(NULL, NULL)) AS v(r, m) ORDER BY r NULLS LAST"
    )
    with open_connector(_url(schema), Path("/")) as conn:
        got = [tuple(row.values()) for row in conn.run(sql).to_pylist()]
    import duckdb

    want = duckdb.sql(sql).fetchall()
    assert [(r, f, i, d2) for r, f, i, d2, _ in got] == [(r, f, i, d2) for r, f, i, d2, _ in want]
    assert [float(row[4]) if row[4] is not None else None for row in got] == [
        float(row[4]) if row[4] is not None else None for row in want]
    assert (0.125, 13.0, 13, 0.13, 13) in got and (-0.125, -13.0, -13, -0.13, -13) in got


def test_writes_are_refused(kinds: tuple[Any, str]) -> None:
    """`run` admits one query only; the session itself is read-only, even for a raw
    statement on its connection; a setting changed inside a query does not survive it."""
    admin, schema = kinds
    with open_connector(_url(schema), Path("/")) as conn:
        assert isinstance(conn, PostgresConnector)
        with pytest.raises(QueryError, match="exactly one query, got INSERT"):
            conn.run("INSERT INTO kinds (id) VALUES (9)")
        with pytest.raises(QueryError, match="exactly one query"):
            conn.run("SELECT 1; DELETE FROM kinds")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn._con.execute("INSERT INTO kinds (id) VALUES (9)")
        conn._con.rollback()
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn._con.execute("CREATE TABLE sneaky (x int)")
        conn._con.rollback()
        with pytest.raises(ConnectorError) as rw:
            conn.run("SELECT set_config('transaction_read_only', 'off', false)")
        assert "read-write mode" in rw.value.detail  # type: ignore[attr-defined]
        conn.run("SELECT set_config('default_transaction_read_only', 'off', false) AS x")
        conn.run("SELECT set_config('search_path', 'public', false) AS x")
        after = conn.run("SELECT current_setting('default_transaction_read_only') AS ro, "
                         "current_setting('search_path') AS sp").to_pylist()
        assert after == [{"ro": "on", "sp": schema}]
        count = conn.run("SELECT COUNT(*) AS n FROM kinds").to_pylist()
    assert count == [{"n": 2}]
    assert admin.execute(f"SELECT count(*) FROM {schema}.kinds").fetchone() == (2,)


def test_schema_is_pinned(kinds: tuple[Any, str]) -> None:
    """Only the chosen schema is visible; without ?schema= the role's search_path decides."""
    assert URL is not None
    _, schema = kinds
    with fresh_schema(URL) as (admin, other):
        admin.execute(f"CREATE TABLE {other}.secret (x int)")
        with open_connector(_url(schema), Path("/")) as conn:
            assert "secret" not in conn.catalog()
            with pytest.raises(ConnectorError) as missing:
                conn.run("SELECT * FROM secret")
            assert 'relation "secret" does not exist' in missing.value.detail  # type: ignore[attr-defined]
        sep = "&" if "?" in URL else "?"
        via_path = f"{URL}{sep}options=-c%20search_path%3D{other}"
        with open_connector(via_path, Path("/")) as conn:
            assert isinstance(conn, PostgresConnector)
            assert conn.schema == other and list(conn.catalog()) == ["secret"]


def test_table_version(kinds: tuple[Any, str]) -> None:
    """Stable while nothing changes; changes once another session's write is committed;
    a view never repeats its version (nothing derived from it is cached)."""
    assert URL is not None
    admin, schema = kinds
    admin.execute(f"CREATE TABLE {schema}.versioned AS SELECT * FROM {schema}.kinds")
    with open_connector(_url(schema), Path("/")) as conn:
        v1 = conn.table_version("versioned")
        assert conn.table_version("versioned") == v1
        with psycopg.connect(URL, autocommit=True) as writer:  # closing flushes its stats
            writer.execute(f"UPDATE {schema}.versioned SET num = 7 WHERE id = 1")
        deadline = time.monotonic() + 5
        while conn.table_version("versioned") == v1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert conn.table_version("versioned") != v1
        assert conn.table_version("positive") != conn.table_version("positive")
        with pytest.raises(QueryError, match="no table 'nope'"):
            conn.table_version("nope")


def test_bad_urls(kinds: tuple[Any, str]) -> None:
    """Malformed URLs and missing schemas are configuration errors naming the URL without
    its password; an unreachable server is a failing party (exit 3)."""
    with pytest.raises(ConfigError, match=r"invalid PostgreSQL URL .*colour") as info:
        open_connector("postgresql://ann:s3cret@db.invalid/w?colour=blue", Path("/"))
    assert "s3cret" not in info.value.message and info.value.hint
    with pytest.raises(ConfigError, match="non-empty schema"):
        open_connector("postgresql://db.invalid/w?schema=", Path("/"))
    with pytest.raises(ConfigError, match="schema 'no_such_schema' does not exist"):
        open_connector(_url("no_such_schema"), Path("/"))
    with pytest.raises(ConnectorError, match="cannot connect to postgresql://") as down:
        open_connector("postgresql://127.0.0.1:1/w?connect_timeout=2", Path("/"))
    assert down.value.exit_code == ExitCode.UNAVAILABLE
    assert redact("postgresql://a:b@h/d?password=c") == "postgresql://a:***@h/d?password=***"


# -- the whole engine: a party in PostgreSQL answers as in DuckDB ---------------------------

INSURER_QUERIES = [
    # the insurer alone (local mode, run inside PostgreSQL)
    "SELECT product, COUNT(*) AS n, SUM(premium) AS s, AVG(claims_amount) AS a "
    "FROM insurer.policies WHERE premium BETWEEN 100 AND 800 GROUP BY product",
    "SELECT COUNT(*) AS n, SUM(claims_amount) AS c, AVG(open_claim) AS rate "
    "FROM insurer.policies WHERE premium > 2 * claims_amount OR product IN ('life', 'home')",
] + [q for q in ORACLE_QUERIES if "insurer." in q and "OPTIONS" not in q]

BANK_QUERIES = [
    "SELECT region, COUNT(*) AS n, AVG(income) AS inc FROM bank.customers WHERE age > 40 "
    "GROUP BY region",
    "SELECT c.region, COUNT(*) AS n, SUM(l.amount) AS total FROM bank.customers c "
    "JOIN bank.loans l ON c.customer_id = l.customer_id GROUP BY c.region",
    "SELECT COUNT(*) AS n FROM bank.loans l JOIN insurer.policies p "
    "ON l.customer_id = p.customer_id WHERE l.amount > p.claims_amount",
]


def _move_to_postgres(fed: Path, party: str, url: str) -> None:
    """Point ``party``'s connector in the federation file at ``url``."""
    lines = fed.read_text().splitlines()
    at = lines.index(f'name = "{party}"')
    for i in range(at, len(lines)):
        if lines[i].startswith("connector = "):
            lines[i] = f'connector = "{url}"'
            break
    fed.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def twin_sessions(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch_module: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    """Sessions over two copies of the demo: as shipped, and with the insurer and the bank
    in PostgreSQL (two fresh schemas loaded from the demo's CSV and DuckDB files)."""
    assert URL is not None
    monkeypatch_module.delenv("VEIL_LEDGER_DIR", raising=False)
    base = tmp_path_factory.mktemp("pg_twins")
    plain = oracle_federation(DEMO, base / "duckdb")
    with fresh_schema(URL) as (admin, insurer), fresh_schema(URL) as (_, bank):
        load_party(admin, insurer, plain, "insurer")
        load_party(admin, bank, plain, "bank")
        sessions: dict[str, Any] = {"duckdb": veilql.connect(plain, analyst="oracle")}
        for name, parties in (("insurer", {"insurer": insurer}),
                              ("bank", {"insurer": insurer, "bank": bank})):
            fed = oracle_federation(DEMO, base / name)
            for party, schema in parties.items():
                _move_to_postgres(fed, party, _url(schema))
            sessions[name] = veilql.connect(fed, analyst="oracle")
        try:
            yield sessions
        finally:
            for s in sessions.values():
                s.close()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _answer(session: Any, sql: str) -> list[tuple[Any, ...]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LargeEpsilonWarning)
        result = session.sql(sql, epsilon=HUGE_EPSILON, delta=0)
    return sorted(tuple(row) for row in result.rows)


def test_federation_sees_postgres_types(twin_sessions: dict[str, Any]) -> None:
    insurer = twin_sessions["bank"].federation.party("insurer")
    assert insurer.connector.startswith("postgresql://")
    cols = insurer.tables["policies"].columns
    assert cols["premium"].type == "DECIMAL(12,2)" and cols["customer_id"].type == "BIGINT"
    bank = twin_sessions["bank"].federation.party("bank").tables["loans"].columns
    assert bank["amount"].type == "DECIMAL(12,2)" and bank["term_months"].type == "INTEGER"


@pytest.mark.parametrize("sql", INSURER_QUERIES, ids=[f"i{i}" for i in range(len(INSURER_QUERIES))])
def test_insurer_in_postgres_answers_as_duckdb(twin_sessions: dict[str, Any], sql: str) -> None:
    want = _answer(twin_sessions["duckdb"], sql)
    assert want and any(v not in (0, None) for row in want for v in row)
    assert _answer(twin_sessions["insurer"], sql) == want


@pytest.mark.parametrize("sql", BANK_QUERIES, ids=[f"b{i}" for i in range(len(BANK_QUERIES))])
def test_bank_and_insurer_in_postgres_answer_as_duckdb(
    twin_sessions: dict[str, Any], sql: str
) -> None:
    want = _answer(twin_sessions["duckdb"], sql)
    assert want and _answer(twin_sessions["bank"], sql) == want
