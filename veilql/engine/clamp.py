"""Optional post-processing users expect: released values clamped to the range the truth is in.

Off by default; on per query (``Session.sql(..., clamp=True)``, ``veil query --clamp``,
``%%veil --clamp``) or per session (``veilql.connect(..., clamp=True)``, the shell's
``.clamp on``). Each released column gets the range its true value provably lies in, from
the plan alone (never from the data):

- COUNT, COUNT(x), FILTER counts and COUNT(DISTINCT unit): ``[0, inf)``;
- SUM: ``[0, inf)`` when every row adds at least 0 (each term's clamping interval, with a
  NULL adding 0, starts at or above 0), ``(-inf, 0]`` when every row adds at most 0; no
  range otherwise;
- AVG: the interval one row's value lies in (interval arithmetic over the terms' clamping
  intervals: sum, or product for ``AVG(a.x * b.y)``), widened to 0 when the denominator is
  the row count (rows whose value is NULL then add 0 to the numerator);
- computed expressions and group labels: none (they are left as released).

A value outside its range is moved to the nearest end. That is post-processing of released
values, so it costs no privacy and changes no charge; it biases the estimate towards the
inside of the range (e.g. a true count of 0 is then over-estimated on average). The 95%
interval ``[v - h, v + h]`` of the unclamped value covers the truth, which lies in the range,
so the interval intersected with the range does too; the half-width shown around the clamped
value, ``min(h, largest distance to an end)``, covers that intersection, so the coverage is
kept. ``accuracy[col]`` says so: ``clamped`` (True when the column has a range), ``range``
(``[lo, hi]``, None for an open end) and ``rows_clamped`` (how many values moved); the note
under every table (``Result.INTERVAL_NOTE`` of this result, ``note()``) names the ranges.

HAVING, ORDER BY and LIMIT ran on the released values before clamping, and expressions over
released aggregates are computed from them (each with its own error bar).
"""

from __future__ import annotations

import math
from dataclasses import replace
from fractions import Fraction
from typing import Any

from veilql.engine.plan.nodes import AggregateSpec, OutputSpec, Plan
from veilql.engine.result import Result

Range = tuple[float | None, float | None]


def _term_interval(plan: Plan, agg: AggregateSpec, null_adds_zero: bool) -> list[tuple[
        Fraction, Fraction]]:
    """The clamping interval of each term of ``agg`` (original units); a 0/1 column without
    bounds is [0, 1]. ``null_adds_zero``: widen each to include 0."""
    out = []
    for term in agg.terms:
        if term.party is None or term.column is None:
            lo, hi = Fraction(1), Fraction(1)  # a plain count adds 1 per row
        else:
            col = plan.step(term.party).column(term.column)
            if col.bounds is None:
                lo, hi = Fraction(0), Fraction(1)
            else:
                lo, hi = Fraction(repr(float(col.bounds[0]))), Fraction(repr(float(col.bounds[1])))
        if null_adds_zero:
            lo, hi = min(lo, Fraction(0)), max(hi, Fraction(0))
        out.append((lo, hi))
    return out


def _row_interval(plan: Plan, agg: AggregateSpec, null_adds_zero: bool) -> tuple[
        Fraction, Fraction] | None:
    """The interval one joined row adds to ``agg`` (interval arithmetic over its terms)."""
    parts = _term_interval(plan, agg, null_adds_zero)
    if not parts:
        return None
    lo, hi = parts[0]
    for a, b in parts[1:]:
        if agg.product:
            products = [x * y for x in (lo, hi) for y in (a, b)]
            lo, hi = min(products), max(products)
        else:
            lo, hi = lo + a, hi + b
    return lo, hi


def output_range(plan: Plan, out: OutputSpec) -> Range | None:
    """The range the true value of output ``out`` lies in, or None (module doc).

    >>> from tests.sql_fixtures import federation
    >>> from veilql.engine.rewrite import compile_plan
    >>> plan = compile_plan("SELECT COUNT(*) AS n, AVG(age) AS a, SUM(income) AS s "
    ...                     "FROM bank.customers", federation(), epsilon=1.0)
    >>> [output_range(plan, o) for o in plan.outputs]
    [(0.0, None), (18.0, 100.0), (0.0, None)]
    """
    if out.kind in ("count", "count_distinct"):
        return 0.0, None
    if out.kind == "sum":
        agg = plan.aggregate(out.aggregates[0])
        if agg.kind != "sum":
            return 0.0, None
        row = _row_interval(plan, agg, null_adds_zero=True)
        if row is None:
            return None
        if row[0] >= 0:
            return 0.0, None
        if row[1] <= 0:
            return None, 0.0
        return None
    if out.kind == "avg":
        num, den = (plan.aggregate(n) for n in out.aggregates)
        row = _row_interval(plan, num, null_adds_zero=den.kind == "count" and not any(
            t.column for t in den.terms))
        if row is None:
            return None
        return float(row[0]), float(row[1])
    return None


def _clamp_value(value: Any, rng: Range) -> Any:
    lo, hi = rng
    if value is None or isinstance(value, bool):
        return value
    moved = value
    if lo is not None and value < lo:
        moved = lo
    if hi is not None and value > hi:
        moved = hi
    if isinstance(value, int) and moved is not value:
        moved = int(moved) if float(moved).is_integer() else moved
    return moved


def _half(value: Any, half: Any, rng: Range) -> Any:
    """The half-width around the clamped value: at most the largest distance to an end."""
    lo, hi = rng
    if value is None or lo is None or hi is None:
        return half
    reach = max(float(value) - lo, hi - float(value))
    if half is None or not math.isfinite(half):
        return reach
    return min(half, reach)


def clamp_result(result: Result) -> Result:
    """``result`` with every released column that has a range clamped to it (module doc);
    a dry run, or a result without a plan, is returned as it is.

    >>> from tests.sql_fixtures import federation
    >>> from veilql.engine.rewrite import compile_plan
    >>> plan = compile_plan("SELECT COUNT(*) AS n, AVG(age) AS a FROM bank.customers",
    ...                     federation(), epsilon=1.0)
    >>> r = Result(["n", "a"], [[-3, 140.0]],
    ...            {"n": {"ci95": 4.0}, "a": {"ci95": 50.0, "ci95_rows": [50.0]}},
    ...            {"epsilon": 1.0, "delta": 0.0}, {}, plan)
    >>> c = clamp_result(r)
    >>> c.rows, c.accuracy["n"]["rows_clamped"], c.accuracy["a"]["ci95_rows"]
    ([[0, 100.0]], 1, [50.0])
    """
    if result.dry_run or result.plan is None:
        return result
    plan = result.plan
    specs = {o.name: o for o in plan.outputs}
    rows = [list(r) for r in result.rows]
    accuracy = {c: dict(a) for c, a in result.accuracy.items()}
    ranges: dict[str, Range] = {}
    for i, name in enumerate(result.columns):
        if name not in accuracy:
            continue
        spec = specs.get(name)
        rng = output_range(plan, spec) if spec is not None else None
        acc = accuracy[name]
        acc["clamped"] = rng is not None
        if rng is None:
            continue
        ranges[name] = rng
        moved = 0
        halves = list(acc["ci95_rows"]) if "ci95_rows" in acc else None
        for r, row in enumerate(rows):
            new = _clamp_value(row[i], rng)
            moved += new != row[i]
            row[i] = new
            if halves is not None and r < len(halves):
                halves[r] = _half(new, halves[r], rng)
        if halves is not None:
            acc["ci95_rows"] = halves
            finite = [h for h in halves if h is not None and math.isfinite(h)]
            acc["ci95"] = max(finite) if finite else acc.get("ci95")
        acc["range"] = list(rng)
        acc["rows_clamped"] = moved
    out = replace(result, rows=rows, accuracy=accuracy)
    text = note(ranges)
    if text:
        # print(result), the notebook's HTML and the shell say it under the table
        out.INTERVAL_NOTE = f"{Result.INTERVAL_NOTE}; {text}"  # type: ignore[misc]
    return out


def _fmt(x: float) -> str:
    return f"{x:g}"


def range_text(rng: Range | list[float | None]) -> str:
    """A clamp range as text, for CSV and notes.

    >>> range_text([0.0, None]), range_text((18.0, 100.0)), range_text((None, 0.0))
    ('[0, inf)', '[18, 100]', '(-inf, 0]')
    """
    lo, hi = rng
    return (f"{'(-inf' if lo is None else '[' + _fmt(lo)}, "
            f"{'inf)' if hi is None else _fmt(hi) + ']'}")


def note(ranges: dict[str, Range] | Result) -> str:
    """What was clamped, for the note under a table ('' when nothing was).

    >>> note({"n": (0.0, None), "a": (18.0, 100.0)})
    'clamped (post-processing, biased, interval within the range): n ≥ 0, a in [18, 100]'
    """
    if isinstance(ranges, Result):
        ranges = {c: (a["range"][0], a["range"][1]) for c, a in ranges.accuracy.items()
                  if a.get("clamped") and "range" in a}
    parts = []
    for name, (lo, hi) in ranges.items():
        if lo is not None and hi is not None:
            parts.append(f"{name} in [{_fmt(lo)}, {_fmt(hi)}]")
        elif lo is not None:
            parts.append(f"{name} ≥ {_fmt(lo)}")
        elif hi is not None:
            parts.append(f"{name} ≤ {_fmt(hi)}")
    if not parts:
        return ""
    return "clamped (post-processing, biased, interval within the range): " + ", ".join(parts)
