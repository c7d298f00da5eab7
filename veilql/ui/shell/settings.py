"""The shell's settings: what dot commands change, and how their arguments are read."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from veilql.errors import UsageError

#: Output modes of ``.mode`` (``box`` and ``line`` as in the DuckDB CLI).
MODES: tuple[str, ...] = ("table", "box", "line", "csv", "json", "jsonl", "markdown")
#: Ask before a query that spends more epsilon than this (the shell and the notebook magic).
DEFAULT_CONFIRM_ABOVE = 2.0


@dataclass
class Settings:
    """The shell's per-session settings, changed by dot commands.

    ``pager`` sends output taller or wider than the terminal through ``$PAGER`` (only when
    stdout is a terminal); ``expanded`` shows each row as a block of ``column | value``
    lines (psql's ``\\x``); ``maxrows`` shows at most that many rows (0: all); ``purpose`` is
    recorded with every query in the charged parties' ledgers.
    """

    mode: str = "table"
    timer: bool = False
    epsilon: float | None = None  # per-query cost for SQL without OPTIONS (None: default)
    delta: float | None = None
    confirm_above: float = DEFAULT_CONFIRM_ABOVE
    pager: bool = True
    expanded: bool = False
    maxrows: int = 0
    purpose: str = ""
    clamp: bool = False  # .clamp: counts at 0, averages to their bounds (veilql.engine.clamp)
    explained_interval: bool = field(default=False, repr=False)  # said what ± means once


def on_off(arg: str, current: bool, what: str, *, toggle: bool = False) -> bool:
    """``on``/``off`` (and 1/0, true/false, yes/no); no argument keeps ``current``, or flips
    it with ``toggle``.

    >>> on_off("ON", False, ".timer"), on_off("", True, "\\\\x", toggle=True)
    (True, False)
    """
    if not arg:
        return not current if toggle else current
    if arg.lower() in ("on", "1", "true", "yes"):
        return True
    if arg.lower() in ("off", "0", "false", "no"):
        return False
    raise UsageError(f"{what} takes on or off, not {arg!r}", f"e.g. {what} on")


def number(arg: str, what: str, *, allow_default: bool) -> float | None:
    """A finite number >= 0 (``default`` gives None when ``allow_default``).

    >>> number("0.5", ".epsilon", allow_default=True), number("default", ".epsilon",
    ...                                                        allow_default=True)
    (0.5, None)
    """
    if allow_default and arg.lower() == "default":
        return None
    try:
        value = float(arg)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        hint = f"e.g. {what} 0.5" + (f", or {what} default" if allow_default else "")
        raise UsageError(f"{what} takes a number >= 0, not {arg!r}", hint) from None
    return value


def count(arg: str, what: str) -> int:
    """A whole number >= 0.

    >>> count("40", ".maxrows")
    40
    """
    try:
        value = int(arg)
    except ValueError:
        value = -1
    if value < 0:
        raise UsageError(f"{what} takes a whole number >= 0, not {arg!r}",
                         f"e.g. {what} 40 (0 shows every row)")
    return value
