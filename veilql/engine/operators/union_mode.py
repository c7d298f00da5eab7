"""Union mode: a UNION ALL of several parties' tables, summed on shares (no join).

Each data party runs each of its branches' bounded local SQL reduced in its own engine
(``factors.reduce_in_engine``, as local mode does: one row per cell of the branch's public
domains), places the branch's cells into the union's cells and scales them to the union's
fixed point (``branch_vector``), and adds its branches up: one vector of aggregates x
cells, whose shape is public (the plan's). A compute party secret-shares it with
``Runtime.share``, a fourth data party with ``share_from_outside``; the compute parties add
the shares, add the noise on shares exactly as the secure path does (``noise.add_noise``),
and, after every charged party committed (the node's lifecycle), release their output
shares to the analyst (``secure_mode.release_secure``).

Leakage: a compute party receives one sharing per data party, of the public length
aggregates x cells, uniformly random to it; nothing depends on a person but the released
noisy values. See docs/SECURITY.md.
"""

from __future__ import annotations

import numpy as np

from veilql.connectors.base import Connector
from veilql.engine.mpc.protocols.arith import share_from_outside
from veilql.engine.mpc.runtime import Runtime
from veilql.engine.mpc.shares import AShare
from veilql.engine.operators.local import fetch
from veilql.engine.operators.noise import add_noise
from veilql.engine.operators.secure_mode import SecureOutput
from veilql.engine.plan.nodes import Plan
from veilql.engine.rewrite.union import union_cells
from veilql.engine.transport.base import Transport


def cells_of(plan: Plan) -> int:
    """The union's number of cells (public: the product of its groups' domains)."""
    n = 1
    for g in plan.groups:
        n *= len(g.domain or ())
    return n


def branch_vector(plan: Plan, branch: Plan, values: np.ndarray) -> np.ndarray:
    """One branch's aggregates (aggregates x its cells) as the union's: its cells placed
    into the union's cells, each aggregate scaled to the union's decimals."""
    out = np.zeros((len(plan.aggregates), cells_of(plan)), dtype=np.int64)
    places = np.asarray(union_cells(plan, branch), dtype=np.int64)
    for i, (agg, part) in enumerate(zip(plan.aggregates, branch.aggregates, strict=True)):
        scale = 10 ** (agg.decimals - part.decimals)
        np.add.at(out[i], places, values[i] * scale)
    return out


def party_vector(plan: Plan, party: str, connector: Connector, seed: str) -> np.ndarray:
    """The sum of ``party``'s branches, each reduced in its own engine (aggregates x cells)."""
    total = np.zeros((len(plan.aggregates), cells_of(plan)), dtype=np.int64)
    for branch in plan.branches:
        if branch.steps[0].party == party:
            values, _ = fetch(branch.steps[0], connector, seed, reduce=branch)
            total += branch_vector(plan, branch, values)
    return total


def send_vector(transport: Transport, plan: Plan, me: str, vector: np.ndarray,
                qid: str) -> None:
    """A data party that does not compute: send its shares to the compute parties."""
    share_from_outside(transport, plan.compute, vector, f"{qid}/union/{me}")


def compute_union(rt: Runtime, plan: Plan, qid: str, vector: np.ndarray | None) -> SecureOutput:
    """At a compute party: share its own vector (``None`` without data), receive the
    others', add them up and add the noise on shares; the output, before release."""
    me = rt.parties[rt.me]
    shape = (len(plan.aggregates), cells_of(plan))
    total: AShare | None = None
    for party in plan.charged:  # the same order at every compute party
        if party in plan.compute:
            part = rt.share(party, vector if party == me else None, shape)
        else:
            part = rt.receive_input(party, f"{qid}/union/{party}", shape)
        assert isinstance(part, AShare)
        total = part if total is None else total + part
    assert total is not None
    return SecureOutput(add_noise(rt, plan, total), None, None)
