"""Conversions between arithmetic and boolean shares.

A2B: the bit decomposition of ABY3 (Mohassel-Rindal CCS'18, Sec. 5.3): write
``x = u + v`` (``split.py``) and add the two in boolean form with a word-parallel
Kogge-Stone prefix adder (Kogge and Stone, IEEE Trans. Computers 1973). The first
prefix level comes from ``split.cross_round`` (2 hops), then shifts 2, 4, 8, 16, 32
take one AND round each: 7 rounds. The sum bits ``u ^ v ^ (carries << 1)`` are formed
inside the last round: party 0 folds ``u`` and party 1 folds ``v`` into their
3-out-of-3 shares before resharing.

B2A of bits: the bit is ``s ^ t`` with ``s = b_0 ^ b_1`` (party 0) and ``t = b_2``
(parties 1, 2), so its value is ``s + t - 2 s t``; the product of a value of party 0
with a value of parties 1, 2 is shared by masking ``s`` towards party 1, the same idea
as the cross terms of ``split.py`` and as ABY3's three-party bit injection (Sec. 5.4).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from veilql.engine.mpc.protocols import boolean, split
from veilql.engine.mpc.shares import AShare, BShare

if TYPE_CHECKING:
    from veilql.engine.mpc.runtime import Runtime

_U64 = np.dtype(np.uint64)
_ONE = np.uint64(1)


def a2b(rt: Runtime, x: AShare) -> BShare:
    """Boolean (XOR) sharing of the 64-bit words of ``x``: 7 rounds, 264 bytes per word sent."""
    tag = rt.tag("a2b")
    shape = x.shape
    val = split.split_value(rt, x)
    n = val.size
    alpha = None
    f = None
    if rt.me == 0:
        alpha = np.empty((2, n), dtype=_U64)
        alpha[0] = val
        np.bitwise_and(val, val << _ONE, out=alpha[1])
    else:
        v1 = val << _ONE
        vv1 = val & v1

        def f(a: np.ndarray, public: bool) -> np.ndarray:
            # Kogge-Stone level 1 on (u, v): G_i = g_i ^ p_i g_{i-1}, P_i = p_i p_{i-1}.
            a0s = a[0] << _ONE
            out = np.empty((2, n), dtype=_U64)
            g, p = out[0], out[1]
            np.bitwise_and(a[0], val, out=g)
            g ^= a[1] & v1
            g ^= a0s & vv1
            np.bitwise_and(a[0], v1, out=p)
            p ^= a0s & val
            p ^= a[1]
            if public:
                p ^= vv1
            return out

    gp = split.cross_round(rt, tag + "/l1", alpha, (2, n), (2, n), _U64, f)
    g, p = gp[0], gp[1]
    for s in (2, 4, 8, 16):
        left = BShare.stack([p, p])
        right = BShare.stack([g << s, p << s])
        z = boolean.and_local(left, right)
        z[0] ^= g.a
        out = boolean.finish(rt, f"{tag}/s{s}", z)
        g, p = out[0], out[1]
    z = boolean.and_local(p, g << 32)
    z ^= g.a
    z <<= _ONE  # carries into each bit
    if rt.me in (0, 1):  # fold u (party 0) and v (party 1): sum = u ^ v ^ carries
        z ^= val
    return boolean.finish(rt, f"{tag}/s32", z).reshape(shape)


def b2a_bit(rt: Runtime, b: BShare) -> AShare:
    """Arithmetic shares of bit 0 of every word of ``b`` (2 rounds, 3 words sent).

    Party 0 sends ``A = s - r`` to party 1 (``r`` from the 0-2 seed), so ``s t = A t +
    r t`` is split between parties 1 and 2, who both know ``t``. The new components
    ``c_0`` (0-2 seed) and ``c_1`` (0-1 seed) are keystream; ``c_2 = s + t - 2 s t - c_0
    - c_1`` is the sum of ``T_1 = A + t - 2 A t - c_1`` (party 1) and ``T_2 = r - 2 r t -
    c_0`` (party 2), which the two exchange. Party 1 sees ``A`` and ``T_2``, masked by
    ``r`` and ``c_0`` (independent streams it lacks), party 2 sees ``T_1``, masked by
    ``c_1``; party 0 receives nothing.
    """
    assert rt.seeds is not None
    tag = rt.tag("b2a")
    shape = b.shape
    n = int(np.prod(shape, dtype=np.int64))
    rt.rounds += 2
    if rt.me == 0:
        s = ((b.a ^ b.b) & 1).astype(_U64).ravel()
        r = rt.seeds.prev.array("mask", tag + "/r", n)
        c0 = rt.seeds.prev.array("rep", tag, n)
        c1 = rt.seeds.next.array("rep", tag, n)
        np.subtract(s, r, out=s)
        rt.send(1, tag + "/m", s)
        return AShare(0, c0.reshape(shape), c1.reshape(shape))
    if rt.me == 2:
        t = (b.a & 1).astype(_U64).ravel()
        r = rt.seeds.next.array("mask", tag + "/r", n)
        c0 = rt.seeds.next.array("rep", tag, n)
        t2 = r - ((r * t) << _ONE)
        t2 -= c0
        rt.send(1, tag + "/t", t2)
        t1 = rt.recv(1, tag + "/t", _U64, n)
        return AShare(2, (t1 + t2).reshape(shape), c0.reshape(shape))
    t = (b.b & 1).astype(_U64).ravel()
    c1 = rt.seeds.prev.array("rep", tag, n)
    m = rt.recv(0, tag + "/m", _U64, n)
    t1 = m + t
    t1 -= (m * t) << _ONE
    t1 -= c1
    rt.send(2, tag + "/t", t1)
    t2 = rt.recv(2, tag + "/t", _U64, n)
    return AShare(1, c1.reshape(shape), (t1 + t2).reshape(shape))
