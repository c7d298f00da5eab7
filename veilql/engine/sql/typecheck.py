"""Type checks at bind time: no query that binds may fail in a party's engine on a row.

A party's engine raises on some rows and not on others when it must convert text to a
number (``region = 5`` reads every ``region`` as an INT32 and fails on ``'west-01'``), when
integer or decimal arithmetic overflows (``age * 1000000000`` overflows INT32 once an age
is 3 or more) or when it divides by a column that is 0 on some row. Whether the query
fails then tells the analyst something about the rows, and the engine's message may even
quote a value. So every predicate and aggregate argument is typed here, from the column
types in the policies (the connector's catalog) and, for group columns of parties whose
catalog this process cannot see, from their public values:

- comparisons, IN and BETWEEN take operands of one kind: numbers with numbers, text with
  text, booleans with TRUE/FALSE, dates and timestamps with each other or with ISO
  literals; a string literal is never compared with a number, even ``'5'``;
- arithmetic takes numbers only: no text, booleans or dates, and no string literals;
- division only by a non-zero number written in the query (PostgreSQL raises on 0);
- integer and decimal arithmetic must stay within its type (DuckDB's rules: ``TINYINT * 3``
  is a TINYINT, ``DECIMAL(12,2) * INTEGER`` a ``DECIMAL(18,2)``) for every value within
  the declared bounds, and every intermediate value within ``MAX_MAGNITUDE``;
- a SUM/AVG argument and each party's part of a comparison across parties must fit the
  fixed-point integer the party's SQL casts it to (``MAX_FIXED`` at the declared bounds).

Where a type is unknown (a remote party's column), the check is left to that party's
node, which knows its own types and compiles the same query. HAVING and ORDER BY act on
released values at the analyst, so only their kinds are checked.

``TypeChecker`` is this module's core (operands, predicates, fixed point) with two parts:
``typecheck_numbers`` (arithmetic and numeric functions at the parties, numbers at the
analyst) and ``typecheck_exprs`` (the types of any row-level expression); ``sqltypes`` holds
the SQL types and row-level helpers, ``fixedpoint`` the intervals and DuckDB's result types.

>>> kind_name(column_type(ColumnPolicy("region", "group", values=("n", "s"))))
'text, by its public values'
"""

from __future__ import annotations

import re
from typing import Any

from sqlglot import exp

from veilql.engine.sql.bound import BoundQuery, Output
from veilql.engine.sql.sqltypes import (
    MAX_DECIMALS,
    MAX_FIXED,
    SqlType,
    _temporal_ok,
    column_type,
    kind_name,
    literal_type,
)
from veilql.engine.sql.syntax import short, unparen
from veilql.engine.sql.typecheck_exprs import ExpressionTypes
from veilql.engine.sql.typecheck_numbers import NumberChecks
from veilql.errors import UnsupportedError
from veilql.policies.model import ColumnPolicy


class TypeChecker(NumberChecks, ExpressionTypes):
    """Type checks over one bound query (see the module docstring)."""

    def __init__(self, bound: BoundQuery | Any) -> None:
        self.bound = bound  # a BoundQuery, or anything with .table(alias) (the binder's scope)

    # -- columns

    def _policy(self, col: exp.Column) -> ColumnPolicy | None:
        try:
            table = self.bound.table(col.table)
        except KeyError:
            return None
        return table.policy.column(col.name)

    def column(self, col: exp.Column) -> SqlType:
        """The type of a qualified column reference (unknown if it names no policy)."""
        policy = self._policy(col)
        return SqlType(None, "unknown type") if policy is None else column_type(policy)

    def describe(self, node: exp.Expr, t: SqlType) -> str:
        """``node`` and its type for a message, e.g. ``column c.region (type VARCHAR)``."""
        node = unparen(node)
        if isinstance(node, exp.Column):
            return f"column {short(node)} ({kind_name(t)})"
        if isinstance(node, exp.Literal) and node.is_string:
            return f"the string {short(node)}"
        if isinstance(node, exp.Literal):
            return f"the number {short(node)}"
        if isinstance(node, exp.Boolean):
            return short(node)
        return f"{short(node)} ({kind_name(t)})"

    # -- kinds of operands

    def operand(self, node: exp.Expr, *, party: bool) -> SqlType:
        """The type of a comparison operand; arithmetic in it is checked on the way."""
        inner = unparen(node)
        if isinstance(inner, exp.Column):
            return self.column(inner)
        if isinstance(inner, exp.Literal | exp.Boolean):
            return literal_type(inner)
        if isinstance(inner, exp.Neg) and isinstance(unparen(inner.this), exp.Literal):
            t = literal_type(unparen(inner.this))  # type: ignore[arg-type]
            if t.kind != "num":
                raise UnsupportedError(f"{short(inner)} negates a string",
                                       "negate numbers only")
            return t
        if party:
            return self.expr_type(inner)
        self._analyst_numeric(inner)
        return SqlType("num", "number")

    def compare(self, node: exp.Expr, operands: list[exp.Expr], *, party: bool = True) -> None:
        """All operands of one comparison / IN / BETWEEN must be of one comparable kind."""
        typed = [(o, self.operand(o, party=party)) for o in operands]
        for o, t in typed:
            self._refuse_other(o, t)
        first, ftype = typed[0]
        for other, otype in typed[1:]:
            self._compatible(node, first, ftype, other, otype)

    def _refuse_other(self, node: exp.Expr, t: SqlType) -> None:
        if t.kind == "other":
            raise UnsupportedError(
                f"{self.describe(node, t)} cannot be compared: VeilQL does not know how "
                "every engine converts that type",
                "use the column in GROUP BY only, or ask its party to expose it as text or "
                "a number",
            )

    def _compatible(self, node: exp.Expr, a: exp.Expr, at: SqlType, b: exp.Expr,
                    bt: SqlType) -> None:
        if at.kind is None or bt.kind is None:
            return  # a remote party's column: its own node checks it
        if at.kind == bt.kind and at.kind != "date" and at.kind != "time":
            return
        for (x, xt), (y, yt) in (((a, at), (b, bt)), ((b, bt), (a, at))):
            if xt.kind in ("date", "time"):
                if yt.kind == xt.kind:
                    return
                lit = unparen(y)
                if (yt.kind == "str" and isinstance(lit, exp.Literal) and lit.is_string
                        and _temporal_ok(xt.kind, lit.this)):
                    return
                if yt.kind == "str" and isinstance(lit, exp.Literal) and lit.is_string:
                    example = "'12:30:00'" if xt.kind == "time" else "'2024-01-31'"
                    raise UnsupportedError(
                        f"{self.describe(y, yt)} is not a valid value for "
                        f"{self.describe(x, xt)}",
                        f"write it in ISO form, e.g. {example}",
                    )
        raise UnsupportedError(
            f"{self.describe(a, at)} cannot be compared with {self.describe(b, bt)} in "
            f"{short(node)}",
            self._fix(a, at, b, bt),
        )

    def _fix(self, a: exp.Expr, at: SqlType, b: exp.Expr, bt: SqlType) -> str:
        kinds = {at.kind, bt.kind}
        for x, xt, y in ((a, at, b), (b, bt, a)):
            ly = unparen(y)
            if xt.kind == "num" and isinstance(ly, exp.Literal) and ly.is_string:
                if re.fullmatch(r"\s*[+-]?(\d+\.?\d*|\.\d+)\s*", ly.this):
                    return (f"write the number without quotes: {ly.this.strip()} rather than "
                            f"{short(ly)}")
                return (f"{short(unparen(x))} holds numbers: compare it with a number, "
                        "e.g. > 100")
            if xt.kind == "str" and isinstance(ly, exp.Literal) and not ly.is_string:
                return (f"{short(unparen(x))} holds text: compare it with a string, e.g. "
                        f"= '{ly.this}'; an engine would otherwise convert every row's "
                        "text to a number")
            if xt.kind == "bool":
                return f"compare {short(unparen(x))} with TRUE or FALSE"
        if kinds == {"num", "str"}:
            return ("compare text columns with text and numeric columns with numbers; an "
                    "engine would otherwise convert every row")
        return "compare values of the same type: numbers, text, booleans or dates"

    # -- predicates

    def predicate(self, node: exp.Expr, *, party: bool = True) -> None:
        """Check a boolean condition (WHERE; HAVING with ``party=False``)."""
        stack = [node]
        while stack:
            n = unparen(stack.pop())
            if isinstance(n, exp.And | exp.Or):
                stack += [n.this, n.expression]
            elif isinstance(n, exp.Not):
                stack.append(n.this)
            elif isinstance(n, exp.EQ | exp.NEQ | exp.LT | exp.LTE | exp.GT | exp.GTE):
                self.compare(n, [n.this, n.expression], party=party)
            elif isinstance(n, exp.Between):
                self.compare(n, [n.this, n.args["low"], n.args["high"]], party=party)
            elif isinstance(n, exp.In):
                self.compare(n, [n.this, *n.expressions], party=party)
            elif isinstance(n, exp.Boolean):
                continue
            elif isinstance(n, exp.Like | exp.ILike | exp.Escape) and party:
                self._like(n)
            elif isinstance(n, exp.Is) and party:
                self._is(n)
            elif isinstance(n, exp.Is):  # IS [NOT] NULL of a released value
                self.operand(n.this, party=False)
            else:
                t = self.operand(n, party=party)
                if t.kind not in ("bool", None):
                    raise UnsupportedError(f"{short(n)} is not a condition",
                                           "write a comparison, e.g. x > 1")

    def _like(self, node: exp.Expr) -> None:
        """``x [I]LIKE 'pattern' [ESCAPE 'c']``: text against a pattern written in the query."""
        escape = None
        if isinstance(node, exp.Escape):
            node, escape = node.this, node.expression
        pattern = unparen(node.expression)
        if not (isinstance(pattern, exp.Literal) and pattern.is_string):
            raise UnsupportedError(f"{short(node)}: the pattern must be a string written in "
                                   "the query", "write e.g. x LIKE 'north%'")
        if escape is not None and not (isinstance(escape, exp.Literal) and escape.is_string
                                       and len(escape.this) == 1):
            raise UnsupportedError(f"{short(node)}: ESCAPE takes one character",
                                   "write ESCAPE '!'")
        self._text_argument(node, node.this)

    def _is(self, node: exp.Is) -> None:
        """``x IS [NOT] NULL`` on any expression; ``x IS [NOT] TRUE/FALSE`` on booleans."""
        target = unparen(node.expression)
        t = self.expr_type(node.this)
        if isinstance(target, exp.Null):
            return
        if isinstance(target, exp.Boolean) and t.kind in ("bool", None):
            return
        raise UnsupportedError(f"{short(node)} is not supported",
                               "write x IS NULL, x IS NOT NULL, or b IS TRUE for a boolean")

    # -- fixed point

    def decimals_of(self, node: exp.Expr) -> int:
        """Fixed-point digits the planner gives ``node`` (as ``rewrite.context`` does)."""
        digits = 0
        for col in node.find_all(exp.Column):
            policy = self._policy(col)
            if policy is not None:
                digits = max(digits, policy.decimals)
        for lit in node.find_all(exp.Literal):
            if not lit.is_string and "." in lit.this:
                mantissa = lit.this.lower().split("e")[0]
                digits = max(digits, len(mantissa.split(".")[1].rstrip("0")))
        return min(digits, MAX_DECIMALS)

    def fixed_point(self, node: exp.Expr, magnitude: float, what: str, *,
                    values: bool = False) -> None:
        """Refuse a value whose fixed-point integer could fail the cast to BIGINT.

        With ``values``, ``node`` is an aggregated value, whose digits are those of its
        value parts (``functions.value_decimals``, as the planner gives it).
        """
        if values:
            from veilql.engine.sql.functions import value_decimals

            digits = value_decimals(node, lambda c: (p.decimals if (p := self._policy(c))
                                                     is not None else 0))
        else:
            digits = self.decimals_of(node)
        scaled = magnitude * 10 ** digits
        if not scaled <= MAX_FIXED:
            raise UnsupportedError(
                f"{what} can reach {magnitude:.3g} within the declared bounds, "
                f"{scaled:.3g} in fixed point: more than a party's engine can hold (2^62)",
                "use smaller factors, or aggregate the parts separately and combine the "
                "released values",
            )


def _magnitude_of_parts(checker: TypeChecker, node: exp.Expr) -> float:
    """A bound on every per-party part of a linear expression: the sum of its terms' sizes."""
    node = unparen(node)
    if isinstance(node, exp.Add | exp.Sub):
        return _magnitude_of_parts(checker, node.this) + _magnitude_of_parts(
            checker, node.expression)
    if isinstance(node, exp.Neg):
        return _magnitude_of_parts(checker, node.this)
    return checker.numeric(node).magnitude


def check_types(bound: BoundQuery) -> None:
    """Run every type check of the module docstring on ``bound``; raise on the first."""
    checker = TypeChecker(bound)
    if bound.where is not None:
        checker.predicate(bound.where)
        for conj in bound.conjuncts:
            _check_cross_party(checker, conj, bound)
    for table in bound.tables:
        if table.filter is not None:
            checker.predicate(table.filter)
    for group in bound.group_by:
        if not group.parts:  # a key across parties is evaluated on public values only
            checker.expr_type(group.expr)
    for out in bound.outputs:
        if out.kind in ("sum", "avg") and out.expr is not None:
            func = out.kind.upper()
            if not list(out.expr.find_all(exp.Column)):
                raise UnsupportedError(
                    f"{func}({short(out.expr)}) reads no column",
                    "aggregate a value column; to scale a count, multiply the released "
                    "COUNT(*) afterwards",
                )
            arg = unparen(out.expr)
            if isinstance(arg, exp.Column) and checker.column(arg).kind == "bool":
                # SUM(flag) counts TRUE as 1: the party's SQL clamps it as an integer.
                checker.fixed_point(out.expr, max(abs(b) for b in out.bounds or (0.0, 1.0)),
                                    f"the argument of {func}")
                continue
            for part in _factors(bound, out.expr):
                checker.fixed_point(part, checker.numeric(part).magnitude,
                                    f"the argument of {func}", values=True)
        elif out.kind in ("count", "count_distinct") and out.expr is not None:
            checker.numeric(out.expr)
        elif out.kind in ("var", "quantile") and out.expr is not None:
            if out.filter is not None:
                checker.predicate(out.filter)
            if out.values is not None:  # COUNT(DISTINCT g): compared with its public values
                checker.expr_type(out.expr)
                continue
            checker.fixed_point(out.expr, checker.numeric(out.expr).magnitude,
                                f"the argument of {out.name}", values=True)
    outputs = {o.name.lower(): o for o in bound.outputs}
    analyst = _AnalystChecker(bound, outputs)
    for out in bound.outputs:
        if out.kind == "expr" and out.post is not None:
            analyst.released_value(out.post)
    if bound.having is not None:
        analyst.predicate(bound.having, party=False)
    for term, _desc in bound.order_by:
        analyst.operand(term, party=False)


def _factors(bound: BoundQuery, expr: exp.Expression) -> list[exp.Expression]:
    """The parts each party casts to fixed point: the whole argument when it is linear (as
    before: the sum bounds every part), else each party's factor of a product."""
    from veilql.engine.sql.parts import is_linear, split_product

    def party_of(alias: str) -> str:
        return bound.table(alias).party

    if is_linear(expr, party_of):
        return [expr]
    return [p for k, p in split_product(expr, party_of).items() if k is not None]


def _check_cross_party(checker: TypeChecker, conj: exp.Expression, bound: BoundQuery) -> None:
    """Each party's part of a comparison across parties is a fixed-point number."""
    stack: list[exp.Expr] = [conj]
    while stack:
        n = unparen(stack.pop())
        parties = {bound.table(c.table).party for c in n.find_all(exp.Column)
                   if c.table in {t.alias for t in bound.tables + bound.dimensions}}
        if len(parties) < 2:
            continue
        if isinstance(n, exp.And | exp.Or):
            stack += [n.this, n.expression]
        elif isinstance(n, exp.Not):
            stack.append(n.this)
        elif isinstance(n, exp.Between):
            stack += [exp.GTE(this=n.this, expression=n.args["low"]),
                      exp.LTE(this=n.this, expression=n.args["high"])]
        elif isinstance(n, exp.EQ | exp.NEQ | exp.LT | exp.LTE | exp.GT | exp.GTE):
            from veilql.engine.sql.compare_across import coded_pair

            if coded_pair(n, checker):
                continue  # two parties' group columns: codes (rewrite/coded.py checks them)
            for col in n.find_all(exp.Column):
                t = checker.column(col)
                if t.kind not in ("num", None):
                    raise UnsupportedError(
                        f"{checker.describe(col, t)} cannot be compared across parties: "
                        "comparisons across parties are on numbers",
                        "compare it with TRUE/FALSE or literals within its own party",
                    )
            size = _magnitude_of_parts(checker, n.this) + _magnitude_of_parts(
                checker, n.expression)
            checker.fixed_point(n, size, f"a side of {short(n)}")


class _AnalystChecker(TypeChecker):
    """Kinds over released outputs, for HAVING and ORDER BY (run by the analyst)."""

    def __init__(self, bound: BoundQuery, outputs: dict[str, Output]) -> None:
        super().__init__(bound)
        self.outputs = outputs

    def column(self, col: exp.Column) -> SqlType:
        """A group output has its column's type; every aggregate is a number."""
        out = self.outputs.get(col.name.lower())
        if out is not None and out.kind == "group" and out.column is not None:
            return column_type(out.column.policy)
        if out is not None and out.kind == "group" and out.group is not None:
            return SqlType(None, "unknown type")  # a GROUP BY expression's value
        if out is not None and out.kind == "expr" and isinstance(out.post, exp.Literal) \
                and out.post.is_string:
            return SqlType("str", "string")
        return SqlType("num", "number")
