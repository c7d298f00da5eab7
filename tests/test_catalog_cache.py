"""The catalog commands' cache: hits when the files are unchanged, misses on any change,
never used by queries, and lets `veil parties` start without DuckDB."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from veilql.connectors import catalog_cache
from veilql.connectors.base import ColumnInfo


def _age(path: Path, seconds: float = 10.0) -> None:
    """Set ``path``'s modification time into the past, so it counts as settled."""
    past = time.time() - seconds
    os.utime(path, (past, past))


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VEIL_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    (data / "t.csv").write_text("id,x\n1,2\n")
    _age(data / "t.csv")
    _age(data)
    return data


def test_a_settled_folder_is_cached_and_any_change_misses(folder: Path) -> None:
    key = catalog_cache.data_key(f"csv:{folder}", folder.parent)
    assert key is not None
    catalog_cache.store(key, {"t": [ColumnInfo("id", "BIGINT"), ColumnInfo("x", "BIGINT")]})
    assert catalog_cache.load(key) == {"t": [ColumnInfo("id", "BIGINT"),
                                             ColumnInfo("x", "BIGINT")]}
    (folder / "t.csv").write_text("id,x,y\n1,2,3\n")
    _age(folder / "t.csv", 5.0)
    assert catalog_cache.data_key(f"csv:{folder}", folder.parent) not in (None, key)
    (folder / "u.csv").write_text("id\n1\n")  # a new table changes the folder too
    _age(folder / "u.csv", 5.0)
    _age(folder, 5.0)
    assert catalog_cache.data_key(f"csv:{folder}", folder.parent) not in (None, key)


def test_recently_modified_files_are_not_cached(folder: Path) -> None:
    (folder / "t.csv").write_text("id,x\n9,9\n")  # just now: inside the time stamps' grain
    assert catalog_cache.data_key(f"csv:{folder}", folder.parent) is None


def test_servers_and_off_are_never_cached(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert catalog_cache.data_key("postgresql://localhost/db", folder) is None
    monkeypatch.setenv("VEIL_CACHE_DIR", "off")
    assert catalog_cache.cache_dir() is None
    key = catalog_cache.data_key(f"csv:{folder}", folder.parent)
    assert key is not None
    catalog_cache.store(key, {"t": []})
    assert catalog_cache.load(key) is None


def test_a_corrupt_entry_is_ignored(folder: Path) -> None:
    key = catalog_cache.data_key(f"csv:{folder}", folder.parent)
    assert key is not None
    path = catalog_cache.cache_dir() / "catalogs" / f"{key}.json"  # type: ignore[operator]
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert catalog_cache.load(key) is None


def test_parties_on_a_warm_cache_imports_no_duckdb(tmp_path: Path) -> None:
    """`veil parties` twice on the sample: the second call reads the catalogs from the cache
    and never imports DuckDB, Arrow, numpy or sqlglot (its start-up stays well under 0.3 s)."""
    code = ("import sys\nfrom veilql.cli import main\n"
            "try:\n    main(['parties'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('duckdb', 'pyarrow', 'numpy', 'sqlglot') "
            "if m in sys.modules))")
    fed = tmp_path / "demo"
    shutil.copytree(Path(__file__).parents[1] / "sample_data" / "demo", fed,
                    ignore=shutil.ignore_patterns("ledgers", "*.wal"))
    for path in [fed, *fed.rglob("*")]:
        _age(path)  # a fresh copy is inside the grain, and would not be cached
    env = {**os.environ, "VEIL_CACHE_DIR": str(tmp_path / "cache"),
           "VEIL_FEDERATION": str(fed / "federation.toml")}
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=60, env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "bank" in first.stdout
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout.replace(first.stdout.splitlines()[-1], "[]")
