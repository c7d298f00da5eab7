"""The histogram of an expression across parties: MIN, MAX and quantiles of ``a.x + b.y``.

A quantile of one party's expression is read off a noisy histogram whose bucket tests its
owner evaluates in SQL (``push_local._quantile``). Across parties no one can: the bucket of
a joined row is decided on shares. Bucket ``b`` of the public buckets
(``push_local.histogram_buckets`` over the interval bounds of the expression ``E``, at most
64) counts the joined rows where ``e_{b-1} <= E < e_b`` (no lower test for the first bucket,
no upper test for the last: values outside the bounds fall in the end buckets, as for one
party's histogram). Each bucket is a COUNT with its own condition across parties
(``AggregateSpec.cross``), which ``place_secure._aggregate_predicate`` writes as "sum of
the parties' parts <op> 0" over operand columns, each comparison also needing every part
not NULL: a row where a part is NULL is in no bucket (MIN and MAX skip NULLs, as SQL does).

Cost: one secure comparison per row (and slot combination) per inner edge, not two per
bucket: ``E < e_b`` is the complement of the next bucket's ``E >= e_b`` (the same operand
columns), which ``operators/predicate.evaluate`` takes as ``1 - bit``; then a few products
per bucket (the not-NULL atoms, the two tests, WHERE). A one-party FILTER folds into one
0/1 factor per party, the same for every bucket. The buckets are one family
(``AggregateSpec.family``): one noise plan, the sensitivity of a histogram (a joined row is
in one bucket). A product of one factor per party (``MAX(a.x * b.y)``) is compared the same
way: each party shares its factor in its own digits, the factors are multiplied on shares
once per row (not once per edge) and compared with each scaled edge
(``place_secure._product_comparison``). A quotient ``N / D`` (``D`` one party's, its
bounds on one side of 0) is tested as ``N - e D`` against 0, the scaled operands multiplied
by public integers on shares (``rewrite/cross_quotient.py``); a sum of products is refused
(``sql/statistics.check_across_parties``).

>>> from tests.sql_fixtures import federation
>>> from veilql.engine.rewrite import compile_plan
>>> plan = compile_plan("SELECT MAX(l.amount - p.claims_amount) FROM bank.loans l JOIN "
...     "insurer.policies p ON l.customer_id = p.customer_id", federation(),
...     stop_after="place_secure")
>>> buckets = [a for a in plan.aggregates if a.family]
>>> len(buckets), buckets[1].cross.sql()  # doctest: +NORMALIZE_WHITESPACE
(64, 'bank.o0 + insurer.o0 >= 0 AND bank.a0 = 1 AND insurer.a0 = 1
      AND bank.o1 + insurer.o0 < 0 AND bank.a0 = 1 AND insurer.a0 = 1')
"""

from __future__ import annotations

from dataclasses import replace

from sqlglot import exp

from veilql.engine.dp.ring import SAFE_RANGE
from veilql.engine.plan.nodes import AggregateSpec, Buckets, LocalColumn, Term
from veilql.engine.rewrite import cross_quotient
from veilql.engine.rewrite.context import MAX_DECIMALS, Context
from veilql.engine.rewrite.linear import is_linear, split_linear, split_product
from veilql.engine.sql.bound import Output
from veilql.engine.sql.statistics import is_product, is_quotient
from veilql.errors import QueryError, UnsupportedError


def plan(out: Output, ctx: Context, columns: dict[str, list[LocalColumn]],
         aggregates: list[AggregateSpec]) -> tuple[tuple[str, ...], Buckets]:
    """One COUNT per bucket of ``out.expr`` (several parties' linear expression) with its
    bucket test across parties, appended to ``aggregates``; the names and the buckets."""
    from veilql.engine.rewrite.push_local import _sum_aggregate, histogram_buckets

    expr = out.expr
    assert expr is not None and out.bounds is not None
    text = f"A quantile, MIN or MAX of {expr.sql(dialect='duckdb')}"
    if not is_linear(expr, ctx.party_of) and not is_product(expr, ctx.party_of) and \
            not is_quotient(expr, ctx.party_of):
        raise UnsupportedError(  # the binder refuses it first
            f"{text}: only a sum of the parties' parts, a product of one factor per party "
            "or such a sum divided by one party's expression is bucketed on shares",
            "take it of a.x + b.y, a.x * b.y, a.x / (b.y + 1), or of one party's expression")
    if any(t.outer for t in ctx.bound.tables):
        raise UnsupportedError(
            f"{text} reads several parties' columns beside an outer join: a part NULL for "
            "an unmatched row cannot be told from the data on shares here",
            "use inner joins, or take it of one party's expression")
    # An edge lies half-way between two values (one digit more than the values): at most
    # MAX_DECIMALS digits, so that the operand columns hold it exactly.
    digits = min(out.decimals, MAX_DECIMALS - 1)
    buckets = cross_quotient.buckets(expr, out.bounds, digits, ctx) if is_quotient(
        expr, ctx.party_of) else histogram_buckets(out.bounds[0], out.bounds[1], digits)
    edges = [_number(e) for e in buckets.edges()]
    if edges and not is_quotient(expr, ctx.party_of):  # a quotient's: at each edge
        _check_range(out, ctx, exp.GTE(this=expr.copy(), expression=edges[0].copy()))
    family = f"{out.name}.b0"
    template = AggregateSpec(family, out.name, "count", (Term(None, None),), family=family)
    if out.filter is not None:  # a one-party FILTER: each party's 0/1 factor, every bucket's
        indicator = exp.Case(ifs=[exp.If(this=out.filter.copy(),
                                         true=exp.Literal.number(1))],
                             default=exp.Literal.number(0))
        first = _sum_aggregate(replace(out, kind="count", expr=indicator, bounds=(0.0, 1.0)),
                               ctx, columns, suffix="", prefix="b")
        template = replace(template, terms=first.terms, decimals=first.decimals,
                           bound=first.bound, product=first.product)
    names = []
    for b in range(buckets.count):
        tests: list[exp.Expression] = []
        if b > 0:
            tests.append(exp.GTE(this=expr.copy(), expression=edges[b - 1].copy()))
        if b < buckets.count - 1:
            tests.append(exp.LT(this=expr.copy(), expression=edges[b].copy()))
        if not tests:  # one bucket: every row whose parts are all not NULL
            tests = _not_null(expr, ctx)
        cond = tests[0]
        for t in tests[1:]:
            cond = exp.And(this=cond, expression=t)
        agg = replace(template, name=f"{out.name}.b{b}", cross=cond)
        aggregates.append(agg)
        names.append(agg.name)
    return tuple(names), buckets


def _check_range(out: Output, ctx: Context, test: exp.Expression) -> None:
    """Each bucket test compares ``E - e`` on shares as a signed 64-bit integer, and each
    operand (a party's part, the first with ``-e``) is a BIGINT: under the declared bounds
    they must stay in the ring's safe range, else the query is refused before any charge."""
    from veilql.engine.rewrite.push_local import _interval

    assert out.expr is not None and out.bounds is not None
    edge = max(abs(out.bounds[0]), abs(out.bounds[1]))
    if is_linear(out.expr, ctx.party_of):
        reach = (edge + sum(max(abs(lo), abs(hi)) for lo, hi in (
            _interval(part, ctx) for party, part in split_linear(
                out.expr, ctx.party_of).items() if party is not None))) * \
            10 ** ctx.decimals_of(test)
    else:  # the scaled factors' product, and the scaled edge it is compared with
        reach, digits = 1.0, 0
        for factor in _factors(out.expr, ctx).values():
            lo, hi = _interval(factor, ctx)
            reach *= max(abs(lo), abs(hi)) * 10 ** ctx.decimals_of(factor)
            digits += ctx.decimals_of(factor)
        reach += (edge + 1) * 10 ** digits
    if reach >= SAFE_RANGE:
        raise QueryError(
            f"the bucket tests of {out.expr.sql(dialect='duckdb')} across parties can reach "
            f"{reach:.3g} in fixed point under the declared bounds, beyond the ring's safe "
            "range (2^62)",
            "narrow the declared bounds of its columns, or drop the constants that scale them")


def _number(text: str) -> exp.Expression:
    """An exact decimal literal (a bucket edge)."""
    lit = exp.Literal.number(text.lstrip("-"))
    return exp.Neg(this=lit) if text.startswith("-") else lit


def _factors(expr: exp.Expression, ctx: Context) -> dict[str | None, exp.Expression]:
    """A product's factors, a constant factor folded into the first party's (as
    ``place_secure._product_comparison`` folds it)."""
    factors = split_product(expr, ctx.party_of)
    constant = factors.pop(None, None)
    if constant is not None:
        first = next(iter(factors))
        factors[first] = exp.Mul(this=exp.Paren(this=constant),
                                 expression=exp.Paren(this=factors[first]))
    return dict(factors)


def _not_null(expr: exp.Expression, ctx: Context) -> list[exp.Expression]:
    """``part IS NOT NULL`` per party's part (or factor) of ``expr`` (one party's
    conditions: atoms)."""
    out: list[exp.Expression] = []
    if is_quotient(expr, ctx.party_of):
        pairs: list[tuple[str | None, exp.Expression]] = list(
            cross_quotient.not_null_parts(expr, ctx))
    else:
        pairs = list((split_linear(expr, ctx.party_of) if is_linear(expr, ctx.party_of) else
                      _factors(expr, ctx)).items())
    for party, part in pairs:
        if party is not None:
            out.append(exp.Not(this=exp.Is(this=exp.Paren(this=part.copy()),
                                           expression=exp.Null())))
    return out
