"""In-process transport: every party in its own thread, messages through channels.

Nothing is shared between parties but the mailboxes: a party's endpoint delivers bytes
into the receiver's mailbox, exactly as the network transport would. A party whose
thread fails is marked dead so the others get ``PartyUnavailable`` at once instead of
waiting for the timeout.

Transcripts (``VEIL_TRANSCRIPT_DIR``) are written at delivery: every message handed to
an endpoint's mailbox is recorded in that endpoint's file whether or not it is ever read
(heartbeats included), and a party marked dead leaves an ``error`` record (its reason) at
every other endpoint, the analyst's included.

The timeout of ``recv`` bounds the sender's silence: any message from it, a heartbeat
(``base.HEARTBEAT_TAG``, never handed to ``recv``) included, restarts the clock
(``mailbox.wait_left``).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict

from veilql.engine.transport.base import ERROR, HEARTBEAT_TAG, TranscriptWriter, Transport
from veilql.engine.transport.mailbox import wait_left
from veilql.errors import PartyUnavailable, ProtocolError


class _Mailbox:
    """Messages for one party, keyed by (sender, tag); waiters block on a condition."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.items: dict[tuple[str, str], list[bytes]] = defaultdict(list)
        self.heard: dict[str, float] = {}  # when each sender's last message arrived


class InProcessNetwork:
    """A set of in-process endpoints for one session.

    >>> net = InProcessNetwork(["a", "b"], timeout=1.0)
    >>> net.endpoint("a").send("b", "hello", b"hi")
    >>> net.endpoint("b").recv("a", "hello")
    b'hi'
    """

    def __init__(
        self, parties: list[str] | tuple[str, ...], *, timeout: float = 30.0,
        session_id: str | None = None, transcript_dir: str | None = None,
    ) -> None:
        self.parties = tuple(parties)
        self.timeout = timeout
        self.session_id = session_id or uuid.uuid4().hex
        self._boxes = {p: _Mailbox() for p in self.parties}
        self._dead: dict[str, str] = {}
        self._endpoints = {
            p: InProcessTransport(self, p, TranscriptWriter(p, transcript_dir))
            for p in self.parties
        }
        self.bytes_sent: dict[str, int] = {p: 0 for p in self.parties}

    def endpoint(self, party: str) -> InProcessTransport:
        """The transport of ``party``."""
        return self._endpoints[party]

    def mark_dead(self, party: str, reason: str = "its thread stopped") -> None:
        """Declare ``party`` dead: every receive waiting on it fails now."""
        self._dead[party] = reason
        for p, endpoint in self._endpoints.items():
            if p != party:
                endpoint._transcript.record(party, party, reason.encode(), ERROR)
        for box in self._boxes.values():
            with box.cond:
                box.cond.notify_all()

    def _deliver(self, frm: str, to: str, tag: str, payload: bytes) -> None:
        box = self._boxes.get(to)
        if box is None:
            raise ProtocolError(f"no party named {to!r} in this session")
        self._endpoints[to]._transcript.record(frm, tag, payload)
        with box.cond:
            box.heard[frm] = time.monotonic()
            if tag != HEARTBEAT_TAG:
                box.items[(frm, tag)].append(payload)
            box.cond.notify_all()
        self.bytes_sent[frm] += len(payload)


class InProcessTransport(Transport):
    """One party's endpoint on an ``InProcessNetwork``."""

    def __init__(self, net: InProcessNetwork, me: str, transcript: TranscriptWriter) -> None:
        self._net = net
        self.me = me
        self.session_id = net.session_id
        self.timeout = net.timeout
        self._transcript = transcript
        self._closed = False

    def send(self, to: str, tag: str, payload: bytes) -> None:
        """Deliver ``payload`` (copied into immutable bytes) to ``to``'s mailbox."""
        if self._closed:
            raise ProtocolError(f"transport of {self.me!r} is closed")
        if to in self._net._dead:
            raise PartyUnavailable(to, f"party {to!r} is unavailable: {self._net._dead[to]}")
        self._net._deliver(self.me, to, tag, bytes(payload))

    def recv(self, frm: str, tag: str, timeout: float | None = None) -> bytes:
        """Wait for ``frm``'s message under ``tag``; PartyUnavailable once ``frm`` has been
        silent for the timeout (heartbeats count as life), or at once when it died."""
        limit = self.timeout if timeout is None else timeout
        box = self._net._boxes[self.me]
        start = time.monotonic()
        key = (frm, tag)
        with box.cond:
            while True:
                queue = box.items.get(key)
                if queue:
                    payload = queue.pop(0)
                    if not queue:
                        del box.items[key]
                    break
                if frm in self._net._dead:
                    raise PartyUnavailable(
                        frm, f"party {frm!r} is unavailable: {self._net._dead[frm]}"
                    )
                left = wait_left(frm, tag, self.me, limit, start, box.heard.get(frm),
                                 time.monotonic())
                box.cond.wait(left)
        return payload

    def close(self) -> None:
        """Mark this endpoint closed."""
        self._closed = True
