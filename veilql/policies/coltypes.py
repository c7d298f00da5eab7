"""Column types as connectors report them (DuckDB spelling), and what they mean for policies:
the kind of value a column holds and its default fixed-point precision.
"""

from __future__ import annotations

import re

MAX_DECIMALS = 6
_INTEGER_TYPES = frozenset(
    {
        "TINYINT",
        "SMALLINT",
        "INTEGER",
        "BIGINT",
        "HUGEINT",
        "UTINYINT",
        "USMALLINT",
        "UINTEGER",
        "UBIGINT",
        "UHUGEINT",
        "INT",
        "INT1",
        "INT2",
        "INT4",
        "INT8",
        "LONG",
        "SHORT",
        "SIGNED",
    }
)
_FLOAT_TYPES = frozenset({"FLOAT", "DOUBLE", "REAL", "FLOAT4", "FLOAT8"})
_DECIMAL = re.compile(r"^(?:DECIMAL|NUMERIC)\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)$")
_STRING_TYPES = frozenset({"VARCHAR", "TEXT", "STRING", "CHAR", "BPCHAR"})


def default_decimals(column_type: str | None) -> int:
    """Default fixed-point digits for a column of ``column_type`` (DuckDB spelling).

    0 for integers and booleans, the scale of a DECIMAL (at most 6), 2 for floating
    point; 0 for non-numeric types (strings, dates), which never enter as fixed-point.

    >>> default_decimals("BIGINT"), default_decimals("DECIMAL(12,3)"), default_decimals("DOUBLE")
    (0, 3, 2)
    >>> default_decimals("VARCHAR")
    0
    """
    t = (column_type or "").strip().upper()
    m = _DECIMAL.match(t)
    if m:
        return min(int(m.group(2)), MAX_DECIMALS)
    return 2 if type_kind(t) == "float" else 0


def type_kind(column_type: str | None) -> str | None:
    """'int', 'float', 'bool', 'str', or None for other/unknown types."""
    t = (column_type or "").strip().upper()
    if t in _INTEGER_TYPES:
        return "int"
    if t in _FLOAT_TYPES or _DECIMAL.match(t) or t in ("DECIMAL", "NUMERIC"):
        return "float"
    if t == "BOOLEAN":
        return "bool"
    if t in _STRING_TYPES or t.startswith("VARCHAR"):
        return "str"
    return None
