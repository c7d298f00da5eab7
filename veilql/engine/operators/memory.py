"""A party's memory budget for one query, and the chunks it gives (``VEIL_MEMORY_MB``).

The budget bounds what scales with the chunk size (local factors, shares being made,
shuffle and aggregation temporaries); the shared tables themselves take about 16 bytes per
word of every row they hold (two components), whatever the setting. See ARCHITECTURE.md,
"Memory and chunks".
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import traceback
from functools import lru_cache

import numpy as np

from veilql.errors import UsageError

MEMORY_ENV = "VEIL_MEMORY_MB"  # a party's memory budget for one query's chunks, in MiB
DEFAULT_MEMORY_MB = 2048
CHUNK_SHARE = 64  # chunk-sized arrays one step may hold at once (chunk = budget / this)
MAX_CHUNK_WORDS = 1 << 20  # 8 MiB per chunk-sized array (see chunk_words)


def memory_budget() -> int:
    """Bytes one party may use for the chunks of a query: ``$VEIL_MEMORY_MB`` MiB, default
    ``DEFAULT_MEMORY_MB`` (a node's own resource, so a setting of its process).

    It bounds what scales with the chunk size (local factors, shares being made, shuffle
    and aggregation temporaries); the shared tables themselves take about 16 bytes per word
    of every row they hold (two components), whatever the setting.
    """
    env = os.environ.get(MEMORY_ENV, "").strip()
    if env:
        try:
            mb = float(env)
        except ValueError:
            mb = -1.0
        if not mb > 0:
            raise UsageError(f"${MEMORY_ENV} must be a positive number of MiB, got {env!r}",
                             f"unset it or write e.g. {MEMORY_ENV}=2048")
    else:
        mb = float(DEFAULT_MEMORY_MB)
    return int(mb * (1 << 20))


def chunk_words() -> int:
    """Words (8 bytes) in one chunk: the memory budget over ``CHUNK_SHARE`` arrays, at most
    ``MAX_CHUNK_WORDS``.

    Larger chunks save nothing measurable (a chunk of 8 MiB already amortises the per-chunk
    work), and chunk-sized arrays well below glibc's largest mmap threshold (32 MiB) are
    reused by the allocator instead of being mapped and faulted in afresh each time: at
    10^7 people the join query spent 9.3 s of system time with 32 MiB chunks, 5.0 s with
    8 MiB ones.
    """
    return max(1024, min(MAX_CHUNK_WORDS, memory_budget() // (8 * CHUNK_SHARE)))


def spans(n: int, rows: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` ranges of at most ``rows`` rows covering ``range(n)`` (one when empty).

    >>> spans(5, 2), spans(0, 3)
    ([(0, 2), (2, 4), (4, 5)], [(0, 0)])
    """
    rows = max(1, rows)
    return [(lo, min(n, lo + rows)) for lo in range(0, n, rows)] or [(0, 0)]


def row_words(shape: tuple[int, ...] | list[int]) -> int:
    """Words in one row of an array of ``shape`` (at least one).

    >>> row_words((10, 3, 4)), row_words((7,))
    (12, 1)
    """
    return max(1, int(np.prod(shape[1:], dtype=np.int64)))


def forget_frames(exc: BaseException) -> None:
    """Clear the locals of the finished frames in ``exc``'s traceback and in those of the
    errors it was raised from or during: an error kept by its caller (a shell's last
    exception, a test's report) then keeps no joined shares or factors alive. File names
    and line numbers stay, so a traceback still prints."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        traceback.clear_frames(e.__traceback__)
        todo.extend((e.__cause__, e.__context__))


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def release_memory() -> None:
    """Collect what a failed query left unreachable and hand freed heap pages back to the
    system (glibc's ``malloc_trim``; elsewhere only the collection), so a session's
    resident size falls back after the failure instead of staying at its peak."""
    gc.collect()
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is not None:
        trim(0)
