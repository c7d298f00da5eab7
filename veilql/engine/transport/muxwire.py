"""The wire of a node's multiplexed endpoint: framing of shared links, HELLO, goodbyes.

What both ends of a ``mux`` link need (the node's ``MuxEndpoint`` and the analyst's client
in ``engine/remote.py``): the frame reader and writer of a shared connection, the set-up
frames, the BYE payload that names whose fault a stop was, and the client's handshake.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
from dataclasses import dataclass

from veilql.engine.transport.base import TranscriptWriter
from veilql.engine.transport.frames import (
    HEADER_SIZE,
    KIND_HELLO,
    KIND_NAMES,
    KIND_REJECT,
    decode_tag,
    encode_frame,
    encode_header,
    parse_header,
)
from veilql.engine.transport.identity import PARTY, peer_identity
from veilql.engine.transport.tlsconn import Conn, describe, queue_frame, read_exact_blocking
from veilql.errors import PartyUnavailable, ProtocolError

ANALYST = "analyst"  # the client's endpoint name in a session (as in engine/node.py)
QUERY_TAG = "query"  # the one frame a client sends after HELLO
PROGRESS_TAG = "progress"  # node -> client: the name of the step it starts (no data)
NO_SESSION = bytes(16)  # session field of HELLO/REJECT frames on multiplexed links
MAX_QUERY_BYTES = 1 << 20  # a QUERY frame is JSON: the SQL and a few numbers
HANDSHAKE_TIMEOUT = 5.0  # seconds a new connection may take to present itself


def routing_id(analyst: str, session_id: str) -> str:
    """The id a query's frames are routed by: the client's session id *and* the analyst its
    certificate names, so no client can join or hijack another analyst's session by reusing
    its id (ids are random uuid4 values besides)."""
    return f"{analyst}/{session_id}"


def abort_payload(exc: BaseException) -> bytes:
    """The BYE payload telling peers why a session stopped (and whose fault it was)."""
    culprit = exc.party if isinstance(exc, PartyUnavailable) else None
    if isinstance(exc, ProtocolError):
        kind, reason, hint = "protocol", exc.message, exc.hint
    elif hasattr(exc, "message") and hasattr(exc, "hint"):
        kind, reason, hint = "refused", str(exc.message), exc.hint
    else:
        kind, reason, hint = "internal", f"{type(exc).__name__}: {exc}", None
    return json.dumps({"culprit": culprit, "kind": kind, "reason": reason[:1000],
                       "hint": hint}).encode()


def goodbye_error(peer: str, me: str, payload: bytes | bytearray) -> ProtocolError:
    """The error a session BYE from ``peer`` leaves at ``me``.

    >>> goodbye_error("bank", "analyst", b'{"culprit": "insurer", "reason": "x"}').party
    'insurer'
    """
    if not payload:
        return PartyUnavailable(peer, f"party {peer!r} ended the session")
    try:
        info = json.loads(bytes(payload))
        culprit, kind = info.get("culprit"), info.get("kind")
        reason, hint = str(info.get("reason")), info.get("hint")
    except (ValueError, AttributeError):
        culprit, kind, reason, hint = None, None, bytes(payload[:200]).decode("replace"), None
    if isinstance(culprit, str) and culprit not in (peer, me):
        # Relayed from node to node: keep the first report, say once who passed it on.
        first = re.sub(r" \(reported by '[^']*'\)", "", reason.rpartition(" stopped because ")[2])
        return PartyUnavailable(culprit, f"{first} (reported by {peer!r})")
    if kind in ("protocol", "refused"):
        return ProtocolError(f"party {peer!r} stopped the query: {reason}",
                             hint if isinstance(hint, str) else None)
    return PartyUnavailable(peer, f"party {peer!r} stopped the query: {reason}")


def write_frame(conn: Conn, kind: int, digest: bytes, tag: str,
                payload: bytes | bytearray | memoryview, stall: float) -> None:
    """Queue one frame on a shared connection for its writer thread (header and payload
    kept together, frames in order; ``tls.queue_frame`` says when the payload is copied)."""
    view = memoryview(payload).cast("B")
    head = encode_header(kind, digest, tag.encode(), len(view))
    queue_frame(conn, head, payload, view, stall)


def read_frame(conn: Conn, max_payload: int) -> tuple[int, bytes, str, bytearray]:
    """Read one frame of any session: ``(kind, session digest, tag, payload)``."""
    header = bytearray(HEADER_SIZE)
    conn.read_into(memoryview(header))
    kind, tag_len, n, digest = parse_header(header, None, max_payload=max_payload)
    raw_tag = bytearray(tag_len)
    conn.read_into(memoryview(raw_tag))
    payload = bytearray(n)
    conn.read_into(memoryview(payload))
    return kind, digest, decode_tag(raw_tag), payload


def read_hello(tls: ssl.SSLSocket, transcript: TranscriptWriter | None = None,
               sender: str = "") -> tuple[int, str, bytes]:
    """Read a set-up frame on a blocking socket: ``(kind, tag, payload)``.

    The frame is recorded in ``transcript`` (as sent by ``sender``) before it is checked.
    """
    head = read_exact_blocking(tls, HEADER_SIZE)
    kind, tag_len, n, _ = parse_header(head, None, max_payload=MAX_QUERY_BYTES)
    body = read_exact_blocking(tls, tag_len + n)
    tag, payload = decode_tag(body[:tag_len]), body[tag_len:]
    if transcript is not None:
        transcript.record(sender, tag, payload, KIND_NAMES[kind])
    return kind, tag, payload


@dataclass(frozen=True)
class ClientQuery:
    """A client's request as the node received it, with the analyst its certificate names."""

    analyst: str
    session_id: str
    participants: tuple[str, ...]
    request: dict
    address: str



def handshake_client(ctx: ssl.SSLContext, raw: socket.socket, peer: str, me: str,
                     where: str, transcript: TranscriptWriter | None = None) -> ssl.SSLSocket:
    """TLS-connect to node ``peer`` as ``me``, check it is that party, exchange HELLOs.

    The node's answer (HELLO or REJECT) is recorded in ``transcript`` when one is given.
    """
    hint = "check that every node and client uses certificates from the same federation CA"
    try:
        tls = ctx.wrap_socket(raw)
    except ssl.SSLError as exc:
        raw.close()
        raise ProtocolError(f"TLS handshake with party {peer!r} at {where} failed: "
                            f"{describe(exc)}", hint) from exc
    except OSError as exc:
        raw.close()
        raise PartyUnavailable(peer, f"party {peer!r} at {where} dropped the TLS handshake: "
                               f"{describe(exc)}") from exc
    try:
        if peer_identity(tls.getpeercert()) != (PARTY, peer):
            raise ProtocolError(f"the node at {where} does not hold a certificate for party "
                                f"{peer!r}", "check the federation's party addresses")
        tls.sendall(encode_frame(KIND_HELLO, NO_SESSION, me, b""))
        kind, tag, payload = read_hello(tls, transcript, peer)
        if kind == KIND_REJECT:
            raise ProtocolError(f"party {peer!r} refused the connection: "
                                f"{payload.decode(errors='replace')}", hint)
        if kind != KIND_HELLO or tag != peer:
            raise ProtocolError(f"unexpected reply from party {peer!r} during set-up")
    except ssl.SSLError as exc:
        tls.close()
        raise ProtocolError(f"party {peer!r} refused our certificate: {describe(exc)}",
                            hint) from exc
    except (EOFError, OSError) as exc:
        tls.close()
        raise ProtocolError(f"party {peer!r} closed the connection during set-up "
                            f"({describe(exc)}); it may have refused our certificate",
                            hint) from exc
    except ProtocolError:
        tls.close()
        raise
    tls.settimeout(None)
    return tls
