"""``VeilMagic``: the ``%veil`` / ``%%veil`` magic itself (dispatch, session, queries, plots).

A ``VeilError`` becomes IPython's own ``UsageError``: IPython prints only its message (no
traceback) and the cell still fails, so "Run all" stops at a refused query. IPython singles
out exactly that class (``etype is UsageError``), so we raise it rather than a subclass, as
jupysql's ``exceptions.py`` explains.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from IPython.core.error import UsageError as IPythonUsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class, no_var_expand

import veilql
from veilql.engine.dp import LargeEpsilonWarning
from veilql.engine.session import Session
from veilql.errors import UsageError, VeilError
from veilql.ui.magic.args import (
    SUBCOMMANDS,
    QueryArgs,
    expand_variables,
    parse_connect,
    parse_plot,
    parse_query,
)
from veilql.ui.magic.render import BudgetTable, NotebookResult, PlanText, plot
from veilql.ui.magic.settings import MagicSettings
from veilql.ui.preview import accuracy_text, check_budget
from veilql.ui.query import footer

F = TypeVar("F", bound=Callable[..., Any])


def to_ipython_error(err: VeilError) -> IPythonUsageError:
    """IPython's ``UsageError`` (message, no traceback) for a VeilQL error.

    The original stays reachable as ``.veil_error``; ``.error_type`` names its class.

    >>> from veilql.errors import BudgetExceeded
    >>> e = to_ipython_error(BudgetExceeded("over budget", "ask for less"))
    >>> str(e), e.error_type
    ('over budget (BudgetExceeded)\\nhint: ask for less', 'BudgetExceeded')
    """
    # The class name tells a refusal (PolicyError) from a budget stop (BudgetExceeded);
    # a plain usage error needs no label after IPython's own "UsageError:".
    kind = type(err).__name__
    text = err.message if kind == "UsageError" else f"{err.message} ({kind})"
    if err.hint:
        text += f"\nhint: {err.hint}"
    exc = IPythonUsageError(text)
    exc.error_type = type(err).__name__  # type: ignore[attr-defined]
    exc.veil_error = err  # type: ignore[attr-defined]
    return exc


def _notebook_errors(method: F) -> F:
    """Turn a ``VeilError`` into IPython's traceback-free ``UsageError`` (see module doc)."""

    @functools.wraps(method)
    def wrapper(self: VeilMagic, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except VeilError as err:
            if not self.short_errors:
                raise
            raise to_ipython_error(err) from err

    return wrapper  # type: ignore[return-value]


@magics_class
class VeilMagic(Magics, MagicSettings):
    """``%veil`` / ``%%veil``: run VeilQL queries from IPython and Jupyter.

    Configure with ``%config VeilMagic.<option> = value``; ``%config VeilMagic`` lists them.
    """

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self.session: Session | None = None
        self.last: NotebookResult | None = None  # the last released answer, for %veil plot

    # -- entry point -----------------------------------------------------------------------
    @no_var_expand
    @line_cell_magic("veil")
    @_notebook_errors
    def veil(self, line: str, cell: str | None = None) -> Any:
        """Run VeilQL: ``connect``, ``budget``, ``close``, ``plot``, or a query."""
        first, _, rest = line.strip().partition(" ")
        if cell is None and first in SUBCOMMANDS:
            return getattr(self, f"_{first}")(rest)
        if cell is not None and first in SUBCOMMANDS:
            raise UsageError(f"%%veil {first} takes no cell body",
                             f"use the line magic: %veil {first} ...")
        return self._query(parse_query(line, cell))

    # -- subcommands -----------------------------------------------------------------------
    def _connect(self, text: str) -> None:
        args = parse_connect(text)
        session = veilql.connect(args.federation, args.analyst, timeout=args.timeout)
        known = session.federation.analysts
        if session.analyst and session.analyst not in known:
            # Fail now, not at the first query, on a misspelt name.
            session.close()
            raise UsageError(f"analyst {session.analyst!r} has no budget in "
                             f"{session.federation.path}",
                             f"known analysts: {', '.join(sorted(known)) or 'none'}")
        if self.session is not None:
            self.session.close()
        self.session = session
        fed = session.federation
        parties = ", ".join(fed.party_names)
        who = f"as {session.analyst}" if session.analyst else "with no analyst (explain only)"
        print(f"Connected to {fed.name} ({parties}) {who}.")

    def _budget(self, text: str) -> BudgetTable:
        if text.strip():
            raise UsageError(f"%veil budget takes no arguments, got {text.strip()!r}",
                             "use %veil connect --analyst NAME to change analyst")
        session = self._session()
        return BudgetTable(session.budget(), session.analyst or "")

    def _close(self, text: str) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

    def _plot(self, text: str) -> Any:
        args = parse_plot(text)
        if args.result is not None:
            value = self.shell.user_ns.get(args.result)
            if value is None:
                raise UsageError(f"no variable {args.result!r}",
                                 "store a result first: %%veil NAME << SELECT ...")
            result = getattr(value, "result", value)
            if not hasattr(result, "plot"):
                raise UsageError(f"{args.result!r} is not a VeilQL result",
                                 "plot a result stored with NAME << SELECT ...")
        elif self.last is not None:
            result = self.last.result
        else:
            raise UsageError("no released answer to plot yet",
                             "run a query first, or name one with --result NAME")
        return plot(result, args.y, args.x)

    def _session(self) -> Session:
        if self.session is None:
            raise UsageError("not connected to a federation",
                             "run %veil connect [FEDERATION] --analyst NAME first")
        return self.session

    # -- queries ---------------------------------------------------------------------------
    def _query(self, args: QueryArgs) -> Any:
        session = self._session()
        sql = expand_variables(args.sql, self.shell.user_ns if self.shell is not None else {})
        epsilon = args.epsilon if args.epsilon is not None else self.default_epsilon
        delta = args.delta if args.delta is not None else self.default_delta
        if args.explain:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", LargeEpsilonWarning)
                return self._deliver(args.target, PlanText(session.explain(sql, epsilon,
                                                                           delta)))
        if not args.dry_run:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", LargeEpsilonWarning)
                plan = session.plan(sql, epsilon, delta)
            check_budget(session, plan)  # over budget: refused before any confirmation
            if not args.yes and self.confirm_above is not None and \
                    plan.epsilon > self.confirm_above:
                preview = accuracy_text(plan)
                raise UsageError(
                    f"this query would spend epsilon {float(plan.epsilon):g}, above "
                    f"VeilMagic.confirm_above = {self.confirm_above:g}; nothing was spent"
                    + (f" ({preview})" if preview else ""),
                    "add --yes to the %%veil line to spend it, or change the limit with "
                    "%config VeilMagic.confirm_above = ...")
        result = NotebookResult(session.sql(sql, epsilon, delta, dry_run=args.dry_run,
                                            purpose=args.purpose, clamp=args.clamp or None))
        if not result.dry_run:
            self.last = result
        if self.autopandas and not result.dry_run:
            return self._deliver(args.target, result.to_pandas(), result)
        return self._deliver(args.target, result, result)

    def _deliver(self, target: str | None, value: Any, result: NotebookResult | None = None
                 ) -> Any:
        """Return ``value`` for display, or store it in ``target`` and print a summary."""
        if target is None:
            return value
        self.shell.user_ns[target] = value
        if result is not None:
            print(f"{target}: {len(result)} rows; {footer(result.result)}")
        return None
