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
    """Arithmetic shares of bit 0 of every word of ``b`` (2 rounds, 4 words sent).

    Party 0 sends ``A = s - r`` and ``B = s - c_0 - w`` to party 1 (r, w, c_0 from the
    0-2 seed), party 2 sends ``T_2 = w - 2 r t``; party 1 returns ``T_1 = B - c_1 + t -
    2 A t``. Then ``c_2 = T_1 + T_2`` and ``c_0 + c_1 + c_2 = s + t - 2 s t``.
    """
    assert rt.seeds is not None
    tag = rt.tag("b2a")
    shape = b.shape
    n = int(np.prod(shape, dtype=np.int64))
    rt.rounds += 2
    if rt.me == 0:
        s = ((b.a ^ b.b) & 1).astype(_U64).ravel()
        r = rt.seeds.prev.array("mask", tag + "/r", n)
        w = rt.seeds.prev.array("mask", tag + "/w", n)
        c0 = rt.seeds.prev.array("rep", tag, n)
        c1 = rt.seeds.next.array("rep", tag, n)
        msg = np.empty((2, n), dtype=_U64)
        np.subtract(s, r, out=msg[0])
        msg[1] = s - c0 - w
        rt.send(1, tag + "/m", msg)
        return AShare(0, c0.reshape(shape), c1.reshape(shape))
    if rt.me == 2:
        t = (b.a & 1).astype(_U64).ravel()
        r = rt.seeds.next.array("mask", tag + "/r", n)
        w = rt.seeds.next.array("mask", tag + "/w", n)
        c0 = rt.seeds.next.array("rep", tag, n)
        t2 = w - ((r * t) << _ONE)
        rt.send(1, tag + "/t", t2)
        t1 = rt.recv(1, tag + "/t", _U64, n)
        return AShare(2, (t1 + t2).reshape(shape), c0.reshape(shape))
    t = (b.b & 1).astype(_U64).ravel()
    c1 = rt.seeds.prev.array("rep", tag, n)
    msg = rt.recv(0, tag + "/m", _U64, (2, n))
    t1 = msg[1] - c1 + t - ((msg[0] * t) << _ONE)
    rt.send(2, tag + "/t", t1)
    t2 = rt.recv(2, tag + "/t", _U64, n)
    return AShare(1, c1.reshape(shape), (t1 + t2).reshape(shape))
