"""The buckets of a COUNT(DISTINCT x) over a large public domain, in the party's engine.

Such a histogram (``rewrite/histogram.py``; local mode only) is one local column, the
row's bucket index (-1: no bucket), and one count per bucket in the plan, all of one
``family``. ``reduce_in_engine`` reduces the plan's other aggregates as local mode always
does (``factors.reduce_in_engine``) and each histogram in one more GROUP BY over the
party's group columns and the index: at most one result row per (cell, bucket) that
occurs, so memory grows with rows plus buckets x cells (the dense array of counts every
bucket of which is released, with noise), never with rows x buckets. ``plain_counts``
computes the same counts from pivoted rows (the reference of ``local_mode.aggregate_plain``
and the tests), a chunk of buckets at a time.

Leakage: none beyond the released noisy counts (local mode sends only those). The engine
sees its own rows; which buckets occur decides the size of its own result, at its owner.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from veilql.connectors.base import Connector
from veilql.engine.operators import factors as fac
from veilql.engine.operators.local import PartyRows, bounded_sql, run_engine
from veilql.engine.operators.memory import chunk_words
from veilql.engine.plan.nodes import LocalStep, Plan, plain_value
from veilql.engine.rewrite.histogram import PREFIX


def families(plan: Plan, party: str) -> dict[str, list[int]]:
    """``party``'s bucket-index columns and, for each, the indices of its bucket counts in
    ``plan.aggregates``, in bucket order (empty when the plan has no such histogram)."""
    step = plan.step(party)
    index = {c.name for c in step.columns if c.role == "group" and c.name.startswith(PREFIX)}
    out: dict[str, list[int]] = {}
    for i, agg in enumerate(plan.aggregates):
        if agg.family and len(agg.terms) == 1 and agg.terms[0].party == party and \
                agg.terms[0].column in index:
            out.setdefault(agg.terms[0].column, []).append(i)  # type: ignore[arg-type]
    return out


def reduce_in_engine(plan: Plan, step: LocalStep, connector: Connector,
                     seed: str) -> tuple[np.ndarray, PartyRows]:
    """``factors.reduce_in_engine`` of a plan with bucket-index histograms: shape
    (aggregates, cells), and the private group labels."""
    party = step.party
    dense = families(plan, party)
    counted = {i for idx in dense.values() for i in idx}
    rest = replace(plan, aggregates=tuple(a for i, a in enumerate(plan.aggregates)
                                          if i not in counted))
    values, rows = fac.reduce_in_engine(rest, step, connector, seed)
    out = np.zeros((len(plan.aggregates), values.shape[1]), dtype=np.int64)
    out[[i for i in range(len(plan.aggregates)) if i not in counted]] = values
    groups = [g.column for g in fac.party_cells(plan.groups, party)]
    for column, idx in dense.items():
        keys = ", ".join(f'"{g}"' for g in [*groups, column])
        sql = (f'SELECT {keys}, SUM("w") AS "__c" FROM ({bounded_sql(step, seed)}) AS "__l" '
               f'WHERE "{column}" >= 0 GROUP BY {keys}')
        result = run_engine(connector, sql)
        bucket = np.array([int(r[column]) for r in result], dtype=np.int64)
        count = np.array([int(r["__c"] or 0) for r in result], dtype=np.int64)
        cell = _cells(plan, party, rows, result)
        ok = (cell >= 0) & (bucket < len(idx))
        block = np.zeros((len(idx), out.shape[1]), dtype=np.int64)
        np.add.at(block, (bucket[ok], cell[ok]), count[ok])
        out[idx] = block
    return out, rows


def _cells(plan: Plan, party: str, rows: PartyRows, result: list[dict]) -> np.ndarray:
    """The cell of each result row, indexed as ``factors.reduce_groups`` indexed the
    party's other aggregates (private keys by the labels it found; -1 outside)."""
    keys = fac.party_cells(plan.groups, party)
    cell = np.zeros(len(result), dtype=np.int64)
    inside = np.ones(len(result), dtype=bool)
    for g in keys:
        size = fac.group_size(g, rows)
        if g.private:
            where = {(type(v), v): i for i, v in enumerate(rows.labels[g.column])}
            col = np.array([where.get((type(p), p), -1) for p in
                            (plain_value(r[g.column]) for r in result)], dtype=np.int64)
        else:
            col = np.array([-1 if r[g.column] is None else int(r[g.column]) for r in result],
                           dtype=np.int64)
        inside &= col >= 0
        cell = cell * size + np.maximum(col, 0)
    if rows.cells is not None and any(g.private for g in keys):
        return np.where(inside, fac.sparse_places(rows.cells, cell), -1)
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
