"""Aggregates: COUNT / SUM / AVG (with FILTER), variances from moments and quantiles from a
histogram, each as an ``Output`` with its clamping bounds, and a signature that lets equal
aggregates share one release.

``COUNT(x)``, ``FILTER (WHERE ...)`` and ``SUM(condition)`` are lowered to sums of 0/1
expressions; an argument must be linear across parties or a product of one factor per party.
"""

from __future__ import annotations

import math
from dataclasses import replace

from sqlglot import exp

from veilql.engine.sql import checks, functions, parts, typecheck
from veilql.engine.sql.bound import (
    Output,
    OutputKind,
)
from veilql.engine.sql.distinct import bind_distinct
from veilql.engine.sql.joins import is_optional
from veilql.engine.sql.scope import Scope
from veilql.engine.sql.statistics import check_across_parties
from veilql.engine.sql.statistics import statistic as _statistic
from veilql.engine.sql.syntax import unparen
from veilql.errors import PolicyError, UnsupportedError

Signature = tuple[str, str]


def is_aggregate(node: exp.Expr) -> bool:
    """True for an aggregate call (with or without FILTER) VeilQL may release."""
    if isinstance(node, exp.Filter):
        node = node.this
    return isinstance(node, checks.AGGREGATES) or checks.is_var(node) or (
        isinstance(node, exp.WithinGroup)
        and isinstance(node.this, exp.PercentileCont | exp.PercentileDisc))


def bind_aggregate(node: exp.Expr, scope: Scope) -> tuple[Output, Signature]:
    """COUNT / SUM / AVG (with FILTER) as an Output with a default name, and its signature."""
    cond = None
    cross = None  # the FILTER's conjuncts that read several parties' columns
    if isinstance(node, exp.Filter):
        where = node.expression
        cond_node = where.this if isinstance(where, exp.Where) else where
        checks.check_no_aggregate(cond_node, "FILTER (WHERE ...)")
        checks.check_predicate(cond_node, scope.resolve, "FILTER (WHERE ...)")
        cond, cross = _split_cross(scope.qualify(cond_node), scope)
        node = node.this
    if isinstance(node, exp.Count):
        out, signature = _bind_count(node, cond, scope)
        if cross is not None and out.kind not in ("count", "count_distinct"):
            _refuse_cross(node.sql(dialect="duckdb"), cross)  # COUNT(DISTINCT x): buckets
        return _with_cross(out, signature, cross)
    statistic = _statistic(node)
    if statistic is not None:
        if cross is not None:
            _refuse_cross(node.sql(dialect="duckdb"), cross)
        return _bind_statistic(statistic, cond, scope)
    if not isinstance(node, exp.Sum | exp.Avg):
        raise UnsupportedError(f"aggregate {node.sql_name()} is not supported yet",
                               checks.SUPPORTED_SQL)
    kind: OutputKind = "sum" if isinstance(node, exp.Sum) else "avg"
    func = kind.upper()
    arg = unparen(node.this)
    inner = node.this
    lowered = _cross_argument(node, arg, kind, cond, cross, scope)
    if lowered is not None:
        return lowered
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
    return _with_cross(Output(name, kind, expr=expr, bounds=bounds),
                       (kind, expr.sql(dialect="duckdb")), cross)


def _parties(node: exp.Expr, scope: Scope) -> set[str]:
    """The parties whose columns ``node`` reads (qualified or not)."""
    return {scope.resolve(c).party for c in node.find_all(exp.Column)}


def _conjunction(terms: list[exp.Expression]) -> exp.Expression | None:
    if not terms:
        return None
    out = terms[0].copy()
    for t in terms[1:]:
        out = exp.And(this=out, expression=t.copy())
    return out


def _split_cross(cond: exp.Expression, scope: Scope
                 ) -> tuple[exp.Expression | None, exp.Expression | None]:
    """A qualified condition as (its one-party conjuncts, its conjuncts across parties):
    the first fold into the aggregate's local factors, the second run on shares."""
    local, cross = [], []
    for term in checks.split_and(cond):
        (cross if len(_parties(term, scope)) > 1 else local).append(term)
    return _conjunction(local), _conjunction(cross)


def _both(a: exp.Expression | None, b: exp.Expression | None) -> exp.Expression | None:
    if a is None or b is None:
        return a if b is None else b
    return exp.And(this=exp.Paren(this=a.copy()), expression=exp.Paren(this=b.copy()))


def _with_cross(out: Output, signature: Signature, cross: exp.Expression | None,
                truth: exp.Expression | None = None) -> tuple[Output, Signature]:
    """``out`` restricted to the rows where ``cross`` holds (on shares), its signature
    telling it apart from the same aggregate over other rows."""
    if cross is None and truth is None:
        return out, signature
    text = "|".join(e.sql(dialect="duckdb") if e is not None else "" for e in (cross, truth))
    return replace(out, cross=cross, truth=truth), (signature[0], f"{signature[1]}|{text}")


def _refuse_cross(what: str, cross: exp.Expression) -> None:
    raise UnsupportedError(
        f"{what} FILTER (WHERE {cross.sql(dialect='duckdb')}): a condition across parties "
        "inside this aggregate is not supported (only COUNT, SUM and AVG take one)",
        "move the condition across parties to WHERE, or FILTER on one party's columns")


def _cross_argument(node: exp.Sum | exp.Avg, arg: exp.Expr, kind: OutputKind,
                    cond: exp.Expression | None, cross: exp.Expression | None,
                    scope: Scope) -> tuple[Output, Signature] | None:
    """SUM/AVG of a condition across parties, or of ``CASE WHEN <condition across
    parties> THEN x ELSE 0 END``, as a COUNT / SUM / AVG over the rows where the condition
    holds (evaluated on shares, as WHERE is): ``SUM(c)`` is ``COUNT(*) FILTER (WHERE c)``
    (a NULL condition is not counted), ``AVG(c)`` the TRUE rows over the rows where ``c``
    is not NULL, ``SUM(CASE WHEN c THEN x ELSE 0 END)`` is ``SUM(x) FILTER (WHERE c)``.
    None when the argument reads no condition across parties (the ordinary path)."""
    func = kind.upper()
    text = f"{func}({arg.sql(dialect='duckdb')})"
    local = _indicator(cond) if cond is not None else None
    if functions.is_condition(arg) and len(_parties(arg, scope)) > 1:
        checks.check_predicate(arg, scope.resolve, func)
        c = scope.qualify(arg)
        if kind == "sum":  # TRUE rows: a count
            out = Output("sum", "count", expr=local, bounds=(0.0, 1.0) if local else None)
            return _with_cross(out, ("count", local.sql(dialect="duckdb") if local else "*"),
                               _both(cross, c))
        out = Output("avg", "avg", expr=local, bounds=(0.0, 1.0) if local else None)
        return _with_cross(out, ("avg", local.sql(dialect="duckdb") if local else "*"),
                           cross, c)
    if not isinstance(arg, exp.Case | exp.If) or arg.args.get("this") is not None:
        return None  # (a simple CASE x WHEN v compares x with values: one party's)
    conds, results = functions.branches(arg)
    if not any(len(_parties(c, scope)) > 1 for c in conds):
        return None
    default = unparen(results[-1])
    zero = isinstance(default, exp.Literal) and not default.is_string and \
        float(default.this) == 0
    if len(conds) != 1 or not (zero or isinstance(default, exp.Null)):
        raise UnsupportedError(
            f"{text}: a CASE whose conditions read several parties' columns must have one "
            "WHEN and ELSE 0 (or no ELSE)",
            "write SUM(x) FILTER (WHERE condition) for each branch, or move the condition "
            "across parties to WHERE")
    if kind == "avg" and zero:
        raise UnsupportedError(
            f"{text}: AVG of a CASE with ELSE 0 over a condition across parties is not "
            "supported", "write SUM(CASE ...) / COUNT(*), or AVG(x) FILTER (WHERE condition) "
            "for the average over the rows where it holds")
    checks.check_predicate(conds[0], scope.resolve, func)
    when, across = _split_cross(scope.qualify(conds[0]), scope)
    value = unparen(results[0])
    if not list(value.find_all(exp.Column)):
        if not (isinstance(value, exp.Literal) and not value.is_string
                and float(value.this) == 1 and kind == "sum"):
            raise UnsupportedError(
                f"{text}: THEN {value.sql(dialect='duckdb')} under a condition across "
                "parties is not supported", "write SUM(CASE WHEN condition THEN 1 ELSE 0 "
                "END) (a count) and multiply the released value, or THEN a value column")
        both = _both(cond, when)
        expr = _indicator(both) if both is not None else None
        out = Output("sum", "count", expr=expr, bounds=(0.0, 1.0) if expr else None)
        return _with_cross(out, ("count", expr.sql(dialect="duckdb") if expr else "*"),
                           _both(cross, across))
    folded = _both(cond, when)
    inner = exp.Filter(this=type(node)(this=value.copy()), expression=exp.Where(
        this=folded)) if folded is not None else type(node)(this=value.copy())
    out, signature = bind_aggregate(inner, scope)
    return _with_cross(replace(out, name=kind), signature, _both(cross, across))


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
    expr = scope.qualify(arg)
    if len(parties) > 1:  # bucket tests on shares (rewrite/cross_histogram.py)
        check_across_parties(word, expr, q, parties, scope.party_of)
    bounds = _bounds(expr, scope, word)
    folded = expr if cond is None else exp.Case(ifs=[exp.If(this=cond, true=expr)])
    _check_factors(folded if len(parties) == 1 else _indicator(cond) if cond is not None
                   else exp.Literal.number(1), scope, word)

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
