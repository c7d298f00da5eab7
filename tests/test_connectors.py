"""Connectors: catalogs, local SQL (transpiled, read-only), fingerprints, opening errors."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from veilql.connectors import ColumnInfo, Connector, open_connector
from veilql.connectors.base import ConnectorError, register_connector, split_spec
from veilql.connectors.duckdb import DuckDBConnector
from veilql.connectors.files import CsvConnector, ParquetConnector
from veilql.errors import ConfigError, QueryError


@pytest.fixture
def duck_file(tmp_path: Path) -> Path:
    """A DuckDB file with one table and one view."""
    path = tmp_path / "bank.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE loans (customer_id BIGINT, amount DECIMAL(12,2), region VARCHAR)")
    con.execute(
        "INSERT INTO loans VALUES (1, 100.50, 'north'), (2, 20.25, 'south'), (1, 3.00, 'north')"
    )
    con.execute("CREATE VIEW big_loans AS SELECT * FROM loans WHERE amount > 50")
    con.close()
    return path


@pytest.fixture
def csv_folder(tmp_path: Path) -> Path:
    """A folder with two CSV tables and a file that is not a table."""
    folder = tmp_path / "insurer"
    folder.mkdir()
    (folder / "policies.csv").write_text("customer_id,product,premium\n1,life,10.5\n2,home,3\n")
    (folder / "claims.csv").write_text("customer_id,open\n1,true\n")
    (folder / "README.txt").write_text("not a table\n")
    return folder


@pytest.fixture
def parquet_folder(tmp_path: Path) -> Path:
    """A folder with one Parquet table."""
    folder = tmp_path / "payments"
    folder.mkdir()
    pq.write_table(
        pa.table(
            {"customer_id": pa.array([1, 2, 3], pa.int64()), "n": pa.array([5, 0, 7], pa.int32())}
        ),
        folder / "accounts.parquet",
    )
    return folder


def test_duckdb_catalog_and_run(duck_file: Path) -> None:
    """Tables and views with DuckDB types; local SQL returns Arrow."""
    with open_connector(f"duckdb:{duck_file.name}", duck_file.parent) as conn:
        assert isinstance(conn, DuckDBConnector)
        assert conn.read_only and conn.dialect == "duckdb"
        assert conn.spec == f"duckdb:{duck_file}"
        assert conn.catalog() == {
            "big_loans": [
                ColumnInfo("customer_id", "BIGINT"),
                ColumnInfo("amount", "DECIMAL(12,2)"),
                ColumnInfo("region", "VARCHAR"),
            ],
            "loans": [
                ColumnInfo("customer_id", "BIGINT"),
                ColumnInfo("amount", "DECIMAL(12,2)"),
                ColumnInfo("region", "VARCHAR"),
            ],
        }
        table = conn.run(
            "SELECT region, SUM(amount) AS total FROM loans GROUP BY region ORDER BY region"
        )
        assert isinstance(table, pa.Table)
        assert table.column_names == ["region", "total"]
        assert table.column("region").to_pylist() == ["north", "south"]
        assert [float(v) for v in table.column("total").to_pylist()] == [103.5, 20.25]
        cols = conn.run_numpy("SELECT customer_id FROM big_loans")
        assert list(cols) == ["customer_id"]
        np.testing.assert_array_equal(cols["customer_id"], np.array([1]))


def test_duckdb_is_read_only(duck_file: Path) -> None:
    """Writes are refused before reaching DuckDB, and DuckDB refuses them too."""
    before = duck_file.read_bytes()
    with open_connector(f"duckdb:{duck_file}", Path("/")) as conn:
        for sql in (
            "INSERT INTO loans VALUES (9, 1, 'x')",
            "DROP TABLE loans",
            "COPY loans TO 'out.csv'",
            "SELECT 1; DROP TABLE loans",
        ):
            with pytest.raises(QueryError, match="read-only|exactly one query"):
                conn.run(sql)
        # Even bypassing the statement guard, the database is attached read-only ...
        with pytest.raises(ConnectorError) as info:
            conn._execute("INSERT INTO loans VALUES (9, 1, 'x')")
        assert "read-only" in info.value.detail
        # ... and cannot reach other files.
        with pytest.raises(ConnectorError) as info:
            conn.run("SELECT * FROM read_csv('/etc/hostname')")
        assert "disabled" in info.value.detail
        assert conn.run("SELECT COUNT(*) AS n FROM loans").column("n").to_pylist() == [3]
    assert duck_file.read_bytes() == before


def test_csv_folder(csv_folder: Path) -> None:
    """Each *.csv file is a table named by its stem; other files are ignored."""
    with open_connector(f"csv:{csv_folder}", Path("/")) as conn:
        assert isinstance(conn, CsvConnector)
        assert conn.spec == f"csv:{csv_folder}"
        assert conn.catalog() == {
            "claims": [ColumnInfo("customer_id", "BIGINT"), ColumnInfo("open", "BOOLEAN")],
            "policies": [
                ColumnInfo("customer_id", "BIGINT"),
                ColumnInfo("product", "VARCHAR"),
                ColumnInfo("premium", "DOUBLE"),
            ],
        }
        out = conn.run(
            "SELECT p.product FROM policies AS p JOIN claims AS c "
            "ON p.customer_id = c.customer_id WHERE c.open"
        )
        assert out.column("product").to_pylist() == ["life"]


def test_files_cannot_be_written_or_escaped(csv_folder: Path) -> None:
    """COPY into the folder and reading files outside it both fail; the folder is unchanged."""
    listing = sorted(os.listdir(csv_folder))
    contents = (csv_folder / "policies.csv").read_text()
    with open_connector(f"csv:{csv_folder}", Path("/")) as conn:
        with pytest.raises(QueryError):
            conn.run(f"COPY policies TO '{csv_folder / 'copy.csv'}'")
        for sql in (
            f"COPY policies TO '{csv_folder / 'copy.csv'}'",
            f"COPY policies TO '{csv_folder / 'policies.csv'}'",
            "SET enable_external_access = true",
        ):
            with pytest.raises(ConnectorError):
                conn._execute(sql)
        with pytest.raises(ConnectorError):
            conn.run(f"SELECT * FROM read_csv('{csv_folder / 'README.txt'}')")
    assert sorted(os.listdir(csv_folder)) == listing
    assert (csv_folder / "policies.csv").read_text() == contents


def test_parquet_folder(parquet_folder: Path) -> None:
    """Each *.parquet file is a table; types come from the file."""
    with open_connector("parquet:payments", parquet_folder.parent) as conn:
        assert isinstance(conn, ParquetConnector)
        assert conn.catalog() == {
            "accounts": [ColumnInfo("customer_id", "BIGINT"), ColumnInfo("n", "INTEGER")]
        }
        cols = conn.run_numpy("SELECT SUM(n) AS s FROM accounts WHERE customer_id <> 2")
        assert cols["s"].tolist() == [12]


def test_table_version_changes_with_data(csv_folder: Path, duck_file: Path) -> None:
    """The fingerprint is stable while the data is, and changes when a file is rewritten."""
    with open_connector(f"csv:{csv_folder}", Path("/")) as conn:
        v1 = conn.table_version("policies")
        other = conn.table_version("claims")
        assert conn.table_version("policies") == v1
        path = csv_folder / "policies.csv"
        path.write_text(path.read_text() + "3,auto,7\n")
        os.utime(path, ns=(10**18, 10**18))
        assert conn.table_version("policies") != v1
        assert conn.table_version("claims") == other
        with pytest.raises(QueryError, match="no table 'nope'"):
            conn.table_version("nope")
    with open_connector(f"duckdb:{duck_file}", Path("/")) as conn:
        before = conn.table_version("loans")
    con = duckdb.connect(str(duck_file))
    con.execute("INSERT INTO loans VALUES (7, 1, 'east')")
    con.close()
    os.utime(duck_file, ns=(10**18, 10**18))
    with open_connector(f"duckdb:{duck_file}", Path("/")) as conn:
        assert conn.table_version("loans") != before


class _Recorder(Connector):
    """A connector in another dialect that records the SQL it is asked to execute."""

    scheme = "recorder"
    dialect = "postgres"

    def __init__(self, location: Path) -> None:
        super().__init__(location)
        self.executed: list[str] = []

    def catalog(self) -> dict[str, list[ColumnInfo]]:
        return {}

    def _execute(self, sql: str) -> pa.Table:
        self.executed.append(sql)
        return pa.table({"x": [1]})

    def table_version(self, table: str) -> str:
        return "0"


def test_run_transpiles_to_the_connector_dialect() -> None:
    """Local SQL is written in DuckDB's dialect and reaches the engine in its own."""
    conn = _Recorder(Path("/x"))
    conn.run("SELECT a::INTEGER AS a, list_value(1, 2) AS l FROM t WHERE b ILIKE 'x%'")
    assert conn.executed == [
        "SELECT CAST(a AS INT) AS a, ARRAY[1, 2] AS l FROM t WHERE b ILIKE 'x%'"
    ]
    from veilql.errors import LocalEngineError

    with pytest.raises(LocalEngineError) as info:  # sqlglot's text quotes the SQL (and seed)
        conn.run("SELECT FROM WHERE (")
    assert info.value.stage == "transpile" and "SELECT FROM WHERE" not in str(info.value)


def test_register_connector_scheme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Registered factories take precedence over the built-in ones."""
    import veilql.connectors.base as base

    monkeypatch.setattr(base, "_FACTORIES", {})
    register_connector("duckdb", _Recorder)
    db = tmp_path / "x.duckdb"
    db.write_bytes(b"")
    conn = open_connector("duckdb:x.duckdb", tmp_path)
    assert isinstance(conn, _Recorder) and conn.location == db


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("duckdb:missing.duckdb", "DuckDB file .* does not exist"),
        ("csv:missing", "csv folder .* does not exist"),
        ("parquet:missing", "parquet folder .* does not exist"),
        ("sqlite:x.db", "unknown connector scheme 'sqlite'"),
        ("data/bank.duckdb", "'data/bank.duckdb' has no scheme"),
        ("nocolon", "has no scheme"),
        ("csv:", "names no location"),
        ("postgresql://user@db/warehouse?colour=blue", "invalid PostgreSQL URL"),
        ("postgres://db/warehouse?schema=", "at most one non-empty schema"),
    ],
)
def test_open_errors(tmp_path: Path, spec: str, message: str) -> None:
    """Bad specs are configuration errors (exit 2) with a hint."""
    with pytest.raises(ConfigError, match=message) as info:
        open_connector(spec, tmp_path)
    assert info.value.hint


def test_corrupt_files_are_config_errors(tmp_path: Path) -> None:
    """A file that is not a database or not Parquet names itself in the error."""
    (tmp_path / "bad.duckdb").write_text("not a database")
    with pytest.raises(ConfigError, match="cannot open DuckDB file .*bad.duckdb"):
        open_connector("duckdb:bad.duckdb", tmp_path)
    (tmp_path / "pq").mkdir()
    (tmp_path / "pq" / "broken.parquet").write_text("not parquet")
    with pytest.raises(ConfigError, match="cannot read parquet file .*broken.parquet"):
        open_connector("parquet:pq", tmp_path)


def test_case_colliding_files(tmp_path: Path) -> None:
    """Two files whose names differ only in case would be one DuckDB table: refused."""
    (tmp_path / "Sales.csv").write_text("a\n1\n")
    (tmp_path / "sales.csv").write_text("a\n2\n")
    with pytest.raises(ConfigError, match="name the same table"):
        open_connector(f"csv:{tmp_path}", tmp_path)


def test_split_spec() -> None:
    """Schemes are case-insensitive; postgres is an alias."""
    assert split_spec("DuckDB:x.duckdb") == ("duckdb", "x.duckdb")
    assert split_spec("postgres://h/db") == ("postgresql", "//h/db")


def test_engine_failures_are_generic_with_the_text_in_detail(duck_file: Path) -> None:
    """A failing local SQL is a LocalEngineError (exit 3, and still a ConnectorError): its
    message is the same whatever the engine said; the engine's text is in ``detail``."""
    from veilql.connectors.base import LocalSQLError
    from veilql.errors import LocalEngineError

    with open_connector(f"duckdb:{duck_file}", Path("/")) as conn:
        with pytest.raises(LocalSQLError) as info:
            conn.run("SELECT CAST(region AS INTEGER) AS r FROM loans")
    err = info.value
    assert isinstance(err, LocalEngineError) and isinstance(err, ConnectorError)
    assert str(err) == LocalEngineError.GENERIC and err.hint == LocalEngineError.GENERIC_HINT
    assert "north" in err.detail and str(duck_file) in err.detail
    assert int(err.exit_code) == 3


def test_unexpected_exception_of_an_engine_is_wrapped_too() -> None:
    """Even an exception type the connector does not know is wrapped, not raised raw."""
    from veilql.errors import LocalEngineError

    class Failing(_Recorder):
        def _execute(self, sql: str) -> pa.Table:
            raise ValueError("row 7 has amount 463.00")

    with pytest.raises(LocalEngineError) as info:
        Failing(Path("/x")).run("SELECT 1 AS x")
    assert "463" not in str(info.value) and "ValueError: row 7" in info.value.detail
