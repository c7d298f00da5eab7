"""The further conditions of an outer join's ON across parties, as a predicate on shares.

``a LEFT JOIN b ON a.u = b.u AND c`` matches a row of ``a`` with the rows of ``b`` of the
same unit for which ``c`` holds; a row of ``a`` with no such row gets NULLs. So ``c`` is
not a WHERE (that would drop the rows of ``a``): it is a 0/1 predicate ``P`` of each pair
of rows (``Plan.cross``), under which the matched pairs add ``F_a * F_b`` and each row of
``a`` that matched at least one row adds ``- F_a * g0`` besides (``operators/outer.py``).

``P`` is built like the cross-party predicate of WHERE (``place_secure``): a piece that
reads one party is a 0/1 ``atom`` its owner computes in SQL (exact, NULLs included), a
comparison across parties is ``sum of parts <op> 0`` over fixed-point ``operand`` columns.
SQL's ON rejects a pair whose comparison reads a NULL; each party's part is compared on
shares as a number (a NULL would count as 0), so every such comparison is ANDed with an
atom per party saying its part is not NULL (exact under AND and OR; NOT over a comparison
across parties is refused when binding). A comparison of two group columns of the two
parties is one of codes (``rewrite/coded.py``: dates as days, declared values as their
index in the union of the two domains). When the optional party (for FULL, either) keeps
several rows per person, ``P`` is ANDed with its presence (an atom of 1 on its present
rows), since an absent row's operands are 0; for FULL the rows of either side that match
nothing get NULLs, each side's by the same route.
"""

from __future__ import annotations

from dataclasses import replace

from sqlglot import exp

from veilql.engine.plan.nodes import LocalColumn, Plan
from veilql.engine.rewrite.coded import coded, is_coded
from veilql.engine.rewrite.context import Context
from veilql.engine.rewrite.linear import split_linear
from veilql.engine.rewrite.place_secure import _add, _rewrite
from veilql.engine.sql import functions
from veilql.engine.sql.bound import parties_in
from veilql.engine.sql.typecheck import TypeChecker
from veilql.errors import UnsupportedError

_COMPARE = (exp.EQ, exp.NEQ, exp.LT, exp.LTE, exp.GT, exp.GTE)


def on_predicate(plan: Plan, ctx: Context, conditions: tuple[exp.Expression, ...],
                 optional: tuple[str, ...], what: str) -> Plan:
    """``plan`` with ``cross`` the predicate of ``conditions`` (see the module docstring)
    and the atom and operand columns it reads added to the parties' steps."""
    checker = TypeChecker(ctx.bound)

    def interval(node: exp.Expr) -> tuple[float, float]:
        n = checker.numeric(node)
        return n.lo, n.hi

    cols: dict[str, list[LocalColumn]] = {s.party: list(s.columns) for s in plan.steps}
    expr: exp.Expression | None = None
    for cond in conditions:
        cond = functions.safe_forms(cond, interval)  # no row value can make an engine fail
        checker.predicate(cond)
        part = _condition(cond, ctx, checker, cols, what)
        expr = part if expr is None else exp.And(this=expr, expression=part)
    assert expr is not None
    for party in optional:  # the sides whose rows may be NULL (both for FULL)
        if plan.step(party).slots > 1:
            name = _add(cols[party], "a", "atom", "1", 0)  # 0 on its absent rows
            expr = exp.And(this=_atom(party, name), expression=expr)
    steps = tuple(replace(s, columns=tuple(cols[s.party])) for s in plan.steps)
    return replace(plan, steps=steps, cross=expr)


def _atom(party: str, name: str) -> exp.Expression:
    return exp.EQ(this=exp.column(name, table=party), expression=exp.Literal.number(1))


def _not_null(party: str, sql: str, cols: dict[str, list[LocalColumn]]) -> exp.Expression:
    """An atom of ``party``: 1 where its part ``sql`` of a comparison is not NULL."""
    return _atom(party, _add(cols[party], "a", "atom",
                             f"CASE WHEN ({sql}) IS NOT NULL THEN 1 ELSE 0 END", 0))


def _condition(node: exp.Expression, ctx: Context, checker: TypeChecker,
               cols: dict[str, list[LocalColumn]], what: str) -> exp.Expression:
    """One condition over local columns: atoms, and comparisons across parties guarded by
    their parts' NULL tests."""
    while isinstance(node, exp.Paren):
        node = node.this
    if len(parties_in(node, ctx.bound)) < 2:
        return _rewrite(node, ctx, cols)  # one party's piece: an exact atom in its SQL
    if isinstance(node, exp.And | exp.Or):
        return type(node)(this=_condition(node.this, ctx, checker, cols, what),
                          expression=_condition(node.expression, ctx, checker, cols, what))
    if isinstance(node, exp.Between):
        low = exp.GTE(this=node.this.copy(), expression=node.args["low"].copy())
        high = exp.LTE(this=node.this.copy(), expression=node.args["high"].copy())
        return _condition(exp.And(this=low, expression=high), ctx, checker, cols, what)
    if not isinstance(node, _COMPARE):
        raise UnsupportedError(
            f"{what} ... ON {node.sql(dialect='duckdb')}: only comparisons (= <> < <= > >=), "
            "AND and OR are supported across parties in an outer join's ON",
            "compare the two parties' columns with = <> < <= > >=")
    pair = (node.this, node.expression)
    if is_coded(node, checker):  # text, dates...: compared as codes (rewrite/coded.py)
        return coded(node, ctx, checker, cols, _add, f"{what} ... ON")
    for col in node.find_all(exp.Column):
        t = checker.column(col)
        if t.kind not in ("num", None):
            raise UnsupportedError(
                f"{what} ... ON {node.sql(dialect='duckdb')}: {checker.describe(col, t)} "
                "cannot be compared across parties inside arithmetic",
                "compare a column with another party's column directly, or compare "
                "numbers")
    size = sum(_magnitude(checker, side) for side in pair)
    checker.fixed_point(node, size, f"a side of {node.sql(dialect='duckdb')}")
    diff = exp.Sub(this=node.this.copy(), expression=exp.Paren(this=node.expression.copy()))
    guards = [_not_null(party, part.sql(dialect="duckdb"), cols)
              for party, part in split_linear(diff, ctx.party_of).items() if party is not None]
    out = _rewrite(node, ctx, cols)
    for g in guards:
        out = exp.And(this=g, expression=out)
    return out


def _magnitude(checker: TypeChecker, node: exp.Expr) -> float:
    """A bound on every per-party part of a linear side: the sum of its terms' sizes."""
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Add | exp.Sub):
        return _magnitude(checker, node.this) + _magnitude(checker, node.expression)
    if isinstance(node, exp.Neg):
        return _magnitude(checker, node.this)
    return checker.numeric(node).magnitude
