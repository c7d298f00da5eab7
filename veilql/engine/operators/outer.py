"""A LEFT or RIGHT JOIN across two parties, at run time (planned in ``rewrite/outer_join.py``).

``answer = sum over u in a of F_a(u) * g0 + sum over matched u of F_a(u) * (F_b(u) - g0)``:
the optional party ``b`` subtracts ``g0`` (``Plan.shift``, one public constant per term
chain) from its factors before sharing them (``shift_factors``), so the existing secure
join computes the second term; the preserved party ``a`` computes the first term in the
clear from its own rows (``own_total``: its factors summed over its units, times ``g0``) and
secret-shares it, one word per aggregate and cell, a public length; the compute parties
add it on shares before the noise (``add_own_total``), so it is never released alone.
"""

from __future__ import annotations

import numpy as np

from veilql.engine.mpc.protocols.arith import share_from_outside
from veilql.engine.mpc.runtime import Runtime
from veilql.engine.mpc.shares import AShare
from veilql.engine.operators import factors as fac
from veilql.engine.operators.local import PartyRows
from veilql.engine.plan.nodes import Plan
from veilql.engine.transport.base import Transport


def shift_factors(plan: Plan, me: str, columns: dict[str, np.ndarray]) -> None:
    """At the optional party: its factors minus their value on a row of NULLs, per chain
    (in place; a collapsed factor has one chain axis, whose chains all share one shift)."""
    if me != plan.optional:
        return
    f = columns["F"]  # never separable: this party holds no group key (outer_join.py)
    shift = np.asarray(plan.shift, dtype=np.int64)
    if f.shape[2] == 1:
        shift = shift[:1]
    f -= shift[None, None, :, None]


def own_total(plan: Plan, me: str, rows: PartyRows, words: int) -> np.ndarray | None:
    """At the preserved party: per aggregate and cell, its factors summed over all its units
    times the optional party's factor on a row of NULLs; ``None`` at any other party."""
    if me != plan.own_total:
        return None
    chains, owner = fac.expand_terms(plan)
    width = fac.factor_width(plan, me, rows, chains, slot_level=False)
    ncell = fac.cell_count(fac.party_cells(plan.groups, me), rows)
    per_chain = np.zeros((len(chains), ncell), dtype=np.int64)
    step = max(1, words // max(1, width))
    for lo in range(0, rows.units, step):  # in chunks of units: the temporaries stay small
        hi = min(rows.units, lo + step)
        part = PartyRows(rows.keys[lo:hi], {k: v[lo:hi] for k, v in rows.cols.items()},
                         rows.present[lo:hi], rows.labels, rows.cells)
        per_chain += fac.build_factors(plan, me, part, chains, slot_level=False).sum(axis=(0, 1))
    per_chain *= np.asarray(plan.shift, dtype=np.int64)[:, None]
    out = np.zeros((len(plan.aggregates), ncell), dtype=np.int64)
    for i, agg in owner:
        out[agg] += per_chain[i]
    return out


def shape(plan: Plan) -> tuple[int, int]:
    """The public shape of the own-total sharing: aggregates x the preserved party's cells
    (public domains only: ``outer_join.py`` refuses private group keys)."""
    return len(plan.aggregates), fac.cell_count(fac.party_cells(plan.groups, plan.own_total))


def send_own_total(transport: Transport, plan: Plan, me: str, vector: np.ndarray | None,
                   qid: str) -> None:
    """A preserved party that does not compute: send shares of its own total."""
    if me == plan.own_total:
        assert vector is not None
        share_from_outside(transport, plan.compute, vector.astype(np.uint64),
                           f"{qid}/outer/{me}")


def add_own_total(rt: Runtime, plan: Plan, qid: str, result: AShare,
                  vector: np.ndarray | None) -> AShare:
    """At a compute party: ``result`` (the inner join with shifted factors) plus the shares
    of the preserved party's own total (shared here by it, or received from it)."""
    party = plan.own_total
    if party in plan.compute:
        me = rt.parties[rt.me]
        values = vector.astype(np.uint64) if party == me and vector is not None else None
        part = rt.share(party, values, shape(plan))
    else:
        part = rt.receive_input(party, f"{qid}/outer/{party}", shape(plan))
    assert isinstance(part, AShare)
    if part.shape != result.shape:
        raise ValueError(f"own total of {party} has shape {part.shape}, not {result.shape}")
    return result + part
