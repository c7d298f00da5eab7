"""Secure join on the privacy unit, with no party learning which of its rows matched.

Per stage (see ``JoinStage``): both sides, secret-shared row by row with their tag
column, are shuffled by one secret permutation each (three passes, each known to two
parties only, so no single party knows it). The tags are then opened to the ``viewer``,
a compute party that does not know the tag key: it sees uniformly random-looking tags in
an order it cannot relate to anyone's rows, and learns only which positions match. It
publishes the matching positions; every party gathers its shares at those positions. So
each party learns the sizes of both sides and of the result, and nothing else. Tags are
unique per side (one row per unit after pivoting), so matches are one to one.

The idea of tagging with a keyed PRF after an oblivious shuffle follows the
"shuffle, then reveal blinded keys" joins of Mohassel-Rindal-Rosulek (CCS'20) and
Secrecy/ORQ, with the PRF evaluated by the key holders instead of inside MPC, which the
viewer's ignorance of the key makes safe.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from veilql.engine.mpc.runtime import Runtime
from veilql.engine.mpc.shares import AShare
from veilql.engine.plan.nodes import JoinStage
from veilql.errors import ProtocolError


@dataclass
class SharedTable:
    """Named share columns of equal length (first axis).

    ``memo`` keeps what was computed from a cached table (the aggregates of a repeated
    query, keyed by the plan's structure), so reusing the table reuses them too.
    """

    n: int
    cols: dict[str, AShare]
    memo: dict[str, AShare] = field(default_factory=dict)

    def take(self, idx: np.ndarray, *, consume: bool = False,
             in_place: bool = False) -> SharedTable:
        """Rows at public positions ``idx`` (local); ``consume`` drops each column of this
        table once it is gathered (then this table is empty).

        ``in_place`` (with ``consume``, for strictly increasing ``idx``): each column is
        compacted inside its own arrays, chunk by chunk (row ``k`` comes from ``idx[k] >=
        k``, never overwritten before it is read) and shrunk to ``len(idx)`` rows, so a
        wide table is gathered without a second copy of it.
        """
        cols = {}
        ordered = in_place and consume and len(idx) > 0 and bool(np.all(idx[1:] > idx[:-1]))
        for k in list(self.cols):
            v = self.cols.pop(k) if consume else self.cols[k]
            if ordered and _compactable(v):
                cols[k] = type(v)(v.party, _compact(v.a, idx), _compact(v.b, idx))
            else:
                cols[k] = type(v)(v.party, np.take(v.a, idx, axis=0), np.take(v.b, idx, axis=0))
            del v
        return SharedTable(len(idx), cols)

    def shuffled(self, rt: Runtime, *, consume: bool = False,
                 lead: int | None = None) -> SharedTable:
        """The same rows under one secret permutation (two rounds per chunk);
        ``consume`` empties this table column by column as the shuffle goes; ``lead``:
        the party of the shuffle's busiest role (``Runtime.shuffle``)."""
        names = list(self.cols)
        if self.n == 0:
            return SharedTable(0, dict(self.cols))
        given = [self.cols[k] for k in names]
        if consume:
            self.cols = {}
        out = rt.shuffle(given, consume=consume, lead=lead)
        return SharedTable(self.n, dict(zip(names, out, strict=True)))


COMPACT_ROWS = 1 << 18  # rows moved at once by an in-place gather


def _compactable(x: AShare) -> bool:
    """Whether ``x``'s components may be compacted in place: writable, contiguous, not
    sharing memory with each other."""
    return all(c.flags.writeable and c.flags.c_contiguous for c in (x.a, x.b)) and \
        not np.may_share_memory(x.a, x.b)


def _compact(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``x[idx]`` built inside ``x`` (``idx`` strictly increasing), shrunk when ``x`` owns
    its memory (the tail is handed back), else a view of its first ``len(idx)`` rows."""
    m = len(idx)
    for lo in range(0, m, COMPACT_ROWS):
        hi = min(m, lo + COMPACT_ROWS)
        x[lo:hi] = x[idx[lo:hi]]  # reads rows >= lo, writes rows lo..hi-1
    if x.base is None and x.flags.owndata:
        try:
            x.resize((m, *x.shape[1:]), refcheck=False)
            return x
        except ValueError:
            pass
    return x[:m]


def agree_all(rt: Runtime, flag: bool) -> bool:
    """Whether ``flag`` holds at all three compute parties (one byte to each peer)."""
    tag = rt.tag("agree")
    me = rt.parties[rt.me]
    for p in rt.parties:
        if p != me:
            rt.transport.send(p, tag, b"1" if flag else b"0")
    theirs = [rt.transport.recv(p, tag, rt.timeout) for p in rt.parties if p != me]
    rt.rounds += 1
    return flag and all(t == b"1" for t in theirs)


def match(left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of equal tags on both sides (run by the viewer only).

    Matches come in increasing order of the tag (as ``np.intersect1d`` gives them). Both
    sides are sorted together in one sort of plain integers: each tag keeps its top bits
    and carries its index into both sides in its low bits, so equal tags land next to each
    other (a left one first) and the sort needs no ``argsort``. A pair of neighbours whose
    top bits agree is a match when their whole tags do; the few tags whose top bits agree
    with two or more others are matched exactly by ``_match_sorted``.

    >>> match(np.array([5, 9, 2], dtype=np.uint64), np.array([2, 7, 5], dtype=np.uint64))
    (array([2, 0]), array([0, 2]))
    """
    nl, nr = len(left), len(right)
    if not nl or not nr:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    n = nl + nr
    bits = np.uint64(max(1, (n - 1).bit_length()))
    keys = np.empty(n, dtype=np.uint64)
    keys[:nl], keys[nl:] = left, right
    keys >>= bits
    keys <<= bits
    keys |= np.arange(n, dtype=np.uint64)
    keys.sort()
    where = (keys & ((np.uint64(1) << bits) - np.uint64(1))).view(np.int64)
    keys >>= bits
    same = keys[1:] == keys[:-1]  # neighbours with the same top bits
    del keys
    crowded = np.zeros(n, dtype=bool)  # in a run of three or more equal top bits
    three = np.flatnonzero(same[:-1] & same[1:])
    for k in range(3):
        crowded[three + k] = True
    first = np.flatnonzero(same)
    first = first[~crowded[first]]
    a, b = where[first], where[first + 1]
    del first
    pair = (a < nl) & (b >= nl)
    a, b = a[pair], b[pair] - nl
    hit = left[a] == right[b]
    il, ir = a[hit], b[hit]
    if len(three):  # exactly, among the crowded runs' tags only
        rest = where[crowded]
        ls, rs = np.sort(rest[rest < nl]), np.sort(rest[rest >= nl] - nl)
        fl, fr = _match_sorted(left[ls], right[rs])
        fl, fr = ls[fl], rs[fr]
        at = np.searchsorted(left[il], left[fl])
        il, ir = np.insert(il, at, fl), np.insert(ir, at, fr)
    return il.astype(np.int64, copy=False), ir.astype(np.int64, copy=False)


def _match_sorted(left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``match`` by sorting each side (``argsort``) and looking the left tags up in the
    sorted right ones."""
    if not len(left) or not len(right):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    ol = np.argsort(left)
    sl = left[ol]
    orr = np.argsort(right)
    sr = right[orr]
    pos = np.searchsorted(sr, sl)
    pos[pos == len(sr)] = 0
    hit = sr[pos] == sl
    return ol[hit].astype(np.int64), orr[pos[hit]].astype(np.int64)


WIDE = np.dtype(np.uint64)  # the match positions' word when a side has 2^32 rows or more


def position_dtype(*sizes: int) -> np.dtype:
    """The word of the match positions of sides of these (public) sizes: 32 bits when
    every position fits, which halves the viewer's messages; 64 bits otherwise."""
    return np.dtype(np.uint32 if max(sizes, default=0) < 1 << 32 else np.uint64)


def encode_positions(il: np.ndarray, ir: np.ndarray,
                     dtype: np.dtype = WIDE) -> np.ndarray:
    """Matching positions as one array of ``dtype`` words, offset by a fresh public random
    number (modulo the word).

    The positions are public (they index rows in an order nobody can invert). The offset
    hides nothing; it only keeps small integers out of transcripts, so an audit that
    scans them for identifiers never mistakes a row position for someone's key.

    >>> w = np.dtype(np.uint32)
    >>> il, ir = decode_positions(encode_positions(np.array([4, 1]), np.array([0, 3]), w),
    ...                           "v", w)
    >>> il.tolist(), ir.tolist()
    ([4, 1], [0, 3])
    """
    offset = np.frombuffer(os.urandom(dtype.itemsize), dtype=dtype)
    body = np.concatenate([il, ir]).astype(dtype)
    body += offset
    return np.concatenate([offset, body])


def decode_positions(data: np.ndarray, viewer: str,
                     dtype: np.dtype = WIDE) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``encode_positions`` (int64 positions); ProtocolError when malformed."""
    if data.dtype != dtype or data.ndim != 1 or len(data) % 2 != 1:
        raise ProtocolError(f"malformed join positions from {viewer!r}")
    pos = (data[1:] - data[0]).astype(np.int64) if dtype.itemsize < 8 else \
        (data[1:] - data[0]).view(np.int64)
    half = len(pos) // 2
    return pos[:half], pos[half:]


Side = SharedTable | Callable[[Runtime], SharedTable]


def join_stage(
    rt: Runtime, stage: JoinStage, left: Side, right: Side, tag: str, *,
    consume: bool = False,
) -> SharedTable:
    """One join stage: shuffle both sides, open ``tag`` columns to the viewer, gather.

    A side is a table or a function that makes it on a runtime (e.g. shares a party's
    columns). The two sides are made, shuffled and opened at the same time on forked
    runtimes (``Runtime.parallel``): they depend on nothing of each other, and their
    messages then share the links (the shuffle's roles rotate, so the two sides load
    different parties) instead of waiting for each other. ``consume``: the input tables
    are emptied as they are shuffled (each column released once its shuffled copy exists),
    so a stage holds about one copy of its tables at a time.
    """
    lead = rt.party_index(stage.viewer)  # the sides' busiest roles at the two others
    (left, tl), (right, tr) = rt.parallel(
        lambda r: _shuffle_open(r, left, tag, stage.viewer, consume, lead + 1),
        lambda r: _shuffle_open(r, right, tag, stage.viewer, consume, lead + 2))
    msg = rt.tag("join-match")
    word = position_dtype(left.n, right.n)
    viewer = rt.party_index(stage.viewer)
    others = [rt.parties[i] for i in range(3) if i != viewer]
    if rt.me == viewer:
        assert tl is not None and tr is not None
        il, ir = match(tl, tr)
        for name in others:
            rt.transport.send_array(name, msg, encode_positions(il, ir, word))
    else:
        il, ir = decode_positions(rt.transport.recv_array(stage.viewer, msg, rt.timeout),
                                  stage.viewer, word)
        if len(il) and (il.max() >= left.n or ir.max() >= right.n or min(il.min(), ir.min()) < 0):
            raise ProtocolError(f"join positions from {stage.viewer!r} are out of range")
    rt.rounds += 1
    del tl, tr
    # The joined rows are ordered by their position on the wider side (every party sorts
    # the same public positions the same way), so that side is gathered in place.
    wide = _row_words(left) >= _row_words(right)
    if wide:
        il, ir = by_first(il, ir)
    else:
        ir, il = by_first(ir, il)
    a = left.take(il, consume=True, in_place=wide)  # the shuffled copies are this function's
    b = right.take(ir, consume=True, in_place=not wide)
    return SharedTable(len(il), {**a.cols, **b.cols})


def _shuffle_open(rt: Runtime, side: Side, tag: str, viewer: str, consume: bool,
                  lead: int) -> tuple[SharedTable, np.ndarray | None]:
    """One side of a stage on its own runtime: made, shuffled (``lead`` in the busiest
    role), its ``tag`` column opened to ``viewer`` and dropped from the shuffled copy."""
    table = side(rt) if callable(side) else side
    shuffled = table.shuffled(rt, consume=consume, lead=lead)
    del table
    return shuffled, rt.open_to(shuffled.cols.pop(tag), viewer)


def by_first(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pairs ``(first[k], second[k])`` in increasing order of ``first`` (positions,
    distinct on a side), ties by ``second``.

    Positions below 2^32 are packed two to a word and sorted as plain integers, a sort
    several times faster than an ``argsort`` and the same order for distinct ``first``.

    >>> [p.tolist() for p in by_first(np.array([5, 1, 3]), np.array([0, 9, 4]))]
    [[1, 3, 5], [9, 4, 0]]
    """
    if not len(first):
        return first.astype(np.int64), second.astype(np.int64)
    if max(int(first.max()), int(second.max())) < 1 << 32 and min(first.min(), second.min()) >= 0:
        packed = first.astype(np.uint64) << np.uint64(32)
        packed |= second.astype(np.uint64)
        packed.sort()
        low = (packed & np.uint64(0xFFFFFFFF)).view(np.int64)
        packed >>= np.uint64(32)
        return packed.view(np.int64), low
    order = np.argsort(first, kind="stable")
    return first[order].astype(np.int64), second[order].astype(np.int64)


def _row_words(table: SharedTable) -> int:
    """Words per row of all of ``table``'s columns."""
    return sum(int(np.prod(v.shape[1:], dtype=np.int64)) * v.dtype.itemsize // 8 or 1
               for v in table.cols.values())
