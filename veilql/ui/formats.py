"""Render a result (column names plus rows) as text: table, json, jsonl or csv.

One function, ``render``, used for catalog listings and query results alike. ``table`` is
aligned plain text without colour (so ``NO_COLOR`` is honoured trivially); ``json`` is one
object ``{"columns": [...], "rows": [...]}`` plus any extra top-level keys passed as
``meta`` (e.g. ``accuracy``, ``privacy``, ``budget`` for query results); ``jsonl`` is one
object per row keyed by column name; ``csv`` has a header row. List cells (bounds, group
domains) print as JSON text in ``table`` and ``csv``.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from veilql.errors import UsageError

FORMATS: tuple[str, ...] = ("table", "json", "jsonl", "csv")
NULL_TEXT = "NULL"


def _jsonable(value: Any) -> Any:
    """``json.dumps`` fallback for numpy scalars, decimals, dates and tuples."""
    if isinstance(value, decimal.Decimal):
        return float(value) if value != value.to_integral_value() else int(value)
    if isinstance(value, dt.date | dt.datetime | dt.time):
        return value.isoformat()
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return value.item()
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy array
        return value.tolist()
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    raise TypeError(f"cannot render {type(value).__name__} as JSON")


def _dumps(value: Any) -> str:
    # NaN and infinities are not JSON; print them as null rather than invalid JSON.
    return json.dumps(_clean(value), default=_jsonable, ensure_ascii=False)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    return value


def cell_text(value: Any) -> str:
    """A cell as plain text: NULL for None, JSON for lists, lowercase booleans.

    >>> cell_text(None), cell_text([0, 100]), cell_text(True), cell_text(2.5)
    ('NULL', '[0, 100]', 'true', '2.5')
    """
    if value is None:
        return NULL_TEXT
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple | Mapping | set | frozenset):
        return _dumps(value)
    if isinstance(value, str):
        return value
    if hasattr(value, "item") and callable(value.item):
        return cell_text(value.item())
    return str(value)


def _is_numeric(value: Any) -> bool:
    # numbers.Number covers numpy scalars and Decimal too; booleans print as words.
    return isinstance(value, numbers.Number) and not isinstance(value, bool)


def render_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Aligned plain text: header, dashes, rows; numbers right-aligned.

    >>> print(render_table(["name", "n"], [["north", 12], ["east", 3]]))
    name    n
    -----  --
    north  12
    east    3
    """
    text = [[cell_text(v) for v in row] for row in rows]
    widths = [len(c) for c in columns]
    for row in text:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    right = [
        bool(rows) and all(_is_numeric(r[i]) or r[i] is None for r in rows)
        for i in range(len(columns))
    ]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(list(columns)), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in text]
    return "\n".join(out)


def render_csv(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """CSV with a header row; NULL cells are empty.

    >>> render_csv(["a", "b"], [[1, "x,y"], [None, [0, 1]]])
    'a,b\\n1,"x,y"\\n,"[0, 1]"'
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if v is None else cell_text(v) for v in row])
    return buf.getvalue().rstrip("\n")


def render(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    fmt: str,
    meta: Mapping[str, Any] | None = None,
) -> str:
    """Render ``rows`` under ``columns`` in ``fmt`` (one of ``FORMATS``), no trailing newline.

    ``meta`` adds top-level keys to the ``json`` object; other formats carry data only.

    >>> render(["n"], [[3]], "json", meta={"privacy": {"epsilon": 1.0}})
    '{"columns": ["n"], "rows": [[3]], "privacy": {"epsilon": 1.0}}'
    >>> render(["a", "b"], [[1, None]], "jsonl")
    '{"a": 1, "b": null}'
    """
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"row {list(row)!r} has {len(row)} cells for {len(columns)} columns")
    if fmt == "table":
        return render_table(columns, rows)
    if fmt == "json":
        obj: dict[str, Any] = {"columns": list(columns), "rows": [list(r) for r in rows]}
        for key, value in (meta or {}).items():
            if key in obj:
                raise ValueError(f"meta key {key!r} would overwrite the result")
            obj[key] = value
        return _dumps(obj)
    if fmt == "jsonl":
        return "\n".join(_dumps(dict(zip(columns, row, strict=True))) for row in rows)
    if fmt == "csv":
        return render_csv(columns, rows)
    raise UsageError(f"unknown output format {fmt!r}", f"use one of {', '.join(FORMATS)}")
