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

>>> kind_name(column_type(ColumnPolicy("region", "group", values=("n", "s"))))
'text, by its public values'
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any

from sqlglot import exp

from veilql.engine.sql import functions
from veilql.engine.sql.bound import BoundQuery, Output
from veilql.errors import UnsupportedError
from veilql.policies.model import ColumnPolicy

#: No arithmetic result may exceed this magnitude at the declared bounds (PostgreSQL's
#: REAL overflows at 3.4e38, DuckDB's widest DECIMAL at 1e38).
MAX_MAGNITUDE = 1e36
#: A value the party's SQL casts to a BIGINT fixed-point integer must stay below this.
MAX_FIXED = 2.0**62
#: Digits of fixed point at most (as in ``engine.rewrite.context``).
MAX_DECIMALS = 6

_INTEGERS: dict[str, tuple[int, bool]] = {
    "TINYINT": (8, True), "INT1": (8, True), "SMALLINT": (16, True), "INT2": (16, True),
    "SHORT": (16, True), "INTEGER": (32, True), "INT": (32, True), "INT4": (32, True),
    "SIGNED": (32, True), "BIGINT": (64, True), "INT8": (64, True), "LONG": (64, True),
    "HUGEINT": (128, True), "UTINYINT": (8, False), "USMALLINT": (16, False),
    "UINTEGER": (32, False), "UBIGINT": (64, False), "UHUGEINT": (128, False),
}
_FLOATS = frozenset({"FLOAT", "DOUBLE", "REAL", "FLOAT4", "FLOAT8", "DOUBLE PRECISION"})
_STRINGS = frozenset({"VARCHAR", "TEXT", "STRING", "CHAR", "BPCHAR", "NAME"})
_DECIMAL = re.compile(r"^(?:DECIMAL|NUMERIC)\s*\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)$")
_DATES = frozenset({"DATE"})
_TIMESTAMPS = re.compile(r"^TIMESTAMP(?:_S|_MS|_NS|TZ)?(?: WITH(?:OUT)? TIME ZONE)?$|^DATETIME$")
_TIMES = re.compile(r"^TIME(?:TZ)?(?: WITH(?:OUT)? TIME ZONE)?$")
# Digits DuckDB gives an integer type when it meets a DECIMAL.
_DIGITS = {8: 3, 16: 5, 32: 10, 64: 19, 128: 38}


@dataclass(frozen=True)
class SqlType:
    """What the binder knows of a column's or literal's type.

    ``kind`` is ``num``, ``bool``, ``str``, ``date`` (dates and timestamps), ``time``,
    ``other``, or None when unknown. For numbers: ``ints`` is the range of an integer
    type, ``dec`` the (width, scale) of a DECIMAL, ``flt`` true for floating point.
    ``name`` is the type as messages show it.
    """

    kind: str | None
    name: str
    ints: tuple[int, int] | None = None
    dec: tuple[int, int] | None = None
    flt: bool = False
    inferred: bool = False  # kind known from public values only

    @property
    def exact(self) -> bool:
        """True when the numeric representation is known (integer, decimal or float)."""
        return self.ints is not None or self.dec is not None or self.flt


def _int_range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def parse_type(name: str) -> SqlType:
    """The ``SqlType`` of a column type in DuckDB's spelling.

    >>> parse_type("DECIMAL(12,2)").dec, parse_type("smallint").ints, parse_type("UUID").kind
    ((12, 2), (-32768, 32767), 'other')
    """
    t = " ".join(name.strip().upper().split())
    if t in _INTEGERS:
        return SqlType("num", t, ints=_int_range(*_INTEGERS[t]))
    if t in _FLOATS:
        return SqlType("num", t, flt=True)
    m = _DECIMAL.match(t)
    if m:
        width, scale = int(m.group(1)), int(m.group(2) or 0)
        return SqlType("num", t, dec=(width, scale))
    if t in ("DECIMAL", "NUMERIC"):
        return SqlType("num", t, dec=(18, 3))  # DuckDB's default DECIMAL
    if t == "BOOLEAN" or t == "BOOL" or t == "LOGICAL":
        return SqlType("bool", t)
    if t in _STRINGS or t.startswith(("VARCHAR", "CHAR(", "CHARACTER", "ENUM(")):
        return SqlType("str", t)
    if t in _DATES or _TIMESTAMPS.match(t):
        return SqlType("date", t)
    if _TIMES.match(t):
        return SqlType("time", t)
    return SqlType("other", t)


def column_type(policy: ColumnPolicy) -> SqlType:
    """A column's type: from the catalog when known, else from its role and public values.

    >>> column_type(ColumnPolicy("amount", "value", bounds=(0, 1))).kind
    'num'
    """
    if policy.type:
        return parse_type(policy.type)
    if policy.role == "value":
        return SqlType("num", "number")
    if policy.role == "group" and policy.values:
        kinds = {"bool" if isinstance(v, bool) else "num" if isinstance(v, int | float)
                 else "str" for v in policy.values}
        if len(kinds) == 1:
            kind = kinds.pop()
            name = {"bool": "boolean", "num": "number", "str": "text"}[kind]
            return SqlType(kind, name, inferred=True)
    return SqlType(None, "unknown type")


def kind_name(t: SqlType) -> str:
    """How a message names a type.

    >>> kind_name(parse_type("VARCHAR")), kind_name(SqlType("num", "number"))
    ('type VARCHAR', 'a number')
    """
    if t.inferred:
        return f"{t.name}, by its public values"
    if t.name == "number":
        return "a number"
    return f"type {t.name}"


# ---------------------------------------------------------------- literals


def _short(node: exp.Expr) -> str:
    """The SQL of ``node`` for a message, cut to a readable length."""
    text = node.sql(dialect="duckdb")
    return text if len(text) <= 60 else text[:57] + "..."


def literal_type(node: exp.Literal | exp.Boolean) -> SqlType:
    """The type of a literal as the parties' engines read it; refuse unreadable numbers.

    >>> literal_type(exp.Literal.number("1.50")).dec, literal_type(exp.Literal.number(3)).kind
    ((3, 2), 'num')
    """
    if isinstance(node, exp.Boolean):
        return SqlType("bool", "BOOLEAN")
    if node.is_string:
        return SqlType("str", "string")
    text = node.this.replace("_", "").lower()
    if re.fullmatch(r"\d+", text):
        digits = text.lstrip("0") or "0"
        if len(digits) > 38:
            raise UnsupportedError(
                f"the number {_short(node)} is too large ({len(digits)} digits)",
                "use a smaller number, or write it with an exponent, e.g. 1e30",
            )
        return SqlType("num", "integer literal")
    m = re.fullmatch(r"(\d*)\.(\d*)", text)
    if m:
        whole, frac = m.group(1).lstrip("0"), m.group(2)
        width = max(len(whole) + len(frac), len(frac), 1)
        if width <= 38:
            return SqlType("num", "decimal literal", dec=(width, len(frac)))
    try:
        value = float(text)
    except ValueError:
        raise UnsupportedError(f"{_short(node)} is not a number the engines can read",
                               "write numbers as digits, e.g. 12, 0.5 or 1e6") from None
    if not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
        raise UnsupportedError(
            f"the number {_short(node)} is out of range (at most 1e36 in size)",
            "use a smaller number",
        )
    return SqlType("num", "floating-point literal", flt=True)


def _literal_value(node: exp.Literal) -> float:
    return float(node.this.replace("_", ""))


_DATE_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}")
_STAMP_TEXT = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?")
_TIME_TEXT = re.compile(r"\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?")


def _temporal_ok(kind: str, text: str) -> bool:
    """True when every engine reads ``text`` as a value of a date or time column."""
    try:
        if kind == "time":
            return bool(_TIME_TEXT.fullmatch(text)) and time.fromisoformat(text) is not None
        if _DATE_TEXT.fullmatch(text):
            return date.fromisoformat(text) is not None
        if _STAMP_TEXT.fullmatch(text):
            return datetime.fromisoformat(text.replace("Z", "+00:00")) is not None
    except ValueError:
        return False
    return False


# ---------------------------------------------------------------- numbers


@dataclass(frozen=True)
class _Num:
    """A numeric expression: its interval at the declared bounds and its engine type."""

    lo: float
    hi: float
    ints: tuple[int, int] | None = None  # integer type range
    lit: bool = False  # an integer written in the query (its type adapts, as in DuckDB)
    dec: tuple[int, int] | None = None
    flt: bool = False
    known: bool = True  # False when a column's representation is unknown

    @property
    def magnitude(self) -> float:
        return max(abs(self.lo), abs(self.hi))


def _smallest_int(lo: float, hi: float) -> tuple[int, int] | None:
    """The range of the narrowest signed integer type holding [lo, hi], or None."""
    for bits in (8, 16, 32, 64, 128):
        r = _int_range(bits, True)
        if r[0] <= lo and hi <= r[1]:
            return r
    return None


def _bits(r: tuple[int, int]) -> int:
    return (r[1] - r[0]).bit_length()


def _join_ints(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    """A lower bound of the integer type DuckDB gives ``a op b``: the wider of the two;
    with one signed and one unsigned, only what both hold (conservative)."""
    if (a[0] < 0) == (b[0] < 0):
        return a if _bits(a) >= _bits(b) else b
    wide = max(_bits(a), _bits(b))
    return (0, min(_int_range(wide, True)[1], _int_range(wide, False)[1]))


def _literal_ints(n: _Num) -> tuple[int, int]:
    """The type DuckDB gives an integer literal in arithmetic with other literals."""
    if n.ints is not None:
        return n.ints
    for bits in (32, 64, 128):
        r = _int_range(bits, True)
        if r[0] <= n.lo and n.hi <= r[1]:
            return r
    return _int_range(128, True)


def _as_decimal(n: _Num) -> tuple[int, int]:
    """(width, scale) of ``n`` when it meets a DECIMAL."""
    if n.dec is not None:
        return n.dec
    if n.lit:  # an integer literal is an INTEGER, BIGINT or HUGEINT
        if -(2**31) <= n.lo and n.hi < 2**31:
            return (10, 0)
        return (19, 0) if -(2**63) <= n.lo and n.hi < 2**63 else (38, 0)
    assert n.ints is not None
    return (_DIGITS[min(d for d in _DIGITS if d >= _bits(n.ints))], 0)


def _decimal_result(op: type, a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    """DuckDB's result (width, scale) of a DECIMAL operation."""
    (w1, s1), (w2, s2) = a, b
    if op is exp.Mul:
        width, scale = w1 + w2, s1 + s2
        if w1 <= 18 and w2 <= 18 and width > 18:
            width = 18  # DuckDB keeps 64-bit decimals and checks for overflow
        return min(width, 38), scale
    scale = max(s1, s2)
    return min(max(w1 - s1, w2 - s2) + scale + 1, 38), scale


class TypeChecker:
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
        node = _unparen(node)
        if isinstance(node, exp.Column):
            return f"column {_short(node)} ({kind_name(t)})"
        if isinstance(node, exp.Literal) and node.is_string:
            return f"the string {_short(node)}"
        if isinstance(node, exp.Literal):
            return f"the number {_short(node)}"
        if isinstance(node, exp.Boolean):
            return _short(node)
        return f"{_short(node)} ({kind_name(t)})"

    # -- kinds of operands

    def operand(self, node: exp.Expr, *, party: bool) -> SqlType:
        """The type of a comparison operand; arithmetic in it is checked on the way."""
        inner = _unparen(node)
        if isinstance(inner, exp.Column):
            return self.column(inner)
        if isinstance(inner, exp.Literal | exp.Boolean):
            return literal_type(inner)
        if isinstance(inner, exp.Neg) and isinstance(_unparen(inner.this), exp.Literal):
            t = literal_type(_unparen(inner.this))  # type: ignore[arg-type]
            if t.kind != "num":
                raise UnsupportedError(f"{_short(inner)} negates a string",
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
                lit = _unparen(y)
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
            f"{_short(node)}",
            self._fix(a, at, b, bt),
        )

    def _fix(self, a: exp.Expr, at: SqlType, b: exp.Expr, bt: SqlType) -> str:
        kinds = {at.kind, bt.kind}
        for x, xt, y in ((a, at, b), (b, bt, a)):
            ly = _unparen(y)
            if xt.kind == "num" and isinstance(ly, exp.Literal) and ly.is_string:
                if re.fullmatch(r"\s*[+-]?(\d+\.?\d*|\.\d+)\s*", ly.this):
                    return (f"write the number without quotes: {ly.this.strip()} rather than "
                            f"{_short(ly)}")
                return (f"{_short(_unparen(x))} holds numbers: compare it with a number, "
                        "e.g. > 100")
            if xt.kind == "str" and isinstance(ly, exp.Literal) and not ly.is_string:
                return (f"{_short(_unparen(x))} holds text: compare it with a string, e.g. "
                        f"= '{ly.this}'; an engine would otherwise convert every row's "
                        "text to a number")
            if xt.kind == "bool":
                return f"compare {_short(_unparen(x))} with TRUE or FALSE"
        if kinds == {"num", "str"}:
            return ("compare text columns with text and numeric columns with numbers; an "
                    "engine would otherwise convert every row")
        return "compare values of the same type: numbers, text, booleans or dates"

    # -- predicates

    def predicate(self, node: exp.Expr, *, party: bool = True) -> None:
        """Check a boolean condition (WHERE; HAVING with ``party=False``)."""
        stack = [node]
        while stack:
            n = _unparen(stack.pop())
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
                    raise UnsupportedError(f"{_short(n)} is not a condition",
                                           "write a comparison, e.g. x > 1")

    def _like(self, node: exp.Expr) -> None:
        """``x [I]LIKE 'pattern' [ESCAPE 'c']``: text against a pattern written in the query."""
        escape = None
        if isinstance(node, exp.Escape):
            node, escape = node.this, node.expression
        pattern = _unparen(node.expression)
        if not (isinstance(pattern, exp.Literal) and pattern.is_string):
            raise UnsupportedError(f"{_short(node)}: the pattern must be a string written in "
                                   "the query", "write e.g. x LIKE 'north%'")
        if escape is not None and not (isinstance(escape, exp.Literal) and escape.is_string
                                       and len(escape.this) == 1):
            raise UnsupportedError(f"{_short(node)}: ESCAPE takes one character",
                                   "write ESCAPE '!'")
        self._text_argument(node, node.this)

    def _is(self, node: exp.Is) -> None:
        """``x IS [NOT] NULL`` on any expression; ``x IS [NOT] TRUE/FALSE`` on booleans."""
        target = _unparen(node.expression)
        t = self.expr_type(node.this)
        if isinstance(target, exp.Null):
            return
        if isinstance(target, exp.Boolean) and t.kind in ("bool", None):
            return
        raise UnsupportedError(f"{_short(node)} is not supported",
                               "write x IS NULL, x IS NOT NULL, or b IS TRUE for a boolean")

    # -- numbers at the parties

    def numeric(self, node: exp.Expr) -> _Num:
        """The interval and type of arithmetic a party's engine runs; refuse what can fail.

        Recursive over the tree; the parser's limits keep it shallow.
        """
        node = _unparen(node)
        if isinstance(node, exp.Column):
            return self._numeric_column(node)
        if isinstance(node, exp.Boolean):
            raise UnsupportedError(f"{_short(node)} cannot be used in arithmetic",
                                   "arithmetic takes value columns and numbers")
        if isinstance(node, exp.Literal):
            t = literal_type(node)
            if t.kind != "num":
                raise UnsupportedError(
                    f"the string {_short(node)} cannot be used in arithmetic",
                    "arithmetic takes value columns and numbers; write numbers without quotes",
                )
            v = _literal_value(node)
            integer = t.dec is None and not t.flt
            return _Num(v, v, lit=integer, dec=t.dec, flt=t.flt)
        if isinstance(node, exp.Neg):
            a = self.numeric(node.this)
            out = _Num(-a.hi, -a.lo, a.ints, a.lit, a.dec, a.flt, a.known)
            return self._checked(node, out)
        if isinstance(node, exp.Div):
            return self._division(node)
        if isinstance(node, exp.Add | exp.Sub | exp.Mul):
            a, b = self.numeric(node.this), self.numeric(node.expression)
            out = self._combine(type(node), a, b)
            if isinstance(node, exp.Mul) and _unparen(node.this) == _unparen(node.expression):
                out = _square(out, a)  # x * x: one value squared, never below 0
            return self._checked(node, out)
        if isinstance(node, exp.Mod):
            return self._mod(node)
        if isinstance(node, exp.Case | exp.If | exp.Coalesce | exp.Nullif):
            return self._checked(node, self._branches(node))
        fn = self._function(node)
        if fn is not None:  # a day count cannot overflow its BIGINT; arithmetic on it can
            return fn if isinstance(node, exp.DateDiff) else self._checked(node, fn)
        if isinstance(node, exp.Null):
            return _Num(0.0, 0.0, lit=True)
        raise UnsupportedError(f"{_short(node)} is not supported in arithmetic",
                               "use value columns, numbers, + - * / % and the numeric "
                               "functions of docs/reference.md")

    # -- numeric functions

    def _mod(self, node: exp.Mod) -> _Num:
        """``x % k``: only by a non-zero number written in the query (engines fail on 0)."""
        k = _unparen(node.expression)
        if not (isinstance(k, exp.Literal) and not k.is_string):
            raise UnsupportedError(
                f"{_short(node)}: % is supported only by a number written in the query",
                "write x % 7 with a literal, non-zero divisor")
        literal_type(k)
        d = abs(_literal_value(k))
        if d == 0:
            raise UnsupportedError(f"{_short(node)} divides by zero", "use a non-zero divisor")
        a = self.numeric(node.this)
        lo = 0.0 if a.lo >= 0 else max(a.lo, -d)
        hi = 0.0 if a.hi <= 0 else min(a.hi, d)
        return _Num(lo, hi, ints=a.ints, lit=a.lit, dec=a.dec, flt=a.flt, known=a.known)

    def _branches(self, node: exp.Expr) -> _Num:
        """CASE / IF / COALESCE / NULLIF as numbers: the hull of their results."""
        results = [r for r in _results(node) if not isinstance(_unparen(r), exp.Null)]
        for cond in _conditions(node):
            self.predicate(cond)
        if not results:
            raise UnsupportedError(f"{_short(node)} is always NULL", "give it a value")
        nums = [self.numeric(r) for r in results]
        return _hull(nums)

    def _function(self, node: exp.Expr) -> _Num | None:
        """A numeric function of the allow-list as an interval and a type, or None."""
        if isinstance(node, exp.Abs):
            a = self.numeric(node.this)
            lo = 0.0 if a.lo <= 0 <= a.hi else min(abs(a.lo), abs(a.hi))
            return _Num(lo, a.magnitude, a.ints, a.lit, a.dec, a.flt, a.known)
        if isinstance(node, exp.Sign):
            a = self.numeric(node.this)
            return _Num(-1.0 if a.lo < 0 else 0.0 if a.lo == 0 else 1.0,
                        1.0 if a.hi > 0 else 0.0 if a.hi == 0 else -1.0, ints=_int_range(8, True))
        if isinstance(node, exp.Round | exp.Floor | exp.Ceil):
            return self._rounding(node)
        if isinstance(node, exp.Sqrt):
            a = self.numeric(node.this)
            if a.lo < 0:
                raise UnsupportedError(
                    f"{_short(node)}: the argument can reach {a.lo:.6g} within the declared "
                    "bounds, and a square root of a negative number fails in an engine",
                    "take the root of a value whose declared bounds are >= 0, e.g. "
                    "SQRT(GREATEST(x, 0))")
            return _Num(math.sqrt(a.lo), math.sqrt(a.hi), flt=True)
        if isinstance(node, exp.Ln | exp.Log):
            return self._log(node)
        if isinstance(node, exp.Exp):
            a = self.numeric(node.this)
            if a.hi > 80:
                raise UnsupportedError(
                    f"{_short(node)}: the argument can reach {a.hi:.6g} within the declared "
                    "bounds, and EXP of it overflows (at most 80 is accepted)",
                    "narrow the argument, e.g. EXP(LEAST(x, 80))")
            return _Num(math.exp(a.lo) if math.isfinite(a.lo) else 0.0, math.exp(a.hi),
                        flt=True)
        if isinstance(node, exp.Pow):
            return self._power(node)
        if isinstance(node, exp.Least | exp.Greatest):
            nums = [self.numeric(a) for a in [node.this, *node.expressions]]
            hull = _hull(nums)
            pick = min if isinstance(node, exp.Least) else max
            return _Num(pick(n.lo for n in nums), pick(n.hi for n in nums), hull.ints,
                        hull.lit, hull.dec, hull.flt, hull.known)
        if isinstance(node, _DATE_PARTS):
            part = date_part(node)
            self._date_argument(node, node.expression if isinstance(node, exp.Extract)
                                else node.this)
            lo, hi = DATE_PART_RANGES.get(part, (-300000.0, 300000.0))
            return _Num(lo, hi, ints=_int_range(64, True))
        if isinstance(node, exp.DateDiff):
            self._date_argument(node, node.this)
            self._date_argument(node, node.expression)
            _check_unit(node, node.args.get("unit"))
            return _Num(-math.inf, math.inf, ints=_int_range(64, True))
        if isinstance(node, exp.Length):
            self._text_argument(node, node.this)
            return _Num(0.0, float(2**31 - 1), ints=_int_range(64, True))
        return None

    def _rounding(self, node: exp.Expr) -> _Num:
        """ROUND(x[, n]), FLOOR(x), CEIL(x): monotone, so the interval of the ends."""
        a = self.numeric(node.this)
        digits = 0
        arg = node.args.get("decimals") if isinstance(node, exp.Round) else None
        if isinstance(node, exp.Floor | exp.Ceil) and node.args.get("decimals") is not None:
            arg = node.args.get("decimals")
        if arg is not None:
            lit = _unparen(arg)
            if not (isinstance(lit, exp.Literal) and not lit.is_string and lit.is_int):
                raise UnsupportedError(f"{_short(node)}: the digits must be an integer "
                                       "written in the query", "write e.g. ROUND(x, 2)")
            digits = int(lit.this)
        if isinstance(node, exp.Floor):
            lo, hi = math.floor(a.lo), math.floor(a.hi)
        elif isinstance(node, exp.Ceil):
            lo, hi = math.ceil(a.lo), math.ceil(a.hi)
        else:
            lo, hi = _sql_round(a.lo, digits), _sql_round(a.hi, digits)
        dec = None
        if a.dec is not None:
            dec = (a.dec[0], max(0, min(a.dec[1], digits)))
        return _Num(float(lo), float(hi), a.ints, a.lit, dec, a.flt, a.known)

    def _log(self, node: exp.Expr) -> _Num:
        """LN(x), LOG(x) (base 10), LOG(b, x): x must be > 0 at every declared value."""
        base = 10.0 if isinstance(node, exp.Log) else math.e
        arg = node.this
        if isinstance(node, exp.Log) and node.expression is not None:
            b = _unparen(node.this)
            if not (isinstance(b, exp.Literal) and not b.is_string):
                raise UnsupportedError(f"{_short(node)}: the base must be a number written "
                                       "in the query", "write LOG(2, x) or LN(x)")
            base = _literal_value(b)
            if base <= 0 or base == 1:
                raise UnsupportedError(f"{_short(node)}: base {b.this} is not a valid base",
                                       "use a base > 0 other than 1")
            arg = node.expression
        a = self.numeric(arg)
        if not a.lo > 0:
            raise UnsupportedError(
                f"{_short(node)}: the argument can reach {a.lo:.6g} within the declared "
                "bounds, and the logarithm of a number <= 0 fails in an engine",
                "take the logarithm of a value whose declared bounds are > 0, e.g. "
                "LN(x + 1) for x >= 0")
        ends = [math.log(a.lo, base), math.log(a.hi, base) if math.isfinite(a.hi) else math.inf]
        return _Num(min(ends), max(ends), flt=True)

    def _power(self, node: exp.Pow) -> _Num:
        """POWER(x, k) with k a number written in the query."""
        k = _unparen(node.expression)
        sign = 1.0
        while isinstance(k, exp.Neg):
            sign, k = -sign, _unparen(k.this)
        if not (isinstance(k, exp.Literal) and not k.is_string):
            raise UnsupportedError(f"{_short(node)}: the exponent must be a number written "
                                   "in the query", "write e.g. POWER(x, 2)")
        e = sign * _literal_value(k)
        a = self.numeric(node.this)
        if not float(e).is_integer() and a.lo < 0:
            raise UnsupportedError(
                f"{_short(node)}: a fractional power of a value that can be negative "
                f"({a.lo:.6g} within the declared bounds) is not a number",
                "raise only values whose declared bounds are >= 0 to fractional powers")
        if e < 0 and a.lo <= 0 <= a.hi:
            raise UnsupportedError(
                f"{_short(node)}: a negative power of a value whose declared bounds include "
                "0 divides by zero", "use a positive exponent")
        points = [a.lo, a.hi] + ([0.0] if a.lo < 0 < a.hi else [])
        try:
            values = [p**e for p in points if not (p == 0 and e < 0)]
        except OverflowError:
            values = [math.inf]
        values = [v.real if isinstance(v, complex) else v for v in values]
        return _Num(min(values), max(values), flt=True)

    def _date_argument(self, node: exp.Expr, arg: exp.Expr | None) -> None:
        """The argument of a date function must be a date or timestamp."""
        if arg is None:
            return
        t = self.expr_type(arg)
        if t.kind not in ("date", None):
            raise UnsupportedError(
                f"{self.describe(arg, t)} is not a date, in {_short(node)}",
                "date functions take DATE or TIMESTAMP columns, or DATE '2024-01-31'")

    def _text_argument(self, node: exp.Expr, arg: exp.Expr | None) -> None:
        """The argument of a text function must be text."""
        if arg is None:
            return
        t = self.expr_type(arg)
        if t.kind not in ("str", None):
            raise UnsupportedError(
                f"{self.describe(arg, t)} is not text, in {_short(node)}",
                "text functions take text columns and strings")

    # -- types of any row-level expression

    def expr_type(self, node: exp.Expr) -> SqlType:
        """The type of an allowed row-level expression; its arguments are checked on the way."""
        node = _unparen(node)
        if isinstance(node, exp.Column):
            return self.column(node)
        if isinstance(node, exp.Literal | exp.Boolean):
            return literal_type(node)
        if isinstance(node, exp.Null):
            return SqlType(None, "NULL")
        if isinstance(node, exp.Cast):
            return _date_literal(node)
        if isinstance(node, exp.Neg) and isinstance(_unparen(node.this), exp.Literal):
            t = literal_type(_unparen(node.this))  # type: ignore[arg-type]
            if t.kind != "num":
                raise UnsupportedError(f"{_short(node)} negates a string",
                                       "negate numbers only")
            return t
        if isinstance(node, exp.And | exp.Or | exp.Not | exp.EQ | exp.NEQ | exp.LT | exp.LTE
                      | exp.GT | exp.GTE | exp.Between | exp.In | exp.Like | exp.ILike
                      | exp.Is):
            self.predicate(node)
            return SqlType("bool", "BOOLEAN")
        if isinstance(node, _TEXT_FUNCTIONS):
            for arg in _text_arguments(node):
                self._text_argument(node, arg)
            length = node.args.get("length") if isinstance(node, exp.Substring) else None
            if length is not None and isinstance(_unparen(length), exp.Neg):
                raise UnsupportedError(f"{_short(node)}: a negative length fails in some "
                                       "engines", "give SUBSTRING a length >= 0")
            for arg in _int_arguments(node):
                lit = _unparen(arg)
                if not (isinstance(lit, exp.Literal) and not lit.is_string and lit.is_int) \
                        and not (isinstance(lit, exp.Neg) and isinstance(
                            _unparen(lit.this), exp.Literal)):
                    raise UnsupportedError(
                        f"{_short(node)}: positions and lengths must be integers written in "
                        "the query", "write e.g. SUBSTRING(x, 1, 3)")
            return SqlType("str", "VARCHAR")
        if isinstance(node, exp.Concat | exp.DPipe):
            for arg in node.expressions if isinstance(node, exp.Concat) else [
                    node.this, node.expression]:
                t = self.expr_type(arg)
                if t.kind not in ("str", None):
                    raise UnsupportedError(f"{self.describe(arg, t)} is not text, in "
                                           f"{_short(node)}", "concatenate text only")
            return SqlType("str", "VARCHAR")
        if isinstance(node, exp.TimestampTrunc | exp.DateTrunc):
            self._date_argument(node, node.this)
            _check_unit(node, node.args.get("unit"))
            return SqlType("date", "TIMESTAMP")
        if isinstance(node, exp.Add | exp.Sub) and _has_interval(node):
            date, interval = (node.expression, node.this) if isinstance(
                _unparen(node.this), exp.Interval) else (node.this, node.expression)
            if isinstance(node, exp.Sub) and isinstance(_unparen(node.this), exp.Interval):
                raise UnsupportedError(f"{_short(node)} subtracts a date from an interval",
                                       "write date - INTERVAL ...")
            _interval_literal(_unparen(interval))  # type: ignore[arg-type]
            self._date_argument(node, date)
            return SqlType("date", "TIMESTAMP")
        if isinstance(node, exp.Case | exp.If | exp.Coalesce | exp.Nullif):
            for cond in _conditions(node):
                self.predicate(cond)
            results = [r for r in _results(node) if not isinstance(_unparen(r), exp.Null)]
            types = [self.expr_type(r) for r in results]
            kinds = {t.kind for t in types} - {None}
            if kinds <= {"num"} and results:
                self.numeric(node)
                return SqlType("num", "number")
            if len(kinds) > 1:
                raise UnsupportedError(
                    f"the results of {_short(node)} are of different types "
                    f"({', '.join(sorted(str(k) for k in kinds))})",
                    "give every branch the same type")
            return types[0] if types and kinds else SqlType(None, "unknown type")
        self.numeric(node)
        return SqlType("num", "number")

    def _numeric_column(self, col: exp.Column) -> _Num:
        t = self.column(col)
        policy = self._policy(col)
        if t.kind not in ("num", None):
            raise UnsupportedError(
                f"{self.describe(col, t)} cannot be used in arithmetic",
                "arithmetic takes numeric value columns and numbers"
                + ("; compare a boolean column with TRUE or FALSE" if t.kind == "bool" else ""),
            )
        bounds = policy.bounds if policy is not None else None
        lo, hi = (float(bounds[0]), float(bounds[1])) if bounds else (-math.inf, math.inf)
        return _Num(lo, hi, ints=t.ints, dec=t.dec, flt=t.flt,
                    known=t.kind == "num" and t.exact)

    def _combine(self, op: type, a: _Num, b: _Num) -> _Num:
        if op is exp.Add:
            lo, hi = a.lo + b.lo, a.hi + b.hi
        elif op is exp.Sub:
            lo, hi = a.lo - b.hi, a.hi - b.lo
        else:
            products = [x * y for x in (a.lo, a.hi) for y in (b.lo, b.hi)
                        if not (math.isinf(x) and y == 0) and not (math.isinf(y) and x == 0)]
            lo, hi = (min(products), max(products)) if products else (0.0, 0.0)
        if a.flt or b.flt:
            return _Num(lo, hi, flt=True)
        if not (a.known and b.known):
            return _Num(lo, hi, known=False)
        if a.dec is not None or b.dec is not None:
            return _Num(lo, hi, dec=_decimal_result(op, _as_decimal(a), _as_decimal(b)))
        if a.lit and b.lit:  # folded in the type of the wider literal, INTEGER at least
            return _Num(lo, hi, ints=_join_ints(_literal_ints(a), _literal_ints(b)), lit=True)
        if a.lit or b.lit:
            column, literal = (b, a) if a.lit else (a, b)
            assert column.ints is not None
            r = column.ints
            if not (r[0] <= literal.lo and literal.hi <= r[1]):
                own = _smallest_int(literal.lo, literal.hi) or _int_range(128, True)
                r = _join_ints(r, own)
            return _Num(lo, hi, ints=r)
        assert a.ints is not None and b.ints is not None
        return _Num(lo, hi, ints=_join_ints(a.ints, b.ints))

    def _division(self, node: exp.Div) -> _Num:
        divisor = _unparen(node.expression)
        sign = 1.0
        while isinstance(divisor, exp.Neg):
            sign, divisor = -sign, _unparen(divisor.this)
        if not (isinstance(divisor, exp.Literal) and not divisor.is_string):
            d = self.numeric(node.expression)
            if d.lo > 0 or d.hi < 0:  # the declared bounds exclude 0: the party clamps it
                a = self.numeric(node.this)
                ends = [x / y for x in (a.lo, a.hi) for y in (d.lo, d.hi)
                        if not (math.isinf(x) and math.isinf(y))]
                return self._checked(node, _Num(min(ends), max(ends), flt=True))
            within = (f" (its declared bounds [{d.lo:.6g}, {d.hi:.6g}] include 0)"
                      if math.isfinite(d.lo) and math.isfinite(d.hi) else "")
            raise UnsupportedError(
                f"division by {_short(node.expression)} is not supported: a party's engine "
                f"fails on a row where the divisor is 0{within}",
                "divide by a number written in the query, e.g. x / 12, or multiply out: "
                "a > b * 2 rather than a / b > 2",
            )
        literal_type(divisor)
        d = sign * _literal_value(divisor)
        if d == 0:
            raise UnsupportedError(f"{_short(node)} divides by zero",
                                   "divide by a non-zero number")
        a = self.numeric(node.this)
        ends = [a.lo / d, a.hi / d]
        return self._checked(node, _Num(min(ends), max(ends), flt=True))

    def _checked(self, node: exp.Expr, n: _Num) -> _Num:
        """Refuse ``n`` when some value within the declared bounds overflows its type."""
        if math.isnan(n.lo) or math.isnan(n.hi) or n.magnitude > MAX_MAGNITUDE:
            reach = "has no bounds" if math.isinf(n.magnitude) or math.isnan(n.lo) else \
                f"can reach {n.magnitude:.3g}"
            raise UnsupportedError(
                f"{_short(node)} {reach} within the columns' declared bounds (at most "
                "1e36): a party's engine could overflow on some rows",
                "use smaller factors, or aggregate the parts separately",
            )
        if n.ints is not None and not (n.ints[0] <= n.lo and n.hi <= n.ints[1]):
            raise UnsupportedError(
                f"{_short(node)} can reach [{n.lo:.6g}, {n.hi:.6g}] within the columns' "
                f"declared bounds, beyond the integer type it is computed in "
                f"([{n.ints[0]}, {n.ints[1]}]): a party's engine would fail on some rows",
                "compute in floating point by writing a factor with an exponent (e.g. 3e0 "
                "instead of 3), or use smaller factors",
            )
        if n.dec is not None:
            width, scale = n.dec
            if scale > 38 or n.magnitude >= 10.0 ** (width - scale):
                raise UnsupportedError(
                    f"{_short(node)} can reach {n.magnitude:.6g} within the columns' declared "
                    f"bounds, beyond the DECIMAL({width},{scale}) it is computed in: a party's "
                    "engine would fail on some rows",
                    "compute in floating point by writing a factor with an exponent (e.g. "
                    "2e0 instead of 2), or use smaller factors",
                )
        return n

    # -- numbers at the analyst (HAVING, ORDER BY)

    def _analyst_numeric(self, node: exp.Expr) -> None:
        stack = [node]
        while stack:
            n = _unparen(stack.pop())
            if isinstance(n, exp.Add | exp.Sub | exp.Mul | exp.Div):
                stack += [n.this, n.expression]
            elif isinstance(n, exp.Neg):
                stack.append(n.this)
            elif isinstance(n, exp.Round | exp.Floor | exp.Ceil | exp.Abs):
                stack.append(n.this)
            elif isinstance(n, exp.Least | exp.Greatest | exp.Coalesce | exp.Nullif):
                stack += [a for a in (n.this, n.expression, *n.expressions) if a is not None]
            elif isinstance(n, exp.Null):
                continue
            elif isinstance(n, exp.Case | exp.If):  # CASE WHEN released condition THEN ...
                stack += self._analyst_branches(n)
            elif not isinstance(n, exp.Column | exp.Literal | exp.Boolean | exp.Neg):
                raise UnsupportedError(f"{_short(n)} is not supported over released values",
                                       "use aggregates, literals, arithmetic, comparisons "
                                       "and CASE WHEN")
            else:
                t = self.operand(n, party=False)
                if t.kind not in ("num", None):
                    raise UnsupportedError(
                        f"{self.describe(n, t)} cannot be used in arithmetic",
                        "arithmetic takes numbers: aggregates, numeric group columns, numbers",
                    )

    def _analyst_branches(self, node: exp.Expr) -> list[exp.Expr]:
        """Check the conditions of a CASE / IF over released values; return its results."""
        if isinstance(node, exp.If):
            self.predicate(node.this, party=False)
            return [a for a in (node.args.get("true"), node.args.get("false")) if a is not None]
        results = []
        for branch in node.args.get("ifs") or []:
            self.predicate(branch.this, party=False)
            results.append(branch.args["true"])
        if node.args.get("default") is not None:
            results.append(node.args["default"])
        return results

    def released_value(self, node: exp.Expr) -> None:
        """A SELECT expression over released values: a condition, a CASE whose results are
        of one kind (text labels too), or a number."""
        inner = _unparen(node)
        if functions.is_condition(inner):
            self.predicate(inner, party=False)
        elif isinstance(inner, exp.Case | exp.If):
            kinds = {self.operand(r, party=False).kind for r in self._analyst_branches(inner)
                     if not isinstance(_unparen(r), exp.Null)}
            if len(kinds - {None}) > 1:
                raise UnsupportedError(f"the results of {_short(inner)} are of different "
                                       "types", "give every THEN and ELSE one type")
        else:
            self.operand(inner, party=False)

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


def _unparen(node: exp.Expr) -> exp.Expr:
    while isinstance(node, exp.Paren):
        node = node.this
    return node


#: Ranges of the parts EXTRACT takes (a public domain for GROUP BY EXTRACT(...)).
DATE_PART_RANGES: dict[str, tuple[float, float]] = {
    "month": (1, 12), "quarter": (1, 4), "day": (1, 31), "dayofmonth": (1, 31),
    "dow": (0, 6), "dayofweek": (0, 6), "isodow": (1, 7), "doy": (1, 366),
    "dayofyear": (1, 366), "week": (1, 53), "weekofyear": (1, 53), "hour": (0, 23),
    "minute": (0, 59), "second": (0, 59), "year": (-300000, 300000),
}
#: Units DATE_TRUNC, DATE_DIFF and INTERVAL accept.
DATE_UNITS = frozenset({"year", "quarter", "month", "week", "day", "hour", "minute",
                        "second"})
_DATE_PARTS = (exp.Extract, exp.Year, exp.Month, exp.Quarter, exp.Day, exp.DayOfWeek)
_TEXT_FUNCTIONS = (exp.Lower, exp.Upper, exp.Trim, exp.Substring, exp.Left, exp.Right,
                   exp.Replace)


def date_part(node: exp.Expr) -> str:
    """The part a date-part function extracts, lower case.

    >>> import sqlglot
    >>> date_part(sqlglot.parse_one("EXTRACT(MONTH FROM d)", read="duckdb"))
    'month'
    """
    if isinstance(node, exp.Extract):
        part = _unparen(node.this)
        name = part.name if isinstance(part, exp.Var | exp.Literal | exp.Column) else ""
        name = name.lower()
        if name not in DATE_PART_RANGES:
            raise UnsupportedError(
                f"EXTRACT({name.upper() or _short(part)} FROM ...) is not supported",
                "extract one of: " + ", ".join(sorted(DATE_PART_RANGES)))
        return name
    return {exp.Year: "year", exp.Month: "month", exp.Quarter: "quarter", exp.Day: "day",
            exp.DayOfWeek: "dow"}[type(node)]


def _check_unit(node: exp.Expr, unit: exp.Expr | None) -> None:
    name = unit.name.lower() if isinstance(unit, exp.Var | exp.Literal) else ""
    if name.endswith("s") and name[:-1] in DATE_UNITS:
        name = name[:-1]
    if name not in DATE_UNITS:
        raise UnsupportedError(f"{_short(node)}: unit {name or '?'} is not supported",
                               "use one of: " + ", ".join(sorted(DATE_UNITS)))


def _interval_literal(node: exp.Expr) -> None:
    """``INTERVAL 'n' unit`` with an integer written in the query."""
    if not isinstance(node, exp.Interval):
        raise UnsupportedError(f"{_short(node)} is not an interval", "write INTERVAL 3 DAY")
    value = _unparen(node.this)
    text = value.this if isinstance(value, exp.Literal) else ""
    if not re.fullmatch(r"-?\d{1,6}", str(text).strip()):
        raise UnsupportedError(f"{_short(node)}: an interval takes one integer written in "
                               "the query", "write e.g. INTERVAL 30 DAY")
    _check_unit(node, node.args.get("unit"))


def _has_interval(node: exp.Expr) -> bool:
    return any(isinstance(_unparen(c), exp.Interval) for c in (node.this, node.expression))


def _date_literal(node: exp.Cast) -> SqlType:
    """``DATE '2024-01-31'`` / ``TIMESTAMP '...'`` (sqlglot's casts of a string literal)."""
    target = node.to.this.name.upper() if node.to is not None else ""
    lit = _unparen(node.this)
    if not (isinstance(lit, exp.Literal) and lit.is_string) or not (
            target in ("DATE", "DATETIME") or target.startswith("TIMESTAMP")):
        raise UnsupportedError(f"CAST is not supported ({_short(node)})",
                               "only DATE '...' and TIMESTAMP '...' literals are; write a "
                               "factor as 3e0 to compute in floating point")
    if not _temporal_ok("date", lit.this):
        raise UnsupportedError(f"{_short(node)} is not a valid date",
                               "write it in ISO form, e.g. DATE '2024-01-31'")
    return SqlType("date", "DATE" if target == "DATE" else "TIMESTAMP")


def _results(node: exp.Expr) -> list[exp.Expr]:
    """The value branches of CASE / IF / COALESCE / NULLIF (NULLIF: its first argument)."""
    if isinstance(node, exp.Case):
        out = [i.args["true"] for i in node.args.get("ifs") or []]
        default = node.args.get("default")
        return out + ([default] if default is not None else [])
    if isinstance(node, exp.If):
        false = node.args.get("false")
        return [node.args["true"]] + ([false] if false is not None else [])
    if isinstance(node, exp.Coalesce):
        return [node.this, *node.expressions]
    if isinstance(node, exp.Nullif):
        return [node.this]
    return []


def _conditions(node: exp.Expr) -> list[exp.Expr]:
    """The conditions of CASE / IF (NULLIF compares its two arguments)."""
    if isinstance(node, exp.Case):
        if node.this is not None:
            raise UnsupportedError(f"CASE x WHEN ... ({_short(node)}) is not supported",
                                   "write CASE WHEN x = ... THEN ...")
        return [i.this for i in node.args.get("ifs") or []]
    if isinstance(node, exp.If):
        return [node.this]
    if isinstance(node, exp.Nullif):
        return [exp.EQ(this=node.this.copy(), expression=node.expression.copy())]
    return []


def _text_arguments(node: exp.Expr) -> list[exp.Expr]:
    return [node.this] + ([node.expression] if isinstance(node, exp.Replace) else []) + (
        [node.args["replacement"]] if isinstance(node, exp.Replace) and
        node.args.get("replacement") is not None else [])


def _int_arguments(node: exp.Expr) -> list[exp.Expr]:
    if isinstance(node, exp.Substring):
        return [a for a in (node.args.get("start"), node.args.get("length")) if a is not None]
    if isinstance(node, exp.Left | exp.Right):
        return [node.expression]
    return []


def _sql_round(x: float, digits: int) -> float:
    """SQL's ROUND: half away from zero."""
    if not math.isfinite(x):
        return x
    scale = 10.0**digits
    return math.copysign(math.floor(abs(x) * scale + 0.5) / scale, x)


def _hull(nums: list[_Num]) -> _Num:
    """The interval holding every branch, in the widest of their types."""
    lo, hi = min(n.lo for n in nums), max(n.hi for n in nums)
    if any(n.flt for n in nums):
        return _Num(lo, hi, flt=True)
    if not all(n.known for n in nums):
        return _Num(lo, hi, known=False)
    decs = [n for n in nums if n.dec is not None]
    if decs:
        scale = max(_as_decimal(n)[1] for n in nums)
        whole = max(_as_decimal(n)[0] - _as_decimal(n)[1] for n in nums)
        return _Num(lo, hi, dec=(min(whole + scale, 38), scale))
    ints = [n.ints if n.ints is not None else _literal_ints(n) for n in nums]
    r = ints[0]
    for other in ints[1:]:
        r = _join_ints(r, other)
    return _Num(lo, hi, ints=r, lit=all(n.lit for n in nums))


def _square(product: _Num, a: _Num) -> _Num:
    """The interval of ``x * x`` for ``x`` in ``[a.lo, a.hi]``: both factors are the same
    value, so it is ``[min(lo^2, hi^2), max(lo^2, hi^2)]``, or from 0 when the interval
    holds 0 (interval arithmetic of two independent factors would give ``lo * hi < 0``).

    >>> _square(_Num(-200.0, 100.0), _Num(-2.0, 10.0))
    _Num(lo=0.0, hi=100.0, ints=None, lit=False, dec=None, flt=False, known=True)
    >>> _square(_Num(6.0, 25.0), _Num(-5.0, -2.0)).lo
    4.0
    """
    ends = (a.lo * a.lo, a.hi * a.hi)
    lo = 0.0 if a.lo <= 0.0 <= a.hi else min(ends)
    return _Num(lo, max(ends), product.ints, product.lit, product.dec, product.flt,
                product.known)


def _magnitude_of_parts(checker: TypeChecker, node: exp.Expr) -> float:
    """A bound on every per-party part of a linear expression: the sum of its terms' sizes."""
    node = _unparen(node)
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
        checker.expr_type(group.expr)
    for out in bound.outputs:
        if out.kind in ("sum", "avg") and out.expr is not None:
            func = out.kind.upper()
            if not list(out.expr.find_all(exp.Column)):
                raise UnsupportedError(
                    f"{func}({_short(out.expr)}) reads no column",
                    "aggregate a value column; to scale a count, multiply the released "
                    "COUNT(*) afterwards",
                )
            arg = _unparen(out.expr)
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
        n = _unparen(stack.pop())
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
            checker.fixed_point(n, size, f"a side of {_short(n)}")


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
