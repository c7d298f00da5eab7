"""Local mode: a query over one party's tables, aggregated and noised by that party alone.

The reduction runs in the party's engine (``factors.reduce_in_engine``: its bounded local
SQL wrapped in one GROUP BY over its group columns); the party adds the full noise itself
(it may see aggregates of its own data) and sends the noisy values to the analyst, with
the labels of the released cells when partition selection chose them. Nothing is shared
and no other party takes part. Leakage: none beyond the released noisy values.
"""

from __future__ import annotations

import json

import numpy as np

from veilql.connectors.base import Connector
from veilql.engine.dp import sample_share
from veilql.engine.operators import ANALYST, histogram
from veilql.engine.operators import factors as fac
from veilql.engine.operators.cells import cell_info, selection_index
from veilql.engine.operators.local import PartyRows, fetch
from veilql.engine.plan.nodes import Plan
from veilql.engine.transport.base import Transport


def local_aggregate(plan: Plan, connector: Connector, seed: str) -> tuple[np.ndarray, PartyRows]:
    """Aggregates of a single-party plan computed by the party's own engine: shape
    (aggregates, cells), equal to ``aggregate_plain`` over the fetched rows; and the rows'
    private group labels (``PartyRows`` without arrays). See ``factors.reduce_in_engine``."""
    return fetch(plan.steps[0], connector, seed, reduce=plan)


def aggregate_plain(plan: Plan, rows: dict[str, PartyRows]) -> np.ndarray:
    """Aggregates in the clear for a single-party plan: shape (aggregates, cells)."""
    chains, owner = fac.expand_terms(plan)
    party = plan.parties[0]
    fac.sparsify(plan, party, rows[party])  # the cells the engine's GROUP BY yields
    f = fac.build_factors(plan, party, rows[party], chains, slot_level=False)
    per_chain = fac.combine_plain([f])
    out = np.zeros((len(plan.aggregates), per_chain.shape[1]), dtype=np.int64)
    for i, agg in owner:
        out[agg] += per_chain[i]
    # a bucket-index column's aggregates (a large COUNT(DISTINCT), an exact MIN/MAX's
    # histogram): its chain above summed the bucket index, not a count
    histogram.plain_fill(plan, party, rows[party], out)
    return out


def noise_vector(plan: Plan, party_index: int, cells: int) -> np.ndarray:
    """This party's noise shares for every aggregate and cell (zeros where it adds none).

    A histogram's bucket counts (one ``family``, one noise plan) are drawn in one call of
    the sampler, independent draws as one per bucket would be: 100,000 buckets took 16 s
    one call each, and now take what one call of 100,000 draws takes."""
    out = np.zeros((len(plan.aggregates), cells), dtype=np.int64)
    i = 0
    while i < len(plan.aggregates):
        agg = plan.aggregates[i]
        j = i + 1
        while agg.family and j < len(plan.aggregates) and \
                plan.aggregates[j].family == agg.family and \
                (plan.aggregates[j].noise is agg.noise or plan.aggregates[j].noise == agg.noise):
            j += 1
        out[i:j] = sample_share(agg.noise, party_index, (j - i) * cells).reshape(j - i, cells)
        i = j
    return out


def release_local(transport: Transport, plan: Plan, values: np.ndarray,
                  rows: PartyRows) -> None:
    """Add the full noise to ``values`` (aggregates x cells), keep the cells that pass the
    threshold under partition selection, and send them (and their labels) to the analyst."""
    noisy = values + noise_vector(plan, 0, values.shape[1])
    if plan.threshold is not None:
        cells = np.flatnonzero(noisy[selection_index(plan)] > plan.threshold)
        noisy = noisy[:, cells]
        transport.send(ANALYST, "cells", json.dumps(cell_info(plan, rows, cells)).encode())
    transport.send_array(ANALYST, "release", noisy)
