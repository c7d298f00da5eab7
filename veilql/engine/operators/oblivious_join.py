"""The oblivious join (``join_reveal = "nothing"``): no party learns any size but the bounds.

Route: **pad, cuckoo-hash, fetch on shares** (the 3PC join of Mohassel, Rindal and Rosulek,
"Fast database joins and PSI for secret shared data", CCS 2020, with the tags computed by
the two key parties in the clear instead of an OPRF inside MPC).

* The *hub* (the plan's first party) pads its rows with dummies up to its declared bound
  ``left_rows`` (``max_units``). Each other party ``R`` places its real rows, by its tags,
  into a cuckoo table of ``bins`` bins (a public function of its declared bound): three
  parts, hash function ``k`` chooses a bin in part ``k``, every row sits in one of its
  three bins, empty bins hold zeros. Both layouts are built in the clear by their owner.
* Tags are AES-PRF outputs under a key only the hub and ``R`` share (``tags.py``), cut to
  62 bits; dummy rows of the hub get ``01`` in the top two bits and empty bins ``10``, so
  only real tags can ever be equal. Bins are a public hash of the tag.
* The hub secret-shares, per stage, its tags and its rows' three bins; the bins are
  opened to the two *fetchers* (the compute parties other than ``R``), who gather the
  three candidate bins of every hub row on shares (``mpc/protocols/gather.py``: one
  resharing pass; ``R`` receives nothing). Then on shares: ``e_k = EQ(tag, tag of bin k)``,
  and every payload column of ``R`` is ``sum_k e_k * payload_k`` (one inner product), which
  is ``R``'s row for that unit when it has one, else 0. Dummy hub rows have factors 0.

Leakage. Array lengths are ``left_rows`` (the hub's bound) and ``bins`` (``R``'s), both
public. A fetcher receives the bins of every hub row: a public hash of pseudorandom tags
under a key it does not hold, and uniform for dummy rows, so it sees uniformly random bin
triples whatever the data; it does not know ``R``'s layout, which never leaves ``R``. ``R``
is the outsider of the gather and receives nothing in it; the tag key's other holder, the
hub, learns nothing from being a fetcher (it knows its own bins). Every other message is a
masked share (EQ, B2A, products). So the transcript of every party has the same lengths,
tags and distribution whichever people are in which table, as long as each party's count
stays within its bound (a party over its bound stops the query, after the charge, with a
generic error). A three-party join runs one stage per non-hub party against the hub's
rows (every join is on the same privacy unit), so no pairwise intersection is revealed
either. A cuckoo insertion that does not finish (probability vanishing in the table size
at this load) stops the query the same way.

Cost per stage, with ``n = left_rows``, ``m = bins`` and ``W`` the payload words per row of
``R``: ``R`` shares ``m (W + 1)`` words; the hub shares ``4 n`` (tag, three bins); opening
the bins to two fetchers: ``6 n`` words; the gather: each fetcher sends ``3 n (W + 1)``
words; EQ of ``3 n`` words (7 rounds, ~100 bytes per comparison); B2A of ``3 n`` bits (2
rounds, 32 bytes each); the inner product: ``n W`` words per party (one round per chunk of
rows). Rounds: about 14 per stage plus two per extra chunk, whatever ``n``.
"""

from __future__ import annotations

import os

import numpy as np

from veilql.engine.mpc.runtime import Runtime
from veilql.engine.mpc.shares import AShare
from veilql.engine.operators import factors as fac
from veilql.engine.operators.join import SharedTable
from veilql.engine.operators.local import PartyRows
from veilql.engine.operators.tags import new_key, tags
from veilql.engine.plan.nodes import JoinStage, Plan
from veilql.engine.transport.base import Transport
from veilql.errors import ProtocolError

_U64 = np.uint64
_TAG_BITS = np.uint64((1 << 62) - 1)
_DUMMY = np.uint64(1 << 62)  # top bits 01: a hub row that is padding
_EMPTY = np.uint64(2 << 62)  # top bits 10: an empty cuckoo bin
_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9),
        np.uint64(0x94D049BB133111EB))
CHUNK_WORDS = 1 << 22  # candidate words gathered at once per party (bounds the memory)
PLACE_ROUNDS = 10_000  # parallel cuckoo insertion rounds before giving up


def is_oblivious(plan: Plan) -> bool:
    """Whether ``plan`` joins obliviously (``join_reveal = "nothing"`` somewhere)."""
    return any(stage.mode == "oblivious" for stage in plan.joins)


def real_tags(t: np.ndarray) -> np.ndarray:
    """Tags of real units: the PRF output cut to 62 bits (top bits ``00``).

    >>> int(real_tags(np.array([2**64 - 1], dtype=np.uint64))[0]) == 2**62 - 1
    True
    """
    return np.asarray(t, dtype=_U64) & _TAG_BITS


def random_tags(count: int, flag: np.uint64) -> np.ndarray:
    """``count`` uniformly random 62-bit tags with the top bits ``flag`` (dummy or empty)."""
    words = np.frombuffer(os.urandom(8 * count), dtype=_U64) if count else np.empty(0, _U64)
    return (words & _TAG_BITS) | flag


def _mix(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (a bijection of 64-bit words that spreads every bit)."""
    z = x * _MIX[0]
    z ^= z >> _U64(30)
    z *= _MIX[1]
    z ^= z >> _U64(27)
    z *= _MIX[2]
    z ^= z >> _U64(31)
    return z


def bins_of(t: np.ndarray, bins: int) -> np.ndarray:
    """The three candidate bins of each tag, shape (n, 3): bin ``k`` lies in part ``k``.

    >>> b = bins_of(np.arange(5, dtype=np.uint64), 9)
    >>> b.shape, bool(((b // 3) == np.arange(3)).all())
    ((5, 3), True)
    """
    third = bins // 3
    t = np.asarray(t, dtype=_U64)
    out = np.empty((len(t), 3), dtype=np.int64)
    for k in range(3):
        h = _mix(t ^ _U64(0x5851F42D4C957F2D * (k + 1) % 2**64)) >> _U64(32)
        out[:, k] = (h * _U64(third) >> _U64(32)).astype(np.int64) + k * third
    return out


def place(bins: np.ndarray, size: int) -> np.ndarray:
    """Cuckoo placement: for each of ``size`` bins the row it holds, or -1 (local, clear).

    Parallel insertion: every unplaced row tries its current choice; one row per bin wins
    and evicts the bin's occupant; losers and evicted rows move to one of their other two
    bins at random. ProtocolError when rows remain after ``PLACE_ROUNDS`` rounds.

    >>> b = np.array([[0, 3, 6], [0, 3, 6], [0, 3, 6]])
    >>> t = place(b, 9)
    >>> sorted(t[t >= 0].tolist()), bool((t[[1, 2, 4, 5, 7, 8]] == -1).all())
    ([0, 1, 2], True)
    """
    n = len(bins)
    table = np.full(size, -1, dtype=np.int64)
    if n == 0:
        return table
    # Which bin a row tries next is the owner's private choice, never opened: any
    # generator would do; this one is seeded from the OS so layouts differ per query.
    rng = np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
    choice = np.zeros(n, dtype=np.int64)
    pending = np.arange(n, dtype=np.int64)
    for _ in range(PLACE_ROUNDS):
        pos = bins[pending, choice[pending]]
        uniq, first = np.unique(pos, return_index=True)
        winners = pending[first]
        evicted = table[uniq]
        evicted = evicted[evicted >= 0]
        table[uniq] = winners
        lost = np.ones(len(pending), dtype=bool)
        lost[first] = False
        pending = np.concatenate([pending[lost], evicted])
        if not len(pending):
            return table
        choice[pending] = (choice[pending] + rng.integers(1, 3, len(pending))) % 3
    raise ProtocolError("the cuckoo table could not place every row (a vanishingly rare "
                        "event); run the query again")


def _pad(x: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows, *x.shape[1:]), dtype=x.dtype)
    out[:len(x)] = x
    return out


def _lay_out(x: np.ndarray, table: np.ndarray) -> np.ndarray:
    out = np.zeros((len(table), *x.shape[1:]), dtype=x.dtype)
    filled = table >= 0
    out[filled] = x[table[filled]]
    return out


def _over_bound(party: str, bound: int) -> ProtocolError:
    return ProtocolError(f"{party} holds more people in the tables of this query than its "
                         f"declared max_units ({bound})")


def local_columns(plan: Plan, me: str, rows: PartyRows, transport: Transport,
                  qid: str) -> dict[str, np.ndarray]:
    """This party's columns to share in an oblivious join: padded (the hub) or laid out in
    its cuckoo bins (any other party); tags, the hub's bins, factors, atoms and operands.

    The hub draws each stage's tag key and sends it to that stage's right party.
    """
    step = plan.step(me)
    chains, _ = fac.expand_terms(plan)
    payload = {"F": fac.build_factors(plan, me, rows, chains,
                                      slot_level=plan.on_shares)}
    for col in step.columns:
        if col.role in ("atom", "operand"):
            payload[col.name] = rows.cols[col.name] * rows.present
    n = rows.units
    hub = plan.parties[0]
    if me == hub:
        bound = plan.joins[0].left_rows
        if n > bound:
            raise _over_bound(me, bound)
        out = {name: _pad(x, bound) for name, x in payload.items()}
        for j, stage in enumerate(plan.joins):
            key = new_key()
            transport.send(stage.right, f"{qid}/tagkey{j}", key)
            t = np.concatenate([real_tags(tags(key, rows.keys)), random_tags(bound - n, _DUMMY)])
            out[f"tag{j}"] = t
            out[f"bins{j}"] = bins_of(t, stage.bins)
        return out
    j, stage = next((j, s) for j, s in enumerate(plan.joins) if s.right == me)
    key = transport.recv(hub, f"{qid}/tagkey{j}")
    if n > stage.right_units:
        raise _over_bound(me, stage.right_units)
    t = real_tags(tags(key, rows.keys))
    table = place(bins_of(t, stage.bins), stage.bins)
    out = {name: _lay_out(x, table) for name, x in payload.items()}
    laid = random_tags(stage.bins, _EMPTY)
    filled = table >= 0
    laid[filled] = t[table[filled]]
    out[f"tag{j}"] = laid
    return out


def bins_column(tag: str) -> str:
    """The hub's bins column that goes with its tag column ``tag``.

    >>> bins_column("bank.tag1")
    'bank.bins1'
    """
    party, name = tag.rsplit(".", 1)
    return f"{party}.bins{name[len('tag'):]}"


def oblivious_join_stage(
    rt: Runtime, stage: JoinStage, left: SharedTable, right: SharedTable, tag: str,
) -> SharedTable:
    """One oblivious stage: ``left`` keeps its rows, and gains ``right``'s payload columns
    (zero where the unit has no row at ``right``). ``tag`` names the tag column of both
    sides (``right`` is laid out in ``stage.bins`` cuckoo bins)."""
    if right.n != stage.bins or left.n != stage.left_rows:
        raise ProtocolError(f"oblivious join with {stage.right}: tables of {left.n} and "
                            f"{right.n} rows, the plan says {stage.left_rows} and {stage.bins}")
    pair = (rt.party_index(stage.fetchers[0]), rt.party_index(stage.fetchers[1]))
    bins_name = bins_column(tag)
    n = left.n
    opened = [rt.open_to(left.cols[bins_name], p) for p in pair]
    idx = next((o for o in opened if o is not None), None)
    if idx is not None:
        idx = idx.view(np.int64)
        third = stage.bins // 3
        if n and ((idx // max(third, 1)) != np.arange(3)).any():
            raise ProtocolError(f"bins of the oblivious join with {stage.right} are out of range")
    names = [k for k in right.cols if k != tag]
    # Which candidate bin holds the unit: EQ of the tags on shares, for all rows at once.
    cand = rt.gather([right.cols[tag]], None if idx is None else idx.ravel(), pair, 3 * n)
    mine = left.cols[tag]
    wide = AShare(rt.me, np.repeat(mine.a, 3), np.repeat(mine.b, 3))
    hit = rt.b2a_bit(rt.eq(wide, cand[0])).reshape(n, 3)
    widths = [int(np.prod(right.cols[k].shape[1:], dtype=np.int64)) for k in names]
    total = sum(widths)
    moved_a = np.empty((n, total), dtype=_U64)
    moved_b = np.empty((n, total), dtype=_U64)
    step = max(1, CHUNK_WORDS // max(3 * total, 1))
    for lo in range(0, n if total else 0, step):
        hi = min(n, lo + step)
        sub = None if idx is None else idx[lo:hi].ravel()
        got = rt.gather([right.cols[k] for k in names], sub, pair, 3 * (hi - lo))
        ya = np.concatenate([g.a.reshape(hi - lo, 3, -1) for g in got], axis=2)
        yb = np.concatenate([g.b.reshape(hi - lo, 3, -1) for g in got], axis=2)
        y = AShare(rt.me, np.ascontiguousarray(ya.transpose(0, 2, 1)),
                   np.ascontiguousarray(yb.transpose(0, 2, 1)))
        e = hit[lo:hi]
        x = AShare(rt.me, np.broadcast_to(e.a[:, None, :], y.shape),
                   np.broadcast_to(e.b[:, None, :], y.shape))
        z = rt.dot(x, y)
        moved_a[lo:hi], moved_b[lo:hi] = z.a, z.b
    cols = {k: v for k, v in left.cols.items() if k not in (tag, bins_name)}
    off = 0
    for k, w in zip(names, widths, strict=True):
        shape = (n, *right.cols[k].shape[1:])
        cols[k] = AShare(rt.me, moved_a[:, off:off + w].reshape(shape),
                         moved_b[:, off:off + w].reshape(shape))
        off += w
    return SharedTable(n, cols)
