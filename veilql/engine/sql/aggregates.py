"""Aggregates: COUNT / SUM / AVG (with FILTER), variances from moments and quantiles from a
histogram, each as an ``Output`` with its clamping bounds, and a signature that lets equal
aggregates share one release.

``COUNT(x)``, ``FILTER (WHERE ...)`` and ``SUM(condition)`` are lowered to sums of 0/1
expressions; an argument must be linear across parties or a product of one factor per party.
"""

from __future__ import annotations

import math

from sqlglot import exp

from veilql.engine.sql import checks, functions, parts, typecheck
from veilql.engine.sql.bound import (
    Output,
    OutputKind,
)
from veilql.engine.sql.distinct import bind_distinct
from veilql.engine.sql.joins import is_optional
from veilql.engine.sql.scope import Scope
from veilql.errors import PolicyError, UnsupportedError

Signature = tuple[str, str]


def is_aggregate(node: exp.Expr) -> bool:
    """True for an aggregate call (with or without FILTER) VeilQL may release."""
    if isinstance(node, exp.Filter):
        node = node.this
    return isinstance(node, checks.AGGREGATES) or checks.is_var(node) or (
        isinstance(node, exp.WithinGroup)
        and isinstance(node.this, exp.PercentileCont | exp.PercentileDisc))


#: VAR_SAMP (VARIANCE), VAR_POP, STDDEV (STDDEV_SAMP), STDDEV_POP as computed from moments.
_STATS: dict[type[exp.Expr], str] = {
    exp.Variance: "var_samp", exp.VariancePop: "var_pop", exp.Stddev: "stddev_samp",
    exp.StddevSamp: "stddev_samp", exp.StddevPop: "stddev_pop"}


def _fraction(node: exp.Expr | None, func: str) -> float:
    """The fraction of a quantile: a number in [0, 1] written in the query."""
    inner = node
    while isinstance(inner, exp.Paren):
        inner = inner.this
    if isinstance(inner, exp.Array):
        raise UnsupportedError(
            f"{func} with a list of fractions is not supported",
            f"write one {func}(x, q) per fraction, e.g. {func}(x, 0.25), {func}(x, 0.75)")
    if not (isinstance(inner, exp.Literal) and not inner.is_string):
        raise UnsupportedError(f"{func}: the fraction must be a number written in the query",
                               f"write e.g. {func}(x, 0.5)")
    q = float(inner.this)
    if not 0.0 <= q <= 1.0:
        raise UnsupportedError(f"{func}: the fraction {inner.this} is not between 0 and 1",
                               "write a fraction in [0, 1], e.g. 0.9 for the 90th percentile")
    return q


def _statistic(node: exp.Expr) -> tuple[str, str, float | None, exp.Expr] | None:
    """``(function name, stat, q, argument)`` of a variance or quantile aggregate, else None.

    ``stat``: ``var_samp``, ``var_pop``, ``stddev_samp``, ``stddev_pop``, or ``cont``,
    ``disc``, ``min``, ``max`` for quantiles at fraction ``q``.
    """
    if checks.is_var(node):
        if len(node.expressions) != 1:
            raise UnsupportedError("VAR takes one argument", "write VAR(x)")
        return "var", "var_samp", None, node.expressions[0]
    for cls, stat in _STATS.items():
        if type(node) is cls:
            return node.sql_name().lower(), stat, None, node.this
    if isinstance(node, exp.Min | exp.Max):
        if node.expressions:
            raise UnsupportedError(f"{node.sql_name()} takes one argument",
                                   f"write {node.sql_name()}(x); LEAST/GREATEST compare values "
                                   "within a row")
        word = "min" if isinstance(node, exp.Min) else "max"
        return word, word, 0.0 if word == "min" else 1.0, node.this
    if isinstance(node, exp.Median):
        return "median", "cont", 0.5, node.this
    if isinstance(node, exp.PercentileCont | exp.PercentileDisc):
        func = "quantile_cont" if isinstance(node, exp.PercentileCont) else "quantile_disc"
        stat = "cont" if isinstance(node, exp.PercentileCont) else "disc"
        return func, stat, _fraction(node.expression, func.upper()), node.this
    if isinstance(node, exp.ApproxQuantile | exp.Quantile):
        func = "approx_quantile" if isinstance(node, exp.ApproxQuantile) else "quantile"
        return func, "disc", _fraction(node.args.get("quantile"), func.upper()), node.this
    if isinstance(node, exp.WithinGroup):
        inner = node.this
        func = "percentile_cont" if isinstance(inner, exp.PercentileCont) else "percentile_disc"
        order = node.expression
        items = order.expressions if isinstance(order, exp.Order) else []
        if len(items) != 1 or not isinstance(items[0], exp.Ordered):
            raise UnsupportedError(f"{func.upper()} ... WITHIN GROUP must order by one "
                                   "expression", f"write {func.upper()}(0.5) WITHIN GROUP "
                                   "(ORDER BY x)")
        q = _fraction(inner.this, func.upper())
        if items[0].args.get("desc"):
            q = 1.0 - q
        stat = "cont" if isinstance(inner, exp.PercentileCont) else "disc"
        return func, stat, q, items[0].this
    return None


def bind_aggregate(node: exp.Expr, scope: Scope) -> tuple[Output, Signature]:
    """COUNT / SUM / AVG (with FILTER) as an Output with a default name, and its signature."""
    cond = None
    if isinstance(node, exp.Filter):
        where = node.expression
        cond_node = where.this if isinstance(where, exp.Where) else where
        checks.check_no_aggregate(cond_node, "FILTER (WHERE ...)")
        checks.check_predicate(cond_node, scope.resolve, "FILTER (WHERE ...)")
        cond = scope.qualify(cond_node)
        node = node.this
    if isinstance(node, exp.Count):
        return _bind_count(node, cond, scope)
    statistic = _statistic(node)
    if statistic is not None:
        return _bind_statistic(statistic, cond, scope)
    if not isinstance(node, exp.Sum | exp.Avg):
        raise UnsupportedError(f"aggregate {node.sql_name()} is not supported yet",
                               checks.SUPPORTED_SQL)
    kind: OutputKind = "sum" if isinstance(node, exp.Sum) else "avg"
    func = kind.upper()
    arg = node.this
    while isinstance(arg, exp.Paren):
        arg = arg.this
    inner = node.this
    if functions.is_condition(arg):  # SUM(a > 0): the rows where it holds
        arg = exp.Case(ifs=[exp.If(this=arg.copy(), true=exp.Literal.number(1)),
                            exp.If(this=exp.Not(this=exp.Paren(this=arg.copy())),
                                   true=exp.Literal.number(0))])
    cols = functions.check_roles(arg, scope.resolve, context="value", where=func)
    for col in cols:
        if col.policy.role == "value" and col.policy.bounds is None:
            raise PolicyError(
                f"value column {col.alias}.{col.column} has no bounds, so {func} cannot "
                "clamp it",
                f"add bounds = [low, high] to {col.column} in policies/{col.party}.toml",
            )
    expr = scope.qualify(arg)
    if cond is not None:
        expr = exp.Case(ifs=[exp.If(this=cond, true=expr)])
    bounds = _bounds(expr, scope, func)
    _check_factors(expr, scope, func)
    plain = inner
    while isinstance(plain, exp.Paren):
        plain = plain.this
    name = f"{kind}_{plain.name}" if isinstance(plain, exp.Column) else kind
    return Output(name, kind, expr=expr, bounds=bounds), (kind, expr.sql(dialect="duckdb"))


def _bind_statistic(statistic: tuple[str, str, float | None, exp.Expr],
                    cond: exp.Expression | None, scope: Scope) -> tuple[Output, Signature]:
    """A variance (from noisy moments) or a quantile (from a noisy histogram) of one
    party's expression of value columns, with an optional FILTER condition."""
    func, stat, q, arg = statistic
    word = func.upper()
    while isinstance(arg, exp.Paren):
        arg = arg.this
    if isinstance(arg, exp.Star | exp.Distinct):
        raise UnsupportedError(f"{word}({arg.sql(dialect='duckdb')}) is not supported",
                               f"write {word}(x) of a value column x")
    if functions.is_condition(arg):
        arg = exp.Case(ifs=[exp.If(this=arg.copy(), true=exp.Literal.number(1)),
                            exp.If(this=exp.Not(this=exp.Paren(this=arg.copy())),
                                   true=exp.Literal.number(0))])
    cols = functions.check_roles(arg, scope.resolve, context="value", where=word)
    if not cols:
        raise UnsupportedError(f"{word}({arg.sql(dialect='duckdb')}) reads no column",
                               f"write {word}(x) of a value column x")
    for col in cols:
        if col.policy.role == "value" and col.policy.bounds is None:
            raise PolicyError(
                f"value column {col.alias}.{col.column} has no bounds, so {word} cannot "
                "bucket or clamp it",
                f"add bounds = [low, high] to {col.column} in policies/{col.party}.toml")
    parties = {c.party for c in cols}
    if len(parties) > 1:
        what = ("its squares would multiply columns of different parties" if q is None else
                "its histogram's buckets would compare columns of different parties")
        raise UnsupportedError(
            f"{word}({arg.sql(dialect='duckdb')}) reads columns of several parties "
            f"({', '.join(sorted(parties))}): {what}, which is not supported",
            f"take {word} of one party's expression; conditions on other parties go in "
            "WHERE or FILTER (WHERE ...)")
    expr = scope.qualify(arg)
    bounds = _bounds(expr, scope, word)
    folded = expr if cond is None else exp.Case(ifs=[exp.If(this=cond, true=expr)])
    _check_factors(folded, scope, word)

    def digits(c: exp.Column) -> int:
        return scope.resolve(c).policy.decimals

    decimals = functions.value_decimals(expr, digits)
    plain = arg
    name = f"{func}_{plain.name}" if isinstance(plain, exp.Column) else func
    kind: OutputKind = "var" if q is None else "quantile"
    signature = (kind, "|".join((stat, repr(q), expr.sql(dialect="duckdb"),
                                 cond.sql(dialect="duckdb") if cond is not None else "")))
    return (Output(name, kind, expr=expr, bounds=bounds, stat=stat, q=q, filter=cond,
                   decimals=decimals), signature)


def _bind_count(node: exp.Count, cond: exp.Expression | None,
                scope: Scope) -> tuple[Output, Signature]:
    """COUNT(*), COUNT(DISTINCT unit), COUNT(x) (rows where x is not NULL), with FILTER."""
    arg = node.this
    while isinstance(arg, exp.Paren):
        arg = arg.this
    if isinstance(arg, exp.Distinct) and len(arg.expressions) == 1:
        found = bind_distinct(arg.expressions[0], cond, scope)  # None: the unit
        if found is not None:
            return found
    if isinstance(arg, exp.Star | exp.Distinct):
        unit = checks.check_count(node, scope.resolve, scope.units)
        if unit is not None and is_optional(scope.table(unit.alias), scope.tables):
            raise UnsupportedError(
                f"COUNT(DISTINCT {unit.alias}.{unit.column}) of the NULL side of an outer join "
                "is not supported", "count the people of the preserved side, or COUNT("
                f"{unit.alias}.{unit.column}) for the joined rows that have one")
        kind: OutputKind = "count" if unit is None else "count_distinct"
        name = "count" if unit is None else "count_distinct"
        if cond is None:
            what = "*" if unit is None else f"{unit.alias}.{unit.column}"
            return Output(name, kind, column=unit), (kind, what)
        expr = _indicator(cond)
        _check_factors(expr, scope, "COUNT")
        return (Output(name, kind, column=unit, expr=expr, bounds=(0.0, 1.0)),
                (kind, expr.sql(dialect="duckdb")))
    if isinstance(arg, exp.Literal | exp.Boolean):
        test = None
    elif isinstance(arg, exp.Column) and scope.resolve(arg).policy.role == "key":
        test = None  # units are never NULL: COUNT(unit) counts rows
    else:
        functions.check_roles(arg, scope.resolve, context="operand", where="COUNT")
        test = exp.Not(this=exp.Is(this=scope.qualify(arg), expression=exp.Null()))
        parties = {c.party for c in (scope.resolve(c) for c in arg.find_all(exp.Column))}
        if len(parties) > 1:
            raise UnsupportedError(
                f"COUNT({arg.sql(dialect='duckdb')}) over columns of several parties is not "
                "supported", "count each party's column: COUNT(a.x) FILTER (WHERE b.y IS "
                "NOT NULL)")
    name = f"count_{arg.name}" if isinstance(arg, exp.Column) else "count"
    if test is None and cond is None:
        return Output("count", "count"), ("count", "*")
    full = test if cond is None else cond if test is None else exp.And(
        this=exp.Paren(this=cond), expression=test)
    expr = _indicator(full)
    _check_factors(expr, scope, "COUNT")
    return (Output(name, "count", expr=expr, bounds=(0.0, 1.0)),
            ("count", expr.sql(dialect="duckdb")))


def _indicator(cond: exp.Expression) -> exp.Expression:
    """``CASE WHEN cond THEN 1 ELSE 0 END``."""
    return exp.Case(ifs=[exp.If(this=cond.copy(), true=exp.Literal.number(1))],
                    default=exp.Literal.number(0))


def _bounds(expr: exp.Expression, scope: Scope, func: str) -> tuple[float, float]:
    """The clamping interval of an aggregated value, by interval arithmetic."""
    inner = expr
    while isinstance(inner, exp.Paren):
        inner = inner.this
    if isinstance(inner, exp.Column):
        col = scope.resolve(inner)
        assert col.policy.bounds is not None
        return float(col.policy.bounds[0]), float(col.policy.bounds[1])
    num = typecheck.TypeChecker(scope).numeric(expr)
    if not (math.isfinite(num.lo) and math.isfinite(num.hi)):
        raise UnsupportedError(
            f"the argument of {func} has no bounds: {expr.sql(dialect='duckdb')}",
            "aggregate value columns (their declared bounds clamp them) and numbers")
    return float(num.lo), float(num.hi)


def _check_factors(expr: exp.Expression, scope: Scope, func: str) -> None:
    """The argument must be linear across parties, or a product of one factor per party."""
    def party_of(alias: str) -> str:
        return scope.party_of(alias)

    if parts.is_linear(expr, party_of):
        return
    try:
        parts.split_product(expr, party_of)
    except UnsupportedError as error:
        raise UnsupportedError(f"{func}: {error.message}", error.hint) from None
