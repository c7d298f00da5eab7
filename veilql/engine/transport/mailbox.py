"""Mailboxes of received payloads, keyed by (sender, round tag), with per-sender errors.

Shared by the network transports (``tls.py``, ``mux.py``) and the client (``remote.py``): a
reader thread ``put``s each payload as it arrives; ``take`` waits for one with a timeout;
``fail`` records why a sender is gone, so every waiter on it raises at once instead of
waiting out the timeout.

The timeout bounds *silence*: every frame from a sender, a heartbeat (``HEARTBEAT_TAG``,
never stored) included, restarts that sender's silence clock (``wait_left``), so a peer busy
with long work is waited for as long as it keeps beating, up to ``KEEPALIVE_CAP`` times the
timeout for one wait.
"""

from __future__ import annotations

import re
import threading
import time
from collections import defaultdict, deque

from veilql.engine.transport.base import HEARTBEAT_TAG, KEEPALIVE_CAP
from veilql.errors import PartyUnavailable, ProtocolError

_ROUND = re.compile(r" \(at '[^']*', round '[^']*'\)")


def without_rounds(message: str) -> str:
    """``message`` without the " (at 'party', round 'tag')" notes that ``raise_for`` adds:
    they help a node's log, but name protocol rounds, which mean nothing to an analyst.

    >>> without_rounds("party 'bank' is unavailable (at 'insurer', round 'msb:20/l1/t')")
    "party 'bank' is unavailable"
    """
    return _ROUND.sub("", message)


def wait_left(frm: str, tag: str, me: str, limit: float, start: float,
              heard: float | None, now: float) -> float:
    """Seconds a wait for ``(frm, tag)`` begun at ``start`` may still last; raises
    ``PartyUnavailable`` naming ``frm`` once it has been silent for ``limit`` seconds (since
    its last frame ``heard``, or since ``start``), or once the wait has lasted
    ``KEEPALIVE_CAP * limit`` seconds of nothing but keep-alives.

    >>> wait_left("bank", "r", "me", 2.0, start=10.0, heard=11.5, now=12.0)
    1.5
    >>> wait_left("bank", "r", "me", 2.0, start=10.0, heard=None, now=12.5)
    Traceback (most recent call last):
    ...
    veilql.errors.PartyUnavailable: party 'bank' sent nothing for 2 s (waiting for 'r' at 'me')
    >>> wait_left("bank", "r", "me", 2.0, start=10.0, heard=49.9, now=50.0)
    Traceback (most recent call last):
    ...
    veilql.errors.PartyUnavailable: party 'bank' only sent keep-alives for 40 s (at 'me', round 'r')
    """
    last = start if heard is None else max(start, heard)
    silent = last + limit - now
    if silent <= 0:
        raise PartyUnavailable(frm, f"party {frm!r} sent nothing for {limit:g} s "
                               f"(waiting for {tag!r} at {me!r})")
    cap = start + KEEPALIVE_CAP * limit - now
    if cap <= 0:
        raise PartyUnavailable(frm, f"party {frm!r} only sent keep-alives for "
                               f"{KEEPALIVE_CAP * limit:g} s (at {me!r}, round {tag!r})")
    return min(silent, cap)


class Mailbox:
    """Payloads per (sender, tag) plus per-sender errors, waited on with a timeout."""

    def __init__(self, me: str) -> None:
        self.me = me
        self.cond = threading.Condition()
        self.boxes: dict[tuple[str, str], deque[bytes | bytearray]] = defaultdict(deque)
        self.errors: dict[str, ProtocolError] = {}
        self.heard: dict[str, float] = {}  # when each sender's last frame arrived

    def put(self, frm: str, tag: str, payload: bytes | bytearray) -> None:
        """Deliver one payload; a heartbeat only says that ``frm`` is alive."""
        with self.cond:
            self.heard[frm] = time.monotonic()
            if tag != HEARTBEAT_TAG:
                self.boxes[(frm, tag)].append(payload)
            self.cond.notify_all()

    def alive(self, frm: str) -> None:
        """Note a sign of life of ``frm`` that carries nothing to take (e.g. progress)."""
        with self.cond:
            self.heard[frm] = time.monotonic()
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
        """Pop the first payload of ``(frm, tag)``, waiting while ``frm`` is silent for
        less than ``limit`` seconds (see ``wait_left``)."""
        start = time.monotonic()
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
                left = wait_left(frm, tag, self.me, limit, start, self.heard.get(frm),
                                 time.monotonic())
                self.cond.wait(left)
