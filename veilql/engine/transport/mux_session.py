"""One query session on a node's multiplexed endpoint: the ``Transport`` a ``PartyNode`` uses.

Frames for the session arrive through the endpoint's reader threads (``deliver``) into a
``Mailbox``; sends go over the endpoint's pooled link to each peer, or to the client.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

import numpy as np

from veilql.engine.transport.base import Transport, decode_array
from veilql.engine.transport.frames import KIND_BYE, KIND_DATA, session_digest
from veilql.engine.transport.mailbox import Mailbox
from veilql.engine.transport.muxwire import ANALYST, abort_payload, goodbye_error, write_frame
from veilql.engine.transport.tlsconn import Closing, Conn, Stalled, describe
from veilql.errors import PartyUnavailable, ProtocolError

if TYPE_CHECKING:
    from veilql.engine.transport.mux import MuxEndpoint



class MuxSession(Transport):
    """One query session's view of a node's endpoint (the ``Transport`` a ``PartyNode`` uses)."""

    def __init__(self, endpoint: MuxEndpoint, session_id: str,
                 participants: Collection[str], client: Conn | None) -> None:
        self.me = endpoint.me
        self.session_id = session_id
        self.timeout = endpoint.timeout
        self.digest = session_digest(session_id)
        self.participants = tuple(participants)
        self._endpoint = endpoint
        self._client = client
        self._box = Mailbox(endpoint.me)
        self._closed = False

    def deliver(self, frm: str, kind: int, tag: str, payload: bytearray) -> None:
        """A frame for this session arrived from ``frm`` (called by reader threads)."""
        if kind == KIND_BYE:
            self._box.fail(frm, goodbye_error(frm, self.me, payload))
        else:
            self._box.put(frm, tag, payload)

    def fail(self, frm: str, exc: ProtocolError) -> None:
        """Fail every wait on ``frm`` in this session."""
        self._box.fail(frm, exc)

    def send(self, to: str, tag: str, payload: bytes | bytearray | memoryview) -> None:
        """Send ``payload`` to peer ``to`` over the pooled link, or to the client."""
        if self._closed:
            raise ProtocolError(f"session transport of {self.me!r} is closed")
        if to in self._box.errors:
            self._box.raise_for(to, tag)
        if to == ANALYST:
            if self._client is None:
                raise ProtocolError("this session has no client connection")
            conn = self._client
        else:
            conn = self._endpoint.outbound(to)
        try:
            write_frame(conn, KIND_DATA, self.digest, tag, payload, self.timeout)
        except Stalled:
            self._box.fail(to, PartyUnavailable(
                to, f"party {to!r} accepted no data for {self.timeout:g} s"))
            self._box.raise_for(to, tag)
        except (Closing, OSError, ValueError) as exc:
            # A peer's goodbye naming the real culprit may still be in flight: wait briefly.
            with self._box.cond:
                self._box.cond.wait_for(lambda: to in self._box.errors, timeout=0.2)
            self._box.fail(to, PartyUnavailable(
                to, f"connection to {to!r} lost while sending: {describe(exc)}"))
            if to != ANALYST:
                self._endpoint.drop(conn)
            self._box.raise_for(to, tag)

    def recv(self, frm: str, tag: str, timeout: float | None = None) -> bytes:
        """The payload ``frm`` sent under ``tag``; PartyUnavailable on timeout or death."""
        return bytes(self._box.take(frm, tag, self.timeout if timeout is None else timeout))

    def recv_array(self, frm: str, tag: str, timeout: float | None = None) -> np.ndarray:
        """Receive an array without the copy ``recv`` makes."""
        return decode_array(self._box.take(frm, tag, self.timeout if timeout is None
                                           else timeout))

    def abort(self, exc: BaseException) -> None:
        """Stop this session because of ``exc``: tell the peers and the client why."""
        self._finish(abort_payload(exc))

    def close(self) -> None:
        """End this session normally (the client hears an empty goodbye)."""
        self._finish(b"")

    def _finish(self, why: bytes) -> None:
        if self._closed:
            return
        self._closed = True
        if why:
            for p in self.participants:
                if p != self.me and p not in self._box.errors:
                    try:
                        conn = self._endpoint.outbound(p, quick=True)
                        write_frame(conn, KIND_BYE, self.digest, self.me, why, 1.0)
                    except (ProtocolError, Stalled, Closing, OSError, ValueError):
                        pass
        if self._client is not None:
            try:
                write_frame(self._client, KIND_BYE, self.digest, self.me, why, 1.0)
            except (Stalled, Closing, OSError, ValueError):
                pass
            # The client closes once it has everything; its EOF ends our reader. Closing our
            # side first could reset the connection before the client has read the tail.
            self._endpoint.linger_close(self._client)
        self._endpoint.forget(self)
