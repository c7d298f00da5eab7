"""The ``veil`` command.

This module only assembles the group: each command lives in its own module under
``veilql/ui`` and is registered in ``COMMANDS`` below. Shared options, output and the
error-to-exit-code mapping are in ``veilql/ui/clicommon.py``.
"""

from __future__ import annotations

import click

from veilql import __version__
from veilql.ui import catalog, certs, demo, query, serve, shell
from veilql.ui.clicommon import VeilGroup
from veilql.ui.report.command import report

#: Every ``veil`` subcommand; add new commands (query, explain, budget, ...) here.
COMMANDS: tuple[click.Command, ...] = (
    catalog.parties,
    catalog.tables,
    catalog.schema,
    demo.demo,
    query.query,
    query.explain,
    query.budget,
    query.ledger,
    shell.shell,
    report,
    certs.certs,
    serve.serve,
)


@click.group("veil", cls=VeilGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    __version__, "--version", "-V", prog_name="veil", message="%(prog)s %(version)s"
)
def main() -> None:
    """VeilQL: SQL across organisations on secret shares, with differential privacy.

    Exit codes: 0 released, 1 query refused, 2 usage or configuration error,
    3 party unreachable or protocol failure, 4 privacy budget exceeded, 130 interrupted.
    """


for _command in COMMANDS:
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover - `python -m veilql.cli`
    main()
