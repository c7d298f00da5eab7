"""One base error and a few flat subclasses, each carrying its CLI exit code.

Every message says what is wrong; ``hint`` says how to fix it. The CLI prints
``veil: error: <message>`` and ``hint: <hint>`` on stderr and exits with ``exit_code``.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of the ``veil`` command (CONTRACT.md)."""

    OK = 0
    REFUSED = 1  # parse error, unsupported construct, policy violation
    USAGE = 2  # bad flags, missing file, invalid configuration
    UNAVAILABLE = 3  # party unreachable, protocol failure, timeout
    BUDGET = 4  # privacy budget would be exceeded
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


class VeilError(Exception):
    """Base of every error VeilQL raises on purpose."""

    exit_code: ExitCode = ExitCode.REFUSED

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(VeilError):
    """A federation or policy file is missing or invalid (exit 2)."""

    exit_code = ExitCode.USAGE

    def __init__(
        self, message: str, hint: str | None = None, *, file: str | None = None,
        key: str | None = None,
    ) -> None:
        where = ""
        if file:
            where = f"{file}: " if not key else f"{file}: {key}: "
        elif key:
            where = f"{key}: "
        super().__init__(where + message, hint)
        self.file = file
        self.key = key


class UsageError(VeilError):
    """Bad command-line usage (exit 2)."""

    exit_code = ExitCode.USAGE


class QueryError(VeilError):
    """The query is refused before any data is touched (exit 1)."""

    exit_code = ExitCode.REFUSED


class ParseError(QueryError):
    """SQL that does not parse; carries line and column (1-based) of the bad span."""

    def __init__(
        self, message: str, hint: str | None = None, *, line: int | None = None,
        col: int | None = None, sql: str | None = None, span: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(message, hint)
        self.line = line
        self.col = col
        self.sql = sql
        self.span = span


class UnsupportedError(QueryError):
    """A construct outside the SQL VeilQL accepts (exit 1)."""


class PolicyError(QueryError):
    """The query would use data in a way a party's policy forbids (exit 1)."""


class ProtocolError(VeilError):
    """A secure protocol failed: malformed or unexpected message (exit 3)."""

    exit_code = ExitCode.UNAVAILABLE


class PartyUnavailable(ProtocolError):
    """A party did not answer within the timeout, or its connection died (exit 3)."""

    def __init__(self, party: str, message: str | None = None, hint: str | None = None) -> None:
        super().__init__(
            message or f"party {party!r} is unavailable",
            hint or "check that the party's node is running and reachable, or raise the timeout",
        )
        self.party = party


class QueryFailed(ProtocolError):
    """A party failed after the charge was committed (exit 3).

    The message names only the party and the query: whatever went wrong may depend on the
    party's data, so the details stay in that party's own log.
    """

    def __init__(self, party: str, query_id: str) -> None:
        super().__init__(
            f"query {query_id[:12]} failed at party {party!r} after the parties began "
            "computing; the charge stands",
            f"the details are in {party}'s node log under query {query_id[:12]}",
        )
        self.party = party
        self.query_id = query_id


class Interrupted(VeilError):
    """The analyst cancelled the query (Ctrl-C, exit 130); says what stays charged."""

    exit_code = ExitCode.INTERRUPTED


class BudgetExceeded(VeilError):
    """The query would exceed the analyst's privacy budget at some party (exit 4)."""

    exit_code = ExitCode.BUDGET


class LocalEngineError(ProtocolError):
    """A party's own engine failed to run its part of the query (exit 3).

    The message and hint are generic and carry no data: an engine's own text can quote a
    row's value (``Could not convert string 'west-01' to INT32``), so it must never reach
    the analyst. ``detail`` holds that text for the party's own log and is not part of
    ``str()``, ``args``, ``repr()`` or the hint, and a pickled copy drops it; ``stage`` says
    what the engine was doing (``"query"``, ``"transpile"``, ``"catalog"``, ``"version"``).

    >>> e = LocalEngineError("Conversion Error: Could not convert string 'west-01'")
    >>> str(e), e.detail.startswith("Conversion"), "west" in repr(e)
    ("the party's engine could not run its part of the query", True, False)
    """

    GENERIC = "the party's engine could not run its part of the query"
    GENERIC_HINT = (
        "the party's operator finds the engine's own message in the party's log; the "
        "analyst is not shown it, since it can quote the party's data"
    )

    def __init__(self, detail: str = "", *, stage: str = "query") -> None:
        super().__init__(self.GENERIC, self.GENERIC_HINT)
        self.detail = detail
        self.stage = stage

    def __reduce__(self) -> tuple[object, ...]:
        # A pickled copy may leave the party's process: it keeps the stage, not the detail.
        return (type(self), (), {"stage": self.stage})
