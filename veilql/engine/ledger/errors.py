"""Errors a ledger raises; all subclasses of ``veilql.errors`` with their exit codes.

A refusal (``BudgetRefused``, exit 4) carries the exact figures, so that ``multi.reserve_all``
can list every refusing party in one message.
"""

from __future__ import annotations

from fractions import Fraction

from veilql.engine.ledger.money import fmt
from veilql.errors import BudgetExceeded, ExitCode, VeilError


class LedgerError(VeilError):
    """A ledger cannot be used: damaged, locked too long, or misused (exit 3).

    Exit 3 because the party owning the ledger cannot serve queries until an operator acts;
    to the client this is the same as that party failing.
    """

    exit_code = ExitCode.UNAVAILABLE


class LedgerCorrupt(LedgerError):
    """The ledger file fails verification; no query is charged or released against it."""

    def __init__(self, path: str, index: int | None, problem: str) -> None:
        where = f"entry {index}" if index is not None else "file"
        super().__init__(
            f"ledger {path} is damaged at {where}: {problem}",
            "run `veil ledger verify` to locate the damage, then restore the ledger from a "
            "backup; a torn last line left by a crash can be dropped with Ledger.repair()",
        )
        self.path = path
        self.index = index
        self.problem = problem


class LedgerBusy(LedgerError):
    """The ledger lock was not obtained within the timeout."""


def shortfall_text(what: str, requested: Fraction, remaining: Fraction) -> str:
    """One clause of a refusal, e.g. ``requested epsilon 1.0, remaining 0.5, short by 0.5``.

    >>> shortfall_text("epsilon", Fraction(1), Fraction(1, 2))
    'requested epsilon 1.0, remaining 0.5, short by 0.5'
    """
    return (
        f"requested {what} {fmt(requested)}, remaining {fmt(remaining)}, "
        f"short by {fmt(requested - remaining)}"
    )


class BudgetRefused(BudgetExceeded):
    """One party's ledger refuses a reservation (exit 4); nothing was charged."""

    def __init__(
        self, *, party: str, analyst: str, requested: tuple[Fraction, Fraction],
        remaining: tuple[Fraction, Fraction],
    ) -> None:
        self.party = party
        self.analyst = analyst
        self.requested = requested
        self.remaining = remaining
        super().__init__(
            f"privacy budget of analyst {analyst!r} would be exceeded at {self.detail()}",
            BUDGET_HINT,
        )

    def detail(self) -> str:
        """``party: requested ..., remaining ..., short by ...``, one clause per short
        dimension (epsilon, delta) joined by ``and``."""
        clauses = [
            shortfall_text(name, req, rem)
            for name, req, rem in zip(
                ("epsilon", "delta"), self.requested, self.remaining, strict=True
            )
            if req > rem
        ]
        return f"{self.party}: " + " and ".join(clauses)


class PartiesRefused(BudgetExceeded):
    """A query refused at one or more parties (exit 4); ``refusals`` has the figures of each.

    Nothing stays charged at any party.
    """

    def __init__(self, analyst: str, refusals: list[BudgetRefused]) -> None:
        if len(refusals) == 1:
            where = refusals[0].detail()
        else:
            where = f"{len(refusals)} parties: " + "; ".join(r.detail() for r in refusals)
        super().__init__(
            f"privacy budget of analyst {analyst!r} would be exceeded at {where}", BUDGET_HINT,
        )
        self.analyst = analyst
        self.refusals = refusals


BUDGET_HINT = (
    "ask for less (a smaller epsilon/delta in OPTIONS or --epsilon/--delta), or ask the "
    "party to raise the analyst's budget in the federation file"
)
