"""What every ``veil`` command shares: options, output, and turning errors into exit codes.

A command module (``veilql/ui/catalog.py``, later ``query``, ``explain``, ``budget`` ...)
defines plain click commands with ``@federation_option`` and ``@format_option()``, loads
the federation with ``load(federation)``, prints with ``emit``, and raises ``VeilError``
subclasses for anything that goes wrong; ``VeilGroup`` (the ``veil`` group in
``veilql/cli.py``) prints ``veil: error: ...`` and ``hint: ...`` on stderr and exits with
the error's code. Stdout carries data only.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

from veilql.errors import ExitCode, VeilError
from veilql.ui.formats import FORMATS

if TYPE_CHECKING:
    from veilql.policies.model import Federation

F = TypeVar("F", bound=Callable[..., Any])


def federation_option(func: F) -> F:
    """The ``-f/--federation FILE`` option, passed to the command as ``federation``."""
    return click.option(
        "-f",
        "--federation",
        "federation",
        metavar="FILE",
        default=None,
        help="Federation file (default: $VEIL_FEDERATION, ./federation.toml, the bundled sample).",
    )(func)


def format_option(formats: Sequence[str] = FORMATS, default: str = "table") -> Callable[[F], F]:
    """The ``--format`` option restricted to ``formats``, passed as ``fmt``."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(list(formats)),
        default=default,
        show_default=True,
        help="Output format.",
    )


def load(federation: str | None, *, cached_catalogs: bool = False) -> Federation:
    """Find (``-f``, ``$VEIL_FEDERATION``, ./federation.toml, sample) and load the federation.

    ``cached_catalogs``: file connectors' catalogs may come from the catalog cache (the
    catalog commands, which only describe; see ``veilql.connectors.catalog_cache``).
    """
    # Imported here: the loader validates against the connectors' catalogs (DuckDB, Arrow),
    # which `veil --version` and `veil --help` should not pay for.
    from veilql.policies.discovery import find_federation
    from veilql.policies.loader import load_federation

    return load_federation(find_federation(federation), cached_catalogs=cached_catalogs)


def emit(text: str) -> None:
    """Write data to stdout, newline-terminated; nothing at all for empty output."""
    if text:
        click.echo(text)


def report_error(message: str, hint: str | None) -> None:
    """The two stderr lines of every error: ``veil: error: ...`` and ``hint: ...``."""
    click.echo(f"veil: error: {message}", err=True)
    if hint:
        click.echo(f"hint: {hint}", err=True)


class VeilGroup(click.Group):
    """A click group whose ``main`` maps every failure to one error line and an exit code.

    ``VeilError`` exits with its ``exit_code``; click usage errors exit 2 (as click does),
    but are printed in the same ``veil: error:`` form.
    """

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command line; exit (or return the code when not standalone)."""
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else int(ExitCode.OK)
        except VeilError as err:
            report_error(err.message, err.hint)
            code = int(err.exit_code)
        except click.UsageError as err:
            if type(err).__name__ == "NoArgsIsHelpError":  # bare `veil`: help, on stderr
                click.echo(err.format_message(), err=True)
                code = int(ExitCode.USAGE)
                if standalone_mode:
                    sys.exit(code)
                return code
            where = err.ctx.command_path if err.ctx is not None else "veil"
            report_error(err.format_message(), f"see '{where} --help'")
            code = int(ExitCode.USAGE)
        except click.ClickException as err:
            report_error(err.format_message(), None)
            code = err.exit_code
        except click.Abort:
            click.echo("veil: aborted", err=True)
            code = 1
        except KeyboardInterrupt:
            # Outside a running query (which raises Interrupted with what stays charged).
            report_error("interrupted", None)
            code = int(ExitCode.INTERRUPTED)
        except OSError as err:
            if err.errno != errno.EPIPE:
                raise
            # The reader of stdout went away (e.g. `veil tables | head`): not an error.
            sys.stderr.close()
            code = 1
        if standalone_mode:
            sys.exit(code)
        return code
