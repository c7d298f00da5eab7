"""Refuse a plan whose released values could leave the safe range of the 64-bit ring.

Every share, factor, aggregate and noise draw is a word of Z_2^64 read back as a signed
integer, so an answer is right only while it stays below 2^63 in absolute value; beyond, it
wraps around silently (and OpenDP's i64 samplers saturate a draw, so two clamped draws can
cancel and release the exact count). This pass proves, before anything is read or charged,
that every released word stays below ``SAFE_RANGE = 2^62`` (a margin for sums of shares,
the secure comparison of partition selection and post-processing), or refuses the query.

Range analysis, in fixed-point integer units:

- **values**: each party's value column is clamped to the interval that interval arithmetic
  gives from the declared bounds (``push_local``) and scaled by 10^decimals, so one joined
  row adds at most ``per_row`` (the sum over the aggregate's terms of the largest |bound|,
  rounded up; 1 for a count). Weights, group indicators and cross-party predicates are 0/1,
  so no product on shares grows a row beyond that;
- **contributions**: a person has at most ``rows`` joined rows (the product of every
  table's ``max_rows_per_unit``: the join multiplicity), and the number of people is not
  public, so it is bounded by ``MAX_UNITS = 2^33`` (more than there are people);
  ``|true cell| <= MAX_UNITS * rows * per_row``;
- **noise**: ``noise_bound`` (``engine/dp/ring.py``): P(|total noise| > bound) < 2^-64,
  summed over the adders; which also keeps each single draw far from the i64 limits. Noise
  sampled on shares is bounded exactly, ``2^K - 1`` with ``K`` its binary digits;
- **partition selection**: the public threshold is compared with noisy counts on shares,
  so it must stay below 2^62 too;
- **cross-party comparisons**: the sum of the parties' parts, under the declared bounds, in
  fixed point (the operands are not clamped: data outside its declared bounds is the
  owner's responsibility, as documented for comparisons).

Why a pass of its own, after ``attach_noise``: it reads what every earlier pass decided (the
clamping intervals, the slots, the noise plans, the threshold) and changes nothing, so it can
be tested and explained on its own; the suggestion it makes ("raise epsilon to at least X") is
checked by planning the query again at X. Epsilons below ``MIN_EPSILON`` never get here:
``split_budget`` refuses them before any calibration, so planning stays fast.

>>> from tests.sql_fixtures import federation
>>> from veilql.engine.rewrite import compile_plan
>>> compile_plan("SELECT COUNT(*) FROM bank.loans", federation(), epsilon=1e-16).epsilon
Fraction(1, 10000000000000000)
>>> compile_plan("SELECT SUM(amount) FROM bank.loans", federation(), epsilon=1e-10)
Traceback (most recent call last):
...
veilql.errors.QueryError: aggregate sum_amount (SUM) is not safe to compute at epsilon 1e-10: ...
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from fractions import Fraction

from sqlglot import exp

from veilql.engine.dp.calibrate import MAX_EPSILON, MIN_EPSILON, NoisePlan, exact_amount
from veilql.engine.dp.ring import (
    MAX_UNITS,
    SAFE_RANGE,
    central_epsilon_for,
    gaussian_epsilon_for,
    laplace_epsilon_for,
    noise_bound,
    round_up,
)
from veilql.engine.plan.nodes import AggregateSpec, Plan
from veilql.engine.rewrite.attach_noise import attach_noise
from veilql.engine.rewrite.context import Context
from veilql.engine.rewrite.push_local import SELECTION
from veilql.engine.sql.bound import parties_in
from veilql.errors import QueryError

_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)
_RING = "2^62 = 4.6e18, the safe range of the 64-bit ring the parties compute in"


def check_ranges(plan: Plan, ctx: Context) -> Plan:
    """Return ``plan`` unchanged if every released word provably fits 2^62; else refuse."""
    _check_comparisons(ctx)
    problems = [p for p in (_range(plan, agg) for agg in plan.aggregates) if p.over]
    if not problems:
        return plan
    worst = max(problems, key=lambda p: p.value)
    if any(p.value >= SAFE_RANGE - 2 for p in problems):
        raise _too_wide(plan, ctx, worst)
    least = _least_epsilon(plan, ctx, problems)
    p = max(problems, key=lambda q: q.value + q.noise)
    if least is None:
        raise _too_wide(plan, ctx, worst)
    what = _label(plan, p.agg)
    noise = p.agg.noise
    assert isinstance(noise, NoisePlan)
    kind = "discrete Laplace t" if noise.mechanism == "laplace" else "discrete Gaussian sigma"
    if noise.central:
        reach = f"{kind}={noise.scale:.3g} sampled on shares, up to {p.noise:.3g}"
    else:
        reach = (f"{kind}={noise.party_scale:.3g} per adder, up to {p.noise:.3g} with "
                 "probability 1 - 2^-64")
    raise QueryError(
        f"{what} is not safe to compute at epsilon {float(exact_amount(ctx.epsilon)):g}: its "
        f"noise ({reach}) plus its largest true value ({p.value:.3g} in fixed point, "
        f"for up to 2^33 people) could reach {_RING}; the answer would wrap around",
        f"raise epsilon to at least {least:g}")


@dataclass(frozen=True)
class _Range:
    """What one aggregate's cells can reach: largest |true value|, noise bound, threshold."""

    agg: AggregateSpec
    rows: int
    per_row: int
    value: int
    noise: int
    threshold: int

    @property
    def over(self) -> bool:
        return self.value + self.noise >= SAFE_RANGE or self.threshold >= SAFE_RANGE


def _rows(plan: Plan) -> int:
    rows = 1
    for step in plan.steps:
        rows *= step.slots
    return rows


def _per_row(plan: Plan, agg: AggregateSpec) -> int:
    """Largest |value| one joined row adds to a cell of ``agg``, in fixed point."""
    if agg.kind != "sum":
        return 1
    total = 0
    product = 1  # agg.product: one factor per party, multiplied (SUM(a.x * b.y))
    for term in agg.terms:
        col = plan.step(term.party).column(term.column) if term.party and term.column else None
        if col is None or col.bounds is None:  # a 0/1 column (AVG's non-null count)
            total += 1
            continue
        largest = max(abs(Fraction(col.bounds[0])), abs(Fraction(col.bounds[1])))
        scaled = largest * 10**col.decimals
        # ROUND of a double product: allow a relative 2^-50 and one unit of rounding.
        total += math.ceil(scaled * (1 + Fraction(1, 2**50))) + 1
        product *= math.ceil(scaled * (1 + Fraction(1, 2**50))) + 1
    return product if agg.product else total


def _range(plan: Plan, agg: AggregateSpec) -> _Range:
    rows = _rows(plan)
    per_row = _per_row(plan, agg)
    noise = noise_bound(agg.noise) if isinstance(agg.noise, NoisePlan) else 0
    threshold = plan.threshold if agg.name == SELECTION and plan.threshold is not None else 0
    return _Range(agg, rows, per_row, MAX_UNITS * rows * per_row, noise, threshold)


def _fits(plan: Plan, ctx: Context, epsilon: float) -> bool:
    """Would the query, planned again at ``epsilon``, pass this check?"""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            again = attach_noise(plan, replace(ctx, epsilon=epsilon))
    except Exception:  # noqa: BLE001 - e.g. OpenDP's overflow at a huge forced-Gaussian epsilon
        return False  # whatever cannot be planned at ``epsilon`` does not fit there
    return not any(_range(again, agg).over for agg in again.aggregates)


def _least_epsilon(plan: Plan, ctx: Context, problems: list[_Range]) -> float | None:
    """An epsilon (three significant digits) at which the plan fits, checked by re-planning;
    None when none up to MAX_EPSILON does."""
    n = len(plan.aggregates)
    private = any(g.private for g in plan.groups)
    delta_share = float(exact_amount(ctx.delta, "delta") / (2 if private else 1) / n)
    laplace, gaussian, central = [], [], []
    for p in problems:
        noise = p.agg.noise
        assert isinstance(noise, NoisePlan)
        room = SAFE_RANGE - 1 - p.value
        # A central plan has no adders; its distributed fallbacks have two (Laplace) or all
        # parties (Gaussian).
        m = len(noise.adders)
        need = laplace_epsilon_for(p.agg.l1, m or 2, room)
        near = central_epsilon_for(p.agg.l1, room)
        if p.threshold:  # the threshold grows in proportion to the scale t = l1 / epsilon
            grow = float(noise.epsilon) * p.threshold / (SAFE_RANGE - 1) * 1.01
            need = max(need or 0.0, grow)
            near = max(near or 0.0, grow)
        laplace.append(need)
        central.append(near)
        honest = 1 if plan.mode == "local" else noise.parties - 1
        gaussian.append(need if p.agg.name == SELECTION else
                        gaussian_epsilon_for(p.agg.l2, m or noise.parties, honest, room,
                                             delta_share))
    candidates = []
    if ctx.mechanism != "gaussian" and None not in laplace:
        candidates.append(n * max(laplace))  # type: ignore[type-var]
    if ctx.mechanism != "laplace" and None not in gaussian:
        candidates.append(n * max(gaussian))  # type: ignore[type-var]
    if (plan.mode == "secure" and ctx.mechanism in ("auto", "central_laplace")
            and None not in central):
        candidates.append(n * max(central))  # type: ignore[type-var]
    # Each candidate and up to three doublings of it, smallest first: the mechanisms'
    # candidates differ, and a doubled small one must not hide a larger one that fits.
    tries = set()
    for c in candidates:
        eps = round_up(c)
        for _ in range(4):
            tries.add(eps)
            eps = round_up(eps * 2)
    for eps in sorted(tries):
        if eps > float(MAX_EPSILON):
            break
        if eps >= float(MIN_EPSILON) * n and _fits(plan, ctx, eps):
            return eps
    return None


def _label(plan: Plan, agg: AggregateSpec) -> str:
    """How the refusal names an aggregate: its output and SQL function."""
    if agg.name == SELECTION:
        return "the partition-selection count (of the GROUP BY without public keys)"
    kind = next((o.kind for o in plan.outputs if o.name == agg.output), agg.kind)
    fn = {"count": "COUNT", "count_distinct": "COUNT(DISTINCT)", "sum": "SUM",
          "avg": "AVG"}.get(kind, kind.upper())
    return f"aggregate {agg.output} ({fn})"


def _columns_of(ctx: Context, node: exp.Expression | None) -> list[str]:
    """``party.table.column`` of every column in ``node``."""
    if node is None:
        return []
    out = []
    for col in node.find_all(exp.Column):
        table = ctx.bound.table(col.table)
        out.append(f"{table.party}.{table.table}.{col.name}")
    return sorted(set(out))


def _too_wide(plan: Plan, ctx: Context, p: _Range) -> QueryError:
    """The refusal when the values alone (or with any noise at all) leave the range."""
    what = _label(plan, p.agg)
    expr = None
    if p.agg.name != SELECTION:
        expr = next((o.expr for o in ctx.bound.outputs if o.name == p.agg.output), None)
    cols = _columns_of(ctx, expr)
    tables = ", ".join(f"{t.party}.{t.table}" for t in ctx.bound.tables)
    if p.agg.kind == "sum" and cols:
        hint = _narrow(cols)
    else:
        hint = f"lower max_rows_per_unit of {tables}"
    where = (f"beyond {_RING}" if p.value >= SAFE_RANGE else
             f"too close to {_RING} to leave room for its noise at any epsilon up to "
             f"{float(MAX_EPSILON):g}")
    return QueryError(
        f"{what} can reach {p.value:.3g} in fixed point (up to 2^33 people x {p.rows} rows "
        f"each x {p.per_row:.3g} per row), {where}", hint)


def _narrow(cols: list[str]) -> str:
    """The hint that names the columns whose declared bounds are too wide."""
    if len(cols) == 1:
        return (f"narrow the bounds of column {cols[0]} in its party's policy, or drop the "
                "constants that scale it")
    return (f"narrow the bounds of columns {', '.join(cols)} in their parties' policies, or "
            "drop the constants that scale them")


def _interval(node: exp.Expression, ctx: Context) -> tuple[Fraction, Fraction] | None:
    """Exact interval of ``node`` under the declared bounds; None when not bounded."""
    if isinstance(node, exp.Paren):
        return _interval(node.this, ctx)
    if isinstance(node, exp.Column):
        policy = ctx.bound.table(node.table).policy.column(node.name)
        if policy is None or policy.bounds is None:
            return None
        return Fraction(repr(float(policy.bounds[0]))), Fraction(repr(float(policy.bounds[1])))
    if isinstance(node, exp.Literal):
        if node.is_string:
            return None
        v = Fraction(node.this)
        return v, v
    if isinstance(node, exp.Neg):
        inner = _interval(node.this, ctx)
        return None if inner is None else (-inner[1], -inner[0])
    if not isinstance(node, exp.Add | exp.Sub | exp.Mul):
        return None
    a, b = _interval(node.this, ctx), _interval(node.expression, ctx)
    if a is None or b is None:
        return None
    if isinstance(node, exp.Add):
        return a[0] + b[0], a[1] + b[1]
    if isinstance(node, exp.Sub):
        return a[0] - b[1], a[1] - b[0]
    products = [x * y for x in a for y in b]
    return min(products), max(products)


def _check_comparisons(ctx: Context) -> None:
    """Cross-party comparisons run on shares as signed 64-bit differences: bound them."""
    own = [e for o in ctx.bound.outputs for e in (o.cross, o.truth) if e is not None]
    for conj in (*ctx.bound.conjuncts, *own):  # the WHERE's and each aggregate's own
        if len(parties_in(conj, ctx.bound)) < 2:
            continue
        for node in conj.walk():
            if isinstance(node, exp.Between):
                pairs = [(node.this, node.args["low"]), (node.this, node.args["high"])]
            elif isinstance(node, _COMPARISONS):
                pairs = [(node.this, node.expression)]
            else:
                continue
            for left, right in pairs:
                a, b = _interval(left, ctx), _interval(right, ctx)
                if a is None or b is None:
                    continue
                scale = 10 ** ctx.decimals_of(node)
                reach = max(abs(a[0] - b[1]), abs(a[1] - b[0])) * scale
                if reach >= SAFE_RANGE:
                    raise QueryError(
                        f"the comparison {node.sql()} across parties can reach "
                        f"{float(reach):.3g} in fixed point under the declared bounds, beyond "
                        f"{_RING}",
                        _narrow(_columns_of(ctx, node)))
