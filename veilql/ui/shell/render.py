"""Rendering for the shell: results and listings in every ``.mode``, expanded display,
``.maxrows``.

Text modes (``table``, ``box``, ``line``, ``markdown``, and expanded display) show a noisy
value as ``value ± half`` (``Result.cells``: the half-width of its 95% interval, to the
precision it allows); ``csv`` adds a ``<col>_ci95`` column beside each noisy one, ``json``
keeps ``accuracy`` beside the rows, ``jsonl`` is the rows only (``veil query``'s formats).
``.maxrows N`` cuts the text modes after N rows and says how many were left out.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

from veilql.engine.result import Result
from veilql.ui.formats import cell_text, render, render_table
from veilql.ui.markdown import render_markdown
from veilql.ui.query import format_result

TEXT_MODES = ("table", "box", "line", "markdown")


def _numeric(rows: Sequence[Sequence[Any]], i: int) -> bool:
    return bool(rows) and all(
        (isinstance(r[i], numbers.Number) and not isinstance(r[i], bool)) or r[i] is None
        for r in rows)


def render_box(columns: Sequence[str], rows: Sequence[Sequence[Any]],
               right: Sequence[bool] | None = None) -> str:
    """A table drawn with box characters, as the DuckDB CLI's ``.mode box``.

    >>> print(render_box(["a", "n"], [["x", 1]]))
    ┌───┬───┐
    │ a │ n │
    ├───┼───┤
    │ x │ 1 │
    └───┴───┘
    """
    text = [[cell_text(v) for v in row] for row in rows]
    align = list(right) if right is not None else [_numeric(rows, i) for i in range(len(columns))]
    widths = [max([len(c)] + [len(r[i]) for r in text]) for i, c in enumerate(columns)]

    def line(cells: Sequence[str], head: bool = False) -> str:
        parts = [c.ljust(w) if head or not a else c.rjust(w)
                 for c, w, a in zip(cells, widths, align, strict=True)]
        return "│ " + " │ ".join(parts) + " │"

    def rule(left: str, mid: str, end: str) -> str:
        return left + mid.join("─" * (w + 2) for w in widths) + end

    out = [rule("┌", "┬", "┐"), line(list(columns), head=True), rule("├", "┼", "┤")]
    out += [line(r) for r in text]
    out.append(rule("└", "┴", "┘"))
    return "\n".join(out)


def render_line(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """One ``column = value`` line per cell, a blank line between rows (DuckDB ``.mode line``).

    >>> print(render_line(["region", "n"], [["north", "12 ± 3"]]))
    region = north
         n = 12 ± 3
    """
    width = max((len(c) for c in columns), default=0)
    blocks = ["\n".join(f"{c.rjust(width)} = {cell_text(v)}" for c, v in zip(columns, row,
                                                                              strict=True))
              for row in rows]
    return "\n\n".join(blocks)


def render_expanded(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Each row as a record of ``column | value`` lines, as psql's ``\\x``.

    >>> print(render_expanded(["region", "n"], [["north", "12 ± 3"]]))
    -[ RECORD 1 ]--
    region | north
    n      | 12 ± 3
    """
    width = max((len(c) for c in columns), default=0)
    values = [[cell_text(v) for v in row] for row in rows]
    longest = max((len(v) for row in values for v in row), default=0)
    out = []
    for n, row in enumerate(values, 1):
        head = f"-[ RECORD {n} ]"
        out.append(head + "-" * max(1, width + 3 + longest - len(head)))
        out += [f"{c.ljust(width)} | {v}".rstrip() for c, v in zip(columns, row, strict=True)]
    return "\n".join(out) if out else "(no rows)"


def render_text(columns: Sequence[str], rows: Sequence[Sequence[Any]], mode: str, *,
                expanded: bool = False, maxrows: int = 0,
                right: Sequence[bool] | None = None) -> str:
    """``rows`` in one of the text modes (``TEXT_MODES``), expanded when asked, at most
    ``maxrows`` rows (0: all) with a line saying how many were left out."""
    shown = list(rows)
    cut = 0
    if maxrows and len(shown) > maxrows:
        cut = len(shown) - maxrows
        shown = shown[:maxrows]
    if expanded and mode in ("table", "box"):
        text = render_expanded(columns, shown)
    elif mode == "box":
        text = render_box(columns, shown, right)
    elif mode == "line":
        text = render_line(columns, shown)
    elif mode == "markdown":
        text = render_markdown(columns, shown, right=right)
    else:
        text = render_table(columns, shown)
    if cut:
        text += (f"\n… {cut} more row{'s' if cut != 1 else ''} not shown "
                 f"(.maxrows {maxrows}; .maxrows 0 shows every row)")
    return text


def render_result(result: Result, mode: str, *, expanded: bool = False,
                  maxrows: int = 0) -> str:
    """The answer in ``mode``: text modes with ``value ± interval``, data modes as
    ``veil query --format`` prints them."""
    if mode not in TEXT_MODES:
        return format_result(result, mode)
    cells = result.cells()
    right = [c in result.accuracy or _numeric(result.rows, i)
             for i, c in enumerate(result.columns)]
    return render_text(result.columns, cells, mode, expanded=expanded, maxrows=maxrows,
                       right=right)


def render_listing(columns: Sequence[str], rows: Sequence[Sequence[Any]], mode: str, *,
                   expanded: bool = False, maxrows: int = 0) -> str:
    """A listing (parties, tables, budget, settings) in ``mode``."""
    if mode in TEXT_MODES:
        return render_text(columns, rows, mode, expanded=expanded, maxrows=maxrows)
    return render(columns, rows, mode)
