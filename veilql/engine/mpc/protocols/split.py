"""The first level of carry and equality circuits, computed from a two-way split.

Every arithmetic sharing ``x = x_0 + x_1 + x_2`` is also ``x = u + v`` with
``u = x_0 + x_1`` known to party 0 and ``v = x_2`` known to parties 1 and 2; this is the
starting point of ABY3's bit decomposition (Mohassel-Rindal CCS'18, Sec. 5.3), which
shares ``u`` in boolean form and then runs a parallel-prefix adder.

We save one round on the first adder level. A bit function of a pair of positions is
an XOR of products ``alpha_k(u) & beta_k(v)``; for a pair ``(h, l)`` the generate and
propagate are

    G = u_h v_h ^ (u_h u_l) v_l ^ u_l (v_h v_l)
    P = u_h u_l ^ u_h v_l ^ u_l v_h ^ v_h v_l.

Party 0 sends ``m = alpha ^ r`` to party 1, where ``r`` is drawn from the seed party 0
shares with party 2. Then ``f(m, beta)`` at party 1 and ``f(r, beta)`` at party 2 are
an XOR sharing of ``f(alpha, beta)`` (``f`` is linear in alpha). Both mask their part
with a component of the new replicated sharing (``c_1`` from the 0-1 seed, ``c_0``
from the 0-2 seed) and exchange it, so both learn ``c_2``; party 0 draws ``c_0, c_1``
itself. Two message hops replace ABY3's "share u" round plus one AND round.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from veilql.engine.mpc.shares import AShare, BShare

if TYPE_CHECKING:
    from veilql.engine.mpc.runtime import Runtime


def _delta_swaps() -> tuple[tuple[np.uint64, np.uint64], ...]:
    """(shift, mask) of the three delta swaps exchanging index bits (0,5), (1,4), (2,3)."""
    out = []
    for i, j in ((0, 5), (1, 4), (2, 3)):
        mask = sum(1 << s for s in range(64) if (s >> i) & 1 and not (s >> j) & 1)
        out.append((np.uint64((1 << j) - (1 << i)), np.uint64(mask)))
    return tuple(out)


_SWAPS = _delta_swaps()


def index_bitrev(x: np.ndarray, *, inplace: bool = False) -> np.ndarray:
    """Move bit ``s`` of every uint64 word to position ``rev6(s)`` (6-bit index reversal).

    After this permutation, positions ``p`` and ``p + 32`` hold significances ``2k`` and
    ``2k + 1``, and recursively for every half, so a carry tree can always pair the low
    half of a word with its high half. Three delta swaps (Hacker's Delight, 7-1).
    With ``inplace`` a uint64 array is permuted in place (saves a copy of a temporary).

    >>> int(index_bitrev(np.array([1 << 1], dtype=np.uint64))[0]) == 1 << 32
    True
    >>> int(index_bitrev(np.array([1 << 3], dtype=np.uint64))[0]) == 1 << 48
    True
    """
    if not (inplace and x.dtype == np.uint64 and x.flags.writeable):
        x = np.array(x, dtype=np.uint64)
    t = np.empty_like(x)
    for d, mask in _SWAPS:
        np.right_shift(x, d, out=t)
        t ^= x
        t &= mask
        x ^= t
        t <<= d
        x ^= t
    return x


def split_value(rt: Runtime, x: AShare) -> np.ndarray:
    """``u = x_0 + x_1`` at party 0, ``v = x_2`` at parties 1 and 2 (flattened)."""
    if rt.me == 0:
        return (x.a + x.b).ravel()
    return (x.b if rt.me == 1 else x.a).ravel()


def cross_round(
    rt: Runtime, tag: str, alpha: np.ndarray | None, alpha_shape: tuple[int, ...],
    out_shape: tuple[int, ...], dtype: Any,
    f: Callable[[np.ndarray, bool], np.ndarray] | None,
) -> BShare:
    """Replicated XOR sharing of ``f(alpha, beta)`` (two message hops, see module doc).

    ``alpha`` (party 0 only) has ``alpha_shape``; ``f(a, public)`` (parties 1 and 2)
    closes over beta, must be XOR-linear in ``a`` and adds the pure-beta terms when
    ``public`` is true (party 1 only).
    """
    assert rt.seeds is not None
    dt = np.dtype(dtype)
    rt.rounds += 2
    if rt.me == 0:
        assert alpha is not None
        # alpha ^ r with r the ("mask", tag) keystream of s_0, in one pass
        rt.send(1, tag + "/m", rt.seeds.prev.xor("mask", tag, alpha.astype(dt, copy=False)))
        c0 = rt.seeds.prev.array("rep", tag, out_shape, dt)
        c1 = rt.seeds.next.array("rep", tag, out_shape, dt)
        return BShare(0, c0, c1)
    assert f is not None
    if rt.me == 2:
        r = rt.seeds.next.array("mask", tag, alpha_shape, dt)
        c0 = rt.seeds.next.array("rep", tag, out_shape, dt)
        t2 = f(r, False)
        t2 ^= c0
        rt.send(1, tag + "/t", t2)
        t1 = rt.recv(1, tag + "/t", dt, out_shape)
        return BShare(2, t1 ^ t2, c0)
    m = rt.recv(0, tag + "/m", dt, alpha_shape)
    c1 = rt.seeds.prev.array("rep", tag, out_shape, dt)
    t1 = f(m, True)
    t1 ^= c1
    rt.send(2, tag + "/t", t1)
    t2 = rt.recv(2, tag + "/t", dt, out_shape)
    return BShare(1, c1, t1 ^ t2)
