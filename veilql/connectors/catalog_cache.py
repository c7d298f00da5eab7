"""A cache of file connectors' catalogs, so that the catalog commands start without DuckDB.

``veil parties``, ``veil tables`` and ``veil schema`` check every local party's policy
against its connector's catalog (tables, columns, types). For a DuckDB file or a folder of
CSV or Parquet files that means importing DuckDB and opening or sniffing every file, about
0.2 s on every call. The catalog only changes when the files do, so it is kept in a small
JSON file per connector, keyed by the connector's spec and the size and modification time
(nanoseconds) of the folder and every file the connector reads. Any change to the data
misses the cache; an unreadable or corrupt cache entry is ignored and rewritten. As git does
for its index, files modified in the last two seconds are not cached at all: file times are
coarse (a few milliseconds), so a file rewritten twice within that grain to the same size
would otherwise look unchanged.

Only the catalog commands use it. Queries, ``veil serve`` and the Python API always read
the catalog from the engine itself, so nothing that computes or charges ever depends on a
cached file. Servers (PostgreSQL, MySQL, Spark) are never cached: nothing on disk here says
when their tables change.

The folder is ``$VEIL_CACHE_DIR``, else ``$XDG_CACHE_HOME/veilql``, else
``~/.cache/veilql``; ``VEIL_CACHE_DIR=off`` turns the cache off. Failing to write it (a
read-only home) is silent: the catalog was read from the engine anyway.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from veilql.connectors.base import ColumnInfo, resolve_spec

#: Schemes whose catalog is a function of files on this machine.
FILE_SCHEMES = frozenset({"duckdb", "csv", "parquet"})

_VERSION = 1  # bump when the entry format changes
_SETTLED_NS = 2_000_000_000  # files younger than this are not cached (see module doc)


def cache_dir() -> Path | None:
    """The cache folder, or None when ``VEIL_CACHE_DIR=off``."""
    explicit = os.environ.get("VEIL_CACHE_DIR")
    if explicit:
        return None if explicit.lower() in ("off", "0", "none") else Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "veilql"


def _stamp(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return (str(path), st.st_size, st.st_mtime_ns, st.st_ino)


def data_key(spec: str, base_dir: Path) -> str | None:
    """A digest of what the connector's catalog depends on, or None when not cacheable
    (not a file connector, unreadable, or a file modified in the last two seconds).

    >>> data_key("postgresql://h/db", Path(".")) is None
    True
    """
    try:
        scheme, location = resolve_spec(spec, base_dir)
    except Exception:  # noqa: BLE001 - a bad spec is reported by the real open
        return None
    if scheme not in FILE_SCHEMES or isinstance(location, str):
        return None
    try:
        if scheme == "duckdb":
            parts = [_stamp(location)]
            wal = location.with_name(location.name + ".wal")
            if wal.exists():
                parts.append(_stamp(wal))
        else:
            # The folder's own mtime changes when a file is added, removed or renamed.
            parts = [_stamp(location)] + [
                _stamp(p) for p in sorted(location.iterdir()) if p.is_file()
            ]
    except OSError:
        return None
    if any(p[2] > time.time_ns() - _SETTLED_NS for p in parts):
        return None
    blob = json.dumps([_VERSION, scheme, str(location), parts]).encode()
    return hashlib.sha256(blob).hexdigest()


def load(key: str) -> dict[str, list[ColumnInfo]] | None:
    """The cached catalog under ``key``, or None."""
    folder = cache_dir()
    if folder is None:
        return None
    try:
        raw = json.loads((folder / "catalogs" / f"{key}.json").read_text())
        return {t: [ColumnInfo(str(n), str(ty)) for n, ty in cols] for t, cols in raw.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def store(key: str, catalog: dict[str, list[ColumnInfo]]) -> None:
    """Keep ``catalog`` under ``key`` (atomically; silent when the folder is not writable)."""
    folder = cache_dir()
    if folder is None:
        return
    target = folder / "catalogs" / f"{key}.json"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}")
        tmp.write_text(json.dumps({t: [[c.name, c.type] for c in cols]
                                   for t, cols in catalog.items()}))
        os.replace(tmp, target)
    except OSError:
        pass
