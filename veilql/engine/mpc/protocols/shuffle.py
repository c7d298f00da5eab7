"""Secret shuffle: three resharing passes, each permuting by a pair's private permutation.

Following the resharing-based shuffle of Laur, Willemson and Zhang (ISC 2011) as used
by Araki et al., "Secure graph analysis at scale" (CCS 2021): in pass ``k`` the pair
``(a, b) = (k, k+1)`` turns its four components into a 2-out-of-2 sharing
(``y_a = x_a + x_{a+1}``, ``y_b = x_{a+2}``), both apply a permutation drawn from the
seed only they share, and they re-share the permuted rows to all three:

* the new components ``x'_a`` (seed of parties c, a) and ``x'_{a+2}`` (seed of parties
  b, c) are drawn locally by the outsider ``c = a+2`` and one of the pair each;
* ``a`` sends ``pi(y_a) - x'_a`` to ``b`` and ``b`` sends ``pi(y_b) - x'_{a+2}`` to ``a``;
  each message is masked by a component the receiver does not know, and their sum is
  the third component ``x'_{a+1}``.

The outsider receives nothing. Every party is the outsider of one pass, so no party
knows the composed permutation. A table of at most ``Runtime.chunk_words`` words takes one
round (one message each way) per pass, all columns in that message. A larger table is
shuffled in bounded memory: column by column, and each column in chunks of rows (one
message each way per chunk, ``Runtime.chunk_rows``), the permuted rows gathered from the
whole column by the pass's one permutation, so every column is still permuted identically;
with ``consume=True`` each input column is released as soon as its output is complete.

The pair draws its permutation by sorting random keys (``permutation``): the numbers, not
the order of the draws, decide it, so both members of the pair get the same permutation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from veilql.engine.mpc.prg import Prg
from veilql.engine.mpc.shares import AShare, BShare
from veilql.errors import UsageError

if TYPE_CHECKING:
    from veilql.engine.mpc.runtime import Runtime

Column = AShare | BShare


def _combine(col: Column, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u + v if isinstance(col, AShare) else u ^ v


def _minus(col: Column, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u - v if isinstance(col, AShare) else u ^ v


def _pack(arrays: list[np.ndarray]) -> np.ndarray:
    if not arrays:
        return np.empty(0, np.uint8)
    return np.concatenate([np.ascontiguousarray(x).view(np.uint8).ravel() for x in arrays])


def _unpack(buf: np.ndarray, like: list[np.ndarray]) -> list[np.ndarray]:
    out, off = [], 0
    for x in like:
        nb = x.size * x.dtype.itemsize
        out.append(buf[off:off + nb].view(x.dtype).reshape(x.shape))
        off += nb
    return out


def permutation(prg: Prg, label: str, n: int) -> np.ndarray:
    """A uniformly random permutation of ``range(n)`` (int64) from ``prg``'s keystream.

    Each element gets a random key; the permutation is the order of the keys. To sort fast,
    a key keeps its top ``64 - b`` bits and carries the element's index in its low ``b``
    bits (``2^b >= n``), so one in-place sort of plain integers yields the order; elements
    whose top bits tie (a few at large ``n``) are ordered among themselves by fresh 64-bit
    keys. The order is that of independent uniform keys of ``128 - b`` bits, so every
    permutation is equally likely once all keys differ; a remaining tie (probability below
    ``n / 2^64``) redraws everything, which keeps it exactly uniform.

    >>> p = permutation(Prg(bytes(16)), "x", 10)
    >>> sorted(p.tolist()) == list(range(10)), p.dtype
    (True, dtype('int64'))
    """
    if n < 2:
        return np.arange(n, dtype=np.int64)
    bits = np.uint64((n - 1).bit_length())
    low = (np.uint64(1) << bits) - np.uint64(1)
    attempt = 0
    while True:
        keys = prg.array("perm", f"{label}#{attempt}", n)
        keys >>= bits
        keys <<= bits
        keys |= np.arange(n, dtype=np.uint64)
        keys.sort()
        high = keys >> bits
        ties = np.flatnonzero(high[1:] == high[:-1])
        del high
        order = (keys & low).view(np.int64)
        if not len(ties):
            return order
        # Positions in runs of equal top bits; each run gets an order by fresh keys.
        involved = np.union1d(ties, ties + 1)
        starts = np.ones(len(involved), dtype=bool)
        starts[1:] = ~np.isin(involved[1:] - 1, ties)
        run = np.cumsum(starts)
        fresh = prg.array("perm", f"{label}#{attempt}/ties", len(involved))
        within = np.lexsort((fresh, run))
        same = (run[within][1:] == run[within][:-1]) & (fresh[within][1:] == fresh[within][:-1])
        if not same.any():
            order[involved] = order[involved][within]
            return order
        attempt += 1


def shuffle(rt: Runtime, columns: Sequence[Column], *, consume: bool = False) -> list[Column]:
    """Apply one secret uniformly random row permutation to all ``columns``.

    Three rounds when the table fits in one message of ``rt.chunk_words`` words; else one
    round per chunk of rows of each column (see the module docstring). With ``consume`` and
    a list, the list is emptied and each column dropped once it is shuffled, so the caller's
    table and its shuffled copy do not both stay in memory.
    """
    cols = list(columns)
    if not cols:
        return []
    n = len(cols[0])
    for c in cols:
        if c.shape[:1] != (n,):
            raise UsageError(
                f"shuffle needs columns of equal length, got {c.shape[:1]} and {(n,)}",
                "shuffle the columns of one table together",
            )
    assert rt.seeds is not None
    if consume and isinstance(columns, list):
        columns.clear()
    tag = rt.tag("shuffle")
    whole = n * sum(_row_words(c) for c in cols) <= rt.chunk_words
    for k in range(3):
        # The first pass may reuse the caller's arrays only when it gave them up; later
        # passes reuse their own outputs.
        mine = consume or k > 0
        cols = _pass(rt, f"{tag}/p{k}", cols, k, n) if whole else \
            _pass_chunked(rt, f"{tag}/p{k}", cols, k, n, consume=mine)
    return cols


def _row_words(col: Column) -> int:
    """64-bit words per row of ``col`` (rounded up)."""
    per_row = int(np.prod(col.shape[1:], dtype=np.int64)) * col.dtype.itemsize
    return max(1, -(-per_row // 8))


def _spans(n: int, rows: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` row ranges of at most ``rows`` rows covering ``range(n)``.

    >>> _spans(5, 2)
    [(0, 2), (2, 4), (4, 5)]
    """
    return [(lo, min(n, lo + rows)) for lo in range(0, n, max(1, rows))]


def _pieces(n: int, width: int, itemsize: int, chunk_words: int) -> list[tuple[int, int]]:
    """Element ranges ``[g0, g1)`` of a row of ``width`` elements, each piece of a column of
    ``n`` rows at most ``chunk_words`` words (at least one element wide).

    >>> _pieces(10, 6, 8, 20), _pieces(100, 3, 8, 20)
    ([(0, 2), (2, 4), (4, 6)], [(0, 1), (1, 2), (2, 3)])
    """
    per = max(1, min(width, (chunk_words * 8 // itemsize) // max(1, n)))
    return [(g, min(width, g + per)) for g in range(0, width, per)]


def _reusable(i: int, cols: list[Column]) -> bool:
    """Whether column ``i``'s components can take the output of a pass in place: writable,
    contiguous, and sharing no memory with another column (which would be overwritten)."""
    col = cols[i]
    if not all(x.flags.writeable and x.flags.c_contiguous for x in (col.a, col.b)):
        return False
    if np.may_share_memory(col.a, col.b):
        return False
    return not any(k != i and np.may_share_memory(x, y)
                   for k, other in enumerate(cols) for x in (col.a, col.b)
                   for y in (other.a, other.b))


def _pass_chunked(rt: Runtime, tag: str, cols: list[Column], a: int, n: int, *,
                  consume: bool = False) -> list[Column]:
    """One pass in bounded memory (same roles and messages as ``_pass``, split up).

    Column by column, each column in pieces of its row elements (a piece of all rows takes
    at most about one chunk) and each piece in chunks of rows: one message each way per
    chunk. What a pair member permutes (``x_a + x_{a+1}`` at ``a``, ``x_{a+2}`` at ``b``)
    is copied out one piece at a time, so with ``consume`` (the columns are this pass's to
    reuse) the output overwrites the input's components in place; else it gets new arrays.
    """
    assert rt.seeds is not None
    b, c = (a + 1) % 3, (a + 2) % 3
    me = rt.me
    perm = None if me == c else permutation(rt.seeds.next if me == a else rt.seeds.prev,
                                            tag, n)
    other = b if me == a else a
    for i, col in enumerate(cols):
        width = int(np.prod(col.shape[1:], dtype=np.int64))
        in_place = consume and _reusable(i, cols)
        first = col.a if in_place else np.empty(col.shape, col.dtype)
        second = col.b if in_place else np.empty(col.shape, col.dtype)
        out_a, out_b = first.reshape(n, width), second.reshape(n, width)
        in_a, in_b = col.a.reshape(n, width), col.b.reshape(n, width)
        pieces = _pieces(n, width, col.dtype.itemsize, rt.chunk_words)
        wide = max(g1 - g0 for g0, g1 in pieces) if pieces else 0
        rows = rt.chunk_rows(-(-wide * col.dtype.itemsize // 8))
        # Buffers reused by every piece and chunk of this column (fresh memory costs the
        # kernel a page fault per page: reusing it roughly halves the system time).
        source = np.empty((n, wide), col.dtype) if me != c else None
        work = np.empty((min(rows, n), wide), col.dtype) if me != c else None
        for g, (g0, g1) in enumerate(pieces):
            w = g1 - g0
            if me == a:  # what a permutes: x_a + x_{a+1}; b: x_{a+2}
                _combine_into(col, in_a[:, g0:g1], in_b[:, g0:g1], source[:, :w])
            elif me == b:
                np.copyto(source[:, :w], in_b[:, g0:g1])
            for j, (lo, hi) in enumerate(_spans(n, rt.chunk_rows(-(-w * col.dtype.itemsize
                                                                   // 8)))):
                label, shape = f"{tag}/{i}/{g}/{j}", (hi - lo, w)
                rt.rounds += 1
                if me == c:  # outsider: x'_{a+2} from its prev seed, x'_a from its next seed
                    out_a[lo:hi, g0:g1] = rt.seeds.prev.array("shuffle", label, shape, col.dtype)
                    out_b[lo:hi, g0:g1] = rt.seeds.next.array("shuffle", label, shape, col.dtype)
                    continue
                assert perm is not None and source is not None and work is not None
                mine = work[:hi - lo, :w]
                np.take(source[:, :w], perm[lo:hi], axis=0, out=mine)
                # x'_a from s_a (a's prev seed) at a; x'_{a+2} from s_{a+2} (b's next) at b
                seed = rt.seeds.prev if me == a else rt.seeds.next
                mask = seed.array("shuffle", label, shape, col.dtype)
                _minus_into(col, mine, mask, mine)
                msg = f"{tag}/{i}.{g}.{j}"
                rt.send(other, msg, mine)
                got = rt.recv(other, msg, col.dtype, shape)
                keep, mid = (out_a, out_b) if me == a else (out_b, out_a)
                keep[lo:hi, g0:g1] = mask
                _combine_into(col, mine, got, mid[lo:hi, g0:g1])
        del source, work
        cols[i] = type(col)(me, first, second)  # a new input column is released here
        del col, in_a, in_b
    return cols


def _combine_into(col: Column, u: np.ndarray, v: np.ndarray, out: np.ndarray) -> None:
    """``out = u + v`` (arithmetic) or ``u ^ v`` (boolean), without a new array."""
    (np.add if isinstance(col, AShare) else np.bitwise_xor)(u, v, out=out)


def _minus_into(col: Column, u: np.ndarray, v: np.ndarray, out: np.ndarray) -> None:
    """``out = u - v`` (arithmetic) or ``u ^ v`` (boolean), without a new array."""
    (np.subtract if isinstance(col, AShare) else np.bitwise_xor)(u, v, out=out)


def _pass(rt: Runtime, tag: str, cols: list[Column], a: int, n: int) -> list[Column]:
    assert rt.seeds is not None
    b, c = (a + 1) % 3, (a + 2) % 3
    me = rt.me
    rt.rounds += 1
    if me == c:
        # Outsider: x'_a from s_a (its next seed), x'_{a+2} from s_{a+2} (its prev seed).
        out: list[Column] = []
        for i, col in enumerate(cols):
            xa = rt.seeds.next.array("shuffle", f"{tag}/{i}", col.shape, col.dtype)
            xc = rt.seeds.prev.array("shuffle", f"{tag}/{i}", col.shape, col.dtype)
            out.append(type(col)(me, xc, xa))
        return out
    seed_pair = rt.seeds.next if me == a else rt.seeds.prev  # s_{a+1}, known to a and b
    perm = permutation(seed_pair, tag, n)
    mine: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    for i, col in enumerate(cols):
        y = _combine(col, col.a, col.b) if me == a else col.b
        y = y[perm]
        if me == a:  # x'_a from s_a: a's prev seed
            mask = rt.seeds.prev.array("shuffle", f"{tag}/{i}", col.shape, col.dtype)
        else:  # x'_{a+2} from s_{a+2}: b's next seed
            mask = rt.seeds.next.array("shuffle", f"{tag}/{i}", col.shape, col.dtype)
        mine.append(_minus(col, y, mask))
        masks.append(mask)
    other = b if me == a else a
    buf = _pack(mine)
    rt.send(other, tag, buf)
    got = _unpack(rt.recv(other, tag, np.uint8, buf.size), mine)
    out = []
    for col, m, g, mask in zip(cols, mine, got, masks, strict=True):
        mid = _combine(col, m, g)  # x'_{a+1}
        out.append(type(col)(me, mask, mid) if me == a else type(col)(me, mid, mask))
    return out
