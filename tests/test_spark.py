"""The Spark connector on a local Spark: catalog and types, one query only, DuckDB's values
for the local SQL's constructs (rounding, hashing, division, dates), table versions, spec
errors, a failing query's text in ``detail``. The whole engine with a party in Spark:
tests/test_warehouses.py.

One Spark session for the module (starting Spark costs about 10-20 s here); skipped, with
the reason, when pyspark or Java is missing.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from spark_fixtures import fresh_database, load_table, spark_session, spec, why_not

from veilql.connectors.base import ColumnInfo, ConnectorError, open_connector
from veilql.errors import ConfigError, LocalEngineError, QueryError

# pyspark 4 warns once that it has not been tested with pandas 3 (toArrow does not use it).
pytestmark = pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas")

WHY = why_not()
if WHY:
    pytest.skip(WHY, allow_module_level=True)

from veilql.connectors.spark import SparkConnector, parse_spec  # noqa: E402

KINDS = pa.table({
    "id": pa.array([1, 2], pa.int64()),
    "small": pa.array([2, None], pa.int16()),
    "num": pa.array([3, None], pa.int32()),
    "money": pa.array([Decimal("784.99"), Decimal("-0.01")], pa.decimal128(12, 2)),
    "ratio": pa.array([0.25, None], pa.float64()),
    "name": pa.array(["north", "North"], pa.string()),
    "flag": pa.array([True, None], pa.bool_()),
    "day": pa.array([dt.date(2024, 1, 2), None], pa.date32()),
    "ts": pa.array([dt.datetime(2024, 3, 17, 10, 11, 12), None], pa.timestamp("us")),
})
_DUCK_KINDS = "(SELECT * FROM kinds_arrow) AS kinds"


@pytest.fixture(scope="module")
def warehouse() -> Iterator[dict[str, Any]]:
    """A Spark session, a database with one table of every mapped type and a view over
    it, in a temporary warehouse folder."""
    with tempfile.TemporaryDirectory(prefix="veil_spark_") as tmp, spark_session() as spark:
        root = Path(tmp)
        with fresh_database(spark, root) as db:
            folder = load_table(spark, db, "kinds", KINDS, root)
            spark.sql(f"CREATE VIEW `{db}`.positive AS SELECT id, money FROM `{db}`.kinds "
                      "WHERE money > 0")
            yield {"spark": spark, "db": db, "root": root, "folder": folder}


@pytest.fixture(scope="module")
def conn(warehouse: dict[str, Any]) -> Iterator[SparkConnector]:
    """The connector on the module's database."""
    c = open_connector(spec(warehouse["db"]), Path("/"))
    assert isinstance(c, SparkConnector)
    yield c
    c.close()


def _duck(sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect()
    con.register("kinds_arrow", KINDS)
    return con.execute(sql.replace("FROM kinds", f"FROM {_DUCK_KINDS}")).fetchall()


def test_catalog_maps_types_to_duckdb_spelling(conn: SparkConnector) -> None:
    cat = conn.catalog()
    assert sorted(cat) == ["kinds", "positive"]
    assert cat["kinds"] == [
        ColumnInfo("id", "BIGINT"), ColumnInfo("small", "SMALLINT"),
        ColumnInfo("num", "INTEGER"), ColumnInfo("money", "DECIMAL(12,2)"),
        ColumnInfo("ratio", "DOUBLE"), ColumnInfo("name", "VARCHAR"),
        ColumnInfo("flag", "BOOLEAN"), ColumnInfo("day", "DATE"),
        ColumnInfo("ts", "TIMESTAMP"),
    ]
    assert cat["positive"] == [ColumnInfo("id", "BIGINT"), ColumnInfo("money", "DECIMAL(12,2)")]


def test_results_are_typed_arrow_with_exact_decimals(conn: SparkConnector) -> None:
    table = conn.run("SELECT * FROM kinds ORDER BY id")
    empty = conn.run("SELECT * FROM kinds WHERE id < 0")
    assert [f.type for f in table.schema] == [f.type for f in KINDS.schema]
    assert [f.type for f in empty.schema] == [f.type for f in KINDS.schema]
    assert empty.num_rows == 0 and table.to_pylist() == KINDS.to_pylist()


def test_local_sql_constructs_give_duckdb_values(conn: SparkConnector) -> None:
    """The shapes of VeilQL's local SQL, written in DuckDB's dialect, give DuckDB's values:
    fixed point by ROUND, LEAST/GREATEST clamps, the seeded MD5(CONCAT(...)) row order
    (NULLs hashed as empty text), ROW_NUMBER, CASE group codes, float division, LOG."""
    sql = (
        "SELECT id AS __unit, CASE WHEN (money) IS NULL THEN 0 ELSE CAST(ROUND(LEAST(GREATEST("
        "money, 0), 500) * 100) AS BIGINT) END AS v0, COALESCE(CAST(ROUND((-(2 * money)) * 100) "
        "AS BIGINT), 0) AS o0, CASE WHEN name = 'north' THEN 0 ELSE -1 END AS g0, "
        "MD5(CONCAT('ab', '|', CAST(id AS TEXT), '|', CAST(money AS TEXT), '|', "
        "CAST(small AS TEXT), '|', CAST(name AS TEXT))) AS h, "
        "ROW_NUMBER() OVER (PARTITION BY name ORDER BY id) AS rn, num / 2 AS half, "
        "GREATEST(small, 1) AS g, LEAST(small, num) AS l, LOG(100) AS lg, "
        "COALESCE(CAST(ROUND((money / 3) * 1000) AS BIGINT), 0) AS third "
        "FROM kinds ORDER BY id"
    )
    got = [tuple(r.values()) for r in conn.run(sql).to_pylist()]
    assert got == _duck(sql)
    assert got[0][1:4] == (50000, -156998, 0)


def test_rounding_matches_duckdb_for_doubles(conn: SparkConnector) -> None:
    """ROUND(x, d) rounds x * 10^d like DuckDB (Spark's own would round 1.005's decimal
    text up to 1.01); halves go away from zero for DOUBLE and DECIMAL."""
    sql = (
        "SELECT r, ROUND(r * 100) AS f, CAST(ROUND(r * 100) AS BIGINT) AS i, ROUND(r, 2) AS d2, "
        "ROUND(m * 100) AS fm, ROUND(m, 2) AS m2 FROM (VALUES (CAST(0.125 AS DOUBLE), "
        "CAST(0.125 AS DECIMAL(6,3))), (-0.125, -0.125), (1.005, 1.005), (0.375, 0.375), "
        "(2.5, 2.5), (-0.004, -0.004), (NULL, NULL)) AS v(r, m) ORDER BY r NULLS LAST"
    )
    got = [tuple(r.values()) for r in conn.run(sql).to_pylist()]
    want = duckdb.sql(sql).fetchall()
    as_float = [tuple(None if v is None else float(v) for v in row) for row in got]
    assert as_float == [tuple(None if v is None else float(v) for v in row) for row in want]
    assert (1.005, 100.0, 100, 1.0) in [row[:4] for row in got]


def test_dates_match_duckdb(conn: SparkConnector) -> None:
    """DuckDB's date functions: day of week from 0, ISO weeks, DATE_TRUNC to a timestamp,
    DATE_DIFF counting boundaries, date + interval."""
    sql = (
        "SELECT id, DAYOFWEEK(day) AS dw, EXTRACT(dow FROM ts) AS dw2, EXTRACT(isodow FROM ts) "
        "AS iso, EXTRACT(week FROM day) AS wk, EXTRACT(doy FROM day) AS doy, "
        "EXTRACT(quarter FROM ts) AS q, EXTRACT(hour FROM ts) AS h, EXTRACT(second FROM ts) AS s,"
        " DATE_TRUNC('month', day) AS m, DATE_TRUNC('quarter', ts) AS tq, "
        "DATE_TRUNC('week', ts) AS tw, DATE_TRUNC('hour', ts) AS th, DATE_TRUNC('year', day) "
        "AS ty, DATE_DIFF('month', day, DATE '2024-03-01') AS dm, DATE_DIFF('day', day, ts) AS dd,"
        " DATE_DIFF('year', day, ts) AS dy, DATE_DIFF('week', day, ts) AS dwk, "
        "DATE_DIFF('hour', day, ts) AS dh, DATE_DIFF('quarter', day, ts) AS dq, "
        "day + INTERVAL 1 DAY AS nx, ts - INTERVAL 2 MONTH AS back "
        "FROM kinds ORDER BY id"
    )
    got = [tuple(r.values()) for r in conn.run(sql).to_pylist()]
    assert got == _duck(sql)


def test_only_one_query_runs(conn: SparkConnector) -> None:
    """`run` admits a single query: no INSERT, DDL or second statement reaches Spark."""
    for sql, kind in (("INSERT INTO kinds (id) VALUES (9)", "INSERT"),
                      ("SELECT 1; DROP TABLE kinds", "SELECT, DROP"),
                      ("CREATE TABLE sneaky AS SELECT 1 AS x", "CREATE")):
        with pytest.raises(QueryError, match=f"exactly one query, got {kind}"):
            conn.run(sql)
    assert conn.run("SELECT COUNT(*) AS n FROM kinds").to_pylist() == [{"n": 2}]


def test_a_failing_query_keeps_the_engine_text_in_detail(conn: SparkConnector) -> None:
    """Spark's message (which quotes the value 'north' and the SQL) is in ``detail`` only."""
    with pytest.raises(LocalEngineError) as boom:
        conn.run("SELECT CAST(name AS INTEGER) AS n FROM kinds")
    assert isinstance(boom.value, ConnectorError) and int(boom.value.exit_code) == 3
    assert "north" in boom.value.detail and "north" not in str(boom.value)
    with pytest.raises(LocalEngineError) as missing:
        conn.run("SELECT no_such_column FROM kinds")
    assert "no_such_column" in missing.value.detail
    assert conn.run("SELECT COUNT(*) AS n FROM kinds").to_pylist() == [{"n": 2}]


def test_the_session_is_its_own(conn: SparkConnector, warehouse: dict[str, Any]) -> None:
    """The connector's session has DuckDB's settings and its database as the current one,
    and changes nothing of the session that registered the tables."""
    mine = conn._spark
    assert mine.conf.get("spark.sql.ansi.enabled") == "true"
    assert mine.conf.get("spark.sql.session.timeZone") == "UTC"
    assert mine.catalog.currentDatabase() == warehouse["db"]
    assert warehouse["spark"].catalog.currentDatabase() == "default"


def test_table_version(conn: SparkConnector, warehouse: dict[str, Any]) -> None:
    """Stable while the table's files are unchanged; changes when a file is rewritten."""
    v1 = conn.table_version("kinds")
    assert v1.startswith("files:") and conn.table_version("kinds") == v1
    path = warehouse["folder"] / "part-0.parquet"
    time.sleep(0.01)
    pq.write_table(KINDS, path)
    os.utime(path, ns=(time.time_ns(), time.time_ns()))
    assert conn.table_version("kinds") != v1
    with pytest.raises(QueryError, match="no table 'nope'"):
        conn.table_version("nope")


def test_a_table_without_local_files_is_never_reused(warehouse: dict[str, Any]) -> None:
    """A view over literal rows has no files here: its version is fresh on every call."""
    spark, db = warehouse["spark"], warehouse["db"]
    spark.sql(f"CREATE VIEW `{db}`.literal AS SELECT 1 AS x")
    with open_connector(spec(db), Path("/")) as c:
        assert c.table_version("literal") != c.table_version("literal")


def test_specs() -> None:
    """Master URLs in their three spellings; bad parameters and databases are
    configuration errors."""
    assert parse_spec("spark:local[2]") == ("local[2]", "default", {})
    assert parse_spec("spark://h:7077?database=x")[:2] == ("spark://h:7077", "x")
    assert parse_spec("spark:sc://h:15002")[0] == "sc://h:15002"
    with pytest.raises(ConfigError, match="unknown parameter 'colour'"):
        open_connector("spark:local[1]?colour=blue", Path("/"))
    with pytest.raises(ConfigError, match="empty database"):
        open_connector("spark:local[1]?database=", Path("/"))


def test_missing_database(warehouse: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="database 'no_such_db' does not exist"):
        open_connector(spec("no_such_db"), Path("/"))
