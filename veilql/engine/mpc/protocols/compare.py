"""Secure comparison: most significant bit, LT/LE/GT/GE, equality, mux.

``lt(x, y) = msb(x - y)`` in two's complement, as in ABY3 (Mohassel-Rindal CCS'18,
Sec. 5.3): correct whenever ``x - y`` does not overflow a signed 64-bit integer, e.g.
for ``|x|, |y| < 2^62`` (VeilQL's fixed-point encoder refuses larger magnitudes).

MSB only needs the carry into bit 63 of ``u + v`` (see ``split.py``): the generate of
bits 0..62, computed by a binary reduction tree of (generate, propagate) pairs
(the carry-lookahead combine of Brent-Kung / Sklansky, without the prefix outputs).
Words are permuted by 6-bit index reversal first (``split.index_bitrev``) so that every
tree level pairs the low half of a word with its high half; each level then halves the
word size (uint32, uint16, uint8), so later rounds send fewer bytes; levels narrower than
a byte travel bit-packed (``boolean.finish``: 4 bits at h = 2, the result bit 8 per byte).
Rounds: 2 (first level, ``split.cross_round``) + 5 AND levels = 7; 50.875 bytes sent per
comparison over all parties (12 + 8 + 8 + 3 x (4 + 2 + 1 + 1/2 + 1/8)).

Equality tests ``x - y == 0`` as an AND tree over the 64 bits of ``~(u ^ -v)``: 7 rounds,
31.625 bytes (20 + 3 x (2 + 1 + 1/2 + 1/4 + 1/8)). Results of both are uint8 shares with
zero high bits in every component.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from veilql.engine.mpc.protocols import arith, boolean, convert, split
from veilql.engine.mpc.shares import AShare, BShare, ring_sub
from veilql.errors import UsageError

if TYPE_CHECKING:
    from veilql.engine.mpc.runtime import Runtime

_U32 = np.dtype(np.uint32)
_DTYPE_FOR_BITS = {32: np.dtype(np.uint32), 16: np.dtype(np.uint16), 8: np.dtype(np.uint8),
                   4: np.dtype(np.uint8), 2: np.dtype(np.uint8), 1: np.dtype(np.uint8)}


def _carry_level(rt: Runtime, tag: str, g: BShare, p: BShare, h: int) -> tuple[BShare, BShare]:
    """Combine adjacent groups: low ``h`` bits are the low groups, high ``h`` bits the high.

    G' = G_hi ^ P_hi & G_lo and P' = P_hi & P_lo, both ANDs in one word of 2h bits:
    left = (P_hi | P_hi), right = (P_lo | G_lo). Components carry no bits above 2h.
    """
    dt = g.dtype
    sh = dt.type(h)
    lo_mask = dt.type((1 << h) - 1)
    hi_mask = dt.type(((1 << (2 * h)) - 1) ^ ((1 << h) - 1))
    exact = dt.itemsize * 8 == 2 * h  # shifting left drops the high half by itself

    def operands(gc: np.ndarray, pc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        left = pc >> sh
        left |= pc & hi_mask
        right = pc << sh
        if not exact:
            right &= hi_mask
        right |= gc & lo_mask
        return left, right

    la, ra = operands(g.a, p.a)
    lb, rb = operands(g.b, p.b)
    rb ^= ra
    z = la & rb
    lb &= ra
    z ^= lb
    z ^= g.a >> sh
    out = boolean.finish(rt, tag, z, 2 * h)  # narrower than a byte at h = 2: packed
    nd = _DTYPE_FOR_BITS[h]
    if nd.itemsize < dt.itemsize:  # the narrowing cast keeps exactly the low h bits
        return out.astype(nd), (out >> h).astype(nd)
    return out & lo_mask, out >> h


def msb(rt: Runtime, x: AShare) -> BShare:
    """The sign bit of every word of ``x`` as uint8 bit shares (7 rounds)."""
    return _msb_of_split(rt, split.split_value(rt, x), x.shape)


def _msb_of_split(rt: Runtime, val: np.ndarray, shape: tuple[int, ...]) -> BShare:
    """MSB of ``u + v`` from this party's ``val`` (``u`` at party 0, ``v`` at 1 and 2)."""
    tag = rt.tag("msb")
    n = val.size
    top = (val >> np.uint64(63)).astype(np.uint8)
    # Carry into bit 63 = generate of bits 0..62 = generate of all 64 bits of (val << 1).
    w = split.index_bitrev(val << np.uint64(1), inplace=True)
    halves = w.view(_U32).reshape(n, 2)  # little-endian: column 0 low half, 1 high half
    alpha = None
    f = None
    if rt.me == 0:
        alpha = np.empty((3, n), dtype=_U32)
        alpha[0] = halves[:, 1]
        alpha[1] = halves[:, 0]
        np.bitwise_and(alpha[0], alpha[1], out=alpha[2])
    else:
        hi = np.ascontiguousarray(halves[:, 1])
        lo = np.ascontiguousarray(halves[:, 0])
        vhl = hi & lo

        def f(a: np.ndarray, public: bool) -> np.ndarray:
            out = np.empty((2, n), dtype=_U32)
            tmp = np.empty(n, dtype=_U32)
            g, p = out[0], out[1]
            np.bitwise_and(a[0], hi, out=g)
            g ^= np.bitwise_and(a[2], lo, out=tmp)
            g ^= np.bitwise_and(a[1], vhl, out=tmp)
            np.bitwise_and(a[0], lo, out=p)
            p ^= np.bitwise_and(a[1], hi, out=tmp)
            p ^= a[2]
            if public:
                p ^= vhl
            return out

    gp = split.cross_round(rt, tag + "/l1", alpha, (3, n), (2, n), _U32, f)
    # msb = top(u) ^ top(v) ^ carry: party 0 folds the top bit of u, party 1 that of v.
    fold = top if rt.me in (0, 1) else None
    return carry_tree(rt, tag, gp[0], gp[1], fold).reshape(shape)


def carry_tree(rt: Runtime, tag: str, g: BShare, p: BShare,
               fold: np.ndarray | None = None) -> BShare:
    """The generate of all groups of ``(g, p)`` words: the carry out of their sum.

    ``g`` and ``p`` hold one (generate, propagate) pair per bit position of a word of
    2^j bits (uint64 down to uint8), laid out as after ``split.index_bitrev``: at every
    level the low half of the word holds the lower groups, the high half the higher
    ones. Levels ``h = 2^(j-1), ..., 2`` combine halves with ``_carry_level`` (one AND
    round each, the word halving each time); the last round forms only
    ``G = G_hi ^ P_hi & G_lo``. ``fold`` (uint8, one party only) is XORed into that
    party's 3-out-of-3 share of the last round, to add party-local bits for free.
    Returns uint8 bit shares (bit 0) of shape ``g.shape``; rounds: j.
    """
    h = g.dtype.itemsize * 4
    while h >= 2:
        g, p = _carry_level(rt, f"{tag}/h{h}", g, p, h)
        h //= 2
    z = boolean.and_local(p >> 1, g & 1)
    z ^= g.a >> np.uint8(1)
    if fold is not None:
        z ^= fold
    return boolean.finish(rt, tag + "/h1", z, 1)


def _split_diff(rt: Runtime, x: Any, y: Any) -> tuple[np.ndarray, tuple[int, ...]]:
    """This party's split value of ``x - y`` without forming the difference's shares."""
    if isinstance(x, AShare) and isinstance(y, AShare):
        if x.shape != y.shape:
            raise UsageError(f"comparing shapes {x.shape} and {y.shape}",
                             "compare arrays of equal shape")
        if rt.me == 0:
            val = x.a - y.a
            val += x.b
            val -= y.b
        elif rt.me == 1:
            val = x.b - y.b
        else:
            val = x.a - y.a
        return val.ravel(), x.shape
    d = _as_share_diff(rt, x, y)
    return split.split_value(rt, d), d.shape


def _as_share_diff(rt: Runtime, x: Any, y: Any) -> AShare:
    if isinstance(x, AShare):
        return x - y
    if isinstance(y, AShare):
        return (-y) + x
    raise TypeError("compare at least one AShare; compare public values in the clear")


def lt(rt: Runtime, x: Any, y: Any) -> BShare:
    """Bit shares of ``x < y`` (signed; see the module doc for the range)."""
    val, shape = _split_diff(rt, x, y)
    return _msb_of_split(rt, val, shape)


def eq(rt: Runtime, x: Any, y: Any) -> BShare:
    """Bit shares of ``x == y`` (exact over Z_2^64, 7 rounds)."""
    val, shape = _split_diff(rt, x, y)
    tag = rt.tag("eq")
    n = val.size
    # d == 0  iff  u == -v  iff  every bit of ~(u ^ -v) is 1.
    w = ~val if rt.me == 0 else -val
    lo = w.astype(_U32)
    hi = (w >> np.uint64(32)).astype(_U32)
    alpha = None
    f = None
    if rt.me == 0:
        alpha = np.empty((3, n), dtype=_U32)
        alpha[0] = hi
        alpha[1] = lo
        np.bitwise_and(hi, lo, out=alpha[2])
    else:
        whl = hi & lo

        def f(a: np.ndarray, public: bool) -> np.ndarray:
            # (u_h ^ w_h)(u_l ^ w_l) with u = ~val at party 0
            out = a[0] & lo
            out ^= a[1] & hi
            out ^= a[2]
            if public:
                out ^= whl
            return out

    e = split.cross_round(rt, tag + "/l1", alpha, (3, n), (n,), _U32, f)
    for h in (16, 8, 4, 2, 1):
        dt = _DTYPE_FOR_BITS[h]
        m = (1 << h) - 1
        lo_s, hi_s = (e & m).astype(dt), (e >> h).astype(dt)
        e = boolean.finish(rt, f"{tag}/h{h}", boolean.and_local(lo_s, hi_s), h)
    return e.reshape(shape)


def mux(rt: Runtime, bit: BShare | AShare, a: Any, b: Any) -> AShare:
    """``b + bit * (a - b)``: ``a`` where the bit is 1, else ``b``."""
    c = convert.b2a_bit(rt, bit) if isinstance(bit, BShare) else bit
    if isinstance(a, AShare) or isinstance(b, AShare):
        diff = a - b if isinstance(a, AShare) else (-b) + a
        return arith.mul(rt, c, diff) + b
    return c * ring_sub(a, b) + b
