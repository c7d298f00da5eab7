"""The ledger's file primitives: an exclusive lock that waits, and a durable append.

Shared by the ledger file and the anchor file (``ledger``, ``anchor_file``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import filelock

from veilql.engine.ledger.errors import LedgerBusy
from veilql.engine.ledger.keys import fsync_dir


def file_lock(path: str, timeout: float) -> filelock.BaseFileLock:
    """An exclusive ``flock`` on ``path`` whose lock file is kept.

    Unlinking the lock file on release races with waiters, and a native flock (no soft
    fallback) is released by the kernel if the holder crashes.
    """
    try:
        return filelock.FileLock(path, timeout=timeout, preserve_lock_file=True)
    except TypeError:  # filelock < 4 has no such option and always uses flock on Unix
        return filelock.FileLock(path, timeout=timeout)


@contextlib.contextmanager
def holding(lock: filelock.BaseFileLock, what: Path, timeout: float,
            label: str) -> Iterator[None]:
    """Hold ``lock`` (guarding the file ``what``, called ``label`` in errors), waiting up to
    ``timeout`` seconds, then raising ``LedgerBusy``."""
    what.parent.mkdir(parents=True, exist_ok=True)
    try:
        lock.acquire(timeout=timeout)
    except filelock.Timeout:
        raise LedgerBusy(
            f"{label} {what} stayed locked for {timeout:g} s",
            "another process holds the lock; retry, or raise the timeout",
        ) from None
    try:
        yield
    finally:
        lock.release()


def append_durably(path: Path, line: bytes) -> tuple[int, int]:
    """Append ``line`` to ``path`` and fsync it (and the folder when the file is new);
    returns the file's ``(st_dev, st_ino)``, which tells a later reader it is the same file."""
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(line)
        while view:  # one write in practice; loop in case the OS takes part of it
            view = view[os.write(fd, view):]
        os.fsync(fd)
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)
    return st.st_dev, st.st_ino
