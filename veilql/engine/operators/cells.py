"""Group cells: their order, their index, and what the owner of private keys releases.

Cells are laid out in mixed radix over the group keys in party order, then GROUP BY order
(``ordered_groups``), the last key varying fastest. Private keys (no public domain) are
indexed in sorted order at their owner (``local.index_labels``), so a cell's place is a
function of the keys alone. Partition selection releases only the cells whose noisy unit
count passes the threshold (``selection_index`` names that count); the owner of the keys
then sends their values for those cells only (``cell_info``).

GROUP BY an expression over several parties' columns (``Plan.merge``): the cells above are
the fine grid of its columns' keys; ``merge_cells`` adds them on shares into the released
(coarse) cells, laid out in mixed radix over ``release_axes`` (the plain keys in the order
above, then each merged key). Each fine cell goes to one coarse cell (``coarse_map``), a
public function of the plan, so the merge is additions of shares, done locally.
"""

from __future__ import annotations

import itertools

import numpy as np

from veilql.engine.mpc.shares import AShare
from veilql.engine.operators import factors as fac
from veilql.engine.operators.local import PartyRows
from veilql.engine.plan.nodes import GroupKey, Plan
from veilql.engine.rewrite.push_local import SELECTION


def selection_index(plan: Plan) -> int:
    """The index of the aggregate partition selection thresholds (its noisy unit count)."""
    return next(i for i, a in enumerate(plan.aggregates) if a.name == SELECTION)


def ordered_groups(plan: Plan) -> list[GroupKey]:
    """Group keys in the order of the cell axes: by party, then GROUP BY order."""
    return [g for p in plan.parties for g in plan.groups if g.party == p]


def cell_info(plan: Plan, rows: PartyRows, cells: np.ndarray) -> dict:
    """At the owner of private group keys: the group values of the released cells only.

    One list of values (in the order of ``ordered_groups``) per released cell, in release
    order. Nothing else leaves: not the number of candidate keys, not a cell's index (a
    key's rank among all keys), so adding a person with a new key changes this message
    only if that key is released. Cells are in index order, and private keys are indexed
    in sorted order (``index_labels``; the owner's occurring cells in sorted mixed-radix
    order, ``factors.sparsify``), so the order is a function of the released labels.
    """
    parties = [p for p in plan.parties if fac.party_cells(plan.groups, p)]
    mine = {p: rows if any(g.private for g in fac.party_cells(plan.groups, p)) else None
            for p in parties}
    sizes = [fac.cell_count(fac.party_cells(plan.groups, p), mine[p]) for p in parties]
    out = []
    for cell in cells.tolist():
        values = []
        for p, digit in zip(parties, decompose(cell, sizes), strict=True):
            groups = fac.party_cells(plan.groups, p)
            own = mine[p]
            dense = int(own.cells[digit]) if own is not None and own.cells is not None else digit
            digits = decompose(dense, [fac.group_size(g, own) for g in groups])
            for g, i in zip(groups, digits, strict=True):
                values.append(rows.labels[g.column][i] if g.private else g.domain[i])  # type: ignore[index]
        out.append(values)
    return {"cells": out}


def decompose(cell: int, sizes: list[int]) -> list[int]:
    """Mixed-radix digits of a cell index (last group varies fastest).

    >>> decompose(7, [2, 4])
    [1, 3]
    """
    digits = []
    for size in reversed(sizes):
        digits.append(cell % size)
        cell //= size
    return digits[::-1]


def release_axes(plan: Plan) -> list[tuple[str, tuple]]:
    """``(output, domain)`` of each axis of the released cells under ``Plan.merge``: the
    group keys that are no merged key's column (party order), then the merged keys."""
    parts = {p for m in plan.merge for p in m.parts}
    axes = [(g.output, tuple(g.domain or ())) for g in ordered_groups(plan)
            if g.output not in parts]
    return axes + [(m.output, m.domain) for m in plan.merge]


def coarse_map(plan: Plan) -> np.ndarray:
    """For each fine cell (``ordered_groups``' mixed radix), its released cell (mixed radix
    over ``release_axes``; tests/test_group_expr_across.py checks it against DuckDB)."""
    ordered = ordered_groups(plan)
    sizes = [len(g.domain or ()) for g in ordered]
    digits = np.indices(sizes).reshape(len(sizes), -1) if sizes else np.zeros((0, 1), int)
    where = {g.output: i for i, g in enumerate(ordered)}
    merged = {m.output: m for m in plan.merge}
    out = np.zeros(digits.shape[1], dtype=np.int64)
    for name, domain in release_axes(plan):
        m = merged.get(name)
        if m is None:
            digit = digits[where[name]]
        else:
            combo = np.zeros_like(out)
            for p in m.parts:
                combo = combo * sizes[where[p]] + digits[where[p]]
            digit = np.asarray(m.index, dtype=np.int64)[combo]
        out = out * len(domain) + digit
    return out


def merge_cells(plan: Plan, x: AShare) -> AShare:
    """Shares of (rows, fine cells) added into (rows, released cells) under ``Plan.merge``
    (``x`` itself without one): a public 0/1 matrix applied to each share, locally."""
    if not plan.merge:
        return x
    target = coarse_map(plan)
    if x.shape[-1] != len(target):
        raise ValueError(f"{x.shape[-1]} cells to merge, the plan has {len(target)}")
    n = 1
    for _, domain in release_axes(plan):
        n *= len(domain)
    a = np.zeros((*x.shape[:-1], n), dtype=np.uint64)
    b = np.zeros_like(a)
    np.add.at(a, (..., target), x.a)  # wraps mod 2^64 as share arithmetic does
    np.add.at(b, (..., target), x.b)
    return AShare(x.party, a, b)


def release_labels(plan: Plan) -> list[dict]:
    """Under ``Plan.merge``: per released cell, the value of every group output."""
    axes = release_axes(plan)
    return [{name: v for (name, _), v in zip(axes, combo, strict=True)}
            for combo in itertools.product(*(d for _, d in axes))]
