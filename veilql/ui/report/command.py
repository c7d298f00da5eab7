"""``veil report``: a compliance report over every party's ledger, written to a file.

The report is always written, even when a ledger fails its integrity check: the officer needs
the report most then. The exit code is 3 in that case (after writing), so a scheduled job
cannot miss it, and one line on stderr says which ledgers failed.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import click

from veilql.errors import ExitCode, UsageError
from veilql.ui.clicommon import federation_option, load
from veilql.ui.report.collect import Report, collect

#: Each format's renderer module (``render_<fmt>`` with a function of the same name): text
#: formats return ``str``, the PDF ``bytes``. Imported on use, so that other ``veil``
#: commands do not pay for loading matplotlib.
RENDERERS: tuple[str, ...] = ("html", "pdf", "csv", "json")


def render(report: Report, fmt: str) -> bytes:
    """The report in ``fmt`` as the bytes of the file (text as UTF-8)."""
    module = importlib.import_module(f"veilql.ui.report.render_{fmt}")
    out = getattr(module, f"render_{fmt}")(report)
    return out.encode("utf-8") if isinstance(out, str) else out


def write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole: through a temporary file renamed into place, so a
    reader never sees half a report. ``-`` writes to standard output."""
    if str(path) == "-":
        stream = click.get_binary_stream("stdout")
        stream.write(data)
        stream.flush()
        return
    if path.is_dir():
        raise UsageError(f"-o {path} is a directory", "give a file name, e.g. -o report.html")
    if not path.parent.exists():
        raise UsageError(f"folder {path.parent} does not exist",
                         "create it first, or write the report somewhere else")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise UsageError(f"cannot write the report to {path}: {exc.strerror or exc}",
                         "choose a file in a folder you can write to") from None
    finally:
        tmp.unlink(missing_ok=True)


@click.command("report")
@federation_option
@click.option("--analyst", default=None, metavar="NAME",
              help="Only this analyst's budgets and queries (default: every analyst).")
@click.option("--party", default=None, metavar="NAME",
              help="Only this party's ledger (default: every party).")
@click.option("--since", default=None, metavar="DATE",
              help="Only queries from DATE on: 2026-03-01, 2026-03-01T09:30, or an age "
                   "such as 7d, 12h. Budgets are always all-time.")
@click.option("--format", "fmt", type=click.Choice(list(RENDERERS)), default=None,
              help="Report format (default: from the -o file's extension).")
@click.option("--anchor", default=None, metavar="FILE",
              type=click.Path(dir_okay=False, path_type=Path),
              help="An earlier report's JSON: every ledger head it recorded must still be "
                   "in today's chains (else the integrity check fails, exit 3).")
@click.option("-o", "--output", "output", required=True, metavar="FILE",
              type=click.Path(dir_okay=False, path_type=Path),
              help="File to write the report to ('-': standard output).")
def report(federation: str | None, analyst: str | None, party: str | None, since: str | None,
           fmt: str | None, anchor: Path | None, output: Path) -> None:
    """Write a compliance report from every party's privacy-budget ledger.

    Budgets, spent and remaining per analyst and party; cumulative epsilon over time; every
    query (time, analyst and how identified, purpose, SQL, tables, columns, mechanism,
    epsilon and delta asked and charged, parties charged, outcome), refused attempts too;
    each ledger's integrity check (and, with --anchor, against an earlier report's heads);
    a sign-off block. Exits 3, after writing the report, when a ledger fails its check.
    """
    if fmt is None:
        fmt = output.suffix.lstrip(".").lower() if str(output) != "-" else ""
        if fmt not in RENDERERS:
            raise UsageError(f"cannot tell the report format from {output.name!r}",
                             "pass --format html|pdf|csv|json")
    model = collect(load(federation), analyst=analyst, party=party, since=since,
                    anchor=anchor)
    write(output, render(model, fmt))
    if not model.ok:
        click.echo(f"veil: error: ledger integrity check FAILED for {', '.join(model.failed)};"
                   f" the report in {output} marks the unverified figures", err=True)
        click.echo("hint: run `veil ledger verify` and restore the damaged ledger from a "
                   "backup", err=True)
        raise click.exceptions.Exit(int(ExitCode.UNAVAILABLE))
