"""The shell's front-ends: the interactive REPL (prompt_toolkit) and batch runs.

``interactive`` follows pgcli and litecli: persistent history, completion (names, dot
commands, group values), highlighting, Enter runs a complete input; long output goes
through ``$PAGER`` (``less -FRSX`` by default) when stdout is a terminal; Ctrl-C while a
query runs cancels it (the engine says what stays charged) and returns to a clean prompt.
``batch`` runs ``veil shell < file.sql``: no prompts, stops at the first error with its
exit code (130 for a cancelled query).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, TextIO

from veilql.errors import ExitCode, VeilError
from veilql.ui.completion import prompt_toolkit_completer
from veilql.ui.progress import Ticker
from veilql.ui.shell.commands import vocabulary
from veilql.ui.shell.core import Shell
from veilql.ui.shell.reply import Reply, one_line
from veilql.ui.shell.statements import is_complete

DEFAULT_PAGER = "less -FRSX"


def exit_code(err: VeilError) -> int:
    """The exit code of an error (``VeilError.exit_code``; refused when it has none)."""
    return int(getattr(err, "exit_code", ExitCode.REFUSED))


def batch(shell: Shell, lines: TextIO, out: TextIO, err: TextIO) -> int:
    """``veil shell < file.sql``: run every statement; stop at the first error, return its code."""

    def show(reply: Reply) -> int | None:
        if reply.out:
            def to_stdout(text: str) -> None:
                out.write(text + "\n")
                out.flush()
            shell.write_out(reply.out, to_stdout)
        if reply.note:
            err.write(reply.note + "\n")
        if reply.error is not None:
            err.write(f"veil: error: {one_line(reply.error)}\n")
            if reply.error.hint:
                err.write(f"hint: {reply.error.hint}\n")
            return exit_code(reply.error)
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


def history_path() -> Path:
    """``$VEIL_HISTORY``, else ``~/.veil_history``."""
    return Path(os.environ.get("VEIL_HISTORY") or Path.home() / ".veil_history").expanduser()


def no_color() -> bool:
    """``$NO_COLOR`` is set: no colour."""
    return bool(os.environ.get("NO_COLOR"))


def needs_pager(text: str, rows: int, columns: int) -> bool:
    """Whether ``text`` is taller or wider than a ``rows`` x ``columns`` terminal.

    >>> needs_pager("a\\nb", 24, 80), needs_pager("x\\n" * 30, 24, 80)
    (False, True)
    >>> needs_pager("x" * 90, 24, 80)
    True
    """
    lines = text.split("\n")
    return len(lines) > max(1, rows - 2) or any(len(line) > columns for line in lines)


def page(text: str, command: str | None = None) -> bool:
    """Show ``text`` through the pager ``command`` (``$PAGER``, else ``less -FRSX``);
    False when no pager could run (the caller prints instead)."""
    command = command or os.environ.get("PAGER") or DEFAULT_PAGER
    try:
        argv = shlex.split(command)
    except ValueError:
        return False
    if not argv:
        return False
    env = dict(os.environ)
    env.setdefault("LESS", "FRSX")
    try:
        subprocess.run(argv, input=text + "\n", text=True, env=env, check=False)
    except (OSError, ValueError):
        return False
    except KeyboardInterrupt:  # leaving the pager with Ctrl-C is not an error
        return True
    return True


class Screen:
    """Where the interactive shell writes data: stdout, or the pager for long output."""

    def __init__(self, shell: Shell, stream: TextIO | None = None) -> None:
        self.shell = shell
        self.stream = stream or sys.stdout

    def show(self, text: str) -> None:
        """Print ``text``, through the pager when it is on, stdout is a terminal and the
        text does not fit the screen."""
        if self.shell.settings.pager and self.stream.isatty():
            try:
                size = os.get_terminal_size(self.stream.fileno())
            except (OSError, ValueError):
                size = None
            if size is not None and needs_pager(text, size.lines, size.columns):
                self.stream.flush()
                if page(text):
                    return
        print(text, file=self.stream, flush=True)


def interactive(shell: Shell) -> int:
    """The prompt_toolkit front-end: history, completion, highlighting, Enter runs on ``;``."""
    from prompt_toolkit import PromptSession, print_formatted_text
    from prompt_toolkit.formatted_text import FormattedText
    from prompt_toolkit.history import FileHistory
    from prompt_toolkit.key_binding import KeyBindings
    from prompt_toolkit.styles import Style

    plain = no_color()
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
        prompt_continuation=continuation,
    )

    questions: Any = PromptSession(style=style)  # no history, no SQL bindings

    def ask(question: str) -> bool:
        ticker("")
        *lines, last = question.split("\n")
        for line in lines:
            say("note", line)
        try:
            answer = questions.prompt(f"{last} [y/N] ")
        except (EOFError, KeyboardInterrupt):
            return False
        return answer.strip().lower() in ("y", "yes")

    ticker = Ticker(sys.stderr) if sys.stderr.isatty() else (lambda _text: None)
    screen = Screen(shell)
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
                for reply in shell.feed(text):
                    if reply.out:
                        shell.write_out(reply.out, screen.show)
                    if reply.note:
                        say("note", reply.note)
                    if reply.error is not None:
                        say("error", f"error: {one_line(reply.error)}")
                        if reply.error.hint:
                            say("hint", f"hint: {reply.error.hint}")
                    if reply.quit:
                        return int(ExitCode.OK)
                    if reply.out or reply.error is not None:
                        print(flush=True)  # a blank line before the next prompt, as litecli
            except KeyboardInterrupt:
                # Outside a running query (which the engine turns into Interrupted, shown
                # above with what stays charged): planning, printing, the pager.
                ticker("")
                shell.reset()
                say("error", "cancelled; nothing more runs (.budget shows what was charged)")
    finally:
        if isinstance(ticker, Ticker):
            ticker.close()
    return int(ExitCode.OK)


def continuation(width: int, line: int, wrap_count: int) -> str:
    """``...>`` under the prompt for a new line; blank for a line the terminal wrapped."""
    return " " * width if wrap_count else " " * max(0, width - 5) + "...> "
