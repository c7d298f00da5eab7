"""One query, many ledgers: reserve at every party the query reads, or at none.

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
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from veilql.engine.ledger.errors import BudgetRefused, LedgerError, PartiesRefused
from veilql.engine.ledger.ledger import DEFAULT_TIMEOUT, Ledger, Reservation, VerifyResult
from veilql.engine.ledger.money import Amount
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
    """A ``Ledger`` for each of ``parties`` (default: every party of the federation), with
    optional per-party HMAC ``keys``."""
    names = list(parties) if parties is not None else list(federation.party_names)
    keys = keys or {}
    return {
        p: Ledger(ledger_path(federation, p), p, key=keys.get(p), timeout=timeout)
        for p in names
    }


def verify_all(ledgers: Mapping[str, Ledger]) -> dict[str, VerifyResult]:
    """``verify()`` every ledger, by party name (for ``veil ledger verify``)."""
    return {party: ledgers[party].verify() for party in sorted(ledgers)}
