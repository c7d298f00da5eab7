"""What one statement or dot command produced, for a front-end to show."""

from __future__ import annotations

from dataclasses import dataclass

from veilql.errors import VeilError


@dataclass
class Reply:
    """What one statement or dot command produced.

    ``out`` is data (stdout, or the ``\\o`` file), ``note`` is commentary such as the cost
    footer, warnings or the timer (stderr), ``error`` a failure to report; ``quit`` ends
    the shell. ``script`` is the text of a file to run (``\\i``), fed by the shell itself.
    """

    out: str = ""
    note: str = ""
    error: VeilError | None = None
    quit: bool = False
    script: str | None = None


def one_line(err: VeilError) -> str:
    """The first line of an error message (parse errors add a marked copy of the SQL)."""
    return err.message.strip().splitlines()[0] if err.message.strip() else type(err).__name__
