"""Group cells: their order, their index, and what the owner of private keys releases.

Cells are laid out in mixed radix over the group keys in party order, then GROUP BY order
(``ordered_groups``), the last key varying fastest. Private keys (no public domain) are
indexed in sorted order at their owner (``local.index_labels``), so a cell's place is a
function of the keys alone. Partition selection releases only the cells whose noisy unit
count passes the threshold (``selection_index`` names that count); the owner of the keys
then sends their values for those cells only (``cell_info``).
"""

from __future__ import annotations

import numpy as np

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
