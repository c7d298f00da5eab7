"""HTML for notebooks: a released answer with its error bars, its cost and what is left.

Everything that comes from data, SQL or configuration is escaped, so a group value such
as ``<script>`` shows as text. Values carry their 95% noise interval as ``value ± ci95``
in the one number format of ``veil query``, the shell and ``print(result)``
(``noisy.noisy_text``: two significant digits of the interval, the value to the same
place); a note under the table says what the answer cost and how much budget remains at
each party charged. The released answer's HTML is ``Result._repr_html_`` itself, so the
Python API and the magic show the same table.

>>> from veilql.engine.result import Result
>>> r = Result(["region", "n"], [["north", 12]], {"n": {"ci95": 2.9}},
...            {"epsilon": 0.5, "delta": 0.0}, {"bank": {"epsilon_remaining": 9.5,
...            "delta_remaining": 1e-05}})
>>> '<td class="veil-num">12 ± 3</td>' in result_html(r)
True
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from veilql.engine.result import Result
from veilql.ui.noisy import noisy_cell

#: Keeps the caption under the table and the numbers aligned, in any notebook theme.
_STYLE = (
    "<style>"
    ".veil-caption{font-size:90%;padding-top:4px}"
    "table.veil-result td.veil-num{text-align:right;font-variant-numeric:tabular-nums}"
    "</style>"
)


def _esc(value: Any) -> str:
    """Escape any value for HTML text or attribute context."""
    return html.escape(str(value), quote=True)


def interval(result: Result, column: str, row: int) -> Any:
    """The 95% half-width for ``column`` in ``row``, or None for a column without noise.

    AVG columns have one interval per row (``ci95_rows``); the others one per column.

    >>> r = Result(["m"], [[1.0], [2.0]], {"m": {"ci95": 3.0, "ci95_rows": [1.0, 3.0]}})
    >>> interval(r, "m", 1)
    3.0
    """
    acc = result.accuracy.get(column)
    if acc is None:
        return None
    if "ci95_rows" in acc:
        rows = acc["ci95_rows"]
        return rows[row] if row < len(rows) else None
    return acc.get("ci95")


def _fmt(x: float) -> str:
    return f"{x:g}"


def number(x: Any) -> str:
    """A released number for reading: 6 significant digits, no exponent for large values.

    Sums of money reach millions; ``1.49929e+07`` is harder to read than ``14992882``.

    >>> number(14992882.44), number(0.0601093), number(3101), number(None)
    ('14992882', '0.0601093', '3101', 'NULL')
    """
    if x is None:
        return "NULL"
    if isinstance(x, float):
        text = f"{x:.6g}"
        return f"{x:.0f}" if "e+" in text else text
    return str(x)


def value_cell(value: Any, half: Any) -> str:
    """``value ± half`` (the 95% half-width), or just the value when there is no interval,
    in the same format as the text table (``noisy.noisy_cell``).

    >>> value_cell(3101, 6.0), value_cell(None, 2.0), value_cell(2.5, 0.5)
    ('3101 ± 6', 'NULL', '2.50 ± 0.50')
    """
    if half is None:
        return number(value)
    return noisy_cell(value, float(half))


def cost_caption(result: Result) -> str:
    """Plain text: the cost of the answer and the budget left at each party charged (for a
    dry run, what it would spend and what is left before it), as under the HTML table.

    >>> r = Result(["n"], [], {}, {"epsilon": 0.5, "delta": 0.0},
    ...            {"bank": {"epsilon_remaining": 9.5, "delta_remaining": 1e-05}}, dry_run=True)
    >>> cost_caption(r)
    'would spend ε 0.5, δ 0; remaining before: bank (ε 9.5, δ 1e-05)'
    """
    return result.caption()


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool],
           caption: str, css_class: str) -> str:
    """An HTML table of already-formatted (not yet escaped) cells, with a note below.

    The note is a block under the table rather than a ``<caption>``, which would wrap to
    the width of a narrow table.
    """
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = []
    for row in rows:
        tds = "".join(
            f'<td class="veil-num">{_esc(v)}</td>' if num else f"<td>{_esc(v)}</td>"
            for v, num in zip(row, numeric, strict=True)
        )
        body.append(f"<tr>{tds}</tr>")
    return (
        f'{_STYLE}<div class="veil-output"><table class="{css_class}">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        f'<div class="veil-caption">{caption}</div></div>'
    )


def result_html(result: Result) -> str:
    """A released (or dry-run) answer as an HTML table: ``value ± ci95``, cost, budget left
    (``Result._repr_html_``)."""
    return result._repr_html_()


def budget_html(budget: Mapping[str, Mapping[str, float]], analyst: str) -> str:
    """``Session.budget()`` as an HTML table, one row per party.

    >>> text = budget_html({"bank": {"epsilon_spent": 1.0, "epsilon_remaining": 9.0,
    ...                     "delta_spent": 0.0, "delta_remaining": 1e-05}}, "alice")
    >>> "<td>bank</td>" in text and "analyst alice" in text
    True
    """
    columns = ["party", "epsilon_spent", "epsilon_remaining", "delta_spent", "delta_remaining"]
    rows = [[party, *(_fmt(b[c]) for c in columns[1:])] for party, b in budget.items()]
    caption = f"privacy budget of analyst {_esc(analyst)}"
    return _table(columns, rows, [False, True, True, True, True], caption, "veil-result")


def plan_html(text: str) -> str:
    """The ``explain`` text of a plan, preformatted and escaped.

    >>> plan_html("a < b")
    '<pre class="veil-plan">a &lt; b</pre>'
    """
    return f'<pre class="veil-plan">{_esc(text)}</pre>'
