"""The file in which one party keeps the heads of the other parties' ledgers (its anchors).

Append-only JSON lines (``anchors.Anchor``), each appended and fsynced under the file's own
lock, never rewritten; read incrementally into an ``AnchorBook``. ``multi.verify_all``
checks every ledger against the anchors the others hold for it (docs/ledger.md).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from veilql.engine.ledger.anchors import Anchor, AnchorBook, validate
from veilql.engine.ledger.entries import now_utc
from veilql.engine.ledger.errors import LedgerError
from veilql.engine.ledger.files import append_durably, file_lock, holding


class AnchorFile:
    """The anchors ``holder`` keeps at ``path``; ``timeout`` bounds the wait for its lock."""

    def __init__(self, path: Path, holder: str, timeout: float) -> None:
        self.path = path
        self.holder = holder
        self._timeout = timeout
        self._lock = file_lock(f"{path}.lock", timeout)
        self._book: AnchorBook | None = None

    def record(self, party: str, seq: int, digest: str, query_id: str) -> None:
        """Append ``(seq, digest)``, the head of ``party``'s ledger after ``query_id``.

        Raises ``LedgerError`` for the holder's own ledger or a malformed head.
        """
        if party == self.holder:
            raise LedgerError(
                f"{self.holder} cannot anchor its own ledger",
                "record the heads of the other parties' ledgers; they record this one's",
            )
        try:
            validate(party, seq, digest)
        except ValueError as exc:
            raise LedgerError(f"bad anchor for the ledger of {party}: {exc}",
                              "pass the (seq, hash) that party's Ledger.head() returned"
                              ) from None
        anchor = Anchor(holder=self.holder, party=party, seq=seq, hash=digest,
                        query_id=str(query_id), time=now_utc())
        line = anchor.line()
        with holding(self._lock, self.path, self._timeout, "anchor file"):
            book = self._refresh(drop_torn=True)
            book.ident = append_durably(self.path, line)
            book.feed(line)

    def book(self) -> AnchorBook:
        """A snapshot of everything the file holds: latest anchors, conflicting anchors and
        damaged lines (read incrementally after the first call)."""
        if not self.path.exists():
            return AnchorBook(self.holder)
        with holding(self._lock, self.path, self._timeout, "anchor file"):
            book = self._refresh(drop_torn=False)
            return replace(book, latest=dict(book.latest), conflicts=list(book.conflicts),
                           damaged=list(book.damaged), seen=dict(book.seen))

    def _refresh(self, *, drop_torn: bool) -> AnchorBook:
        """Bring the book up to the end of the file (under its lock).

        Reads only what was appended since the last call, unless the file was replaced or
        shrank. With ``drop_torn``, a last line without newline (a write cut short by a
        crash, never acknowledged) is cut off so the next append starts a fresh line.
        """
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._book = AnchorBook(self.holder)
            return self._book
        book = self._book
        ident = (st.st_dev, st.st_ino)
        if book is None or book.ident != ident or st.st_size < book.offset:
            book = AnchorBook(self.holder, ident=ident)
        with open(self.path, "rb") as f:
            f.seek(book.offset)
            data = f.read()
        used = book.feed(data)
        if drop_torn and used < len(data):
            os.truncate(self.path, book.offset)
        self._book = book
        return book
