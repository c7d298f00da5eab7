"""The ``veil shell`` click command: open the session, pick the front-end, close up."""

from __future__ import annotations

import sys

import click

from veilql.errors import ExitCode, UsageError
from veilql.ui.clicommon import federation_option, report_error
from veilql.ui.progress import Ticker
from veilql.ui.query import analyst_option, open_session
from veilql.ui.shell.core import Shell
from veilql.ui.shell.repl import batch, interactive
from veilql.ui.shell.settings import DEFAULT_CONFIRM_ABOVE, MODES, Settings


@click.command("shell")
@federation_option
@analyst_option
@click.option("--confirm-above", type=float, default=DEFAULT_CONFIRM_ABOVE, show_default=True,
              metavar="EPS", help="Ask before running a query that spends more epsilon than EPS.")
@click.option("--yes", "-y", is_flag=True,
              help="Never ask; also lets a script (stdin not a terminal) spend above EPS.")
@click.option("--mode", type=click.Choice(list(MODES)), default="table", show_default=True,
              help="Output format (change it inside with .mode).")
@click.option("--purpose", default="", metavar="TEXT",
              help="Why you ask, recorded with every query (change it with .purpose).")
def shell(federation: str | None, analyst: str | None, confirm_above: float, yes: bool,
          mode: str, purpose: str) -> int:
    """Interactive SQL shell; with a file on stdin, runs it and stops at the first error.

    Statements end with ; and may span lines; .help lists the dot commands (.tables,
    .schema, .budget, .cost, .explain, .mode, .output, .read, .purpose, .quit ...).
    """
    session = open_session(federation, analyst)
    known = session.federation.analysts
    if session.analyst and session.analyst not in known:
        session.close()
        raise UsageError(f"analyst {session.analyst!r} has no budget in "
                         f"{session.federation.path}",
                         f"known analysts: {', '.join(sorted(known)) or 'none'}")
    settings = Settings(mode=mode, confirm_above=confirm_above)
    core = Shell(session, settings=settings, yes=yes)
    try:
        if purpose:
            reply = core.handle_line(f".purpose {purpose}")
            if reply and reply[0].error is not None:
                raise reply[0].error
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
        core.close()
        session.close()
