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

from veilql.connectors.base import Connector, column_to_numpy, engine_failure
from veilql.engine.operators import factors as fac
from veilql.engine.operators.local import (
    ENGINE_LOCK,
    PartyRows,
    bounded_sql,
    release_engine_memory,
)
from veilql.engine.operators.memory import chunk_words
from veilql.engine.plan.nodes import LocalStep, Plan
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
        sql = (f'SELECT {keys}, CAST(SUM("w") AS BIGINT) AS "__c" FROM '
               f'({bounded_sql(step, seed)}) AS "__l" WHERE "{column}" >= 0 GROUP BY {keys}')
        result = _arrays(connector, sql)
        bucket, count = result[column], result["__c"]
        cell = _cells(plan, party, result)
        ok = (cell >= 0) & (bucket < len(idx))
        block = np.zeros((len(idx), out.shape[1]), dtype=np.int64)
        np.add.at(block, (bucket[ok], cell[ok]), count[ok])
        out[idx] = block
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
    index ``factors.reduce_groups`` gives it; -1 outside). A large histogram has no
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
