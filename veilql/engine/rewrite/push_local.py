"""Push everything that touches one party down to that party as plain SQL expressions.

Each party gets one local step: its tables (joined locally on the unit key), a weight
column that folds in every conjunct of WHERE touching only its tables, the index of each
of its GROUP BY columns in the public domain, and its part of every aggregate argument.
Cross-party conjuncts are left to ``place_secure``.

Outputs that release the same quantity share one noisy aggregate: ``AVG(x)`` beside
``SUM(x)`` reuses its sum, an AVG whose denominator is the row count (an argument spanning
parties) reuses ``COUNT(*)``, and several such AVGs share one count. Each shared aggregate is
released once and the AVG is post-processing of it, so the budget is split over fewer
aggregates (``attach_noise``). (The denominator of an AVG of one party's expression counts its
non-NULL rows, which differs from ``COUNT(*)`` when the column has NULLs, so it is shared only
with AVGs of the same expression.)

>>> from tests.sql_fixtures import federation
>>> from veilql.engine.rewrite import compile_plan
>>> plan = compile_plan("SELECT region, COUNT(*) FROM bank.customers GROUP BY region",
...                     federation(), stop_after="push_local")
>>> [c.to_s() for c in plan.step("bank").columns]  # doctest: +NORMALIZE_WHITESPACE
['w (weight) = 1',
 "g0 (group) = CASE WHEN customers.region = 'north' THEN 0 WHEN customers.region = 'south'
   THEN 1 WHEN customers.region = 'east' THEN 2 WHEN customers.region = 'west' THEN 3
   WHEN customers.region = 'central' THEN 4 ELSE -1 END domain ['north', 'south', 'east',
   'west', 'central']"]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import sqlglot
from sqlglot import exp

from veilql.engine.plan.nodes import (
    AggregateSpec,
    Buckets,
    DimensionJoin,
    GroupKey,
    LocalColumn,
    LocalStep,
    MergedKey,
    OutputSpec,
    PerUnitSource,
    Plan,
    Term,
)
from veilql.engine.rewrite import cross_histogram, cross_quotient, histogram
from veilql.engine.rewrite.context import Context
from veilql.engine.rewrite.linear import is_linear, split_linear, split_product
from veilql.engine.sql import groups_across
from veilql.engine.sql.bound import BoundTable, Output, columns_used, parties_in
from veilql.engine.sql.distinct import MAX_BUCKETS, MAX_DISTINCT
from veilql.engine.sql.fixedpoint import Factor, product_decimals
from veilql.engine.sql.functions import (
    clamp_sql,
    float_digits,
    has_float_result,
    value_decimals,
)
from veilql.engine.sql.joins import across_parties
from veilql.engine.sql.outputs import MAX_EXACT
from veilql.engine.sql.typecheck import TypeChecker
from veilql.errors import PolicyError, UnsupportedError

SELECTION = "__selection"  # internal aggregate of partition selection
#: The most rows a dimension table may declare to be sent to another party in a local step.
MAX_SHIPPED_ROWS = 50_000


def push_local(plan: Plan, ctx: Context) -> Plan:
    """Build each party's local step, the group keys, the aggregates and the outputs."""
    bound = ctx.bound
    columns: dict[str, list[LocalColumn]] = {p: [] for p in bound.parties}
    known = _known_operands(ctx)
    for party in bound.parties:
        own = [c for c in bound.conjuncts if parties_in(c, bound) == {party}] + known[party]
        where = " AND ".join(f"({c.sql(dialect='duckdb')})" for c in own) or None
        sql = f"CASE WHEN {where} THEN 1 ELSE 0 END" if where else "1"
        columns[party].append(LocalColumn("w", "weight", sql))

    groups = []
    private = [g for g in bound.group_by if g.private]
    if len(private) > 1:
        raise UnsupportedError(
            "GROUP BY " + ", ".join(g.expr.sql(dialect="duckdb") for g in private) + ": only "
            "one column without a public domain per query is supported",
            "declare values = [...] for all but one of them in the parties' policies",
        )
    # Group keys are identified by their unique names (BoundGroup.name), never by a bare
    # column name: two parties' columns of one name are two keys.
    flat, merged = groups_across.split_merged(bound.group_by)
    for g in flat:  # an expression across parties: its columns' keys, merged on shares
        key = g.expr.sql(dialect="duckdb")
        if g.domain is None:  # private keys: the owner indexes its own values (local.py)
            name = _next_name(columns[g.party], "k")
            columns[g.party].append(LocalColumn(name, "label", key))
            groups.append(GroupKey(g.name, g.party, name, None))
            continue
        name = _next_name(columns[g.party], "g")
        cases = " ".join(
            f"WHEN ({key}) IS NULL THEN {i}" if v is None else
            f"WHEN {key} = {_literal(v)} THEN {i}" for i, v in enumerate(g.domain))
        columns[g.party].append(
            LocalColumn(name, "group", f"CASE {cases} ELSE -1 END", domain=g.domain))
        groups.append(GroupKey(g.name, g.party, name, g.domain))

    aggregates: list[AggregateSpec] = []
    outputs: list[OutputSpec] = []
    # What each aggregate releases -> its name, so equal quantities are noised once.
    released: dict[tuple[str, ...], str] = {}

    def one(key: tuple[str, ...], make: Callable[[], AggregateSpec]) -> str:
        if key not in released:
            agg = make()
            aggregates.append(agg)
            released[key] = agg.name
        return released[key]

    hidden: list[OutputSpec] = []
    histograms: dict[str, tuple[tuple[str, ...], Buckets]] = {}  # expression -> its buckets
    for out in bound.outputs:
        shown = hidden if out.hidden else outputs
        if out.kind == "group":
            assert out.group is not None
            shown.append(OutputSpec(out.name, "group", group=out.group.name))
        elif out.kind == "expr":
            shown.append(OutputSpec(out.name, "expr", post=out.post))
        elif out.kind == "var":
            shown.append(_variance(out, ctx, columns, one))
        elif out.kind == "quantile":
            shown.append(_quantile(out, ctx, columns, histograms, aggregates))
        elif out.truth is not None:  # AVG(condition across parties): TRUE / not NULL rows
            # keyed as COUNT(*) / COUNT(x) FILTER (WHERE c) are: SUM(c) shares the numerator
            rows = (out.expr.sql(dialect="duckdb"),) if out.expr is not None else ()
            names = tuple(one(("count", *rows, *_where(out, c)), lambda out=out, c=c, s=s: _count(
                out, ctx, columns, c, s)) for c, s in (
                    (_both(out.cross, out.truth), ".num"),
                    (_both(out.cross, _known(out.truth)), ".den")))
            shown.append(OutputSpec(out.name, "avg", names))
        elif out.kind in ("count", "count_distinct") and out.expr is not None:
            # COUNT(x), FILTER (WHERE ...): the rows (units) where a 0/1 expression is 1;
            # COUNT(x) is AVG(x)'s denominator, and shares it
            tested = _nonnull_of(out.expr) if out.kind == "count" else None
            key = (("nonnull", tested.sql(dialect="duckdb")) if tested is not None else
                   (out.kind, out.expr.sql(dialect="duckdb"))) + _where(out)
            name = one(key, lambda out=out: replace(
                _sum_aggregate(out, ctx, columns, suffix=""), kind=out.kind,
                cross=out.cross))
            shown.append(OutputSpec(out.name, out.kind, (name,)))
        elif out.kind in ("count", "count_distinct"):
            name = one((out.kind, *_where(out)), lambda out=out: AggregateSpec(
                out.name, out.name, out.kind, (Term(None, None),), cross=out.cross))
            shown.append(OutputSpec(out.name, out.kind, (name,)))
        else:
            assert out.expr is not None
            what = out.expr.sql(dialect="duckdb")
            cross = _not_null_parts(out, ctx)
            names = (one(("sum", what, *_where(out, cross)), lambda out=out, c=cross: replace(
                _sum_aggregate(out, ctx, columns, suffix=".num" if out.kind == "avg" else ""),
                cross=c)),)
            if out.kind == "avg":
                key = (("count",) if len(parties_in(out.expr, ctx.bound)) != 1
                       else ("nonnull", what))
                if not is_linear(out.expr, ctx.party_of):  # a product: its own count
                    key = ("nonnull", what)
                names += (one(key + _where(out, cross), lambda out=out, c=cross: replace(
                    _count_nonnull(out, ctx, columns), cross=c)),)
            shown.append(OutputSpec(out.name, out.kind, names))

    groups_across.check_merged(bound, [(a.name, a.kind) for a in aggregates])
    if private:  # the unit count per cell that decides which private keys are released
        aggregates.append(AggregateSpec(SELECTION, "", "count_distinct", (Term(None, None),)))

    steps = []
    used = columns_used(bound)
    for party in bound.parties:
        tables = [t for t in bound.tables if t.party == party]
        own = [c for c in bound.conjuncts if parties_in(c, bound) == {party}] + known[party]
        steps.append(LocalStep(
            party=party,
            aliases=tuple(t.alias for t in tables),
            tables=tuple(t.table for t in tables),
            units=tuple(t.unit for t in tables),
            max_rows=tuple(1 if t.semi else t.policy.max_rows_per_unit for t in tables),
            columns=tuple(columns[party]),
            where=" AND ".join(c.sql(dialect="duckdb") for c in own) or None,
            semi=tuple(t.semi for t in tables) if any(t.semi for t in tables) else (),
            filters=tuple(t.filter.sql(dialect="duckdb") if t.filter is not None else None
                          for t in tables) if any(t.semi for t in tables) else (),
            dimensions=tuple(_dimension(d, used) for d in bound.dimensions if d.party == party),
            outer=tuple(t.outer for t in tables) if any(t.outer for t in tables) else (),
            per_unit=tuple(_per_unit(t) for t in tables) if any(t.per_unit for t in tables)
            else (),
        ))
    return Plan(
        sql=plan.sql, mode=plan.mode, compute=plan.compute, steps=tuple(steps),
        outputs=tuple(outputs), groups=tuple(groups), aggregates=tuple(aggregates),
        having=bound.having, order_by=bound.order_by, limit=bound.limit,
        epsilon=plan.epsilon, delta=plan.delta, hidden=tuple(hidden),
        merge=tuple(MergedKey(*m) for m in merged),
    )


def _sum_aggregate(
    out: Output, ctx: Context, columns: dict[str, list[LocalColumn]], suffix: str,
    prefix: str = "v",
) -> AggregateSpec:
    """SUM(expr): one clamped fixed-point value column per party owning a part of expr
    (added up; or multiplied, for a product of one factor per party). ``prefix`` names the
    local columns (``v0``, ``v1``...; a histogram's buckets are ``b0``, ``b1``...)."""
    assert out.expr is not None
    if not is_linear(out.expr, ctx.party_of):
        return _product_aggregate(out, ctx, columns, suffix, prefix)
    decimals = _decimals(out.expr, ctx)
    parts = split_linear(out.expr, ctx.party_of)
    constant = parts.pop(None, None)
    if constant is not None:  # fold constants into the first owner's part
        first = next(iter(parts))
        parts[first] = exp.Add(this=parts[first], expression=constant)
    terms = []
    bound_total = 0.0
    for party, part in parts.items():
        lo, hi = _interval(part, ctx)
        bound_total += max(abs(lo), abs(hi))
        name = _next_name(columns[party], prefix)
        columns[party].append(LocalColumn(
            name, "value", part.sql(dialect="duckdb"), decimals=decimals, bounds=(lo, hi)
        ))
        terms.append(Term(party, name))
    return AggregateSpec(out.name + suffix, out.name, "sum", tuple(terms),
                         decimals=decimals, bound=bound_total)


def _product_aggregate(
    out: Output, ctx: Context, columns: dict[str, list[LocalColumn]], suffix: str,
    prefix: str = "v",
) -> AggregateSpec:
    """SUM(a.x * b.y): one factor per party, each clamped to its own bounds and scaled by
    its own digits; the product's digits are their sum."""
    assert out.expr is not None
    factors = split_product(out.expr, ctx.party_of)
    constant = factors.pop(None, None)
    if constant is not None:  # fold a constant factor into the first party's
        first = next(iter(factors))
        factors[first] = exp.Mul(this=exp.Paren(this=constant),
                                 expression=exp.Paren(this=factors[first]))
    terms, total, bound = [], 0, 1.0
    # A floating-point factor's digits depend on the others' bounds (fixedpoint.py).
    sized = {party: _interval(factor, ctx) for party, factor in factors.items()}
    chosen = product_decimals([Factor(
        f"{party}'s factor {factor.sql(dialect='duckdb')}", max(abs(lo), abs(hi)),
        _decimals(factor, ctx), has_float_result(factor),
        tuple(f"{c.table}.{c.name}" for c in factor.find_all(exp.Column)))
        for (party, factor), (lo, hi) in zip(factors.items(), sized.values(), strict=True)],
        _join_rows(ctx), f"{out.kind.upper()}({out.expr.sql(dialect='duckdb')})")
    for (party, factor), digits in zip(factors.items(), chosen, strict=True):
        lo, hi = sized[party]
        total += digits
        bound *= max(abs(lo), abs(hi))
        name = _next_name(columns[party], prefix)
        columns[party].append(LocalColumn(name, "value", factor.sql(dialect="duckdb"),
                                          decimals=digits, bounds=(lo, hi)))
        terms.append(Term(party, name))
    return AggregateSpec(out.name + suffix, out.name, "sum", tuple(terms), decimals=total,
                         bound=bound, product=True)


def _decimals(node: exp.Expression, ctx: Context) -> int:
    """Fixed-point digits of an aggregated value (its value parts' digits; fewer for a
    floating-point value whose bounds would not fit the ring with all of them)."""
    def digits(col: exp.Column) -> int:
        policy = ctx.bound.table(col.table).policy.column(col.name)
        return policy.decimals if policy is not None else 0

    d = value_decimals(node, digits)
    if has_float_result(node):
        lo, hi = _interval(node, ctx)
        d = float_digits(d, max(abs(lo), abs(hi)), _join_rows(ctx))
    return d


def _join_rows(ctx: Context) -> int:
    """The most joined rows one person has: the product of the tables' rows per unit."""
    rows = 1
    for t in ctx.bound.tables:
        rows *= 1 if t.semi else t.policy.max_rows_per_unit
    return rows


def _count_nonnull(
    out: Output, ctx: Context, columns: dict[str, list[LocalColumn]]
) -> AggregateSpec:
    """The denominator of AVG: rows where the argument is not NULL (one party's expression,
    or a product of factors: where every factor is) or all rows (a sum across parties)."""
    assert out.expr is not None
    owners = parties_in(out.expr, ctx.bound)
    if len(owners) > 1 and not is_linear(out.expr, ctx.party_of):
        factors = split_product(out.expr, ctx.party_of)
        factors.pop(None, None)
        terms = []
        for party, factor in factors.items():
            name = _next_name(columns[party], "n")
            sql = f"CASE WHEN ({factor.sql(dialect='duckdb')}) IS NULL THEN 0 ELSE 1 END"
            columns[party].append(LocalColumn(name, "nn", sql))
            terms.append(Term(party, name))
        return AggregateSpec(out.name + ".den", out.name, "sum", tuple(terms), product=True)
    if len(owners) != 1:
        return AggregateSpec(out.name + ".den", out.name, "count", (Term(None, None),))
    party = next(iter(owners))
    name = _next_name(columns[party], "n")
    sql = f"CASE WHEN ({out.expr.sql(dialect='duckdb')}) IS NULL THEN 0 ELSE 1 END"
    columns[party].append(LocalColumn(name, "nn", sql))
    return AggregateSpec(out.name + ".den", out.name, "sum", (Term(party, name),))


def _per_unit(t: BoundTable) -> PerUnitSource | None:
    """The plan's form of a per-person aggregating WITH (``sql/perunit.py``)."""
    b = t.per_unit
    return None if b is None else PerUnitSource(b.max_rows, b.reads, b.items, b.where,
                                               b.inner)


def _dimension(d: BoundTable, used: dict[str, set[str]]) -> DimensionJoin:
    """The dimension table ``d`` in its fact party's local step; refuses one too large to
    send (its declared ``max_rows`` above ``MAX_SHIPPED_ROWS``)."""
    assert d.link is not None and d.policy.max_rows is not None
    fact, fk, key = d.link
    shipped = d.owner != d.party
    if shipped and d.policy.max_rows > MAX_SHIPPED_ROWS:
        raise PolicyError(
            f"dimension table {d.owner}.{d.table} declares max_rows = {d.policy.max_rows}, "
            f"more than the {MAX_SHIPPED_ROWS} rows {d.owner} may send to {d.party} for a "
            "local join", f"join it in a query over {d.owner}'s own tables, or ask "
            f"{d.owner} to split the table")
    columns = (key, *sorted(used[d.alias] - {key}))
    return DimensionJoin(d.alias, d.owner, d.table, key, fact, fk, columns,
                         d.policy.max_rows, shipped)


def _known_operands(ctx: Context) -> dict[str, list[exp.Expression]]:
    """Per party, ``part IS NOT NULL`` for its part of every comparison across parties that
    is a conjunct of WHERE: SQL drops a row whose comparison reads a NULL, and each party's
    part is compared on shares as a number (a NULL would count as 0), so the party drops
    those rows itself (a product's factors, a quotient's parts of ``N`` and ``D`` alike; a
    comparison inside OR or NOT is left to the predicate on shares)."""
    out: dict[str, list[exp.Expression]] = {p: [] for p in ctx.bound.parties}
    seen: set[str] = set()
    for conj in ctx.bound.conjuncts:
        if len(parties_in(conj, ctx.bound)) < 2:
            continue
        node = conj
        while isinstance(node, exp.Paren):
            node = node.this
        if isinstance(node, exp.Between):
            sides = [(node.this, node.args["low"]), (node.args["high"], node.this)]
        elif isinstance(node, exp.EQ | exp.NEQ | exp.GT | exp.GTE | exp.LT | exp.LTE):
            sides = [(node.this, node.expression)]
        else:
            continue
        for left, right in sides:  # a sum's parts, a product's factors, a quotient's N and D
            for party, part in cross_quotient.comparison_parts(left, right, ctx):
                if party is None or not list(part.find_all(exp.Column)):
                    continue
                while isinstance(part, exp.Neg | exp.Paren):  # -x is NULL when x is
                    part = part.this
                test = exp.Not(this=exp.Is(this=exp.Paren(this=part), expression=exp.Null()))
                if test.sql() not in seen:
                    seen.add(test.sql())
                    out[party].append(test)
    return out


def _not_null_parts(out: Output, ctx: Context) -> exp.Expression | None:
    """The aggregate's condition across parties, with, for a sum of several parties' parts
    (``SUM(a.x + b.y)``), every part NOT NULL: SQL adds a row only where the whole
    expression is not NULL, but each party sums its own part with NULL as 0, so a row where
    one part is NULL would still add the others' (and count in AVG's denominator). Each
    ``part IS NOT NULL`` is one party's atom of the predicate on shares (``place_secure``)."""
    assert out.expr is not None
    if len(parties_in(out.expr, ctx.bound)) < 2 or not is_linear(out.expr, ctx.party_of):
        return out.cross
    if any(t.outer for t in ctx.bound.tables):
        if across_parties(ctx.bound.tables):
            return out.cross  # rewrite/outer_join.py refuses a sum over both sides
        raise UnsupportedError(
            f"{out.expr.sql(dialect='duckdb')} adds several parties' columns beside an outer "
            "join: a part NULL for an unmatched row makes the row's sum NULL, which the "
            "parties cannot see on each other's rows here",
            "aggregate each party's part apart, e.g. SUM(a.x) + SUM(b.y), or use inner joins")
    # in party order, so that AVG(a.x + b.y) and AVG(b.y + a.x) share one denominator
    split = split_linear(out.expr, ctx.party_of)
    parts = [split[party] for party in sorted(p for p in split if p is not None)]
    known: exp.Expression | None = None
    for part in parts:
        test = exp.Not(this=exp.Is(this=exp.Paren(this=part.copy()), expression=exp.Null()))
        known = test if known is None else exp.And(this=known, expression=test)
    assert known is not None
    return known if out.cross is None else _both(out.cross, known)


def _where(out: Output, cross: exp.Expression | None = None) -> tuple[str, ...]:
    """The part of an aggregate's key that tells rows apart by a condition across parties."""
    cond = cross if cross is not None else out.cross
    return () if cond is None else ("where", cond.sql(dialect="duckdb"))


def _both(a: exp.Expression | None, b: exp.Expression) -> exp.Expression:
    return b.copy() if a is None else exp.And(this=exp.Paren(this=a.copy()),
                                              expression=exp.Paren(this=b.copy()))


def _known(cond: exp.Expression) -> exp.Expression:
    """``cond IS NOT NULL`` as a condition: it is TRUE or it is FALSE (``place_secure``
    evaluates each side in SQL's three-valued logic, a NULL comparison neither)."""
    return exp.Or(this=exp.Paren(this=cond.copy()),
                  expression=exp.Not(this=exp.Paren(this=cond.copy())))


def _count(out: Output, ctx: Context, columns: dict[str, list[LocalColumn]],
           cross: exp.Expression, suffix: str) -> AggregateSpec:
    """A count of the rows where ``out.expr`` (a one-party 0/1 indicator, or every row
    when None) is 1 and ``cross`` holds on shares."""
    if out.expr is None:
        return AggregateSpec(out.name + suffix, out.name, "count", (Term(None, None),),
                             cross=cross)
    return replace(_sum_aggregate(out, ctx, columns, suffix=suffix), kind="count",
                   cross=cross)


def _nonnull_of(expr: exp.Expression) -> exp.Expression | None:
    """``x`` when ``expr`` is ``CASE WHEN NOT x IS NULL THEN 1 ELSE 0 END`` (COUNT(x))."""
    if not (isinstance(expr, exp.Case) and len(expr.args.get("ifs") or []) == 1):
        return None
    cond = expr.args["ifs"][0].this
    if isinstance(cond, exp.Not) and isinstance(cond.this, exp.Is) and isinstance(
            cond.this.expression, exp.Null):
        return cond.this.this
    return None


def _folded(out: Output, value: exp.Expression) -> exp.Expression:
    """``value`` where the output's FILTER condition holds, else NULL (the binder's form)."""
    if out.filter is None:
        return value
    return exp.Case(ifs=[exp.If(this=out.filter.copy(), true=value)])


def _variance(out: Output, ctx: Context, columns: dict[str, list[LocalColumn]],
              one: Callable[[tuple[str, ...], Callable[[], AggregateSpec]], str]) -> OutputSpec:
    """VAR/STDDEV from three noisy aggregates: the sum of squares, the sum and the count of
    non-NULL rows (the last two shared with SUM(x), AVG(x) and COUNT(x) of the same x)."""
    assert out.expr is not None
    x = _folded(out, out.expr.copy())
    what = x.sql(dialect="duckdb")
    as_sum = replace(out, kind="sum", expr=x)
    total = one(("sum", what), lambda: _sum_aggregate(as_sum, ctx, columns, suffix=".sum"))
    count = one(("nonnull", what), lambda: _count_nonnull(as_sum, ctx, columns))
    square = one(("sumsq", what), lambda: _square_aggregate(out, ctx, columns))
    return OutputSpec(out.name, "var", (square, total, count), stat=out.stat)


def _square_aggregate(out: Output, ctx: Context,
                      columns: dict[str, list[LocalColumn]]) -> AggregateSpec:
    """SUM(x * x) of the clamped x (NULL stays NULL), its bounds by interval arithmetic
    (exact for a square, ``fixedpoint._square``), in as many digits as fit the ring."""
    assert out.expr is not None and out.bounds is not None
    lo, hi = out.bounds
    # in floating point (x * 1e0), so that no integer type can overflow; NULL stays NULL
    floating = exp.Mul(this=exp.Paren(this=out.expr.copy()), expression=exp.Literal.number("1e0"))
    clamped = clamp_sql(floating, lo, hi)
    square = exp.Mul(this=clamped, expression=clamped.copy())
    x = _folded(out, square)
    slo, shi = _interval(square, ctx)
    rows = 1
    for t in ctx.bound.tables:
        rows *= 1 if t.semi else t.policy.max_rows_per_unit
    digits = _square_digits(min(2 * _decimals(out.expr, ctx), 6), max(abs(slo), abs(shi)),
                            rows)
    factors = split_product(x, ctx.party_of)
    factors.pop(None, None)
    owner = next(iter(parties_in(out.expr, ctx.bound)))
    terms, bound = [], 1.0
    for party, factor in factors.items():
        name = _next_name(columns[party], "v")
        if party == owner:
            bounds, d = (slo, shi), digits
        else:  # a FILTER condition at another party: its 0/1 indicator
            bounds, d = _interval(factor, ctx), 0
        bound *= max(abs(bounds[0]), abs(bounds[1]))
        columns[party].append(LocalColumn(name, "value", factor.sql(dialect="duckdb"),
                                          decimals=d, bounds=bounds))
        terms.append(Term(party, name))
    product = len(terms) > 1
    return AggregateSpec(out.name + ".sq", out.name, "sum", tuple(terms), decimals=digits,
                         bound=bound, product=product)


def _square_digits(digits: int, magnitude: float, rows: int) -> int:
    """Fixed-point digits for a sum of squares: as ``float_digits``, but going below 0 when
    the squares are too large for the ring (a square of incomes up to 500,000 is summed in
    units of 10^4). Each square is rounded to a unit of 10^-digits, so VAR_POP is off by at
    most half a unit and VAR_SAMP by at most one, before noise.

    >>> _square_digits(4, 2.5e11, 1), _square_digits(0, 2500.0, 2)
    (-4, 0)
    """
    room = 2.0**62 / 4 / 2.0**33 / max(rows, 1)
    while digits > -18 and magnitude * 10.0**digits >= room:
        digits -= 1
    return digits


def histogram_buckets(lo: float, hi: float, decimals: int, most: int = MAX_BUCKETS
                      ) -> Buckets:
    """The public buckets of a histogram over the declared bounds ``[lo, hi]``.

    The bounds hold ``G = (hi - lo) * 10^decimals + 1`` representable values. With
    ``G <= MAX_BUCKETS``, one bucket per value (quantiles exact up to the noise); else each
    bucket holds ``ceil(G / MAX_BUCKETS)`` consecutive values, so there are at most
    ``MAX_BUCKETS`` buckets of equal width. The rule reads only the policy's bounds and
    digits, so every party derives the same buckets.

    >>> histogram_buckets(0, 50, 0).count, histogram_buckets(18, 100, 0).per
    (51, 2)
    >>> b = histogram_buckets(0, 100000, 2); b.count, b.per
    (64, 156251)
    """
    step = 10.0 ** -decimals
    points = int(round((hi - lo) / step)) + 1
    per = -(-points // most)
    return Buckets(float(lo), decimals, points, per)


def _quantile(out: Output, ctx: Context, columns: dict[str, list[LocalColumn]],
              histograms: dict[str, tuple[tuple[str, ...], Buckets]],
              aggregates: list[AggregateSpec]) -> OutputSpec:
    """A quantile, MIN or MAX: a noisy histogram of the (FILTERed) expression over public
    buckets, one count per bucket, shared by every quantile of the same expression; the
    analyst reads the quantile off the cumulative counts (``engine/quantiles.py``)."""
    assert out.expr is not None and (out.bounds is not None or out.values is not None)
    # COUNT(DISTINCT x) has one bucket per value, so it does not share a quantile's buckets
    # nor does an exact MIN/MAX (one bucket per value) those of a 64-bucket one
    key = ("distinct " if out.stat == "distinct" else "exact " if out.exact else "") + \
        _folded(out, out.expr.copy()).sql(dialect="duckdb")
    if key not in histograms:
        if out.stat != "distinct" and len(parties_in(out.expr, ctx.bound)) > 1:
            histograms[key] = cross_histogram.plan(out, ctx, columns, aggregates)  # on shares
            names, buckets = histograms[key]
            return OutputSpec(out.name, "quantile", names, stat=out.stat, q=out.q,
                              buckets=buckets)
        if out.values is not None:  # a group expression's public values
            buckets = Buckets(0.0, 0, len(out.values), 1, values=out.values)
        else:
            assert out.bounds is not None
            buckets = histogram_buckets(out.bounds[0], out.bounds[1], min(out.decimals, 6),
                                        MAX_DISTINCT if out.stat == "distinct" else
                                        MAX_EXACT if out.exact else MAX_BUCKETS)
        if histogram.exact(out, ctx, buckets):  # one bucket per value, a histogram family
            histograms[key] = (histogram.plan_exact(out, ctx, columns, aggregates, buckets),
                               buckets)
            names, buckets = histograms[key]
            return OutputSpec(out.name, "quantile", names, stat=out.stat, buckets=buckets)
        if histogram.dense(out, ctx, buckets.points):  # one bucket-index column
            # and one count per cell of the distinct values, released as a COUNT
            name = histogram.plan_dense(out, ctx, columns, aggregates, buckets)
            histograms[key] = ((name,), buckets)
            return OutputSpec(out.name, "count", (name,))
        edges = buckets.edges() if out.values is None else []
        family = f"{out.name}.b0"
        names = []
        for b in range(buckets.count):
            tests: list[exp.Expression] = []
            if out.values is not None:
                tests.append(exp.EQ(this=out.expr.copy(),
                                    expression=sqlglot.parse_one(_literal(out.values[b]),
                                                                   dialect="duckdb")))
            if b > 0 and out.values is None:
                tests.append(exp.GTE(this=out.expr.copy(), expression=_decimal(edges[b - 1])))
            if b < buckets.count - 1 and out.values is None:
                tests.append(exp.LT(this=out.expr.copy(), expression=_decimal(edges[b])))
            cond: exp.Expression = (exp.Not(this=exp.Is(this=out.expr.copy(),
                                                          expression=exp.Null()))
                                    if not tests else tests[0])
            for t in tests[1:]:
                cond = exp.And(this=cond, expression=t)
            if out.filter is not None:
                cond = exp.And(this=exp.Paren(this=out.filter.copy()), expression=cond)
            indicator = exp.Case(ifs=[exp.If(this=cond, true=exp.Literal.number(1))],
                                 default=exp.Literal.number(0))
            bucket = replace(out, kind="count", expr=indicator, bounds=(0.0, 1.0),
                             name=f"{out.name}.b{b}")
            agg = replace(_sum_aggregate(bucket, ctx, columns, suffix="", prefix="b"),
                          kind="count", output=out.name, family=family)
            aggregates.append(agg)
            names.append(agg.name)
        histograms[key] = (tuple(names), buckets)
    names, buckets = histograms[key]
    if any(a.buckets and a.name == names[0] for a in aggregates):  # a large COUNT(DISTINCT)
        return OutputSpec(out.name, "count", names)
    return OutputSpec(out.name, "quantile", names, stat=out.stat, q=out.q, buckets=buckets)


def _decimal(text: str) -> exp.Expression:
    """An exact decimal literal (a bucket edge)."""
    lit = exp.Literal.number(text.lstrip("-"))
    return exp.Neg(this=lit) if text.startswith("-") else lit


def _interval(node: exp.Expression, ctx: Context) -> tuple[float, float]:
    """Interval arithmetic over declared bounds (the binder already checked the roles)."""
    num = TypeChecker(ctx.bound).numeric(node)
    return float(num.lo), float(num.hi)


def _literal(v: object) -> str:
    """A SQL literal for a public domain value."""
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, int | float):
        return repr(v)
    return "'" + str(v).replace("'", "''") + "'"


def _next_name(cols: list[LocalColumn], prefix: str) -> str:
    n = sum(1 for c in cols if c.name.startswith(prefix) and c.name[len(prefix):].isdigit())
    return f"{prefix}{n}"
