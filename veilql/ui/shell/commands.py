"""The shell's dot commands (``.tables``, ``\\dt`` ...): their handlers, help and completion.

Every command also works with a backslash (``\\tables``), and some have psql or DuckDB
aliases (``\\x``, ``\\o``, ``\\i``, ``\\pset pager``, ``.output``, ``.read``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from veilql.errors import UsageError
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
from veilql.ui.completion import Vocabulary
from veilql.ui.shell.reply import Reply
from veilql.ui.shell.settings import MODES, count, number, on_off

if TYPE_CHECKING:
    from veilql.engine.session import Session
    from veilql.ui.shell.core import Shell

MAX_SCRIPT_BYTES = 10_000_000  # a script for \i is SQL text, not data


@dataclass(frozen=True)
class Command:
    """A dot command: its handler, argument synopsis, one-line help and aliases."""

    name: str
    run: Callable[[Shell, str], Reply]
    args: str
    help: str
    aliases: tuple[str, ...] = ()


def _cmd_help(shell: Shell, arg: str) -> Reply:
    lines = ["SQL statements end with ; and may span lines. EXPLAIN SELECT ... shows a plan.",
             "Every query spends privacy budget; the prompt shows the smallest epsilon left.",
             "Dot commands may follow an unfinished statement, which stays pending.", ""]
    for c in COMMANDS:
        names = " ".join([f"{c.name} {c.args}".strip()] + list(c.aliases))
        lines.append(f"  {names:<44} {c.help}")
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
        text_mode = shell.settings.mode in ("table", "box", "line", "markdown")
        blocks.append(f"{head}\n{body}" if text_mode else body)
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
    shell.settings.timer = on_off(arg, shell.settings.timer, ".timer", toggle=True)
    return Reply(note=f"timer {'on' if shell.settings.timer else 'off'}")


def _cmd_clamp(shell: Shell, arg: str) -> Reply:
    shell.settings.clamp = on_off(arg, shell.settings.clamp, ".clamp", toggle=True)
    return Reply(note="clamping released counts at 0 and averages to their bounds (post-"
                 "processing: no privacy cost, biased)" if shell.settings.clamp
                 else "clamping off: values as released")


def _cmd_pager(shell: Shell, arg: str) -> Reply:
    shell.settings.pager = on_off(arg, shell.settings.pager, ".pager", toggle=True)
    return Reply(note=f"pager {'on' if shell.settings.pager else 'off'} (long output goes "
                 "through $PAGER when stdout is a terminal)" if shell.settings.pager
                 else "pager off")


def _cmd_expanded(shell: Shell, arg: str) -> Reply:
    shell.settings.expanded = on_off(arg, shell.settings.expanded, "\\x", toggle=True)
    return Reply(note=f"expanded display is {'on' if shell.settings.expanded else 'off'}")


def _cmd_pset(shell: Shell, arg: str) -> Reply:
    what, _, value = arg.partition(" ")
    if what == "pager":
        return _cmd_pager(shell, value.strip())
    if what == "expanded":
        return _cmd_expanded(shell, value.strip())
    raise UsageError(f"\\pset {what or '(nothing)'} is not supported",
                     "use \\pset pager [on|off] or \\pset expanded [on|off]; .mode for formats")


def _cmd_maxrows(shell: Shell, arg: str) -> Reply:
    if arg:
        shell.settings.maxrows = count(arg, ".maxrows")
    n = shell.settings.maxrows
    return Reply(note=f"showing at most {n} rows" if n else "showing every row")


def _cmd_output(shell: Shell, arg: str) -> Reply:
    return Reply(note=shell.set_output(_path_arg(arg) if arg else None))


def _cmd_read(shell: Shell, arg: str) -> Reply:
    if not arg:
        raise UsageError(".read needs a file", "e.g. .read queries.sql (or \\i queries.sql)")
    path = Path(_path_arg(arg)).expanduser()
    try:
        size = path.stat().st_size
        if size > MAX_SCRIPT_BYTES:
            raise UsageError(f"{path} has {size} bytes; a script may have at most "
                             f"{MAX_SCRIPT_BYTES}", "split it into smaller scripts")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"no file {path}", "give the path of a SQL script") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}", "give a UTF-8 text file") from None
    return Reply(script=text)


def _path_arg(arg: str) -> str:
    """A file argument, with surrounding quotes removed."""
    arg = arg.strip()
    if len(arg) >= 2 and arg[0] == arg[-1] and arg[0] in ("'", '"'):
        return arg[1:-1]
    return arg


def _cmd_purpose(shell: Shell, arg: str) -> Reply:
    from veilql.engine.ledger.entries import check_purpose

    if arg:
        text = "" if arg.lower() in ("none", "clear", "-") else _path_arg(arg)
        try:
            shell.settings.purpose = check_purpose(text)
        except ValueError as exc:
            raise UsageError(f".purpose: {exc}", "state the purpose as one line of text"
                             ) from None
    purpose = shell.settings.purpose
    return Reply(note=f"purpose of the next queries: {purpose}" if purpose
                 else "no purpose stated (.purpose TEXT records one with every query)")


def _cmd_epsilon(shell: Shell, arg: str) -> Reply:
    if arg:
        shell.settings.epsilon = number(arg, ".epsilon", allow_default=True)
    value = shell.settings.epsilon
    default = shell.session.federation.default_epsilon
    return Reply(note=f"epsilon per query: {value:g}" if value is not None
                 else f"epsilon per query: federation default ({default:g})")


def _cmd_delta(shell: Shell, arg: str) -> Reply:
    if arg:
        shell.settings.delta = number(arg, ".delta", allow_default=True)
    value = shell.settings.delta
    default = shell.session.federation.default_delta
    return Reply(note=f"delta per query: {value:g}" if value is not None
                 else f"delta per query: federation default ({default:g})")


def _cmd_confirm(shell: Shell, arg: str) -> Reply:
    if arg:
        shell.settings.confirm_above = number(arg, ".confirm", allow_default=False) or 0.0
    return Reply(note=f"asking before any query above epsilon {shell.settings.confirm_above:g}")


def _cmd_show(shell: Shell, arg: str) -> Reply:
    s, fed = shell.settings, shell.session.federation
    rows = [["federation", str(fed.path)], ["analyst", shell.session.analyst or "(none)"],
            ["mode", s.mode], ["timer", "on" if s.timer else "off"],
            ["pager", "on" if s.pager else "off"],
            ["expanded", "on" if s.expanded else "off"],
            ["maxrows", str(s.maxrows) if s.maxrows else "all"],
            ["output", str(shell.sink_path) if shell.sink_path else "stdout"],
            ["purpose", s.purpose or "(none)"],
            ["clamp", "on" if s.clamp else "off"],
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
    Command(".cost", lambda s, a: s.cost(a), "SQL",
            "what SQL would spend, the budget before and after, its 95% intervals"),
    Command(".purpose", _cmd_purpose, "[TEXT|none]",
            "why you ask: recorded with every query in the parties' ledgers"),
    Command(".mode", _cmd_mode, "[" + "|".join(MODES) + "]", "output format"),
    Command(".expanded", _cmd_expanded, "[on|off]", "one block of column | value per row",
            ("\\x",)),
    Command(".pager", _cmd_pager, "[on|off]", "long output through $PAGER (on a terminal)"),
    Command(".maxrows", _cmd_maxrows, "N", "show at most N rows (0: all)"),
    Command(".output", _cmd_output, "[FILE]", "results to FILE; alone: back to stdout",
            ("\\o",)),
    Command(".read", _cmd_read, "FILE", "run the statements and commands of FILE", ("\\i",)),
    Command(".timer", _cmd_timer, "[on|off]", "show each query's run time", ("\\timing",)),
    Command(".clamp", _cmd_clamp, "[on|off]", "clamp counts at 0 and averages to their bounds"),
    Command(".epsilon", _cmd_epsilon, "[E|default]", "epsilon of SQL without OPTIONS"),
    Command(".delta", _cmd_delta, "[D|default]", "delta of SQL without OPTIONS"),
    Command(".confirm", _cmd_confirm, "[EPS]", "ask before spending more than EPS"),
    Command(".show", _cmd_show, "", "the current settings"),
    Command("\\pset", _cmd_pset, "pager|expanded [on|off]", "psql's spelling of .pager, \\x"),
    Command(".quit", lambda s, a: Reply(quit=True), "", "leave the shell",
            (".exit", "\\q")),
)
COMMAND_INDEX: dict[str, Command] = {
    name: c for c in COMMANDS for name in (c.name, *c.aliases)
}


def find_command(word: str) -> Command | None:
    """The command ``word`` names (``.tables``, ``\\tables``, ``\\dt`` ...), or None."""
    return COMMAND_INDEX.get(word) or COMMAND_INDEX.get("." + word[1:])


def names(c: Command) -> list[str]:
    """Every spelling of ``c``: ``.name``, ``\\name`` and its aliases."""
    spellings = [c.name, *c.aliases]
    if c.name.startswith("."):
        spellings.insert(1, "\\" + c.name[1:])
    return spellings


def vocabulary(session: Session) -> Vocabulary:
    """What the completer offers: SQL names and group values from the policies, dot commands,
    their arguments."""
    every = [n for c in COMMANDS for n in names(c)]
    tables = [f"{p.name}.{t}" for p in session.federation.parties for t in p.tables]
    arguments: dict[str, Sequence[str]] = {}
    choices: dict[str, Sequence[str]] = {
        ".mode": MODES, ".timer": ("on", "off"), ".pager": ("on", "off"), ".clamp": ("on", "off"),
        ".expanded": ("on", "off"), "\\pset": ("pager", "expanded"), ".schema": tables,
        ".tables": session.federation.party_names}
    for c in COMMANDS:
        values = choices.get(c.name, ())
        if values:
            for n in names(c):
                arguments[n] = values
    return Vocabulary.from_federation(session.federation, dict.fromkeys(every), arguments)
