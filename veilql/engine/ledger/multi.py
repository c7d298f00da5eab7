"""One query, many ledgers: reserve at every party the query reads, or at none; verify them all.

Every party whose data a plan reads charges the query in its own ledger (DESIGN.md, step 6).
``reserve_all`` first asks each ledger whether the cost fits, so an ordinary refusal writes
nothing anywhere; then it reserves party by party in sorted name order. Sorting gives every
client the same lock order, so two clients never wait on each other's ledgers in a cycle (they
hold at most one ledger lock at a time anyway). If a reservation is refused after all (another
client spent the budget in between), the ones already made are aborted and the refusal raised:
the query is charged everywhere or nowhere, and only ever released after all reservations.

>>> import tempfile, pathlib
>>> from veilql.policies.model import Analyst
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> ledgers = {p: Ledger(d / f"{p}.jsonl", p) for p in ("bank", "insurer")}
>>> bob = Analyst("bob", epsilon=1.0)
>>> rs = reserve_all(ledgers, bob, 0.75, tables={"bank": ["loans"], "insurer": ["claims"]})
>>> commit_all(ledgers, rs)
>>> reserve_all(ledgers, bob, 0.5, tables={"bank": ["loans"], "insurer": ["claims"]})
Traceback (most recent call last):
...
veilql.engine.ledger.errors.PartiesRefused: privacy budget of analyst 'bob' would be \
exceeded at 2 parties: bank: requested epsilon 0.5, remaining 0.25, short by 0.25; \
insurer: requested epsilon 0.5, remaining 0.25, short by 0.25

``verify_all`` checks every ledger's chain and the anchors the others hold for it. After the
insurer anchored the bank's head, cutting the bank's last entry off leaves a valid chain that
no longer holds the anchored entry:

>>> ledgers["insurer"].record_anchor("bank", *ledgers["bank"].head(), query_id="q1")
>>> all(r.ok for r in verify_all(ledgers).values())
True
>>> data = ledgers["bank"].path.read_bytes().splitlines(keepends=True)
>>> _ = ledgers["bank"].path.write_bytes(b"".join(data[:-1]))
>>> ledgers["bank"].verify().ok, verify_all(ledgers)["bank"].problems[0].kind
(True, 'anchor')
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from veilql.engine.ledger.anchors import (
    Anchor,
    check_anchor,
    conflict_problem,
    damage_problems,
)
from veilql.engine.ledger.chain import ChainState, Problem
from veilql.engine.ledger.errors import BudgetRefused, LedgerError, PartiesRefused
from veilql.engine.ledger.ledger import DEFAULT_TIMEOUT, Ledger, Reservation, VerifyResult
from veilql.engine.ledger.money import Amount, fmt
from veilql.policies.model import Analyst, Federation


def reserve_all(
    ledgers: Mapping[str, Ledger], analyst: Analyst, epsilon: Amount, delta: Amount = 0, *,
    tables: Mapping[str, Iterable[str]], query_id: str | None = None, sql: str = "",
) -> list[Reservation]:
    """Reserve (epsilon, delta) for ``analyst`` at every party in ``tables`` (party -> the
    tables the query reads there), in sorted party order, under one shared ``query_id``.

    All or nothing: raises ``PartiesRefused`` (a ``BudgetExceeded``, exit 4) listing every
    refusing party (requested, remaining, short by), with nothing left charged; other errors
    also undo what was made.
    """
    parties = sorted(tables)
    missing = [p for p in parties if p not in ledgers]
    if missing:
        raise LedgerError(
            f"no ledger for part{'ies' if len(missing) > 1 else 'y'} {', '.join(missing)}",
            "open a ledger for every party whose tables the query reads",
        )
    refused = [r for p in parties if (r := ledgers[p].check(analyst, epsilon, delta))]
    if refused:
        raise PartiesRefused(analyst.name, refused)
    query_id = query_id or uuid.uuid4().hex
    made: list[Reservation] = []
    try:
        for party in parties:
            made.append(ledgers[party].reserve(
                analyst, epsilon, delta, query_id=query_id, sql=sql, tables=tables[party],
            ))
    except BudgetRefused as lost_race:
        abort_all(ledgers, made, f"refused at {lost_race.party}: {lost_race.detail()}")
        raise PartiesRefused(analyst.name, [lost_race]) from None
    except BaseException as exc:
        abort_all(ledgers, made, f"reservation failed: {type(exc).__name__}: {exc}")
        raise
    return made


def commit_all(ledgers: Mapping[str, Ledger], reservations: Iterable[Reservation]) -> None:
    """Commit every reservation in its party's ledger; raise the first failure at the end.

    A commit that fails leaves its reservation open, which still counts as spent.
    """
    _each(ledgers, reservations, lambda led, r: led.commit(r))


def abort_all(
    ledgers: Mapping[str, Ledger], reservations: Iterable[Reservation], reason: str,
) -> None:
    """Abort every reservation (only before anything was released); raise the first failure
    at the end, after trying them all."""
    _each(ledgers, reservations, lambda led, r: led.abort(r, reason))


def _each(
    ledgers: Mapping[str, Ledger], reservations: Iterable[Reservation],
    action: Callable[[Ledger, Reservation], None],
) -> None:
    first: BaseException | None = None
    for r in sorted(reservations, key=lambda r: r.party):
        try:
            action(ledgers[r.party], r)
        except Exception as exc:  # keep going: every other party must still be settled
            first = first or exc
    if first is not None:
        raise first


def ledger_path(federation: Federation, party: str) -> Path:
    """Where ``party`` keeps its ledger: ``<ledger_dir>/<party>.jsonl``, by default under
    ``ledgers/`` next to the federation file."""
    folder = federation.root / (federation.ledger_dir or "ledgers")
    return folder / f"{party}.jsonl"


def open_ledgers(
    federation: Federation, parties: Iterable[str] | None = None, *,
    keys: Mapping[str, bytes] | None = None, timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, Ledger]:
    """A ``Ledger`` for each of ``parties`` (default: every party of the federation). Each
    uses its party's key file beside the ledger unless ``keys`` gives that party's key."""
    names = list(parties) if parties is not None else list(federation.party_names)
    keys = keys or {}
    return {
        p: Ledger(ledger_path(federation, p), p, key=keys.get(p), timeout=timeout)
        for p in names
    }


#: Seconds a reservation may stay open before verification reports it: the default
#: federation ``timeout`` (``veil ledger verify`` passes the federation's own).
DEFAULT_MAX_OPEN_AGE = 30.0


def verify_all(
    ledgers: Mapping[str, Ledger], *, max_open_age: float | None = DEFAULT_MAX_OPEN_AGE,
    now: datetime | None = None,
) -> dict[str, VerifyResult]:
    """Verify every ledger and cross-check it against the anchors the others hold for it
    (for ``veil ledger verify``); results by party name, sorted.

    Besides each ledger's own chain (``Ledger.verify``), a ledger fails when the latest
    anchor any *other* ledger of ``ledgers`` holds for it is no longer in its chain (entries
    cut off its end, chain rewritten or replaced: kind ``anchor``), when an anchor exists for
    it but its file does not (``missing``), when a holder has two different hashes for one of
    its entries (``anchor``), when its own anchor file is damaged (``anchor-file``), and when
    a reservation has stayed open for more than ``max_open_age`` seconds before ``now``
    (``open-reservation``: a node lost track of a query; None skips this check). A missing
    ledger that nobody anchored and whose key file does not exist is fine: that party was
    never charged. Anchors held for parties outside ``ledgers`` are not checked.
    """
    replayed = {party: ledgers[party].replay() for party in sorted(ledgers)}
    books = {party: ledgers[party].anchor_book() for party in sorted(ledgers)}
    moment = now or datetime.now(UTC)
    out: dict[str, VerifyResult] = {}
    for party, (result, state) in replayed.items():
        chain_ok = result.ok
        hashes = [e.hash for e in state.entries] if state is not None else None
        checkable = state is not None or not result.exists  # not when the key is unusable
        problems: list[Problem] = []
        held: list[Anchor] = []
        for holder, book in books.items():
            if holder == party:
                continue
            anchor = book.latest.get(party)
            if anchor is not None:
                held.append(anchor)
                found = check_anchor(party, hashes, anchor) if checkable else None
                if found is not None and (chain_ok or found.kind == "missing"):
                    problems.append(found)
            problems += [conflict_problem(a, b) for a, b in book.conflicts
                         if a.party == party]
        problems += damage_problems(books[party], ledgers[party].anchors_path)
        if max_open_age is not None and state is not None:
            problems += open_problems(state, max_open_age, moment)
        out[party] = result.adding(problems, held)
    return out


def open_problems(state: ChainState, max_open_age: float, now: datetime) -> list[Problem]:
    """An ``open-reservation`` problem per reservation of ``state`` neither committed nor
    aborted and reserved more than ``max_open_age`` seconds before ``now``."""
    out = []
    for seq, e in state.reserves.items():
        if seq in state.settled:
            continue
        since = datetime.fromisoformat(e.time)
        since = since if since.tzinfo else since.replace(tzinfo=UTC)
        if (now - since).total_seconds() <= max_open_age:
            continue
        assert e.epsilon is not None and e.delta is not None
        out.append(Problem(
            "open-reservation",
            f"open reservation {e.query_id} since {e.time} (entry {seq}, analyst "
            f"{e.analyst}, epsilon {fmt(e.epsilon)}, delta {fmt(e.delta)}): neither "
            f"committed nor aborted after more than {max_open_age:g} s, so a node lost track "
            "of the query; it stays charged", seq))
    return out
