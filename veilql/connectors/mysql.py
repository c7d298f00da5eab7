"""MySQL and MariaDB as a party's engine: ``mysql://user@host[:port]/database[?...]``.

The party's local SQL (written by the planner in DuckDB's dialect) is transpiled by sqlglot
to MySQL and runs inside the server, so only the small per-unit result leaves it. The
tables are those of the URL's database (views included). ``mariadb://`` is the same
connector. URL parameters: ``connect_timeout`` (seconds), ``unix_socket``, ``ssl_ca``,
``ssl_cert``, ``ssl_key``, ``ssl_verify_cert``, ``ssl_verify_identity``,
``read_default_file`` (an option file such as ``~/.my.cnf``) and ``read_default_group``.
Passwords do not belong in ``federation.toml``: the connector reads ``$MYSQL_PWD`` or the
option file, and masks any password in the URL when it shows it.

Read-only on three levels: ``transpile`` admits one query only; the session is
``SET SESSION TRANSACTION READ ONLY``; and each query runs in its own
``START TRANSACTION READ ONLY`` that is rolled back afterwards. Give the party's account
nothing but ``SELECT`` on its database (no ``FILE``, no ``PROCESS``): what a function may
reach inside a SELECT is a matter for the account.

DuckDB's semantics are kept where MySQL's differ (``duckdb_semantics``): halves round away
from zero for DOUBLE too (MySQL rounds a DOUBLE half to even), ``/`` divides in DOUBLE
(MySQL's DECIMAL division keeps 4 more digits), GREATEST and LEAST skip NULLs, ``LOG(x)``
is base 10, day-of-week numbers start at 0 on Sunday, DATE_TRUNC gives a DATETIME,
DATE_DIFF counts unit boundaries, a date plus an interval is a DATETIME, and a string
literal compared with a column compares byte for byte (MySQL's default collations
ignore case). The session's time zone is UTC and its ``sql_mode`` is fixed, so the SQL
sqlglot writes (backslash escapes, backquoted names) means the same on every server.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pyarrow as pa
import pymysql
import pymysql.cursors
import sqlglot  # noqa: F401 - the doctests parse with it
from pymysql.constants import FIELD_TYPE, FLAG
from sqlglot import exp
from sqlglot.errors import SqlglotError

from veilql.connectors.base import (
    ColumnInfo,
    Connector,
    ConnectorError,
    engine_failure,
)
from veilql.connectors.base import redact_url as redact
from veilql.connectors.rewrites import (
    bottom_up,
    first_line,
    float_division,
    log_base_ten,
    template,
)
from veilql.errors import ConfigError, QueryError

#: Seconds to wait for the server when the URL does not say.
CONNECT_TIMEOUT = 10
#: Rows fetched from the server per round trip (and per Arrow record batch).
BATCH_ROWS = 50_000
DEFAULT_PORT = 3306
#: DuckDB's DECIMAL holds at most 38 digits; wider DECIMALs are read as DOUBLE.
_MAX_DECIMAL_DIGITS = 38
#: Session settings: UTC, and a sql_mode without ANSI_QUOTES, PIPES_AS_CONCAT or
#: NO_BACKSLASH_ESCAPES, which would change what sqlglot's MySQL means.
_SQL_MODE = "ONLY_FULL_GROUP_BY,STRICT_ALL_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION"
#: Case- and accent-sensitive collations without trailing-space padding, best first
#: (MySQL 8, MariaDB 10.2+, then the padded one every server has).
_BINARY_COLLATIONS = ("utf8mb4_0900_bin", "utf8mb4_nopad_bin", "utf8mb4_bin")
_PARAMS = {
    "connect_timeout": int, "unix_socket": str, "read_default_file": str,
    "read_default_group": str, "ssl_ca": str, "ssl_cert": str, "ssl_key": str,
    "ssl_verify_cert": lambda v: v.lower() in ("1", "true", "yes", "on"),
    "ssl_verify_identity": lambda v: v.lower() in ("1", "true", "yes", "on"),
}

_URL_HINT = (
    "write it as mysql://user@host[:port]/database (parameters: connect_timeout, "
    "unix_socket, ssl_ca, ssl_cert, ssl_key, ssl_verify_cert, ssl_verify_identity, "
    "read_default_file) and put the password in $MYSQL_PWD or an option file rather than "
    "in the URL"
)

_CATALOG_SQL = """
SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE
FROM information_schema.COLUMNS
WHERE TABLE_SCHEMA = DATABASE()
ORDER BY TABLE_NAME, ORDINAL_POSITION
"""

# Cheap and available without reading the table: see MySQLConnector.table_version.
_VERSION_SQL = """
SELECT TABLE_TYPE, CREATE_TIME, UPDATE_TIME, TABLE_ROWS, DATA_LENGTH, INDEX_LENGTH,
       AUTO_INCREMENT
FROM information_schema.TABLES
WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s
"""

# information_schema.COLUMNS.DATA_TYPE -> the DuckDB spelling policies/coltypes.py knows.
_CATALOG_TYPES: dict[str, str] = {
    "tinyint": "TINYINT", "smallint": "SMALLINT", "mediumint": "INTEGER", "int": "INTEGER",
    "integer": "INTEGER", "bigint": "BIGINT", "float": "FLOAT", "double": "DOUBLE",
    "real": "DOUBLE", "char": "VARCHAR", "varchar": "VARCHAR", "tinytext": "VARCHAR",
    "text": "VARCHAR", "mediumtext": "VARCHAR", "longtext": "VARCHAR", "enum": "VARCHAR",
    "set": "VARCHAR", "json": "VARCHAR", "date": "DATE", "datetime": "TIMESTAMP",
    "timestamp": "TIMESTAMP", "time": "TIME", "year": "SMALLINT", "binary": "BLOB",
    "varbinary": "BLOB", "tinyblob": "BLOB", "blob": "BLOB", "mediumblob": "BLOB",
    "longblob": "BLOB", "bit": "BIT",
}
_UNSIGNED = {"TINYINT": "UTINYINT", "SMALLINT": "USMALLINT", "INTEGER": "UINTEGER",
             "BIGINT": "UBIGINT"}

_INT_FIELDS = {
    FIELD_TYPE.TINY: (pa.int8(), pa.uint8()),
    FIELD_TYPE.SHORT: (pa.int16(), pa.uint16()),
    FIELD_TYPE.INT24: (pa.int32(), pa.uint32()),
    FIELD_TYPE.LONG: (pa.int32(), pa.uint32()),
    FIELD_TYPE.LONGLONG: (pa.int64(), pa.uint64()),
}
_TEXT_FIELDS = {FIELD_TYPE.VAR_STRING, FIELD_TYPE.STRING, FIELD_TYPE.VARCHAR,
                FIELD_TYPE.BLOB, FIELD_TYPE.TINY_BLOB, FIELD_TYPE.MEDIUM_BLOB,
                FIELD_TYPE.LONG_BLOB, FIELD_TYPE.ENUM, FIELD_TYPE.SET, FIELD_TYPE.JSON}
_FIXED_FIELDS: dict[int, pa.DataType] = {
    FIELD_TYPE.YEAR: pa.int16(), FIELD_TYPE.FLOAT: pa.float32(),
    FIELD_TYPE.DOUBLE: pa.float64(), FIELD_TYPE.DATE: pa.date32(),
    FIELD_TYPE.DATETIME: pa.timestamp("us"), FIELD_TYPE.TIMESTAMP: pa.timestamp("us"),
    FIELD_TYPE.NULL: pa.null(),
}
_BINARY_CHARSET = 63


def catalog_type(data_type: str, column_type: str, precision: int | None,
                 scale: int | None) -> str:
    """The DuckDB spelling of a MySQL column type, as ``information_schema`` names it.

    A DECIMAL keeps precision and scale (its scale is the policy's default decimals); a
    DECIMAL wider than DuckDB's 38 digits is DOUBLE, as it is read; UNSIGNED integers are
    DuckDB's unsigned types. ``TINYINT(1)`` (MySQL's BOOLEAN) stays an integer.

    >>> catalog_type("decimal", "decimal(12,2)", 12, 2), catalog_type("decimal", "x", 65, 2)
    ('DECIMAL(12,2)', 'DOUBLE')
    >>> catalog_type("int", "int(10) unsigned", 10, 0), catalog_type("varchar", "varchar(8)",
    ...                                                            None, None)
    ('UINTEGER', 'VARCHAR')
    """
    data_type = data_type.lower()
    if data_type in ("decimal", "numeric"):
        if precision is not None and scale is not None and precision <= _MAX_DECIMAL_DIGITS:
            return f"DECIMAL({precision},{scale})"
        return "DOUBLE"
    name = _CATALOG_TYPES.get(data_type, data_type.upper())
    if "unsigned" in column_type.lower():
        name = _UNSIGNED.get(name, name)
    return name


def arrow_type(type_code: int, flags: int, length: int, scale: int,
               charset: int) -> pa.DataType | None:
    """The Arrow type of a result column from its MySQL field metadata (None: infer).

    A DECIMAL's precision is its display length less the sign and the point; a DECIMAL
    wider than 38 digits is float64, so one column type always gives one Arrow type.

    >>> arrow_type(FIELD_TYPE.NEWDECIMAL, 0, 14, 2, 63), arrow_type(FIELD_TYPE.LONGLONG, 0,
    ...                                                              20, 0, 63)
    (Decimal128Type(decimal128(12, 2)), DataType(int64))
    """
    unsigned = bool(flags & FLAG.UNSIGNED)
    if type_code in _INT_FIELDS:
        return _INT_FIELDS[type_code][unsigned]
    if type_code in (FIELD_TYPE.NEWDECIMAL, FIELD_TYPE.DECIMAL):
        precision = length - (1 if scale > 0 else 0) - (0 if unsigned else 1)
        precision = max(precision, scale, 1)
        if precision <= _MAX_DECIMAL_DIGITS:
            return pa.decimal128(precision, scale)
        return pa.float64()
    if type_code in _TEXT_FIELDS:
        return pa.binary() if charset == _BINARY_CHARSET and type_code != FIELD_TYPE.JSON \
            else pa.string()
    return _FIXED_FIELDS.get(type_code)


def connect_args(url: str) -> dict[str, Any]:
    """PyMySQL's ``connect`` arguments for a ``mysql://`` URL (no password from the URL
    is needed: ``$MYSQL_PWD`` or ``read_default_file`` supply it).

    >>> args = connect_args("mysql://ann@db.example:3307/shop?connect_timeout=3")
    >>> args["host"], args["port"], args["user"], args["database"], args["connect_timeout"]
    ('db.example', 3307, 'ann', 'shop', 3)
    """
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("mysql", "mariadb"):
        raise ConfigError(f"not a MySQL URL: {redact(url)!r}", _URL_HINT)
    database = unquote(parts.path.lstrip("/"))
    if not database or "/" in database:
        raise ConfigError(f"MySQL URL {redact(url)!r} must name one database",
                          "write mysql://user@host:port/database")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise ConfigError(f"invalid MySQL URL {redact(url)!r}: {exc}", _URL_HINT) from exc
    args: dict[str, Any] = {
        "host": parts.hostname or "localhost", "port": port,
        "user": unquote(parts.username) if parts.username else None,
        "database": database, "connect_timeout": CONNECT_TIMEOUT,
    }
    password = unquote(parts.password) if parts.password else os.environ.get("MYSQL_PWD")
    if password is not None:
        args["password"] = password
    ssl: dict[str, Any] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in _PARAMS:
            raise ConfigError(f"invalid MySQL URL {redact(url)!r}: unknown parameter {key!r}",
                              _URL_HINT)
        try:
            converted = _PARAMS[key](value)
        except ValueError as exc:
            raise ConfigError(f"invalid MySQL URL {redact(url)!r}: {key}={value!r}",
                              _URL_HINT) from exc
        if key.startswith("ssl_"):
            ssl[key[4:]] = os.path.expanduser(converted) if isinstance(converted, str) \
                else converted
        elif key == "read_default_file":
            args[key] = os.path.expanduser(converted)
        else:
            args[key] = converted
    if ssl:
        args["ssl"] = {"ca": ssl.get("ca"), "cert": ssl.get("cert"), "key": ssl.get("key"),
                       "check_hostname": ssl.get("verify_identity", False)}
        args["ssl_verify_cert"] = ssl.get("verify_cert", "ca" in ssl)
        args["ssl_verify_identity"] = ssl.get("verify_identity", False)
    return args


# -- DuckDB's semantics in MySQL -------------------------------------------------------------

def nulls_skipped(node: exp.Expression) -> exp.Expression | None:
    """GREATEST/LEAST skip NULL arguments, as in DuckDB (MySQL returns NULL if any is):
    each argument is replaced by ``COALESCE(arg, other)``, which changes no non-NULL set.

    >>> nulls_skipped(sqlglot.parse_one("GREATEST(a, 0)")).sql("mysql")
    'GREATEST(COALESCE(a, 0), 0)'
    """
    if not isinstance(node, exp.Greatest | exp.Least):
        return None
    args = [node.this, *node.expressions]
    if len(args) < 2:
        return None
    literals = [a for a in args if isinstance(a, exp.Literal)]
    out = []
    for i, arg in enumerate(args):
        if isinstance(arg, exp.Literal):
            out.append(arg.copy())
            continue
        others = literals[:1] or [a for j, a in enumerate(args) if j != i]
        out.append(exp.Coalesce(this=arg.copy(), expressions=[o.copy() for o in others]))
    return type(node)(this=out[0], expressions=out[1:])


_ROUND_HALF_AWAY = template(
    "TRUNCATE(__a, 0) + CASE WHEN ABS(__a - TRUNCATE(__a, 0)) >= 0.5 THEN SIGN(__a) ELSE 0 END",
    "mysql")


def round_half_away(node: exp.Expression) -> exp.Expression | None:
    """``ROUND(x[, d])`` (literal ``d``) rounds halves away from zero, as DuckDB does for
    every type (MySQL's ROUND of a DOUBLE goes to even: ``ROUND(2.5e0)`` is 2). Like
    DuckDB, ``d`` digits round ``x * 10^d``, then divide back; ``x - TRUNCATE(x, 0)`` is
    exact in binary floating point, so the comparison with 0.5 is too.

    >>> round_half_away(sqlglot.parse_one("ROUND(x)")).sql("mysql")
    '(TRUNCATE((x), 0) + CASE WHEN ABS((x) - TRUNCATE((x), 0)) >= 0.5 THEN SIGN((x)) ELSE 0 END)'
    """
    if not isinstance(node, exp.Round):
        return None
    digits = node.args.get("decimals")
    if digits is not None and not (isinstance(digits, exp.Literal) and digits.is_int):
        return None
    places = int(digits.this) if digits is not None else 0
    x: exp.Expression = node.this
    if places:
        x = exp.Mul(this=exp.Paren(this=x.copy()), expression=exp.Literal.number(10**places))
    out: exp.Expression = exp.Paren(this=_ROUND_HALF_AWAY(x))
    if places:
        out = exp.Paren(this=exp.Div(this=out, expression=exp.Literal.number(10**places)))
    return out


def _unit(node: exp.Expression) -> str:
    unit = node.args.get("unit")
    name = unit.name.lower() if isinstance(unit, exp.Var | exp.Literal) else ""
    return name[:-1] if name.endswith("s") else name


_TRUNC = {
    "year": template("CAST(DATE_FORMAT(__a, '%Y-01-01') AS DATETIME)", "mysql"),
    "quarter": template("CAST(CONCAT(DATE_FORMAT(__a, '%Y-'), LPAD(QUARTER(__a) * 3 - 2, 2, "
                         "'0'), '-01') AS DATETIME)", "mysql"),
    "month": template("CAST(DATE_FORMAT(__a, '%Y-%m-01') AS DATETIME)", "mysql"),
    "week": template("CAST(DATE_SUB(DATE(__a), INTERVAL WEEKDAY(__a) DAY) AS DATETIME)", "mysql"),
    "day": template("CAST(DATE(__a) AS DATETIME)", "mysql"),
    "hour": template("CAST(DATE_FORMAT(__a, '%Y-%m-%d %H:00:00') AS DATETIME)", "mysql"),
    "minute": template("CAST(DATE_FORMAT(__a, '%Y-%m-%d %H:%i:00') AS DATETIME)", "mysql"),
    "second": template("CAST(DATE_FORMAT(__a, '%Y-%m-%d %H:%i:%s') AS DATETIME)", "mysql"),
}
_DIFF = {  # DuckDB's DATE_DIFF counts unit boundaries between __a and __b
    "year": template("YEAR(__b) - YEAR(__a)", "mysql"),
    "quarter": template("(YEAR(__b) * 4 + QUARTER(__b)) - (YEAR(__a) * 4 + QUARTER(__a))", "mysql"),
    "month": template("(YEAR(__b) * 12 + MONTH(__b)) - (YEAR(__a) * 12 + MONTH(__a))", "mysql"),
    "week": template("DATEDIFF(__b, __a) DIV 7", "mysql"),
    "day": template("DATEDIFF(__b, __a)", "mysql"),
    "hour": template("TIMESTAMPDIFF(HOUR, DATE_FORMAT(__a, '%Y-%m-%d %H:00:00'), "
                      "DATE_FORMAT(__b, '%Y-%m-%d %H:00:00'))", "mysql"),
    "minute": template("TIMESTAMPDIFF(MINUTE, DATE_FORMAT(__a, '%Y-%m-%d %H:%i:00'), "
                        "DATE_FORMAT(__b, '%Y-%m-%d %H:%i:00'))", "mysql"),
    "second": template("TIMESTAMPDIFF(SECOND, DATE_FORMAT(__a, '%Y-%m-%d %H:%i:%s'), "
                        "DATE_FORMAT(__b, '%Y-%m-%d %H:%i:%s'))", "mysql"),
}
_PARTS = {  # EXTRACT parts whose MySQL spelling or numbering differs
    "dow": template("DAYOFWEEK(__a) - 1", "mysql"),
    "dayofweek": template("DAYOFWEEK(__a) - 1", "mysql"),
    "isodow": template("WEEKDAY(__a) + 1", "mysql"),
    "doy": template("DAYOFYEAR(__a)", "mysql"),
    "dayofyear": template("DAYOFYEAR(__a)", "mysql"),
    "week": template("WEEK(__a, 3)", "mysql"),
    "weekofyear": template("WEEK(__a, 3)", "mysql"),
    "dayofmonth": template("DAYOFMONTH(__a)", "mysql"),
}


def dates(node: exp.Expression) -> exp.Expression | None:
    """DuckDB's date functions in MySQL: day-of-week from 0 (Sunday), ISO weeks,
    DATE_TRUNC as a DATETIME, DATE_DIFF counting boundaries, date + interval a DATETIME.

    >>> dates(sqlglot.parse_one("DATE_DIFF('month', a, b)", read="duckdb")).sql("mysql")
    '((YEAR((b)) * 12 + MONTH((b))) - (YEAR((a)) * 12 + MONTH((a))))'
    """
    if isinstance(node, exp.DayOfWeek):
        return exp.Paren(this=_PARTS["dow"](node.this))
    if isinstance(node, exp.Extract):
        part = node.this.name.lower() if isinstance(node.this, exp.Var | exp.Literal) else ""
        if part in _PARTS:
            return exp.Paren(this=_PARTS[part](node.expression))
        return None
    if isinstance(node, exp.TimestampTrunc | exp.DateTrunc) and _unit(node) in _TRUNC:
        return _TRUNC[_unit(node)](node.this)
    if isinstance(node, exp.DateDiff) and _unit(node) in _DIFF:
        return exp.Paren(this=_DIFF[_unit(node)](node.expression, node.this))
    if isinstance(node, exp.Add | exp.Sub) and any(
            isinstance(a, exp.Interval) for a in (node.this, node.expression)):
        return exp.Cast(this=node.copy(), to=exp.DataType.build("DATETIME", dialect="mysql"))
    return None


_COMPARED = (exp.EQ, exp.NEQ, exp.LT, exp.LTE, exp.GT, exp.GTE, exp.Like, exp.In,
             exp.Between, exp.NullSafeEQ, exp.NullSafeNEQ)


def binary_strings(collation: str) -> Callable[[exp.Expression], exp.Expression | None]:
    """A rewrite giving string literals compared with anything the ``collation`` (a binary
    one), so ``region = 'north'`` does not match 'North' as MySQL's default collations do.

    >>> f = binary_strings("utf8mb4_bin")
    >>> bottom_up(sqlglot.parse_one("SELECT a = 'x' AND b LIKE 'y%'"), f).sql("mysql")
    "SELECT a = 'x' COLLATE utf8mb4_bin AND b LIKE 'y%' COLLATE utf8mb4_bin"
    """
    def rewrite(node: exp.Expression) -> exp.Expression | None:
        if (isinstance(node, exp.Literal) and node.is_string
                and isinstance(node.parent, _COMPARED) and node.arg_key != "escape"):
            return exp.Collate(this=node.copy(), expression=exp.var(collation))
        return None
    return rewrite


def duckdb_semantics(tree: exp.Expression, collation: str) -> exp.Expression:
    """``tree`` (local SQL read as DuckDB) rewritten so that MySQL computes DuckDB's values
    (see the module docstring)."""
    strings = binary_strings(collation)

    def rewrite(node: exp.Expression) -> exp.Expression | None:
        for step in (float_division, log_base_ten, nulls_skipped, round_half_away, dates,
                     strings):
            new = step(node)
            if new is not None:
                return new
        return None
    return bottom_up(tree, rewrite)


class MySQLConnector(Connector):
    """One database of a MySQL or MariaDB server, read through one read-only session."""

    scheme = "mysql"
    dialect = "mysql"

    def __init__(self, location: Path | str) -> None:
        # The base class keeps a location for files and folders; here it is the URL.
        self.url = str(location)
        args = connect_args(self.url)
        self.database: str = args["database"]
        try:
            self._con = pymysql.connect(**args, charset="utf8mb4", autocommit=False,
                                        init_command="SET SESSION TRANSACTION READ ONLY")
        except pymysql.Error as exc:
            raise ConnectorError(
                f"cannot connect to {redact(self.url)}: {first_line(exc)}",
                "check that the MySQL server is running and reachable, the database and "
                "account exist, and the password is in $MYSQL_PWD or an option file",
            ) from exc
        self._lock = threading.Lock()
        self._catalog: dict[str, list[ColumnInfo]] | None = None
        try:
            self.collation = self._setup()
        except BaseException:
            self._con.close()
            raise

    @property
    def spec(self) -> str:
        """The URL as configured, its password (if any) masked."""
        return redact(self.url)

    def _setup(self) -> str:
        """Fix the session's settings; the binary collation that string literals get."""
        try:
            with self._con.cursor() as cur:
                cur.execute(f"SET SESSION sql_mode = '{_SQL_MODE}', time_zone = '+00:00'")
                try:  # MySQL 8 caches information_schema statistics for a day by default
                    cur.execute("SET SESSION information_schema_stats_expiry = 0")
                except pymysql.Error:
                    pass  # MariaDB has no such cache
                cur.execute("SELECT COLLATION_NAME FROM information_schema.COLLATIONS "
                            "WHERE COLLATION_NAME IN %s", (_BINARY_COLLATIONS,))
                found = {row[0] for row in cur.fetchall()}
            self._end()
        except pymysql.Error as exc:
            raise ConnectorError(f"{self.spec}: cannot set up the session: {first_line(exc)}",
                                 "check the account's rights on the database") from exc
        return next((c for c in _BINARY_COLLATIONS if c in found), "utf8mb4_bin")

    def transpile(self, sql_duckdb: str) -> str:
        """Check and transpile as every connector does, with DuckDB's semantics kept
        (see ``duckdb_semantics``)."""
        tree = self._one_query(sql_duckdb)  # refuses anything but one query
        try:
            return duckdb_semantics(tree, self.collation).sql(dialect=self.dialect)
        except SqlglotError as exc:
            raise engine_failure(exc, self.spec, "transpile") from None

    def catalog(self) -> dict[str, list[ColumnInfo]]:
        """Tables and views of the database that the account can see, columns in order."""
        if self._catalog is None:
            out: dict[str, list[ColumnInfo]] = {}
            for table, column, dtype, ctype, precision, scale in self._query(
                    _CATALOG_SQL, (), "catalog"):
                out.setdefault(table, []).append(ColumnInfo(
                    column, catalog_type(_text(dtype), _text(ctype), precision, scale)))
            self._catalog = out
        return self._catalog

    def table_version(self, table: str) -> str:
        """Fingerprint from ``information_schema.TABLES``: creation and update times, row
        estimate and sizes, next AUTO_INCREMENT.

        Cheap (no scan), with limits: the update time has one-second resolution and InnoDB
        keeps it in memory only (it is empty after a restart until the next write), so a
        write that changes neither the row estimate nor the sizes within the second of the
        last version is noticed one query late. A view has no such statistics: its version
        is fresh on every call, so nothing derived from it is ever reused.
        """
        if table not in self.catalog():
            raise QueryError(
                f"{self.spec} has no table {table!r}",
                f"tables here: {', '.join(sorted(self.catalog())) or '(none)'}",
            )
        rows = self._query(_VERSION_SQL, (table,), "version")
        if not rows or _text(rows[0][0]).upper() != "BASE TABLE":
            return "view:" + secrets.token_hex(8)
        return ":".join("-" if v is None else str(v) for v in rows[0][1:])

    def _query(self, sql: str, params: Sequence[Any], stage: str) -> list[tuple[Any, ...]]:
        """Run VeilQL's own catalog SQL (with parameters) in a read-only transaction; a
        failure is a ``LocalSQLError`` (generic message, the server's text in ``detail``)."""
        with self._lock:
            try:
                with self._con.cursor() as cur:
                    cur.execute("START TRANSACTION READ ONLY")
                    cur.execute(sql, params or None)
                    return list(cur.fetchall())
            except pymysql.Error as exc:
                raise engine_failure(exc, self.spec, stage) from None
            finally:
                self._end()

    def _execute(self, sql: str) -> pa.Table:
        """Run one MySQL query in a read-only transaction, then roll it back.

        The rows stream from the server (an unbuffered cursor) in batches of
        ``BATCH_ROWS``, each turned into Arrow columns typed from the result's field
        metadata (``arrow_type``), so a large result never sits in memory as Python rows
        all at once.
        """
        batches: list[pa.RecordBatch] = []
        with self._lock:
            try:
                with self._con.cursor(pymysql.cursors.SSCursor) as cur:
                    cur.execute("START TRANSACTION READ ONLY")
                    cur.execute(sql)  # no parameters: sent as is, '%' needs no escaping
                    fields = cur._result.fields if cur._result else None
                    if not fields:  # pragma: no cover - transpile admits queries only
                        raise QueryError(f"local SQL for {self.spec} returned no result", None)
                    names = [f.name for f in fields]
                    types = [arrow_type(f.type_code, f.flags, f.length, f.scale, f.charsetnr)
                             for f in fields]
                    while True:
                        rows = cur.fetchmany(BATCH_ROWS)
                        batches.append(_batch(list(rows), names, types))
                        if len(rows) < BATCH_ROWS:
                            break
            except pymysql.Error as exc:
                raise engine_failure(exc, self.spec) from None
            finally:
                self._end()
        try:
            return pa.Table.from_batches(batches)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # a column fell back (see _to_arrow)
            return pa.concat_tables([pa.Table.from_batches([b]) for b in batches],
                                    promote_options="permissive")

    def _end(self) -> None:
        """Roll back the current transaction: nothing a query did outlives it."""
        try:
            self._con.rollback()
        except pymysql.Error:  # the connection died; the next call reports it
            pass

    def close(self) -> None:
        """Close the session."""
        try:
            self._con.close()
        except pymysql.Error:  # already closed
            pass


def _text(value: Any) -> str:
    """information_schema text, which some servers send as bytes."""
    return value.decode() if isinstance(value, bytes | bytearray) else str(value or "")


def _batch(rows: list[tuple[Any, ...]], names: list[str],
           types: list[pa.DataType | None]) -> pa.RecordBatch:
    """Rows (tuples) as one Arrow record batch, column by column."""
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(names)
    arrays = [_to_arrow(list(v), t) for v, t in zip(columns, types, strict=True)]
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _to_arrow(values: list[Any], wanted: pa.DataType | None) -> pa.Array:
    """``values`` as an Arrow array of type ``wanted`` (inferred when None); values that
    do not fit (a zero date, say) turn the column into strings rather than fail."""
    if wanted is not None:
        if pa.types.is_floating(wanted):  # a DECIMAL wider than 38 digits arrives as Decimal
            values = [float(v) if isinstance(v, Decimal) else v for v in values]
        try:
            return pa.array(values, type=wanted)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            pass
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.array([None if v is None else str(v) for v in values], pa.string())
