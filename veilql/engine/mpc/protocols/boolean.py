"""AND of replicated XOR shares: the boolean twin of Araki et al.'s multiplication.

z_i = x_i y_i ^ x_i y_{i+1} ^ x_{i+1} y_i ^ alpha_i is a 3-out-of-3 sharing of x & y
(alpha an XOR zero-sharing from the pairwise seeds); one resharing round makes it
replicated again (Araki et al. CCS'16, Sec. 2; ABY3 Sec. 5.1).
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


def finish(rt: Runtime, tag: str, z: np.ndarray) -> BShare:
    """Mask a 3-out-of-3 share with a fresh XOR zero-sharing and reshare it (one round)."""
    z = rt.mask_zero_b(tag, z)
    return BShare(rt.me, z, rt.reshare_raw(tag, z))


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
