"""What a ledger hands out: reservations, verification results and charges for reports.

Plain frozen values, kept apart from ``ledger`` (the file, its lock and its chain) so that
reports and the node can name them without the file machinery.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

from veilql.engine.ledger.anchors import Anchor
from veilql.engine.ledger.chain import Problem
from veilql.engine.ledger.entries import STATUS, Entry


@dataclass(frozen=True)
class Reservation:
    """A charge appended to one party's ledger, to be committed or aborted.

    ``seq`` and ``hash`` identify the reserve entry, so a reservation cannot be settled in a
    ledger it does not belong to. ``committed``: its commit was appended with it
    (``Ledger.reserve(commit=True)``).
    """

    party: str
    seq: int
    hash: str
    analyst: str
    query_id: str
    epsilon: Fraction
    delta: Fraction
    tables: tuple[str, ...]
    sql: str
    committed: bool = False


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of ``Ledger.verify`` (or ``multi.verify_all``): ``ok``, entries read, and
    where and why it broke.

    ``problems`` lists every reason it fails (``Problem.kind`` says which kind: chain, key,
    missing, anchor, anchor-file, open-reservation); ``bad_index`` and ``problem`` are those
    of the first. ``warnings`` do not make it fail (e.g. a ledger that is not keyed).
    ``keyed`` says whether the chain is HMAC-keyed (None without entries); ``exists``
    whether the file exists; ``anchors`` are the anchors other parties hold for this ledger
    (filled in by ``multi.verify_all``).
    """

    ok: bool
    entries: int
    bad_index: int | None = None
    problem: str | None = None
    head: str | None = None
    problems: tuple[Problem, ...] = ()
    warnings: tuple[str, ...] = ()
    keyed: bool | None = None
    exists: bool = True
    anchors: tuple[Anchor, ...] = ()

    @classmethod
    def of(cls, entries: int, head: str | None, problems: Iterable[Problem] = (), *,
           warnings: Iterable[str] = (), keyed: bool | None = None, exists: bool = True,
           anchors: Iterable[Anchor] = ()) -> VerifyResult:
        """A result whose ``ok``, ``bad_index`` and ``problem`` follow from ``problems``."""
        found = tuple(problems)
        first = found[0] if found else None
        return cls(
            ok=not found, entries=entries, bad_index=first.index if first else None,
            problem=first.message if first else None, head=head if not found else None,
            problems=found, warnings=tuple(warnings), keyed=keyed, exists=exists,
            anchors=tuple(anchors),
        )

    def adding(self, problems: Iterable[Problem] = (), anchors: Iterable[Anchor] = (),
               ) -> VerifyResult:
        """This result with more problems and the anchors held for it (the head is kept
        only while no problem remains)."""
        return VerifyResult.of(
            self.entries, self.head, (*self.problems, *problems), warnings=self.warnings,
            keyed=self.keyed, exists=self.exists, anchors=(*self.anchors, *anchors),
        )

    @property
    def head_seq(self) -> int | None:
        """``seq`` of the last entry read (None for an empty or missing ledger)."""
        return self.entries - 1 if self.entries else None

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        if self.ok:
            if not self.exists:
                return "no ledger (nothing charged)"
            return f"ok ({self.entries} entries, head {self.head})"
        return "; ".join(str(p) for p in self.problems)


@dataclass(frozen=True)
class Charge:
    """One query at one party, for reports: the reservation and how it was settled."""

    party: str
    seq: int
    analyst: str
    query_id: str
    sql: str
    epsilon: Fraction
    delta: Fraction
    tables: tuple[str, ...]
    status: str  # reserved (still open) | committed | aborted | refused (charged nothing)
    reserved_at: str
    settled_at: str | None
    reason: str | None
    purpose: str = ""
    identity: str | None = None  # certificate | self-asserted; None before it was recorded
    requested: tuple[Fraction, Fraction] | None = None  # refused: what the budget refused


def charge_of(party: str, seq: int, reserve: Entry, settled: Entry | None) -> Charge:
    """The ``Charge`` of reserve entry ``seq`` and its commit or abort entry, if any."""
    e, done = reserve, settled
    assert e.analyst is not None and e.query_id is not None and e.sql is not None
    assert e.epsilon is not None and e.delta is not None and e.tables is not None
    return Charge(
        party=party, seq=seq, analyst=e.analyst, query_id=e.query_id, sql=e.sql,
        epsilon=e.epsilon, delta=e.delta, tables=e.tables,
        status=done.status if done and done.status else STATUS["reserve"],
        reserved_at=e.time, settled_at=done.time if done else None,
        reason=done.reason if done else None, purpose=e.purpose or "", identity=e.identity,
    )


def refusal_of(party: str, entry: Entry) -> Charge:
    """The ``Charge`` of a ``refused`` entry: nothing charged, what was requested kept."""
    e = entry
    assert e.analyst is not None and e.query_id is not None and e.sql is not None
    assert e.tables is not None
    assert e.requested_epsilon is not None and e.requested_delta is not None
    return Charge(
        party=party, seq=e.seq, analyst=e.analyst, query_id=e.query_id, sql=e.sql,
        epsilon=Fraction(0), delta=Fraction(0), tables=e.tables, status=STATUS["refused"],
        reserved_at=e.time, settled_at=e.time, reason=e.reason, purpose=e.purpose or "",
        identity=e.identity, requested=(e.requested_epsilon, e.requested_delta),
    )
