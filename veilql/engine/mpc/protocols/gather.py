"""Gather rows at positions that two parties know and the third does not.

``gather(rt, columns, idx, pair)``: the output row ``r`` of every column is input row
``idx[r]`` (indices may repeat or skip rows: an extended permutation). ``idx`` is known to
the two parties of ``pair`` only; the third party (the *outsider*) learns nothing, not
even which rows were fetched. It is one pass of the resharing shuffle (``shuffle.py``,
Laur-Willemson-Zhang ISC'11, Araki et al. CCS'21) with the pair's private permutation
replaced by ``idx``: with ``(a, b) = (k, k+1)`` the pair and ``c = k+2`` the outsider,

* ``a`` holds ``y_a = x_a + x_{a+1}`` and ``b`` holds ``y_b = x_{a+2}``, a 2-out-of-2
  sharing of ``x``; both gather ``y[idx]``;
* the new components ``x'_a`` (seed ``s_a``, known to c and a) and ``x'_{a+2}`` (seed
  ``s_{a+2}``, known to b and c) are keystream; ``a`` sends ``y_a[idx] - x'_a`` to ``b``
  and ``b`` sends ``y_b[idx] - x'_{a+2}`` to ``a``; their sum is ``x'_{a+1}``.

Leakage: ``b``'s message is masked by ``x'_a``, which it lacks, and ``a``'s by ``x'_{a+2}``,
which it lacks, so each is uniform; the outsider receives nothing. The output is a fresh
replicated sharing. What the pair learns is ``idx`` itself, which it held already.

Cost: one round; each of the two pair parties sends ``len(idx)`` words per column (8 bytes
per word, all columns in one message); the outsider sends nothing and only draws keystream.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from veilql.engine.mpc.shares import AShare, BShare
from veilql.errors import ProtocolError, UsageError

if TYPE_CHECKING:
    from veilql.engine.mpc.runtime import Runtime

Column = AShare | BShare


def pair_roles(pair: tuple[int, int]) -> tuple[int, int, int]:
    """``(a, b, c)`` for a pair of party indices: ``b = a + 1`` (mod 3), ``c`` the outsider.

    >>> pair_roles((2, 0)), pair_roles((0, 2)), pair_roles((1, 2))
    ((2, 0, 1), (2, 0, 1), (1, 2, 0))
    """
    i, j = pair
    if i == j or not {i, j} <= {0, 1, 2}:
        raise UsageError(f"a gather needs two distinct compute parties, got {pair}",
                         "name two of the three compute parties")
    a = i if (i + 1) % 3 == j else j
    return a, (a + 1) % 3, (a + 2) % 3


def gather(
    rt: Runtime, columns: Sequence[Column], idx: np.ndarray | None, pair: tuple[int, int],
    count: int,
) -> list[Column]:
    """Rows ``idx`` (``count`` of them) of every column; ``idx`` is passed by the pair only.

    Columns share their first axis; the outsider passes ``idx=None``.
    """
    cols = list(columns)
    a, b, c = pair_roles(pair)
    tag = rt.tag("gather")
    rt.rounds += 1
    if not cols:
        return []
    n = len(cols[0])
    if any(col.shape[:1] != (n,) for col in cols):
        raise UsageError("gather needs columns of equal length", "gather one table's columns")
    assert rt.seeds is not None
    me = rt.me
    shapes = [(count, *col.shape[1:]) for col in cols]
    if me == c:  # x'_a from s_a (next seed), x'_{a+2} from s_{a+2} (prev seed)
        return [type(col)(me, rt.seeds.prev.array("gather", f"{tag}/{i}", shp, col.dtype),
                          rt.seeds.next.array("gather", f"{tag}/{i}", shp, col.dtype))
                for i, (col, shp) in enumerate(zip(cols, shapes, strict=True))]
    if idx is None or idx.shape != (count,):
        raise UsageError(f"the gathering pair passes {count} indices",
                         "pass the same indices at both parties of the pair")
    if count and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise ProtocolError(f"gather indices out of range for {n} rows")
    mine: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    for i, (col, shp) in enumerate(zip(cols, shapes, strict=True)):
        arith = isinstance(col, AShare)
        if me == a:
            y = (col.a[idx] + col.b[idx]) if arith else (col.a[idx] ^ col.b[idx])
            mask = rt.seeds.prev.array("gather", f"{tag}/{i}", shp, col.dtype)
        else:
            y = col.b[idx]
            mask = rt.seeds.next.array("gather", f"{tag}/{i}", shp, col.dtype)
        if arith:
            y -= mask
        else:
            y ^= mask
        mine.append(y)
        masks.append(mask)
    other = b if me == a else a
    buf = _pack(mine)
    rt.send(other, tag, buf)
    got = _unpack(rt.recv(other, tag, np.uint8, buf.size), mine)
    out: list[Column] = []
    for col, m, g, mask in zip(cols, mine, got, masks, strict=True):
        mid = m + g if isinstance(col, AShare) else m ^ g  # x'_{a+1}
        out.append(type(col)(me, mask, mid) if me == a else type(col)(me, mid, mask))
    return out


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
