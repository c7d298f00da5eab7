"""The Jupyter magic: ``%load_ext veilql``, ``%veil connect``, ``%%veil`` (CONTRACT.md).

::

    %load_ext veilql
    %veil connect [FEDERATION] [--analyst NAME] [--timeout S]
    %veil budget                     # spent and remaining budget at every party
    %veil close
    %%veil [--epsilon E] [--delta D] [--dry-run] [--explain] [--yes] [NAME <<]
    [NAME <<] SELECT ...
    %veil [options] [NAME <<] SELECT ...     # the same on one line

A query returns a ``NotebookResult`` whose HTML shows ``value ± ci95``, the cost and the
budget left; ``NAME << SELECT ...`` stores it in the variable ``NAME`` instead. Options
come from traitlets, so ``%config VeilMagic.default_epsilon = 0.5`` works, as in
jupysql's ``SqlMagic``. A ``VeilError`` becomes IPython's own ``UsageError``: IPython
prints only its message (no traceback) and the cell still fails, so "Run all" stops at a
refused query. IPython singles out exactly that class (``etype is UsageError``), so we
raise it rather than a subclass, as jupysql's ``exceptions.py`` explains.
"""

from __future__ import annotations

import functools
import keyword
import re
import shlex
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from IPython.core.error import UsageError as IPythonUsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class, no_var_expand
from traitlets import Bool, Float, TraitError, validate

import veilql
from veilql.engine.dp import LargeEpsilonWarning
from veilql.engine.result import Result
from veilql.engine.session import Session
from veilql.errors import UsageError, VeilError
from veilql.ui.formats import render
from veilql.ui.html import budget_html, plan_html, result_html
from veilql.ui.query import footer, format_result

F = TypeVar("F", bound=Callable[..., Any])

#: Options of a query, by spelling; value options take a number (``--epsilon 0.5`` or ``=0.5``).
VALUE_OPTIONS: dict[str, str] = {"--epsilon": "epsilon", "--delta": "delta"}
FLAG_OPTIONS: dict[str, str] = {"--dry-run": "dry_run", "--explain": "explain", "--yes": "yes"}
SUBCOMMANDS = ("connect", "budget", "close")

_USAGE = ("%%veil [--epsilon E] [--delta D] [--dry-run] [--explain] [--yes] [NAME <<] "
          "then the SQL; or %veil connect [FEDERATION] --analyst NAME; %veil budget")
_TARGET = re.compile(r"\s*([A-Za-z_]\w*)\s*<<")


@dataclass(frozen=True)
class QueryArgs:
    """A parsed ``%%veil`` invocation: options, the variable to store into, the SQL."""

    sql: str
    epsilon: float | None = None
    delta: float | None = None
    dry_run: bool = False
    explain: bool = False
    yes: bool = False
    target: str | None = None


@dataclass(frozen=True)
class ConnectArgs:
    """A parsed ``%veil connect``: federation file (None: discovery), analyst, timeout."""

    federation: str | None = None
    analyst: str | None = None
    timeout: float | None = None


def _number(option: str, text: str) -> float:
    """A finite float for ``option``, or a ``UsageError`` naming it."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if value != value or value in (float("inf"), float("-inf")):
        raise UsageError(f"{option} needs a number, got {text!r}",
                         f"for example {option} 0.5")
    return value


def _split_target(text: str) -> tuple[str | None, str]:
    """``NAME << rest`` -> (NAME, rest); anything else -> (None, text)."""
    m = _TARGET.match(text)
    if m is None:
        return None, text
    name = m.group(1)
    if keyword.iskeyword(name):
        raise UsageError(f"cannot store a result in {name!r}: it is a Python keyword",
                         "pick another variable name before <<")
    return name, text[m.end():]


def parse_query(line: str, cell: str | None = None) -> QueryArgs:
    """Parse the options line of ``%%veil`` (and its cell), or a one-line ``%veil`` query.

    Options come first, then an optional ``NAME <<``; the SQL is the rest of the line
    (line magic) or the cell, which may itself start with ``NAME <<``. The SQL is kept
    verbatim: quotes and ``--`` comments in it are never parsed as options.

    >>> parse_query("--epsilon 0.5 --dry-run", "SELECT 1")
    QueryArgs(sql='SELECT 1', epsilon=0.5, delta=None, dry_run=True, explain=False, yes=False, target=None)
    >>> a = parse_query("--delta=1e-6 r << SELECT region FROM bank.customers WHERE x = 'a b'")
    >>> a.target, a.delta, a.sql
    ('r', 1e-06, "SELECT region FROM bank.customers WHERE x = 'a b'")
    """  # noqa: E501
    values: dict[str, Any] = {}
    rest = line
    while True:
        m = re.match(r"\s*(\S+)", rest)
        if m is None or not m.group(1).startswith("--"):
            break
        token = m.group(1)
        rest = rest[m.end():]
        name, eq, value = token.partition("=")
        if name in VALUE_OPTIONS:
            if not eq:
                nxt = re.match(r"\s*(\S+)", rest)
                if nxt is None:
                    raise UsageError(f"{name} needs a value", f"for example {name} 0.5")
                value, rest = nxt.group(1), rest[nxt.end():]
            values[VALUE_OPTIONS[name]] = _number(name, value)
        elif name in FLAG_OPTIONS and not eq:
            values[FLAG_OPTIONS[name]] = True
        else:
            known = ", ".join([*VALUE_OPTIONS, *FLAG_OPTIONS])
            raise UsageError(f"unknown option {token!r} for %%veil", f"options: {known}")
    target, rest = _split_target(rest)
    if cell is not None and cell.strip():
        if rest.strip():
            raise UsageError(f"unexpected {rest.strip()!r} on the %%veil line",
                             "put the SQL in the cell body, below the %%veil line")
        body_target, body = _split_target(cell)
        if target and body_target:
            raise UsageError(f"two variables to store into: {target!r} and {body_target!r}",
                             "write NAME << once, on the %%veil line or before the SQL")
        target, rest = target or body_target, body
    sql = rest.strip()
    if not sql:
        raise UsageError("no SQL given", f"usage: {_USAGE}")
    return QueryArgs(sql=sql, target=target, **values)


def parse_connect(text: str) -> ConnectArgs:
    """Parse the arguments of ``%veil connect`` (shell quoting allowed for paths).

    >>> parse_connect("'my fed/federation.toml' --analyst alice")
    ConnectArgs(federation='my fed/federation.toml', analyst='alice', timeout=None)
    >>> parse_connect("--analyst=bob --timeout 5")
    ConnectArgs(federation=None, analyst='bob', timeout=5.0)
    """
    try:
        tokens = shlex.split(text)
    except ValueError as exc:
        raise UsageError(f"cannot parse %veil connect arguments: {exc}",
                         "close the quotes around the federation path") from None
    found: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        name, eq, value = token.partition("=")
        if name in ("--analyst", "--timeout"):
            if not eq:
                if i + 1 >= len(tokens):
                    raise UsageError(f"{name} needs a value", "%veil connect --analyst NAME")
                i, value = i + 1, tokens[i + 1]
            key = name[2:]
            found[key] = value if key == "analyst" else _number(name, value)
        elif token.startswith("-"):
            raise UsageError(f"unknown option {token!r} for %veil connect",
                             "usage: %veil connect [FEDERATION] [--analyst NAME] [--timeout S]")
        elif "federation" in found:
            raise UsageError(f"more than one federation file: {found['federation']!r} and "
                             f"{token!r}", "quote a path that contains spaces")
        else:
            found["federation"] = token
        i += 1
    return ConnectArgs(**found)


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
        """The rows as a DataFrame; ``.attrs`` holds accuracy, privacy and budget."""
        try:
            frame = self.result.to_pandas()
        except ImportError:
            raise UsageError("pandas is not installed",
                             "pip install 'veilql[jupyter]' (or pandas)") from None
        frame.attrs.update(accuracy=self.accuracy, privacy=self.privacy, budget=self.budget)
        return frame

    def __len__(self) -> int:
        return len(self.result.rows)

    def __iter__(self) -> Iterator[list[Any]]:
        return iter(self.result.rows)

    def _repr_html_(self) -> str:
        return result_html(self.result)

    def __repr__(self) -> str:
        text = "" if self.dry_run else format_result(self.result, "table") + "\n"
        return text + footer(self.result)


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
class VeilMagic(Magics):
    """``%veil`` / ``%%veil``: run VeilQL queries from IPython and Jupyter.

    Configure with ``%config VeilMagic.<option> = value``; ``%config VeilMagic`` lists them.
    """

    default_epsilon = Float(
        None, allow_none=True, config=True,
        help="Epsilon of a query without --epsilon or OPTIONS (None: the federation's).")
    default_delta = Float(
        None, allow_none=True, config=True,
        help="Delta of a query without --delta or OPTIONS (None: the federation's).")
    confirm_above = Float(
        5.0, allow_none=True, config=True,
        help="A query costing more epsilon than this needs --yes; re-running a cell "
             "spends budget again (None: never ask).")
    autopandas = Bool(
        False, config=True, help="Return released answers as pandas DataFrames.")
    short_errors = Bool(
        True, config=True,
        help="Show VeilQL errors as one message without traceback (False: full traceback).")

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self.session: Session | None = None

    @validate("default_epsilon", "confirm_above")
    def _positive(self, proposal: Any) -> Any:
        value = proposal["value"]
        if value is not None and not value > 0:
            raise TraitError(f"{proposal['trait'].name} must be > 0 or None, got {value}")
        return value

    @validate("default_delta")
    def _delta(self, proposal: Any) -> Any:
        value = proposal["value"]
        if value is not None and not 0 <= value < 1:
            raise TraitError(f"default_delta must be in [0, 1) or None, got {value}")
        return value

    # -- entry point -----------------------------------------------------------------------
    @no_var_expand
    @line_cell_magic("veil")
    @_notebook_errors
    def veil(self, line: str, cell: str | None = None) -> Any:
        """Run VeilQL: ``connect``, ``budget``, ``close``, or a query (see module doc)."""
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

    def _session(self) -> Session:
        if self.session is None:
            raise UsageError("not connected to a federation",
                             "run %veil connect [FEDERATION] --analyst NAME first")
        return self.session

    # -- queries ---------------------------------------------------------------------------
    def _query(self, args: QueryArgs) -> Any:
        session = self._session()
        epsilon = args.epsilon if args.epsilon is not None else self.default_epsilon
        delta = args.delta if args.delta is not None else self.default_delta
        if args.explain:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", LargeEpsilonWarning)
                return self._deliver(args.target, PlanText(session.explain(args.sql, epsilon,
                                                                           delta)))
        if not args.dry_run and not args.yes and self.confirm_above is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", LargeEpsilonWarning)
                cost = session.plan(args.sql, epsilon, delta).epsilon
            if cost > self.confirm_above:
                raise UsageError(
                    f"this query would spend epsilon {float(cost):g}, above "
                    f"VeilMagic.confirm_above = {self.confirm_above:g}; nothing was spent",
                    "add --yes to the %%veil line to spend it, or change the limit with "
                    "%config VeilMagic.confirm_above = ...")
        result = NotebookResult(session.sql(args.sql, epsilon, delta, dry_run=args.dry_run))
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


def load_ipython_extension(ipython: Any) -> None:
    """Register ``VeilMagic`` (``%load_ext veilql``)."""
    ipython.register_magics(VeilMagic)


def unload_ipython_extension(ipython: Any) -> None:
    """Close the magic's session (``%unload_ext veilql``)."""
    magic = ipython.magics_manager.registry.get("VeilMagic")
    if magic is not None and magic.session is not None:
        magic.session.close()
        magic.session = None
