"""``Connector.run_rows`` on DuckDB (DB-API rows, parsed statements kept) against the
default body (Arrow's ``to_pylist``): the same rows, the same refusals and failures."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from veilql.connectors.base import Connector, LocalSQLError
from veilql.connectors.duckdb import DuckDBConnector
from veilql.errors import QueryError


@pytest.fixture
def connector(tmp_path: Path) -> DuckDBConnector:
    path = tmp_path / "bank.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, g VARCHAR, v BIGINT, d DECIMAL(9,2))")
    con.execute("INSERT INTO t VALUES (1, 'a', 5, 1.25), (2, 'b', NULL, 2.50), "
                "(3, 'a', 9223372036854775807, NULL)")
    con.close()
    return DuckDBConnector(path)


def _arrow_rows(c: Connector, sql: str) -> list[dict]:
    return Connector.run_rows(c, sql)  # the default body: run, then Arrow's to_pylist


INTEGER_SQL = [
    # a light step's shape: cell indices, 128-bit sums (Decimals in Arrow), row counts
    "SELECT CASE WHEN g = 'a' THEN 0 ELSE 1 END AS g0, SUM(v) AS s, "
    "SUM(v)::HUGEINT * 4 AS big, COUNT(*) AS n FROM t GROUP BY 1 ORDER BY 1",
    "SELECT COUNT(*) AS n FROM t WHERE id > 10",  # one row, a zero
    "SELECT id::UTINYINT AS a, v::UBIGINT AS b FROM t WHERE v >= 0 ORDER BY 1",
    "SELECT id FROM t WHERE false",  # no rows
]


@pytest.mark.parametrize("sql", INTEGER_SQL)
def test_integer_rows_equal_arrows(connector: DuckDBConnector, sql: str) -> None:
    want = _arrow_rows(connector, sql)
    for _ in range(2):  # the second run reuses the parsed statement
        got = connector.run_rows(sql)
        assert [list(r) for r in got] == [list(r) for r in want]
        assert [{k: None if v is None else int(v) for k, v in r.items()} for r in got] == \
            [{k: None if v is None else int(v) for k, v in r.items()} for r in want]
        assert all(type(v) is int or v is None for r in got for v in r.values())


def test_other_types_are_read_as_arrow_reads_them(connector: DuckDBConnector) -> None:
    sql = "SELECT g, d, SUM(v) AS s FROM t GROUP BY g, d ORDER BY g, d"
    want = _arrow_rows(connector, sql)
    assert connector.run_rows(sql) == want  # VARCHAR, DECIMAL: Arrow's values, types
    assert connector.run_rows(sql) == want  # and again, known to be read through run
    assert connector._integer_only  # the verdict is kept per text


def test_refusals_and_failures_as_run(connector: DuckDBConnector) -> None:
    with pytest.raises(QueryError, match="exactly one query"):
        connector.run_rows("SELECT 1; SELECT 2")
    with pytest.raises(QueryError, match="exactly one query"):
        connector.run_rows("CREATE TABLE x (a INT)")
    with pytest.raises(LocalSQLError) as err:
        connector.run_rows("SELECT CAST(g AS INTEGER) AS x FROM t")  # 'a' is no integer
    assert "'a'" not in str(err.value)  # the engine's text (it quotes a value) in detail only
    with pytest.raises(LocalSQLError):
        connector.run_rows("SELECT nope FROM t")
