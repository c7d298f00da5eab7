"""One party's privacy-budget ledger: reserve, then release, then commit (or abort).

Each data party keeps and enforces its own ledger (DESIGN.md, "Ledger"); no one trusts a
central accountant. Costs add up by basic composition (Dwork and Roth 2014, Thm. 3.16): queries
costing (e_i, d_i) fit a budget (E, D) when sum e_i <= E and sum d_i <= D, in exact
``Fraction`` arithmetic (see ``money``).

Semantics. ``reserve`` appends a charge before anything is computed; an open reservation counts
as spent. The caller releases the answer only after ``reserve`` returned, then ``commit``s,
which changes no balance. A failure before release calls ``abort``, which appends an entry
giving the charge back; nothing is ever rewritten. A crash anywhere therefore over-charges at
worst (a reservation left open stays spent) and never releases an uncharged answer. Aborting
a committed reservation is refused.

Concurrency. Every append, and the read-check-append of ``reserve``, happens under an exclusive
``flock`` on ``<path>.lock`` (via ``filelock``; the kernel drops it when a holder dies). Waiting
processes block up to ``timeout`` seconds rather than fail. Under the lock the file is re-read
from the last verified byte and the new tail verified, so no process trusts another's memory.

Integrity. Entries are hash-chained (``entries``). A plain SHA-256 chain detects accidental
damage and any edit, deletion, insertion or reordering made without recomputing the later
hashes, and a truncated last line. It does NOT stop someone with write access who recomputes
every hash after the edit (the algorithm is public), nor deleting whole entries from the end
or the whole file. A per-party HMAC ``key`` makes the first impossible without the key;
comparing ``head()`` with a copy kept elsewhere (``verify(anchor=...)``) catches the others.

>>> import tempfile, pathlib
>>> from veilql.policies.model import Analyst
>>> led = Ledger(pathlib.Path(tempfile.mkdtemp()) / "bank.jsonl", "bank")
>>> alice = Analyst("alice", epsilon=1.0, delta=0.0)
>>> r = led.reserve(alice, 0.3, 0, query_id="q1", sql="SELECT 1", tables=["loans"])
>>> led.commit(r)
>>> led.remaining(alice)
(Fraction(7, 10), Fraction(0, 1))
>>> led.verify().ok
True
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from fractions import Fraction
from pathlib import Path

import filelock

from veilql.engine.ledger.chain import BadEntry, ChainState, mac_name
from veilql.engine.ledger.entries import (
    FORMAT_VERSION,
    GENESIS_PREV,
    STATUS,
    Entry,
    now_utc,
)
from veilql.engine.ledger.errors import BudgetRefused, LedgerBusy, LedgerCorrupt, LedgerError
from veilql.engine.ledger.money import Amount, to_fraction
from veilql.policies.model import Analyst

DEFAULT_TIMEOUT = 120.0  # seconds; the lock is held for one read and one fsync, so this is slack


@dataclass(frozen=True)
class Reservation:
    """A charge appended to one party's ledger, to be committed or aborted.

    ``seq`` and ``hash`` identify the reserve entry, so a reservation cannot be settled in a
    ledger it does not belong to.
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


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of ``Ledger.verify``: ``ok``, entries read, and where and why it broke."""

    ok: bool
    entries: int
    bad_index: int | None = None
    problem: str | None = None
    head: str | None = None

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        if self.ok:
            return f"ok ({self.entries} entries, head {self.head})"
        return f"broken at entry {self.bad_index}: {self.problem}"


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
    status: str  # reserved (still open) | committed | aborted
    reserved_at: str
    settled_at: str | None
    reason: str | None


def _utc(since: datetime | date | str) -> datetime:
    """``since`` as an aware UTC datetime (naive values and dates are taken as UTC)."""
    if isinstance(since, str):
        since = datetime.fromisoformat(since)
    if not isinstance(since, datetime):
        since = datetime(since.year, since.month, since.day)
    return since if since.tzinfo else since.replace(tzinfo=UTC)


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
        reason=done.reason if done else None,
    )


class Ledger:
    """The append-only, hash-chained budget ledger of ``party`` stored at ``path`` (JSON lines).

    ``key`` (optional) makes the chain an HMAC-SHA256 chain; ``timeout`` is how long to wait
    for the lock before raising ``LedgerBusy``. The file is created, with its genesis entry,
    on the first write.
    """

    def __init__(
        self, path: str | os.PathLike[str], party: str, *, key: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.path = Path(path)
        self.party = party
        self._key = key
        self._timeout = timeout
        self._state: ChainState | None = None
        lock_path = f"{self.path}.lock"
        try:
            # Keep the lock file: unlinking it on release races with waiters, and a native
            # flock (no soft fallback) is released by the kernel if the holder crashes.
            self._lock = filelock.FileLock(lock_path, timeout=timeout, preserve_lock_file=True)
        except TypeError:  # filelock < 4 has no such option and always uses flock on Unix
            self._lock = filelock.FileLock(lock_path, timeout=timeout)

    # ------------------------------------------------------------------ budget operations

    def reserve(
        self, analyst: Analyst, epsilon: Amount, delta: Amount = 0, *,
        query_id: str | None = None, sql: str = "", tables: Iterable[str] = (),
    ) -> Reservation:
        """Charge (epsilon, delta) to ``analyst`` if it fits the analyst's budget.

        The budget is ``analyst.epsilon`` / ``analyst.delta`` (from the federation file).
        Raises ``BudgetRefused`` (exit 4), appending nothing, when it does not fit. The
        returned reservation is durable (fsynced) before this returns.
        """
        eps = to_fraction(epsilon, what="epsilon")
        dlt = to_fraction(delta, what="delta")
        budget = (to_fraction(analyst.epsilon, what="budget epsilon"),
                  to_fraction(analyst.delta, what="budget delta"))
        query_id = query_id or uuid.uuid4().hex
        table_list = tuple(tables)
        with self._locked():
            state = self._refresh()
            remaining = self._remaining(state, analyst.name, budget)
            if eps > remaining[0] or dlt > remaining[1]:
                raise BudgetRefused(party=self.party, analyst=analyst.name,
                                    requested=(eps, dlt), remaining=remaining)
            entry = self._append(state, Entry(
                seq=state.next_seq, prev=state.last_hash, kind="reserve", time=now_utc(),
                party=self.party, analyst=analyst.name, query_id=query_id, sql=sql,
                epsilon=eps, delta=dlt, tables=table_list, status=STATUS["reserve"],
                budget_epsilon=budget[0], budget_delta=budget[1],
            ))
        return self._reservation(entry)

    def check(self, analyst: Analyst, epsilon: Amount, delta: Amount = 0) -> BudgetRefused | None:
        """The refusal ``reserve`` would raise now, or None if the cost fits; charges nothing."""
        eps = to_fraction(epsilon, what="epsilon")
        dlt = to_fraction(delta, what="delta")
        remaining = self.remaining(analyst)
        if eps > remaining[0] or dlt > remaining[1]:
            return BudgetRefused(party=self.party, analyst=analyst.name,
                                 requested=(eps, dlt), remaining=remaining)
        return None

    def commit(self, reservation: Reservation) -> None:
        """Record that the reserved query was released; the charge stays. Idempotent."""
        self._settle(reservation, "commit", None)

    def abort(self, reservation: Reservation, reason: str) -> None:
        """Give the charge back: only for a query that failed before release. Idempotent.

        Raises ``LedgerError`` if the reservation was already committed.
        """
        self._settle(reservation, "abort", reason)

    def spent(self, analyst: str) -> tuple[Fraction, Fraction]:
        """(epsilon, delta) charged to ``analyst`` here, open reservations included."""
        with self._locked():
            return self._refresh().spent_by(analyst)

    def remaining(self, analyst: Analyst) -> tuple[Fraction, Fraction]:
        """(epsilon, delta) still available to ``analyst`` (never negative)."""
        budget = (to_fraction(analyst.epsilon, what="budget epsilon"),
                  to_fraction(analyst.delta, what="budget delta"))
        with self._locked():
            return self._remaining(self._refresh(), analyst.name, budget)

    def open_reservations(self) -> list[Reservation]:
        """Reservations neither committed nor aborted (e.g. left by a crashed process)."""
        with self._locked():
            state = self._refresh()
            return [self._reservation(e) for s, e in state.reserves.items()
                    if s not in state.settled]

    # ------------------------------------------------------------------ reading and checking

    def entries(self) -> list[Entry]:
        """Every entry, verified, in file order."""
        with self._locked():
            return list(self._refresh().entries)

    def history(
        self, analyst: str | None = None, since: datetime | date | str | None = None,
    ) -> list[Charge]:
        """One ``Charge`` per reservation, oldest first, optionally for one analyst and from
        ``since`` (UTC; naive values taken as UTC) on."""
        with self._locked():  # snapshot: another thread may refresh the state meanwhile
            state = self._refresh()
            reserves, settled = dict(state.reserves), dict(state.settled)
        cutoff = _utc(since) if since is not None else None
        out: list[Charge] = []
        for seq, e in reserves.items():
            if analyst is not None and e.analyst != analyst:
                continue
            if cutoff is not None and datetime.fromisoformat(e.time) < cutoff:
                continue
            out.append(charge_of(self.party, seq, e, settled.get(seq)))
        return out

    def verify(self, anchor: tuple[int, str] | None = None) -> VerifyResult:
        """Check the whole file from scratch: every hash, ``seq``, ``prev`` and balance.

        ``anchor`` is a ``(seq, hash)`` pair recorded earlier (``head()``); it must still be
        in the chain, which catches rewrites of the whole chain and deleted trailing entries.
        A missing file verifies as empty.
        """
        state = ChainState(self.party, self._key)
        with self._locked():
            try:
                data = self.path.read_bytes()
            except FileNotFoundError:
                data = b""
        try:
            state.feed_bytes(data)
        except BadEntry as bad:
            return VerifyResult(False, len(state.entries), bad.index, bad.problem)
        if anchor is not None:
            seq, expected = anchor
            if seq >= len(state.entries):
                return VerifyResult(False, len(state.entries), len(state.entries),
                                    f"ledger ends before anchored entry {seq} (entries deleted "
                                    "from the end)")
            if state.entries[seq].hash != expected:
                return VerifyResult(False, len(state.entries), seq,
                                    "hash differs from the anchor (chain rewritten)")
        return VerifyResult(True, len(state.entries), head=state.last_hash)

    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the last entry, to record elsewhere as an anchor."""
        with self._locked():
            state = self._refresh()
            return state.next_seq - 1, state.last_hash

    def repair(self) -> bool:
        """Drop a torn last line (a write cut short by a crash or power loss), recording the
        dropped bytes in a ``repair`` entry. Returns False when there is nothing to repair.

        Safe because a torn entry was never acknowledged: a torn reserve never returned (so
        nothing was released), and a torn commit or abort leaves its reservation open, i.e.
        charged. Any other damage raises ``LedgerCorrupt``; that needs a backup, not a repair.
        """
        with self._locked():
            data = self.path.read_bytes() if self.path.exists() else b""
            cut = data.rfind(b"\n") + 1
            if cut == len(data):
                return False
            state = ChainState(self.party, self._key)
            try:
                state.feed_bytes(data[:cut])
            except BadEntry as bad:
                raise LedgerCorrupt(str(self.path), bad.index, bad.problem) from None
            os.truncate(self.path, cut)
            self._state = None
            state = self._refresh()
            self._append(state, Entry(
                seq=state.next_seq, prev=state.last_hash, kind="repair", time=now_utc(),
                party=self.party, reason="torn last line dropped by Ledger.repair",
                discarded=data[cut:].decode("utf-8", errors="backslashreplace"),
            ))
        return True

    # ------------------------------------------------------------------ internals

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the exclusive ledger lock, waiting up to the timeout."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=self._timeout)
        except filelock.Timeout:
            raise LedgerBusy(
                f"ledger {self.path} stayed locked for {self._timeout:g} s",
                "another process holds the ledger lock; retry, or raise the timeout",
            ) from None
        try:
            yield
        finally:
            self._lock.release()

    def _refresh(self) -> ChainState:
        """Bring the cached state up to the end of the file, verifying what is new.

        Called under the lock. Re-reads from the last verified entry; if that entry is no
        longer where it was (file replaced, shrunk or rewritten), replays the whole file.
        """
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._state = ChainState(self.party, self._key)
            return self._state
        ident = (st.st_dev, st.st_ino)
        state = self._state
        fresh = state is None or state.ident != ident or st.st_size < state.offset
        with open(self.path, "rb") as f:
            if not fresh:
                assert state is not None
                f.seek(state.offset - len(state.last_line))
                data = f.read()
                if data.startswith(state.last_line):
                    data = data[len(state.last_line):]
                else:
                    fresh = True
            if fresh:
                f.seek(0)
                data = f.read()
                state = ChainState(self.party, self._key, ident=ident)
        assert state is not None
        self._state = None  # if verification fails, the next call replays from scratch
        try:
            state.feed_bytes(data)
        except BadEntry as bad:
            raise LedgerCorrupt(str(self.path), bad.index, bad.problem) from None
        self._state = state
        return state

    def _append(self, state: ChainState, entry: Entry) -> Entry:
        """Seal ``entry``, append it durably, and apply it to ``state`` (under the lock).

        Writes the genesis entry first when the ledger is new.
        """
        if state.next_seq == 0 and entry.kind != "genesis":
            self._append(state, Entry(
                seq=0, prev=GENESIS_PREV, kind="genesis", time=now_utc(), party=self.party,
                version=FORMAT_VERSION, mac=mac_name(self._key),
            ))
            entry = replace(entry, seq=state.next_seq, prev=state.last_hash)
        sealed = entry.sealed(self._key)
        line = sealed.line()
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(line)
            while view:  # one write in practice; loop in case the OS takes part of it
                view = view[os.write(fd, view):]
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if created:
            self._fsync_dir()
        state.ident = (st.st_dev, st.st_ino)
        try:
            state.feed_line(line)
        except BadEntry as bad:  # cannot happen unless the writer itself is wrong
            self._state = None
            raise LedgerCorrupt(str(self.path), bad.index, bad.problem) from None
        return sealed

    def _fsync_dir(self) -> None:
        """Make a newly created ledger file's directory entry durable."""
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _settle(self, reservation: Reservation, kind: str, reason: str | None) -> None:
        """Append a commit or abort for ``reservation`` after checking it is open here."""
        if reservation.party != self.party:
            raise LedgerError(
                f"reservation of party {reservation.party!r} given to the ledger of "
                f"{self.party!r}", "settle each reservation in the ledger that made it",
            )
        with self._locked():
            state = self._refresh()
            reserve = state.reserves.get(reservation.seq)
            if reserve is None or reserve.hash != reservation.hash:
                raise LedgerError(
                    f"no reservation {reservation.seq} (query {reservation.query_id}) in "
                    f"ledger {self.path}", "settle a reservation returned by this ledger",
                )
            done = state.settled.get(reservation.seq)
            if done is not None:
                if done.kind == kind:
                    return
                raise LedgerError(
                    f"cannot {kind} reservation {reservation.seq} (query "
                    f"{reservation.query_id}): it was already {done.status}",
                    "a committed query stays charged; an aborted one must not be released",
                )
            self._append(state, Entry(
                seq=state.next_seq, prev=state.last_hash, kind=kind, time=now_utc(),
                party=self.party, analyst=reserve.analyst, query_id=reserve.query_id,
                sql=reserve.sql, epsilon=reserve.epsilon, delta=reserve.delta,
                tables=reserve.tables, status=STATUS[kind], ref=reservation.seq,
                reason=reason if kind == "abort" else None,
            ))

    @staticmethod
    def _remaining(
        state: ChainState, analyst: str, budget: tuple[Fraction, Fraction],
    ) -> tuple[Fraction, Fraction]:
        spent = state.spent_by(analyst)
        return (max(Fraction(0), budget[0] - spent[0]), max(Fraction(0), budget[1] - spent[1]))

    def _reservation(self, entry: Entry) -> Reservation:
        assert entry.analyst is not None and entry.query_id is not None
        assert entry.epsilon is not None and entry.delta is not None
        assert entry.tables is not None and entry.sql is not None
        return Reservation(
            party=self.party, seq=entry.seq, hash=entry.hash, analyst=entry.analyst,
            query_id=entry.query_id, epsilon=entry.epsilon, delta=entry.delta,
            tables=entry.tables, sql=entry.sql,
        )
