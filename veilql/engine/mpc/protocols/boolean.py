"""AND of replicated XOR shares: the boolean twin of Araki et al.'s multiplication.

z_i = x_i y_i ^ x_i y_{i+1} ^ x_{i+1} y_i ^ alpha_i is a 3-out-of-3 sharing of x & y
(alpha an XOR zero-sharing from the pairwise seeds); one resharing round makes it
replicated again (Araki et al. CCS'16, Sec. 2; ABY3 Sec. 5.1). Shares of values narrower
than their byte (the last levels of the comparison trees) travel bit-packed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from veilql.engine.mpc.shares import BShare
from veilql.errors import UsageError

if TYPE_CHECKING:
    from veilql.engine.mpc.runtime import Runtime


def and_local(x: BShare, y: BShare) -> np.ndarray:
    """This party's 3-out-of-3 share of ``x & y`` before masking (no communication)."""
    z = x.a & (y.a ^ y.b)
    z ^= x.b & y.a
    return z


def finish(rt: Runtime, tag: str, z: np.ndarray, bits: int | None = None) -> BShare:
    """Mask a 3-out-of-3 share with a fresh XOR zero-sharing and reshare it (one round).

    ``bits`` (1, 2 or 4, for a uint8 ``z`` whose value lives in its low ``bits`` bits): the
    masked share is cut to those bits and travels packed, ``8 // bits`` elements per byte.
    Cutting is safe at every party: the zero-sharing's high bits XOR to zero over the
    three parties, so the cut components still share the same value (with zero high bits).
    """
    z = rt.mask_zero_b(tag, z)
    if bits is None or bits >= z.dtype.itemsize * 8:
        return BShare(rt.me, z, rt.reshare_raw(tag, z))
    z &= z.dtype.type((1 << bits) - 1)
    rt.send(rt.prev, tag, pack_low(z, bits))
    rt.rounds += 1
    got = rt.recv(rt.next, tag, np.uint8, packed_size(z.size, bits))
    return BShare(rt.me, z, unpack_low(got, bits, z.shape))


def packed_size(n: int, bits: int) -> int:
    """Bytes that ``n`` values of ``bits`` bits take packed (``8 // bits`` per byte)."""
    per = 8 // bits
    return -(-n // per)


def pack_low(x: np.ndarray, bits: int) -> np.ndarray:
    """The low ``bits`` bits (1, 2 or 4) of every uint8 of ``x`` (higher bits zero), packed
    ``8 // bits`` per byte, first element in the lowest bits.

    >>> pack_low(np.array([1, 0, 1, 1, 0, 0, 0, 0, 1], dtype=np.uint8), 1).tolist()
    [13, 1]
    >>> pack_low(np.array([3, 15, 7], dtype=np.uint8), 4).tolist()
    [243, 7]
    """
    flat = x.reshape(-1)
    if bits == 1:
        return np.packbits(flat, bitorder="little")
    per = 8 // bits
    buf = np.zeros(packed_size(flat.size, bits) * per, np.uint8)
    buf[:flat.size] = flat
    buf = buf.reshape(-1, per)
    out = buf[:, 0].copy()
    for i in range(1, per):
        out |= buf[:, i] << np.uint8(i * bits)
    return out


def unpack_low(data: np.ndarray, bits: int, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of ``pack_low``: uint8 values of ``shape``.

    >>> unpack_low(pack_low(np.array([2, 1, 3], dtype=np.uint8), 2), 2, (3,)).tolist()
    [2, 1, 3]
    """
    n = int(np.prod(shape, dtype=np.int64))
    if bits == 1:
        return np.unpackbits(data, count=n, bitorder="little").reshape(shape)
    per = 8 // bits
    out = np.empty((len(data), per), np.uint8)
    mask = np.uint8((1 << bits) - 1)
    for i in range(per):
        np.bitwise_and(data >> np.uint8(i * bits), mask, out=out[:, i])
    return out.reshape(-1)[:n].reshape(shape)


def and_(rt: Runtime, x: Any, y: Any) -> Any:
    """AND of two BShares, a BShare and a public constant, or two equal lists (one round)."""
    if isinstance(x, list | tuple):
        if len(x) != len(y) or not x:
            raise UsageError("and_ of lists needs two non-empty lists of equal length",
                             "pair every operand")
        dt = x[0].dtype
        for u, v in zip(x, y, strict=True):
            if u.shape != v.shape or u.dtype != dt or v.dtype != dt:
                raise UsageError("and_ of lists needs equal shapes and one dtype",
                                 "cast with BShare.astype first")
        shapes = [u.shape for u in x]
        z = np.concatenate([and_local(u, v).ravel() for u, v in zip(x, y, strict=True)])
        out = finish(rt, rt.tag("and"), z)
        res, off = [], 0
        for shp in shapes:
            n = int(np.prod(shp, dtype=np.int64))
            res.append(out[off:off + n].reshape(shp))
            off += n
        return res
    if not isinstance(y, BShare):
        return x & y
    if not isinstance(x, BShare):
        return y & x
    if x.shape != y.shape or x.dtype != y.dtype:
        raise UsageError(f"and_ of {x.shape}/{x.dtype} and {y.shape}/{y.dtype}",
                         "use equal shapes and dtypes (BShare.astype)")
    return finish(rt, rt.tag("and"), and_local(x, y))
