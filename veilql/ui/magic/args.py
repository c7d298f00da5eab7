"""Parsing ``%%veil`` and ``%veil connect`` lines, and ``{{name}}`` variables in queries.

The SQL is kept verbatim: quotes and ``--`` comments in it are never parsed as options,
and IPython's own ``$x`` / ``{x}`` expansion is off (``@no_var_expand``). Variables are
written ``{{name}}``, as in jupysql, and filled in from the notebook's namespace before the
query is priced; an undefined name is a ``UsageError`` and nothing is charged.
"""

from __future__ import annotations

import decimal
import keyword
import math
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from veilql.errors import UsageError

#: Options of a query, by spelling; value options take a number (``--epsilon 0.5`` or
#: ``=0.5``), text options a word or a quoted string (``--purpose "fraud review"``).
VALUE_OPTIONS: dict[str, str] = {"--epsilon": "epsilon", "--delta": "delta"}
TEXT_OPTIONS: dict[str, str] = {"--purpose": "purpose"}
FLAG_OPTIONS: dict[str, str] = {"--dry-run": "dry_run", "--explain": "explain", "--yes": "yes",
                                "--clamp": "clamp"}
SUBCOMMANDS = ("connect", "budget", "close", "plot")

USAGE = ("%%veil [--epsilon E] [--delta D] [--purpose TEXT] [--dry-run] [--explain] [--yes] "
         "[--clamp] [NAME <<] then the SQL; or %veil connect [FEDERATION] --analyst NAME; "
         "%veil budget; %veil plot [COLUMN] [--x GROUP] [--result NAME]")
_TARGET = re.compile(r"\s*([A-Za-z_]\w*)\s*<<")
_TOKEN = re.compile(r"\s*(\"[^\"]*\"|'[^']*'|\S+)")
_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}")


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
    purpose: str | None = None
    clamp: bool = False  # counts at 0, averages to their bounds (veilql.engine.clamp)


@dataclass(frozen=True)
class ConnectArgs:
    """A parsed ``%veil connect``: federation file (None: discovery), analyst, timeout."""

    federation: str | None = None
    analyst: str | None = None
    timeout: float | None = None


@dataclass(frozen=True)
class PlotArgs:
    """A parsed ``%veil plot``: the released column, the group column, the result's name."""

    y: str | None = None
    x: str | None = None
    result: str | None = None


def number(option: str, text: str) -> float:
    """A finite float for ``option``, or a ``UsageError`` naming it."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if value != value or value in (float("inf"), float("-inf")):
        raise UsageError(f"{option} needs a number, got {text!r}",
                         f"for example {option} 0.5")
    return value


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in ("'", '"'):
        return text[1:-1]
    return text


def split_target(text: str) -> tuple[str | None, str]:
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
    QueryArgs(sql='SELECT 1', epsilon=0.5, delta=None, dry_run=True, explain=False, yes=False, target=None, purpose=None, clamp=False)
    >>> a = parse_query("--delta=1e-6 r << SELECT region FROM bank.customers WHERE x = 'a b'")
    >>> a.target, a.delta, a.sql
    ('r', 1e-06, "SELECT region FROM bank.customers WHERE x = 'a b'")
    >>> parse_query('--purpose "churn review" --yes', "SELECT 1").purpose
    'churn review'
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
        if name in VALUE_OPTIONS or name in TEXT_OPTIONS:
            if not eq:
                nxt = _TOKEN.match(rest)
                if nxt is None:
                    example = "0.5" if name in VALUE_OPTIONS else '"fraud review"'
                    raise UsageError(f"{name} needs a value", f"for example {name} {example}")
                value, rest = nxt.group(1), rest[nxt.end():]
            if name in VALUE_OPTIONS:
                values[VALUE_OPTIONS[name]] = number(name, value)
            else:
                values[TEXT_OPTIONS[name]] = _unquote(value)
        elif name in FLAG_OPTIONS and not eq:
            values[FLAG_OPTIONS[name]] = True
        else:
            known = ", ".join([*VALUE_OPTIONS, *TEXT_OPTIONS, *FLAG_OPTIONS])
            raise UsageError(f"unknown option {token!r} for %%veil", f"options: {known}")
    target, rest = split_target(rest)
    if cell is not None and cell.strip():
        if rest.strip():
            raise UsageError(f"unexpected {rest.strip()!r} on the %%veil line",
                             "put the SQL in the cell body, below the %%veil line")
        body_target, body = split_target(cell)
        if target and body_target:
            raise UsageError(f"two variables to store into: {target!r} and {body_target!r}",
                             "write NAME << once, on the %%veil line or before the SQL")
        target, rest = target or body_target, body
    sql = rest.strip()
    if not sql:
        raise UsageError("no SQL given", f"usage: {USAGE}")
    return QueryArgs(sql=sql, target=target, **values)


def expand_variables(sql: str, namespace: Mapping[str, Any]) -> str:
    """Fill in every ``{{name}}`` of ``sql`` from ``namespace`` (the notebook's variables),
    as jupysql does: the value's text goes in as it is, so quote strings in the SQL
    (``region = '{{region}}'``). Only numbers, text and booleans may be inserted; an
    undefined name is a ``UsageError``.

    >>> expand_variables("SELECT COUNT(*) FROM t WHERE region = '{{ r }}' LIMIT {{n}}",
    ...                  {"r": "north", "n": 3})
    "SELECT COUNT(*) FROM t WHERE region = 'north' LIMIT 3"
    """
    missing = [m.group(1) for m in _VARIABLE.finditer(sql) if m.group(1) not in namespace]
    if missing:
        names = ", ".join(dict.fromkeys(missing))
        raise UsageError(f"undefined variable{'s' if len(missing) > 1 else ''} in the query: "
                         f"{names}; nothing was run or charged",
                         "define it in a cell above, or write {{name}} only for variables")

    def value(m: re.Match[str]) -> str:
        v = namespace[m.group(1)]
        if isinstance(v, bool):
            return "TRUE" if v else "FALSE"
        if isinstance(v, float) and not math.isfinite(v):
            raise UsageError(f"variable {m.group(1)} is {v!r}, not a finite number",
                             "insert only finite numbers")
        if isinstance(v, str | int | float | decimal.Decimal):
            return str(v)
        raise UsageError(f"variable {m.group(1)} is a {type(v).__name__}: only numbers, text "
                         "and booleans can go into a query",
                         "build the text yourself, e.g. a comma-separated list for IN (...)")

    return _VARIABLE.sub(value, sql)


def parse_connect(text: str) -> ConnectArgs:
    """Parse the arguments of ``%veil connect`` (shell quoting allowed for paths).

    >>> parse_connect("'my fed/federation.toml' --analyst alice")
    ConnectArgs(federation='my fed/federation.toml', analyst='alice', timeout=None)
    >>> parse_connect("--analyst=bob --timeout 5")
    ConnectArgs(federation=None, analyst='bob', timeout=5.0)
    """
    tokens = _shlex(text, "%veil connect", "close the quotes around the federation path")
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
            found[key] = value if key == "analyst" else number(name, value)
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


def parse_plot(text: str) -> PlotArgs:
    """Parse ``%veil plot [COLUMN] [--x GROUP] [--result NAME]``.

    >>> parse_plot("n --x region --result res")
    PlotArgs(y='n', x='region', result='res')
    """
    tokens = _shlex(text, "%veil plot", "close the quotes")
    found: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        name, eq, value = token.partition("=")
        if name in ("--x", "--result"):
            if not eq:
                if i + 1 >= len(tokens):
                    raise UsageError(f"{name} needs a value", "%veil plot n --x region")
                i, value = i + 1, tokens[i + 1]
            found[name[2:]] = value
        elif token.startswith("-"):
            raise UsageError(f"unknown option {token!r} for %veil plot",
                             "usage: %veil plot [COLUMN] [--x GROUP] [--result NAME]")
        elif "y" in found:
            raise UsageError(f"more than one column to plot: {found['y']!r} and {token!r}",
                             "plot one released column at a time")
        else:
            found["y"] = token
        i += 1
    return PlotArgs(**found)


def _shlex(text: str, what: str, hint: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise UsageError(f"cannot parse {what} arguments: {exc}", hint) from None
