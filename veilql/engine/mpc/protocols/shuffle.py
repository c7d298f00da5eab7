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
knows the composed permutation. One round (one message each way) per pass, all
columns of the table in that message, so every column is permuted identically.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

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


def shuffle(rt: Runtime, columns: Sequence[Column]) -> list[Column]:
    """Apply one secret uniformly random row permutation to all ``columns`` (3 rounds)."""
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
    tag = rt.tag("shuffle")
    for k in range(3):
        cols = _pass(rt, f"{tag}/p{k}", cols, k, n)
    return cols


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
    perm = seed_pair.permutation("perm", tag, n)
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
