"""Rows per value that an engine's own constraints enforce: the facts behind ``row_bounds``.

A table whose privacy unit the engine keeps unique needs no scan for over-full units
(``operators/local.py`` ``with_engine_facts``). A table with several rows per person can
have its engine enforce a bound too: a slot column that is NOT NULL, restricted by a CHECK
to ``k`` integer values, and UNIQUE together with the unit (``UNIQUE (customer_id, slot)``,
``slot INTEGER NOT NULL CHECK (slot BETWEEN 1 AND 3)``) lets no unit hold more than ``k``
rows: two rows of one unit have different slots, and there are ``k`` slots. The engine
checks every write against these constraints, so the bound holds for whatever rows the
table holds now; it is read from the catalog (public inside the federation), never from
the rows. Only what is certain counts: a CHECK that is not recognised bounds nothing (in an
AND, the recognised conjuncts still bound, as AND only narrows), and a slot must be of an
integer type.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import sqlglot
from sqlglot import exp

INTEGER_TYPES = frozenset({"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT",
                           "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT"})

Constraint = tuple[str, str, Sequence[str], str | None]  # table, type, columns, CHECK text


def constraint_bounds(constraints: Iterable[Constraint],
                      types: dict[str, dict[str, str]]) -> dict[str, dict[str, int]]:
    """Per table and column (lower case): the most rows one non-NULL value may have.

    ``constraints``: (table, constraint type, its columns, a CHECK's expression) as
    DuckDB's ``duckdb_constraints()`` lists them; ``types``: per table, column -> type.

    >>> rows = [("t", "UNIQUE", ["id", "slot"], None), ("t", "NOT NULL", ["slot"], None),
    ...         ("t", "CHECK", ["slot"], "(slot BETWEEN 1 AND 3)"),
    ...         ("t", "PRIMARY KEY", ["k"], None)]
    >>> constraint_bounds(rows, {"t": {"id": "BIGINT", "slot": "INTEGER", "k": "INTEGER"}})
    {'t': {'id': 3, 'k': 1}}
    """
    rows = [(t.lower(), kind, [c.lower() for c in cols], text)
            for t, kind, cols, text in constraints]
    out: dict[str, dict[str, int]] = {}
    not_null: set[tuple[str, str]] = set()
    values: dict[tuple[str, str], int] = {}  # (table, column) -> how many values a CHECK allows
    for table, kind, cols, text in rows:
        if kind == "NOT NULL" and len(cols) == 1:
            not_null.add((table, cols[0]))
        elif kind == "PRIMARY KEY":
            not_null.update((table, c) for c in cols)  # a key's columns are never NULL
        elif kind == "CHECK" and len(cols) == 1 and text:
            n = allowed_values(text, cols[0])
            if n is not None and types.get(table, {}).get(cols[0], "").upper() in INTEGER_TYPES:
                key = (table, cols[0])
                values[key] = min(values.get(key, n), n)
    for table, kind, cols, _ in rows:
        if kind not in ("PRIMARY KEY", "UNIQUE"):
            continue
        bounds = out.setdefault(table, {})
        if len(cols) == 1:
            bounds[cols[0]] = 1
        elif len(cols) == 2:
            for unit, slot in (cols, cols[::-1]):
                k = values.get((table, slot))
                if k is not None and (table, slot) in not_null and k >= 1:
                    bounds[unit] = min(bounds.get(unit, k), k)
    return {t: b for t, b in out.items() if b}


def allowed_values(check: str, column: str) -> int | None:
    """How many integer values of ``column`` the CHECK expression ``check`` allows, or None
    when it bounds them in no way recognised here (ranges and IN lists of integers).

    >>> allowed_values("(slot BETWEEN 1 AND 3)", "slot"), allowed_values("slot IN (2, 4)", "slot")
    (3, 2)
    >>> allowed_values("((slot >= 0) AND (slot < 5) AND (slot <> 2))", "slot")
    5
    >>> allowed_values("((slot >= 0) OR (slot < 5))", "slot") is None
    True
    """
    try:
        tree = sqlglot.parse_one(check, read="duckdb")
    except sqlglot.errors.SqlglotError:
        return None
    lo, hi, listed = _bounds(tree, column.lower())
    if listed is not None:
        return len({v for v in listed if (lo is None or v >= lo) and (hi is None or v <= hi)})
    if lo is None or hi is None:
        return None
    return max(0, hi - lo + 1)


_Range = tuple[int | None, int | None, frozenset[int] | None]  # low, high, IN list


def _bounds(node: exp.Expression, column: str) -> _Range:
    """The integer range (and IN list) that ``node`` being true implies for ``column``."""
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.And):
        a, b = _bounds(node.this, column), _bounds(node.expression, column)
        lo = max((x for x in (a[0], b[0]) if x is not None), default=None)
        hi = min((x for x in (a[1], b[1]) if x is not None), default=None)
        lists = [x for x in (a[2], b[2]) if x is not None]
        return lo, hi, frozenset.intersection(*lists) if lists else None
    if isinstance(node, exp.Between) and _is(node.this, column):
        lo, hi = _integer(node.args.get("low")), _integer(node.args.get("high"))
        return lo, hi, None
    if isinstance(node, exp.In) and _is(node.this, column) and not node.args.get("query"):
        found = [_integer(e) for e in node.expressions]
        if found and all(v is not None for v in found):
            return None, None, frozenset(v for v in found if v is not None)
        return None, None, None
    if isinstance(node, exp.GTE | exp.GT | exp.LTE | exp.LT | exp.EQ):
        left, right = node.this, node.expression
        flip = not _is(left, column)
        if flip:
            left, right = right, left
        v = _integer(right)
        if not _is(left, column) or v is None:
            return None, None, None
        kind = type(node)
        if flip:  # 3 <= slot is slot >= 3
            kind = {exp.GTE: exp.LTE, exp.GT: exp.LT, exp.LTE: exp.GTE, exp.LT: exp.GT,
                    exp.EQ: exp.EQ}[kind]
        return {exp.GTE: (v, None, None), exp.GT: (v + 1, None, None),
                exp.LTE: (None, v, None), exp.LT: (None, v - 1, None),
                exp.EQ: (v, v, None)}[kind]
    return None, None, None


def _is(node: exp.Expression | None, column: str) -> bool:
    return isinstance(node, exp.Column) and not node.table and node.name.lower() == column


def _integer(node: exp.Expression | None) -> int | None:
    """The value of an integer literal (possibly negative, possibly in parentheses)."""
    while isinstance(node, exp.Paren):
        node = node.this
    sign = 1
    if isinstance(node, exp.Neg):
        sign, node = -1, node.this
    if isinstance(node, exp.Literal) and not node.is_string:
        try:
            return sign * int(node.this)
        except ValueError:
            return None
    return None
