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

Integrity. Entries are hash-chained (``entries``) under the party's secret ledger key
(``keys``: ``<party>.ledger-key`` beside the ledger, created with the ledger, mode 0600), so
nobody without the key can edit an entry and recompute a chain that verifies. A ledger made
before keys existed keeps its plain SHA-256 chain and verifies with a "not keyed" warning.
The chain alone cannot show that whoever holds the key rewrote it, cut entries off its end
or deleted the file: for that every party keeps the heads of the other parties' ledgers
(``record_anchor``, ``anchors``; see ``anchors``), and ``multi.verify_all`` checks each
ledger against the anchors the others hold for it. A missing ledger whose key still exists
counts as deleted. See docs/ledger.md for what is and is not detected.

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
import time
import uuid
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, date, datetime
from fractions import Fraction
from pathlib import Path

from veilql.engine.ledger.anchor_file import AnchorFile
from veilql.engine.ledger.anchors import AnchorBook, anchors_path
from veilql.engine.ledger.chain import BadEntry, ChainState, Problem, mac_name
from veilql.engine.ledger.entries import (
    FORMAT_VERSION,
    GENESIS_PREV,
    IDENTITIES,
    STATUS,
    Entry,
    check_purpose,
    now_utc,
)
from veilql.engine.ledger.errors import BudgetRefused, LedgerCorrupt, LedgerError
from veilql.engine.ledger.files import append_durably, file_lock, holding
from veilql.engine.ledger.keys import create_key, key_path, load_key
from veilql.engine.ledger.money import Amount, to_fraction
from veilql.engine.ledger.records import (
    Charge,
    Reservation,
    VerifyResult,
    charge_of,
    refusal_of,
)
from veilql.policies.model import Analyst

_WAIT_POLL = 0.02  # seconds between looks at open reservations while an admission waits
DEFAULT_TIMEOUT = 120.0  # seconds; the lock is held for one read and one fsync, so this is slack


def _utc(since: datetime | date | str) -> datetime:
    """``since`` as an aware UTC datetime (naive values and dates are taken as UTC)."""
    if isinstance(since, str):
        since = datetime.fromisoformat(since)
    if not isinstance(since, datetime):
        since = datetime(since.year, since.month, since.day)
    return since if since.tzinfo else since.replace(tzinfo=UTC)


class Ledger:
    """The append-only, hash-chained budget ledger of ``party`` stored at ``path`` (JSON lines).

    ``key`` is the HMAC-SHA256 key of the chain; without one the party's key file
    ``<party>.ledger-key`` beside ``path`` is used, and created (with the genesis entry) for
    a new ledger. ``key_file=False`` uses no key file: a new ledger is then chained with
    plain SHA-256, as ledgers were before keys (for tests and tools; verification warns).
    An existing ledger made without a key continues without one. ``timeout`` is how long to
    wait for a lock before raising ``LedgerBusy``. The file is created, with its genesis
    entry, on the first write. Anchors of other parties' ledgers go to ``anchors_path``.
    """

    def __init__(
        self, path: str | os.PathLike[str], party: str, *, key: bytes | None = None,
        key_file: bool = True, timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.path = Path(path)
        self.party = party
        self.key_path = key_path(self.path, party)
        self.anchors_path = anchors_path(self.path, party)
        self._key = key
        self._auto_key = key is None and key_file
        self._timeout = timeout
        self._state: ChainState | None = None
        self._lock = file_lock(f"{self.path}.lock", timeout)
        self._anchors = AnchorFile(self.anchors_path, party, timeout)

    # ------------------------------------------------------------------ budget operations

    def reserve(
        self, analyst: Analyst, epsilon: Amount, delta: Amount = 0, *,
        query_id: str | None = None, sql: str = "", tables: Iterable[str] = (),
        wait: float = 0.0, purpose: str = "", identity: str = "self-asserted",
        record_refusal: bool = False, commit: bool = False,
    ) -> Reservation:
        """Charge (epsilon, delta) to ``analyst`` if it fits the analyst's budget.

        The budget is ``analyst.epsilon`` / ``analyst.delta`` (from the federation file).
        Raises ``BudgetRefused`` (exit 4) when it does not fit, charging nothing; with
        ``record_refusal`` (what a party's node asks for) it first appends a ``refused``
        entry that charges nothing and records what was requested, so that compliance
        reports show over-budget attempts too (without it a refusal appends nothing).
        When it does not fit only because of the analyst's open reservations (queries not
        yet settled, which may still abort), it waits up to ``wait`` seconds for them to
        settle before deciding. The returned reservation is durable (fsynced) before this
        returns. ``purpose`` (the analyst's stated reason, ``entries.check_purpose``) and
        ``identity`` (``certificate`` when a node took the analyst from a client
        certificate, else ``self-asserted``) are recorded in the entry. With ``commit`` (a
        query no other party must admit) its commit entry is appended with it, both lines
        in one durable write: the same two entries as ``reserve`` then ``commit``, one
        fsync instead of two; the reservation says ``committed``.
        """
        eps = to_fraction(epsilon, what="epsilon")
        dlt = to_fraction(delta, what="delta")
        budget = (to_fraction(analyst.epsilon, what="budget epsilon"),
                  to_fraction(analyst.delta, what="budget delta"))
        try:
            purpose = check_purpose(purpose)
        except ValueError as exc:
            raise LedgerError(f"cannot record the query's purpose: {exc}",
                              "state the purpose as one line of plain text") from None
        if identity not in IDENTITIES:
            raise LedgerError(f"unknown analyst identity {identity!r}",
                              f"use one of {', '.join(IDENTITIES)}")
        query_id = query_id or uuid.uuid4().hex
        table_list = tuple(tables)
        deadline = time.monotonic() + wait
        while True:
            with self._locked():
                state = self._refresh()
                remaining = self._remaining(state, analyst.name, budget)
                if eps <= remaining[0] and dlt <= remaining[1]:
                    reserve = Entry(
                        seq=state.next_seq, prev=state.last_hash, kind="reserve",
                        time=now_utc(), party=self.party, analyst=analyst.name,
                        query_id=query_id, sql=sql, epsilon=eps, delta=dlt,
                        tables=table_list, status=STATUS["reserve"],
                        budget_epsilon=budget[0], budget_delta=budget[1],
                        purpose=purpose, identity=identity,
                    )
                    if commit and state.next_seq > 0:
                        return self._reserve_committed(state, reserve)
                    entry = self._append(state, reserve)
                    if commit:  # a new ledger: its genesis first, then two appends
                        self._settle_locked(state, self._reservation(entry), "commit", None)
                        return replace(self._reservation(entry), committed=True)
                    return self._reservation(entry)
                # Would it fit if the open reservations gave their charge back? Then wait
                # for them to settle (bounded) instead of refusing a query that a moment
                # later would have fitted.
                pending = state.pending_by(analyst.name)
                could = eps <= remaining[0] + pending[0] and dlt <= remaining[1] + pending[1]
                if not could or time.monotonic() >= deadline:
                    refusal = BudgetRefused(party=self.party, analyst=analyst.name,
                                            requested=(eps, dlt), remaining=remaining)
                    if record_refusal:
                        self._append(state, Entry(
                            seq=state.next_seq, prev=state.last_hash, kind="refused",
                            time=now_utc(), party=self.party, analyst=analyst.name,
                            query_id=query_id, sql=sql, epsilon=Fraction(0),
                            delta=Fraction(0), tables=table_list, status=STATUS["refused"],
                            budget_epsilon=budget[0], budget_delta=budget[1],
                            requested_epsilon=eps, requested_delta=dlt,
                            reason=f"over budget: {refusal.detail()}",
                            purpose=purpose, identity=identity,
                        ))
                    raise refusal
            time.sleep(_WAIT_POLL)

    def refusals(self, analyst: str | None = None) -> list[Charge]:
        """The queries this ledger refused for lack of budget (``refused`` entries, which
        charged nothing), oldest first, optionally for one analyst."""
        with self._locked():
            entries = list(self._refresh().entries)
        return [refusal_of(self.party, e) for e in entries
                if e.kind == "refused" and (analyst is None or e.analyst == analyst)]

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
        """Check the whole file from scratch: every hash, ``seq``, ``prev`` and balance, and
        that the chain is keyed as the party's key file says.

        ``anchor`` is a ``(seq, hash)`` pair recorded earlier (``head()``); it must still be
        in the chain, which catches rewrites of the whole chain and deleted trailing entries.
        A missing file verifies as empty, unless the party's key file exists (then the ledger
        was deleted). A plain SHA-256 ledger verifies with a "not keyed" warning. The
        anchors other parties hold are checked by ``multi.verify_all``.
        """
        result, state = self.replay()
        if anchor is None or not result.ok or state is None:
            return result
        seq, expected = anchor
        n = len(state.entries)
        if seq >= n:
            return result.adding([Problem(
                "anchor", f"ledger ends before anchored entry {seq} (entries deleted from the "
                "end)", n)])
        if state.entries[seq].hash != expected:
            return result.adding([Problem(
                "anchor", "hash differs from the anchor (chain rewritten)", seq)])
        return result

    def replay(self) -> tuple[VerifyResult, ChainState | None]:
        """``verify()`` without an anchor, and the replayed chain (None when there is no
        file or its key is unusable): ``multi.verify_all`` checks anchors and open
        reservations against it. A missing file is read without taking the lock, so
        verifying creates nothing."""
        try:
            key = self._resolve_key()
        except LedgerError as exc:
            return VerifyResult.of(0, None, [Problem("key", exc.message)],
                                   exists=self.path.exists()), None
        if not self.path.exists():
            gone = self._deleted_problem(key, "missing")
            return VerifyResult.of(0, None, gone, exists=False), None
        with self._locked():
            try:
                data = self.path.read_bytes()
            except FileNotFoundError:
                data = b""
        state = ChainState(self.party, key)
        problems: list[Problem] = []
        try:
            state.feed_bytes(data)
        except BadEntry as bad:
            problems.append(Problem("chain", self._explain(bad), bad.index))
        if not problems and not state.entries:
            problems += self._deleted_problem(key, "empty")
        keyed = state.entries[0].mac == "hmac-sha256" if state.entries else None
        warnings = []
        if keyed is False:
            warnings.append(
                f"not keyed: the ledger of {self.party} is chained with plain SHA-256 (made "
                "before ledger keys), so whoever can write it can recompute every hash; only "
                "the anchors other parties hold protect it")
        return VerifyResult.of(len(state.entries), state.last_hash, problems,
                               warnings=warnings, keyed=keyed), state

    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the last entry, to record elsewhere as an anchor."""
        with self._locked():
            state = self._refresh()
            return state.next_seq - 1, state.last_hash

    # ------------------------------------------------------------------ anchors

    def record_anchor(self, party: str, seq: int, digest: str, query_id: str) -> None:
        """Keep ``(seq, digest)``, the head of another ``party``'s ledger after query
        ``query_id`` (what that party's ``head()`` returned), in this party's anchor file
        (``anchor_file.AnchorFile.record``: one fsynced line, nothing ever rewritten)."""
        self._anchors.record(party, seq, digest, query_id)

    def anchors(self) -> dict[str, tuple[int, str]]:
        """The latest (highest ``seq``) anchor this party holds for each other party:
        ``party -> (seq, hash)``."""
        return self._anchors.book().heads()

    def anchor_book(self) -> AnchorBook:
        """Everything this party's anchor file holds: latest anchors, conflicting anchors
        and damaged lines (a snapshot; read incrementally after the first call)."""
        return self._anchors.book()


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
            state = ChainState(self.party, self._resolve_key())
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

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        """Hold the ledger's exclusive lock, waiting up to the timeout."""
        return holding(self._lock, self.path, self._timeout, "ledger")


    def _resolve_key(self) -> bytes | None:
        """The chain's key: the one given, else the party's key file once it exists."""
        if self._auto_key and self._key is None:
            self._key = load_key(self.key_path)
        return self._key

    def _deleted_problem(self, key: bytes | None, how: str) -> list[Problem]:
        """A ``missing`` problem when the ledger is missing or empty while its key exists
        (a key is only ever created together with the ledger's genesis entry)."""
        if not (self._auto_key and key is not None):
            return []
        return [Problem("missing", f"the ledger file {self.path} is {how} but its key "
                        f"{self.key_path} exists: the ledger was deleted or emptied (if a "
                        "crash interrupted its very creation, delete the key file)", 0)]

    def _explain(self, bad: BadEntry) -> str:
        """The chain problem, saying which key file is missing or unexpected."""
        if bad.index == 0 and self._auto_key:
            if "without a key" in bad.problem:
                return f"{bad.problem} (its key file {self.key_path} is missing)"
            if "with a key" in bad.problem:
                return (f"{bad.problem} (the key file {self.key_path} exists beside a plain "
                        "SHA-256 ledger: the ledger may have been rewritten without the key)")
        return bad.problem

    def _refresh(self) -> ChainState:
        """Bring the cached state up to the end of the file, verifying what is new.

        Called under the lock. Re-reads from the last verified entry; if that entry is no
        longer where it was (file replaced, shrunk or rewritten), replays the whole file.
        """
        key = self._resolve_key()
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if st is None or st.st_size == 0:
            gone = self._deleted_problem(key, "missing" if st is None else "empty")
            if gone:
                self._state = None
                raise LedgerCorrupt(str(self.path), None, gone[0].message)
        if st is None:
            self._state = ChainState(self.party, key)
            return self._state
        ident = (st.st_dev, st.st_ino)
        state = self._state
        fresh = (state is None or state.ident != ident or st.st_size < state.offset
                 or state.key != key)
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
                state = ChainState(self.party, key, ident=ident)
        assert state is not None
        self._state = None  # if verification fails, the next call replays from scratch
        try:
            state.feed_bytes(data)
        except BadEntry as bad:
            raise LedgerCorrupt(str(self.path), bad.index, self._explain(bad)) from None
        self._state = state
        return state

    def _append(self, state: ChainState, entry: Entry) -> Entry:
        """Seal ``entry``, append it durably, and apply it to ``state`` (under the lock).

        Writes the genesis entry first when the ledger is new.
        """
        if state.next_seq == 0 and entry.kind != "genesis":
            if self._auto_key and self._key is None:
                self._key = create_key(self.key_path)
                state.key = self._key
            self._append(state, Entry(
                seq=0, prev=GENESIS_PREV, kind="genesis", time=now_utc(), party=self.party,
                version=FORMAT_VERSION, mac=mac_name(self._key),
            ))
            entry = replace(entry, seq=state.next_seq, prev=state.last_hash)
        sealed = entry.sealed(self._key)
        line = sealed.line()
        state.ident = append_durably(self.path, line)
        try:
            state.feed_line(line)
        except BadEntry as bad:  # cannot happen unless the writer itself is wrong
            self._state = None
            raise LedgerCorrupt(str(self.path), bad.index, bad.problem) from None
        return sealed

    def _reserve_committed(self, state: ChainState, reserve: Entry) -> Reservation:
        """Append ``reserve`` and its commit in one durable write (under the lock; the
        ledger has its genesis already)."""
        sealed = reserve.sealed(self._key)
        commit = self._settlement(sealed, "commit", None, seq=sealed.seq + 1,
                                  prev=sealed.hash).sealed(self._key)
        lines = [sealed.line(), commit.line()]
        state.ident = append_durably(self.path, b"".join(lines))
        try:
            for line in lines:
                state.feed_line(line)
        except BadEntry as bad:  # cannot happen unless the writer itself is wrong
            self._state = None
            raise LedgerCorrupt(str(self.path), bad.index, bad.problem) from None
        return replace(self._reservation(sealed), committed=True)

    def _settlement(self, reserve: Entry, kind: str, reason: str | None, *, seq: int,
                    prev: str) -> Entry:
        """The commit or abort entry of ``reserve``, at ``seq`` after ``prev``."""
        return Entry(
            seq=seq, prev=prev, kind=kind, time=now_utc(), party=self.party,
            analyst=reserve.analyst, query_id=reserve.query_id, sql=reserve.sql,
            epsilon=reserve.epsilon, delta=reserve.delta, tables=reserve.tables,
            status=STATUS[kind], ref=reserve.seq, reason=reason if kind == "abort" else None,
        )

    def _settle(self, reservation: Reservation, kind: str, reason: str | None) -> None:
        """Append a commit or abort for ``reservation`` after checking it is open here."""
        if reservation.party != self.party:
            raise LedgerError(
                f"reservation of party {reservation.party!r} given to the ledger of "
                f"{self.party!r}", "settle each reservation in the ledger that made it",
            )
        with self._locked():
            self._settle_locked(self._refresh(), reservation, kind, reason)

    def _settle_locked(self, state: ChainState, reservation: Reservation, kind: str,
                       reason: str | None) -> None:
        """``_settle`` under the lock, on the refreshed ``state``."""
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
        self._append(state, self._settlement(reserve, kind, reason, seq=state.next_seq,
                                             prev=state.last_hash))

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
