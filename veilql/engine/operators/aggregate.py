"""Secure aggregation: sum over joined rows of the product of the parties' factors.

Every party's factors (see ``factors.py``) arrive as shares of shape
(units, slots, aggregates, cells of that party). They are laid out on a joint grid
(units, slots of each party..., aggregates, cells of each party...), multiplied party by
party (one round each, the cross-party predicate being one more factor), and the last
product is an inner product over units and slots, which costs one word per cell rather
than one per row. COUNT(DISTINCT unit) under a cross-party predicate ORs its slot
combinations first (a OR b = a + b - ab), so a person counts at most once per cell.

Without a cross-party predicate (every slot axis 1) the joint grid is never built over
the widest party's cells: the other parties' factors are multiplied on their own grid, and
the last product is a matrix product over units, ``X^T Y`` (cells of the others x cells of
the widest party), computed locally from the shares' cross terms (as ``dot`` does for one
inner product) and reshared once; a GROUP BY of 32 public cells at one party and 3,000
private keys at another holds 32 + 3,000 words per unit, not 96,000. It costs what the
inner products cost (one round, one word per cell and aggregate).

Memory: the grid of a unit is as wide as the product of the (other) parties' slots and
cells times the aggregates, so ``secure_sum`` works on chunks of units of at most
``Runtime.chunk_words`` grid words each and adds the per-chunk sums (sums over units are
linear, and a unit's slot combinations stay in one chunk for the OR), one round of products
per chunk; a table that fits in one chunk takes exactly one pass as before.
"""

from __future__ import annotations

import numpy as np

from veilql.engine.mpc.runtime import Runtime
from veilql.engine.mpc.shares import AShare


def expand(x: AShare, axes_shape: tuple[int, ...], joint: tuple[int, ...]) -> AShare:
    """``x`` reshaped to ``axes_shape`` (singletons for missing axes), broadcast to ``joint``."""
    a = np.broadcast_to(x.a.reshape(axes_shape), joint)
    b = np.broadcast_to(x.b.reshape(axes_shape), joint)
    return AShare(x.party, np.ascontiguousarray(a), np.ascontiguousarray(b))


def layout(index: int, factor_shape: tuple[int, ...], k: int) -> tuple[int, ...]:
    """Where party ``index`` (of ``k``) puts its (units, slots, aggs, cells) axes on the grid."""
    n, s, a, c = factor_shape
    slots = [1] * k
    cells = [1] * k
    slots[index] = s
    cells[index] = c
    return (n, *slots, a, *cells)


def grid_width(factor_shapes: list[tuple[int, ...]], aggs: int | None = None) -> int:
    """Words of the joint grid per unit: every party's slots times aggregates times cells.

    >>> grid_width([(10, 3, 2, 5), (10, 1, 1, 4)])
    120
    """
    slots = int(np.prod([s[1] for s in factor_shapes], dtype=np.int64))
    cells = int(np.prod([s[3] for s in factor_shapes], dtype=np.int64))
    return slots * (aggs or max(s[2] for s in factor_shapes)) * cells


def secure_sum(
    rt: Runtime, factors: list[AShare], cross: AShare | None, distinct: np.ndarray,
) -> AShare:
    """Shares of every aggregate and cell, shape (aggregates, cells in party order).

    ``cross`` is 0/1 shares of shape (units, slots of each party...), or with one more
    axis of one predicate per chain (``predicate.per_chain_predicate``).
    ``distinct`` has one flag per aggregate (term chain); a party whose factor has one
    aggregate axis of length 1 (``build_factors(collapse=True)``) multiplies the same factor
    into every aggregate. Units are taken in chunks of at most ``rt.chunk_words`` grid
    words (see the module docstring); the result does not depend on the chunk size.
    """
    n = factors[0].shape[0]
    if cross is None and len(factors) > 1 and all(f.shape[1] == 1 for f in factors):
        return product_sum(rt, factors, len(distinct))
    rows = rt.chunk_rows(grid_width([f.shape for f in factors], len(distinct)))
    if n <= rows:
        return _secure_sum(rt, factors, cross, distinct)
    total: AShare | None = None
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        part = _secure_sum(rt, [f[lo:hi] for f in factors],
                           None if cross is None else cross[lo:hi], distinct)
        total = part if total is None else total + part
    assert total is not None
    return total


def product_sum(rt: Runtime, factors: list[AShare], aggs: int) -> AShare:
    """``secure_sum`` without a cross-party predicate (also the digits of a large histogram,
    ``histogram.secure_counts``): the widest party's factors enter one
    matrix product over units (see the module docstring); the others are multiplied on
    their own grid, in chunks of units, and the product's local terms summed over chunks
    before the one resharing round (``arith.dot``'s protocol, on a matrix product)."""
    k = len(factors)
    cells = [f.shape[3] for f in factors]
    last = max(range(k), key=lambda i: cells[i])
    others = [i for i in range(k) if i != last]
    wide = int(np.prod([cells[i] for i in others], dtype=np.int64))
    n = factors[0].shape[0]
    z = np.zeros((aggs, wide, cells[last]), dtype=np.uint64)
    rows = rt.chunk_rows(aggs * wide * (2 if len(others) > 1 else 1) + cells[last])
    for lo in range(0, max(n, 1), rows):
        hi = min(n, lo + rows)
        joint = (hi - lo, aggs, *[cells[i] for i in others])
        grid = [expand(factors[i][lo:hi], (hi - lo, factors[i].shape[2],
                                           *[cells[j] if j == i else 1 for j in others]), joint)
                for i in others]
        x = grid[0]
        for g in grid[1:]:
            x = rt.mul(x, g)
        del grid
        x = x.reshape(hi - lo, aggs, wide)
        y = factors[last][lo:hi].reshape(hi - lo, factors[last].shape[2], cells[last])
        for a in range(aggs):
            ya = y[:, a if y.shape[1] > 1 else 0, :]
            xa = x[:, a, :]
            z[a] += matmul(xa.a.T, ya.a + ya.b)
            z[a] += matmul(xa.b.T, ya.a)
        del x, y
    tag = rt.tag("dot")
    z += rt.zero_a(tag, z.shape)
    other = rt.reshare_raw(tag, z)
    # Axes (aggs, others' cells..., the widest party's cells) back to party order.
    where = [*others, last]
    perm = [0, *[1 + where.index(i) for i in range(k)]]
    shape = (aggs, *[cells[i] for i in where])
    a = np.ascontiguousarray(z.reshape(shape).transpose(perm)).reshape(aggs, -1)
    b = np.ascontiguousarray(other.reshape(shape).transpose(perm)).reshape(aggs, -1)
    return AShare(rt.me, a, b)


#: Below this many multiply-adds, or this many output cells, numpy's own uint64 matmul is
#: used: with three parties' threads in one process multithreaded BLAS oversubscribes the
#: cores, and smaller products lose more to it than they gain (a 10,001-bucket histogram
#: over 100,000 rows: 31 s with uint64, 44 s with the limbs; 100,000 buckets: 433 s, 177 s).
FLOAT_MATMUL_WORK = 1 << 22
FLOAT_MATMUL_CELLS = 1 << 15
_LIMB_ROWS = 1 << 13  # rows per float block: limb sums stay < 2^53 up to 2^21 rows


def matmul(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``x @ y`` over Z_2^64 (uint64, wrapping), exactly. numpy's integer matmul has no BLAS
    (some 60x slower than float64's), so large products are split into 16-bit limbs,
    ``x = sum_i x_i 2^(16 i)``: each limb product summed over at most ``_LIMB_ROWS`` rows is
    below ``2^13 * 2^32 < 2^53``, exact in float64, and only limb pairs with ``i + j <= 3``
    survive mod ``2^64`` (10 float matmuls a block).

    >>> x = np.tile(np.array([[2**64 - 1, 3], [5, 2**63]], dtype=np.uint64), (100, 100))
    >>> bool(np.array_equal(matmul(x, x.T), x @ x.T))
    True
    """
    n, k = x.shape
    m = y.shape[1]
    if n * k * m < FLOAT_MATMUL_WORK or n * m < FLOAT_MATMUL_CELLS:
        return x @ y
    out = np.zeros((n, m), dtype=np.uint64)
    mask = np.uint64(0xFFFF)
    for lo in range(0, k, _LIMB_ROWS):
        hi = min(k, lo + _LIMB_ROWS)
        xs = [((x[:, lo:hi] >> np.uint64(16 * i)) & mask).astype(np.float64) for i in range(4)]
        ys = [((y[lo:hi] >> np.uint64(16 * j)) & mask).astype(np.float64) for j in range(4)]
        for i in range(4):
            for j in range(4 - i):
                part = (xs[i] @ ys[j]).astype(np.uint64)  # exact: below 2^53
                out += part << np.uint64(16 * (i + j))
    return out


def _secure_sum(
    rt: Runtime, factors: list[AShare], cross: AShare | None, distinct: np.ndarray,
) -> AShare:
    """``secure_sum`` of one chunk of units."""
    k = len(factors)
    shapes = [f.shape for f in factors]
    n = shapes[0][0]
    aggs = len(distinct)  # one per chain; a party's factor may hold one for all (collapsed)
    joint = (n, *[s[1] for s in shapes], aggs, *[s[3] for s in shapes])
    grid = [expand(f, layout(i, f.shape, k), joint) for i, f in enumerate(factors)]
    if cross is not None:  # one predicate for all, or one per chain on its last axis
        per = cross.shape[-1] if cross.a.ndim == 2 + k else 1
        cross_axes = (n, *[s[1] for s in shapes], per, *[1] * k)
        grid.append(expand(cross, cross_axes, joint))
    acc = grid[0]
    for g in grid[1:-1]:
        acc = rt.mul(acc, g)
    last = grid[-1] if len(grid) > 1 else None
    ncells = int(np.prod(joint[2 + k:], dtype=np.int64))
    rows = n * int(np.prod(joint[1:1 + k], dtype=np.int64))
    if last is None:  # one party only (tests): a plain local sum
        return _sum_rows(acc, rows, aggs * ncells).reshape(aggs, ncells)
    if cross is None or not distinct.any():
        return _dot_rows(rt, acc, last, rows, aggs * ncells).reshape(aggs, ncells)
    full = rt.mul(acc, last)  # keep rows to OR the slot combinations of each unit
    ored = or_over_columns(rt, full.reshape(n, -1, aggs * ncells))
    plain = _sum_rows(full, rows, aggs * ncells)
    summed = ored.a.sum(axis=0, dtype=np.uint64), ored.b.sum(axis=0, dtype=np.uint64)
    mask = np.repeat(distinct, ncells)
    a = np.where(mask, summed[0], plain.a)
    b = np.where(mask, summed[1], plain.b)
    return AShare(rt.me, a, b).reshape(aggs, ncells)


def _rows_last(x: AShare, rows: int, width: int) -> AShare:
    return AShare(x.party, np.ascontiguousarray(x.a.reshape(rows, width).T),
                  np.ascontiguousarray(x.b.reshape(rows, width).T))


def _dot_rows(rt: Runtime, x: AShare, y: AShare, rows: int, width: int) -> AShare:
    return rt.dot(_rows_last(x, rows, width), _rows_last(y, rows, width))


def _sum_rows(x: AShare, rows: int, width: int) -> AShare:
    return AShare(x.party, x.a.reshape(rows, width).sum(axis=0, dtype=np.uint64),
                  x.b.reshape(rows, width).sum(axis=0, dtype=np.uint64))


def or_over_columns(rt: Runtime, x: AShare) -> AShare:
    """OR over axis 1 of 0/1 shares (a OR b = a + b - ab), by a tree of products (slot
    combinations here; the matched rows of an outer join in ``outer.py``)."""
    while x.shape[1] > 1:
        half = x.shape[1] // 2
        left, right = x[:, :half], x[:, half:2 * half]
        merged = left + right - rt.mul(left, right)
        if x.shape[1] % 2:
            merged = AShare.concat([merged, x[:, 2 * half:]], axis=1)
        x = merged
    return x[:, 0]
