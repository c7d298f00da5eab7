"""Anchors: the heads of other parties' ledgers that a party keeps, and checking against them.

A party's ledger can be rewritten, cut short or deleted by whoever can write its file; its own
hash chain cannot show that. So every party keeps, in ``<state_dir>/<party>.anchors.jsonl``,
the ``(seq, hash)`` heads of the *other* parties' ledgers it is told about (one JSON line per
anchor, append-only, written under an exclusive ``flock`` on ``<file>.lock`` and fsynced).
A ledger is then checked against every anchor the other parties hold for it: the anchored
entry must still be in the chain with the same hash. A truncated tail (the ledger ends
before the anchored entry), a rewritten or replaced chain (a different hash at that entry)
and a deleted file (an anchor exists, the ledger does not) all fail.

Only the highest anchored ``seq`` per party matters: every hash depends on all earlier ones
through ``prev``, so a chain that still holds the latest anchor holds the earlier ones too.
Two different hashes anchored for the same entry are a fork (the party showed different
chains at different times) and fail as well.

>>> a = Anchor(holder="insurer", party="bank", seq=3, hash="ab" * 32, query_id="q1",
...            time="2026-01-01T00:00:00+00:00")
>>> book = AnchorBook("insurer")
>>> book.feed(a.line()) == len(a.line())
True
>>> book.latest["bank"].seq
3
>>> check_anchor("bank", ["00" * 32] * 3, a).message.split(";")[0]
'ledger of bank has 3 entries but insurer holds an anchor at entry 3'
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veilql.engine.ledger.chain import Problem
from veilql.engine.ledger.entries import canonical

_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEYS = frozenset({"holder", "party", "seq", "hash", "query_id", "time"})


def anchors_path(ledger_path: str | Path, party: str) -> Path:
    """Where ``party`` keeps the anchors it holds: ``<party>.anchors.jsonl`` beside its
    ledger."""
    return Path(ledger_path).parent / f"{party}.anchors.jsonl"


@dataclass(frozen=True)
class Anchor:
    """The head ``(seq, hash)`` of ``party``'s ledger, as ``holder`` recorded it after
    query ``query_id`` at ``time``."""

    holder: str
    party: str
    seq: int
    hash: str
    query_id: str
    time: str

    def line(self) -> bytes:
        """The canonical JSON line written to the anchor file, newline included."""
        return canonical(self.to_obj()) + b"\n"

    def to_obj(self) -> dict[str, Any]:
        """The anchor as a JSON object."""
        return {"holder": self.holder, "party": self.party, "seq": self.seq,
                "hash": self.hash, "query_id": self.query_id, "time": self.time}


def validate(party: str, seq: int, digest: str) -> None:
    """Raise ``ValueError`` unless ``(seq, digest)`` can be the head of a ledger."""
    if not isinstance(party, str) or not party:
        raise ValueError("the anchored party must be a non-empty name")
    if type(seq) is not int or seq < 0:
        raise ValueError(f"anchor seq must be a non-negative integer, not {seq!r}")
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise ValueError("anchor hash must be 64 lowercase hex digits")


def parse_anchor(line: bytes) -> Anchor:
    """Parse one anchor line; ``ValueError`` saying what is wrong."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict) or set(obj) != _KEYS:
        raise ValueError("not an anchor (wrong keys)")
    for name in ("holder", "party", "query_id", "time"):
        if not isinstance(obj[name], str):
            raise ValueError(f"{name} must be a string")
    validate(obj["party"], obj["seq"], obj["hash"])
    return Anchor(**obj)


@dataclass
class AnchorBook:
    """Every anchor one holder keeps, read from its anchor file in order.

    ``latest`` is the anchor with the highest ``seq`` per party; ``conflicts`` pairs of
    anchors giving different hashes for the same entry; ``damaged`` ``(line, problem)`` for
    lines that are not anchors of this holder. ``offset`` is the number of bytes read (only
    complete lines are read, so a write in progress is left for the next read).
    """

    holder: str
    latest: dict[str, Anchor] = field(default_factory=dict)
    conflicts: list[tuple[Anchor, Anchor]] = field(default_factory=list)
    damaged: list[tuple[int, str]] = field(default_factory=list)
    count: int = 0
    offset: int = 0
    ident: tuple[int, int] | None = None
    seen: dict[tuple[str, int], Anchor] = field(default_factory=dict, repr=False)

    def feed(self, data: bytes) -> int:
        """Read every complete line of ``data`` (the file from ``offset`` on); return how
        many bytes were consumed."""
        end = data.rfind(b"\n") + 1
        for raw in data[:end].split(b"\n")[:-1]:
            self.count += 1
            try:
                anchor = parse_anchor(raw)
            except ValueError as exc:
                self.damaged.append((self.count, str(exc)))
                continue
            if anchor.holder != self.holder:
                self.damaged.append((self.count, f"an anchor held by {anchor.holder!r}"))
                continue
            self.add(anchor)
        self.offset += end
        return end

    def add(self, anchor: Anchor) -> None:
        """Take ``anchor`` into account (already appended to the file)."""
        key = (anchor.party, anchor.seq)
        earlier = self.seen.get(key)
        if earlier is None:
            self.seen[key] = anchor
        elif earlier.hash != anchor.hash:
            self.conflicts.append((earlier, anchor))
        best = self.latest.get(anchor.party)
        if best is None or anchor.seq >= best.seq:
            self.latest[anchor.party] = anchor

    def heads(self) -> dict[str, tuple[int, str]]:
        """``party -> (seq, hash)`` of the latest anchor held for each party."""
        return {p: (a.seq, a.hash) for p, a in sorted(self.latest.items())}


def read_anchors(path: Path, holder: str) -> AnchorBook:
    """The anchors in ``path`` as one snapshot, without locking (for read-only reports).

    A missing file holds no anchors; a last line without a newline is a write in progress
    and is left out.
    """
    book = AnchorBook(holder)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return book
    book.feed(data)
    return book


def check_anchor(party: str, hashes: Sequence[str] | None, anchor: Anchor) -> Problem | None:
    """The problem with ``party``'s ledger given an anchor another party holds for it, or
    None when the anchored entry is still there unchanged.

    ``hashes`` are the entry hashes of ``party``'s verified chain, in order; None when its
    ledger file does not exist.
    """
    where = f"{anchor.holder} holds an anchor at entry {anchor.seq}"
    if hashes is None:
        return Problem("missing", f"ledger of {party} is missing; {where} (the ledger was "
                       "deleted or moved)", anchor.seq, anchor.holder)
    if anchor.seq >= len(hashes):
        return Problem("anchor", f"ledger of {party} has {len(hashes)} entries but {where}; "
                       "entries were deleted from the end, or the ledger was replaced",
                       len(hashes), anchor.holder)
    if hashes[anchor.seq] != anchor.hash:
        return Problem("anchor", f"entry {anchor.seq} of {party}'s ledger differs from the "
                       f"anchor {anchor.holder} holds (after query {anchor.query_id}); the "
                       "chain was rewritten or replaced", anchor.seq, anchor.holder)
    return None


def conflict_problem(first: Anchor, second: Anchor) -> Problem:
    """The problem of two different hashes anchored for the same entry of one ledger."""
    return Problem(
        "anchor", f"{first.holder} holds two different hashes for entry {first.seq} of "
        f"{first.party}'s ledger (after queries {first.query_id} and {second.query_id}); its "
        "chain was forked or rewritten", first.seq, first.holder)


def damage_problems(book: AnchorBook, path: Path) -> list[Problem]:
    """One ``anchor-file`` problem per damaged line of ``book`` (read from ``path``)."""
    return [Problem("anchor-file", f"anchor file {path} of {book.holder} is damaged at line "
                    f"{line}: {problem}", line) for line, problem in book.damaged]
