"""The connector interface: how VeilQL reads one party's data in that party's own engine.

A connector is opened from a spec string in ``federation.toml`` (``duckdb:<file>``,
``csv:<folder>``, ``parquet:<folder>``, ``postgresql://...``, ``mysql://...``,
``spark:<master>``). It reports its catalog
(tables, columns, types) and runs the party's pushed-down local SQL. That SQL is always
written once, in DuckDB's dialect; ``Connector.run`` transpiles it with sqlglot to the
connector's own ``dialect`` before execution, so the planner never writes per-engine SQL.

The shape follows harlequin's adapters: a small abstract class with capability flags
(``read_only``, ``dialect``) and default bodies for the optional methods, and DuckDB as
one connector among others rather than a special case. Schemes map to connectors through
a registry (harlequin's adapter entry points are the model): this module names the built-in
connectors as ``module:Class`` strings and imports one only when a spec needs it, installed
packages may add theirs under the ``veilql.connectors`` entry-point group, and
``register_connector`` adds one at run time; the base never imports its subclasses.

Connectors only ever read. Besides opening the data read-only, ``run`` accepts a single
query statement (SELECT, set operations, VALUES) and refuses anything else (COPY, ATTACH,
INSERT, ...), so even a bug in the planner cannot write to a party's data.
"""

from __future__ import annotations

import importlib
import itertools
import os.path
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # numpy, Arrow and sqlglot load only when a query runs (CLI start-up)
    import numpy as np
    import pyarrow as pa
    from sqlglot import exp

from veilql.errors import ConfigError, LocalEngineError, ProtocolError, QueryError

#: The built-in schemes, in the order shown in error hints.
SCHEMES: tuple[str, ...] = ("duckdb", "csv", "parquet", "postgresql", "mysql", "spark")

_SPEC_HINT = (
    "write the connector as duckdb:<file>, csv:<folder>, parquet:<folder> "
    "(paths relative to the federation file), postgresql://host/database, "
    "mysql://user@host:port/database or spark:<master URL>"
)


@dataclass(frozen=True)
class ColumnInfo:
    """One column of a connector's table: its name and its type in DuckDB's spelling.

    >>> ColumnInfo("amount", "DECIMAL(10,2)").type
    'DECIMAL(10,2)'
    """

    name: str
    type: str


class ConnectorError(ProtocolError):
    """A party's engine cannot be reached or set up, e.g. its server refuses the connection
    (exit 3, like any failing party). Failures while running SQL are ``LocalSQLError``."""


class LocalSQLError(LocalEngineError, ConnectorError):
    """The party's engine failed on SQL it was running (the local SQL, the catalog query).

    A ``LocalEngineError``: the message is generic and ``detail`` holds the engine's own text
    for the party's log. Also a ``ConnectorError``, for callers that catch those.
    """


def engine_failure(exc: BaseException, spec: str, stage: str = "query") -> LocalSQLError:
    """Wrap an engine's exception: generic message, the engine's text only in ``detail``.

    >>> e = engine_failure(ValueError("Could not convert string 'west-01'"), "duckdb:x")
    >>> "west-01" in str(e), e.detail
    (False, "duckdb:x: ValueError: Could not convert string 'west-01'")
    """
    text = str(exc).strip() or "(no message)"
    return LocalSQLError(f"{spec}: {type(exc).__name__}: {text}", stage=stage)


_INSTANCES = itertools.count(1)  # numbers each connector opened in this process


class Connector(ABC):
    """A party's data source: its catalog, and a runner for its local SQL.

    Subclasses set the class flags, implement ``catalog``, ``_execute`` and
    ``table_version``, and may override ``close``.
    """

    #: The scheme of the spec string this connector is opened from.
    scheme: ClassVar[str] = ""
    #: The sqlglot dialect the connector's engine speaks; ``run`` transpiles into it.
    dialect: ClassVar[str] = "duckdb"
    #: True when the data is opened so that nothing can write to it.
    read_only: ClassVar[bool] = True

    def __init__(self, location: Path) -> None:
        self.location = location

    @property
    def instance(self) -> int:
        """A number of this connector's own in this process (drawn on first use, also for
        a subclass that sets up without ``Connector.__init__``): it keys what is kept per
        connector (its rewritten SQL, its over-full units), never shared with another."""
        got = self.__dict__.get("_instance")
        if got is None:
            got = self.__dict__.setdefault("_instance", next(_INSTANCES))
        return got

    @property
    def spec(self) -> str:
        """The connector's spec with an absolute location, e.g. ``csv:/data/pharmacy``."""
        return f"{self.scheme}:{self.location}"

    @abstractmethod
    def catalog(self) -> dict[str, list[ColumnInfo]]:
        """Every table the connector exposes, with its columns in order."""

    @abstractmethod
    def _execute(self, sql: str) -> pa.Table:
        """Run one query already in ``self.dialect``; return its rows as Arrow."""

    @abstractmethod
    def table_version(self, table: str) -> str:
        """A cheap fingerprint of ``table``'s data that changes whenever the data changes."""

    def unique_columns(self, table: str) -> frozenset[str]:
        """Columns of ``table`` the engine itself keeps unique (a one-column PRIMARY KEY or
        UNIQUE constraint it enforces), read from its catalog; names in lower case. A
        schema fact, never one found by reading rows. The default knows none."""
        return frozenset()

    def row_bounds(self, table: str) -> dict[str, int]:
        """Per column of ``table`` (lower case): the most rows one non-NULL value of it may
        have, as the engine enforces on every write (its catalog, never the rows). The
        default knows the ``unique_columns`` (1 each)."""
        return dict.fromkeys(self.unique_columns(table), 1)

    def overfull_table(self, table: str, unit: str, m: int) -> tuple[str, str] | None:
        """``(table, column)`` naming a table that holds, in that one column, the values of
        ``unit`` with more than ``m`` rows in ``table``, found once and kept while the
        connector is open, when the engine guarantees the table cannot change meanwhile;
        None otherwise (the default: the bounded SQL then finds them itself on every
        query)."""
        return None

    def result_types(self, sql_duckdb: str) -> list[str] | None:
        """The engine's type of each result column of ``sql_duckdb`` (e.g. ``DECIMAL(12,2)``),
        found without running it, or None when this engine cannot tell (the default)."""
        return None

    def transpile(self, sql_duckdb: str) -> str:
        """Check that ``sql_duckdb`` is one read-only query and rewrite it in ``self.dialect``.

        Anything but one query is a ``QueryError``; SQL that sqlglot cannot read or write
        is a ``LocalSQLError`` (its text, which quotes the SQL and so the party's seed,
        stays in ``detail``).
        """
        return self._one_query(sql_duckdb).sql(dialect=self.dialect)

    def _one_query(self, sql_duckdb: str) -> exp.Query:
        """The single query statement of ``sql_duckdb`` (see ``transpile``)."""
        import sqlglot
        from sqlglot import exp
        from sqlglot.errors import SqlglotError

        try:
            statements = [s for s in sqlglot.parse(sql_duckdb, read="duckdb") if s is not None]
        except SqlglotError as exc:
            raise engine_failure(exc, self.spec, "transpile") from None
        if len(statements) != 1 or not isinstance(statements[0], exp.Query):
            kinds = ", ".join(type(s).__name__.upper() for s in statements) or "nothing"
            raise QueryError(
                f"local SQL for {self.spec} must be exactly one query, got {kinds}",
                "connectors are read-only: only a single SELECT statement can run at a party",
            )
        return statements[0]

    def run(self, sql_duckdb: str) -> pa.Table:
        """Run the party's local SQL (DuckDB dialect) and return the result as Arrow.

        Every failure of the engine, whatever its type, is a ``LocalSQLError`` (exit 3)
        with a generic message; the engine's own text is in its ``detail`` only.
        """
        sql = self._transpiled(sql_duckdb)
        try:
            return self._execute(sql)
        except LocalEngineError:
            raise
        except Exception as exc:  # noqa: BLE001 - any engine failure; its text stays here
            raise engine_failure(exc, self.spec) from None

    def _transpiled(self, sql_duckdb: str) -> str:
        """``transpile``, with any failure but a refusal as a ``LocalSQLError``."""
        try:
            return self.transpile(sql_duckdb)
        except (QueryError, LocalEngineError):
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. sqlglot cannot write the dialect
            raise engine_failure(exc, self.spec, "transpile") from None

    def run_rows(self, sql_duckdb: str) -> list[dict[str, Any]]:
        """A small result of integer columns as rows (name -> value), failures as in
        ``run``; a value may be an ``int`` or what Arrow makes of it (a 128-bit integer is a
        ``Decimal``). The default reads ``run``'s Arrow table."""
        table = self.run(sql_duckdb)
        try:
            return table.to_pylist()
        except Exception as exc:  # noqa: BLE001 - a conversion failure can quote a value
            raise engine_failure(exc, self.spec) from None

    def run_numpy(self, sql_duckdb: str) -> dict[str, np.ndarray]:
        """Like ``run``, but one numpy array per result column (in order)."""
        table = self.run(sql_duckdb)
        try:
            return {
                name: column_to_numpy(col)
                for name, col in zip(table.column_names, table.columns, strict=True)
            }
        except Exception as exc:  # noqa: BLE001 - a conversion failure can quote a value
            raise engine_failure(exc, self.spec) from None

    def close(self) -> None:  # noqa: B027 - optional hook with an empty default
        """Release the engine's resources; the default has nothing to release."""

    def __enter__(self) -> Connector:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


# -- the registry: scheme -> connector ---------------------------------------------------

# Called with the resolved location: a Path for files and folders, the spec for URLs.
_Factory = Callable[[Any], Connector]


@dataclass(frozen=True)
class _Entry:
    """A registered scheme: its factory, or the ``module:attr`` that names it (loaded on
    first use), and whether its location is a URL (kept as text) or a path."""

    target: _Factory | str
    url: bool = False


#: The built-in connectors, named rather than imported: ``split_spec`` and
#: ``resolve_spec`` load none, ``open_connector`` loads the one a spec needs.
_BUILTIN: dict[str, _Entry] = {
    "duckdb": _Entry("veilql.connectors.duckdb:DuckDBConnector"),
    "csv": _Entry("veilql.connectors.files:CsvConnector"),
    "parquet": _Entry("veilql.connectors.files:ParquetConnector"),
    "postgresql": _Entry("veilql.connectors.postgres:PostgresConnector", url=True),
    "mysql": _Entry("veilql.connectors.mysql:MySQLConnector", url=True),
    "spark": _Entry("veilql.connectors.spark:SparkConnector", url=True),
}
#: Other spellings of a scheme.
_ALIASES: dict[str, str] = {"postgres": "postgresql", "mariadb": "mysql"}
#: Registered at run time (``register_connector``); these take precedence.
_FACTORIES: dict[str, _Factory] = {}
_URL_SCHEMES: set[str] = set()
#: Installed packages add connectors under this entry-point group: ``name = "pkg.mod:Class"``;
#: a class with ``url_spec = True`` gets its spec as text, others a resolved path.
ENTRY_POINT_GROUP = "veilql.connectors"


def register_connector(scheme: str, factory: _Factory, *, url: bool = False) -> None:
    """Make ``open_connector`` build ``factory(location)`` for specs of ``scheme``.

    ``url=True``: the location is the spec itself (``scheme:...``, as text) rather than a
    path resolved against the federation file.
    """
    scheme = scheme.lower()
    _FACTORIES[scheme] = factory
    (_URL_SCHEMES.add if url else _URL_SCHEMES.discard)(scheme)


def _plugin(scheme: str) -> _Entry | None:
    """The connector an installed package registers for ``scheme`` (entry points)."""
    try:
        from importlib.metadata import entry_points  # slow to import; only for plug-ins

        found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == scheme]
    except Exception:  # noqa: BLE001 - broken package metadata must not break built-ins
        return None
    return _Entry(found[0].value) if found else None


def _entry(scheme: str) -> _Entry | None:
    """The registry's entry for a (canonical, lower-case) scheme, or None."""
    if scheme in _FACTORIES:
        return _Entry(_FACTORIES[scheme], url=scheme in _URL_SCHEMES)
    return _BUILTIN.get(scheme) or _plugin(scheme)


def known_schemes() -> tuple[str, ...]:
    """Every scheme ``open_connector`` can open: built-in, registered, installed.

    >>> known_schemes()[:4]
    ('duckdb', 'csv', 'parquet', 'postgresql')
    """
    from importlib.metadata import entry_points

    extra = [s for s in _FACTORIES if s not in SCHEMES]
    try:
        extra += [ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)
                  if ep.name not in SCHEMES and ep.name not in extra]
    except Exception:  # noqa: BLE001 - see _plugin
        pass
    return (*SCHEMES, *extra)


def _load(scheme: str, entry: _Entry) -> tuple[_Factory, bool]:
    """The factory of ``entry`` (importing its module if it is named) and its URL flag."""
    target = entry.target
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        try:
            target = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                f"connector scheme {scheme!r} cannot be loaded: {exc}",
                "install the package that provides it, or use another connector",
            ) from exc
    url = entry.url or bool(getattr(target, "url_spec", False))
    return target, url


def split_spec(spec: str) -> tuple[str, str]:
    """Split a connector spec into (scheme, rest); ``postgres`` is read as ``postgresql``
    and ``mariadb`` as ``mysql``.

    >>> split_spec("csv:data/pharmacy")
    ('csv', 'data/pharmacy')
    >>> split_spec("postgresql://db.example.org/warehouse")[0]
    'postgresql'
    """
    scheme, sep, rest = spec.partition(":")
    scheme = scheme.strip().lower()
    if not sep or not scheme:
        raise ConfigError(f"connector {spec!r} has no scheme", _SPEC_HINT)
    scheme = _ALIASES.get(scheme, scheme)
    if _entry(scheme) is None:
        raise ConfigError(
            f"unknown connector scheme {scheme!r} in {spec!r}",
            f"use one of {', '.join(s + ':' for s in known_schemes())}",
        )
    if not rest.strip():
        raise ConfigError(f"connector {spec!r} names no location", _SPEC_HINT)
    return scheme, rest.strip()


def resolve_spec(spec: str, base_dir: Path) -> tuple[str, Path | str]:
    """The scheme and the absolute location of ``spec``; paths resolve against ``base_dir``.

    Nothing is opened or checked for existence here (``open_connector`` does that). A
    ``postgresql://`` URL is returned unchanged; for the other URL schemes (``mysql``,
    ``spark``) the location is the text after ``scheme:``, so ``f"{scheme}:{location}"``
    is the spec again.

    >>> resolve_spec("duckdb:data/h.duckdb", Path("/srv/fed"))
    ('duckdb', PosixPath('/srv/fed/data/h.duckdb'))
    >>> resolve_spec("spark:local[1]", Path("/srv/fed"))
    ('spark', 'local[1]')
    """
    scheme, rest = split_spec(spec)
    if scheme == "postgresql":
        return scheme, spec
    if _is_url(scheme):
        return scheme, rest
    path = Path(rest).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    return scheme, Path(_normalise(path))


def _is_url(scheme: str) -> bool:
    """True when ``scheme``'s location is a URL (kept as text), not a path."""
    entry = _entry(scheme)
    if entry is None:
        return False
    if entry.url or not isinstance(entry.target, str) or scheme in _BUILTIN:
        return entry.url
    return _load(scheme, entry)[1]  # an installed plugin: its class says


def _normalise(path: Path) -> str:
    """An absolute path with ``..`` removed, without requiring that it exists."""
    return os.path.normpath(str(path.absolute()))


#: Arrow types whose values are a plain little-endian buffer numpy reads as is.
_PLAIN_NUMPY = {"int8": "i1", "int16": "i2", "int32": "i4", "int64": "i8", "uint8": "u1",
                "uint16": "u2", "uint32": "u4", "uint64": "u8", "float": "f4",
                "double": "f8"}


def column_to_numpy(col: Any) -> np.ndarray:
    """An Arrow (chunked) column as one numpy array, as ``to_numpy(zero_copy_only=False)``
    gives it.

    Integer and float columns without NULLs (every column the bounded local SQL returns)
    are read straight from their buffers; pyarrow's own conversion imports pandas, about
    0.3-0.6 s on a process's first query. Anything else goes through pyarrow.
    """
    import numpy as np

    kind = _PLAIN_NUMPY.get(str(col.type))
    chunks = getattr(col, "chunks", [col])
    if kind is None or col.null_count:
        return col.to_numpy(zero_copy_only=False)
    dtype = np.dtype(kind)
    parts = [np.frombuffer(c.buffers()[1], dtype=dtype, count=len(c),
                           offset=c.offset * dtype.itemsize) for c in chunks if len(c)]
    if not parts:
        return np.empty(0, dtype)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)  # one chunk: a view, as pyarrow


def redact_url(url: str) -> str:
    """``url`` with any password (in the user part or a ``password=`` parameter) replaced
    by ``***``, for messages and ``spec``.

    >>> redact_url("postgresql://ann:s3cret@db:5432/w?password=x&sslmode=require")
    'postgresql://ann:***@db:5432/w?password=***&sslmode=require'
    >>> redact_url("mysql://ann:s3cret@db:3306/w?ssl_ca=/ca.pem")
    'mysql://ann:***@db:3306/w?ssl_ca=/ca.pem'
    """
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        cred, _, host = netloc.rpartition("@")
        if ":" in cred:
            cred = cred.split(":", 1)[0] + ":***"
        netloc = f"{cred}@{host}"
    items = []
    for item in parts.query.split("&") if parts.query else []:
        key, eq, _ = item.partition("=")
        items.append(f"{key}=***" if key == "password" and eq else item)
    query = "&".join(items)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def open_connector(spec: str, base_dir: Path) -> Connector:
    """Open the connector described by ``spec``, relative paths resolving against ``base_dir``.

    Raises ``ConfigError`` (without file or key: the caller knows those) when the scheme
    is unknown or not supported yet, or when the file or folder does not exist.
    """
    scheme, location = resolve_spec(spec, base_dir)
    entry = _entry(scheme)
    assert entry is not None  # split_spec refused unknown schemes
    factory, _ = _load(scheme, entry)
    if isinstance(location, str):  # a URL: the connector checks it when it connects
        return factory(location if scheme == "postgresql" else f"{scheme}:{location}")
    if scheme == "duckdb" and not location.is_file():
        raise ConfigError(
            f"DuckDB file {str(location)!r} does not exist",
            "check the path after 'duckdb:' (it is relative to the federation file)",
        )
    if scheme in ("csv", "parquet") and not location.is_dir():
        raise ConfigError(
            f"{scheme} folder {str(location)!r} does not exist",
            f"check the path after '{scheme}:'; it must be a folder of *.{scheme} files, "
            "relative to the federation file",
        )
    return factory(location)
