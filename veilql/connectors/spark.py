"""Spark SQL as a party's engine: ``spark:<master>[?database=NAME&spark.x=y...]``.

``<master>`` is any Spark master URL (``local[2]``, ``spark://host:7077``, ``yarn``,
``k8s://...``; ``spark://host:7077`` may also be written without the leading ``spark:``),
or a Spark Connect address ``sc://host:15002`` (needs ``pip install 'pyspark[connect]'``).
The party's tables are the tables and views of one database of the session's catalog,
``?database=NAME`` (default ``default``), made the session's current database so that
unqualified names in local SQL reach that database only. Other parameters starting with
``spark.`` are Spark settings for the session this connector starts (e.g.
``spark.sql.catalogImplementation=hive`` and ``spark.sql.warehouse.dir=/srv/warehouse``
for a persistent warehouse folder with its metastore, or
``spark.sql.shuffle.partitions=4``).

The party's local SQL (written by the planner in DuckDB's dialect) is transpiled by sqlglot
to Spark SQL and runs there; only its result, one row per kept row of a person, comes back,
as Arrow (``DataFrame.toArrow``). Spark has no read-only session: ``transpile`` admits one
query only (a SELECT cannot write), and the account the cluster runs the party's queries
under should hold nothing but read access to the database.

DuckDB's semantics are kept where Spark's differ: ANSI mode on (a bad cast or an overflow
fails, as in DuckDB), UTC as the session time zone, ``/`` in DOUBLE (Spark divides
DECIMALs in DECIMAL), ``ROUND(x, d)`` as ``ROUND(x * 10^d) / 10^d`` (Spark rounds a DOUBLE's
decimal text, so ``ROUND(1.005, 2)`` would be 1.01, not DuckDB's 1.0; with ``d = 0`` the two
agree), ``LOG(x)`` in base 10, day-of-week numbers from 0 on Sunday, DATE_TRUNC and
date + interval as TIMESTAMP_NTZ, DATE_DIFF counting unit boundaries.

In one Python process all ``spark:`` connectors with a classic master share one
SparkContext (Spark allows one per JVM), each with a session of its own (settings, current
database); the JVM lives until the process ends, so ``close`` does not stop it.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import shutil
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pyarrow as pa
import sqlglot  # noqa: F401 - the doctests parse with it
from sqlglot import exp
from sqlglot.errors import SqlglotError

from veilql.connectors.base import ColumnInfo, Connector, ConnectorError, engine_failure
from veilql.connectors.rewrites import (
    bottom_up,
    first_line,
    float_division,
    log_base_ten,
    template,
)
from veilql.errors import ConfigError, QueryError

DEFAULT_DATABASE = "default"
#: Settings of every session this connector opens: DuckDB's strictness and time zone.
SESSION_CONF = {"spark.sql.ansi.enabled": "true", "spark.sql.session.timeZone": "UTC"}
#: Settings of a SparkContext this connector starts itself (the URL's ``spark.*`` win):
#: no progress bars and no log lines on stderr, since Spark's own messages quote the SQL
#: (with the party's seed) and row values; an engine's text belongs in ``detail`` only.
#: ``?spark.log.level=WARN`` brings the log back.
CONTEXT_CONF = {"spark.ui.showConsoleProgress": "false", "spark.log.level": "OFF"}
#: PySpark's own loggers that repeat a failing query's message on stderr.
_PYSPARK_LOGGERS = ("SQLQueryContextLogger", "DataFrameQueryContextLogger")

_SPEC_HINT = (
    "write it as spark:<master>[?database=NAME], e.g. spark:local[2], "
    "spark:spark://host:7077?database=claims or spark:sc://host:15002 (Spark Connect); "
    "other parameters must be Spark settings (spark.*)"
)

# Spark's type names (DataType.simpleString) -> the DuckDB spelling policies/coltypes.py knows.
_CATALOG_TYPES: dict[str, str] = {
    "tinyint": "TINYINT", "byte": "TINYINT", "smallint": "SMALLINT", "short": "SMALLINT",
    "int": "INTEGER", "integer": "INTEGER", "bigint": "BIGINT", "long": "BIGINT",
    "float": "FLOAT", "real": "FLOAT", "double": "DOUBLE", "string": "VARCHAR",
    "boolean": "BOOLEAN", "date": "DATE", "timestamp": "TIMESTAMP WITH TIME ZONE",
    "timestamp_ltz": "TIMESTAMP WITH TIME ZONE", "timestamp_ntz": "TIMESTAMP",
    "binary": "BLOB", "void": "NULL",
}


def catalog_type(spark_type: str) -> str:
    """The DuckDB spelling of a Spark column type (``DataType.simpleString()``).

    Spark's TIMESTAMP is an instant (DuckDB's TIMESTAMP WITH TIME ZONE); TIMESTAMP_NTZ is
    DuckDB's TIMESTAMP. Nested types keep Spark's spelling (policies cannot use them).

    >>> catalog_type("decimal(12,2)"), catalog_type("varchar(8)"), catalog_type("int")
    ('DECIMAL(12,2)', 'VARCHAR', 'INTEGER')
    """
    t = spark_type.strip().lower()
    if t.startswith("decimal"):
        return t.upper().replace(" ", "")
    if t.startswith(("varchar(", "char(")):
        return "VARCHAR"
    return _CATALOG_TYPES.get(t, t.upper())


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """The master URL, the database and the Spark settings of a ``spark:`` spec.

    >>> parse_spec("spark:local[2]?database=claims&spark.sql.shuffle.partitions=2")
    ('local[2]', 'claims', {'spark.sql.shuffle.partitions': '2'})
    >>> parse_spec("spark://10.0.0.5:7077")[0], parse_spec("spark:sc://h:15002/;token=x")[0]
    ('spark://10.0.0.5:7077', 'sc://h:15002/;token=x')
    """
    scheme, _, rest = spec.strip().partition(":")
    if scheme.lower() != "spark" or not rest:
        raise ConfigError(f"not a Spark connector: {spec!r}", _SPEC_HINT)
    master, _, query = rest.partition("?")
    if master.startswith("//"):  # spark://host:port written as the spec itself
        master = "spark:" + master
    if not master:
        raise ConfigError(f"Spark connector {spec!r} names no master", _SPEC_HINT)
    database = DEFAULT_DATABASE
    conf: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == "database":
            database = value.strip()
            if not database:
                raise ConfigError(f"Spark connector {spec!r} names an empty database",
                                  _SPEC_HINT)
        elif key.startswith("spark."):
            conf[key] = value
        else:
            raise ConfigError(f"Spark connector {spec!r}: unknown parameter {key!r}",
                              _SPEC_HINT)
    return master, database, conf


def _is_connect(master: str) -> bool:
    return urlsplit(master).scheme.lower() == "sc"


# -- DuckDB's semantics in Spark -------------------------------------------------------------

_spark = functools.partial(template, dialect="spark", paren=True)

_PARTS = {
    "dow": _spark("DAYOFWEEK(__a) - 1"), "dayofweek": _spark("DAYOFWEEK(__a) - 1"),
    "isodow": _spark("WEEKDAY(__a) + 1"), "doy": _spark("DAYOFYEAR(__a)"),
    "dayofyear": _spark("DAYOFYEAR(__a)"), "week": _spark("WEEKOFYEAR(__a)"),
    "weekofyear": _spark("WEEKOFYEAR(__a)"), "dayofmonth": _spark("DAYOFMONTH(__a)"),
    "second": _spark("SECOND(__a)"),  # Spark's EXTRACT(SECOND) keeps the fraction
}
_DIFF = {  # DuckDB's DATE_DIFF counts unit boundaries between __a and __b
    "year": _spark("YEAR(__b) - YEAR(__a)"),
    "quarter": _spark("(YEAR(__b) * 4 + QUARTER(__b)) - (YEAR(__a) * 4 + QUARTER(__a))"),
    "month": _spark("(YEAR(__b) * 12 + MONTH(__b)) - (YEAR(__a) * 12 + MONTH(__a))"),
    "week": _spark("DATEDIFF(__b, __a) DIV 7"),
    "day": _spark("DATEDIFF(__b, __a)"),
    **{unit: _spark(f"TIMESTAMPDIFF({unit.upper()}, DATE_TRUNC('{unit.upper()}', __a), "
                       f"DATE_TRUNC('{unit.upper()}', __b))")
       for unit in ("hour", "minute", "second")},
}


def _unit(node: exp.Expression) -> str:
    unit = node.args.get("unit")
    name = unit.name.lower() if isinstance(unit, exp.Var | exp.Literal) else ""
    return name[:-1] if name.endswith("s") else name


def _ntz(node: exp.Expression) -> exp.Expression:
    return exp.Cast(this=node, to=exp.DataType.build("TIMESTAMP_NTZ", dialect="spark"))


def round_scaled(node: exp.Expression) -> exp.Expression | None:
    """``ROUND(x, d)`` with ``d > 0`` as DuckDB computes it, ``ROUND(x * 10^d) / 10^d``.

    >>> round_scaled(sqlglot.parse_one("ROUND(x, 2)")).sql("spark")
    '(ROUND((x) * 100) / 100)'
    """
    if not isinstance(node, exp.Round):
        return None
    digits = node.args.get("decimals")
    if not (isinstance(digits, exp.Literal) and digits.is_int and int(digits.this) > 0):
        return None
    scale = exp.Literal.number(10 ** int(digits.this))
    scaled = exp.Round(this=exp.Mul(this=exp.Paren(this=node.this.copy()), expression=scale))
    return exp.Paren(this=exp.Div(this=scaled, expression=scale.copy()))


def dates(node: exp.Expression) -> exp.Expression | None:
    """DuckDB's date functions in Spark (see the module docstring).

    >>> dates(sqlglot.parse_one("DATE_TRUNC('month', d)", read="duckdb")).sql("spark")
    "CAST(DATE_TRUNC('MONTH', d) AS TIMESTAMP_NTZ)"
    """
    if isinstance(node, exp.DayOfWeek):
        return _PARTS["dow"](node.this)
    if isinstance(node, exp.Extract):
        part = node.this.name.lower() if isinstance(node.this, exp.Var | exp.Literal) else ""
        return _PARTS[part](node.expression) if part in _PARTS else None
    if isinstance(node, exp.TimestampTrunc | exp.DateTrunc):
        return _ntz(node.copy())
    if isinstance(node, exp.DateDiff) and _unit(node) in _DIFF:
        return _DIFF[_unit(node)](node.expression, node.this)
    if isinstance(node, exp.Add | exp.Sub) and any(
            isinstance(a, exp.Interval) for a in (node.this, node.expression)):
        return _ntz(node.copy())
    return None


def duckdb_semantics(tree: exp.Expression) -> exp.Expression:
    """``tree`` (local SQL read as DuckDB) rewritten so that Spark computes DuckDB's values
    (see the module docstring)."""
    def rewrite(node: exp.Expression) -> exp.Expression | None:
        for step in (float_division, log_base_ten, round_scaled, dates):
            new = step(node)
            if new is not None:
                return new
        return None
    return bottom_up(tree, rewrite)


def _import_pyspark() -> Any:
    """``pyspark.sql``, or a ConfigError saying how to install it."""
    try:
        import pyspark.sql
    except ImportError as exc:
        raise ConfigError(
            "the spark: connector needs pyspark, which is not installed",
            "pip install 'veilql[spark]' (or 'pyspark[connect]' for sc:// addresses)",
        ) from exc
    return pyspark.sql


def _quiet_pyspark_loggers() -> None:
    """Raise PySpark's query-context loggers to CRITICAL (they log every failing query's
    message, row values included). Made through PySpark's own class: PySpark calls them
    with arguments a plain ``logging.Logger`` does not take."""
    try:
        from pyspark.logger import PySparkLogger
    except ImportError:  # an older PySpark without them
        return
    for name in _PYSPARK_LOGGERS:
        PySparkLogger.getLogger(name).setLevel(logging.CRITICAL)


def java_available() -> bool:
    """True when a Java runtime for a classic Spark session can be found."""
    home = os.environ.get("JAVA_HOME")
    if home and Path(home, "bin", "java").exists():
        return True
    return shutil.which("java") is not None


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


class SparkConnector(Connector):
    """One database of a Spark SQL catalog, queried through a session of its own."""

    scheme = "spark"
    dialect = "spark"

    def __init__(self, location: Path | str) -> None:
        self.url = str(location)
        master, self.database, conf = parse_spec(self.url)
        self.master = master
        sql = _import_pyspark()
        self._lock = threading.Lock()
        self._catalog: dict[str, list[ColumnInfo]] | None = None
        try:
            if _is_connect(master):
                builder = sql.SparkSession.builder.remote(master)
                for key, value in conf.items():
                    builder = builder.config(key, value)
                self._spark = builder.getOrCreate()
            else:
                if not java_available():
                    raise ConnectorError(
                        f"{self.spec}: no Java runtime for Spark",
                        "install Java 17 or 21 (java on PATH or $JAVA_HOME), or use a "
                        "Spark Connect server (spark:sc://host:15002)")
                builder = sql.SparkSession.builder.master(master).appName("veilql")
                settings = {**CONTEXT_CONF, **conf}
                for key, value in settings.items():
                    builder = builder.config(key, value)
                if settings["spark.log.level"].upper() == "OFF":
                    _quiet_pyspark_loggers()
                # One SparkContext per JVM: a session of our own keeps our settings and
                # current database apart from any other user of it in this process.
                self._spark = builder.getOrCreate().newSession()
        except (ConnectorError, ConfigError):
            raise
        except Exception as exc:  # noqa: BLE001 - py4j, gRPC and Spark raise many kinds
            raise ConnectorError(
                f"cannot start a Spark session for {self.spec}: {first_line(exc)}",
                "check the master URL and that the cluster (or Spark Connect server) is "
                "reachable; a local master needs Java 17 or 21",
            ) from exc
        try:
            for key, value in SESSION_CONF.items():
                self._spark.conf.set(key, value)
            if not self._spark.catalog.databaseExists(self.database):
                raise ConfigError(
                    f"{self.spec}: database {self.database!r} does not exist",
                    "check ?database= (the tables must be in the session's catalog)")
            self._spark.catalog.setCurrentDatabase(self.database)
        except ConfigError:
            self.close()
            raise
        except Exception as exc:  # noqa: BLE001 - see above
            self.close()
            raise ConnectorError(f"{self.spec}: cannot use database {self.database!r}: "
                                 f"{first_line(exc)}",
                                 "check that the session may read the database") from exc

    @property
    def spec(self) -> str:
        """The spec as configured (Spark Connect tokens masked)."""
        return self.url.split(";token=")[0] + (";token=***" if ";token=" in self.url else "")

    def transpile(self, sql_duckdb: str) -> str:
        """Check and transpile as every connector does, with DuckDB's semantics kept
        (see ``duckdb_semantics``)."""
        tree = self._one_query(sql_duckdb)  # refuses anything but one query
        try:
            return duckdb_semantics(tree).sql(dialect=self.dialect)
        except SqlglotError as exc:
            raise engine_failure(exc, self.spec, "transpile") from None

    def catalog(self) -> dict[str, list[ColumnInfo]]:
        """Tables and views of the database, columns in order (read from each table's
        schema, which reads no data)."""
        if self._catalog is None:
            out: dict[str, list[ColumnInfo]] = {}
            try:
                with self._lock:
                    tables = sorted(t.name for t in self._spark.catalog.listTables(
                        self.database))
                    for table in tables:
                        schema = self._spark.table(self._qualified(table)).schema
                        out[table] = [ColumnInfo(f.name, catalog_type(f.dataType.simpleString()))
                                      for f in schema.fields]
            except Exception as exc:  # noqa: BLE001 - any Spark failure
                raise engine_failure(exc, self.spec, "catalog") from None
            self._catalog = out
        return self._catalog

    def _qualified(self, table: str) -> str:
        return f"{_quote(self.database)}.{_quote(table)}"

    def table_version(self, table: str) -> str:
        """Fingerprint (path, mtime, size) of the table's files when they are on this
        machine's file system (a local warehouse, Parquet/CSV tables); otherwise, as for
        a view over other data, a fresh version on every call, so nothing derived from
        the table is ever reused."""
        if table not in self.catalog():
            raise QueryError(
                f"{self.spec} has no table {table!r}",
                f"tables here: {', '.join(sorted(self.catalog())) or '(none)'}",
            )
        try:
            with self._lock:
                files = sorted(self._spark.table(self._qualified(table)).inputFiles())
        except Exception as exc:  # noqa: BLE001 - any Spark failure
            raise engine_failure(exc, self.spec, "version") from None
        parts = []
        for uri in files:
            parsed = urlsplit(uri)
            path = Path(unquote(parsed.path))
            if parsed.scheme not in ("", "file") or not path.is_file():
                return "fresh:" + secrets.token_hex(8)
            st = path.stat()
            parts.append(f"{path}:{st.st_mtime_ns}:{st.st_size}")
        return "files:" + "/".join(parts) if parts else "fresh:" + secrets.token_hex(8)

    def _execute(self, sql: str) -> pa.Table:
        """Run one Spark SQL query; its result arrives as Arrow record batches
        (``toArrow``), large string and binary columns narrowed to the plain types."""
        with self._lock:
            try:
                table = self._spark.sql(sql).toArrow()
            except Exception as exc:  # noqa: BLE001 - AnalysisException, Py4JJavaError, ...
                raise engine_failure(exc, self.spec) from None
        return _plain_types(table)

    def close(self) -> None:
        """End a Spark Connect session; a classic session's SparkContext stays up for the
        process's other users (see the module docstring)."""
        spark = getattr(self, "_spark", None)
        if spark is not None and _is_connect(self.master):
            try:
                spark.stop()
            except Exception:  # noqa: BLE001 - already gone
                pass


def _plain_types(table: pa.Table) -> pa.Table:
    """``table`` with large_string/large_binary columns as string/binary."""
    fields = []
    for field in table.schema:
        if pa.types.is_large_string(field.type):
            field = field.with_type(pa.string())
        elif pa.types.is_large_binary(field.type):
            field = field.with_type(pa.binary())
        fields.append(field)
    schema = pa.schema(fields)
    return table if schema == table.schema else table.cast(schema)
