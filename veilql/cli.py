"""The ``veil`` command.

This module only assembles the group: each command lives in its own module under
``veilql/ui`` and is listed in ``COMMANDS`` below. Shared options, output and the
error-to-exit-code mapping are in ``veilql/ui/clicommon.py``.

Commands are imported only when they run (``LazyGroup``): ``veil --version``, ``--help``
and the catalog commands do not pay for numpy, DuckDB, OpenDP and the secure runtime.
"""

from __future__ import annotations

import importlib

import click

from veilql import __version__
from veilql.ui.clicommon import VeilGroup

#: Every ``veil`` subcommand: name -> (module, attribute, one-line help for ``veil --help``).
#: ``tests/test_cli_startup.py`` checks that each entry loads the command of that name.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "budget": ("veilql.ui.query", "budget",
               "Spent and remaining privacy budget of the analyst at every party."),
    "certs": ("veilql.ui.certs", "certs",
              "Certificates for party nodes and analysts (mutual TLS)."),
    "demo": ("veilql.ui.demo", "demo",
             "Describe the sample federation (or -f FILE) and run a DP query on it."),
    "explain": ("veilql.ui.query", "explain",
                "Show the plan: each party's local SQL, the secure steps, what is revealed."),
    "ledger": ("veilql.ui.query", "ledger", "Inspect the parties' privacy-budget ledgers."),
    "parties": ("veilql.ui.catalog", "parties",
                "List the federation's parties (the first three are the compute parties)."),
    "query": ("veilql.ui.query", "query",
              "Run SQL across the parties and print the noisy answer (charged)."),
    "report": ("veilql.ui.report.command", "report",
               "Write a compliance report from every party's privacy-budget ledger."),
    "schema": ("veilql.ui.catalog", "schema",
               "Show the usable columns of PARTY.TABLE: type, role, decimals, bounds."),
    "serve": ("veilql.ui.serve", "serve",
              "Run PARTY's node at its address: answer queries from analysts and nodes."),
    "shell": ("veilql.ui.shell", "shell",
              "Interactive SQL shell; with a file on stdin, runs it and stops."),
    "tables": ("veilql.ui.catalog", "tables",
               "List the tables every party shares, or only PARTY's."),
}


class LazyGroup(VeilGroup):
    """A ``VeilGroup`` whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command name, sorted (no import)."""
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Import and return the command ``cmd_name`` (None if there is none)."""
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module, attr, _ = entry
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """``veil --help``'s command list from ``COMMANDS``, without importing them."""
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group("veil", cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    __version__, "--version", "-V", prog_name="veil", message="%(prog)s %(version)s"
)
def main() -> None:
    """VeilQL: SQL across organisations on secret shares, with differential privacy.

    Exit codes: 0 released, 1 query refused, 2 usage or configuration error,
    3 party unreachable or protocol failure, 4 privacy budget exceeded, 130 interrupted.
    """


if __name__ == "__main__":  # pragma: no cover - `python -m veilql.cli`
    main()
