"""``csv:<folder>`` and ``parquet:<folder>``: each file in the folder is one table.

A file ``prescriptions.csv`` becomes the table ``prescriptions``. The files are read by an
in-memory DuckDB through one view per file; after the views exist, DuckDB's file access
is restricted to exactly those files and the configuration is locked, so nothing the
connector runs can write to the folder or read anything else.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from veilql.connectors.duckdb import _LOCKDOWN, DuckDBEngine, file_fingerprint
from veilql.errors import ConfigError

_READERS = {
    "csv": "read_csv({path}, header = true)",
    "parquet": "read_parquet({path})",
}


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def table_files(folder: Path, fmt: str) -> dict[str, Path]:
    """The table name (file stem) and path of every ``*.<fmt>`` file directly in ``folder``."""
    files: dict[str, Path] = {}
    seen: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() != f".{fmt}":
            continue
        # DuckDB names are case-insensitive: Sales.csv and sales.csv would be one table.
        other = seen.get(path.stem.lower())
        if other is not None:
            raise ConfigError(
                f"files {other.name!r} and {path.name!r} in {str(folder)!r} name the same table",
                "table names are case-insensitive; rename or remove one of the files",
            )
        seen[path.stem.lower()] = path
        files[path.stem] = path
    return files


class FolderConnector(DuckDBEngine):
    """A folder of files, one table per file, read through DuckDB views.

    The file format is the class's ``scheme``: see ``CsvConnector`` and ``ParquetConnector``.
    """

    def __init__(self, location: Path) -> None:
        fmt = self.scheme
        self._files = table_files(location, fmt)
        con = duckdb.connect(":memory:", config=dict(_LOCKDOWN))
        try:
            for table, path in self._files.items():
                reader = _READERS[fmt].format(path=_quote_str(str(path)))
                try:
                    con.execute(f"CREATE VIEW {_quote_ident(table)} AS SELECT * FROM {reader}")
                except duckdb.Error as exc:
                    raise ConfigError(
                        f"cannot read {fmt} file {str(path)!r}: {str(exc).strip()}",
                        f"fix or remove the file; every *.{fmt} file in the folder is a table",
                    ) from exc
            allowed = ", ".join(_quote_str(str(p)) for p in self._files.values())
            con.execute(f"SET allowed_paths = [{allowed}]")
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
        except BaseException:
            con.close()
            raise
        super().__init__(location, con)

    def table_version(self, table: str) -> str:
        """Fingerprint (mtime and size) of the table's file."""
        self._require_table(table)
        return file_fingerprint(self._files[table])


class CsvConnector(FolderConnector):
    """``csv:<folder>``: every ``*.csv`` file (with a header row) is a table."""

    scheme = "csv"


class ParquetConnector(FolderConnector):
    """``parquet:<folder>``: every ``*.parquet`` file is a table."""

    scheme = "parquet"
