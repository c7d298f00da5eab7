"""Plan a query over a UNION ALL of several parties' tables (``sql/union.py``).

Each branch is planned as the one-party query ``sql.union.union_branches`` writes for it,
through every rewrite pass (so its local SQL bounds rows per person and clamps values
exactly as any one-party query does); the union's plan (``mode = "union"``) keeps these
branch plans and, per aggregate, the sum over the branches, released with one noise on
shares like the secure path's.

Sensitivity: one person may be in every branch, and removing them changes each branch's
cell vector by at most that branch's own sensitivity (its ``max_rows_per_unit`` times the
argument's clamp bound, in L1 and in L2), so the sum of the branch vectors changes by at
most the sum of those (triangle inequality), in the union's fixed point (the largest of the
branches' decimals; a branch with fewer is scaled up). The ring check is the same argument
for values: ``|cell| <= MAX_UNITS * sum over branches of rows x per-row bound``, plus the
noise's bound, below 2^62.

Quantiles, MIN and MAX: one histogram whose buckets every branch shares (``_common_ranges``
chooses the hull of the branches' bounds, ``sql.union`` writes it into each branch, the plan
checks the buckets agree); a row is in one bucket, so the buckets are one vector-valued count
(``AggregateSpec.family``) with the summed per-person bound, one noise plan and one share of
the budget, as ``attach_noise`` gives a one-party histogram. VAR/STDDEV are their moments.

Group cells: a GROUP BY column of the union needs a public domain in every branch (declared
values or a derived one); the union's domain is their union, in first-seen order, and each
branch's cells are placed into it (``union_cells``); private keys are refused.

>>> from tests.sql_fixtures import federation
>>> from veilql.engine.rewrite import compile_plan
>>> plan = compile_plan("SELECT COUNT(*) AS n FROM (SELECT customer_id FROM bank.loans "
...                     "UNION ALL SELECT customer_id FROM insurer.policies) AS u",
...                     federation(), epsilon=1.0)
>>> plan.mode, [b.parties for b in plan.branches], plan.aggregates[0].l1
('union', [('bank',), ('insurer',)], 4)
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from fractions import Fraction
from itertools import product

from veilql.engine.dp.account import Demand, allocate
from veilql.engine.dp.calibrate import NoisePlan, exact_amount, split_budget
from veilql.engine.dp.central import MAX_DISTANCE
from veilql.engine.dp.ring import MAX_UNITS, SAFE_RANGE, noise_bound
from veilql.engine.plan.nodes import AggregateSpec, GroupKey, Plan
from veilql.engine.rewrite.check_ranges import _per_row
from veilql.engine.sql.parse import ParsedQuery
from veilql.engine.sql.union import HINT, probe, union_branches
from veilql.errors import QueryError, UnsupportedError
from veilql.policies.model import Federation


def plan_union(parsed: ParsedQuery, federation: Federation, epsilon: float, delta: float,
               mechanism: str, compile_branch) -> Plan:
    """The union's plan: each branch planned by ``compile_branch(sql)`` (the ordinary
    one-party pipeline at the query's epsilon), summed, noised on shares."""
    keys, probed = probe(parsed)
    widen = _common_ranges(keys, union_branches(probed), compile_branch) if keys else None
    branches = union_branches(parsed, widen)
    for b in branches:
        table = federation.party(b.party)
        policy = table.tables.get(b.table) if table is not None else None
        if policy is not None and not policy.privacy_unit:
            raise UnsupportedError(f"{b.party}.{b.table} has no privacy unit (a dimension "
                                   "table) and cannot be a branch of a UNION ALL", HINT)
    plans = tuple(compile_branch(b.sql) for b in branches)
    first = plans[0]
    for b, p in zip(branches, plans, strict=True):
        if p.mode != "local":
            raise UnsupportedError(f"the branch over {b.party}.{b.table} reads more than one "
                                   "party", HINT)
        if any(s.dimensions or s.per_unit or any(s.semi) for s in p.steps):
            raise UnsupportedError(f"the branch over {b.party}.{b.table} needs a dimension "
                                   "table, a semi-join or a per-person table", HINT)
        if any(g.private for g in p.groups):
            g = next(g for g in p.groups if g.private)
            raise UnsupportedError(
                f"GROUP BY {g.output} over a UNION ALL needs a public domain in every branch, "
                f"and {b.party}.{b.table} has none for it (its keys would be chosen privately)",
                f"declare values = [...] for it in policies/{b.party}.toml")
        if any(o.kind == "count_distinct" or o.stat == "distinct" for o in
               (*p.outputs, *p.hidden)):
            raise UnsupportedError("COUNT(DISTINCT ...) does not add up over a UNION ALL",
                                   HINT)
        if [o.buckets for o in (*p.outputs, *p.hidden)] != \
                [o.buckets for o in (*first.outputs, *first.hidden)]:
            raise UnsupportedError(  # _common_ranges should have made them equal
                f"the branch over {b.party}.{b.table} buckets a quantile differently than the "
                "first, so their histograms do not add up", HINT)
        if ([a.name for a in p.aggregates] != [a.name for a in first.aggregates]
                or [(o.name, o.kind) for o in p.outputs] !=
                [(o.name, o.kind) for o in first.outputs]
                or [a.kind for a in p.aggregates] != [a.kind for a in first.aggregates]):
            raise UnsupportedError(
                f"the branch over {b.party}.{b.table} computes different aggregates than the "
                "first (e.g. COUNT(col) of a column that can be NULL in one branch only)",
                "make the branches' columns alike")
    groups = _groups(plans)
    compute = federation.party_names[:3]
    if len(compute) < 3:
        raise UnsupportedError(
            "a query across parties needs three compute parties, and the federation has "
            f"{len(compute)}", "add a helper party to federation.toml")
    cells = 1
    for g in groups:
        cells *= len(g.domain or ())
    aggregates = _noised(_summed(plans), plans, epsilon, delta, mechanism, cells)
    charged = tuple(dict.fromkeys(p.steps[0].party for p in plans))
    plan = replace(
        first, sql=parsed.sql, mode="union", compute=compute,
        steps=tuple(p.steps[0] for p in plans), groups=groups, aggregates=aggregates,
        joins=(), cross=None, threshold=None, charged=charged, branches=plans,
        # a histogram's buckets share one noise plan and pay once (its head)
        epsilon=sum((a.noise.epsilon for a in aggregates if _head(a)), Fraction(0)),  # type: ignore[union-attr]
        delta=sum((a.noise.delta for a in aggregates if _head(a)), Fraction(0)),  # type: ignore[union-attr]
        notes=())
    _check_ring(plan, epsilon)
    return plan


def _head(agg: AggregateSpec) -> bool:
    """True unless ``agg`` is a histogram's bucket after its first (``family``)."""
    return not agg.family or agg.family == agg.name


def _common_ranges(keys: list[str], probes: list, compile_branch
                   ) -> dict[str, tuple[str, ...]]:
    """Per quantile argument, the literals whose hull is the common range: the lowest of
    the branches' lows, the highest of their highs, in the most digits any branch has
    (plus, when that is more than the ends show, a value between them with all of those
    digits, so the argument's fixed point is the union's). Each branch's own bounds lie
    inside it, so clamping a branch to its own bounds keeps its values in the common
    buckets, which ``histogram_buckets`` derives from this range as for one column."""
    plans = [compile_branch(b.sql) for b in probes]
    out = {}
    for i, key in enumerate(keys):
        buckets = [p.outputs[i].buckets for p in plans]
        if any(b is None or b.values is not None for b in buckets):
            raise UnsupportedError(f"the quantile of {key} over the UNION ALL has no bounds "
                                   "in every branch", HINT)
        digits = max(b.decimals for b in buckets)
        unit = Decimal(1).scaleb(-digits)
        lo = min(Decimal(repr(b.lowest(0))) for b in buckets).quantize(unit)
        hi = max(Decimal(repr(b.highest(b.count - 1))) for b in buckets).quantize(unit)
        literals = [str(lo), str(hi)]
        if digits > 0:  # a value with exactly ``digits`` digits: lo + 1 or 2 units
            inner = next(lo + k * unit for k in (1, 2) if (lo / unit + k) % 10 != 0)
            if inner > hi:
                raise UnsupportedError(f"the quantile of {key} over the UNION ALL spans "
                                       "less than two steps of its fixed point", HINT)
            literals.append(str(inner))
        out[key] = tuple(literals)
    return out


def _groups(plans: tuple[Plan, ...]) -> tuple[GroupKey, ...]:
    """The union's group keys: per position, the union of the branches' public domains."""
    out = []
    for k, g in enumerate(plans[0].groups):
        values: dict[object, None] = {}
        kinds = set()
        for p in plans:
            if len(p.groups) != len(plans[0].groups):
                raise UnsupportedError("the branches group by different numbers of columns",
                                       HINT)
            for v in p.groups[k].domain or ():
                if v is not None:  # NULL (a nullable column, a CASE without ELSE): any type
                    kinds.add("text" if isinstance(v, str) else "number")
                values.setdefault(v, None)
        if len(kinds) > 1:
            raise UnsupportedError(f"GROUP BY {g.output}: the branches' values are of "
                                   "different types (text and numbers)", HINT)
        # NULL last, as in each branch's own domain; a branch without NULL in its domain
        # (not nullable) has no NULL cell, so its NULL rows stay uncounted
        domain = tuple(v for v in values if v is not None)
        out.append(replace(g, domain=domain + ((None,) if None in values else ())))
    return tuple(out)


def union_cells(plan: Plan, branch: Plan) -> list[int]:
    """For each of ``branch``'s cells (row-major over its domains), the union's cell."""
    index = [{v: i for i, v in enumerate(g.domain or ())} for g in plan.groups]
    sizes = [len(g.domain or ()) for g in plan.groups]
    out = []
    for combo in product(*(g.domain or () for g in branch.groups)):
        cell = 0
        for k, v in enumerate(combo):
            cell = cell * sizes[k] + index[k][v]
        out.append(cell)
    return out or [0]


def _summed(plans: tuple[Plan, ...]) -> tuple[AggregateSpec, ...]:
    """Each aggregate of the union: the branches' in the largest of their decimals, with
    the sum of their sensitivities (the module docstring)."""
    out = []
    for i, agg in enumerate(plans[0].aggregates):
        parts = [p.aggregates[i] for p in plans]
        decimals = max(a.decimals for a in parts)
        l1 = sum(a.l1 * 10 ** (decimals - a.decimals) for a in parts)
        l2 = sum(a.l2 * 10 ** (decimals - a.decimals) for a in parts)
        out.append(replace(agg, decimals=decimals, bound=max(a.bound for a in parts),
                           l1=l1, l2=l2, noise=None,
                           terms=tuple(t for a in parts for t in a.terms)))
    return tuple(out)


def _noised(aggs: tuple[AggregateSpec, ...], plans: tuple[Plan, ...], epsilon: float,
            delta: float, mechanism: str, cells: int) -> tuple[AggregateSpec, ...]:
    """Noise plans for the union's aggregates, the budget split over them as
    ``attach_noise`` splits it across parties (noise sampled on shares where it fits)."""
    eps_q, delta_q = exact_amount(epsilon, "epsilon"), exact_amount(delta, "delta")
    # A histogram's buckets are one vector-valued count (a row is in one bucket, in every
    # branch): one share of the budget and one noise plan, as ``attach_noise`` gives them.
    heads = [a for a in aggs if _head(a)]
    size = {a.name: sum(1 for b in aggs if b.family == a.name) or 1 for a in heads}
    eps_each, delta_each = split_budget(eps_q, delta_q, len(heads))[0]
    noises = allocate([Demand(a.l1, a.l2, max(cells, 1) * size[a.name]) for a in heads],
                      eps_each * len(heads), delta_each * len(heads), mechanism, local=False,
                      query_epsilon=eps_q, max_distance=MAX_DISTANCE / len(heads))
    shared = {a.name: n for a, n in zip(heads, noises, strict=True)}
    return tuple(replace(a, noise=shared[a.family if not _head(a) else a.name])
                 for a in aggs)


def _check_ring(plan: Plan, epsilon: float) -> None:
    """Refuse unless every released word provably stays below 2^62 (``check_ranges``'s
    argument, summed over the branches)."""
    for i, agg in enumerate(plan.aggregates):
        value = 0
        for b in plan.branches:
            part = b.aggregates[i]
            per_row = _per_row(b, part)  # the bound check_ranges uses
            value += MAX_UNITS * b.steps[0].slots * per_row * 10 ** (agg.decimals - part.decimals)
        assert isinstance(agg.noise, NoisePlan)
        noise = noise_bound(agg.noise)
        if value + noise >= SAFE_RANGE:
            raise QueryError(
                f"aggregate {agg.output} over the UNION ALL is not safe to compute at epsilon "
                f"{epsilon:g}: its largest true value ({value:.3g} in fixed point, for up to "
                f"2^33 people in every branch) plus its noise (up to {noise:.3g}) could reach "
                "2^62, the safe range of the 64-bit ring; the answer would wrap around",
                "raise epsilon, or narrow the bounds of the aggregated columns")
