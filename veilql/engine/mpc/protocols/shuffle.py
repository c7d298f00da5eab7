"""Secret shuffle: three permutations, each known to one pair, over 2-out-of-2 sharings.

The resharing shuffle of Laur, Willemson and Zhang (ISC 2011), as used by Araki et al.,
"Secure graph analysis at scale" (CCS 2021), lets pair ``(k, k+1)`` permute by a
permutation drawn from the seed only they share, so that the composition of three such
passes, one per pair, is unknown to every single party. Between passes the table needs
only to be 2-out-of-2 shared by the next pair, not replicated: with roles ``a`` (the
party ``tag counter mod 3``), ``b = a+1`` and ``c = a+2``,

1. pair ``(a, b)``: ``a`` holds ``y_a = x_a + x_{a+1}``, ``b`` holds ``y_b = x_{a+2}``;
   both permute by ``pi_1`` (seed ``s_b``) and re-randomise by ``r`` (also ``s_b``):
   ``A = pi_1(y_a) + r`` at ``a``, ``B = pi_1(y_b) - r`` at ``b``. ``a`` hands ``A`` to
   ``c``: masked by ``r``, which ``c`` lacks.
2. pair ``(b, c)``: ``pi_2`` and ``r'`` from ``s_c``; ``b`` hands ``B' = pi_2(B) - r'`` to
   ``a`` (masked by ``r'``, which ``a`` lacks); ``c`` keeps ``C = pi_2(A) + r'``.
3. pair ``(c, a)``: ``pi_3`` from ``s_a``; ``U = pi_3(C)`` at ``c``, ``V = pi_3(B')`` at
   ``a``, ``U + V = pi_3 pi_2 pi_1 (x)``. The output components ``x'_b`` (seed ``s_b``,
   parties a, b) and ``x'_c`` (seed ``s_c``, parties b, c) are keystream; ``c`` sends ``U
   - x'_c`` to ``a`` and ``a`` sends ``V - x'_b`` to ``c`` (each masked by a stream the
   receiver lacks) and both add them: ``x'_a``.

``b`` computes its message without waiting for anyone, so steps 1 and 2 travel at the
same time: two rounds, four messages of the table's size (the three-pass form sends six
in three rounds). ``b`` receives nothing; ``a`` receives ``B'`` and ``U - x'_c``, ``c``
receives ``A`` and ``V - x'_b``, each uniform and independent of the rest of its view.
Each party knows two of the three permutations (``a``: 1, 3; ``b``: 1, 2; ``c``: 2, 3),
so the composed one is uniform from its view. The role of ``a`` rotates with the round
counter, so the two sides of a join load different parties.

A table of at most ``Runtime.chunk_words`` words travels as one message per step with
all columns in it. A larger table is shuffled in bounded memory: column by column, each
column in pieces of its row elements (a piece of all rows is about one chunk), each
piece in chunks of rows (one message per chunk and step); ``b``, which never waits,
is held at most one piece ahead of ``a`` by an empty go-ahead message, so no mailbox
buffers more than about a piece. With ``consume=True`` each input column's arrays take
the intermediate values and outputs in place and the column is released once done; beyond
that, ``a`` and ``c`` hold one temporary of a piece (a value read at permuted rows while
the output is written in order) and every party two permutations (4 bytes per row each,
below 2^31 rows).

The pairs draw their permutation by sorting random keys (``permutation``): the numbers,
not the order of the draws, decide it, so both members of the pair get the same one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from veilql.engine.mpc.prg import Prg
from veilql.engine.mpc.shares import AShare, BShare
from veilql.errors import UsageError

if TYPE_CHECKING:
    from veilql.engine.mpc.runtime import Runtime

Column = AShare | BShare
Slot = tuple[int, int, int]  # (column, first element, end element) of a row


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


def shuffle(rt: Runtime, columns: Sequence[Column], *, consume: bool = False,
            lead: int | None = None) -> list[Column]:
    """Apply one secret uniformly random row permutation to all ``columns``.

    ``lead`` picks the party of role ``a`` (default: the round counter mod 3), so that
    shuffles run at the same time can load different parties and links.

    Two rounds when the table fits in one message of ``rt.chunk_words`` words; else two
    per chunk of rows of each piece of each column (see the module docstring). With
    ``consume`` and a list, the list is emptied and each column dropped once it is
    shuffled, so the caller's table and its shuffled copy do not both stay in memory.
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
    a = int(tag.rsplit(":", 1)[1]) % 3 if lead is None else lead % 3
    role = (rt.me - a) % 3  # 0: a, 1: b, 2: c
    reuse = [consume and _reusable(i, cols) for i in range(len(cols))]
    run = _Run(rt, tag, a, n)
    if n * sum(_row_words(c) for c in cols) <= rt.chunk_words:
        states = [_State.of(rt.me, col, n, role, reuse[i]) for i, col in enumerate(cols)]
        run.group(0, states, [(i, 0, st.width) for i, st in enumerate(states)], [(0, n)],
                  last=True)
        return [st.result() for st in states]
    groups = [(i, g0, g1) for i, col in enumerate(cols)
              for g0, g1 in _pieces(n, _width(col), col.dtype.itemsize, rt.chunk_words)]
    # Column by column: a column's buffers exist only while it is being shuffled.
    by_index: list[_State] = []
    for u, (i, g0, g1) in enumerate(groups):
        if g0 == 0:
            by_index = [_State.of(rt.me, cols[i], n, role, reuse[i]) if k == i else None
                        for k in range(len(cols))]  # type: ignore[misc]
        words = -(-(g1 - g0) * cols[i].dtype.itemsize // 8)
        run.group(u, by_index, [(i, g0, g1)], _spans(n, rt.chunk_rows(words)),
                  last=u == len(groups) - 1)
        if u == len(groups) - 1 or groups[u + 1][0] != i:
            cols[i] = by_index[i].result()  # this column is done: its input is released
            by_index = []
    return cols


def _width(col: Column) -> int:
    """Elements per row of ``col``."""
    return int(np.prod(col.shape[1:], dtype=np.int64))


@dataclass
class _State:
    """One column at one party: its input (``n`` x ``width`` views) and the two slabs ``p``
    and ``q`` that take the intermediate values and the output components (the input's
    own arrays when they may be reused)."""

    party: int
    kind: type
    shape: tuple[int, ...]
    role: int
    width: int
    in_a: np.ndarray
    in_b: np.ndarray
    p: np.ndarray
    q: np.ndarray

    @classmethod
    def of(cls, party: int, col: Column, n: int, role: int, in_place: bool) -> _State:
        """The state of ``col`` (reusing its arrays when ``in_place``)."""
        width = _width(col)
        in_a, in_b = col.a.reshape(n, width), col.b.reshape(n, width)
        p, q = (in_a, in_b) if in_place else (np.empty((n, width), col.dtype),
                                              np.empty((n, width), col.dtype))
        return cls(party, type(col), col.shape, role, width, in_a, in_b, p, q)

    @property
    def dtype(self) -> np.dtype:
        """The components' dtype."""
        return self.p.dtype

    @property
    def add(self) -> Callable[..., np.ndarray]:
        """Addition of components (XOR for boolean shares)."""
        return np.add if self.kind is AShare else np.bitwise_xor

    @property
    def sub(self) -> Callable[..., np.ndarray]:
        """Subtraction of components (XOR for boolean shares)."""
        return np.subtract if self.kind is AShare else np.bitwise_xor

    def result(self) -> Column:
        """The output share: ``(x'_a, x'_b)`` at a, ``(x'_b, x'_c)`` at b, ``(x'_c,
        x'_a)`` at c."""
        first, second = (self.q, self.p) if self.role == 0 else (self.p, self.q)
        return self.kind(self.party, first.reshape(self.shape), second.reshape(self.shape))


class _Run:
    """The messages and keystreams of one shuffle call at one party."""

    def __init__(self, rt: Runtime, tag: str, a: int, n: int) -> None:
        assert rt.seeds is not None
        self.rt, self.tag, self.n = rt, tag, n
        self.a, self.b, self.c = a, (a + 1) % 3, (a + 2) % 3
        self.role = (rt.me - a) % 3
        seeds = rt.seeds
        # s_b: a.next, b.prev; s_c: b.next, c.prev; s_a: c.next, a.prev
        self.s_b = (seeds.next, seeds.prev, None)[self.role]
        self.s_c = (None, seeds.next, seeds.prev)[self.role]
        self.s_a = (seeds.prev, None, seeds.next)[self.role]
        self.perms: dict[int, np.ndarray] = {}

    def perm(self, k: int) -> np.ndarray:
        """Permutation ``pi_k`` (drawn once per call, from the seed of its pair)."""
        got = self.perms.get(k)
        if got is None:
            seed = {1: self.s_b, 2: self.s_c, 3: self.s_a}[k]
            assert seed is not None
            got = permutation(seed, f"{self.tag}/p{k}", self.n)
            if self.n < 1 << 31:  # two are kept: as int32 they take what one int64 took
                got = got.astype(np.int32)
            self.perms[k] = got
        return got

    def group(self, u: int, states: list[_State], slots: list[Slot],
              spans: list[tuple[int, int]], *, last: bool) -> None:
        """Shuffle the element ranges ``slots`` of their columns (message ``u``)."""
        self.rt.rounds += 2 * len(spans)
        (self._at_a, self._at_b, self._at_c)[self.role](u, states, slots, spans, last)

    # -- the three roles ------------------------------------------------------------
    def _at_a(self, u: int, states: list[_State], slots: list[Slot],
              spans: list[tuple[int, int]], last: bool) -> None:
        for i, g0, g1 in slots:  # y_a = x_a + x_{a+1}, into p
            st = states[i]
            st.add(st.in_a[:, g0:g1], st.in_b[:, g0:g1], out=st.p[:, g0:g1])
        pi1 = self.perm(1)
        temp = _temps(states, slots, self.n)  # B' of this piece (q is written row by row)
        for j, (lo, hi) in enumerate(spans):
            parts = []
            for i, g0, g1 in slots:
                st = states[i]
                m = np.take(st.p[:, g0:g1], pi1[lo:hi], axis=0)
                st.add(m, self._draw(self.s_b, "r", u, i, j, m), out=m)
                parts.append(m)
            self._send(self.c, f"{u}.{j}/A", parts)
            for t, got in zip(temp, self._recv(self.b, f"{u}.{j}/B", states, slots, hi - lo),
                              strict=True):
                t[lo:hi] = got
        if not last:
            self._send(self.b, f"{u}/go", [np.empty(0, np.uint8)])
        pi3 = self.perm(3)
        for j, (lo, hi) in enumerate(spans):  # outputs: x'_a into q, x'_b into p
            parts = []
            for t, (i, g0, g1) in zip(temp, slots, strict=True):
                st = states[i]
                v = _take(t, pi3[lo:hi], st.q[lo:hi, g0:g1])
                xb = self._draw(self.s_b, "xb", u, i, j, v)
                st.sub(v, xb, out=v)
                st.p[lo:hi, g0:g1] = xb
                parts.append(v)
            self._send(self.c, f"{u}.{j}/V", parts)
            for (i, g0, g1), got in zip(slots, self._recv(self.c, f"{u}.{j}/U", states, slots,
                                                          hi - lo), strict=True):
                out = states[i].q[lo:hi, g0:g1]
                states[i].add(out, got, out=out)

    def _at_b(self, u: int, states: list[_State], slots: list[Slot],
              spans: list[tuple[int, int]], last: bool) -> None:
        if u:  # held at most one piece ahead of a
            self._recv(self.a, f"{u - 1}/go", None, None, 0)
        pi1 = self.perm(1)
        for j, (lo, hi) in enumerate(spans):  # B = pi_1(x_{a+2}) - r, into p
            for i, g0, g1 in slots:
                st = states[i]
                out = _take(st.in_b[:, g0:g1], pi1[lo:hi], st.p[lo:hi, g0:g1])
                st.sub(out, self._draw(self.s_b, "r", u, i, j, out), out=out)
        pi2 = self.perm(2)
        for j, (lo, hi) in enumerate(spans):
            parts = []
            for i, g0, g1 in slots:
                st = states[i]
                m = np.take(st.p[:, g0:g1], pi2[lo:hi], axis=0)
                st.sub(m, self._draw(self.s_c, "r2", u, i, j, m), out=m)
                parts.append(m)
            self._send(self.a, f"{u}.{j}/B", parts)
        for j, (lo, hi) in enumerate(spans):  # outputs (x'_b, x'_c): keystream
            for i, g0, g1 in slots:
                st = states[i]
                st.p[lo:hi, g0:g1] = self._draw(self.s_b, "xb", u, i, j, st.p[lo:hi, g0:g1])
                st.q[lo:hi, g0:g1] = self._draw(self.s_c, "xc", u, i, j, st.q[lo:hi, g0:g1])

    def _at_c(self, u: int, states: list[_State], slots: list[Slot],
              spans: list[tuple[int, int]], last: bool) -> None:
        for j, (lo, hi) in enumerate(spans):
            for (i, g0, g1), got in zip(slots, self._recv(self.a, f"{u}.{j}/A", states, slots,
                                                          hi - lo), strict=True):
                states[i].p[lo:hi, g0:g1] = got
        pi2 = self.perm(2)
        temp = _temps(states, slots, self.n)  # C of this piece
        for j, (lo, hi) in enumerate(spans):  # C = pi_2(A) + r'
            for t, (i, g0, g1) in zip(temp, slots, strict=True):
                st = states[i]
                out = _take(st.p[:, g0:g1], pi2[lo:hi], t[lo:hi])
                st.add(out, self._draw(self.s_c, "r2", u, i, j, out), out=out)
        pi3 = self.perm(3)
        for j, (lo, hi) in enumerate(spans):  # outputs: x'_c into p, x'_a into q
            parts = []
            for t, (i, g0, g1) in zip(temp, slots, strict=True):
                st = states[i]
                w = _take(t, pi3[lo:hi], st.q[lo:hi, g0:g1])
                xc = self._draw(self.s_c, "xc", u, i, j, w)
                st.sub(w, xc, out=w)
                st.p[lo:hi, g0:g1] = xc
                parts.append(w)
            self._send(self.a, f"{u}.{j}/U", parts)
            for (i, g0, g1), got in zip(slots, self._recv(self.a, f"{u}.{j}/V", states, slots,
                                                          hi - lo), strict=True):
                out = states[i].q[lo:hi, g0:g1]
                states[i].add(out, got, out=out)

    # -- messages and keystreams ------------------------------------------------------
    def _draw(self, seed: Prg | None, what: str, u: int, i: int, j: int,
              like: np.ndarray) -> np.ndarray:
        assert seed is not None
        return seed.array("shuffle", f"{self.tag}/{what}/{u}/{i}/{j}", like.shape, like.dtype)

    def _send(self, to: int, name: str, parts: list[np.ndarray]) -> None:
        self.rt.send(to, f"{self.tag}/{name}", parts[0] if len(parts) == 1 else _pack(parts))

    def _recv(self, frm: int, name: str, states: list[_State] | None,
              slots: list[Slot] | None, rows: int) -> list[np.ndarray]:
        if states is None or slots is None:
            self.rt.recv(frm, f"{self.tag}/{name}", np.uint8, 0)
            return []
        like = [(states[i].dtype, (rows, g1 - g0)) for i, g0, g1 in slots]
        if len(like) == 1:
            return [self.rt.recv(frm, f"{self.tag}/{name}", like[0][0], like[0][1])]
        total = sum(rows * w * dt.itemsize for dt, (_, w) in like)
        return _unpack(self.rt.recv(frm, f"{self.tag}/{name}", np.uint8, total), like)


def _temps(states: list[_State], slots: list[Slot], n: int) -> list[np.ndarray]:
    """One ``n``-row buffer per slot, for the value a role must read at permuted rows while
    it writes the slot's output rows in order (at most one piece of a column at a time)."""
    return [np.empty((n, g1 - g0), states[i].dtype) for i, g0, g1 in slots]


def _take(src: np.ndarray, idx: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out[:] = src[idx]`` along rows (``out`` never overlaps ``src``; the indices are a
    permutation's, always in range, so numpy need not buffer the output)."""
    np.take(src, idx, axis=0, out=out, mode="clip")
    return out


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
    """Whether column ``i``'s components can take the shuffle's values in place: writable,
    contiguous, and sharing no memory with another column (which would be overwritten)."""
    col = cols[i]
    if not all(x.flags.writeable and x.flags.c_contiguous for x in (col.a, col.b)):
        return False
    if np.may_share_memory(col.a, col.b):
        return False
    return not any(k != i and np.may_share_memory(x, y)
                   for k, other in enumerate(cols) for x in (col.a, col.b)
                   for y in (other.a, other.b))


def _pack(arrays: list[np.ndarray]) -> np.ndarray:
    if not arrays:
        return np.empty(0, np.uint8)
    return np.concatenate([np.ascontiguousarray(x).view(np.uint8).ravel() for x in arrays])


def _unpack(buf: np.ndarray, like: list[tuple[np.dtype, tuple[int, int]]]) -> list[np.ndarray]:
    out, off = [], 0
    for dt, shape in like:
        nb = shape[0] * shape[1] * dt.itemsize
        out.append(buf[off:off + nb].view(dt).reshape(shape))
        off += nb
    return out
