"""``veil shell``: an interactive SQL shell over a federation, and its scriptable core.

The core, ``Shell``, turns input lines into ``Reply`` objects (data for stdout, notes for
stderr, or an error) and knows nothing about terminals: multi-line statements run when a
``;`` ends them, dot commands (``.tables``, ``.budget``, ``.mode`` ... with backslash
aliases as in psql) run on their own line. Two front-ends drive it: ``interactive``
(prompt_toolkit, after pgcli and litecli: persistent history, completion, highlighting)
and ``batch`` (``veil shell < file.sql``: no prompts, stops at the first error with its
exit code). Every statement spends budget, so the prompt shows the smallest epsilon left
at any party and a query above ``--confirm-above`` asks first (or, in batch, is refused
unless ``--yes``).
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import click

from veilql.engine.dp import LargeEpsilonWarning
from veilql.engine.result import Result
from veilql.engine.session import Session
from veilql.errors import ExitCode, UsageError, VeilError
from veilql.ui.catalog import (
    PARTY_COLUMNS,
    SCHEMA_COLUMNS,
    TABLE_COLUMNS,
    lookup_party,
    lookup_table,
    party_rows,
    schema_rows,
    table_rows,
)
from veilql.ui.clicommon import federation_option, report_error
from veilql.ui.completion import Vocabulary, prompt_toolkit_completer
from veilql.ui.formats import render, render_table
from veilql.ui.markdown import render_markdown
from veilql.ui.noisy import noisy_text
from veilql.ui.query import analyst_option, format_result, open_session

MODES: tuple[str, ...] = ("table", "csv", "json", "jsonl", "markdown")
DEFAULT_CONFIRM_ABOVE = 2.0


@dataclass
class Reply:
    """What one statement or dot command produced.

    ``out`` is data (stdout), ``note`` is commentary such as the cost footer, warnings
    or the timer (stderr), ``error`` a failure to report; ``quit`` ends the shell.
    """

    out: str = ""
    note: str = ""
    error: VeilError | None = None
    quit: bool = False


@dataclass
class Settings:
    """The shell's per-session settings, changed by dot commands."""

    mode: str = "table"
    timer: bool = False
    epsilon: float | None = None  # per-query cost for SQL without OPTIONS (None: default)
    delta: float | None = None
    confirm_above: float = DEFAULT_CONFIRM_ABOVE
    explained_interval: bool = field(default=False, repr=False)  # said what ± means once


# -- statements ------------------------------------------------------------------------------
def split_statements(text: str) -> tuple[list[str], str]:
    """Split ``text`` at top-level ``;``: the complete statements, and what follows the last.

    Semicolons inside quotes and comments do not count; a piece that is only comments is
    dropped, so a trailing ``-- note`` does not leave a statement pending.

    >>> split_statements("SELECT 1; SELECT ';' -- x;\\n; SELECT")
    (['SELECT 1', "SELECT ';' -- x;"], 'SELECT')
    >>> split_statements("SELECT 1; -- done")
    (['SELECT 1'], '')
    """
    done: list[str] = []
    start = i = 0
    meaningful = False  # anything but blanks and comments since the last ;
    n = len(text)
    while i < n:
        c = text[i]
        if c in ("'", '"'):
            meaningful = True
            end = text.find(c, i + 1)
            while end != -1 and text[end + 1:end + 2] == c:  # '' escapes a quote
                end = text.find(c, end + 2)
            i = n if end == -1 else end + 1
            continue
        if text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end == -1 else end + 1
            continue
        if text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end == -1 else end + 2
            continue
        if c == ";":
            if meaningful:
                done.append(text[start:i].strip())
            start, meaningful = i + 1, False
        elif not c.isspace():
            meaningful = True
        i += 1
    return done, text[start:].strip() if meaningful else ""


def is_complete(text: str) -> bool:
    """Whether ``text`` is ready to run: dot commands on their own lines, blank, or SQL ended
    by ``;`` (what Enter checks before it runs the input rather than opening a new line).

    >>> is_complete(".tables"), is_complete("SELECT 1"), is_complete("SELECT 1;\\n")
    (True, False, True)
    >>> is_complete(".mode csv\\nSELECT 1"), is_complete(".mode csv\\nSELECT 1;\\n.timer on")
    (False, True)
    """
    pending = ""
    for line in text.split("\n"):
        if not pending and line.lstrip()[:1] in (".", "\\"):
            continue
        _, pending = split_statements(pending + "\n" + line if pending else line)
    return not pending


def _one_line(err: VeilError) -> str:
    """The first line of an error message (parse errors add a marked copy of the SQL)."""
    return err.message.strip().splitlines()[0] if err.message.strip() else type(err).__name__


# -- numbers -----------------------------------------------------------------------------------
def result_cells(result: Result) -> tuple[list[list[Any]], list[bool]]:
    """Rows with every noisy cell as ``value ± half`` (aligned on ``±``), and which are noisy."""
    noisy = [name in result.accuracy for name in result.columns]
    pairs: list[list[Any]] = []
    for r, row in enumerate(result.rows):
        cells: list[Any] = []
        for name, value, is_noisy in zip(result.columns, row, noisy, strict=True):
            if not is_noisy:
                cells.append(value)
                continue
            acc = result.accuracy[name]
            half = acc["ci95_rows"][r] if "ci95_rows" in acc else acc.get("ci95")
            cells.append(noisy_text(value, half))
        pairs.append(cells)
    for i, is_noisy in enumerate(noisy):
        if not is_noisy:
            continue
        wv = max((len(row[i][0]) for row in pairs), default=0)
        wh = max((len(row[i][1]) for row in pairs), default=0)
        for row in pairs:
            v, h = row[i]
            row[i] = f"{v.rjust(wv)} ± {h.ljust(wh)}".rstrip() if h else v.rjust(wv)
    return pairs, noisy


# -- the core ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    """A dot command: its handler, argument synopsis, one-line help and aliases."""

    name: str
    run: Callable[[Shell, str], Reply]
    args: str
    help: str
    aliases: tuple[str, ...] = ()


class Shell:
    """The shell's state and its line handler, independent of any terminal.

    ``confirm`` asks the user whether to run a query above the confirmation threshold
    (``None``: nobody to ask, so such a query is refused with a hint); ``status``
    receives progress text ("" when a step ends), for a front-end to show.
    """

    def __init__(self, session: Session, *, settings: Settings | None = None,
                 confirm: Callable[[str], bool] | None = None, yes: bool = False,
                 status: Callable[[str], None] | None = None) -> None:
        self.session = session
        self.settings = settings or Settings()
        self.confirm = confirm
        self.yes = yes
        self.status = status or (lambda _text: None)
        self.buffer: list[str] = []
        self._left: float | None = None
        self._left_known = False

    # -- input ------------------------------------------------------------------------------
    @property
    def pending(self) -> bool:
        """Whether part of a statement is waiting for its ``;``."""
        return bool(self.buffer)

    def handle_line(self, line: str) -> list[Reply]:
        """Feed one line (or a pasted block); return the replies of what it completed."""
        return list(self.feed(line))

    def feed(self, text: str) -> Iterator[Reply]:
        """Like ``handle_line`` but yields each reply as soon as it is ready.

        ``text`` may hold several lines (a pasted block). After an error, the rest of the
        input given so far is dropped: one statement's failure should not run the next one
        of the same block blind.
        """
        for line in text.split("\n"):
            for reply in self._feed_line(line):
                yield reply
                if reply.error is not None or reply.quit:
                    self.buffer = []
                    return

    def _feed_line(self, line: str) -> Iterator[Reply]:
        if not self.buffer and line.lstrip()[:1] in (".", "\\"):
            yield self._guard(lambda: self.command(line.strip()))
            return
        self.buffer.append(line)
        done, rest = split_statements("\n".join(self.buffer))
        self.buffer = [rest] if rest else []
        for stmt in done:
            yield self._guard(lambda s=stmt: self.statement(s))

    def finish(self) -> list[Reply]:
        """At end of input: run a last statement that lacks its ``;``."""
        if not self.buffer:
            return []
        text, self.buffer = "\n".join(self.buffer), []
        return [self._guard(lambda: self.statement(text))]

    def reset(self) -> None:
        """Drop a half-typed statement (Ctrl-C), and re-read the budget for the prompt."""
        self.buffer = []
        self._left_known = False

    def _guard(self, step: Callable[[], Reply]) -> Reply:
        try:
            return step()
        except VeilError as err:
            return Reply(error=err)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - the shell reports a bug and carries on
            err = VeilError(f"internal error: {type(exc).__name__}: {exc}",
                            "this is a bug; please report it with the input that caused it")
            err.__cause__ = exc
            return Reply(error=err)
        finally:
            self.status("")

    # -- prompt ----------------------------------------------------------------------------
    def epsilon_left(self) -> float | None:
        """The smallest epsilon the analyst has left at any party (None without an analyst)."""
        if not self._left_known:
            self._left_known = True
            try:
                left = [b["epsilon_remaining"] for b in self.session.budget().values()]
                self._left = min(left) if left else None
            except VeilError:
                self._left = None
        return self._left

    def prompt(self) -> str:
        """``alice ε 8.5> `` (``veil> `` without an analyst); the continuation lines match."""
        who = self.session.analyst
        left = self.epsilon_left()
        if who and left is not None:
            head = f"{who} ε {left:.4g}"
        else:
            head = who or "veil"
        return f"{head}> " if not self.buffer else " " * max(0, len(head) - 3) + "...> "

    # -- statements ------------------------------------------------------------------------
    def statement(self, sql: str) -> Reply:
        """Run one SQL statement (``EXPLAIN ...`` shows the plan instead)."""
        head, _, rest = sql.strip().partition(" ")
        if head.upper() == "EXPLAIN":
            return self.explain(rest)
        return self.query(sql)

    def _cost(self) -> tuple[float | None, float | None]:
        return self.settings.epsilon, self.settings.delta

    def _plan(self, sql: str) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LargeEpsilonWarning)
            return self.session.plan(sql, *self._cost())

    def query(self, sql: str) -> Reply:
        """Price the query, confirm a large spend, run it and format the answer."""
        self.status("planning")
        started = time.monotonic()
        plan = self._plan(sql)
        threshold = self.settings.confirm_above
        if plan.epsilon > threshold and not self.yes:
            question = (f"This query spends epsilon {float(plan.epsilon):g} "
                        f"(delta {float(plan.delta):g}) at {', '.join(plan.charged)}, above "
                        f"your threshold {threshold:g}. Run it?")
            if self.confirm is None:
                raise UsageError(
                    f"query would spend epsilon {float(plan.epsilon):g}, above the confirmation "
                    f"threshold {threshold:g}, and there is no terminal to ask",
                    "run `veil shell --yes` to allow it, raise the threshold with "
                    "--confirm-above or .confirm, or lower the cost with .epsilon",
                )
            self.status("")
            if not self.confirm(question):
                return Reply(note="not run; nothing was spent")
            started = time.monotonic()
        self.status(_describe_run(plan))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", LargeEpsilonWarning)
            try:
                result = self.session.sql(sql, *self._cost(), on_step=self._on_step)
            finally:
                self._left_known = False  # the ledgers may have moved, whatever happened
        elapsed = time.monotonic() - started
        notes = [f"warning: {w.message}" for w in caught]
        notes.append(self._footer(result))
        if self.settings.timer:
            notes.append(f"run time: {elapsed:.3f} s")
        return Reply(out=self.format(result), note="\n".join(notes))

    def _on_step(self, party: str, step: str) -> None:
        """The engine's steps, as they start at each party, on the status line."""
        self.status(f"{party}: {step}")

    def _footer(self, result: Result) -> str:
        n = len(result.rows)
        cost = f"epsilon {result.privacy['epsilon']:g}, delta {result.privacy['delta']:g}"
        text = (f"{n} row{'s' if n != 1 else ''}; spent {cost} at "
                f"{', '.join(result.budget) or 'no party'}")
        if result.accuracy and not self.settings.explained_interval and self.settings.mode in (
                "table", "markdown"):
            self.settings.explained_interval = True
            text += " (± is the half-width of a 95% interval of the noise)"
        return text

    def format(self, result: Result) -> str:
        """The answer in the current mode; table and markdown show ``value ± interval``."""
        mode = self.settings.mode
        if mode not in ("table", "markdown"):
            return format_result(result, mode)
        rows, noisy = result_cells(result)
        if mode == "markdown":
            right = [n or (bool(rows) and all(isinstance(r[i], int | float) for r in rows))
                     for i, n in enumerate(noisy)]
            return render_markdown(result.columns, rows, right=right)
        return render_table(result.columns, rows)

    def render(self, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
        """A listing (parties, tables, budget) in the current mode."""
        if self.settings.mode == "markdown":
            return render_markdown(columns, rows)
        return render(columns, rows, self.settings.mode)

    def explain(self, sql: str) -> Reply:
        """The plan of ``sql``: local SQL, secure steps, what is revealed, the cost."""
        sql = _strip_sql(sql, ".explain")
        self.status("planning")
        return Reply(out=self._plan(sql).to_s())

    def cost(self, sql: str) -> Reply:
        """Price ``sql`` (a dry run) against the budget left at every party it charges."""
        sql = _strip_sql(sql, ".cost")
        self.status("planning")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LargeEpsilonWarning)
            result = self.session.sql(sql, *self._cost(), dry_run=True)
        eps, delta = result.privacy["epsilon"], result.privacy["delta"]
        rows = []
        for party, b in result.budget.items():
            e_after = b["epsilon_remaining"] - eps
            d_after = b["delta_remaining"] - delta
            # The ledger decides exactly; this is a preview, so a tiny float slack is fine.
            fits = e_after >= -1e-12 and d_after >= -1e-18
            rows.append([party, eps, delta, round(e_after, 12), d_after,
                         "yes" if fits else "NO"])
        cols = ["party", "epsilon", "delta", "epsilon_left_after", "delta_left_after", "fits"]
        note = "nothing was spent"
        if eps > self.settings.confirm_above:
            note += f"; above the confirmation threshold {self.settings.confirm_above:g}"
        return Reply(out=self.render(cols, rows), note=note)

    # -- dot commands ------------------------------------------------------------------------
    def command(self, line: str) -> Reply:
        """Run one dot command (``.tables``, ``\\dt`` ...)."""
        word, _, arg = line.rstrip(";").strip().partition(" ")
        found = COMMAND_INDEX.get(word) or COMMAND_INDEX.get("." + word[1:])
        if found is None:
            raise UsageError(f"unknown command {word!r}",
                             "type .help for the list of commands; SQL statements end with ;")
        return found.run(self, arg.strip())


def _strip_sql(sql: str, command: str) -> str:
    sql = sql.strip().rstrip(";").strip()
    if not sql:
        raise UsageError(f"{command} needs a SQL query", f"e.g. {command} SELECT COUNT(*) AS n "
                         "FROM bank.customers")
    return sql


def _describe_run(plan: Any) -> str:
    """Progress text for a running plan: who works and which secure steps follow."""
    parties = ", ".join(plan.parties)
    if plan.mode == "local":
        return f"running at {parties} (local, no secret sharing)"
    steps = ["sharing"] + ["secure join"] * len(plan.joins)
    if plan.cross is not None:
        steps.append("secure predicate")
    steps += ["secure aggregate", "noise", "release"]
    return f"running at {parties}: " + " → ".join(dict.fromkeys(steps))


def _on_off(arg: str, current: bool, what: str) -> bool:
    if not arg:
        return current
    if arg.lower() in ("on", "1", "true", "yes"):
        return True
    if arg.lower() in ("off", "0", "false", "no"):
        return False
    raise UsageError(f"{what} takes on or off, not {arg!r}", f"e.g. {what} on")


def _number(arg: str, what: str, *, allow_default: bool) -> float | None:
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


def _cmd_help(shell: Shell, arg: str) -> Reply:
    lines = ["SQL statements end with ; and may span lines. EXPLAIN SELECT ... shows a plan.",
             "Every query spends privacy budget; the prompt shows the smallest epsilon left.", ""]
    for c in COMMANDS:
        names = " ".join([f"{c.name} {c.args}".strip()] + list(c.aliases))
        lines.append(f"  {names:<40} {c.help}")
    lines.append("\nEvery dot command also works with a backslash: \\tables, \\budget ...")
    return Reply(out="\n".join(lines))


def _cmd_parties(shell: Shell, arg: str) -> Reply:
    return Reply(out=shell.render(PARTY_COLUMNS, party_rows(shell.session.federation)))


def _cmd_tables(shell: Shell, arg: str) -> Reply:
    fed = shell.session.federation
    chosen = [lookup_party(fed, arg)] if arg else list(fed.parties)
    return Reply(out=shell.render(TABLE_COLUMNS, table_rows(chosen)))


def _cmd_schema(shell: Shell, arg: str) -> Reply:
    fed = shell.session.federation
    names = [arg] if arg else [f"{p.name}.{t}" for p in fed.parties for t in p.tables]
    blocks = []
    for name in names:
        party, table = lookup_table(fed, name)
        head = (f"{party.name}.{table.name}: privacy unit {table.privacy_unit}, at most "
                f"{table.max_rows_per_unit} row(s) per unit, join_reveal = {table.join_reveal}")
        body = shell.render(SCHEMA_COLUMNS, schema_rows(table))
        blocks.append(f"{head}\n{body}" if shell.settings.mode in ("table", "markdown") else body)
    return Reply(out="\n\n".join(blocks))


def _cmd_budget(shell: Shell, arg: str) -> Reply:
    rows = [[p, b["epsilon_spent"], b["epsilon_remaining"], b["delta_spent"],
             b["delta_remaining"]] for p, b in shell.session.budget().items()]
    cols = ["party", "epsilon_spent", "epsilon_remaining", "delta_spent", "delta_remaining"]
    return Reply(out=shell.render(cols, rows))


def _cmd_mode(shell: Shell, arg: str) -> Reply:
    if not arg:
        return Reply(out=f"mode {shell.settings.mode} (one of {', '.join(MODES)})")
    if arg not in MODES:
        raise UsageError(f"unknown mode {arg!r}", f"use one of {', '.join(MODES)}")
    shell.settings.mode = arg
    return Reply()


def _cmd_timer(shell: Shell, arg: str) -> Reply:
    shell.settings.timer = _on_off(arg, not shell.settings.timer, ".timer")
    return Reply(note=f"timer {'on' if shell.settings.timer else 'off'}")


def _cmd_epsilon(shell: Shell, arg: str) -> Reply:
    if arg:
        shell.settings.epsilon = _number(arg, ".epsilon", allow_default=True)
    value = shell.settings.epsilon
    default = shell.session.federation.default_epsilon
    return Reply(note=f"epsilon per query: {value:g}" if value is not None
                 else f"epsilon per query: federation default ({default:g})")


def _cmd_delta(shell: Shell, arg: str) -> Reply:
    if arg:
        shell.settings.delta = _number(arg, ".delta", allow_default=True)
    value = shell.settings.delta
    default = shell.session.federation.default_delta
    return Reply(note=f"delta per query: {value:g}" if value is not None
                 else f"delta per query: federation default ({default:g})")


def _cmd_confirm(shell: Shell, arg: str) -> Reply:
    if arg:
        shell.settings.confirm_above = _number(arg, ".confirm", allow_default=False) or 0.0
    return Reply(note=f"asking before any query above epsilon {shell.settings.confirm_above:g}")


def _cmd_show(shell: Shell, arg: str) -> Reply:
    s, fed = shell.settings, shell.session.federation
    rows = [["federation", str(fed.path)], ["analyst", shell.session.analyst or "(none)"],
            ["mode", s.mode], ["timer", "on" if s.timer else "off"],
            ["epsilon", f"{s.epsilon:g}" if s.epsilon is not None
             else f"default ({fed.default_epsilon:g})"],
            ["delta", f"{s.delta:g}" if s.delta is not None
             else f"default ({fed.default_delta:g})"],
            ["confirm_above", f"{s.confirm_above:g}" + (" (--yes: never asks)" if shell.yes
                                                        else "")]]
    return Reply(out=shell.render(["setting", "value"], rows))


COMMANDS: tuple[Command, ...] = (
    Command(".help", _cmd_help, "", "this help", ("\\?", "\\h")),
    Command(".parties", _cmd_parties, "", "the federation's parties", ("\\l",)),
    Command(".tables", _cmd_tables, "[PARTY]", "tables every party (or PARTY) shares", ("\\dt",)),
    Command(".schema", _cmd_schema, "[PARTY.TABLE]", "usable columns and their policy",
            ("\\d",)),
    Command(".budget", _cmd_budget, "", "your spent and remaining budget at every party"),
    Command(".explain", lambda s, a: s.explain(a), "SQL", "the plan; spends nothing"),
    Command(".cost", lambda s, a: s.cost(a), "SQL", "what SQL would spend; spends nothing"),
    Command(".mode", _cmd_mode, "[" + "|".join(MODES) + "]", "output format"),
    Command(".timer", _cmd_timer, "[on|off]", "show each query's run time", ("\\timing",)),
    Command(".epsilon", _cmd_epsilon, "[E|default]", "epsilon of SQL without OPTIONS"),
    Command(".delta", _cmd_delta, "[D|default]", "delta of SQL without OPTIONS"),
    Command(".confirm", _cmd_confirm, "[EPS]", "ask before spending more than EPS"),
    Command(".show", _cmd_show, "", "the current settings"),
    Command(".quit", lambda s, a: Reply(quit=True), "", "leave the shell",
            (".exit", "\\q")),
)
COMMAND_INDEX: dict[str, Command] = {
    name: c for c in COMMANDS for name in (c.name, *c.aliases)
}


def vocabulary(session: Session) -> Vocabulary:
    """What the completer offers: SQL names from the policies, dot commands, their arguments."""
    names = [n for c in COMMANDS for n in (c.name, "\\" + c.name[1:], *c.aliases)]
    tables = [f"{p.name}.{t}" for p in session.federation.parties for t in p.tables]
    arguments: dict[str, Sequence[str]] = {}
    for c in COMMANDS:
        values: Sequence[str] = {".mode": MODES, ".timer": ("on", "off"),
                                 ".schema": tables,
                                 ".tables": session.federation.party_names}.get(c.name, ())
        if values:
            for n in (c.name, "\\" + c.name[1:], *c.aliases):
                arguments[n] = values
    return Vocabulary.from_federation(session.federation, dict.fromkeys(names), arguments)


# -- front-ends ----------------------------------------------------------------------------------
def _code(err: VeilError) -> int:
    return int(getattr(err, "exit_code", ExitCode.REFUSED))


def batch(shell: Shell, lines: TextIO, out: TextIO, err: TextIO) -> int:
    """``veil shell < file.sql``: run every statement; stop at the first error, return its code."""

    def show(reply: Reply) -> int | None:
        if reply.out:
            out.write(reply.out + "\n")
            out.flush()
        if reply.note:
            err.write(reply.note + "\n")
        if reply.error is not None:
            err.write(f"veil: error: {_one_line(reply.error)}\n")
            if reply.error.hint:
                err.write(f"hint: {reply.error.hint}\n")
            return _code(reply.error)
        return 0 if reply.quit else None

    for line in lines:
        for reply in shell.feed(line.rstrip("\n")):
            code = show(reply)
            if code is not None:
                return code
    for reply in shell.finish():
        code = show(reply)
        if code is not None:
            return code
    return int(ExitCode.OK)


class Ticker:
    """Shows the current step and its elapsed time on one stderr line, redrawn 10x a second.

    Only for a terminal: ``status("")`` ends the step and erases the line. The engine does
    not report its inner steps yet, so a step here is one phase the shell can see (planning,
    then the run with the plan's secure steps listed).
    """

    def __init__(self, stream: TextIO, delay: float = 0.3) -> None:
        self.stream = stream
        self.delay = delay  # nothing is drawn for steps shorter than this (no flicker)
        self._text = ""
        self._since = 0.0
        self._drawn = False
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="veil-ticker", daemon=True)
        self._thread.start()

    def __call__(self, text: str) -> None:
        """Start step ``text`` ("" ends the current one)."""
        with self._lock:
            self._text = text
            self._since = time.monotonic()
            if not text and self._drawn:
                self._erase()
        self._wake.set()

    def _erase(self) -> None:
        self.stream.write("\r\x1b[2K")
        self.stream.flush()
        self._drawn = False

    def _loop(self) -> None:
        while not self._stop:
            self._wake.wait(0.1)
            self._wake.clear()
            with self._lock:
                if self._stop:
                    break
                elapsed = time.monotonic() - self._since
                if self._text and elapsed >= self.delay:
                    width = max(20, _terminal_width() - 12)
                    text = self._text if len(self._text) <= width else self._text[:width - 1] + "…"
                    self.stream.write(f"\r\x1b[2K{text} … {elapsed:.1f} s")
                    self.stream.flush()
                    self._drawn = True

    def close(self) -> None:
        """Stop the thread and erase any line it drew."""
        with self._lock:
            self._stop = True
            if self._drawn:
                self._erase()
        self._wake.set()
        self._thread.join(1.0)


def _terminal_width() -> int:
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError):
        return 80


def history_path() -> Path:
    """``$VEIL_HISTORY``, else ``~/.veil_history``."""
    return Path(os.environ.get("VEIL_HISTORY") or Path.home() / ".veil_history").expanduser()


def _no_color() -> bool:
    return bool(os.environ.get("NO_COLOR"))


def interactive(shell: Shell) -> int:
    """The prompt_toolkit front-end: history, completion, highlighting, Enter runs on ``;``."""
    from prompt_toolkit import PromptSession, print_formatted_text
    from prompt_toolkit.formatted_text import FormattedText
    from prompt_toolkit.history import FileHistory
    from prompt_toolkit.key_binding import KeyBindings
    from prompt_toolkit.styles import Style

    plain = _no_color()
    style = Style.from_dict({
        "error": "" if plain else "ansired bold", "hint": "" if plain else "ansibrightblack",
        "note": "" if plain else "ansibrightblack", "prompt": "" if plain else "ansigreen",
        "pygments.keyword": "" if plain else "ansiblue bold",
        "pygments.literal.string": "" if plain else "ansiyellow",
        "pygments.literal.number": "" if plain else "ansicyan",
        "pygments.comment": "" if plain else "ansibrightblack italic",
    })

    def say(kind: str, text: str) -> None:
        print_formatted_text(FormattedText([(f"class:{kind}", text)]), style=style,
                             file=sys.stderr)

    keys = KeyBindings()

    @keys.add("enter")
    def _enter(event: Any) -> None:
        # pgcli's rule: Enter runs a complete input and otherwise starts a new line.
        buf = event.current_buffer
        if is_complete(buf.text):
            buf.validate_and_handle()
        else:
            buf.insert_text("\n")

    try:
        history: Any = FileHistory(str(history_path()))
    except OSError:
        from prompt_toolkit.history import InMemoryHistory
        history = InMemoryHistory()
    lexer = None
    if not plain:
        try:
            from prompt_toolkit.lexers import PygmentsLexer
            from pygments.lexers.sql import SqlLexer

            lexer = PygmentsLexer(SqlLexer)
        except ImportError:  # highlighting is a nicety; pygments may be absent
            lexer = None
    session: Any = PromptSession(
        history=history, completer=prompt_toolkit_completer(vocabulary(shell.session)),
        complete_while_typing=False, lexer=lexer, style=style, multiline=True,
        key_bindings=keys, include_default_pygments_style=False, enable_open_in_editor=True,
        prompt_continuation=_continuation,
    )

    questions: Any = PromptSession(style=style)  # no history, no SQL bindings

    def ask(question: str) -> bool:
        ticker("")
        try:
            answer = questions.prompt(f"{question} [y/N] ")
        except (EOFError, KeyboardInterrupt):
            return False
        return answer.strip().lower() in ("y", "yes")

    ticker = Ticker(sys.stderr) if sys.stderr.isatty() else (lambda _text: None)
    shell.confirm = ask
    shell.status = ticker
    who = shell.session.analyst
    say("note", f"veil shell on {shell.session.federation.name} as "
        + (who if who else "nobody (browse with .tables and .schema; --analyst NAME to query)")
        + "; .help for help, .quit to leave")
    try:
        while True:
            try:
                text = session.prompt([("class:prompt", shell.prompt())])
            except KeyboardInterrupt:
                shell.reset()
                continue
            except EOFError:
                break
            try:
                replies = shell.feed(text)
                for reply in replies:
                    if reply.out:
                        print(reply.out, flush=True)
                    if reply.note:
                        say("note", reply.note)
                    if reply.error is not None:
                        say("error", f"error: {_one_line(reply.error)}")
                        if reply.error.hint:
                            say("hint", f"hint: {reply.error.hint}")
                    if reply.quit:
                        return int(ExitCode.OK)
                    if reply.out or reply.error is not None:
                        print(flush=True)  # a blank line before the next prompt, as litecli
            except KeyboardInterrupt:
                ticker("")
                shell.reset()
                say("error", "cancelled: the answer is discarded, but the parties may "
                    "already have charged it (see .budget)")
    finally:
        if isinstance(ticker, Ticker):
            ticker.close()
    return int(ExitCode.OK)


def _continuation(width: int, line: int, wrap_count: int) -> str:
    """``...>`` under the prompt for a new line; blank for a line the terminal wrapped."""
    return " " * width if wrap_count else " " * max(0, width - 5) + "...> "


@click.command("shell")
@federation_option
@analyst_option
@click.option("--confirm-above", type=float, default=DEFAULT_CONFIRM_ABOVE, show_default=True,
              metavar="EPS", help="Ask before running a query that spends more epsilon than EPS.")
@click.option("--yes", "-y", is_flag=True,
              help="Never ask; also lets a script (stdin not a terminal) spend above EPS.")
@click.option("--mode", type=click.Choice(list(MODES)), default="table", show_default=True,
              help="Output format (change it inside with .mode).")
def shell(federation: str | None, analyst: str | None, confirm_above: float, yes: bool,
          mode: str) -> int:
    """Interactive SQL shell; with a file on stdin, runs it and stops at the first error.

    Statements end with ; and may span lines; .help lists the dot commands (.tables,
    .schema, .budget, .cost, .explain, .mode, .timer, .quit ...).
    """
    session = open_session(federation, analyst)
    known = session.federation.analysts
    if session.analyst and session.analyst not in known:
        session.close()
        raise UsageError(f"analyst {session.analyst!r} has no budget in "
                         f"{session.federation.path}",
                         f"known analysts: {', '.join(sorted(known)) or 'none'}")
    settings = Settings(mode=mode, confirm_above=confirm_above)
    try:
        core = Shell(session, settings=settings, yes=yes)
        if sys.stdin.isatty():
            try:
                return interactive(core)
            except ImportError as exc:  # pragma: no cover - prompt_toolkit is a dependency
                report_error(f"the interactive shell needs prompt_toolkit ({exc})",
                             "pip install 'prompt_toolkit>=3.0.40,<4'")
                return int(ExitCode.USAGE)
        ticker = Ticker(sys.stderr) if sys.stderr.isatty() else None
        core.status = ticker or core.status
        try:
            return batch(core, sys.stdin, sys.stdout, sys.stderr)
        finally:
            if ticker is not None:
                ticker.close()
    finally:
        session.close()
