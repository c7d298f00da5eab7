"""Markdown tables for the shell's ``.mode markdown`` (``formats.render`` has no markdown).

Cells are rendered with ``formats.cell_text``; pipes inside a cell are escaped so the
table stays well formed, and numeric columns are right-aligned (``--:``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from veilql.ui.formats import cell_text


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def render_markdown(columns: Sequence[str], rows: Sequence[Sequence[Any]],
                    right: Sequence[bool] | None = None) -> str:
    """A GitHub-flavoured Markdown table; ``right[i]`` right-aligns column ``i``.

    >>> print(render_markdown(["region", "n"], [["north", "3101 ± 3"], ["a|b", None]],
    ...                       right=[False, True]))
    | region | n        |
    | ------ | -------: |
    | north  | 3101 ± 3 |
    | a\\|b   | NULL     |
    """
    header = [_escape(c) for c in columns]
    body = [[_escape(cell_text(v)) for v in row] for row in rows]
    widths = [max([3, len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(header)]
    align = list(right) if right is not None else [False] * len(columns)

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = ["-" * (w - 1) + ":" if r else "-" * w for w, r in zip(widths, align, strict=True)]
    return "\n".join([line(header), line(rule)] + [line(r) for r in body])
