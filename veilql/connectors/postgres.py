"""PostgreSQL as a party's engine: ``postgresql://[user@]host[:port]/db[?schema=NAME]``.

The party's local SQL (written by the planner in DuckDB's dialect) is transpiled by sqlglot
to PostgreSQL and runs inside the database, so only the small per-unit result leaves it.

The tables are those of one schema: ``?schema=NAME`` in the URL, else the first schema of
the role's ``search_path`` (normally ``public``). The connection's ``search_path`` is then
pinned to exactly that schema, so unqualified names in local SQL cannot reach another one.
Every other URL parameter is libpq's (``sslmode``, ``connect_timeout``, ``options``, ...).
Passwords do not belong in ``federation.toml``: libpq reads ``PGPASSWORD``, ``~/.pgpass``
and ``PGSERVICE``, and this module masks any password in the URL when it shows it.

Read-only on three levels: ``transpile`` admits one query only; the session is opened with
``default_transaction_read_only = on``; and each query runs in its own ``BEGIN READ ONLY``
transaction that is rolled back afterwards, so even a session setting changed by a function
call inside a SELECT does not outlive that query. Give the party's role nothing but
``USAGE`` on the schema and ``SELECT`` on its tables: superuser-only functions such as
``pg_read_file`` are a matter for the role, not for read-only transactions.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
import pyarrow as pa
import sqlglot
from psycopg.conninfo import conninfo_to_dict
from sqlglot import exp
from sqlglot.errors import SqlglotError

from veilql.connectors.base import (
    ColumnInfo,
    Connector,
    ConnectorError,
    engine_failure,
)
from veilql.connectors.base import redact_url as redact
from veilql.connectors.rewrites import first_line
from veilql.errors import ConfigError, QueryError

#: Seconds to wait for the server when the URL does not say (libpq's ``connect_timeout``).
CONNECT_TIMEOUT = 10
#: Rows fetched from the server per round trip (and per Arrow record batch).
BATCH_ROWS = 50_000
#: DuckDB's DECIMAL holds at most 38 digits; wider NUMERICs are read as DOUBLE.
_MAX_DECIMAL_DIGITS = 38

_URL_HINT = (
    "write it as postgresql://[user@]host[:port]/database[?schema=NAME], with libpq's "
    "parameters (sslmode, connect_timeout, ...) and put the password in PGPASSWORD or "
    "~/.pgpass rather than in the URL"
)

_CATALOG_SQL = """
SELECT c.table_name, c.column_name, c.data_type, c.numeric_precision, c.numeric_scale
FROM information_schema.columns AS c
JOIN information_schema.tables AS t
  ON t.table_schema = c.table_schema AND t.table_name = c.table_name
WHERE c.table_schema = %s
ORDER BY c.table_name, c.ordinal_position
"""

# Cheap and available for every table without reading it: cumulative tuple counters, the
# live-tuple estimate, the file node (changes on TRUNCATE, VACUUM FULL, CLUSTER, ALTER TYPE)
# and the size on disk. See PostgresConnector.table_version for what this cannot see.
_VERSION_SQL = """
SELECT s.n_tup_ins, s.n_tup_upd, s.n_tup_del, s.n_live_tup,
       pg_relation_filenode(c.oid), pg_relation_size(c.oid)
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_all_tables AS s ON s.relid = c.oid
WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
"""

# One-column unique indexes the server enforces on every write and that hold for every row:
# a PRIMARY KEY or UNIQUE constraint (or a plain unique index), valid, live and checked
# immediately, over a column rather than an expression, without a WHERE (a partial index
# says nothing of the rows outside it). INCLUDE columns are not keys.
_UNIQUE_SQL = """
SELECT a.attname
FROM pg_index AS i
JOIN pg_class AS c ON c.oid = i.indrelid
JOIN pg_namespace AS n ON n.oid = c.relnamespace
JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
  AND i.indisunique AND i.indnkeyatts = 1 AND i.indkey[0] > 0
  AND i.indisvalid AND i.indislive AND i.indimmediate
  AND i.indpred IS NULL AND i.indexprs IS NULL
"""

# information_schema.columns.data_type -> the DuckDB spelling policies/coltypes.py knows.
_CATALOG_TYPES: dict[str, str] = {
    "smallint": "SMALLINT",
    "integer": "INTEGER",
    "bigint": "BIGINT",
    "real": "FLOAT",
    "double precision": "DOUBLE",
    "text": "VARCHAR",
    "character varying": "VARCHAR",
    "character": "VARCHAR",
    "name": "VARCHAR",
    "boolean": "BOOLEAN",
    "date": "DATE",
    "timestamp without time zone": "TIMESTAMP",
    "timestamp with time zone": "TIMESTAMP WITH TIME ZONE",
    "time without time zone": "TIME",
    "uuid": "UUID",
}

# Result column type name (psycopg's type registry) -> Arrow type, where fixed.
_ARROW_TYPES: dict[str, pa.DataType] = {
    "int2": pa.int16(),
    "int4": pa.int32(),
    "int8": pa.int64(),
    "oid": pa.int64(),
    "float4": pa.float32(),
    "float8": pa.float64(),
    "text": pa.string(),
    "varchar": pa.string(),
    "bpchar": pa.string(),
    "name": pa.string(),
    "bool": pa.bool_(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us"),
    "timestamptz": pa.timestamp("us", tz="UTC"),
}


def catalog_type(data_type: str, precision: int | None, scale: int | None) -> str:
    """The DuckDB spelling of a PostgreSQL column type, as ``information_schema`` names it.

    A NUMERIC with precision and scale keeps both (its scale is the policy's default
    decimals); an unconstrained or wider-than-DuckDB NUMERIC is DOUBLE, as it is read.

    >>> catalog_type("numeric", 12, 2), catalog_type("numeric", None, None)
    ('DECIMAL(12,2)', 'DOUBLE')
    >>> catalog_type("character varying", None, None), catalog_type("integer", 32, 0)
    ('VARCHAR', 'INTEGER')
    """
    if data_type == "numeric":
        if precision is not None and scale is not None and precision <= _MAX_DECIMAL_DIGITS:
            return f"DECIMAL({precision},{scale})"
        return "DOUBLE"
    return _CATALOG_TYPES.get(data_type, data_type.upper())


def arrow_type(type_name: str, precision: int | None, scale: int | None) -> pa.DataType | None:
    """The Arrow type of a result column, or None to let Arrow infer it from the values.

    NUMERIC is exact (``decimal128``) when the result column carries its precision and
    scale, as a table column does; an unconstrained NUMERIC (``ROUND(x)``, ``SUM(x)``) is
    float64, so one column type always gives one Arrow type whatever the values.

    >>> arrow_type("numeric", 12, 2), arrow_type("numeric", None, None), arrow_type("int8", 0, 0)
    (Decimal128Type(decimal128(12, 2)), DataType(double), DataType(int64))
    """
    if type_name == "numeric":
        if precision is not None and scale is not None and precision <= _MAX_DECIMAL_DIGITS:
            return pa.decimal128(precision, scale)
        return pa.float64()
    return _ARROW_TYPES.get(type_name)


def split_url(url: str) -> tuple[str, str | None]:
    """The libpq URL without VeilQL's ``schema`` parameter, and that schema (or None).

    >>> split_url("postgresql://db.example/shop?sslmode=require&schema=sales")
    ('postgresql://db.example/shop?sslmode=require', 'sales')
    >>> split_url("postgres://u@h:5433/w")
    ('postgresql://u@h:5433/w', None)
    """
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise ConfigError(f"not a PostgreSQL URL: {redact(url)!r}", _URL_HINT)
    # The other parameters are passed on byte for byte: libpq decodes %XX but not '+'.
    items = [item for item in parts.query.split("&") if item]
    schemas = [unquote(v) for k, _, v in (i.partition("=") for i in items) if k == "schema"]
    if len(schemas) > 1 or (schemas and not schemas[0].strip()):
        raise ConfigError(
            f"PostgreSQL URL {redact(url)!r} must name at most one non-empty schema",
            "write ?schema=NAME once, or leave it out to use the role's search_path "
            "(normally public)",
        )
    rest = "&".join(i for i in items if i.partition("=")[0] != "schema")
    libpq = urlunsplit(("postgresql", parts.netloc, parts.path, rest, parts.fragment))
    return libpq, (schemas[0].strip() if schemas else None)


_HALF_AWAY = sqlglot.parse_one(
    "TRUNC(__x) + CASE WHEN ABS(__x - TRUNC(__x)) >= 0.5 THEN SIGN(__x) ELSE 0 END",
    read="postgres",
)


def round_half_away(node: exp.Expression) -> exp.Expression:
    """Rewrite ``ROUND(x[, d])`` (literal ``d``) to round halves away from zero, as DuckDB
    does for every type; a ``sqlglot`` transform.

    PostgreSQL's ``round(double precision)`` rounds halves to even (``rint``) and it has
    no ``round(double precision, int)`` at all, so a party storing money as double
    precision would otherwise get other fixed-point values than DuckDB (0.125 x 100 gives
    12, not 13). ``x - TRUNC(x)`` is exact in binary floating point, so the comparison
    with 0.5 is too; for NUMERIC the rewrite agrees with PostgreSQL's own ``round``.
    Like DuckDB, ``d`` digits are rounded as ``x * 10^d``, then divided back.

    >>> sqlglot.parse_one("SELECT ROUND(x) FROM t").transform(round_half_away).sql("postgres")
    'SELECT (TRUNC(x) + CASE WHEN ABS(x - TRUNC(x)) >= 0.5 THEN SIGN(x) ELSE 0 END) FROM t'
    """
    if not isinstance(node, exp.Round):
        return node
    digits = node.args.get("decimals")
    if digits is not None and not (isinstance(digits, exp.Literal) and digits.is_int):
        return node
    places = int(digits.this) if digits is not None else 0
    x: exp.Expression = node.this
    if places:
        x = exp.Mul(this=exp.Paren(this=x.copy()), expression=exp.Literal.number(10**places))
    rounded = _HALF_AWAY.transform(
        lambda n: x.copy() if isinstance(n, exp.Column) and n.name == "__x" else n
    )
    out: exp.Expression = exp.Paren(this=rounded)
    if places:
        out = exp.Paren(this=exp.Div(this=out, expression=exp.Literal.number(10**places)))
    return out



class PostgresConnector(Connector):
    """A schema of a PostgreSQL database, read through one read-only session."""

    scheme = "postgresql"
    dialect = "postgres"

    def __init__(self, location: Path | str) -> None:
        # The base class keeps a location for specs of files and folders; here it is a URL.
        self.url = str(location)
        libpq, wanted = split_url(self.url)
        try:
            params = conninfo_to_dict(libpq)
        except psycopg.ProgrammingError as exc:
            raise ConfigError(
                f"invalid PostgreSQL URL {redact(self.url)!r}: {first_line(exc)}", _URL_HINT
            ) from exc
        # Read-only for the whole session; the server refuses writes even if a later
        # statement got past `transpile`. Appended to any options the URL already sets.
        options = params.get("options") or ""
        params["options"] = (options + " -c default_transaction_read_only=on").strip()
        params.setdefault("connect_timeout", str(CONNECT_TIMEOUT))
        params.setdefault("application_name", "veilql")
        try:
            self._con = psycopg.connect(**params)
        except psycopg.Error as exc:
            raise ConnectorError(
                f"cannot connect to {redact(self.url)}: {first_line(exc)}",
                "check that the PostgreSQL server is running and reachable, the database "
                "and role exist, and the password is in PGPASSWORD or ~/.pgpass",
            ) from exc
        self._con.read_only = True  # every transaction starts with BEGIN READ ONLY
        self._lock = threading.Lock()
        self._catalog: dict[str, list[ColumnInfo]] | None = None
        try:
            self.schema = self._pin_schema(wanted)
        except BaseException:
            self._con.close()
            raise

    def transpile(self, sql_duckdb: str) -> str:
        """Check and transpile as every connector does, with DuckDB's rounding kept
        (see ``round_half_away``)."""
        tree = self._one_query(sql_duckdb)  # refuses anything but one query
        try:
            return tree.transform(round_half_away).sql(dialect=self.dialect)
        except SqlglotError as exc:
            raise engine_failure(exc, self.spec, "transpile") from None

    @property
    def spec(self) -> str:
        """The URL as configured, its password (if any) masked."""
        return redact(self.url)

    def _pin_schema(self, wanted: str | None) -> str:
        """Resolve the party's schema and make it the session's only search_path entry."""
        try:
            return self._pin(wanted)
        except psycopg.Error as exc:
            self._end()
            raise ConnectorError(
                f"{self.spec}: cannot set the session's schema: {first_line(exc)}",
                "check that the role may use the schema named by ?schema= (or its "
                "search_path)",
            ) from exc

    def _pin(self, wanted: str | None) -> str:
        """The body of ``_pin_schema``."""
        with self._con.cursor() as cur:
            if wanted is None:
                cur.execute("SELECT current_schema()")
                row = cur.fetchone()
                wanted = row[0] if row else None
                if wanted is None:
                    self._con.rollback()
                    raise ConfigError(
                        f"{self.spec}: the role's search_path names no existing schema",
                        "add ?schema=NAME to the URL",
                    )
            else:
                cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (wanted,))
                if cur.fetchone() is None:
                    self._con.rollback()
                    raise ConfigError(
                        f"{self.spec}: schema {wanted!r} does not exist",
                        "check ?schema= in the URL (schema names are case-sensitive)",
                    )
            # set_config is not a write, so it runs in the read-only transaction; commit
            # keeps it for the session (pg_catalog stays implicitly first).
            cur.execute("SELECT set_config('search_path', quote_ident(%s), false)", (wanted,))
        self._con.commit()
        return wanted

    def catalog(self) -> dict[str, list[ColumnInfo]]:
        """Tables and views of the schema that the role can see, columns in order."""
        if self._catalog is None:
            rows = self._query(_CATALOG_SQL, (self.schema,), "catalog")
            out: dict[str, list[ColumnInfo]] = {}
            for table, column, dtype, precision, scale in rows:
                out.setdefault(table, []).append(
                    ColumnInfo(column, catalog_type(dtype, precision, scale))
                )
            self._catalog = out
        return self._catalog

    def table_version(self, table: str) -> str:
        """Fingerprint from the table's statistics counters, file node and size.

        Cheap (no scan), and it changes with every INSERT, UPDATE, DELETE, TRUNCATE or
        rewrite, with two limits: the statistics of a writer's session reach the shared
        counters only when it flushes them (PostgreSQL 15: within seconds of its commit),
        so a change made just before a query may be noticed one query late; and a
        statistics reset changes the fingerprint without a data change (harmless: a cache
        miss). A view has no such counters: its version is fresh on every call, so
        nothing derived from it is ever reused.
        """
        if table not in self.catalog():
            raise QueryError(
                f"{self.spec} has no table {table!r}",
                f"tables here: {', '.join(sorted(self.catalog())) or '(none)'}",
            )
        rows = self._query(_VERSION_SQL, (self.schema, table), "version")
        if not rows:
            return "view:" + secrets.token_hex(8)
        return ":".join("-" if v is None else str(v) for v in rows[0])

    def unique_columns(self, table: str) -> frozenset[str]:
        """Columns of ``table`` with a one-column unique index the server enforces
        (``_UNIQUE_SQL``), looked up on every call (the schema may change between queries).

        Only lower-case names count: the local SQL's unquoted identifiers fold to lower
        case in PostgreSQL, so a mixed-case table or column is never taken for another.
        """
        if table != table.lower():
            return frozenset()
        rows = self._query(_UNIQUE_SQL, (self.schema, table), "catalog")
        return frozenset(name for (name,) in rows if name == name.lower())

    def _query(self, sql: str, params: Sequence[Any], stage: str) -> list[tuple[Any, ...]]:
        """Run VeilQL's own catalog SQL (with parameters) in a read-only transaction; a
        failure is a ``LocalSQLError`` (generic message, the server's text in ``detail``)."""
        with self._lock:
            try:
                with self._con.cursor() as cur:
                    cur.execute(sql, params)
                    return cur.fetchall()
            except psycopg.Error as exc:
                raise engine_failure(exc, self.spec, stage) from None
            finally:
                self._end()

    def _execute(self, sql: str) -> pa.Table:
        """Run one PostgreSQL query in a read-only transaction, then roll it back.

        The rows stream through a server-side cursor in batches of ``BATCH_ROWS``, each
        turned into Arrow columns typed from the result's description (``arrow_type``),
        so a large result never sits in memory as Python rows all at once.
        """
        batches: list[pa.RecordBatch] = []
        with self._lock:
            try:
                with self._con.cursor(name="veilql_local") as cur:
                    cur.itersize = BATCH_ROWS
                    cur.execute(sql)  # no parameters: sent as is, '%' needs no escaping
                    if cur.description is None:  # pragma: no cover - transpile admits queries
                        raise QueryError(f"local SQL for {self.spec} returned no result", None)
                    names = [col.name for col in cur.description]
                    types = [self._arrow_type(col) for col in cur.description]
                    while True:
                        rows = cur.fetchmany(BATCH_ROWS)
                        batches.append(_batch(rows, names, types))
                        if len(rows) < BATCH_ROWS:
                            break
            except psycopg.Error as exc:
                raise engine_failure(exc, self.spec) from None
            finally:
                self._end()
        # Batches share one schema unless a column's type had to be inferred or fell
        # back (see _to_arrow); then Arrow unifies them, or the first batch's types win.
        try:
            return pa.Table.from_batches(batches)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return pa.concat_tables([pa.Table.from_batches([b]) for b in batches],
                                    promote_options="permissive")

    def _arrow_type(self, col: Any) -> pa.DataType | None:
        """The Arrow type of a result column of psycopg's description."""
        info = self._con.adapters.types.get(col.type_code)
        return arrow_type(info.name if info else "", col.precision, col.scale)

    def _end(self) -> None:
        """Roll back the current transaction: nothing a query did outlives it."""
        try:
            self._con.rollback()
        except psycopg.Error:  # the connection died; the next call reports it
            pass

    def close(self) -> None:
        """Close the session."""
        self._con.close()


def _batch(rows: list[tuple[Any, ...]], names: list[str],
           types: list[pa.DataType | None]) -> pa.RecordBatch:
    """Rows (tuples) as one Arrow record batch, column by column."""
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(names)
    arrays = [_to_arrow(list(v), t) for v, t in zip(columns, types, strict=True)]
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _to_arrow(values: list[Any], wanted: pa.DataType | None) -> pa.Array:
    """``values`` as an Arrow array of type ``wanted`` (inferred when None).

    A NUMERIC column with values a decimal cannot hold (NaN, Infinity) becomes float64,
    and anything Arrow cannot infer becomes strings, rather than failing the query.
    """
    if wanted is None:
        try:
            return pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return pa.array([None if v is None else str(v) for v in values], pa.string())
    if pa.types.is_floating(wanted):  # unconstrained NUMERIC arrives as Decimal
        values = [None if v is None else float(v) for v in values]
    try:
        return pa.array(values, type=wanted)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        if pa.types.is_decimal(wanted):
            return pa.array([None if v is None else float(Decimal(v)) for v in values],
                            pa.float64())
        raise
