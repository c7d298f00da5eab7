"""Each party's factors: what it multiplies into every aggregate, computed on its own rows.

An aggregate over the joined rows is a sum over units (and slots) of a product with one
factor per party: the party's weight (its own predicates passed), times the indicator of
its part of the group cell, times the aggregated value when the party owns it. Each party
computes its factors locally in the clear, so only the cross-party products and sums run
on shares. Without a cross-party predicate the slots of a unit are summed locally first
(for COUNT(DISTINCT) they are OR-ed), which leaves one row per unit to share.

Arrays have shape (units, slots, aggregates, cells of this party), int64 in fixed point.
"""

from __future__ import annotations

import numpy as np

from veilql.engine.operators.local import PartyRows
from veilql.engine.plan.nodes import AggregateSpec, GroupKey, Plan


def party_cells(groups: tuple[GroupKey, ...], party: str) -> tuple[GroupKey, ...]:
    """The group keys ``party`` holds, in GROUP BY order."""
    return tuple(g for g in groups if g.party == party)


def group_size(g: GroupKey, rows: PartyRows | None = None) -> int:
    """Size of a group's domain: public, or the owner's private list of keys."""
    if g.domain is not None:
        return len(g.domain)
    if rows is None or g.column not in rows.labels:
        raise ValueError(f"the keys of {g.output} are private to {g.party}")
    return len(rows.labels[g.column])


def cell_count(groups: tuple[GroupKey, ...], rows: PartyRows | None = None) -> int:
    """Number of cells spanned by ``groups`` (1 when there are none)."""
    n = 1
    for g in groups:
        n *= group_size(g, rows)
    return n


def cell_index(rows: PartyRows, groups: tuple[GroupKey, ...]) -> np.ndarray:
    """Mixed-radix cell index of each (unit, slot) over ``groups``; -1 outside the domains.

    >>> from veilql.engine.operators.local import pivot
    >>> rows = pivot({"__unit": np.array([1, 2]), "g0": np.array([1, -1])}, ["g0"], 1)
    >>> cell_index(rows, (GroupKey("r", "bank", "g0", ("a", "b")),)).tolist()
    [[1], [-1]]
    """
    idx = np.zeros(rows.present.shape, dtype=np.int64)
    outside = np.zeros(rows.present.shape, dtype=bool)
    for g in groups:
        col = rows.cols[g.column]
        outside |= col < 0
        idx = idx * group_size(g, rows) + np.maximum(col, 0)
    idx[outside] = -1
    return idx


def factor_kind(agg: AggregateSpec, party: str) -> str:
    """Which of its columns ``party`` multiplies into ``agg``: ``w`` or a value column (its
    term's; for a product, its factor's)."""
    for term in agg.terms:
        if term.party == party and term.column is not None:
            return term.column
    return "w"


def build_factors(
    plan: Plan, party: str, rows: PartyRows, aggregates: tuple[AggregateSpec, ...],
    *, slot_level: bool,
) -> np.ndarray:
    """Factors of ``party`` for ``aggregates``: shape (units, slots or 1, aggs, cells).

    For a SUM with terms at several parties, the factor of a party that owns no term of
    it is its weight; this function is called once per term chain by the caller, which
    passes one aggregate per term (see ``expand_terms``).
    """
    groups = party_cells(plan.groups, party)
    ncell = cell_count(groups, rows)
    cells = cell_index(rows, groups)
    w = rows.cols["w"] * rows.present
    onehot = (cells[..., None] == np.arange(ncell)).astype(np.int64)  # (n, S, C)
    out = np.empty((rows.units, rows.present.shape[1], len(aggregates), ncell), dtype=np.int64)
    for k, agg in enumerate(aggregates):
        kind = factor_kind(agg, party)
        value = w if kind == "w" else w * rows.cols[kind]
        out[:, :, k, :] = value[..., None] * onehot
    if slot_level:
        return out
    distinct = np.array([a.kind == "count_distinct" for a in aggregates])
    summed = out.sum(axis=1, keepdims=True)
    if distinct.any():
        ored = (out > 0).any(axis=1, keepdims=True).astype(np.int64)
        summed[:, :, distinct, :] = ored[:, :, distinct, :]
    return summed


def expand_terms(plan: Plan) -> tuple[tuple[AggregateSpec, ...], list[int]]:
    """One chain per term, and for each the index of its aggregate.

    SUM(a.x + b.y) becomes SUM(a.x) and SUM(b.y) over the same rows, added on shares. A
    product SUM(a.x * b.y) is one chain whose factor is a.x at a and b.y at b (each party
    multiplies its own term into the product; ``factor_kind``).
    """
    chains: list[AggregateSpec] = []
    owner: list[int] = []
    for i, agg in enumerate(plan.aggregates):
        if agg.product:
            chains.append(AggregateSpec(agg.name, agg.output, agg.kind, agg.terms,
                                        product=True))
            owner.append(i)
            continue
        for term in agg.terms:
            chains.append(AggregateSpec(agg.name, agg.output, agg.kind, (term,)))
            owner.append(i)
    return tuple(chains), owner


def combine_plain(factors: list[np.ndarray]) -> np.ndarray:
    """The aggregates in the clear from one or more parties' aligned factors.

    Used by the single-party path, and by tests as the reference for the secure path.
    Returns shape (aggs, cells) in party order of the cell axes.
    """
    n = factors[0].shape[0]
    aggs = factors[0].shape[2]
    acc = factors[0].reshape(n, factors[0].shape[1], aggs, -1)
    for f in factors[1:]:
        # outer product over slots and cells, elementwise over units and aggregates
        s, c = f.shape[1], f.shape[3]
        acc = (acc[:, :, None, :, :, None] * f[:, None, :, :, None, :]).reshape(
            n, acc.shape[1] * s, aggs, acc.shape[3] * c)
    return acc.sum(axis=(0, 1))
