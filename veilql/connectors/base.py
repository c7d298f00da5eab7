"""The connector interface: how VeilQL reads one party's data in that party's own engine.

A connector is opened from a spec string in ``federation.toml`` (``duckdb:<file>``,
``csv:<folder>``, ``parquet:<folder>``, ``postgresql://...``). It reports its catalog
(tables, columns, types) and runs the party's pushed-down local SQL. That SQL is always
written once, in DuckDB's dialect; ``Connector.run`` transpiles it with sqlglot to the
connector's own ``dialect`` before execution, so the planner never writes per-engine SQL.

The shape follows harlequin's adapters: a small abstract class with capability flags
(``read_only``, ``dialect``) and default bodies for the optional methods, and DuckDB as
one connector among others rather than a special case.

Connectors only ever read. Besides opening the data read-only, ``run`` accepts a single
query statement (SELECT, set operations, VALUES) and refuses anything else (COPY, ATTACH,
INSERT, ...), so even a bug in the planner cannot write to a party's data.
"""

from __future__ import annotations

import os.path
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from veilql.errors import ConfigError, LocalEngineError, ProtocolError, QueryError

#: The schemes ``open_connector`` knows, in the order shown in error hints.
SCHEMES: tuple[str, ...] = ("duckdb", "csv", "parquet", "postgresql")

_SPEC_HINT = (
    "write the connector as duckdb:<file>, csv:<folder>, parquet:<folder> "
    "(paths relative to the federation file) or postgresql://host/database"
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

    def transpile(self, sql_duckdb: str) -> str:
        """Check that ``sql_duckdb`` is one read-only query and rewrite it in ``self.dialect``.

        Anything but one query is a ``QueryError``; SQL that sqlglot cannot read or write
        is a ``LocalSQLError`` (its text, which quotes the SQL and so the party's seed,
        stays in ``detail``).
        """
        return self._one_query(sql_duckdb).sql(dialect=self.dialect)

    def _one_query(self, sql_duckdb: str) -> exp.Query:
        """The single query statement of ``sql_duckdb`` (see ``transpile``)."""
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
        try:
            sql = self.transpile(sql_duckdb)
        except (QueryError, LocalEngineError):
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. sqlglot cannot write the dialect
            raise engine_failure(exc, self.spec, "transpile") from None
        try:
            return self._execute(sql)
        except LocalEngineError:
            raise
        except Exception as exc:  # noqa: BLE001 - any engine failure; its text stays here
            raise engine_failure(exc, self.spec) from None

    def run_numpy(self, sql_duckdb: str) -> dict[str, np.ndarray]:
        """Like ``run``, but one numpy array per result column (in order)."""
        table = self.run(sql_duckdb)
        try:
            return {
                name: col.to_numpy(zero_copy_only=False)
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


def split_spec(spec: str) -> tuple[str, str]:
    """Split a connector spec into (scheme, rest); ``postgres`` is read as ``postgresql``.

    >>> split_spec("csv:data/pharmacy")
    ('csv', 'data/pharmacy')
    >>> split_spec("postgresql://db.example.org/warehouse")[0]
    'postgresql'
    """
    scheme, sep, rest = spec.partition(":")
    scheme = scheme.strip().lower()
    if not sep or not scheme:
        raise ConfigError(f"connector {spec!r} has no scheme", _SPEC_HINT)
    if scheme == "postgres":
        scheme = "postgresql"
    if scheme not in SCHEMES:
        raise ConfigError(
            f"unknown connector scheme {scheme!r} in {spec!r}",
            f"use one of {', '.join(s + ':' for s in SCHEMES)}",
        )
    if not rest.strip():
        raise ConfigError(f"connector {spec!r} names no location", _SPEC_HINT)
    return scheme, rest.strip()


def resolve_spec(spec: str, base_dir: Path) -> tuple[str, Path | str]:
    """The scheme and the absolute location of ``spec``; paths resolve against ``base_dir``.

    Nothing is opened or checked for existence here (``open_connector`` does that); a
    ``postgresql://`` URL is returned unchanged.

    >>> resolve_spec("duckdb:data/h.duckdb", Path("/srv/fed"))
    ('duckdb', PosixPath('/srv/fed/data/h.duckdb'))
    """
    scheme, rest = split_spec(spec)
    if scheme == "postgresql":
        return scheme, spec
    path = Path(rest).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    return scheme, Path(_normalise(path))


def _normalise(path: Path) -> str:
    """An absolute path with ``..`` removed, without requiring that it exists."""
    return os.path.normpath(str(path.absolute()))


# Called with the resolved location: a Path for files and folders, the URL for postgresql.
_Factory = Callable[[Any], Connector]
_FACTORIES: dict[str, _Factory] = {}


def register_connector(scheme: str, factory: _Factory) -> None:
    """Make ``open_connector`` build ``factory(location)`` for specs of ``scheme``."""
    _FACTORIES[scheme] = factory


def _builtin_factory(scheme: str) -> _Factory | None:
    # Imported lazily: the concrete modules import this one.
    if scheme == "duckdb":
        from veilql.connectors.duckdb import DuckDBConnector

        return DuckDBConnector
    if scheme == "csv":
        from veilql.connectors.files import CsvConnector

        return CsvConnector
    if scheme == "parquet":
        from veilql.connectors.files import ParquetConnector

        return ParquetConnector
    if scheme == "postgresql":
        from veilql.connectors.postgres import PostgresConnector

        return PostgresConnector
    return None


def open_connector(spec: str, base_dir: Path) -> Connector:
    """Open the connector described by ``spec``, relative paths resolving against ``base_dir``.

    Raises ``ConfigError`` (without file or key: the caller knows those) when the scheme
    is unknown or not supported yet, or when the file or folder does not exist.
    """
    scheme, location = resolve_spec(spec, base_dir)
    factory = _FACTORIES.get(scheme) or _builtin_factory(scheme)
    if factory is None:
        raise ConfigError(
            f"connector scheme {scheme!r} is not supported yet ({spec!r})",
            "export the tables to a DuckDB file or to a folder of CSV/Parquet files "
            "and use duckdb:<file>, csv:<folder> or parquet:<folder>",
        )
    if isinstance(location, str):  # a URL: the connector checks it when it connects
        return factory(location)
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
