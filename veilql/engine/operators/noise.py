"""Add every aggregate's noise to its shares before anything is opened.

Two kinds of noise, per aggregate (``NoisePlan``, chosen by ``rewrite/attach_noise.py``):

- **central** (``plan.central``): one discrete Laplace per cell sampled on shares from jointly
  generated random coins (``mpc.protocols.noise.dlap_on_shares``); no party knows any part of
  it. All central aggregates, cells, digits and both geometrics run in one batch (9 rounds).
- **distributed**: each adding compute party draws its own share with OpenDP's exact sampler
  (``dp.sample_share``), secret-shares it (one round per adder) and all add it in.

Memory: sampling holds about ``COIN_WORDS`` words per coin at each party (``2 K`` coins per
cell and central aggregate), so the cells are sampled in batches of at most
``NOISE_CHUNKS`` chunks' worth of coins (``Runtime.chunk_words``), 9 rounds per batch; a
query whose coins fit in one batch samples them in one batch as before. Each cell's noise
is independent of the others', so batching does not change its law.

Ring safety: the planner proved ``|value| + noise bound < 2^62`` per cell
(``rewrite/check_ranges.py``); the central bound ``2^K - 1`` is exact.
"""

from __future__ import annotations

import numpy as np

from veilql.engine.dp import NoisePlan
from veilql.engine.mpc.protocols.noise import dlap_on_shares
from veilql.engine.mpc.runtime import Runtime
from veilql.engine.mpc.shares import AShare
from veilql.engine.plan.nodes import Plan
from veilql.errors import ProtocolError

COIN_WORDS = 40  # words per coin a party holds while sampling (measured: about 37)
NOISE_CHUNKS = 16  # chunk-sized arrays' worth of coins sampled in one batch


def _plans(plan: Plan) -> list[NoisePlan]:
    out = []
    for agg in plan.aggregates:
        if not isinstance(agg.noise, NoisePlan):
            raise ProtocolError(f"aggregate {agg.name} has no noise plan",
                                "plans come from compile_plan, which attaches noise")
        out.append(agg.noise)
    return out


def distributed_noise(plan: Plan, party_index: int, cells: int) -> np.ndarray:
    """This party's own noise draws for every aggregate and cell (zeros where it adds none,
    and for central aggregates, whose noise is sampled on shares); a histogram family's
    draws in one call of the sampler (``local_mode.noise_vector``)."""
    from veilql.engine.operators.local_mode import noise_vector  # local_mode imports this

    _plans(plan)  # every aggregate has its noise plan
    return noise_vector(plan, party_index, cells)


def add_noise(rt: Runtime, plan: Plan, x: AShare) -> AShare:
    """``x`` (aggregates x cells) plus every aggregate's noise, still as shares.

    Central aggregates get one ``DLap(t)`` sampled on shares (after checking that the cells
    are within the bound the plan's distance was computed for); the others get the shares of
    each adder's own draw.
    """
    plans = _plans(plan)
    if len(x.shape) != 2 or x.shape[0] != len(plans):
        raise ProtocolError(f"aggregate shares of shape {x.shape} for {len(plans)} aggregates",
                            "all parties must run the same plan")
    cells = x.shape[1]
    central = [i for i, p in enumerate(plans) if p.central]
    if central:
        bound = min(plans[i].cells for i in central)
        if cells > bound:  # cannot happen: the planner bounds every key count (MAX_UNITS)
            raise ProtocolError(f"{cells} cells exceed the {bound} the noise plan allows for",
                                "nothing is released; report this as a bug")
        thresholds = [plans[i].thresholds for i in central]
        per_cell = 2 * sum(len(t) for t in thresholds)  # coins of one cell, all aggregates
        batch = max(1, rt.chunk_words * NOISE_CHUNKS // (COIN_WORDS * max(1, per_cell)))
        a, b = x.a.copy(), x.b.copy()
        for lo in range(0, cells, batch):
            hi = min(cells, lo + batch)
            noise = dlap_on_shares(rt, thresholds, hi - lo)
            a[central, lo:hi] += noise.a
            b[central, lo:hi] += noise.b
            del noise
        x = AShare(rt.me, a, b)
    adders = sorted({i for p in plans if not p.central for i in p.adders})
    for i in adders:
        mine = distributed_noise(plan, i, cells) if rt.me == i else None
        x = x + rt.share(i, mine, x.shape)
    return x
