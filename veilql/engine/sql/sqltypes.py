"""SQL types of columns, literals and DuckDB's integer and decimal rules, and the
row-level helpers the type check shares (``typecheck``): date parts and units,
the results and conditions of CASE, the arguments of text functions."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date, datetime, time

from sqlglot import exp

from veilql.engine.sql.syntax import short, unparen
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
                f"the number {short(node)} is too large ({len(digits)} digits)",
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
        raise UnsupportedError(f"{short(node)} is not a number the engines can read",
                               "write numbers as digits, e.g. 12, 0.5 or 1e6") from None
    if not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
        raise UnsupportedError(
            f"the number {short(node)} is out of range (at most 1e36 in size)",
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
        part = unparen(node.this)
        name = part.name if isinstance(part, exp.Var | exp.Literal | exp.Column) else ""
        name = name.lower()
        if name not in DATE_PART_RANGES:
            raise UnsupportedError(
                f"EXTRACT({name.upper() or short(part)} FROM ...) is not supported",
                "extract one of: " + ", ".join(sorted(DATE_PART_RANGES)))
        return name
    return {exp.Year: "year", exp.Month: "month", exp.Quarter: "quarter", exp.Day: "day",
            exp.DayOfWeek: "dow"}[type(node)]


def _check_unit(node: exp.Expr, unit: exp.Expr | None) -> None:
    name = unit.name.lower() if isinstance(unit, exp.Var | exp.Literal) else ""
    if name.endswith("s") and name[:-1] in DATE_UNITS:
        name = name[:-1]
    if name not in DATE_UNITS:
        raise UnsupportedError(f"{short(node)}: unit {name or '?'} is not supported",
                               "use one of: " + ", ".join(sorted(DATE_UNITS)))


def _interval_literal(node: exp.Expr) -> None:
    """``INTERVAL 'n' unit`` with an integer written in the query."""
    if not isinstance(node, exp.Interval):
        raise UnsupportedError(f"{short(node)} is not an interval", "write INTERVAL 3 DAY")
    value = unparen(node.this)
    text = value.this if isinstance(value, exp.Literal) else ""
    if not re.fullmatch(r"-?\d{1,6}", str(text).strip()):
        raise UnsupportedError(f"{short(node)}: an interval takes one integer written in "
                               "the query", "write e.g. INTERVAL 30 DAY")
    _check_unit(node, node.args.get("unit"))


def _has_interval(node: exp.Expr) -> bool:
    return any(isinstance(unparen(c), exp.Interval) for c in (node.this, node.expression))


def _date_literal(node: exp.Cast) -> SqlType:
    """``DATE '2024-01-31'`` / ``TIMESTAMP '...'`` (sqlglot's casts of a string literal)."""
    target = node.to.this.name.upper() if node.to is not None else ""
    lit = unparen(node.this)
    if not (isinstance(lit, exp.Literal) and lit.is_string) or not (
            target in ("DATE", "DATETIME") or target.startswith("TIMESTAMP")):
        raise UnsupportedError(f"CAST is not supported ({short(node)})",
                               "only DATE '...' and TIMESTAMP '...' literals are; write a "
                               "factor as 3e0 to compute in floating point")
    if not _temporal_ok("date", lit.this):
        raise UnsupportedError(f"{short(node)} is not a valid date",
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
            raise UnsupportedError(f"CASE x WHEN ... ({short(node)}) is not supported",
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


