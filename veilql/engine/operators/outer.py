"""Outer joins across two parties, at run time (planned in ``rewrite/outer_join.py``).

LEFT (RIGHT: the sides swapped), ``g0`` the optional party ``b``'s factor on a row of NULLs
(``Plan.shift``, one public constant per term chain):

    answer = sum over u in a of F_a(u) * g0 + sum over matched u of F_a(u) * (F_b(u) - g0)

``b`` subtracts ``g0`` from its factors before sharing them (``shift_factors``), so the
existing secure join computes the second term; ``a`` computes the first in the clear from its
own rows (``own_total``: its factors summed over its units, times ``g0``) and secret-shares
it, one word per aggregate and cell, a public length; the compute parties add it on shares
before the noise (``add_own_total``), so it is never released alone.

With further ON conditions (``Plan.cross`` is then their predicate ``P`` on shares,
``rewrite/outer_on.py``) a row ``r`` of ``a`` matches the rows of ``b`` of its unit where
``P`` holds, and adds ``F_a(r) * g0`` only when there is none. No factor is shifted; the
secure sum under ``P`` gives the matched pairs' products, and the compute parties subtract
``g0 * sum of F_a(r)`` over the rows of ``a`` that matched at least one row (``matched``:
``P`` OR-ed over ``b``'s rows, then one inner product with ``a``'s factors).

FULL (``Plan.shift_own``: ``a``'s own NULL-row value ``h0``):

    answer = sum over a of F_a g0 + sum over b of h0 F_b
             + sum over matched u of (F_a - h0)(F_b - g0)  -  h0 g0 * |matched units|

both parties shift and both share their own totals; the last term is public to the
compute parties, who hold the joined table and so know its number of rows. Grouped by one
side's keys, that side's NULL-row value sits in the cell of its keys on NULLs
(``Plan.null_cell``) and the products run over the cells (``null_row``, ``_joint``). With ON
conditions nothing is shifted and ``matched`` is taken out for both sides.
"""

from __future__ import annotations

import numpy as np

from veilql.engine.mpc.protocols.arith import share_from_outside
from veilql.engine.mpc.runtime import Runtime
from veilql.engine.mpc.shares import AShare
from veilql.engine.operators import factors as fac
from veilql.engine.operators.aggregate import expand, or_over_columns
from veilql.engine.operators.join import SharedTable
from veilql.engine.operators.local import PartyRows
from veilql.engine.operators.memory import spans
from veilql.engine.operators.predicate import evaluate
from veilql.engine.plan.nodes import Plan
from veilql.engine.transport.base import Transport

CROSS_WORDS = 16  # words per slot combination a comparison holds at once (secure_mode.py)


def sharers(plan: Plan) -> tuple[str, ...]:
    """The parties that secret-share an own total: the preserved one, both for FULL."""
    if not plan.own_total:
        return ()
    return (plan.own_total, plan.optional) if plan.outer == "FULL" else (plan.own_total,)


def null_row(plan: Plan, party: str) -> np.ndarray:
    """``party``'s factor on a row of NULLs, shape (chains, its cells): its per-chain value
    (``shift`` at the optional party, ``shift_own`` at the other for FULL) in the cell of
    its keys' values on NULLs (``Plan.null_cell``; its only cell without group keys)."""
    values = np.asarray(plan.shift if party == plan.optional else plan.shift_own,
                        dtype=np.int64)
    out = np.zeros((len(values), _cells(plan, party)), dtype=np.int64)
    out[:, plan.null_cell if out.shape[1] > 1 else 0] = values
    return out


def _cells(plan: Plan, party: str) -> int:
    return fac.cell_count(fac.party_cells(plan.groups, party))


def _joint(plan: Plan, parts: dict[str, np.ndarray]) -> np.ndarray:
    """Per chain, the outer product of the parties' (chains, cells) rows in party order:
    the cells of the answer."""
    out: np.ndarray | None = None
    for p in plan.parties:
        x = parts[p]
        out = x if out is None else (out[:, :, None] * x[:, None, :]).reshape(len(x), -1)
    assert out is not None
    return out


def _by_aggregate(plan: Plan, per_chain: np.ndarray) -> np.ndarray:
    _, owner = fac.expand_terms(plan)
    out = np.zeros((len(plan.aggregates), per_chain.shape[1]), dtype=per_chain.dtype)
    for i, agg in owner:
        out[agg] += per_chain[i]
    return out


def shift_factors(plan: Plan, me: str, columns: dict[str, np.ndarray]) -> None:
    """At a party whose factors are shifted (the optional one; both for FULL): its factors
    minus their value on a row of NULLs, per chain (in place; a collapsed factor has one
    chain axis, whose chains all share one shift). Not under ON conditions (``matched``)."""
    if plan.cross is not None:
        return
    if me != plan.optional and not (me == plan.own_total and plan.outer == "FULL"):
        return
    if "F" not in columns:  # values and cells apart (factors.separable): one factor again,
        columns["F"] = columns.pop("V") * columns.pop("H")  # a shape fixed by the plan
    f = columns["F"]
    values = null_row(plan, me)
    if f.shape[2] == 1:
        values = values[:1]
    f -= values[None, None, :, :]


def own_total(plan: Plan, me: str, rows: PartyRows, words: int) -> np.ndarray | None:
    """At a sharing party: per aggregate and cell, its factors summed over all its units
    times the other side's factor on a row of NULLs; ``None`` at any other party."""
    if me not in sharers(plan):
        return None
    chains, _ = fac.expand_terms(plan)
    width = fac.factor_width(plan, me, rows, chains, slot_level=False)
    ncell = fac.cell_count(fac.party_cells(plan.groups, me), rows)
    per_chain = np.zeros((len(chains), ncell), dtype=np.int64)
    step = max(1, words // max(1, width))
    for lo in range(0, rows.units, step):  # in chunks of units: the temporaries stay small
        hi = min(rows.units, lo + step)
        part = PartyRows(rows.keys[lo:hi], {k: v[lo:hi] for k, v in rows.cols.items()},
                         rows.present[lo:hi], rows.labels, rows.cells)
        per_chain += fac.build_factors(plan, me, part, chains, slot_level=False).sum(axis=(0, 1))
    other = next(p for p in plan.parties if p != me)
    return _by_aggregate(plan, _joint(plan, {me: per_chain, other: null_row(plan, other)}))


def shape(plan: Plan) -> tuple[int, int]:
    """The public shape of an own-total sharing: aggregates x the answer's cells (public
    domains only: ``outer_join.py`` refuses private group keys)."""
    return len(plan.aggregates), int(np.prod([_cells(plan, p) for p in plan.parties]))


def send_own_total(transport: Transport, plan: Plan, me: str, vector: np.ndarray | None,
                   qid: str) -> None:
    """A sharing party that does not compute: send shares of its own total."""
    if me in sharers(plan):
        assert vector is not None
        share_from_outside(transport, plan.compute, vector.astype(np.uint64),
                           f"{qid}/outer/{me}")


def add_own_total(rt: Runtime, plan: Plan, qid: str, result: AShare,
                  vector: np.ndarray | None, joined: SharedTable | None = None) -> AShare:
    """At a compute party: ``result`` (the secure sum over the joined rows) plus the shares
    of the own totals (shared here by their party, or received from it), minus what the
    module docstring subtracts: under ON conditions ``matched``, for FULL the public term."""
    me = rt.parties[rt.me]
    for party in sharers(plan):
        if party in plan.compute:
            values = vector.astype(np.uint64) if party == me and vector is not None else None
            part = rt.share(party, values, shape(plan))
        else:
            part = rt.receive_input(party, f"{qid}/outer/{party}", shape(plan))
        assert isinstance(part, AShare)
        if part.shape != result.shape:
            raise ValueError(f"own total of {party} has shape {part.shape}, not {result.shape}")
        result = result + part
    if plan.cross is not None and joined is not None:
        for party in sharers(plan):  # no factor was shifted: take out the matched rows
            result = result - matched(rt, plan, joined, party)
    elif plan.outer == "FULL" and joined is not None:
        both = _by_aggregate(plan, _joint(plan, {p: null_row(plan, p) for p in plan.parties}))
        result = result - both.astype(np.uint64) * np.uint64(joined.n)
    return result


def matched(rt: Runtime, plan: Plan, joined: SharedTable, side: str) -> AShare:
    """Per aggregate and cell, shares of ``side``'s factors summed over its rows that match
    at least one row of the other party under the ON predicate ``plan.cross``, times the
    other party's factor on a row of NULLs (slot-level factors: a predicate on shares). In
    chunks of joined rows: the predicate per slot combination, OR-ed over the other
    party's slots (a tree of products), and one inner product with the factors."""
    keep = plan.parties.index(side)
    other = 1 - keep  # two parties (outer_join.py)
    slots = [plan.step(p).slots for p in plan.parties]
    f = joined.cols[f"{side}.F"]  # (units, slots, chains or 1, cells)
    n, s, k, c = f.shape
    width = (CROSS_WORDS + k * c) * int(np.prod(slots, dtype=np.int64))
    total: AShare | None = None
    for lo, hi in spans(n, rt.chunk_rows(width)):

        def column(party: str, name: str, lo: int = lo, hi: int = hi) -> AShare:
            axes = [1] * len(slots)
            axes[plan.parties.index(party)] = slots[plan.parties.index(party)]
            return expand(joined.cols[f"{party}.{name}"][lo:hi], (hi - lo, *axes),
                          (hi - lo, *slots))

        m = hi - lo
        p = evaluate(rt, plan.cross, column)  # 0/1 per (unit, slot of each party)
        p = AShare(p.party, np.ascontiguousarray(np.moveaxis(p.a, 1 + other, 1)),
                   np.ascontiguousarray(np.moveaxis(p.b, 1 + other, 1)))
        hit = or_over_columns(rt, p.reshape(m, slots[other], -1)).reshape(m, slots[keep])
        hit = expand(hit, (m, s, 1), (m, s, k * c))
        x = f[lo:hi].reshape(m * s, k * c)
        y = hit.reshape(m * s, k * c)
        part = rt.dot(_transposed(x), _transposed(y))  # (chains x cells,)
        total = part if total is None else total + part
    chains, _ = fac.expand_terms(plan)
    rows = [np.zeros((len(chains), c), dtype=np.uint64) for _ in range(2)]
    if total is not None:
        per = total.reshape(k, c)
        for i in range(len(chains)):
            rows[0][i], rows[1][i] = per.a[i if k > 1 else 0], per.b[i if k > 1 else 0]
    name = plan.parties[other]
    null = null_row(plan, name).astype(np.uint64)
    a, b = (_by_aggregate(plan, _joint(plan, {side: r, name: null})) for r in rows)
    return AShare(rt.me, a, b)


def _transposed(x: AShare) -> AShare:
    return AShare(x.party, np.ascontiguousarray(x.a.T), np.ascontiguousarray(x.b.T))
