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

from veilql.engine import postprocess, quantiles
from veilql.engine.dp import ci95, half_width
from veilql.engine.dp.accuracy import avg_ci95_cells
from veilql.engine.plan.nodes import GroupKey, OutputSpec, Plan


@dataclass
class Result:
    """A released answer (CONTRACT.md): columns, rows, accuracy, privacy, budget.

    ``accuracy[col]["ci95"]`` is the half-width of a 95% interval of the noise of a released
    column (``ci95_rows``: one per row, for AVG). ``print(result)`` shows a table with
    ``value ± ci95``, as ``veil query`` does; in a notebook it shows as HTML;
    ``to_pandas()`` keeps the intervals as ``<col>_ci95`` columns; ``plot()`` draws the
    released values with their error bars.
    """

    columns: list[str]
    rows: list[list[Any]]
    accuracy: dict[str, dict[str, Any]] = field(default_factory=dict)
    privacy: dict[str, float] = field(default_factory=dict)
    budget: dict[str, dict[str, float]] = field(default_factory=dict)
    plan: Plan | None = None
    dry_run: bool = False

    #: Said once under every table: what the ``±`` figure is.
    INTERVAL_NOTE = "± is the half-width of a 95% interval of the noise"

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``veil query --format json``."""
        out: dict[str, Any] = {"columns": self.columns, "rows": self.rows,
                               "accuracy": self.accuracy, "privacy": self.privacy,
                               "budget": self.budget}
        if self.dry_run:
            out["dry_run"] = True
        return out

    # -- intervals -------------------------------------------------------------------------
    def ci95(self, column: str, row: int) -> float | None:
        """The 95% half-width of ``column`` in ``row`` (None for a column without noise).

        >>> r = Result(["m"], [[1.0], [2.0]], {"m": {"ci95": 3.0, "ci95_rows": [1.0, 3.0]}})
        >>> r.ci95("m", 0), r.ci95("m", 1)
        (1.0, 3.0)
        """
        acc = self.accuracy.get(column)
        if acc is None:
            return None
        if "ci95_rows" in acc:
            halves = acc["ci95_rows"]
            return halves[row] if row < len(halves) else None
        return acc.get("ci95")

    def noisy_columns(self) -> list[str]:
        """The released (noisy) columns, in output order; the others are group labels."""
        return [c for c in self.columns if c in self.accuracy]

    @staticmethod
    def noisy_text(value: Any, half: float | None) -> tuple[str, str]:
        """A noisy value and its 95% half-width as text, to the precision the noise allows.

        Two significant digits of the interval, and the value to the same decimal place:
        more digits would be noise. Counts stay whole numbers. The one number format of the
        shell, ``veil query``, the notebook HTML and ``print(result)``.

        >>> Result.noisy_text(3101, 3.0), Result.noisy_text(0.08341, 0.01234)
        (('3101', '3'), ('0.083', '0.012'))
        >>> Result.noisy_text(15136246.4, 2468000.0), Result.noisy_text(None, 1.0)
        (('15136246', '2468000'), ('NULL', ''))
        """
        if value is None:
            return "NULL", ""
        if half is None or not math.isfinite(half):
            return (str(value) if not isinstance(value, float) else f"{value:.6g}"), ""
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value), f"{half:.0f}" if half >= 1 else f"{half:.2g}"
        decimals = max(0, min(10, 1 - math.floor(math.log10(half)))) if half > 0 else 6
        return f"{float(value):.{decimals}f}", f"{half:.{decimals}f}"

    def cells(self, *, align: bool = True) -> list[list[Any]]:
        """The rows with every noisy cell as the text ``value ± half`` (group labels as they
        are); with ``align``, the ``±`` signs of a column line up."""
        pairs: list[list[Any]] = []
        for r, row in enumerate(self.rows):
            pairs.append([self.noisy_text(v, self.ci95(c, r)) if c in self.accuracy else v
                          for c, v in zip(self.columns, row, strict=True)])
        for i, name in enumerate(self.columns):
            if name not in self.accuracy:
                continue
            wv = max((len(row[i][0]) for row in pairs), default=0) if align else 0
            wh = max((len(row[i][1]) for row in pairs), default=0) if align else 0
            for row in pairs:
                v, h = row[i]
                row[i] = f"{v.rjust(wv)} ± {h.ljust(wh)}".rstrip() if h else v.rjust(wv)
        return pairs

    def cost_text(self) -> str:
        """``spent epsilon 1, delta 0; remaining: bank 9`` (``would spend`` for a dry run)."""
        verb = "would spend" if self.dry_run else "spent"
        text = (f"{verb} epsilon {self.privacy.get('epsilon', 0.0):g}, "
                f"delta {self.privacy.get('delta', 0.0):g}")
        left = ", ".join(f"{p} {b['epsilon_remaining']:g}" for p, b in self.budget.items()
                         if "epsilon_remaining" in b)
        if left:
            text += f"; epsilon remaining {'before' if self.dry_run else 'after'}: {left}"
        return text

    def caption(self) -> str:
        """``spent ε 1, δ 0; remaining: bank (ε 9, δ 1e-05)``: the note under the HTML table
        (``would spend`` ... ``remaining before`` for a dry run)."""
        verb = "would spend" if self.dry_run else "spent"
        text = (f"{verb} ε {self.privacy.get('epsilon', 0.0):g}, "
                f"δ {self.privacy.get('delta', 0.0):g}")
        left = ", ".join(f"{p} (ε {b['epsilon_remaining']:g}, δ {b['delta_remaining']:g})"
                         for p, b in self.budget.items()
                         if "epsilon_remaining" in b and "delta_remaining" in b)
        if left:
            text += f"; remaining{' before' if self.dry_run else ''}: {left}"
        return text

    # -- display -----------------------------------------------------------------------------
    def __str__(self) -> str:
        """The answer as an aligned text table with ``value ± ci95``, then its cost."""
        if self.dry_run:
            return f"dry run, nothing released: {self.cost_text()}"
        cells = [[self._text_of(v) for v in row] for row in self.cells()]
        widths = [max([len(c), *(len(row[i]) for row in cells)])
                  for i, c in enumerate(self.columns)]
        right = [c in self.accuracy or (bool(self.rows) and all(
            isinstance(r[i], int | float) and not isinstance(r[i], bool) for r in self.rows))
            for i, c in enumerate(self.columns)]

        def line(items: list[str]) -> str:
            return "  ".join(x.rjust(w) if rt else x.ljust(w)
                             for x, w, rt in zip(items, widths, right, strict=True)).rstrip()

        out = [line(list(self.columns)), "  ".join("-" * w for w in widths)]
        out += [line(row) for row in cells]
        n = len(self.rows)
        out.append(f"({n} row{'' if n == 1 else 's'}; {self.cost_text()}"
                   + (f"; {self.INTERVAL_NOTE})" if self.accuracy else ")"))
        return "\n".join(out)

    def _repr_html_(self) -> str:
        """The answer as an HTML table (``value ± ci95``, every text escaped), with its cost
        and the budget left under it: what a notebook shows."""
        import html

        def esc(x: Any) -> str:
            return html.escape(str(x), quote=True)

        head = "".join(f"<th>{esc(c)}</th>" for c in self.columns)
        body = []
        for row in self.cells(align=False):
            tds = "".join(
                f'<td class="veil-num">{esc(self._text_of(v))}</td>' if c in self.accuracy
                else f"<td>{esc(self._text_of(v))}</td>"
                for c, v in zip(self.columns, row, strict=True))
            body.append(f"<tr>{tds}</tr>")
        caption = esc(self.caption())
        if self.dry_run:
            caption = "<b>dry run</b>, nothing released: " + caption
        elif self.accuracy:
            caption += f" ({esc(self.INTERVAL_NOTE)})"
        style = ("<style>.veil-caption{font-size:90%;padding-top:4px}"
                 "table.veil-result td.veil-num{text-align:right;"
                 "font-variant-numeric:tabular-nums}</style>")
        return (f'{style}<div class="veil-output"><table class="veil-result">'
                f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
                f'<div class="veil-caption">{caption}</div></div>')

    def __repr__(self) -> str:
        return f"Result(columns={self.columns}, rows={len(self.rows)})"

    @staticmethod
    def _text_of(value: Any) -> str:
        """A label or formatted cell as text: NULL for None, lowercase booleans."""
        if value is None:
            return "NULL"
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    # -- pandas and plots ----------------------------------------------------------------------
    def to_pandas(self) -> Any:
        """The rows as a pandas DataFrame that keeps the error bars.

        Every released column ``c`` is followed by ``c_ci95``, the half-width of its 95%
        interval in that row; ``.attrs`` holds ``accuracy``, ``privacy``, ``budget`` and
        ``ci95_columns`` (column -> its interval column). Raises ``ImportError`` saying
        what to install when pandas is missing.
        """
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(
                "Result.to_pandas() needs pandas, which is not installed: "
                "pip install pandas (or pip install 'veilql[jupyter]')") from None
        names: list[str] = []
        intervals: dict[str, str] = {}
        for c in self.columns:
            names.append(c)
            if c in self.accuracy:
                extra = f"{c}_ci95"
                while extra in self.columns or extra in names:
                    extra += "_"
                intervals[c] = extra
                names.append(extra)
        data = []
        for r, row in enumerate(self.rows):
            out: list[Any] = []
            for c, v in zip(self.columns, row, strict=True):
                out.append(v)
                if c in intervals:
                    out.append(self.ci95(c, r))
            data.append(out)
        frame = pd.DataFrame(data, columns=names)
        for extra in intervals.values():
            frame[extra] = frame[extra].astype("float64")
        frame.attrs.update(accuracy=self.accuracy, privacy=self.privacy, budget=self.budget,
                           ci95_columns=intervals)
        return frame

    def plot(self, y: str | None = None, x: str | None = None, ax: Any = None) -> Any:
        """Draw the released values of column ``y`` with their 95% error bars (matplotlib).

        ``x`` is a group column (categorical axis; default: the first one, or one bar when
        there is none); ``y`` a released column (default: the first). ``ax``: the axes to
        draw on (default: a new figure, through pyplot). Returns the axes.
        """
        released = self.noisy_columns()
        if not released:
            raise ValueError("this result has no released (noisy) column to plot")
        y = y or released[0]
        if y not in self.accuracy:
            raise ValueError(f"{y!r} is not a released column; choose one of "
                             f"{', '.join(released)}")
        labels = [c for c in self.columns if c not in self.accuracy]
        if x is not None and x not in labels:
            raise ValueError(f"{x!r} is not a group column; choose one of "
                             f"{', '.join(labels) or '(none)'}")
        x = x or (labels[0] if labels else None)
        yi = self.columns.index(y)
        xs = ([str(self._text_of(row[self.columns.index(x)])) for row in self.rows] if x
              else [y] * len(self.rows))
        values = [float("nan") if row[yi] is None else float(row[yi]) for row in self.rows]
        errors = [0.0 if h is None or not math.isfinite(h) else float(h)
                  for h in (self.ci95(y, r) for r in range(len(self.rows)))]
        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(xs) + 2), 3.5))
        positions = list(range(len(xs)))
        ax.bar(positions, values, color="#0072B2", alpha=0.75, width=0.6)
        ax.errorbar(positions, values, yerr=errors, fmt="none", ecolor="#222222",
                    capsize=4, lw=1.2)
        ax.set_xticks(positions, xs)
        ax.set_xlabel(x or "")
        ax.set_ylabel(y)
        eps = self.privacy.get("epsilon")
        ax.set_title(f"{y}: released values with 95% error bars"
                     + (f" (epsilon {eps:g})" if eps is not None else ""), fontsize=10)
        ax.grid(True, axis="y", color="#E5E5E5", lw=0.7)
        ax.set_axisbelow(True)
        return ax


def cell_values(plan: Plan, info: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """For each released cell (party order), the value of every group output.

    ``info`` comes from the owner of private group keys: the group values of each released
    cell, in release order (``operators.cells.cell_info``), and nothing else.
    """
    if plan.merge:  # an expression across parties: its cells, merged on shares
        from veilql.engine.operators.cells import release_labels

        return release_labels(plan)
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
    """Rows, accuracy and post-processing from the released noisy array (aggs, cells).

    SUM over no rows is released as a noisy 0, never NULL (whether a cell has rows is what
    the noise hides); an AVG whose released count is not positive is NULL, and so is an
    expression that divides by zero. Computed outputs (``expr``) get their error bars from
    ``veilql.engine.postprocess``; hidden outputs take part in them and in HAVING and ORDER
    BY, and are then dropped.
    """
    cells = cell_values(plan, info)
    scaled = {}
    for i, agg in enumerate(plan.aggregates):
        values = noisy[i].astype(np.int64)
        scaled[agg.name] = values if agg.decimals == 0 else values / 10**agg.decimals
    specs = list(plan.outputs) + list(plan.hidden)
    columns = [o.name for o in specs]
    rows: list[list[Any]] = []
    row_ci: dict[str, list[float | None]] = {}
    avg_half: dict[str, list[float]] = {}  # AVG error bars, every cell's searched together
    for out in specs:
        if out.kind == "avg":
            num_spec, den_spec = (plan.aggregate(n) for n in out.aggregates)
            avg_half[out.name] = avg_ci95_cells(
                [float(v) * 10**num_spec.decimals for v in scaled[num_spec.name]],
                [float(v) for v in scaled[den_spec.name]], num_spec.noise, den_spec.noise)
    for c, groups in enumerate(cells):
        row: dict[str, Any] = {}
        for out in specs:
            if out.kind == "group":
                row[out.name] = groups[out.group]  # type: ignore[index]
            elif out.kind == "avg":
                num_spec, den_spec = (plan.aggregate(n) for n in out.aggregates)
                num, den = scaled[num_spec.name][c], scaled[den_spec.name][c]
                if den <= 0:
                    row[out.name] = None
                    row_ci.setdefault(out.name, []).append(None)
                else:
                    row[out.name] = float(num) / float(den)
                    half = avg_half[out.name][c] / 10**num_spec.decimals
                    row_ci.setdefault(out.name, []).append(_round(half))
            elif out.kind in ("var", "quantile"):
                value, half = _statistic(plan, out, scaled, c)
                row[out.name] = value
                row_ci.setdefault(out.name, []).append(None if half is None else _round(half))
            elif out.kind != "expr":
                v = scaled[out.aggregates[0]][c]
                row[out.name] = int(v) if isinstance(v, np.integer) else float(v)
        for out in specs:
            if out.kind == "expr" and out.post is not None:
                row[out.name] = postprocess.evaluate(out.post, row)
                if _noisy(plan, out):
                    box = postprocess.interval(out.post, _boxes(plan, out, scaled, c, row))
                    half = postprocess.half_width(row[out.name], box)
                    row_ci.setdefault(out.name, []).append(
                        None if half is None else _round(half))
        rows.append([row[name] for name in columns])
    accuracy: dict[str, dict[str, Any]] = {}
    for out in specs:
        if out.kind == "group" or (out.kind == "expr" and not _noisy(plan, out)):
            continue
        if out.kind in ("avg", "expr", "var", "quantile"):
            halves = [h for h in row_ci.get(out.name, []) if h is not None]
            accuracy[out.name] = {"ci95": max(halves) if halves else None,
                                  "ci95_rows": row_ci.get(out.name, [])}
        else:
            spec = plan.aggregate(out.aggregates[0])
            accuracy[out.name] = {"ci95": _round(ci95(spec.noise) / 10**spec.decimals)}
    rows, accuracy = _post_process(plan, columns, rows, accuracy)
    shown = len(plan.outputs)
    rows = [r[:shown] for r in rows]
    for out in plan.hidden:
        accuracy.pop(out.name, None)
    privacy = {"epsilon": float(plan.epsilon), "delta": float(plan.delta)}
    return Result(columns[:shown], rows, accuracy, privacy, budget, plan)


def _statistic(plan: Plan, out: OutputSpec, scaled: dict[str, Any], cell: int,
               alpha: float = 0.05) -> tuple[float | None, float | None]:
    """A variance or quantile output's released value in one cell, and its error bar at
    level ``1 - alpha`` (``engine/quantiles.py``)."""
    value, box = _statistic_box(plan, out, scaled, cell, alpha)
    return value, postprocess.half_width(value, box)


def _statistic_box(plan: Plan, out: OutputSpec, scaled: dict[str, Any], cell: int,
                   alpha: float) -> tuple[float | None, postprocess.Box | None]:
    """The value of a variance or quantile output in one cell and an interval holding its
    true value with probability at least ``1 - alpha``."""
    specs = [plan.aggregate(n) for n in out.aggregates]
    if out.kind == "var":
        parts = [float(scaled[a.name][cell]) for a in specs]
        value = quantiles.variance(*parts, out.stat)
        level = 1.0 - (1.0 - alpha) ** (1.0 / 3)
        boxes = []
        for a, v in zip(specs, parts, strict=True):
            h = half_width(a.noise, level) / 10**a.decimals  # type: ignore[arg-type]
            boxes.append((v - h, v + h))
        return value, quantiles.variance_range(*boxes, out.stat)
    assert out.buckets is not None
    counts = [float(scaled[a.name][cell]) for a in specs]
    noise = specs[0].noise
    value = quantiles.read_quantile(counts, out.buckets, out.stat, out.q, noise)  # type: ignore[arg-type]
    if value is None:
        return None, None
    box = quantiles.quantile_range(counts, out.buckets, out.stat, out.q, noise,  # type: ignore[arg-type]
                                   alpha)
    return value, None if box is None else (min(box[0], value), max(box[1], value))


def _components(plan: Plan, out: OutputSpec) -> list[str]:
    """The noisy aggregates (by name) a computed output reads."""
    specs = {o.name: o for o in list(plan.outputs) + list(plan.hidden)}
    names: dict[str, None] = {}  # ordered, and linear in a histogram's many buckets
    assert out.post is not None
    for ref in postprocess.references(out.post):
        spec = specs.get(ref)
        if spec is not None and spec.kind not in ("group", "expr"):
            names.update(dict.fromkeys(spec.aggregates))
    return list(names)


def _noisy(plan: Plan, out: OutputSpec) -> bool:
    return out.post is not None and bool(_components(plan, out))


def _boxes(plan: Plan, out: OutputSpec, scaled: dict[str, Any], cell: int,
           row: dict[str, Any]) -> dict[str, postprocess.Box | None]:
    """Per output the expression reads: an interval holding its true value, each noisy
    aggregate at the level that makes all of them hold together with probability 95%."""
    names = _components(plan, out)
    specs = {o.name: o for o in list(plan.outputs) + list(plan.hidden)}
    assert out.post is not None
    refs = postprocess.references(out.post)
    stats = [r for r in refs if specs[r].kind in ("var", "quantile")]
    if stats:  # a statistic's parts may be shared with other outputs: Bonferroni, not 0.95^(1/k)
        plain = {a for r in refs if specs[r].kind not in ("var", "quantile", "group", "expr")
                 for a in specs[r].aggregates}
        alpha = 0.05 / (len(plain) + len(stats))
        names = sorted(plain)
    else:
        alpha = postprocess.level(len(names))
    agg_box: dict[str, postprocess.Box] = {}
    for name in names:
        spec = plan.aggregate(name)
        half = half_width(spec.noise, alpha) / 10**spec.decimals  # type: ignore[arg-type]
        v = float(scaled[name][cell])
        agg_box[name] = (v - half, v + half)
    boxes: dict[str, postprocess.Box | None] = {}
    for ref in refs:
        spec = specs[ref]
        if spec.kind in ("var", "quantile"):
            boxes[ref] = _statistic_box(plan, spec, scaled, cell, alpha)[1]
        elif spec.kind == "avg":
            num, den = (agg_box[n] for n in spec.aggregates)
            boxes[ref] = None if den[0] <= 0 else (
                min(num[0] / den[0], num[0] / den[1]), max(num[1] / den[0], num[1] / den[1]))
        elif spec.kind in ("group", "expr"):
            v = row.get(ref)
            boxes[ref] = (float(v), float(v)) if isinstance(v, int | float) and not \
                isinstance(v, bool) else None
        else:
            boxes[ref] = agg_box[spec.aggregates[0]]
    return boxes


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
