"""Derive each aggregate's sensitivity from the bounds, and attach its noise.

One person contributes at most ``slots`` rows at each party (``max_rows_per_unit``
multiplied over the party's tables), so at most the product of those across parties to
the joined rows; each row adds at most ``bound`` (in fixed-point units) to a SUM and 1 to
a COUNT. Removing the person changes the vector of group cells by at most that much in
L1 and in L2 (all rows in one cell is the worst case for L2). COUNT(DISTINCT unit) adds at
most 1 per cell the person reaches. The query's (epsilon, delta) is split equally over
its noisy aggregates (an AVG is a sum and a count, shared with equal outputs by
``push_local``), by basic composition. The plan's
cost, ``Plan.epsilon`` and ``Plan.delta``, is the exact ``Fraction`` sum of what the
mechanisms spend, which is what every party's ledger reserves.

Across parties with delta > 0, ``mechanism="auto"`` (or ``"central_laplace"``) may give an
aggregate, and the partition-selection count, one discrete Laplace sampled on shares. Its
distance from the exact law grows with the number of cells, which is not public for a GROUP
BY without public values: it is bounded by ``MAX_UNITS`` (enforced at run time) times the
owner's rows per unit, per such column. The distance of the whole query is kept below 2^-60
(each of k aggregates at most 2^-60 / k) and charged, through the lemma of
``engine/dp/central.py`` at the query's epsilon, inside the aggregate's own share of delta.

>>> from tests.sql_fixtures import federation
>>> from veilql.engine.rewrite import compile_plan
>>> plan = compile_plan("SELECT SUM(amount) FROM bank.loans", federation(), epsilon=1.0)
>>> plan.aggregates[0].l1
30000000
"""

from __future__ import annotations

import math
from dataclasses import replace
from fractions import Fraction

from veilql.engine.dp import calibrate, split_budget
from veilql.engine.dp.account import Demand, allocate
from veilql.engine.dp.accuracy import dlap_sum_upper
from veilql.engine.dp.calibrate import MIN_DELTA, NoisePlan, calibrate_central_laplace, exact_amount
from veilql.engine.dp.central import MAX_DISTANCE
from veilql.engine.dp.ring import MAX_UNITS
from veilql.engine.plan.nodes import AggregateSpec, Plan
from veilql.engine.rewrite.context import Context
from veilql.engine.rewrite.push_local import SELECTION
from veilql.errors import QueryError


def attach_noise(plan: Plan, ctx: Context) -> Plan:
    """Set sensitivities and noise plans; the partition threshold; the cost and who pays."""
    rows = 1
    for step in plan.steps:
        rows *= step.slots
    private = any(g.private for g in plan.groups)
    cells = 1
    for g in plan.groups:
        cells *= len(g.domain) if g.domain is not None else rows
    # Exact amounts throughout (a float is read as its shortest decimal, as in the ledger), so
    # what the plan charges is exactly the sum of what its mechanisms use.
    epsilon_q = exact_amount(ctx.epsilon, "epsilon")
    delta_q = exact_amount(ctx.delta, "delta")
    delta_values = delta_q
    # A histogram's buckets (``AggregateSpec.family``) are one vector-valued count (a row is in
    # one bucket): they take one share of the budget and one noise plan between them.
    heads = [a for a in plan.aggregates if not a.family or a.family == a.name]
    family_size = {a.name: sum(1 for b in plan.aggregates if b.family == a.name) or 1
                   for a in heads}
    if private:
        if delta_q <= 0:
            raise QueryError(
                "GROUP BY a column without a public domain needs delta > 0: which keys appear "
                "is released through a noisy threshold, which fails with a small probability",
                "set delta (e.g. OPTIONS (epsilon = 1, delta = 1e-6) or --delta 1e-6), or "
                "declare the column's values in its party's policy",
            )
        delta_values = delta_q / 2
        parts = 2 * len(heads)
        if delta_values / len(heads) < MIN_DELTA:
            raise QueryError(
                f"delta {float(delta_q):g} leaves {float(delta_q / parts):g} to each aggregate "
                "(half of delta goes to the partition selection's threshold), below "
                f"{float(MIN_DELTA):g}, the smallest positive delta VeilQL accepts",
                f"raise delta to at least {float(MIN_DELTA * parts):g}")
    shares = split_budget(epsilon_q, delta_values, len(heads))
    aggregates = []
    threshold = None
    secure = plan.mode == "secure"
    # Central noise is sampled on shares, so only across parties; in local mode the one party
    # is the curator and adds the exact noise itself.
    mechanism = ctx.mechanism
    if not secure and mechanism == "central_laplace":
        mechanism = "laplace"
    central = dict(cells=cell_bound(plan) if secure else None, query_epsilon=epsilon_q,
                   max_distance=MAX_DISTANCE / len(heads))
    sensitivities = [_sensitivity(agg, rows, cells) for agg in plan.aggregates]
    # The selection count keeps its equal share (its scale sets the threshold); the others
    # pool theirs, and the accountant divides the pool (zCDP for Gaussians, engine/dp/account).
    pooled = [i for i, agg in enumerate(plan.aggregates)
              if agg.name != SELECTION and agg.name in family_size]
    eps_each, delta_each = shares[0]

    def cells_of(agg: AggregateSpec) -> int | None:
        n = central["cells"]
        return None if n is None else n * family_size[agg.name]  # type: ignore[operator]

    values = iter(allocate([Demand(*sensitivities[i], cells_of(plan.aggregates[i]))
                            for i in pooled],
                           eps_each * len(pooled), delta_each * len(pooled), mechanism,
                           local=not secure, query_epsilon=epsilon_q,
                           max_distance=central["max_distance"]) if pooled else [])
    shared: dict[str, NoisePlan] = {}  # a histogram's noise plan, by family
    for agg, (l1, l2) in zip(plan.aggregates, sensitivities, strict=True):
        if agg.name == SELECTION:
            noise = _selection_noise(l1, l2, eps_each, delta_each, mechanism, central)
            threshold = selection_threshold(noise.scale, 1 if not secure else noise.draws,
                                            l1, delta_q / 2)
        elif agg.family and agg.family != agg.name:
            noise = shared[agg.family]
        else:
            noise = next(values)
            shared[agg.name] = noise
        if plan.mode == "local":
            # One party sees its own rows anyway: it alone adds the full noise.
            noise = replace(noise, adders=(0,), party_scale=noise.scale)
        aggregates.append(replace(agg, l1=l1, l2=l2, noise=noise))
    # Charge what the mechanisms spend: a Laplace plan spends no delta even when allowed one.
    charged = [a for a in aggregates if a.name in family_size]  # a histogram pays once
    epsilon = sum((a.noise.epsilon for a in charged), Fraction(0))  # type: ignore[union-attr]
    delta = sum((a.noise.delta for a in charged), Fraction(0))  # type: ignore[union-attr]
    if private:
        delta += delta_q / 2  # the threshold's part
    return replace(plan, aggregates=tuple(aggregates), epsilon=epsilon, delta=delta,
                   charged=ctx.bound.parties, threshold=threshold)


def cell_bound(plan: Plan) -> int:
    """The most cells the plan's aggregates can have: public domains times, per column
    without one, ``MAX_UNITS`` times its owner's rows per unit (each row has one key).

    >>> from tests.sql_fixtures import federation
    >>> from veilql.engine.rewrite import compile_plan
    >>> cell_bound(compile_plan("SELECT region, COUNT(*) FROM bank.customers GROUP BY region",
    ...                         federation(), epsilon=1.0))
    5
    """
    n = 1
    for g in plan.groups:
        n *= len(g.domain) if g.domain is not None else MAX_UNITS * plan.step(g.party).slots
    return n


def _selection_noise(l1: int, l2: float, eps: Fraction, delta: Fraction, mechanism: str,
                     central: dict[str, object]) -> NoisePlan:
    """The partition-selection count's noise: central on shares where it fits (its distance
    charge comes out of its own share of delta), else two distributed Laplace adders."""
    if central["cells"] is not None and mechanism in ("auto", "central_laplace"):
        try:
            return calibrate_central_laplace(l1, l2, eps, delta, **central)  # type: ignore[arg-type]
        except QueryError:
            if mechanism == "central_laplace":
                raise
    return calibrate(l1, l2, eps, 0, "laplace")


def selection_threshold(t: float, adders: int, reach: int, delta: float | Fraction) -> int:
    """Release a cell when its noisy unit count exceeds this.

    A cell that exists only because of one person has true count 1; with the released
    noise Z (the sum of ``adders`` discrete Laplaces of scale t) it passes with
    probability P(Z >= threshold). A person reaches at most ``reach`` cells, so each may
    fail with at most delta / reach (union bound).

    >>> selection_threshold(1.0, 1, 1, 1e-6)
    14
    """
    alpha = exact_amount(delta, "delta") / reach
    bound = float(alpha)
    if Fraction(bound) > alpha:  # never a float above the exact share of delta
        bound = math.nextafter(bound, -math.inf)
    return dlap_sum_upper(t, adders, bound)


def _sensitivity(agg: AggregateSpec, rows: int, cells: int) -> tuple[int, float]:
    """L1 and L2 sensitivity of the cell vector of ``agg``, in fixed-point units."""
    if agg.kind == "count_distinct":
        reach = min(rows, cells)
        return reach, math.sqrt(reach)
    per_row = 1 if agg.kind == "count" else math.ceil(agg.bound * 10**agg.decimals)
    per_row = max(per_row, 1)
    return rows * per_row, float(rows * per_row)
