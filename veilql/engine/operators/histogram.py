"""Histograms over a bucket-index column, of two kinds: COUNT(DISTINCT x) over a large public
domain (per cell the number of buckets with a positive count, in the party's engine or,
across parties, compared with 0 on shares) and an exact MIN/MAX's histogram (one count per
bucket and cell, noised as they are, one family: ``Family.distinct`` False). Both share the
bucket counts below: the engine's GROUP BY over the cells and the index for the second kind
in local mode, the digits' matrix product across parties for both.

Such an aggregate (``rewrite/histogram.py``, ``AggregateSpec.buckets``) counts one local
column, the row's bucket index (-1: no bucket). In local mode ``reduce_in_engine``
reduces the plan's other aggregates as local mode always does
(``factors.reduce_in_engine``) and each such aggregate in one more query:
``COUNT(DISTINCT index)`` over the bounded rows that pass WHERE, grouped by the party's
group columns: one number per cell, whatever the number of buckets. ``plain_counts``
computes the (bucket, cell) counts from pivoted rows, a chunk of buckets at a time, and
``plain_distinct`` the distinct counts from them (the reference of the tests).

Across parties (``digit_columns``, ``secure_counts``) a bucket ``b`` of ``B`` is the pair
of digits ``h = b // s``, ``l = b % s`` with ``s = ceil(sqrt(B))``. The owner shares, per
unit and slot, a one-hot row of ``(its cell, h)`` carrying the row's weight and a one-hot
row of ``l``: ``cells x ceil(B / s) + s`` words instead of ``B``. The other parties'
factors for the aggregate's count (their weights times their one-hot cells, summed over
their slots as for any aggregate) are repeated over the owner's slots, multiplied into
one digit on their own grid, and the last product is ONE matrix product over the rows
(``aggregate.product_sum``: digits and cells of the others x the other digit), reshared
once; its ``s x s`` cells per joint cell are the bucket counts (the first ``B`` of them).
Each count is then compared with 0 on shares (``Runtime.gt``, in batches of whole
buckets within the chunk budget), the bits converted to arithmetic shares and summed per
cell: the exact number of distinct values per cell, still shared, which the noise on
shares treats as any COUNT. No cross-party predicate may stand beside it
(``rewrite/histogram._across``): then every party's factor is summed over its slots
before the join.

Leakage: none beyond the released noisy count per cell (local mode sends only those).
The engine sees its own rows. Across parties every array's shape is a function of the
units and slots (the join's sizes, already revealed), ``B`` and the public cells, never
of which buckets occur; every value is a share, and the comparisons open nothing.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import numpy as np

from veilql.connectors.base import Connector, column_to_numpy, engine_failure
from veilql.engine.mpc.runtime import Runtime
from veilql.engine.mpc.shares import AShare
from veilql.engine.operators import factors as fac
from veilql.engine.operators.aggregate import product_sum
from veilql.engine.operators.cells import merge_cells
from veilql.engine.operators.local import (
    ENGINE_LOCK,
    PartyRows,
    bounded_sql,
    release_engine_memory,
)
from veilql.engine.operators.memory import chunk_words, spans
from veilql.engine.plan.nodes import LocalStep, Plan, Term
from veilql.engine.rewrite.histogram import PREFIX
from veilql.errors import ProtocolError

COMPARE_WORDS = 64  # words per entry a comparison holds at once (as secure_mode's)


class Family(NamedTuple):
    """The aggregates of one bucket-index column: ``aggs`` their indices in
    ``plan.aggregates`` (one for a COUNT(DISTINCT), one per bucket for an exact MIN/MAX's
    histogram, in bucket order), ``buckets`` their number of buckets, ``distinct`` which
    kind."""

    aggs: tuple[int, ...]
    buckets: int
    distinct: bool


def families(plan: Plan, party: str) -> dict[str, Family]:
    """``party``'s bucket-index columns and, for each, its aggregates (empty when the plan
    has none): a large COUNT(DISTINCT) (``AggregateSpec.buckets``) or the bucket counts of
    an exact MIN/MAX's histogram (one ``family`` over the column)."""
    index = {c.name for c in plan.step(party).columns
             if c.role == "group" and c.name.startswith(PREFIX)}
    found: dict[str, list[int]] = {}
    distinct: dict[str, int] = {}
    for i, agg in enumerate(plan.aggregates):
        if len(agg.terms) != 1 or agg.terms[0].party != party or \
                agg.terms[0].column not in index:
            continue
        column = agg.terms[0].column
        assert column is not None
        if agg.buckets:
            found[column], distinct[column] = [i], agg.buckets
        elif agg.family:
            found.setdefault(column, []).append(i)
    return {c: Family(tuple(idx), distinct.get(c, len(idx)), c in distinct)
            for c, idx in found.items()}


def reduce_in_engine(plan: Plan, step: LocalStep, connector: Connector,
                     seed: str) -> tuple[np.ndarray, PartyRows]:
    """``factors.reduce_in_engine`` of a plan with bucket-index columns: shape
    (aggregates, cells), and the private group labels. A COUNT(DISTINCT) is one query
    ``COUNT(DISTINCT index)`` per cell; an exact MIN/MAX's histogram one GROUP BY over the
    cells and the index (at most buckets x cells result rows, never rows x buckets)."""
    party = step.party
    dense = families(plan, party)
    counted = {i for fam in dense.values() for i in fam.aggs}
    rest = replace(plan, aggregates=tuple(a for i, a in enumerate(plan.aggregates)
                                          if i not in counted))
    values, rows = fac.reduce_in_engine(rest, step, connector, seed)
    out = np.zeros((len(plan.aggregates), values.shape[1]), dtype=np.int64)
    out[[i for i in range(len(plan.aggregates)) if i not in counted]] = values
    groups = [g.column for g in fac.party_cells(plan.groups, party)]
    for column, fam in dense.items():
        # the rows WHERE keeps (w > 0) whose bucket exists; a FILTER or NULL made it -1
        keys = ", ".join(f'"{g}"' for g in groups)
        where = (f'WHERE "w" > 0 AND "{column}" >= 0 AND "{column}" < {fam.buckets}')
        source = f"({bounded_sql(step, seed)}) AS \"__l\""
        if fam.distinct:
            sql = (f'SELECT {keys + ", " if keys else ""}CAST(COUNT(DISTINCT "{column}") '
                   f'AS BIGINT) AS "__c" FROM {source} {where}'
                   + (f" GROUP BY {keys}" if keys else ""))
        else:
            by = ", ".join(f'"{g}"' for g in [*groups, column])
            sql = (f'SELECT {by}, CAST(SUM("w") AS BIGINT) AS "__c" FROM {source} {where} '
                   f"GROUP BY {by}")
        result = _arrays(connector, sql)
        count = result["__c"]
        cell = _cells(plan, party, result) if groups else np.zeros(len(count), np.int64)
        ok = cell >= 0
        if fam.distinct:
            np.add.at(out[fam.aggs[0]], cell[ok], count[ok])
            continue
        block = np.zeros((fam.buckets, out.shape[1]), dtype=np.int64)
        np.add.at(block, (result[column][ok], cell[ok]), count[ok])
        out[list(fam.aggs)] = block
    return out, rows


def _arrays(connector: Connector, sql: str) -> dict[str, np.ndarray]:
    """The result of ``sql`` (integers, no NULLs) as int64 columns: up to buckets x cells
    rows, so as arrays, not as Python rows; one local query at a time as in
    ``local.fetch``."""
    with ENGINE_LOCK:
        try:
            table = connector.run(sql)
            try:
                return {name: column_to_numpy(col).astype(np.int64)
                        for name, col in zip(table.column_names, table.columns, strict=True)}
            except Exception as exc:  # noqa: BLE001 - a conversion failure can quote a value
                raise engine_failure(exc, connector.spec) from None
        finally:
            release_engine_memory(connector)


def _cells(plan: Plan, party: str, result: dict[str, np.ndarray]) -> np.ndarray:
    """The cell of each result row over the party's public group domains (the mixed-radix
    index ``factors.reduce_groups`` gives it; -1 outside). A large COUNT(DISTINCT) has no
    private group key beside it (``rewrite/histogram.dense``)."""
    keys = fac.party_cells(plan.groups, party)
    n = len(next(iter(result.values())))
    cell = np.zeros(n, dtype=np.int64)
    inside = np.ones(n, dtype=bool)
    for g in keys:
        col = result[g.column]
        inside &= col >= 0
        cell = cell * fac.group_size(g) + np.maximum(col, 0)
    return np.where(inside, cell, -1)


def plain_counts(plan: Plan, party: str, rows: PartyRows, column: str, buckets: int,
                 chunk: int | None = None) -> np.ndarray:
    """The bucket counts of ``column`` over pivoted ``rows``, shape (buckets, cells): per
    bucket and cell the weight summed over the rows in it. Buckets are taken ``chunk`` at a
    time (by default as many as a chunk of the memory budget holds for every row at once:
    a one-hot block of rows x ``chunk``), each counted by comparing the rows' index with
    the chunk's buckets; the result does not depend on the chunk."""
    groups = fac.party_cells(plan.groups, party)
    ncell = fac.cell_count(groups, rows)
    index = rows.cols[column]
    cell = fac.cell_index(rows, groups) if groups else np.zeros(index.shape, dtype=np.int64)
    keep = rows.present & (cell >= 0) & (index >= 0)
    index, cell, weight = index[keep], cell[keep], (rows.cols["w"])[keep]
    step = max(1, chunk or chunk_words() // max(1, len(index)))
    out = np.zeros((buckets, ncell), dtype=np.int64)
    for lo in range(0, buckets, step):
        hi = min(buckets, lo + step)
        onehot = index[:, None] == np.arange(lo, hi)[None, :]  # rows x chunk, bounded
        np.add.at(out[lo:hi].T, cell, weight[:, None] * onehot)
    return out


def plain_fill(plan: Plan, party: str, rows: PartyRows, out: np.ndarray) -> None:
    """Set in ``out`` (aggregates, cells) every bucket-index column's aggregates from
    pivoted ``rows`` (the reference of ``reduce_in_engine``): per cell the distinct count,
    or per bucket and cell the count (their chains summed the index, not a count)."""
    for column, fam in families(plan, party).items():
        counts = plain_counts(plan, party, rows, column, fam.buckets)
        if fam.distinct:
            out[fam.aggs[0]] = plain_distinct(counts)
        else:
            out[list(fam.aggs)] = counts


def plain_distinct(counts: np.ndarray) -> np.ndarray:
    """Per cell the number of buckets with a positive count: what ``reduce_in_engine`` and
    ``secure_counts`` compute, from ``plain_counts``'s (buckets, cells).

    >>> plain_distinct(np.array([[0, 2], [1, 0], [3, 1]])).tolist()
    [2, 2]
    """
    return (counts > 0).sum(axis=0).astype(np.int64)


def digit_size(buckets: int) -> tuple[int, int]:
    """The high digit's and the low digit's number of values for ``buckets`` buckets: the
    low one ``s = ceil(sqrt(buckets))``, the high one ``ceil(buckets / s)``.

    >>> digit_size(10001), digit_size(100000), digit_size(1001)
    ((100, 101), (316, 317), (32, 32))
    """
    low = int(np.ceil(np.sqrt(buckets)))
    while (low - 1) ** 2 >= buckets:  # float sqrt of a square can round up
        low -= 1
    return -(-buckets // low), low


def digit_columns(plan: Plan, party: str, rows: PartyRows) -> dict[str, np.ndarray]:
    """The owner's digit columns of each large histogram it holds (empty when none; in a
    query across parties): ``<index>:hi`` of shape (units, slots, cells x high digits),
    the row's weight at its (cell, high digit), and ``<index>:lo`` of shape (units, slots,
    low digits), 1 at its low digit; zero rows where the row is absent, NULL, FILTERed out
    or outside the cells. Shapes depend on the units, slots, buckets and public cells."""
    out: dict[str, np.ndarray] = {}
    if plan.mode != "secure":
        return out
    groups = fac.party_cells(plan.groups, party)
    ncell = fac.cell_count(groups, rows)
    cell = fac.cell_index(rows, groups) if groups else np.zeros(rows.present.shape, np.int64)
    for column, fam in families(plan, party).items():
        buckets = fam.buckets
        high, low = digit_size(buckets)
        index = rows.cols[column]
        n, slots = index.shape
        keep = rows.present & (index >= 0) & (index < buckets) & (cell >= 0)
        units, slot = np.nonzero(keep)
        b = index[units, slot]
        hi = np.zeros((n, slots, ncell * high), dtype=np.int64)
        hi[units, slot, cell[units, slot] * high + b // low] = rows.cols["w"][units, slot]
        lo = np.zeros((n, slots, low), dtype=np.int64)
        lo[units, slot, b % low] = 1
        out[f"{column}:hi"], out[f"{column}:lo"] = hi, lo
    return out


def secure_counts(rt: Runtime, plan: Plan, cols: dict[str, AShare],
                  chains: tuple, cells: int) -> dict[int, AShare]:
    """Shares of every bucket-index column's aggregates over the joined rows ``cols``: per
    plan aggregate index, its row of joint cells (party order; under ``Plan.merge`` the
    released cells): for a large COUNT(DISTINCT) the number of buckets whose count in the
    cell is positive, for an exact MIN/MAX's histogram that bucket's count.

    ``chains`` are ``factors.expand_terms``'s; the aggregate's chain (its count of the
    bucket-index column) selects each other party's factor, as it does in every aggregate.
    """
    out: dict[int, AShare] = {}
    for party in plan.parties:
        for column, fam in families(plan, party).items():
            if plan.on_shares or plan.outer:  # refused when planned (rewrite/histogram)
                raise ProtocolError("a histogram over a bucket-index column across parties "
                                    "beside a condition on shares or an outer join")
            c = next(i for i, ch in enumerate(chains) if ch.kind == "count" and
                     ch.terms == (Term(party, column),))
            counts = _family_counts(rt, plan, cols, party, column, c, fam.buckets)
            assert counts.shape == (fam.buckets, cells)
            # a GROUP BY across parties adds its fine cells' counts first (cells.py), so a
            # value of two merged cells counts once
            merged = merge_cells(plan, counts)
            if fam.distinct:
                out[fam.aggs[0]] = count_positive(rt, merged)
                continue
            for b, agg in enumerate(fam.aggs):  # noised as they are, one family
                out[agg] = AShare(merged.party, merged.a[b], merged.b[b])
    return out


def count_positive(rt: Runtime, counts: AShare) -> AShare:
    """Per column of ``counts`` (buckets x cells, each in ``[0, 2^62)``), shares of how many
    of its entries are positive: each compared with 0 on shares, the bits converted to
    arithmetic shares and summed over the buckets. Whole buckets are taken in batches of
    about ``rt.chunk_words / COMPARE_WORDS`` entries (a comparison holds some
    ``COMPARE_WORDS`` words per entry), so the temporaries stay within about a chunk;
    the batches depend on the shape only."""
    buckets, cells = counts.shape
    rows = max(1, rt.chunk_words // (COMPARE_WORDS * max(1, cells)))
    a = np.zeros(cells, dtype=np.uint64)
    b = np.zeros(cells, dtype=np.uint64)
    for lo, hi in spans(buckets, rows):
        bits = rt.b2a_bit(rt.gt(counts[lo:hi], 0))
        a += bits.a.sum(axis=0, dtype=np.uint64)
        b += bits.b.sum(axis=0, dtype=np.uint64)
    return AShare(counts.party, a, b)


def _family_counts(rt: Runtime, plan: Plan, cols: dict[str, AShare], owner: str,
                   column: str, chain: int, buckets: int) -> AShare:
    """The (buckets, joint cells) counts of one bucket-index column (module docstring)."""
    hi = cols[f"{owner}.{column}:hi"]
    lo = cols[f"{owner}.{column}:lo"]
    n, slots = hi.shape[0], hi.shape[1]
    high, low = digit_size(buckets)

    def rows_of(x: AShare) -> AShare:  # a unit's factor on each of the owner's slots
        flat = x.reshape(n, 1, 1, -1)
        if slots == 1:
            return flat
        return AShare(x.party, np.repeat(flat.a, slots, axis=0),
                      np.repeat(flat.b, slots, axis=0))

    factors: list[AShare] = []
    dims: list[int] = []  # the result's axes, in list order
    where = 0  # the high digit's axis among them
    for p in plan.parties:
        if p == owner:
            factors.append(hi.reshape(n * slots, 1, 1, -1))
            dims += [hi.shape[2] // high, high]
            where = len(dims) - 1
            continue
        if f"{p}.F" in cols:
            f = cols[f"{p}.F"]
            parts = [f[:, :, chain if f.shape[2] > 1 else 0, :]]
        else:  # values and cells apart (factors.separable)
            v = cols[f"{p}.V"]
            parts = [v[:, :, chain if v.shape[2] > 1 else 0, :], cols[f"{p}.H"]]
        for part in parts:
            factors.append(rows_of(part))
            dims.append(factors[-1].shape[3])
    factors.append(lo.reshape(n * slots, 1, 1, low))
    dims.append(low)
    z = product_sum(rt, factors, 1).reshape(*dims)
    rest = [i for i in range(len(dims) - 1) if i != where]
    z = AShare(z.party, np.ascontiguousarray(z.a.transpose(where, len(dims) - 1, *rest)),
               np.ascontiguousarray(z.b.transpose(where, len(dims) - 1, *rest)))
    return z.reshape(high * low, -1)[:buckets]
