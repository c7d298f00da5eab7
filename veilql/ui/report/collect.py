"""Build the compliance report model from the parties' ledgers.

Every party keeps its own hash-chained ledger (DESIGN.md, "Ledger"), so a report reads each one,
checks its chain with the ledger's own verifier (``ChainState``, under the party's ledger key
when its key file is beside the ledger) and only then trusts its figures. It also checks each
ledger against the anchors the *other* parties hold for it (``<party>.anchors.jsonl``): a
ledger cut short, rewritten or replaced no longer holds the anchored entry, and a deleted
ledger that some party anchored (or whose key file is still there) is reported missing.

A ledger that fails is still read, leniently, line by line, so the officer sees what the file
claims; but the report's ``ok`` is False and that party's budget totals are unverified, as is
every query charged at or after a broken chain entry (every query of the party when an anchor
or key shows the chain itself cannot be trusted). The renderers make that impossible to miss.

A query reserves at every party it reads under one query id (``multi.reserve_all``), so the
report groups charges by ``(analyst, query_id)`` into one row per query. Budgets are the
federation's; spent counts every reservation not given back by an abort (open ones included,
as the ledger does). A query a party's budget refused left a ``refused`` entry there, which
charges nothing; it is shown with what was requested, so over-budget attempts are visible.

Each query row says who asked (analyst, and whether a node took the name from a client
certificate or the analyst asserted it), why (the stated purpose), when, which parties and
tables it read, which columns and which mechanism (re-derived from its SQL and today's
policies, when the federation is known), what it cost and what stayed charged, and how it
ended (``outcome``: released, over budget, refused, cancelled, failed, open, mixed).

``prior`` (``--anchor FILE``): the heads an earlier report recorded for each ledger; every
one must still be in today's chain, or that ledger fails with an ``anchor`` problem.

>>> import tempfile, pathlib
>>> from veilql.engine.ledger import Ledger
>>> from veilql.policies.model import Analyst
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> alice = Analyst("alice", epsilon=2.0, delta=1e-6)
>>> bank = Ledger(d / "bank.jsonl", "bank")
>>> bank.commit(bank.reserve(alice, 0.5, 0, query_id="q1", sql="SELECT 1", tables=["loans"]))
>>> rep = collect_ledgers({"bank": bank.path}, {"alice": alice}, federation_name="demo",
...                       now="2026-01-01T00:00:00+00:00")
>>> rep.ok, [(q.query_id, q.status, q.epsilon) for q in rep.queries]
(True, [('q1', 'committed', Fraction(1, 2))])
>>> [(b.analyst, b.party, b.spent_epsilon, b.remaining_epsilon) for b in rep.budgets]
[('alice', 'bank', Fraction(1, 2), Fraction(3, 2))]
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path

from veilql.engine.ledger.anchors import (
    Anchor,
    AnchorBook,
    anchors_path,
    check_anchor,
    conflict_problem,
    damage_problems,
    read_anchors,
)
from veilql.engine.ledger.chain import BadEntry, ChainState, Problem
from veilql.engine.ledger.entries import STATUS, EntryError, parse_obj
from veilql.engine.ledger.errors import LedgerError
from veilql.engine.ledger.keys import key_path, load_key
from veilql.engine.ledger.ledger import Charge, charge_of, refusal_of
from veilql.engine.ledger.money import to_fraction
from veilql.engine.ledger.multi import ledger_path
from veilql.engine.node import ledger_dir_override
from veilql.errors import UsageError, VeilError
from veilql.policies.model import Analyst, Federation

ZERO = Fraction(0)
TORN_RETRY_SECONDS = 0.2  # a writer's single-line append finishes well within this


@dataclass(frozen=True)
class HeldAnchor:
    """An anchor another party (``holder``) keeps for this ledger, and whether the ledger
    still holds the anchored entry (None when the chain could not be checked)."""

    holder: str
    seq: int
    hash: str
    query_id: str
    time: str
    matches: bool | None


@dataclass(frozen=True)
class PartyIntegrity:
    """The outcome of one party's ledger check.

    ``entries`` is how many entries verified; ``bad_index``/``problem`` say where and why it
    failed first, ``problems`` every reason (``Problem.kind``: chain, key, missing, anchor,
    anchor-file); ``skipped`` counts lines the lenient reader could not read at all.
    ``head_seq``/``head`` identify the verified last entry; ``keyed`` whether the chain is
    HMAC-keyed; ``anchors`` what the other parties hold for this ledger.
    """

    party: str
    path: str
    exists: bool
    ok: bool
    entries: int
    bad_index: int | None = None
    problem: str | None = None
    head: str | None = None
    skipped: int = 0
    head_seq: int | None = None
    keyed: bool | None = None
    warnings: tuple[str, ...] = ()
    problems: tuple[Problem, ...] = ()
    anchors: tuple[HeldAnchor, ...] = ()

    def summary(self) -> str:
        """One line for people, e.g. ``ok, 7 entries verified`` or ``FAILED at entry 3: ...``."""
        if not self.ok:
            return self.failure()
        if not self.exists:
            return "no ledger yet (nothing charged)"
        text = f"ok, {self.entries} entries verified"
        if self.anchors:
            holders = ", ".join(sorted({a.holder for a in self.anchors}))
            text += f"; matches the anchors held by {holders}"
        if self.keyed is False:
            text += "; WARNING: not keyed (plain SHA-256)"
        return text

    def failure(self) -> str:
        """Why the check failed, every problem in one line (empty when it passed)."""
        if self.ok:
            return ""
        if not self.problems:  # built by hand, without the list
            return f"FAILED at entry {self.bad_index}: {self.problem}"
        first = self.problems[0]
        lead = ("MISSING" if first.kind == "missing" else
                f"FAILED at entry {first.index}" if first.kind == "chain" else "FAILED")
        return f"{lead}: " + "; ".join(p.message for p in self.problems)

    @property
    def trusted_before(self) -> int | None:
        """Charges with a ``seq`` below this are verified; None: all of them are.

        A broken chain is trusted up to the break; a chain that contradicts an anchor or
        cannot be checked under its key is not trusted at all.
        """
        if self.ok:
            return None
        if self.problems and self.problems[0].kind != "chain":
            return 0
        return self.bad_index if self.bad_index is not None else 0


@dataclass(frozen=True)
class BudgetRow:
    """One analyst at one party: budget, spent (all time) and remaining.

    ``budget_*`` and ``remaining_*`` are None for an analyst the ledger names but the
    federation file no longer lists. ``verified`` is False when the figures rest on a ledger
    that failed its check.
    """

    analyst: str
    party: str
    budget_epsilon: Fraction | None
    budget_delta: Fraction | None
    spent_epsilon: Fraction
    spent_delta: Fraction
    remaining_epsilon: Fraction | None
    remaining_delta: Fraction | None
    queries: int
    verified: bool = True


#: How a query ended, for people: ``QueryRow.outcome``.
OUTCOMES: tuple[str, ...] = ("released", "over budget", "refused", "cancelled", "failed",
                             "open", "mixed")


@dataclass(frozen=True)
class QueryRow:
    """One query across the parties it charged (or that refused it).

    ``status`` is the ledgers' word: ``committed`` (every party admitted it and the charge
    stands), ``aborted`` (failed or refused before any party read data, charge given back),
    ``refused`` (a party's budget refused it; nothing charged), ``open`` (reserved, never
    settled: still counts as spent) or ``mixed`` (parties disagree, which the protocol never
    produces: investigate). ``outcome`` is the same for people (``OUTCOMES``). ``statuses``
    is per party; ``reasons`` are the reasons the ledgers recorded.

    ``epsilon``/``delta`` are what the query asked for; ``charged_epsilon``/``charged_delta``
    what stands charged (0 when it was given back or refused). ``tables`` are
    ``party.table``; ``columns`` (``party.table.column``) and ``mechanism`` are re-derived
    from the SQL and the federation's policies (empty when they could not be).
    """

    query_id: str
    time: str
    analyst: str
    sql: str
    epsilon: Fraction
    delta: Fraction
    parties: tuple[str, ...]
    statuses: tuple[tuple[str, str], ...]
    status: str
    reasons: tuple[str, ...] = ()
    verified: bool = True
    purpose: str = ""
    identity: str | None = None
    tables: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    mechanism: str = ""
    outcome: str = ""
    charged_epsilon: Fraction = Fraction(0)
    charged_delta: Fraction = Fraction(0)

    @property
    def charged(self) -> tuple[str, ...]:
        """Parties where the charge stands (not given back by an abort, not refused)."""
        return tuple(p for p, s in self.statuses if s not in ("aborted", "refused"))


@dataclass(frozen=True)
class PriorHead:
    """A ledger head an earlier report recorded (``--anchor``) and whether today's chain
    still holds it (None when the chain could not be checked)."""

    party: str
    seq: int
    hash: str
    matches: bool | None


@dataclass(frozen=True)
class Series:
    """Cumulative epsilon of one analyst at one party: ``start`` before the first point (what
    was spent before ``since``), then ``(time, cumulative)`` after each charge."""

    start: Fraction
    points: tuple[tuple[str, Fraction], ...]


@dataclass(frozen=True)
class Report:
    """Everything a compliance report shows; the renderers only format it."""

    federation: str
    generated_at: str
    filters: dict[str, str | None]
    integrity: tuple[PartyIntegrity, ...]
    budgets: tuple[BudgetRow, ...]
    queries: tuple[QueryRow, ...]
    series: dict[str, dict[str, Series]] = field(default_factory=dict)
    prior: dict[str, str | None] | None = None  # the --anchor report: file, generated_at
    prior_heads: tuple[PriorHead, ...] = ()

    @property
    def ok(self) -> bool:
        """True when every ledger read passed its integrity check."""
        return all(i.ok for i in self.integrity)

    @property
    def failed(self) -> tuple[str, ...]:
        """Parties whose ledger failed its integrity check."""
        return tuple(i.party for i in self.integrity if not i.ok)

    def analyst_budget(self, analyst: str) -> Fraction | None:
        """The analyst's epsilon budget (the same at every party), if known."""
        for b in self.budgets:
            if b.analyst == analyst and b.budget_epsilon is not None:
                return b.budget_epsilon
        return None


# ---------------------------------------------------------------------------- inputs


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``--since``: an ISO date or datetime (UTC unless it says otherwise), or an age such
    as ``7d``, ``12h`` or ``30m`` before ``now``.

    >>> parse_since("2026-03-01").isoformat()
    '2026-03-01T00:00:00+00:00'
    >>> parse_since("2d", datetime(2026, 3, 3, tzinfo=UTC)).isoformat()
    '2026-03-01T00:00:00+00:00'
    """
    text = text.strip()
    age = re.fullmatch(r"(\d+)\s*([dhm])", text)
    if age:
        unit = {"d": "days", "h": "hours", "m": "minutes"}[age.group(2)]
        return (now or datetime.now(UTC)) - timedelta(**{unit: int(age.group(1))})
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--since {text!r} is not a date",
            "give an ISO date or time (2026-03-01, 2026-03-01T09:30) or an age (7d, 12h, 30m)",
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def report_time(now: datetime | str | None = None) -> str:
    """The report's generation time in ISO 8601 (UTC, seconds): ``now`` when given, else
    ``$SOURCE_DATE_EPOCH`` (reproducible builds convention), else the clock."""
    if isinstance(now, str):
        return now
    if now is None:
        epoch = os.environ.get("SOURCE_DATE_EPOCH")
        now = (datetime.fromtimestamp(int(epoch), UTC) if epoch and epoch.isdigit()
               else datetime.now(UTC))
    return now.astimezone(UTC).isoformat(timespec="seconds")


def ledger_file(federation: Federation, party: str) -> Path:
    """Where ``party``'s ledger lives: ``$VEIL_LEDGER_DIR`` when set, as the nodes do, else
    the federation's ledger folder."""
    override = ledger_dir_override(federation)
    if override is not None:
        return override / f"{party}.jsonl"
    return ledger_path(federation, party)


# ---------------------------------------------------------------------------- reading


def read_ledger(path: Path, party: str, key: bytes | None = None,
                ) -> tuple[PartyIntegrity, list[Charge]]:
    """Verify the ledger file of ``party`` and return its integrity and its charges (one per
    reservation, oldest first).

    Reads one snapshot of the file and replays it with the ledger's own verifier
    (``ChainState``), without taking the ledger lock: a compliance officer may have read-only
    access (DESIGN.md, roles), and the report must neither create lock files nor block
    writers. Appends are whole lines, so a snapshot is a consistent prefix; a last line
    caught mid-write is re-read once before it counts as damage. A damaged file is read by
    ``lenient_charges`` instead. Without ``key``, the party's key file beside the ledger is
    used when there is one. Anchors are not checked here (see ``collect_ledgers``).
    """
    check, charges, _ = _read(path, party, key)
    return check, charges


def _read(path: Path, party: str, key: bytes | None,
          ) -> tuple[PartyIntegrity, list[Charge], list[str] | None]:
    """``read_ledger`` plus the verified chain's entry hashes (None when there is no file,
    an empty list when the chain could not be verified)."""
    auto = key is None
    if auto:
        try:
            key = load_key(key_path(path, party))
        except LedgerError as exc:
            exists = path.exists()
            data = path.read_bytes() if exists else b""
            charges, skipped = lenient_charges(data, party)
            problem = Problem("key", f"{exc.message}: the chain cannot be verified")
            return (_integrity(party, path, exists, 0, [problem], skipped=skipped), charges,
                    [] if exists else None)
    for attempt in range(2):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            gone = _deleted(path, party, key if auto else None, "missing")
            return _integrity(party, path, False, 0, gone), [], None
        state = ChainState(party, key)
        try:
            state.feed_bytes(data)
        except BadEntry as bad:
            if attempt == 0 and bad.problem.startswith("last entry is truncated"):
                time.sleep(TORN_RETRY_SECONDS)
                continue
            charges, skipped = lenient_charges(data, party)
            text = bad.problem
            if auto and bad.index == 0 and "without a key" in text:
                text += f" (its key file {key_path(path, party)} is missing or not readable)"
            problem = Problem("chain", text, bad.index)
            return (_integrity(party, path, True, len(state.entries), [problem],
                               skipped=skipped), charges, [])
        break
    empty = [] if state.entries else _deleted(path, party, key if auto else None, "empty")
    keyed = state.entries[0].mac == "hmac-sha256" if state.entries else None
    warnings = [] if keyed is not False else [
        f"the ledger of {party} is not keyed (plain SHA-256, made before ledger keys): "
        "whoever can write it can recompute its chain; only anchors protect it"]
    check = _integrity(party, path, True, len(state.entries), empty, head=state.last_hash,
                       keyed=keyed, warnings=warnings)
    return check, _verified_charges(state), [e.hash for e in state.entries]


def _deleted(path: Path, party: str, key: bytes | None, how: str) -> list[Problem]:
    """A ``missing`` problem when a ledger is missing or empty but its key file exists."""
    if key is None:
        return []
    return [Problem("missing", f"ledger of {party} is {how} but its key "
                    f"{key_path(path, party)} exists: the ledger was deleted or emptied", 0)]


def _integrity(party: str, path: Path, exists: bool, entries: int, problems: list[Problem],
               *, skipped: int = 0, head: str | None = None, keyed: bool | None = None,
               warnings: list[str] | tuple[str, ...] = (),
               anchors: tuple[HeldAnchor, ...] = ()) -> PartyIntegrity:
    """A ``PartyIntegrity`` whose ``ok``, ``bad_index`` and ``problem`` follow from
    ``problems``; the head only for a check that passed."""
    first = problems[0] if problems else None
    ok = first is None
    return PartyIntegrity(
        party, str(path), exists, ok, entries, first.index if first else None,
        first.message if first else None, head if ok and entries else None, skipped,
        head_seq=entries - 1 if ok and entries else None, keyed=keyed,
        warnings=tuple(warnings), problems=tuple(problems), anchors=anchors,
    )


def cross_check(integrity: PartyIntegrity, hashes: list[str] | None,
                books: Mapping[str, AnchorBook], anchor_files: Mapping[str, Path],
                ) -> PartyIntegrity:
    """``integrity`` checked against the latest anchor every *other* holder in ``books``
    keeps for this party (and with its own anchor file's damage, if ``books`` has it)."""
    party = integrity.party
    chain_ok = integrity.ok
    problems = list(integrity.problems)
    if not integrity.ok and not problems:
        problems.append(Problem("chain", integrity.problem or "failed", integrity.bad_index))
    held = []
    for holder, book in books.items():
        if holder == party:
            continue
        anchor: Anchor | None = book.latest.get(party)
        if anchor is not None:
            checkable = chain_ok or hashes is None
            found = check_anchor(party, hashes, anchor) if checkable else None
            if found is not None:
                problems.append(found)
            held.append(HeldAnchor(holder, anchor.seq, anchor.hash, anchor.query_id,
                                   anchor.time, (found is None) if checkable else None))
        problems += [conflict_problem(a, b) for a, b in book.conflicts if a.party == party]
    if party in books:
        problems += damage_problems(books[party], anchor_files[party])
    return _integrity(party, Path(integrity.path), integrity.exists, integrity.entries,
                      problems, skipped=integrity.skipped, head=integrity.head,
                      keyed=integrity.keyed, warnings=integrity.warnings, anchors=tuple(held))


def _verified_charges(state: ChainState) -> list[Charge]:
    """Charges of a verified chain, as ``Ledger.history`` builds them, then the refusals
    (``Ledger.refusals``), in file order."""
    out = [charge_of(state.party, seq, e, state.settled.get(seq))
           for seq, e in state.reserves.items()]
    out += [refusal_of(state.party, e) for e in state.entries if e.kind == "refused"]
    return sorted(out, key=lambda c: c.seq)


def lenient_charges(data: bytes, party: str) -> tuple[list[Charge], int]:
    """Charges as a damaged ledger file's bytes state them, and how many lines could not be
    read at all.

    Each line is parsed on its own (schema checked, hash not); reserves are paired with the
    commit or abort that refers to them. Nothing here is trusted: it is what the file says.
    """
    reserves: dict[int, dict] = {}
    settled: dict[int, dict] = {}
    refused: list[Charge] = []
    skipped = 0
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
            entry = parse_obj(obj)
        except (ValueError, EntryError, TypeError):
            skipped += 1
            continue
        if entry.kind == "reserve":
            reserves[entry.seq] = obj
        elif entry.kind in ("commit", "abort") and entry.ref is not None:
            settled.setdefault(entry.ref, obj)
        elif entry.kind == "refused":
            refused.append(refusal_of(party, entry))
    out = []
    for seq, r in sorted(reserves.items()):
        done = settled.get(seq)
        out.append(Charge(
            party=party, seq=seq, analyst=r["analyst"], query_id=r["query_id"], sql=r["sql"],
            epsilon=to_fraction(r["epsilon"]), delta=to_fraction(r["delta"]),
            tables=tuple(r["tables"]), status=done["status"] if done else STATUS["reserve"],
            reserved_at=r["time"], settled_at=done["time"] if done else None,
            reason=done.get("reason") if done else None, purpose=r.get("purpose") or "",
            identity=r.get("identity"),
        ))
    return sorted(out + refused, key=lambda c: c.seq), skipped


# ---------------------------------------------------------------------------- the model


def collect(
    federation: Federation, *, analyst: str | None = None, party: str | None = None,
    since: datetime | str | None = None, now: datetime | str | None = None,
    keys: Mapping[str, bytes] | None = None, anchor: Path | str | None = None,
) -> Report:
    """The report over every party's ledger of ``federation`` (``veil report``).

    Filters: one ``analyst``, one ``party``, queries from ``since`` on (a ``datetime`` or the
    ``--since`` text). Budgets and integrity are always all-time. ``keys`` are the parties'
    HMAC ledger keys (default: each party's key file beside its ledger). Each ledger is
    checked against the anchors every other party of the federation holds for it, also with
    the ``party`` filter, and against the heads an earlier report recorded when ``anchor``
    names its JSON (``read_prior``). Raises ``UsageError`` for a party or analyst the
    federation does not know, or an ``anchor`` file that is not a VeilQL JSON report.
    """
    if party is not None and federation.party(party) is None:
        raise UsageError(f"no party named {party!r} in {federation.path}",
                         "name one of: " + ", ".join(federation.party_names))
    names = [party] if party is not None else list(federation.party_names)
    paths = {p: ledger_file(federation, p) for p in names}
    holders = {p: anchors_path(ledger_file(federation, p), p) for p in federation.party_names}
    prior = read_prior(Path(anchor)) if anchor is not None else None
    return collect_ledgers(paths, federation.analysts, federation_name=federation.name,
                           analyst=analyst, since=since, now=now, keys=keys,
                           anchor_files=holders, federation=federation, prior=prior)


def read_prior(path: Path) -> tuple[dict[str, str | None], dict[str, tuple[int, str]]]:
    """The heads an earlier report's JSON recorded (``--anchor FILE``): its file and time,
    and ``party -> (head_seq, head)`` for every ledger it verified. Raises ``UsageError``
    for a file that is not a VeilQL JSON report."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"no file {path}", "--anchor takes an earlier report's JSON file"
                         ) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"cannot read {path} as a JSON report: {exc}",
                         "--anchor takes a report written by veil report --format json"
                         ) from None
    parties = obj.get("integrity", {}).get("parties") if isinstance(obj, dict) else None
    if obj.get("report") != "veilql compliance report" or not isinstance(parties, dict):
        raise UsageError(f"{path} is not a VeilQL compliance report in JSON",
                         "--anchor takes a report written by veil report --format json")
    heads: dict[str, tuple[int, str]] = {}
    for party, info in parties.items():
        if not isinstance(info, dict):
            continue
        seq, head = info.get("head_seq"), info.get("head")
        if type(seq) is int and seq >= 0 and isinstance(head, str) and re.fullmatch(
                r"[0-9a-f]{64}", head):
            heads[str(party)] = (seq, head)
    label = {"file": str(path), "generated_at": obj.get("generated_at")
             if isinstance(obj.get("generated_at"), str) else None}
    return label, heads


def collect_ledgers(
    ledgers: Mapping[str, Path], analysts: Mapping[str, Analyst], *, federation_name: str,
    analyst: str | None = None, since: datetime | str | None = None,
    now: datetime | str | None = None, keys: Mapping[str, bytes] | None = None,
    anchor_files: Mapping[str, Path] | None = None, federation: Federation | None = None,
    prior: tuple[dict[str, str | None], dict[str, tuple[int, str]]] | None = None,
) -> Report:
    """The report over ``ledgers`` (party -> ledger file, in display order) with the budgets
    of ``analysts``; see ``collect`` for the filters. ``anchor_files`` (holder -> its
    ``<party>.anchors.jsonl``; default: the one beside each ledger) are read, without
    locking, to check each ledger against the anchors the other parties hold for it.
    ``federation`` lets each query's columns and mechanism be re-derived from its SQL;
    ``prior`` is ``read_prior`` of an earlier report, whose heads must still be there."""
    generated = report_time(now)
    cutoff = since if isinstance(since, datetime) or since is None else parse_since(
        since, datetime.fromisoformat(generated))
    if cutoff is not None and cutoff.tzinfo is None:
        cutoff = cutoff.replace(tzinfo=UTC)
    if anchor_files is None:
        anchor_files = {p: anchors_path(Path(path), p) for p, path in ledgers.items()}
    books = {h: read_anchors(Path(f), h) for h, f in anchor_files.items()}
    integrity, charges = [], []
    prior_heads: list[PriorHead] = []
    for party, path in ledgers.items():
        check, found, hashes = _read(Path(path), party, (keys or {}).get(party))
        check = cross_check(check, hashes, books, {h: Path(f) for h, f in anchor_files.items()})
        if prior is not None and party in prior[1]:
            check, held = _check_prior(check, hashes, prior, party)
            prior_heads.append(held)
        integrity.append(check)
        bad = check.trusted_before
        charges += [(c, bad is None or c.seq < bad) for c in found]
    seen = {c.analyst for c, _ in charges}
    if analyst is not None and analyst not in analysts and analyst not in seen:
        raise UsageError(f"analyst {analyst!r} has no budget and no charges in this federation",
                         "known analysts: " + (", ".join(sorted(set(analysts) | seen))
                                                or "none"))
    if analyst is not None:
        charges = [(c, v) for c, v in charges if c.analyst == analyst]
    who = [analyst] if analyst is not None else sorted(set(analysts) | seen)
    filters = {"analyst": analyst, "party": next(iter(ledgers)) if len(ledgers) == 1 else None,
               "since": cutoff.isoformat() if cutoff is not None else None}
    return Report(
        federation=federation_name, generated_at=generated, filters=filters,
        integrity=tuple(integrity),
        budgets=tuple(_budgets(who, integrity, analysts, charges)),
        queries=tuple(_queries(charges, cutoff, federation)),
        series=_series(who, list(ledgers), charges, cutoff),
        prior=prior[0] if prior is not None else None, prior_heads=tuple(prior_heads),
    )


def _check_prior(check: PartyIntegrity, hashes: list[str] | None,
                 prior: tuple[dict[str, str | None], dict[str, tuple[int, str]]], party: str,
                 ) -> tuple[PartyIntegrity, PriorHead]:
    """``check`` with an ``anchor`` problem when today's chain no longer holds the head the
    earlier report recorded for ``party``."""
    seq, head = prior[1][party]
    when = prior[0].get("generated_at") or "an earlier report"
    holder = f"the report of {when}"
    if hashes is None:
        problem: Problem | None = Problem(
            "missing", f"ledger of {party} is missing; {holder} recorded its entry {seq}",
            seq, holder)
    elif not hashes:
        return check, PriorHead(party, seq, head, None)  # the chain itself failed
    elif seq >= len(hashes):
        problem = Problem("anchor", f"ledger of {party} has {len(hashes)} entries but {holder} "
                          f"recorded entry {seq}: entries were deleted from the end, or the "
                          "ledger was replaced", len(hashes), holder)
    elif hashes[seq] != head:
        problem = Problem("anchor", f"entry {seq} of {party}'s ledger differs from the head "
                          f"{holder} recorded: the chain was rewritten or replaced", seq,
                          holder)
    else:
        problem = None
    if problem is None:
        return check, PriorHead(party, seq, head, True)
    return (_integrity(party, Path(check.path), check.exists, check.entries,
                       [*check.problems, problem], skipped=check.skipped, head=check.head,
                       keyed=check.keyed, warnings=check.warnings, anchors=check.anchors),
            PriorHead(party, seq, head, False))


def _stands(c: Charge) -> bool:
    """A charge that counts as spent: reserved (open) or committed, not aborted or refused."""
    return c.status not in (STATUS["abort"], STATUS["refused"])


def _budgets(who: Iterable[str], integrity: list[PartyIntegrity],
             analysts: Mapping[str, Analyst], charges: list[tuple[Charge, bool]],
             ) -> list[BudgetRow]:
    rows = []
    for name in who:
        known = analysts.get(name)
        for check in integrity:
            party = check.party
            mine = [(c, v) for c, v in charges if c.analyst == name and c.party == party
                    and _stands(c)]
            eps = sum((c.epsilon for c, _ in mine), ZERO)
            dlt = sum((c.delta for c, _ in mine), ZERO)
            b_eps = to_fraction(known.epsilon) if known else None
            b_dlt = to_fraction(known.delta) if known else None
            rows.append(BudgetRow(
                analyst=name, party=party, budget_epsilon=b_eps, budget_delta=b_dlt,
                spent_epsilon=eps, spent_delta=dlt,
                remaining_epsilon=max(ZERO, b_eps - eps) if b_eps is not None else None,
                remaining_delta=max(ZERO, b_dlt - dlt) if b_dlt is not None else None,
                queries=len(mine),
                verified=check.ok,
            ))
    return rows


def _combined(statuses: list[str]) -> str:
    """One status for a query from its per-party statuses."""
    if STATUS["reserve"] in statuses:
        return "open"
    if STATUS["refused"] in statuses and set(statuses) <= {STATUS["refused"], STATUS["abort"]}:
        return STATUS["refused"]  # refused at one party, given back at the others
    if len(set(statuses)) == 1:
        return statuses[0]
    return "mixed"


def _outcome(status: str, reasons: Iterable[str]) -> str:
    """How a query ended, for people (``OUTCOMES``), from its status and abort reasons.

    >>> _outcome("aborted", ["another party refused the query"]), _outcome("committed", [])
    ('refused', 'released')
    """
    text = " ".join(reasons).lower()
    if status == "committed":
        return "released"
    if status == "refused":
        return "over budget"
    if status == "aborted":
        if "cancel" in text:
            return "cancelled"
        if "refused" in text or "over budget" in text:
            return "refused"
        return "failed"
    return status


_SHAPES: dict[tuple[str, str, str], tuple[tuple[str, ...], str]] = {}


def query_shape(sql: str, federation: Federation | None, epsilon: Fraction, delta: Fraction,
                ) -> tuple[tuple[str, ...], str]:
    """The columns (``party.table.column``) a query reads and its noise mechanism,
    re-derived from its SQL under today's policies (empty when that fails: a policy that
    changed since, or no federation).

    The ledger keeps the charged cost, not the requested one (a mechanism may charge a
    delta other than the one asked for), so the plan is compiled for the charged epsilon
    and each plausible requested delta (the charged one, the federation's default, 0); the
    mechanism is named only when a plan charges exactly what the ledger recorded.
    """
    if federation is None:
        return (), ""
    key = (sql, str(epsilon), str(delta))
    if key in _SHAPES:
        return _SHAPES[key]
    import warnings

    from veilql.engine.dp import LargeEpsilonWarning
    from veilql.engine.rewrite import compile_plan
    from veilql.engine.sql.bind import bind
    from veilql.engine.sql.bound import columns_used
    from veilql.engine.sql.parse import parse

    columns: tuple[str, ...] = ()
    mechanism = ""
    try:
        bound = bind(parse(sql), federation)
        tables = {t.alias: f"{t.party}.{t.table}" for t in bound.tables}
        columns = tuple(sorted(f"{tables[a]}.{c}" for a, cs in columns_used(bound).items()
                               for c in cs))
        for asked in dict.fromkeys((float(delta), federation.default_delta, 0.0)):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", LargeEpsilonWarning)
                    plan = compile_plan(sql, federation, epsilon=float(epsilon), delta=asked)
            except VeilError:
                continue
            if plan.epsilon == epsilon and plan.delta == delta:
                names = [_mechanism(a.noise) for a in plan.aggregates if a.noise is not None]
                mechanism = ", ".join(dict.fromkeys(names))
                if plan.threshold is not None:
                    mechanism += " with partition selection"
                break
    except (VeilError, ValueError, KeyError, AttributeError, RecursionError):
        pass
    if len(_SHAPES) < 4096:
        _SHAPES[key] = (columns, mechanism)
    return columns, mechanism


def _mechanism(noise: object) -> str:
    """``discrete Laplace``, ``discrete Gaussian`` or ``discrete Laplace on shares``."""
    if getattr(noise, "central", False):
        return "discrete Laplace on shares"
    return "discrete Laplace" if getattr(noise, "mechanism", "") == "laplace" \
        else "discrete Gaussian"


def _queries(charges: list[tuple[Charge, bool]], cutoff: datetime | None,
             federation: Federation | None = None) -> list[QueryRow]:
    groups: dict[tuple[str, str], list[tuple[Charge, bool]]] = {}
    for c, v in charges:
        groups.setdefault((c.analyst, c.query_id), []).append((c, v))
    rows = []
    for (analyst, qid), group in groups.items():
        group.sort(key=lambda cv: cv[0].party)
        time = min(c.reserved_at for c, _ in group)
        if cutoff is not None and datetime.fromisoformat(time) < cutoff:
            continue
        statuses = [c.status for c, _ in group]
        status = _combined(statuses)
        reasons = tuple(sorted({c.reason for c, _ in group if c.reason}))
        asked_eps = max((c.requested or (c.epsilon, c.delta))[0] for c, _ in group)
        asked_dlt = max((c.requested or (c.epsilon, c.delta))[1] for c, _ in group)
        standing = [c for c, _ in group if _stands(c)]
        columns, mechanism = query_shape(group[0][0].sql, federation, asked_eps, asked_dlt)
        identities = {c.identity for c, _ in group if c.identity}
        rows.append(QueryRow(
            query_id=qid, time=time, analyst=analyst, sql=group[0][0].sql,
            epsilon=asked_eps, delta=asked_dlt,
            parties=tuple(c.party for c, _ in group),
            statuses=tuple((c.party, c.status) for c, _ in group),
            status=status, reasons=reasons,
            verified=all(v for _, v in group),
            purpose=next((c.purpose for c, _ in group if c.purpose), ""),
            identity=("certificate" if identities == {"certificate"} else
                      "self-asserted" if identities == {"self-asserted"} else
                      "mixed" if identities else None),
            tables=tuple(f"{c.party}.{t}" for c, _ in group for t in c.tables),
            columns=columns, mechanism=mechanism, outcome=_outcome(status, reasons),
            charged_epsilon=max((c.epsilon for c in standing), default=ZERO),
            charged_delta=max((c.delta for c in standing), default=ZERO),
        ))
    rows.sort(key=lambda q: (q.time, q.query_id))
    return rows


def _series(who: Iterable[str], parties: list[str], charges: list[tuple[Charge, bool]],
            cutoff: datetime | None) -> dict[str, dict[str, Series]]:
    out: dict[str, dict[str, Series]] = {}
    for name in who:
        lines = {}
        for party in parties:
            mine = sorted((c for c, _ in charges if c.analyst == name and c.party == party
                           and _stands(c)), key=lambda c: (c.reserved_at, c.seq))
            total, start, points = ZERO, ZERO, []
            for c in mine:
                total += c.epsilon
                if cutoff is not None and datetime.fromisoformat(c.reserved_at) < cutoff:
                    start = total
                else:
                    points.append((c.reserved_at, total))
            if points or start:
                lines[party] = Series(start, tuple(points))
        if lines:
            out[name] = lines
    return out
