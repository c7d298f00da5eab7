"""Replaying a ledger file: verify the hash chain and derive who has spent what.

``ChainState`` is fed complete lines in file order. Each line must parse, match its own hash,
carry ``seq`` equal to its position and ``prev`` equal to the previous entry's hash, and make
sense given what came before (commit/abort settle an open reservation of the same query; a
reservation never exceeds the budget it recorded). The first failure raises ``BadEntry`` with
the index where the chain breaks. The same replay serves ``Ledger.verify`` (from scratch) and
the incremental refresh each ``reserve`` does under the lock (from the last verified byte).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from fractions import Fraction

from veilql.engine.ledger.entries import GENESIS_PREV, Entry, EntryError, parse_line


class BadEntry(Exception):
    """Verification failed at entry ``index`` (0-based line number) because of ``problem``."""

    def __init__(self, index: int, problem: str) -> None:
        super().__init__(f"entry {index}: {problem}")
        self.index = index
        self.problem = problem


#: The kinds of ``Problem``: each one makes verification fail.
PROBLEM_KINDS: tuple[str, ...] = (
    "chain",             # the file itself: a hash, seq, prev, schema or balance is wrong
    "key",               # the party's ledger key is unreadable or does not match the chain
    "missing",           # the ledger file is gone although it existed (an anchor or its key)
    "anchor",            # the chain no longer holds an anchor another party keeps for it
    "anchor-file",       # a party's own anchor file is damaged
    "open-reservation",  # a reservation left open longer than a query can take
)


@dataclass(frozen=True)
class Problem:
    """One reason a ledger fails verification.

    ``kind`` is one of ``PROBLEM_KINDS``; ``index`` the entry concerned (if any); ``holder``
    the party whose anchor revealed it (for ``anchor`` and ``missing``).
    """

    kind: str
    message: str
    index: int | None = None
    holder: str | None = None

    def __str__(self) -> str:
        if self.kind == "chain" and self.index is not None:
            return f"broken at entry {self.index}: {self.message}"
        return self.message


def mac_name(key: bytes | None) -> str:
    """The ``mac`` a genesis entry names for this key: keyed or plain chaining."""
    return "sha256" if key is None else "hmac-sha256"


@dataclass
class ChainState:
    """What a verified prefix of a ledger says: chain tip, spending, reservations.

    ``offset`` is the number of bytes verified; ``last_line`` the bytes of the last entry,
    kept so a later refresh can check the file still holds them where it left off.
    """

    party: str
    key: bytes | None
    ident: tuple[int, int] | None = None
    offset: int = 0
    last_line: bytes = b""
    last_hash: str = GENESIS_PREV
    entries: list[Entry] = field(default_factory=list)
    spent: dict[str, tuple[Fraction, Fraction]] = field(default_factory=dict)
    reserves: dict[int, Entry] = field(default_factory=dict)
    settled: dict[int, Entry] = field(default_factory=dict)

    @property
    def next_seq(self) -> int:
        """The ``seq`` the next appended entry must carry."""
        return len(self.entries)

    def spent_by(self, analyst: str) -> tuple[Fraction, Fraction]:
        """(epsilon, delta) reserved and not aborted by ``analyst``: open ones count."""
        return self.spent.get(analyst, (Fraction(0), Fraction(0)))

    def pending_by(self, analyst: str) -> tuple[Fraction, Fraction]:
        """(epsilon, delta) of ``analyst``'s reservations that are still open (may abort)."""
        eps, dlt = Fraction(0), Fraction(0)
        for seq, entry in self.reserves.items():
            if entry.analyst == analyst and seq not in self.settled:
                assert entry.epsilon is not None and entry.delta is not None
                eps, dlt = eps + entry.epsilon, dlt + entry.delta
        return eps, dlt

    def feed_bytes(self, data: bytes) -> None:
        """Verify and apply every line of ``data``; a last piece without newline is torn."""
        pieces = data.split(b"\n")
        for piece in pieces[:-1]:
            self.feed_line(piece + b"\n")
        if pieces[-1]:
            raise BadEntry(
                self.next_seq,
                f"last entry is truncated ({len(pieces[-1])} bytes without a newline)",
            )

    def feed_line(self, line: bytes) -> Entry:
        """Verify one complete line against the chain so far and apply it."""
        index = self.next_seq
        if line.strip() == b"":
            raise BadEntry(index, "empty line")
        try:
            entry = parse_line(line, self.key)
        except EntryError as exc:
            raise BadEntry(index, self._explain(index, line, str(exc))) from None
        if entry.seq != index:
            raise BadEntry(
                index, f"seq is {entry.seq}, expected {index} (entries deleted, inserted or "
                "reordered)"
            )
        if entry.prev != self.last_hash:
            raise BadEntry(
                index, "prev does not match the previous entry's hash (an earlier entry was "
                "changed, or entries were deleted, inserted or reordered)"
            )
        if entry.party != self.party:
            raise BadEntry(index, f"entry names party {entry.party!r}, not {self.party!r}")
        self._apply(index, entry)
        self.entries.append(entry)
        self.last_hash = entry.hash
        self.last_line = line
        self.offset += len(line)
        return entry

    def _explain(self, index: int, line: bytes, problem: str) -> str:
        """A clearer message when a genesis hash fails because of keyed vs plain chaining."""
        if index != 0:
            return problem
        try:
            mac = json.loads(line).get("mac")
        except (ValueError, AttributeError):
            return problem
        if isinstance(mac, str) and mac != mac_name(self.key):
            return (
                f"ledger is chained with {mac} but was opened "
                + ("with a key" if self.key else "without a key")
            )
        return problem

    def _apply(self, index: int, entry: Entry) -> None:
        if index == 0:
            if entry.kind != "genesis":
                raise BadEntry(0, f"first entry is {entry.kind!r}, not genesis")
            if entry.mac != mac_name(self.key):
                raise BadEntry(0, f"genesis names mac {entry.mac!r}, expected "
                                  f"{mac_name(self.key)!r}")
            return
        if entry.kind == "genesis":
            raise BadEntry(index, "a second genesis entry")
        if entry.kind == "reserve":
            self._apply_reserve(index, entry)
        elif entry.kind in ("commit", "abort"):
            self._apply_settle(index, entry)
        # "repair" entries only record discarded bytes; they change no balance.

    def _apply_reserve(self, index: int, entry: Entry) -> None:
        assert entry.analyst is not None and entry.epsilon is not None
        assert entry.delta is not None
        spent_eps, spent_delta = self.spent_by(entry.analyst)
        new = (spent_eps + entry.epsilon, spent_delta + entry.delta)
        assert entry.budget_epsilon is not None and entry.budget_delta is not None
        if new[0] > entry.budget_epsilon or new[1] > entry.budget_delta:
            raise BadEntry(index, "reservation exceeds the budget it records (overspent)")
        self.spent[entry.analyst] = new
        self.reserves[index] = entry

    def _apply_settle(self, index: int, entry: Entry) -> None:
        assert entry.ref is not None
        reserve = self.reserves.get(entry.ref)
        if reserve is None:
            raise BadEntry(index, f"{entry.kind} refers to entry {entry.ref}, not a reservation")
        if entry.ref in self.settled:
            raise BadEntry(index, f"{entry.kind} of reservation {entry.ref}, already settled")
        same = ("analyst", "query_id", "sql", "epsilon", "delta", "tables")
        if any(getattr(entry, name) != getattr(reserve, name) for name in same):
            raise BadEntry(index, f"{entry.kind} does not match reservation {entry.ref}")
        self.settled[entry.ref] = entry
        if entry.kind == "abort":
            assert entry.analyst is not None and entry.epsilon is not None
            assert entry.delta is not None
            spent_eps, spent_delta = self.spent_by(entry.analyst)
            self.spent[entry.analyst] = (spent_eps - entry.epsilon, spent_delta - entry.delta)
