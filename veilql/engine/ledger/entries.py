"""Ledger entries: their fields per kind, canonical JSON, and the chaining hash.

One entry is one JSON object on one line. ``hash`` is SHA-256 (or HMAC-SHA256 under a party
key) over the canonical JSON of the entry without ``hash``: keys sorted, no spaces, ASCII only,
so the same content always hashes the same. ``prev`` is the previous entry's ``hash`` (64 zeros
for the genesis entry) and ``seq`` its position; together they fix the order, so an edit,
deletion, insertion or swap breaks the chain at a known index (Haber and Stornetta, "How to
time-stamp a digital document", J. Cryptology 1991).

Amounts are exact decimal strings (``money.encode``), never JSON numbers, so no float parser
touches them.

>>> e = Entry(seq=0, prev=GENESIS_PREV, kind="genesis", time="2026-01-01T00:00:00+00:00",
...           party="bank", mac="sha256", version=1)
>>> e = e.sealed(None)
>>> parse_line(e.line(), None) == e
True
"""

from __future__ import annotations

import hashlib
import hmac
import json
import unicodedata
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

from veilql.engine.ledger.money import decode, encode

FORMAT_VERSION = 1
GENESIS_PREV = "0" * 64
KINDS = ("genesis", "reserve", "commit", "abort", "repair", "refused")
STATUS = {"reserve": "reserved", "commit": "committed", "abort": "aborted",
          "refused": "refused"}
#: How the analyst named in an entry was identified: by the client certificate a
#: ``veil serve`` node checked, or by the name the analyst gave (embedded mode).
IDENTITIES = ("certificate", "self-asserted")
MAX_PURPOSE = 500  # characters of the analyst's stated purpose of one query

_COMMON = {"seq", "prev", "hash", "kind", "time", "party"}
_CHARGE = {"analyst", "query_id", "sql", "epsilon", "delta", "tables", "status"}
_WHO = {"purpose", "identity"}  # why the analyst asked, and how the analyst was identified
# The exact key set of each kind: a missing or extra key is damage, not an extension.
KEYS: dict[str, frozenset[str]] = {
    "genesis": frozenset(_COMMON | {"version", "mac"}),
    "reserve": frozenset(_COMMON | _CHARGE | {"budget_epsilon", "budget_delta"}),
    "commit": frozenset(_COMMON | _CHARGE | {"ref"}),
    "abort": frozenset(_COMMON | _CHARGE | {"ref", "reason"}),
    "repair": frozenset(_COMMON | {"discarded", "reason"}),
    # A reservation the budget refused: it charges nothing (epsilon and delta are 0) and
    # records what was requested, so a report shows over-budget attempts too.
    "refused": frozenset(_COMMON | _CHARGE | _WHO | {
        "budget_epsilon", "budget_delta", "requested_epsilon", "requested_delta", "reason"}),
}
# Keys a kind may carry besides its exact set: reserve entries written before purposes and
# identities were recorded lack them and still verify (their hash covers what they hold).
OPTIONAL: dict[str, frozenset[str]] = {"reserve": frozenset(_WHO)}
_AMOUNTS = ("epsilon", "delta", "budget_epsilon", "budget_delta", "requested_epsilon",
            "requested_delta")


class EntryError(ValueError):
    """An entry that does not parse or does not match its kind's schema."""


@dataclass(frozen=True)
class Entry:
    """One ledger line. Fields a kind does not use are None (and absent from the JSON).

    ``ref`` (commit, abort) is the ``seq`` of the reserve entry being settled. ``status`` is
    ``reserved`` / ``committed`` / ``aborted`` / ``refused``, repeated on each entry so a
    report reading single lines needs no joins. ``purpose`` is the analyst's stated reason
    for the query and ``identity`` how the analyst was identified (``IDENTITIES``); both are
    on reserve and refused entries (None on reserve entries written before they existed). A
    ``refused`` entry charges nothing: its ``epsilon`` and ``delta`` are 0 and
    ``requested_epsilon`` / ``requested_delta`` say what the budget refused.
    """

    seq: int
    prev: str
    kind: str
    time: str
    party: str
    hash: str = ""
    version: int | None = None
    mac: str | None = None
    analyst: str | None = None
    query_id: str | None = None
    sql: str | None = None
    epsilon: Fraction | None = None
    delta: Fraction | None = None
    tables: tuple[str, ...] | None = None
    status: str | None = None
    budget_epsilon: Fraction | None = None
    budget_delta: Fraction | None = None
    ref: int | None = None
    reason: str | None = None
    discarded: str | None = None
    purpose: str | None = None
    identity: str | None = None
    requested_epsilon: Fraction | None = None
    requested_delta: Fraction | None = None

    def to_obj(self, *, with_hash: bool = True) -> dict[str, Any]:
        """The JSON object of this entry (amounts as exact strings, None fields dropped)."""
        obj: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or (f.name == "hash" and not with_hash):
                continue
            if isinstance(value, Fraction):
                value = encode(value)
            elif isinstance(value, tuple):
                value = list(value)
            obj[f.name] = value
        return obj

    def digest(self, key: bytes | None) -> str:
        """The chaining hash of this entry's content (everything but ``hash``)."""
        return digest(self.to_obj(with_hash=False), key)

    def sealed(self, key: bytes | None) -> Entry:
        """This entry with ``hash`` filled in."""
        return replace(self, hash=self.digest(key))

    def line(self) -> bytes:
        """The canonical line written to the file, newline included."""
        return canonical(self.to_obj()) + b"\n"


def canonical(obj: dict[str, Any]) -> bytes:
    """Canonical JSON bytes: sorted keys, no whitespace, ASCII escapes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def digest(obj: dict[str, Any], key: bytes | None) -> str:
    """SHA-256 of the canonical JSON of ``obj``, or HMAC-SHA256 when ``key`` is given.

    >>> len(digest({"a": 1}, None)), digest({"a": 1}, None) != digest({"a": 1}, b"k")
    (64, True)
    """
    data = canonical(obj)
    if key is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def now_utc() -> str:
    """The current UTC time in ISO 8601 with microseconds."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _reject_constant(name: str) -> Any:
    raise EntryError(f"non-standard JSON constant {name}")


def _check_types(obj: dict[str, Any]) -> None:
    """Type checks per field, so a parsed entry re-serialises to the same bytes it was hashed
    from (e.g. ``seq`` must be an int, not ``1.0`` or ``true``)."""
    for name in ("seq", "version", "ref"):
        if name in obj and (type(obj[name]) is not int or obj[name] < 0):
            raise EntryError(f"{name} must be a non-negative integer")
    for name in ("prev", "hash", "kind", "time", "party", "mac", "analyst", "query_id", "sql",
                 "status", "reason", "discarded", "purpose", "identity"):
        if name in obj and not isinstance(obj[name], str):
            raise EntryError(f"{name} must be a string")
    if "tables" in obj and not (
        isinstance(obj["tables"], list) and all(isinstance(t, str) for t in obj["tables"])
    ):
        raise EntryError("tables must be a list of strings")
    if "time" in obj:
        try:
            datetime.fromisoformat(obj["time"])
        except ValueError as exc:
            raise EntryError(f"time is not ISO 8601: {obj['time']!r}") from exc


def parse_obj(obj: Any) -> Entry:
    """Build an ``Entry`` from a decoded JSON object, checking its kind's exact key set."""
    if not isinstance(obj, dict):
        raise EntryError("entry is not a JSON object")
    kind = obj.get("kind")
    if kind not in KEYS:
        raise EntryError(f"unknown kind {kind!r}")
    keys = set(obj)
    optional = OPTIONAL.get(kind, frozenset())
    if not KEYS[kind] <= keys <= KEYS[kind] | optional:
        missing = sorted(KEYS[kind] - keys)
        extra = sorted(keys - KEYS[kind] - optional)
        raise EntryError(f"{kind} entry has missing keys {missing} / extra keys {extra}")
    _check_types(obj)
    values = dict(obj)
    for name in _AMOUNTS:
        if name in values:
            try:
                values[name] = decode(values[name], what=name)
            except ValueError as exc:
                raise EntryError(str(exc)) from exc
    if "tables" in values:
        values["tables"] = tuple(values["tables"])
    if kind in STATUS and values["status"] != STATUS[kind]:
        raise EntryError(f"{kind} entry has status {values['status']!r}")
    if "identity" in values and values["identity"] not in IDENTITIES:
        raise EntryError(f"identity must be one of {', '.join(IDENTITIES)}")
    if kind == "refused" and (values["epsilon"] != 0 or values["delta"] != 0):
        raise EntryError("a refused entry must charge nothing (epsilon and delta 0)")
    return Entry(**values)


def check_purpose(purpose: object) -> str:
    """The analyst's stated purpose of a query, checked for a ledger entry: text of at most
    ``MAX_PURPOSE`` characters without control or invisible characters (a ledger line is
    read by people), surrounding blanks dropped. Raises ``ValueError`` saying what is wrong.

    >>> check_purpose("  fraud review Q3 ")
    'fraud review Q3'
    """
    if not isinstance(purpose, str):
        raise ValueError(f"the purpose must be text, not {type(purpose).__name__}")
    text = purpose.strip()
    if len(text) > MAX_PURPOSE:
        raise ValueError(f"the purpose has {len(text)} characters; at most {MAX_PURPOSE}")
    for c in text:
        if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp"):
            raise ValueError(f"the purpose holds the control or invisible character "
                             f"U+{ord(c):04X}")
    return text


def parse_line(line: bytes, key: bytes | None) -> Entry:
    """Parse one line (with or without its newline) and check its own hash.

    Raises ``EntryError`` saying what is wrong. Chain links (``seq``, ``prev``) are the
    caller's to check, since they depend on the neighbours.
    """
    try:
        obj = json.loads(line.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EntryError(f"not valid JSON ({exc})") from exc
    entry = parse_obj(obj)
    # Hash what is on disk (the decoded object), not a re-encoding of the parsed entry.
    expected = digest({k: v for k, v in obj.items() if k != "hash"}, key)
    if not hmac.compare_digest(entry.hash, expected):
        raise EntryError("hash does not match the entry's content (entry was edited)")
    return entry
