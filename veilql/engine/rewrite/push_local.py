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

from sqlglot import exp

from veilql.engine.plan.nodes import (
    AggregateSpec,
    GroupKey,
    LocalColumn,
    LocalStep,
    OutputSpec,
    Plan,
    Term,
)
from veilql.engine.rewrite.context import Context
from veilql.engine.rewrite.linear import split_linear
from veilql.engine.sql.bound import Output, parties_in
from veilql.errors import UnsupportedError

SELECTION = "__selection"  # internal aggregate of partition selection


def push_local(plan: Plan, ctx: Context) -> Plan:
    """Build each party's local step, the group keys, the aggregates and the outputs."""
    bound = ctx.bound
    columns: dict[str, list[LocalColumn]] = {p: [] for p in bound.parties}
    for party in bound.parties:
        own = [c for c in bound.conjuncts if parties_in(c, bound) == {party}]
        where = " AND ".join(f"({c.sql(dialect='duckdb')})" for c in own) or None
        sql = f"CASE WHEN {where} THEN 1 ELSE 0 END" if where else "1"
        columns[party].append(LocalColumn("w", "weight", sql))

    groups = []
    private = [c for c in bound.group_by if c.policy.values is None]
    if len(private) > 1:
        raise UnsupportedError(
            "GROUP BY " + ", ".join(f"{c.alias}.{c.column}" for c in private) + ": only one "
            "column without a public domain per query is supported",
            "declare values = [...] for all but one of them in the parties' policies",
        )
    for col in private:
        name = _next_name(columns[col.party], "k")
        columns[col.party].append(
            LocalColumn(name, "label", f"CAST({col.expr().sql(dialect='duckdb')} AS VARCHAR)"))
    for col in bound.group_by:
        if col.policy.values is None:
            label = next(c.name for c in columns[col.party] if c.role == "label")
            groups.append(GroupKey(col.column, col.party, label, None))
            continue
        name = _next_name(columns[col.party], "g")
        cases = " ".join(
            f"WHEN {col.expr().sql(dialect='duckdb')} = {_literal(v)} THEN {i}"
            for i, v in enumerate(col.policy.values)
        )
        columns[col.party].append(
            LocalColumn(name, "group", f"CASE {cases} ELSE -1 END", domain=col.policy.values)
        )
        groups.append(GroupKey(col.column, col.party, name, col.policy.values))

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

    for out in bound.outputs:
        if out.kind == "group":
            assert out.column is not None
            match = [g for g in groups
                     if g.party == out.column.party and g.output == out.column.column]
            outputs.append(OutputSpec(out.name, "group", group=match[0].output))
        elif out.kind in ("count", "count_distinct"):
            name = one((out.kind,), lambda out=out: AggregateSpec(
                out.name, out.name, out.kind, (Term(None, None),)))
            outputs.append(OutputSpec(out.name, out.kind, (name,)))
        else:
            assert out.expr is not None
            what = out.expr.sql(dialect="duckdb")
            names = (one(("sum", what), lambda out=out: _sum_aggregate(
                out, ctx, columns, suffix=".num" if out.kind == "avg" else "")),)
            if out.kind == "avg":
                key = (("count",) if len(parties_in(out.expr, ctx.bound)) != 1
                       else ("nonnull", what))
                names += (one(key, lambda out=out: _count_nonnull(out, ctx, columns)),)
            outputs.append(OutputSpec(out.name, out.kind, names))

    if private:  # the unit count per cell that decides which private keys are released
        aggregates.append(AggregateSpec(SELECTION, "", "count_distinct", (Term(None, None),)))

    steps = []
    for party in bound.parties:
        tables = [t for t in bound.tables if t.party == party]
        own = [c for c in bound.conjuncts if parties_in(c, bound) == {party}]
        steps.append(LocalStep(
            party=party,
            aliases=tuple(t.alias for t in tables),
            tables=tuple(t.table for t in tables),
            units=tuple(t.unit for t in tables),
            max_rows=tuple(t.policy.max_rows_per_unit for t in tables),
            columns=tuple(columns[party]),
            where=" AND ".join(c.sql(dialect="duckdb") for c in own) or None,
        ))
    return Plan(
        sql=plan.sql, mode=plan.mode, compute=plan.compute, steps=tuple(steps),
        outputs=tuple(outputs), groups=tuple(groups), aggregates=tuple(aggregates),
        having=bound.having, order_by=bound.order_by, limit=bound.limit,
        epsilon=plan.epsilon, delta=plan.delta,
    )


def _sum_aggregate(
    out: Output, ctx: Context, columns: dict[str, list[LocalColumn]], suffix: str
) -> AggregateSpec:
    """SUM(expr): one clamped fixed-point value column per party owning a part of expr."""
    assert out.expr is not None
    decimals = ctx.decimals_of(out.expr)
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
        name = _next_name(columns[party], "v")
        columns[party].append(LocalColumn(
            name, "value", part.sql(dialect="duckdb"), decimals=decimals, bounds=(lo, hi)
        ))
        terms.append(Term(party, name))
    return AggregateSpec(out.name + suffix, out.name, "sum", tuple(terms),
                         decimals=decimals, bound=bound_total)


def _count_nonnull(
    out: Output, ctx: Context, columns: dict[str, list[LocalColumn]]
) -> AggregateSpec:
    """The denominator of AVG: rows where the argument is not NULL (one party) or all rows."""
    assert out.expr is not None
    owners = parties_in(out.expr, ctx.bound)
    if len(owners) != 1:
        return AggregateSpec(out.name + ".den", out.name, "count", (Term(None, None),))
    party = next(iter(owners))
    name = _next_name(columns[party], "n")
    sql = f"CASE WHEN ({out.expr.sql(dialect='duckdb')}) IS NULL THEN 0 ELSE 1 END"
    columns[party].append(LocalColumn(name, "nn", sql))
    return AggregateSpec(out.name + ".den", out.name, "sum", (Term(party, name),))


def _interval(node: exp.Expression, ctx: Context) -> tuple[float, float]:
    """Interval arithmetic over declared bounds (the binder already checked the roles)."""
    if isinstance(node, exp.Paren):
        return _interval(node.this, ctx)
    if isinstance(node, exp.Column):
        policy = ctx.bound.table(node.table).policy.column(node.name)
        assert policy is not None and policy.bounds is not None
        return float(policy.bounds[0]), float(policy.bounds[1])
    if isinstance(node, exp.Literal):
        v = float(node.this)
        return v, v
    if isinstance(node, exp.Neg):
        lo, hi = _interval(node.this, ctx)
        return -hi, -lo
    a, b = _interval(node.this, ctx), _interval(node.expression, ctx)
    if isinstance(node, exp.Add):
        return a[0] + b[0], a[1] + b[1]
    if isinstance(node, exp.Sub):
        return a[0] - b[1], a[1] - b[0]
    if isinstance(node, exp.Mul):
        products = [x * y for x in a for y in b]
        return min(products), max(products)
    raise UnsupportedError(f"cannot bound {node.sql()}", "use +, - and * inside SUM and AVG")


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
