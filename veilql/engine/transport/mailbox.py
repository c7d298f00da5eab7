"""Mailboxes of received payloads, keyed by (sender, round tag), with per-sender errors.

Shared by the network transports (``tls.py``, ``mux.py``): a reader thread ``put``s each
payload as it arrives; ``take`` waits for one with a timeout; ``fail`` records why a
sender is gone, so every waiter on it raises at once instead of waiting out the timeout.
"""

from __future__ import annotations

import re
import threading
import time
from collections import defaultdict, deque

from veilql.errors import PartyUnavailable, ProtocolError

_ROUND = re.compile(r" \(at '[^']*', round '[^']*'\)")


def without_rounds(message: str) -> str:
    """``message`` without the " (at 'party', round 'tag')" notes that ``raise_for`` adds:
    they help a node's log, but name protocol rounds, which mean nothing to an analyst.

    >>> without_rounds("party 'bank' is unavailable (at 'insurer', round 'msb:20/l1/t')")
    "party 'bank' is unavailable"
    """
    return _ROUND.sub("", message)


class Mailbox:
    """Payloads per (sender, tag) plus per-sender errors, waited on with a timeout."""

    def __init__(self, me: str) -> None:
        self.me = me
        self.cond = threading.Condition()
        self.boxes: dict[tuple[str, str], deque[bytes | bytearray]] = defaultdict(deque)
        self.errors: dict[str, ProtocolError] = {}

    def put(self, frm: str, tag: str, payload: bytes | bytearray) -> None:
        """Deliver one payload."""
        with self.cond:
            self.boxes[(frm, tag)].append(payload)
            self.cond.notify_all()

    def fail(self, frm: str, exc: ProtocolError) -> None:
        """Record the first error of ``frm``; waiters on it raise at once."""
        with self.cond:
            self.errors.setdefault(frm, exc)
            self.cond.notify_all()

    def raise_for(self, frm: str, tag: str) -> None:
        """Raise ``frm``'s recorded error, saying where we were."""
        err = self.errors[frm]
        # Errors relayed from peer to peer already say where they arose: say it once.
        where = "" if " (at '" in err.message else f" (at {self.me!r}, round {tag!r})"
        if isinstance(err, PartyUnavailable):
            raise PartyUnavailable(err.party, err.message + where, err.hint)
        raise ProtocolError(err.message + where, err.hint)

    def take(self, frm: str, tag: str, limit: float) -> bytes | bytearray:
        """Pop the first payload of ``(frm, tag)``, waiting up to ``limit`` seconds."""
        deadline = time.monotonic() + limit
        key = (frm, tag)
        with self.cond:
            while True:
                queue = self.boxes.get(key)
                if queue:
                    payload = queue.popleft()
                    if not queue:
                        del self.boxes[key]
                    return payload
                if frm in self.errors:
                    self.raise_for(frm, tag)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PartyUnavailable(
                        frm, f"party {frm!r} sent nothing for {limit:g} s "
                        f"(waiting for {tag!r} at {self.me!r})")
                self.cond.wait(left)
