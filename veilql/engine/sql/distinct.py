"""COUNT(DISTINCT x) of anything but the privacy unit: a noisy histogram, or one noisy count.

``COUNT(DISTINCT unit)`` counts people (``aggregates``). For any other ``x`` of one party,
the public values of ``x`` are its buckets, one per value. Up to ``MAX_SECURE_DISTINCT``
values, the number of distinct values is read off a noisy histogram: the buckets whose
noisy count passes the same 95% noise band as MIN and MAX (``engine/quantiles.py``). The
histogram is one vector-valued count (a row falls in one bucket), so it costs one
aggregate's share of the budget, and the count of buckets passing is post-processing of it.
Above ``MAX_SECURE_DISTINCT`` values the plan holds one local column, the bucket index
(``rewrite/histogram.py``), and ONE count per cell: the number of buckets whose exact count
is positive, counted before any noise (in a query over one party's tables by the party's
engine, ``COUNT(DISTINCT index)``; across parties from the (bucket, cell) counts on shares,
each compared with 0 on shares, ``operators/histogram.py``), noised and released as a COUNT
with COUNT(*)'s sensitivity; no bucket count reaches the analyst. At a huge epsilon either
is DuckDB's count.

The public values: a group column's declared ``values`` (or the domain an expression over
group columns derives, as GROUP BY derives it); for value columns, every representable
value of the declared bounds at the expression's fixed-point digits, when there are at most
``MAX_DISTINCT`` of them (values outside the bounds are clamped to them first, as in every
aggregate). Anything else (a private group key, a key column, more values, columns of
several parties) is refused with the reason.

>>> from pathlib import Path
>>> from veilql.engine.sql.parse import parse
>>> from veilql.engine.sql.bind import bind
>>> from veilql.policies.model import ColumnPolicy, Federation, Party, TablePolicy
>>> t = TablePolicy("t", "uid", 2, columns={
...     "uid": ColumnPolicy("uid", "key"),
...     "g": ColumnPolicy("g", "group", values=("a", "b")),
...     "n": ColumnPolicy("n", "value", bounds=(0, 9))})
>>> fed = Federation("f", Path("f.toml"), (Party("p", "local", "duckdb:x", {"t": t}),))
>>> q = bind(parse("SELECT COUNT(DISTINCT g) AS k, COUNT(DISTINCT n) FROM p.t"), fed)
>>> [(o.name, o.kind, o.stat, o.values) for o in q.outputs]
[('k', 'quantile', 'distinct', ('a', 'b')), ('count_distinct', 'quantile', 'distinct', None)]
"""

from __future__ import annotations

from sqlglot import exp

from veilql.engine.sql import functions, parts, typecheck
from veilql.engine.sql.bound import Output
from veilql.engine.sql.groups import bind_group
from veilql.engine.sql.scope import Scope
from veilql.errors import PolicyError, UnsupportedError

#: The most public values a COUNT(DISTINCT x) histogram may have (one bucket each) in a
#: query over one party's tables: its engine groups by the bucket index, so time and memory
#: grow with rows plus buckets (figures in docs/PRIVACY.md, "COUNT(DISTINCT x)").
MAX_DISTINCT = 100_000
#: Up to this many, a histogram is planned as one 0/1 local column per bucket (every mode
#: computes it; across parties a person's factor holds one word per bucket); above it, as
#: one bucket-index column and one count per cell of its distinct values
#: (``rewrite/histogram.py``).
MAX_SECURE_DISTINCT = functions.MAX_DERIVED_DOMAIN
#: A quantile's histogram has at most this many buckets (``rewrite.push_local
#: .histogram_buckets``): one per value when the bounds hold at most this many.
MAX_BUCKETS = 64


def exact_buckets(bounds: tuple[float, float], decimals: int) -> bool:
    """True when a quantile's histogram over ``bounds`` has one bucket per value (its
    quantiles, MIN and MAX are then values of the data, not a bucket's end).

    >>> exact_buckets((0, 50), 0), exact_buckets((-50, 50), 2)
    (True, False)
    """
    return (bounds[1] - bounds[0]) * 10.0 ** min(decimals, 6) + 1 <= MAX_BUCKETS

_HINT = ("COUNT(DISTINCT x) takes one party's group column with declared values, or a value "
         f"column whose bounds hold at most {MAX_DISTINCT:,} values; count people with "
         "COUNT(DISTINCT <unit>)")


def bind_distinct(arg: exp.Expr, cond: exp.Expression | None,
                  scope: Scope) -> tuple[Output, tuple[str, str]] | None:
    """``COUNT(DISTINCT arg)`` (with the FILTER condition ``cond``) as a histogram output
    with its signature; None when ``arg`` is a privacy unit (counted as people)."""
    inner = arg
    while isinstance(inner, exp.Paren):
        inner = inner.this
    if isinstance(inner, exp.Column):
        col = scope.resolve(inner)
        if scope.units.get(col.alias) == col.column:
            return None
        if col.policy.role == "key":
            raise PolicyError(
                f"COUNT(DISTINCT {col.alias}.{col.column}) is not supported: "
                f"{col.column} is a key column, whose values have no public domain", _HINT)
    text = inner.sql(dialect="duckdb")
    cols = functions.check_roles(inner, scope.resolve, context="operand",
                                 where="COUNT(DISTINCT ...)")
    if not cols:
        raise UnsupportedError(f"COUNT(DISTINCT {text}) reads no column", _HINT)
    owners = {c.party for c in cols}
    if len(owners) > 1:
        raise UnsupportedError(
            f"COUNT(DISTINCT {text}) reads columns of several parties "
            f"({', '.join(sorted(owners))}), which is not supported", _HINT)
    expr = scope.qualify(inner)
    values: tuple[str | int | float | bool | None, ...] | None = None
    bounds: tuple[float, float] | None = None
    decimals = 0
    if all(c.policy.role == "value" for c in cols):
        num = typecheck.TypeChecker(scope).numeric(expr)
        bounds = (float(num.lo), float(num.hi))

        def digits(c: exp.Column) -> int:
            return scope.resolve(c).policy.decimals

        decimals = min(functions.value_decimals(expr, digits), 6)
        points = (bounds[1] - bounds[0]) * 10.0**decimals + 1
        if not points <= MAX_DISTINCT:
            raise UnsupportedError(
                f"COUNT(DISTINCT {text}) is not supported: its bounds [{bounds[0]:g}, "
                f"{bounds[1]:g}] hold {points:.0f} values at {decimals} decimal digits, more "
                f"than the {MAX_DISTINCT:,} buckets of its histogram", _HINT)
    else:
        try:
            group = bind_group(inner, scope)
        except (PolicyError, UnsupportedError) as error:
            raise UnsupportedError(f"COUNT(DISTINCT {text}) is not supported: "
                                   f"{error.message}", _HINT) from None
        if group.domain is None:
            raise UnsupportedError(
                f"COUNT(DISTINCT {text}) is not supported: its values have no public domain, "
                "and its histogram's buckets would be private keys", _HINT)
        # COUNT(DISTINCT) skips NULLs, so a NULL in the domain (CASE without ELSE) is no bucket
        expr, values = group.expr, tuple(v for v in group.domain if v is not None)
    if cond is not None:
        folded = exp.Case(ifs=[exp.If(this=cond.copy(), true=exp.Literal.number(1))])

        def party_of(alias: str) -> str:
            return scope.party_of(alias)

        try:
            parts.split_product(folded, party_of)
        except UnsupportedError as error:
            raise UnsupportedError(f"COUNT(DISTINCT {text}): {error.message}",
                                   error.hint) from None
    name = "count_distinct"
    signature = ("quantile", "|".join(("distinct", expr.sql(dialect="duckdb"),
                                       cond.sql(dialect="duckdb") if cond is not None else "")))
    return (Output(name, "quantile", expr=expr, bounds=bounds, stat="distinct", filter=cond,
                   decimals=decimals, values=values), signature)
