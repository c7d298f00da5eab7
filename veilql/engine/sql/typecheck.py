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

from sqlglot import exp

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

    def __init__(self, bound: BoundQuery) -> None:
        self.bound = bound

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
            self.numeric(inner)
        else:
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
            else:
                t = self.operand(n, party=party)
                if t.kind not in ("bool", None):
                    raise UnsupportedError(f"{_short(n)} is not a condition",
                                           "write a comparison, e.g. x > 1")

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
            return self._checked(node, self._combine(type(node), a, b))
        raise UnsupportedError(f"{_short(node)} is not supported in arithmetic",
                               "use value columns, numbers and + - * /")

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
            raise UnsupportedError(
                f"division by {_short(node.expression)} is not supported: a party's engine "
                "fails on a row where the divisor is 0",
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
            else:
                t = self.operand(n, party=False)
                if t.kind not in ("num", None):
                    raise UnsupportedError(
                        f"{self.describe(n, t)} cannot be used in arithmetic",
                        "arithmetic takes numbers: aggregates, numeric group columns, numbers",
                    )

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

    def fixed_point(self, node: exp.Expr, magnitude: float, what: str) -> None:
        """Refuse a value whose fixed-point integer could fail the cast to BIGINT."""
        scaled = magnitude * 10 ** self.decimals_of(node)
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
                magnitude = max(abs(b) for b in out.bounds or (0.0, 1.0))
            else:
                magnitude = checker.numeric(out.expr).magnitude
            checker.fixed_point(out.expr, magnitude, f"the argument of {func}")
    outputs = {o.name.lower(): o for o in bound.outputs}
    analyst = _AnalystChecker(bound, outputs)
    if bound.having is not None:
        analyst.predicate(bound.having, party=False)
    for term, _desc in bound.order_by:
        analyst.operand(term, party=False)


def _check_cross_party(checker: TypeChecker, conj: exp.Expression, bound: BoundQuery) -> None:
    """Each party's part of a comparison across parties is a fixed-point number."""
    stack: list[exp.Expr] = [conj]
    while stack:
        n = _unparen(stack.pop())
        parties = {bound.table(c.table).party for c in n.find_all(exp.Column)
                   if c.table in {t.alias for t in bound.tables}}
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
        return SqlType("num", "number")
