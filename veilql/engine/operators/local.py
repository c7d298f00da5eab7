"""Run a party's local step on its own engine and pivot the result to one row per unit.

The local SQL (see ``rewrite/bound_contributions.py``) returns one row per kept row of
the party's locally joined tables. Here the rows of each unit are laid side by side in
``slots`` (at most the product of ``max_rows_per_unit`` of the party's tables), padded
with absent slots whose columns are all zero, so that every party has exactly one row
per unit and a cross-party join matches units one to one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from veilql.connectors.base import Connector
from veilql.engine.dp.ring import MAX_UNITS
from veilql.engine.plan.nodes import SEED_PLACEHOLDER, LocalStep
from veilql.errors import ProtocolError


@dataclass
class PartyRows:
    """A party's local result: unit keys, and per column an (units, slots) int64 array."""

    keys: np.ndarray
    cols: dict[str, np.ndarray]
    present: np.ndarray  # (units, slots) bool
    labels: dict[str, list[str | None]] = field(default_factory=dict)  # private group keys

    @property
    def units(self) -> int:
        """Number of units (rows after pivoting)."""
        return len(self.keys)


def fetch(step: LocalStep, connector: Connector, seed: str) -> PartyRows:
    """Run ``step``'s SQL with the party's secret ``seed`` (hex) and pivot to slots."""
    if not all(ch in "0123456789abcdef" for ch in seed):
        raise ProtocolError("a party's bounding seed must be hexadecimal")
    data = connector.run_numpy(step.sql.replace(SEED_PLACEHOLDER, seed))
    labels = {}
    for col in step.columns:
        if col.role == "label":  # private group keys: index them; the labels stay here
            data[col.name], labels[col.name] = index_labels(data[col.name])
    rows = pivot(data, [c.name for c in step.columns], step.slots)
    if rows.units > MAX_UNITS:
        # The plan's range analysis (rewrite/check_ranges.py) assumed at most MAX_UNITS
        # people per party; enforce it rather than trust it.
        raise ProtocolError(f"{step.party} holds more than {MAX_UNITS} people in the tables "
                            "of this query, beyond the range the plan was checked for")
    rows.labels = labels
    return rows


def index_labels(values: np.ndarray) -> tuple[np.ndarray, list[str | None]]:
    """Each value's index in the sorted list of distinct values (NULL last), and the list.

    >>> index_labels(np.array(["b", None, "a", "b"], dtype=object))
    (array([1, 2, 0, 1]), ['a', 'b', None])
    """
    distinct = sorted({v for v in values if v is not None})
    labels: list[str | None] = [str(v) for v in distinct]
    if any(v is None for v in values):
        labels.append(None)
    where = {v: i for i, v in enumerate(labels)}
    return np.array([where[None if v is None else str(v)] for v in values],
                    dtype=np.int64), labels


def pivot(data: dict[str, np.ndarray], names: list[str], slots: int) -> PartyRows:
    """Lay each unit's rows side by side (``__unit`` names the unit column).

    >>> rows = pivot({"__unit": np.array([7, 3, 7]), "w": np.array([1, 0, 1])}, ["w"], 2)
    >>> rows.keys.tolist(), rows.cols["w"].tolist(), rows.present.tolist()
    ([3, 7], [[0, 0], [1, 1]], [[True, False], [True, True]])
    """
    units = data["__unit"]
    if units.dtype == object:
        units = units.astype(str)
    keys, inverse = np.unique(units, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    sorted_inv = inverse[order]
    first = np.searchsorted(sorted_inv, sorted_inv, side="left")
    slot = np.arange(len(order)) - first
    if len(slot) and int(slot.max()) >= slots:
        raise ProtocolError(
            f"the local result has {int(slot.max()) + 1} rows for one unit, more than the "
            f"{slots} the plan allows", "this is a bug in contribution bounding; report it",
        )
    n = len(keys)
    present = np.zeros((n, slots), dtype=bool)
    present[sorted_inv, slot] = True
    cols = {}
    for name in names:
        col = np.zeros((n, slots), dtype=np.int64)
        values = np.asarray(data[name])
        if values.dtype == object:  # NULLs from the engine: count them as 0
            values = np.array([0 if v is None else v for v in values])
        col[sorted_inv, slot] = values[order].astype(np.int64)
        cols[name] = col
    return PartyRows(keys, cols, present)
