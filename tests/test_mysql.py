"""The MySQL connector against a real server (the machine's MariaDB): catalog and types,
read-only sessions, DuckDB's values for the local SQL's constructs (rounding, hashing,
division, dates, case-sensitive strings), table versions, URL errors. The whole engine
with a party in MySQL: tests/test_warehouses.py.

Skipped, with the reason, when no server is reachable (see ``mysql_fixtures.server_url``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

pymysql = pytest.importorskip("pymysql")

from mysql_fixtures import database_url, fresh_database, server_url  # noqa: E402

from veilql.connectors.base import ColumnInfo, ConnectorError, open_connector  # noqa: E402
from veilql.connectors.mysql import MySQLConnector, redact  # noqa: E402
from veilql.errors import ConfigError, ExitCode, LocalEngineError, QueryError  # noqa: E402

URL, WHY = server_url()
if URL is None:
    pytest.skip(WHY, allow_module_level=True)
assert URL is not None

_TYPES_DDL = [
    """CREATE TABLE kinds (
        id bigint, small smallint, num int, money decimal(12,2), wide decimal(50,3),
        ratio double, name varchar(20), code char(8), flag boolean, day date,
        ts datetime, u int unsigned
    )""",
    """INSERT INTO kinds VALUES
        (1, 2, 3, 784.99, 2.5, 0.25, 'north', 'A1', true, '2024-01-02', '2024-03-17 10:11:12', 7),
        (2, NULL, NULL, -0.01, NULL, NULL, 'North', NULL, NULL, NULL, NULL, NULL)""",
    "CREATE VIEW positive AS SELECT id, money FROM kinds WHERE money > 0",
]
# The same rows in DuckDB, for comparisons.
_DUCK_KINDS = (
    "(VALUES (1, 2, 3, 784.99::DECIMAL(12,2), 0.25::DOUBLE, 'north', 'A1', DATE '2024-01-02', "
    "TIMESTAMP '2024-03-17 10:11:12'), (2, NULL, NULL, -0.01::DECIMAL(12,2), NULL, 'North', "
    "NULL, NULL, NULL)) AS kinds(id, small, num, money, ratio, name, code, day, ts)"
)


@pytest.fixture(scope="module")
def kinds() -> Iterator[tuple[Any, str]]:
    """A database with one table of every mapped type and a view; (admin connection, name)."""
    assert URL is not None
    with fresh_database(URL) as (con, db):
        with con.cursor() as cur:
            cur.execute(f"USE `{db}`")
            for ddl in _TYPES_DDL:
                cur.execute(ddl)
        yield con, db


def _open(db: str) -> MySQLConnector:
    assert URL is not None
    conn = open_connector(database_url(URL, db), Path("/"))
    assert isinstance(conn, MySQLConnector)
    return conn


def _duck(sql: str) -> list[tuple[Any, ...]]:
    return duckdb.sql(sql.replace("FROM kinds", f"FROM {_DUCK_KINDS}")).fetchall()


def test_catalog_maps_types_to_duckdb_spelling(kinds: tuple[Any, str]) -> None:
    _, db = kinds
    with _open(db) as conn:
        assert conn.database == db
        cat = conn.catalog()
    assert sorted(cat) == ["kinds", "positive"]
    assert cat["kinds"] == [
        ColumnInfo("id", "BIGINT"), ColumnInfo("small", "SMALLINT"),
        ColumnInfo("num", "INTEGER"), ColumnInfo("money", "DECIMAL(12,2)"),
        ColumnInfo("wide", "DOUBLE"), ColumnInfo("ratio", "DOUBLE"),
        ColumnInfo("name", "VARCHAR"), ColumnInfo("code", "VARCHAR"),
        ColumnInfo("flag", "TINYINT"), ColumnInfo("day", "DATE"),
        ColumnInfo("ts", "TIMESTAMP"), ColumnInfo("u", "UINTEGER"),
    ]
    assert cat["positive"] == [ColumnInfo("id", "BIGINT"), ColumnInfo("money", "DECIMAL(12,2)")]


def test_results_are_typed_arrow_with_exact_decimals(kinds: tuple[Any, str]) -> None:
    _, db = kinds
    assert URL is not None
    with open_connector(database_url(URL, db).replace("mysql:", "mariadb:", 1),
                        Path("/")) as conn:
        table = conn.run("SELECT * FROM kinds ORDER BY id")
        empty = conn.run("SELECT * FROM kinds WHERE id < 0")
    expected = pa.schema([
        ("id", pa.int64()), ("small", pa.int16()), ("num", pa.int32()),
        ("money", pa.decimal128(12, 2)), ("wide", pa.float64()), ("ratio", pa.float64()),
        ("name", pa.string()), ("code", pa.string()), ("flag", pa.int8()),
        ("day", pa.date32()), ("ts", pa.timestamp("us")), ("u", pa.uint32()),
    ])
    assert table.schema == expected and empty.schema == expected and empty.num_rows == 0
    rows = table.to_pylist()
    assert rows[0]["money"] == Decimal("784.99") and rows[1]["money"] == Decimal("-0.01")
    assert rows[0]["wide"] == 2.5 and rows[0]["day"].isoformat() == "2024-01-02"
    assert rows[1]["small"] is None and rows[1]["name"] == "North"


def test_results_stream_in_batches(kinds: tuple[Any, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows arrive in batches of BATCH_ROWS; a failing query's text stays in ``detail``
    and the session stays usable."""
    import veilql.connectors.mysql as my

    _, db = kinds
    monkeypatch.setattr(my, "BATCH_ROWS", 1)
    with _open(db) as conn:
        table = conn.run("SELECT id, money FROM kinds ORDER BY id")
        assert table.to_pylist() == [{"id": 1, "money": Decimal("784.99")},
                                     {"id": 2, "money": Decimal("-0.01")}]
        assert table.column("money").num_chunks == 3  # two rows, then the empty last batch
        with pytest.raises(LocalEngineError) as boom:
            conn.run("SELECT no_such_column FROM kinds")
        assert isinstance(boom.value, ConnectorError)
        assert "no_such_column" in boom.value.detail and "no_such_column" not in str(boom.value)
        assert int(boom.value.exit_code) == 3
        assert conn.run("SELECT COUNT(*) AS n FROM kinds").to_pylist() == [{"n": 2}]


def test_local_sql_constructs_give_duckdb_values(kinds: tuple[Any, str]) -> None:
    """The shapes of VeilQL's local SQL, written in DuckDB's dialect, give DuckDB's values:
    fixed point by ROUND (exact on DECIMAL), LEAST/GREATEST clamps, the seeded
    MD5(CONCAT(...)) row order (NULLs hashed as empty text, as in DuckDB), ROW_NUMBER,
    CASE group codes, float division, LOG."""
    _, db = kinds
    sql = (
        "SELECT id AS __unit, CASE WHEN (money) IS NULL THEN 0 ELSE CAST(ROUND(LEAST(GREATEST("
        "money, 0), 500) * 100) AS BIGINT) END AS v0, COALESCE(CAST(ROUND((-(2 * money)) * 100) "
        "AS BIGINT), 0) AS o0, CASE WHEN name = 'north' THEN 0 ELSE -1 END AS g0, "
        "MD5(CONCAT('ab', '|', CAST(id AS TEXT), '|', CAST(money AS TEXT), '|', "
        "CAST(small AS TEXT), '|', CAST(name AS TEXT))) AS h, "
        "ROW_NUMBER() OVER (PARTITION BY code ORDER BY id) AS rn, num / 2 AS half, "
        "GREATEST(small, 1) AS g, LEAST(small, num) AS l, LOG(100) AS lg, "
        "COALESCE(CAST(ROUND((money / 3) * 1000) AS BIGINT), 0) AS third "
        "FROM kinds ORDER BY id"
    )
    with _open(db) as conn:
        got = conn.run(sql).to_pylist()
    assert [tuple(r.values()) for r in got] == _duck(sql)
    assert got[0]["v0"] == 50000 and got[0]["o0"] == -156998 and got[1]["g0"] == -1


def test_rounding_matches_duckdb_for_doubles(kinds: tuple[Any, str]) -> None:
    """Halves round away from zero as in DuckDB, also for DOUBLE, where MySQL's own ROUND
    goes to even (ROUND(2.5e0) is 2 there); ROUND(x, d) rounds x * 10^d like DuckDB."""
    _, db = kinds
    sql = (
        "SELECT r, ROUND(r * 100) AS f, CAST(ROUND(r * 100) AS BIGINT) AS i, ROUND(r, 2) AS d2, "
        "ROUND(m * 100) AS fm, ROUND(ROUND(r * 10) / 4) AS nested FROM (VALUES (CAST(0.125 AS "
        "DOUBLE), CAST(0.125 AS DECIMAL(6,3))), (-0.125, -0.125), (1.005, 1.005), (0.375, 0.375),"
        " (2.5, 2.5), (-0.004, -0.004), (NULL, NULL)) AS v(r, m) ORDER BY r NULLS LAST"
    )
    with _open(db) as conn:
        got = [tuple(row.values()) for row in conn.run(sql).to_pylist()]
    want = duckdb.sql(sql).fetchall()
    num = [tuple(None if v is None else float(v) for v in row) for row in got]
    assert num == [tuple(None if v is None else float(v) for v in row) for row in want]
    assert (0.125, 13.0, 13, 0.13) == got[num.index((0.125, 13.0, 13, 0.13, 13.0, 0.0))][:4]
    assert (2.5, 250.0, 250, 2.5) in [row[:4] for row in got]


def test_dates_match_duckdb(kinds: tuple[Any, str]) -> None:
    """DuckDB's date functions: day of week from 0, ISO weeks, DATE_TRUNC to a timestamp,
    DATE_DIFF counting boundaries, date + interval."""
    _, db = kinds
    sql = (
        "SELECT id, DAYOFWEEK(day) AS dw, EXTRACT(dow FROM ts) AS dw2, EXTRACT(isodow FROM ts) "
        "AS iso, EXTRACT(week FROM day) AS wk, EXTRACT(doy FROM day) AS doy, "
        "EXTRACT(quarter FROM ts) AS q, EXTRACT(hour FROM ts) AS h, "
        "DATE_TRUNC('month', day) AS m, DATE_TRUNC('quarter', ts) AS tq, "
        "DATE_TRUNC('week', ts) AS tw, DATE_TRUNC('hour', ts) AS th, DATE_TRUNC('year', day) "
        "AS ty, DATE_DIFF('month', day, DATE '2024-03-01') AS dm, DATE_DIFF('day', day, ts) AS dd,"
        " DATE_DIFF('year', day, ts) AS dy, DATE_DIFF('week', day, ts) AS dwk, "
        "DATE_DIFF('hour', day, ts) AS dh, DATE_DIFF('quarter', day, ts) AS dq, "
        "day + INTERVAL 1 DAY AS nx, ts - INTERVAL 2 MONTH AS back "
        "FROM kinds ORDER BY id"
    )
    with _open(db) as conn:
        got = [tuple(r.values()) for r in conn.run(sql).to_pylist()]
    assert got == _duck(sql)


def test_string_literals_compare_case_sensitively(kinds: tuple[Any, str]) -> None:
    """'north' does not match 'North' (MySQL's default collations would), in =, IN, LIKE
    and a CASE group code, as in DuckDB."""
    _, db = kinds
    sql = ("SELECT id, CASE WHEN name = 'north' THEN 0 WHEN name = 'North' THEN 1 ELSE -1 END "
           "AS g, CASE WHEN name IN ('NORTH', 'north') THEN 1 ELSE 0 END AS i, "
           "CASE WHEN name LIKE 'N%' THEN 1 ELSE 0 END AS lk, "
           "CASE WHEN name ILIKE 'N%' THEN 1 ELSE 0 END AS ilk FROM kinds ORDER BY id")
    with _open(db) as conn:
        got = [tuple(r.values()) for r in conn.run(sql).to_pylist()]
    assert got == _duck(sql) == [(1, 0, 1, 0, 1), (2, 1, 0, 1, 1)]


def test_writes_are_refused(kinds: tuple[Any, str]) -> None:
    """`run` admits one query only; the session itself is read-only, even for a raw
    statement on its connection."""
    admin, db = kinds
    with _open(db) as conn:
        with pytest.raises(QueryError, match="exactly one query, got INSERT"):
            conn.run("INSERT INTO kinds (id) VALUES (9)")
        with pytest.raises(QueryError, match="exactly one query"):
            conn.run("SELECT 1; DELETE FROM kinds")
        with conn._con.cursor() as cur, pytest.raises(pymysql.err.MySQLError,
                                                      match="READ ONLY"):
            cur.execute("INSERT INTO kinds (id) VALUES (9)")
        conn._con.rollback()
        with conn._con.cursor() as cur:
            cur.execute("START TRANSACTION READ ONLY")
            with pytest.raises(pymysql.err.MySQLError, match="READ ONLY"):
                cur.execute("UPDATE kinds SET num = 9")
        conn._con.rollback()
        count = conn.run("SELECT COUNT(*) AS n FROM kinds").to_pylist()
    assert count == [{"n": 2}]
    with admin.cursor() as cur:
        cur.execute(f"SELECT COUNT(*) FROM `{db}`.kinds WHERE id = 9 OR num = 9")
        assert cur.fetchone() == (0,)


def test_only_the_database_is_visible(kinds: tuple[Any, str]) -> None:
    """The catalog is the URL's database; another database's tables are not in it."""
    assert URL is not None
    _, db = kinds
    with fresh_database(URL) as (admin, other):
        with admin.cursor() as cur:
            cur.execute(f"CREATE TABLE `{other}`.secret (x int)")
        with _open(db) as conn:
            assert "secret" not in conn.catalog()
            with pytest.raises(ConnectorError) as missing:
                conn.run("SELECT * FROM secret")
            assert "secret" in missing.value.detail  # type: ignore[attr-defined]
        with _open(other) as conn:
            assert list(conn.catalog()) == ["secret"]


def test_table_version(kinds: tuple[Any, str]) -> None:
    """Stable while nothing changes; changes once another session's write is committed;
    a view never repeats its version (nothing derived from it is cached)."""
    admin, db = kinds
    with admin.cursor() as cur:
        cur.execute(f"CREATE TABLE `{db}`.versioned AS SELECT * FROM `{db}`.kinds")
    time.sleep(1.1)  # the update time has one-second resolution
    with _open(db) as conn:
        v1 = conn.table_version("versioned")
        assert conn.table_version("versioned") == v1
        with admin.cursor() as cur:
            cur.execute(f"UPDATE `{db}`.versioned SET num = 7 WHERE id = 1")
        assert conn.table_version("versioned") != v1
        assert conn.table_version("positive") != conn.table_version("positive")
        with pytest.raises(QueryError, match="no table 'nope'"):
            conn.table_version("nope")


def test_bad_urls() -> None:
    """Malformed URLs are configuration errors naming the URL without its password; an
    unreachable server is a failing party (exit 3)."""
    with pytest.raises(ConfigError, match=r"invalid MySQL URL .*colour") as info:
        open_connector("mysql://ann:s3cret@db.invalid/w?colour=blue", Path("/"))
    assert "s3cret" not in info.value.message and info.value.hint
    with pytest.raises(ConfigError, match="must name one database"):
        open_connector("mysql://db.invalid", Path("/"))
    with pytest.raises(ConnectorError, match="cannot connect to mysql://") as down:
        open_connector("mysql://root@127.0.0.1:1/w?connect_timeout=2", Path("/"))
    assert down.value.exit_code == ExitCode.UNAVAILABLE
    assert redact("mysql://a:b@h/d") == "mysql://a:***@h/d"
