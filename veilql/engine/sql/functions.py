"""Row-level expressions: the allow-list, the column roles inside them, their bounds.

Every expression a party's engine evaluates on its rows (WHERE, GROUP BY, inside an
aggregate) is made only of the sqlglot classes of ``ROW_EXPRESSIONS``: arithmetic, CASE
and its relatives, NULL tests, numeric, text and date functions. None of them can read a
file, a setting or the network, and the binder refuses everything else by name
(``checks.check_constructs``). Each also passes the type checks of ``typecheck`` (no
expression that could fail on a row's value), and the few that could fail on a value
outside the declared bounds (division, logarithms, square roots, fractional powers) are
given a safe form: their argument is clamped to its declared interval in the party's SQL
(``safe_forms``), which changes nothing for data within the bounds.

Roles inside expressions (``check_roles``):

- a ``key`` column never appears (only in joins, ``COUNT(DISTINCT unit)``, ``COUNT(key)``
  and ``IN (SELECT unit ...)``);
- a ``group`` column appears in conditions and group keys, bare or through text, date and
  NULL functions, never under arithmetic and never as an aggregated value;
- a ``value`` column appears anywhere; in a GROUP BY expression only when the key's
  domain can be derived publicly (``group_domain``).

>>> import sqlglot
>>> value_decimals(sqlglot.parse_one("CASE WHEN x > 0.5 THEN 1 ELSE 0 END"), lambda c: 2)
0
"""

from __future__ import annotations

import datetime
import decimal
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from sqlglot import exp

from veilql.engine.sql.bound import BoundColumn
from veilql.engine.sql.syntax import short, unparen
from veilql.errors import PolicyError, UnsupportedError

Resolver = Callable[[exp.Column], BoundColumn]

#: The row-level expression classes a query may use (fail closed: nothing else).
ROW_EXPRESSIONS: tuple[type[exp.Expr], ...] = (
    exp.Case, exp.If, exp.Coalesce, exp.Nullif, exp.Is, exp.Null, exp.Mod,
    exp.Abs, exp.Round, exp.Floor, exp.Ceil, exp.Ln, exp.Log, exp.Exp, exp.Pow, exp.Sqrt,
    exp.Least, exp.Greatest, exp.Sign,
    exp.Lower, exp.Upper, exp.Length, exp.Substring, exp.Like, exp.ILike, exp.Escape,
    exp.Concat, exp.DPipe, exp.Trim, exp.Left, exp.Right, exp.Replace,
    exp.Extract, exp.Year, exp.Month, exp.Quarter, exp.Day, exp.DayOfWeek,
    exp.TimestampTrunc, exp.DateTrunc, exp.DateDiff, exp.Interval, exp.Var,
    exp.Cast, exp.DataType,
)
#: What an expression over released values (SELECT, HAVING, ORDER BY) may use besides
#: references to outputs; the analyst computes it (``veilql.engine.postprocess``).
POST_EXPRESSIONS: tuple[type[exp.Expr], ...] = (
    exp.Literal, exp.Boolean, exp.Null, exp.Paren, exp.Add, exp.Sub, exp.Mul, exp.Div,
    exp.Neg, exp.Round, exp.Abs, exp.Floor, exp.Ceil, exp.Least, exp.Greatest, exp.Coalesce,
    exp.Nullif,
)
#: ... and, in SELECT, conditions over released values (computed by the analyst too).
POST_CONDITIONS: tuple[type[exp.Expr], ...] = (
    exp.EQ, exp.NEQ, exp.LT, exp.LTE, exp.GT, exp.GTE, exp.And, exp.Or, exp.Not, exp.Is,
    exp.Between, exp.Case, exp.If,
)
_ARITHMETIC = (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod, exp.Neg, exp.Abs, exp.Round,
               exp.Floor, exp.Ceil, exp.Ln, exp.Log, exp.Exp, exp.Pow, exp.Sqrt, exp.Sign)
_COMPARISONS = (exp.EQ, exp.NEQ, exp.LT, exp.LTE, exp.GT, exp.GTE)
CONDITIONS = (*_COMPARISONS, exp.Between, exp.In, exp.Like, exp.ILike, exp.Escape, exp.Is)
_BOOLEAN = (exp.And, exp.Or, exp.Not, *CONDITIONS)
_FLOAT_RESULTS = (exp.Div, exp.Ln, exp.Log, exp.Exp, exp.Sqrt, exp.Pow)
_INTEGER_RESULTS = (exp.Floor, exp.Ceil, exp.Sign, exp.Extract, exp.Year, exp.Month,
                    exp.Quarter, exp.Day, exp.DayOfWeek, exp.DateDiff, exp.Length)
MAX_DECIMALS = 6
#: A GROUP BY expression with at most this many integer values in its bounds gets them
#: as its public domain.
MAX_DERIVED_DOMAIN = 1000


def is_condition(node: exp.Expr) -> bool:
    """True for an expression whose value is a boolean by construction.

    >>> import sqlglot
    >>> is_condition(sqlglot.parse_one("a > 0 AND b IS NULL")), is_condition(exp.column("a"))
    (True, False)
    """
    return isinstance(unparen(node), (*_BOOLEAN, exp.Boolean))


# ---------------------------------------------------------------- roles


def refuse_key(col: BoundColumn, where: str) -> PolicyError:
    """Error for a key column used outside a join condition or COUNT(DISTINCT unit)."""
    return PolicyError(
        f"key column {col.alias}.{col.column} cannot be used in {where}: key columns only join "
        "tables and count people",
        "use it only in JOIN ... ON x.unit = y.unit or COUNT(DISTINCT unit)",
    )


def refuse_group_as_value(col: BoundColumn, where: str) -> PolicyError:
    """Error for a group column used as a number."""
    return PolicyError(
        f"group column {col.alias}.{col.column} cannot be used as a value ({where}): its role "
        "is 'group'",
        "use it in GROUP BY or compare it with literals in WHERE; see the column's role in "
        f"policies/{col.party}.toml (table {col.table})",
    )


def check_roles(node: exp.Expr, resolve: Resolver, *, context: str, where: str,
                value_what: str = "") -> list[BoundColumn]:
    """Check the roles of every column of ``node`` used in ``context``; return the columns.

    ``context`` is ``cond`` (a condition), ``operand`` (a side of a comparison), ``value``
    (an aggregated value: group columns only inside conditions) or ``group`` (a GROUP BY
    key). ``where`` names the clause for messages (``WHERE``, ``SUM``...).
    """
    found: list[BoundColumn] = []
    _roles(node, resolve, context, False, where, value_what or f"inside {where}", found)
    return found


def _roles(node: exp.Expr, resolve: Resolver, context: str, arith: bool, where: str,
           what: str, found: list[BoundColumn]) -> None:
    node = unparen(node)
    if isinstance(node, exp.Column):
        col = resolve(node)
        found.append(col)
        if col.policy.role == "key":
            raise refuse_key(col, where)
        if col.policy.role == "group" and (arith or context == "value"):
            raise refuse_group_as_value(col, what if context == "value" else
                                        f"arithmetic in {where}")
        return
    if isinstance(node, exp.Literal | exp.Boolean | exp.Null | exp.Var | exp.Interval
                  | exp.Cast | exp.DataType):
        return
    if isinstance(node, exp.AggFunc):
        raise UnsupportedError(f"nested aggregate {node.sql_name()} inside {where}",
                               "aggregates cannot contain aggregates")
    if isinstance(node, exp.And | exp.Or | exp.Not):
        for child in node.iter_expressions():
            _roles(child, resolve, "cond", False, where, what, found)
        return
    if isinstance(node, CONDITIONS):
        operands = _operands(node)
        for operand in operands:
            _roles(operand, resolve, "operand", False, where, what, found)
        _check_sides(node, operands, [[resolve(c) for c in _exposed(o)] for o in operands])
        return
    if isinstance(node, exp.Case | exp.If):
        conds, results = branches(node)
        for cond in conds:
            _roles(cond, resolve, "cond", False, where, what, found)
        for result in results:
            _roles(result, resolve, context, arith, where, what, found)
        return
    if isinstance(node, exp.Add | exp.Sub) and any(
            isinstance(unparen(c), exp.Interval) for c in (node.this, node.expression)):
        for child in node.iter_expressions():  # date arithmetic: d + INTERVAL 1 DAY
            _roles(child, resolve, context, arith, where, what, found)
        return
    if isinstance(node, _ARITHMETIC):
        for child in node.iter_expressions():
            _roles(child, resolve, context, True, where, what, found)
        return
    if isinstance(node, ROW_EXPRESSIONS):
        for child in node.iter_expressions():
            _roles(child, resolve, context, arith, where, what, found)
        return
    raise UnsupportedError(
        f"{short(node)} is not supported in {where}",
        "use columns, literals, arithmetic, CASE and the functions of docs/reference.md")


def branches(node: exp.Expr) -> tuple[list[exp.Expr], list[exp.Expr]]:
    """The conditions and the results of a CASE or IF (a missing ELSE is a NULL result).

    >>> import sqlglot
    >>> conds, results = branches(sqlglot.parse_one("CASE WHEN a THEN 1 END"))
    >>> [c.sql() for c in conds], [r.sql() for r in results]
    (['a'], ['1', 'NULL'])
    """
    if isinstance(node, exp.Case):
        ifs = node.args.get("ifs") or []
        default = node.args.get("default")
        return [i.this for i in ifs], [i.args["true"] for i in ifs] + [
            default if default is not None else exp.Null()]
    false = node.args.get("false")
    return [node.this], [node.args["true"], false if false is not None else exp.Null()]


def _exposed(node: exp.Expr) -> list[exp.Column]:
    """The columns whose values an operand compares: not those only tested by a condition
    inside it (``CASE WHEN g = 'a' THEN x END`` compares x, not g)."""
    node = unparen(node)
    if isinstance(node, exp.Column):
        return [node]
    if isinstance(node, (*_BOOLEAN, exp.Boolean)):
        return []
    if isinstance(node, exp.Case | exp.If):
        return [c for r in branches(node)[1] for c in _exposed(r)]
    return [c for child in node.iter_expressions() for c in _exposed(child)]


def _operands(node: exp.Expr) -> list[exp.Expr]:
    if isinstance(node, exp.Escape):
        return _operands(node.this)
    if isinstance(node, exp.Between):
        return [node.this, node.args["low"], node.args["high"]]
    if isinstance(node, exp.In):
        return [node.this, *node.expressions]
    return [node.this, node.expression]


def _check_sides(node: exp.Expr, operands: list[exp.Expr],
                 sides: list[list[BoundColumn]]) -> None:
    """IN lists hold literals; group columns compare only within their party or with
    another party's group column directly; a division across parties only as a quotient
    compared with a number (``compare_across``)."""
    if isinstance(node, exp.In):
        from veilql.engine.sql.checks import is_literal

        for item in node.expressions:
            if not is_literal(item):
                raise UnsupportedError(
                    f"IN list item {item.sql(dialect='duckdb')} is not a literal",
                    "IN takes a list of literal values, e.g. region IN ('north', 'south')",
                )
    from veilql.engine.sql.compare_across import check_division, check_groups

    check_groups(node, sides)
    check_division(node, operands, sides)


# ---------------------------------------------------------------- fixed point


def value_decimals(node: exp.Expr, decimals_of: Callable[[exp.Column], int]) -> int:
    """Fixed-point digits of an aggregated value: the digits of its value parts.

    Conditions (comparisons, NULL tests, LIKE...) add none: ``SUM(CASE WHEN x > 0.5 THEN 1
    ELSE 0 END)`` counts in whole numbers. Results of division, logarithms, roots and
    powers get ``MAX_DECIMALS``; FLOOR, CEIL and date parts none; ROUND(x, n) at most n.
    ``decimals_of`` gives a column's declared digits.
    """
    node = unparen(node)
    if isinstance(node, exp.Column):
        return min(decimals_of(node), MAX_DECIMALS)
    if isinstance(node, exp.Literal):
        if node.is_string or "." not in node.this:
            return 0
        mantissa = node.this.lower().split("e")[0]
        return min(len(mantissa.split(".")[1].rstrip("0")), MAX_DECIMALS)
    if isinstance(node, (*_BOOLEAN, exp.Boolean, exp.Null)):
        return 0
    if isinstance(node, _FLOAT_RESULTS):
        return MAX_DECIMALS
    if isinstance(node, _INTEGER_RESULTS):
        return 0
    if isinstance(node, exp.Round):
        digits = node.args.get("decimals")
        inner = value_decimals(node.this, decimals_of)
        if digits is None:
            return 0
        lit = unparen(digits)
        n = int(lit.this) if isinstance(lit, exp.Literal) and lit.is_int else MAX_DECIMALS
        return max(0, min(inner, n))
    if isinstance(node, exp.Case):
        parts = [i.args["true"] for i in node.args.get("ifs") or []]
        if node.args.get("default") is not None:
            parts.append(node.args["default"])
        return max((value_decimals(p, decimals_of) for p in parts), default=0)
    if isinstance(node, exp.If):
        parts = [node.args["true"]] + ([node.args["false"]] if node.args.get("false")
                                       is not None else [])
        return max(value_decimals(p, decimals_of) for p in parts)
    return max((value_decimals(c, decimals_of) for c in node.iter_expressions()), default=0)


def has_float_result(node: exp.Expr) -> bool:
    """True when a value part of ``node`` is computed in floating point (a division, a
    logarithm, a root, a power), so that its digits were set to ``MAX_DECIMALS``."""
    return any(isinstance(n, _FLOAT_RESULTS) for n in node.walk())


def float_digits(digits: int, magnitude: float, rows: int) -> int:
    """Fewer digits for a floating-point value too large for ``MAX_DECIMALS`` of them: at
    most 2^33 people with ``rows`` rows each must sum below 2^62 in fixed point (the
    ring's safe range, ``dp/ring.py``), with a margin of 4 for the noise.

    >>> float_digits(6, 1.0, 1), float_digits(6, 27778.0, 1)
    (6, 3)
    """
    room = 2.0**62 / 4 / 2.0**33 / max(rows, 1)
    while digits > 0 and magnitude * 10**digits >= room:
        digits -= 1
    return digits


# ---------------------------------------------------------------- safe forms


def clamp_sql(node: exp.Expression, lo: float | None, hi: float | None) -> exp.Expression:
    """``node`` clamped to [lo, hi] with NULL kept NULL (GREATEST/LEAST would replace it).

    >>> clamp_sql(exp.column("x", table="t"), 1, None).sql()
    '(CASE WHEN t.x < 1 THEN 1 ELSE t.x END)'
    """
    ifs = []
    if lo is not None:
        ifs.append(exp.If(this=exp.LT(this=node.copy(), expression=_number(lo)),
                          true=_number(lo)))
    if hi is not None:
        ifs.append(exp.If(this=exp.GT(this=node.copy(), expression=_number(hi)),
                          true=_number(hi)))
    return exp.Paren(this=exp.Case(ifs=ifs, default=node.copy()))


def _number(x: float) -> exp.Expression:
    text = str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))
    lit = exp.Literal.number(text.lstrip("-"))
    return exp.Neg(this=lit) if text.startswith("-") else lit


def safe_forms(node: exp.Expression, interval: Callable[[exp.Expr], tuple[float, float]]
               ) -> exp.Expression:
    """A copy of ``node`` in which no row value can make an engine fail.

    The divisor of a division, the argument of LN/LOG/SQRT and the base of a fractional
    power are clamped to the part of their declared interval that is safe (the binder
    refused the query when that part is empty). ``interval`` gives a subexpression's
    interval under the declared bounds.
    """

    def fix(n: exp.Expr) -> exp.Expr:
        if isinstance(n, exp.Div) and _columns(n.expression):
            lo, hi = interval(n.expression)
            bounded = clamp_sql(n.expression, lo, None) if lo > 0 else clamp_sql(
                n.expression, None, hi)
            return exp.Div(this=n.this, expression=bounded, typed=n.args.get("typed"),
                           safe=n.args.get("safe"))
        if isinstance(n, exp.Ln | exp.Sqrt) and _columns(n.this):
            lo, _ = interval(n.this)
            return type(n)(this=clamp_sql(n.this, lo, None))
        if isinstance(n, exp.Log) and _columns(n):
            arg = n.expression if n.expression is not None else n.this
            lo, _ = interval(arg)
            if n.expression is not None:
                return exp.Log(this=n.this, expression=clamp_sql(arg, lo, None))
            return exp.Log(this=clamp_sql(arg, lo, None))
        if isinstance(n, exp.Pow) and _columns(n.this):
            lo, _ = interval(n.this)
            if lo >= 0:
                return exp.Pow(this=clamp_sql(n.this, lo, None), expression=n.expression)
        return n

    return node.copy().transform(fix)


def _columns(node: exp.Expr | None) -> bool:
    return node is not None and next(iter(node.find_all(exp.Column)), None) is not None


# ---------------------------------------------------------------- GROUP BY domains

DomainValue = str | int | float | bool | None


def group_domain(expr: exp.Expression, columns: Sequence[BoundColumn],
                 interval: Callable[[exp.Expr], tuple[float, float]] | None,
                 integer: bool) -> tuple[DomainValue, ...] | None:
    """The public domain of a GROUP BY expression, or None when none can be derived.

    In order: a bare column's declared values (NULL last when it is ``nullable``); the
    literals a CASE/IF returns (NULL when a branch or the ELSE is NULL); the fixed range
    of a date part (EXTRACT(MONTH ...) is 1..12); the image of one column's declared
    values, NULL too when nullable (computed by DuckDB on the values alone, so every
    party derives the same); the integers within the bounds of an
    integer-valued expression of value columns, when at most ``MAX_DERIVED_DOMAIN``.
    ``interval`` gives the expression's interval under the declared bounds (None when it
    has none); ``integer`` is true when the expression's values are whole numbers.
    """
    node = unparen(expr)
    if isinstance(node, exp.Column) and len(columns) == 1:
        return columns[0].policy.domain
    literal = _literal_results(node)
    if literal is not None:
        return literal
    if isinstance(node, exp.Extract | exp.Month | exp.Quarter | exp.Day | exp.DayOfWeek):
        from veilql.engine.sql.sqltypes import DATE_PART_RANGES, date_part

        part = date_part(node)
        if part != "year":
            lo, hi = DATE_PART_RANGES[part]
            return tuple(range(int(lo), int(hi) + 1))
    distinct = {(c.alias, c.column): c for c in columns}
    if len(distinct) == 1:
        col = next(iter(distinct.values()))
        if col.policy.values is not None:
            return _image(node, col)
    if integer and interval is not None and all(c.policy.role == "value" for c in columns):
        lo, hi = interval(node)
        if math.isfinite(lo) and math.isfinite(hi) and hi - lo < MAX_DERIVED_DOMAIN:
            return tuple(range(math.ceil(lo), math.floor(hi) + 1))
    return None


def integer_valued(node: exp.Expr) -> bool:
    """True when ``node`` is whole-numbered by construction (FLOOR, CEIL, ROUND(x), date
    parts, % of such, and sums, differences and products of these and integers)."""
    node = unparen(node)
    if isinstance(node, _INTEGER_RESULTS):
        return True
    if isinstance(node, exp.Round):
        d = node.args.get("decimals")
        return d is None or (isinstance(unparen(d), exp.Literal) and unparen(d).this == "0")
    if isinstance(node, exp.Literal):
        return not node.is_string and re.fullmatch(r"-?\d+", node.this) is not None
    if isinstance(node, exp.Add | exp.Sub | exp.Mul | exp.Mod):
        return integer_valued(node.this) and integer_valued(node.expression)
    if isinstance(node, exp.Neg | exp.Abs):
        return integer_valued(node.this)
    return False


def _literal_results(node: exp.Expr) -> tuple[DomainValue, ...] | None:
    """The values of a CASE / IF whose every result is a literal or NULL."""
    if not isinstance(node, exp.Case | exp.If):
        return None
    out: list[DomainValue] = []
    for r in branches(node)[1]:
        value = _literal_value(r)
        if value is _NOT_LITERAL:
            return None
        if not any(type(o) is type(value) and o == value for o in out):
            out.append(value)
    return tuple(out)


_NOT_LITERAL = object()


def _literal_value(node: exp.Expr) -> Any:
    node = unparen(node)
    sign = 1
    while isinstance(node, exp.Neg):
        sign, node = -sign, unparen(node.this)
    if isinstance(node, exp.Null):
        return None
    if isinstance(node, exp.Boolean) and sign == 1:
        return bool(node.this)
    if isinstance(node, exp.Literal):
        if node.is_string:
            return node.this if sign == 1 else _NOT_LITERAL
        text = node.this.replace("_", "")
        if re.fullmatch(r"\d+", text):
            return sign * int(text)
        return sign * float(text)
    return _NOT_LITERAL


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_ISO_STAMP = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?")


def _image(node: exp.Expr, col: BoundColumn) -> tuple[DomainValue, ...] | None:
    """``node`` evaluated by DuckDB on each declared value of ``col`` (in their order; NULL
    last when the column is nullable, e.g. ``COALESCE(g, 'none')`` maps it to a value).

    The values are typed from the policy alone (integers, decimals, booleans, ISO dates
    and timestamps, text), never from a connector, so every party computes the same.
    """
    import duckdb

    # a nullable column's NULL comes last, so the first row types the placeholder
    values = col.policy.domain or ()
    literals = [_typed_literal(v) if v is not None else "NULL" for v in values]
    placeholder = "__v"
    body = node.copy().transform(
        lambda n: exp.column(placeholder) if isinstance(n, exp.Column) else n)
    rows = ", ".join(f"({i}, {lit})" for i, lit in enumerate(literals))
    sql = (f"SELECT {body.sql(dialect='duckdb')} FROM (VALUES {rows}) "
           f"AS t(__i, {placeholder}) ORDER BY __i")
    con = duckdb.connect()
    try:
        result = [r[0] for r in con.execute(sql).fetchall()]
    except duckdb.Error:
        return None
    finally:
        con.close()
    out: list[DomainValue] = []
    for v in result:
        v = plain_value(v)
        if not any(type(o) is type(v) and o == v for o in out):
            out.append(v)
    return tuple(out)


def _typed_literal(v: DomainValue) -> str:
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, int | float):
        return repr(v)
    text = str(v).replace("'", "''")
    if _ISO_DATE.fullmatch(str(v)):
        return f"DATE '{text}'"
    if _ISO_STAMP.fullmatch(str(v)):
        return f"TIMESTAMP '{text}'"
    return f"'{text}'"


def plain_value(v: Any) -> DomainValue:
    """A value as plans hold it: dates as ISO text, decimals as numbers (the same rule as
    ``veilql.engine.plan.nodes.plain_value``, which private keys follow; kept here so that
    the binder imports no plan module).

    >>> plain_value(datetime.date(2024, 3, 1)), plain_value(decimal.Decimal("2.50"))
    ('2024-03-01', 2.5)
    """
    if isinstance(v, datetime.datetime):
        return str(v)
    if isinstance(v, datetime.date):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, float) and math.isnan(v):
        return None
    if v is None or isinstance(v, str | int | float | bool):
        return v
    return str(v)
