"""What the magic displays: a released answer, a plan, the budget, and plots.

A released answer is a ``NotebookResult``: the ``Result`` with its HTML (``value ± ci95``
in the one number format of the shell and ``veil query``, the cost and the budget left),
a dry run adds the 95% interval each column will have. ``to_pandas()`` keeps the intervals
as real ``<col>_ci95`` columns and in ``attrs``; ``plot()`` draws the released values
with their error bars.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from typing import Any

from veilql.engine.result import Result
from veilql.errors import UsageError
from veilql.ui.formats import render
from veilql.ui.html import budget_html, plan_html
from veilql.ui.preview import accuracy_text
from veilql.ui.query import footer, format_result


class NotebookResult:
    """A ``Result`` as a notebook shows it: HTML with intervals, cost and budget left.

    Delegates the data to the wrapped ``Result`` (``.result``) without changing it.
    """

    def __init__(self, result: Result) -> None:
        self.result = result

    columns = property(lambda self: self.result.columns, doc="Output column names.")
    rows = property(lambda self: self.result.rows, doc="Released (noisy) rows.")
    accuracy = property(lambda self: self.result.accuracy, doc="95% half-widths per column.")
    privacy = property(lambda self: self.result.privacy, doc="The cost: epsilon and delta.")
    budget = property(lambda self: self.result.budget, doc="Budget left at each charged party.")
    plan = property(lambda self: self.result.plan, doc="The plan that ran.")
    dry_run = property(lambda self: self.result.dry_run, doc="True when nothing was released.")

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``veil query --format json``."""
        return self.result.to_dict()

    def to_pandas(self) -> Any:
        """The rows as a DataFrame with a ``<col>_ci95`` column beside each released one;
        ``.attrs`` holds accuracy, privacy and budget (``Result.to_pandas``)."""
        try:
            return self.result.to_pandas()
        except ImportError as exc:
            raise UsageError(str(exc), "pip install 'veilql[jupyter]' (or pandas)") from None

    def plot(self, y: str | None = None, x: str | None = None, ax: Any = None) -> Any:
        """The released values of ``y`` per group ``x`` with their 95% error bars."""
        return plot(self.result, y, x, ax)

    def __len__(self) -> int:
        return len(self.result.rows)

    def __iter__(self) -> Iterator[list[Any]]:
        return iter(self.result.rows)

    def _repr_html_(self) -> str:
        text = self.result._repr_html_()
        if self.dry_run and self.plan is not None:
            preview = accuracy_text(self.plan)
            if preview:  # one more caption line, inside the output block
                head, _, tail = text.rpartition("</div>")
                text = f'{head}<div class="veil-caption">{html.escape(preview)}</div></div>{tail}'

        return text

    def __repr__(self) -> str:
        text = "" if self.dry_run else format_result(self.result, "table") + "\n"
        return text + footer(self.result)


def plot(result: Result, y: str | None = None, x: str | None = None, ax: Any = None) -> Any:
    """``Result.plot`` with its complaints as ``UsageError`` (shown without traceback)."""
    if result.dry_run:
        raise UsageError("a dry run released nothing to plot",
                         "run the query without --dry-run first")
    try:
        return result.plot(y=y, x=x, ax=ax)
    except ValueError as exc:
        raise UsageError(str(exc), "%veil plot COLUMN --x GROUP") from None


class PlanText:
    """The ``--explain`` text of a plan; shown preformatted in a notebook."""

    def __init__(self, text: str) -> None:
        self.text = text

    def _repr_html_(self) -> str:
        return plan_html(self.text)

    def __repr__(self) -> str:
        return self.text

    def __str__(self) -> str:
        return self.text


class BudgetTable:
    """``%veil budget``: spent and remaining (epsilon, delta) per party, as a table."""

    COLUMNS = ("party", "epsilon_spent", "epsilon_remaining", "delta_spent", "delta_remaining")

    def __init__(self, budget: dict[str, dict[str, float]], analyst: str) -> None:
        self.budget = budget
        self.analyst = analyst

    @property
    def rows(self) -> list[list[Any]]:
        """One row per party, in ``COLUMNS`` order."""
        return [[p, *(b[c] for c in self.COLUMNS[1:])] for p, b in self.budget.items()]

    def to_pandas(self) -> Any:
        """The table as a DataFrame indexed by party."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=list(self.COLUMNS)).set_index("party")

    def _repr_html_(self) -> str:
        return budget_html(self.budget, self.analyst)

    def __repr__(self) -> str:
        return render(list(self.COLUMNS), self.rows, "table")
