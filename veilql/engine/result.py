"""What the analyst gets: noisy values decoded into rows, error bars, post-processing.

The released array has one noisy integer per aggregate and group cell (fixed point).
Cells are laid out in party order (see ``operators/aggregate.py``); here they become
rows with the public group values. HAVING, ORDER BY and LIMIT then run on the noisy
values only, in DuckDB, which is post-processing and costs no privacy.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np

from veilql.engine.dp import avg_ci95, ci95
from veilql.engine.plan.nodes import GroupKey, Plan


@dataclass
class Result:
    """A released answer (CONTRACT.md): columns, rows, accuracy, privacy, budget."""

    columns: list[str]
    rows: list[list[Any]]
    accuracy: dict[str, dict[str, Any]] = field(default_factory=dict)
    privacy: dict[str, float] = field(default_factory=dict)
    budget: dict[str, dict[str, float]] = field(default_factory=dict)
    plan: Plan | None = None
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``veil query --format json``."""
        out: dict[str, Any] = {"columns": self.columns, "rows": self.rows,
                               "accuracy": self.accuracy, "privacy": self.privacy,
                               "budget": self.budget}
        if self.dry_run:
            out["dry_run"] = True
        return out

    def to_pandas(self) -> Any:
        """The rows as a pandas DataFrame (pandas must be installed)."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=self.columns)

    def __repr__(self) -> str:
        return f"Result(columns={self.columns}, rows={len(self.rows)})"


def cell_values(plan: Plan, info: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """For each released cell (party order), the value of every group output.

    ``info`` comes from the owner of private group keys: the group values of each released
    cell, in release order (``node.cell_info``), and nothing else.
    """
    ordered: list[GroupKey] = [g for p in plan.parties for g in plan.groups if g.party == p]
    if not ordered:
        return [{}]
    if info is None:
        return [
            {g.output: v for g, v in zip(ordered, combo, strict=True)}
            for combo in itertools.product(*(g.domain for g in ordered))  # type: ignore[misc]
        ]
    return [{g.output: v for g, v in zip(ordered, values, strict=True)}
            for values in info["cells"]]


def build_result(plan: Plan, noisy: np.ndarray, budget: dict[str, dict[str, float]],
                 info: dict[str, Any] | None = None) -> Result:
    """Rows, accuracy and post-processing from the released noisy array (aggs, cells)."""
    cells = cell_values(plan, info)
    scaled = {}
    for i, agg in enumerate(plan.aggregates):
        values = noisy[i].astype(np.int64)
        scaled[agg.name] = values if agg.decimals == 0 else values / 10**agg.decimals
    columns = [o.name for o in plan.outputs]
    rows: list[list[Any]] = []
    avg_ci: dict[str, list[float | None]] = {}
    for c, groups in enumerate(cells):
        row: list[Any] = []
        for out in plan.outputs:
            if out.kind == "group":
                row.append(groups[out.group])  # type: ignore[index]
            elif out.kind == "avg":
                num_spec, den_spec = (plan.aggregate(n) for n in out.aggregates)
                num, den = scaled[num_spec.name][c], scaled[den_spec.name][c]
                if den <= 0:
                    row.append(None)
                    avg_ci.setdefault(out.name, []).append(None)
                else:
                    row.append(float(num) / float(den))
                    half = avg_ci95(float(num) * 10**num_spec.decimals, float(den),
                                    num_spec.noise, den_spec.noise) / 10**num_spec.decimals
                    avg_ci.setdefault(out.name, []).append(_round(half))
            else:
                v = scaled[out.aggregates[0]][c]
                row.append(int(v) if isinstance(v, np.integer) else float(v))
        rows.append(row)
    accuracy: dict[str, dict[str, Any]] = {}
    for out in plan.outputs:
        if out.kind == "group":
            continue
        if out.kind == "avg":
            halves = [h for h in avg_ci.get(out.name, []) if h is not None]
            accuracy[out.name] = {"ci95": max(halves) if halves else None,
                                  "ci95_rows": avg_ci.get(out.name, [])}
        else:
            spec = plan.aggregate(out.aggregates[0])
            accuracy[out.name] = {"ci95": _round(ci95(spec.noise) / 10**spec.decimals)}
    rows, accuracy = _post_process(plan, columns, rows, accuracy)
    privacy = {"epsilon": float(plan.epsilon), "delta": float(plan.delta)}
    return Result(columns, rows, accuracy, privacy, budget, plan)


def _post_process(
    plan: Plan, columns: list[str], rows: list[list[Any]], accuracy: dict[str, dict[str, Any]]
) -> tuple[list[list[Any]], dict[str, dict[str, Any]]]:
    """HAVING, ORDER BY and LIMIT over the noisy rows, in DuckDB."""
    if plan.having is None and not plan.order_by and plan.limit is None:
        return rows, accuracy
    con = duckdb.connect()
    try:
        cols = [f'"{c}"' for c in columns] + ["__row"]
        table = {c: [r[i] for r in rows] for i, c in enumerate(columns)}
        table["__row"] = list(range(len(rows)))
        import pyarrow as pa

        con.register("released", pa.table(table))
        sql = f"SELECT {', '.join(cols)} FROM released"
        if plan.having is not None:
            sql += f" WHERE {plan.having.sql(dialect='duckdb')}"
        if plan.order_by:
            keys = [e.sql(dialect="duckdb") + (" DESC" if d else "") for e, d in plan.order_by]
            sql += " ORDER BY " + ", ".join(keys)
        if plan.limit is not None:
            sql += f" LIMIT {plan.limit}"
        kept = [list(r) for r in con.execute(sql).fetchall()]
    finally:
        con.close()
    order = [r[-1] for r in kept]
    for info in accuracy.values():
        if "ci95_rows" in info:
            info["ci95_rows"] = [info["ci95_rows"][i] for i in order]
    return [r[:-1] for r in kept], accuracy


def _round(x: float) -> float:
    """Error bars to 4 significant digits: more would suggest false precision."""
    if x == 0 or not math.isfinite(x):
        return float(x)
    return float(f"{x:.4g}")
