"""DuckDB as a party's engine: a ``duckdb:<file>`` database opened read-only.

``DuckDBEngine`` holds what every DuckDB-backed connector shares (catalog query, locked-down
execution); ``files.FolderConnector`` builds on it for CSV and Parquet folders.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

if TYPE_CHECKING:
    import pyarrow as pa

from veilql.connectors.base import ColumnInfo, Connector, engine_failure
from veilql.connectors.row_bounds import INTEGER_TYPES, constraint_bounds
from veilql.errors import ConfigError, QueryError

# Settings that keep pushed-down SQL from reaching anything but the party's own data: no
# file system access beyond what the connector opened, no extension downloads, and a lock
# so that SQL cannot switch them back on.
_LOCKDOWN: dict[str, Any] = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}

_CATALOG_SQL = """
SELECT table_name, column_name, data_type
FROM duckdb_columns()
WHERE database_name = current_database() AND schema_name = 'main' AND NOT internal
ORDER BY table_name, column_index
"""

# Constraints of the main schema: DuckDB enforces PRIMARY KEY and UNIQUE (an ART index),
# NOT NULL and CHECK on every write, so a one-column key holds no value twice (NULLs aside)
# and ``row_bounds`` may rely on them.
_CONSTRAINTS_SQL = """
SELECT table_name, constraint_type, constraint_column_names, expression
FROM duckdb_constraints()
WHERE database_name = current_database() AND schema_name = 'main'
  AND constraint_type IN ('PRIMARY KEY', 'UNIQUE', 'NOT NULL', 'CHECK')
"""

#: Local SQL texts whose transpiled form is kept (per connector; see ``transpile``), and
#: as many parsed statements (``_statement``).
TRANSPILED_KEPT = 32
# Result types ``run_rows`` reads through DB-API rows (Python ints, as Arrow's are but for
# the 128-bit ones, which Arrow makes Decimals); any other type is read as ``run`` reads it.
_INTEGER_TYPES = INTEGER_TYPES


KEPT_SET = "__veil_over"  # temporary tables of kept over-full units (``overfull_table``)
KEPT_COLUMN = "__veil_u"  # their one column


def _quoted(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _keep(cache: dict[str, Any], key: str, value: Any) -> None:
    """Put ``value`` in ``cache``, dropping the oldest entry beyond ``TRANSPILED_KEPT``."""
    if key not in cache and len(cache) >= TRANSPILED_KEPT:
        cache.pop(next(iter(cache)))
    cache[key] = value


def file_fingerprint(*paths: Path) -> str:
    """``mtime_ns:size`` of each existing path, joined; changes when a file is rewritten.

    >>> file_fingerprint(Path("/no/such/file"))
    '-'
    """
    parts = []
    for p in paths:
        try:
            st = p.stat()
        except FileNotFoundError:
            parts.append("-")
            continue
        parts.append(f"{st.st_mtime_ns}:{st.st_size}")
    return "/".join(parts)


class DuckDBEngine(Connector):
    """Shared body of the connectors that run their SQL on a DuckDB connection."""

    dialect = "duckdb"

    def __init__(self, location: Path, con: duckdb.DuckDBPyConnection) -> None:
        super().__init__(location)
        self._con = con
        self._lock = threading.RLock()  # re-entered by a query run on the connection itself
        self._catalog: dict[str, list[ColumnInfo]] | None = None
        self._bounds: dict[str, dict[str, int]] | None = None
        self._transpiled_sql: dict[str, str] = {}
        self._statements: dict[str, Any] = {}  # SQL text -> its parsed DuckDB statement
        self._overfull: dict[tuple[str, str, int], str] = {}  # (table, unit, m) -> table
        self._kept_version = ""  # the file's fingerprint when the kept tables were made
        self._integer_only: dict[str, bool] = {}  # SQL text -> its result's columns are

    def transpile(self, sql_duckdb: str) -> str:
        """As every connector does (one read-only query, checked by parsing it), with the
        result kept for the last ``TRANSPILED_KEPT`` texts: a repeated query's local SQL
        is the same text, and parsing and writing it again took about 10 ms of a one-party
        query's 20. The texts hold the party's seed; they stay in its own process."""
        with self._lock:
            done = self._transpiled_sql.get(sql_duckdb)
        if done is None:
            done = super().transpile(sql_duckdb)
            with self._lock:
                _keep(self._transpiled_sql, sql_duckdb, done)
        return done

    def _statement(self, sql: str) -> Any:
        """``sql`` parsed by DuckDB, kept for the last ``TRANSPILED_KEPT`` texts: a repeated
        local query skips DuckDB's parser (about 0.5-0.8 ms at 10^6 rows). A parsed statement
        is only ever run, never changed, so cursors in other threads may run it too."""
        with self._lock:
            statement = self._statements.get(sql)
            if statement is None:
                (statement,) = self._con.extract_statements(sql)  # transpile: one query
                _keep(self._statements, sql, statement)
        return statement

    def unique_columns(self, table: str) -> frozenset[str]:
        """Columns of ``table`` (lower case) with at most one row per value: one-column
        PRIMARY KEY or UNIQUE constraints (or a slot allowing one value, ``row_bounds``),
        read once from ``duckdb_constraints()``: the database is open read-only, so they
        cannot change while the connector is open. Views and files have none."""
        return frozenset(c for c, k in self.row_bounds(table).items() if k == 1)

    def row_bounds(self, table: str) -> dict[str, int]:
        """As ``Connector.row_bounds``, from ``duckdb_constraints()`` (read once, as
        ``unique_columns``): one-column keys (1), and a unit UNIQUE together with a NOT NULL
        integer slot that a CHECK restricts to k values (k; ``connectors/row_bounds.py``)."""
        if self._bounds is None:
            try:
                with self._lock:
                    rows = self._con.sql(_CONSTRAINTS_SQL).fetchall()
            except duckdb.Error as exc:
                raise engine_failure(exc, self.spec, "catalog") from None
            types = {t.lower(): {c.name.lower(): c.type for c in cols}
                     for t, cols in self.catalog().items()}
            self._bounds = constraint_bounds(rows, types)
        return dict(self._bounds.get(table.lower(), {}))

    def catalog(self) -> dict[str, list[ColumnInfo]]:
        """Tables and views of the ``main`` schema, columns in declaration order."""
        if self._catalog is None:
            out: dict[str, list[ColumnInfo]] = {}
            try:
                with self._lock:
                    rows = self._con.sql(_CATALOG_SQL).fetchall()
            except duckdb.Error as exc:
                raise engine_failure(exc, self.spec, "catalog") from None
            for table, column, dtype in rows:
                out.setdefault(table, []).append(ColumnInfo(column, dtype))
            self._catalog = out
        return self._catalog

    def _execute(self, sql: str) -> pa.Table:
        """Run ``sql`` on a fresh cursor; a failure is a ``LocalSQLError`` whose message
        is generic (DuckDB's text, which can quote a row's value, is in its ``detail``)."""
        with self._runner(sql) as cur:
            try:
                rel = cur.sql(self._statement(sql))
                if rel is None:  # pragma: no cover - transpile admits queries only
                    raise QueryError(f"local SQL for {self.spec} returned no result", None)
                return rel.to_arrow_table()
            except duckdb.Error as exc:
                raise engine_failure(exc, self.spec) from None

    def _check_kept(self) -> None:
        """Bring kept over-full sets up to date (``DuckDBConnector``); none kept here."""

    @contextlib.contextmanager
    def _runner(self, sql: str) -> Iterator[duckdb.DuckDBPyConnection]:
        """What runs ``sql``: a fresh cursor (DuckDB connections are not safe to share
        across threads, cursors on the same database are), or, for a text that reads a kept
        over-full set (a temporary table, seen by this connection only), the connection
        itself, held under the lock until done."""
        if KEPT_SET in sql:
            with self._lock:
                self._check_kept()
                yield self._con
            return
        with self._lock:
            cur = self._con.cursor()
        try:
            yield cur
        finally:
            cur.close()

    def run_rows(self, sql_duckdb: str) -> list[dict[str, Any]]:
        """As ``Connector.run_rows`` (values are ints), read through DuckDB's DB-API
        ``execute``, which parses and binds the statement once where the relation API's
        ``sql(...).to_arrow_table()`` binds it twice (1.5-3.5 ms CPU of a one-party query at
        10^6 rows). A text whose result has a column of another type is read through
        ``run`` (known after its first run; the types depend on the schema only)."""
        sql = self._transpiled(sql_duckdb)
        if self._integer_only.get(sql) is False:
            return super().run_rows(sql_duckdb)
        with self._runner(sql) as cur:
            try:
                cur.execute(self._statement(sql))
                described = cur.description or []
                integers = all(str(d[1]) in _INTEGER_TYPES for d in described)
                with self._lock:
                    _keep(self._integer_only, sql, integers)
                if integers:
                    names = [d[0] for d in described]
                    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
            except Exception as exc:  # noqa: BLE001 - any engine failure; its text stays here
                raise engine_failure(exc, self.spec) from None
        return super().run_rows(sql_duckdb)

    def result_types(self, sql_duckdb: str) -> list[str] | None:
        """As ``Connector.result_types``: DuckDB binds the query (a relation is lazy; no row
        is read) and names its result types; None when it does not bind."""
        sql = self._transpiled(sql_duckdb)
        with self._runner(sql) as cur:
            try:
                return [str(t) for t in cur.sql(sql).types]
            except Exception:  # noqa: BLE001 - not bound: the caller keeps the SQL as it is
                return None

    def _require_table(self, table: str) -> None:
        if table not in self.catalog():
            raise QueryError(
                f"{self.spec} has no table {table!r}",
                f"tables here: {', '.join(sorted(self.catalog())) or '(none)'}",
            )

    def close(self) -> None:
        """Close the DuckDB connection."""
        self._con.close()


class DuckDBConnector(DuckDBEngine):
    """A DuckDB database file, opened read-only with external file access switched off."""

    scheme = "duckdb"

    def __init__(self, location: Path) -> None:
        config = dict(_LOCKDOWN, enable_external_access=False, lock_configuration=True)
        try:
            con = duckdb.connect(str(location), read_only=True, config=config)
        except duckdb.Error as exc:
            raise ConfigError(
                f"cannot open DuckDB file {str(location)!r}: {str(exc).strip()}",
                "the connector must name an existing DuckDB database file that no other "
                "process holds open for writing",
            ) from exc
        super().__init__(location, con)

    def table_version(self, table: str) -> str:
        """Fingerprint of the whole database file and its write-ahead log."""
        self._require_table(table)
        return file_fingerprint(self.location, Path(str(self.location) + ".wal"))

    def overfull_table(self, table: str, unit: str, m: int) -> tuple[str, str] | None:
        """As ``Connector.overfull_table``: the file is open read-only and DuckDB lets no
        process open it for writing while it is (its file lock), so its rows do not change
        under this connector. The over-full units of (table, unit, bound) are found once,
        into a temporary table of this connection (its own memory; the values are the
        party's own and stay in its process), read by every later query: the same text
        whatever the rows, empty or not (``KEPT_SET`` names it; ``_runner``). Should the
        file's fingerprint change all the same (its bytes rewritten in place by another
        tool), every kept table is found again before the next query reads one."""
        if table.lower() not in {t.lower() for t in self.catalog()}:
            return None
        key = (table.lower(), unit.lower(), int(m))
        with self._lock:
            name = self._overfull.get(key)
            if name is None:
                name = f"{KEPT_SET}{len(self._overfull)}"
                if not self._overfull:
                    self._kept_version = self.table_version(table)
                self._keep_overfull(name, *key)
                self._overfull[key] = name
        return f"temp.{name}", KEPT_COLUMN

    def _keep_overfull(self, name: str, table: str, unit: str, m: int) -> None:
        """(Re)make the temporary table ``name`` of the over-full units (under the lock)."""
        q = _quoted(unit)
        try:
            self._con.execute(
                f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT {q} AS {KEPT_COLUMN} FROM "
                f"{_quoted(table)} WHERE {q} IS NOT NULL GROUP BY {q} HAVING COUNT(*) > {m}")
        except duckdb.Error as exc:
            raise engine_failure(exc, self.spec) from None

    def _check_kept(self) -> None:
        """Find the kept over-full units again if the file changed since (under the lock)."""
        version = file_fingerprint(self.location, Path(str(self.location) + ".wal"))
        if version != self._kept_version:
            for (table, unit, m), name in self._overfull.items():
                self._keep_overfull(name, table, unit, m)
            self._kept_version = version
