"""A party node's network endpoint: one TLS listener, many concurrent query sessions.

``TlsTransport`` connects a fixed mesh for one session; a long-running node (``veil serve``)
instead keeps one listener at its address and multiplexes every query over it:

- Every inbound connection is mutual TLS against the federation CA, then starts with a HELLO
  frame naming the sender; the name must be the one the peer's certificate carries
  (``identity.peer_identity``): a *party* certificate for node-to-node links, an *analyst*
  certificate for clients. Anything else is refused with a REJECT frame and logged.
- Node-to-node: each node dials one outbound connection per peer and reuses it for every
  session (a pool); it receives on the connections its peers dialed. Frames carry the
  16-byte session digest (``tls.session_digest``) and are routed into that session's
  mailbox; frames for a session this node has not started yet (the client's QUERY may reach
  it later than a peer's first message) wait in a bounded pending area.
- A client connection carries exactly one session: after HELLO it sends one QUERY frame (a
  DATA frame tagged ``query``); the node sends the analyst's messages back over it. Frames
  are routed by ``routing_id(analyst, session id)``: the analyst from the certificate.
- A peer connection that dies fails that peer in every active session at once
  (``PartyUnavailable``); the pool dials afresh for later sessions, so a restarted node is
  used again. A BYE frame with a session digest aborts just that session at the receiver
  (the payload names the culprit, as in ``tls.TlsTransport.abort``).
- A malformed frame from a peer closes that connection and fails the peer's sessions with a
  ``ProtocolError``; it never stops the node.
- With ``VEIL_TRANSCRIPT_DIR``, the node records every frame delivered to it in
  ``<party>.bin`` as soon as it is read off a connection, before routing: HELLO frames, the
  client's QUERY and BYE (sender ``analyst``), peers' data, heartbeat and BYE frames, frames
  of sessions that ended or never start here, and the REJECT or HELLO a dialed peer answers.
- Heartbeats (DATA frames tagged ``base.HEARTBEAT_TAG``, empty) are routed like any frame of
  their session; the session's mailbox counts them as the sender's sign of life and never
  hands them to ``recv`` (``mailbox.Mailbox``). A node sends them to its peers and to the
  client while it works on a query (``PartyNode.serve``).

Framing, the per-connection TLS locking and header parsing come from ``tls.py``.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

import numpy as np

from veilql.engine.transport.base import TranscriptWriter, Transport, decode_array
from veilql.engine.transport.certs import PartyCredentials, client_context, server_context
from veilql.engine.transport.frames import (
    HEADER_SIZE,
    KIND_BYE,
    KIND_DATA,
    KIND_HELLO,
    KIND_NAMES,
    KIND_REJECT,
    decode_tag,
    encode_frame,
    encode_header,
    parse_address,
    parse_header,
    session_digest,
)
from veilql.engine.transport.identity import ANALYST_KIND, PARTY, peer_identity
from veilql.engine.transport.mailbox import Mailbox
from veilql.engine.transport.tlsconn import (
    Closing,
    Conn,
    Stalled,
    connect_with_retry,
    describe,
    queue_frame,
    read_exact_blocking,
)
from veilql.errors import ConfigError, PartyUnavailable, ProtocolError

ANALYST = "analyst"  # the client's endpoint name in a session (as in engine/node.py)
QUERY_TAG = "query"  # the one frame a client sends after HELLO
PROGRESS_TAG = "progress"  # node -> client: the name of the step it starts (no data)
NO_SESSION = bytes(16)  # session field of HELLO/REJECT frames on multiplexed links
MAX_QUERY_BYTES = 1 << 20  # a QUERY frame is JSON: the SQL and a few numbers
HANDSHAKE_TIMEOUT = 5.0  # seconds a new connection may take to present itself
PENDING_LIMIT = 100_000  # frames held for sessions not started yet (authenticated peers only)
FINISHED_MEMORY = 4096  # digests of finished sessions whose late frames are dropped
CONTROL = session_digest("veilql/control")  # node-to-node questions outside any query
Logger = Callable[[str], None]
ControlHandler = Callable[[str, str, bytes], bytes]  # (peer, kind, question) -> answer


def routing_id(analyst: str, session_id: str) -> str:
    """The id a query's frames are routed by: the client's session id *and* the analyst its
    certificate names, so no client can join or hijack another analyst's session by reusing
    its id (ids are random uuid4 values besides)."""
    return f"{analyst}/{session_id}"


def _no_log(line: str) -> None:
    """The default log sink: nothing."""


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


def _sender(who: tuple[str, str] | None) -> str:
    """The transcript sender of an inbound connection: the party named by its certificate,
    ``analyst`` for a client (its endpoint name in every session), else ``unknown``."""
    if who is None:
        return "unknown"
    return who[1] if who[0] == PARTY else ANALYST if who[0] == ANALYST_KIND else "unknown"


@dataclass(frozen=True)
class ClientQuery:
    """A client's request as the node received it, with the analyst its certificate names."""

    analyst: str
    session_id: str
    participants: tuple[str, ...]
    request: dict
    address: str


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


class MuxEndpoint:
    """A node's listener plus its pool of links to peer nodes (see the module docstring).

    ``addresses`` maps every party of the federation to ``"host:port"``; ``analysts`` are
    the names whose certificates may open client sessions; ``on_query(session, query)`` is
    called in a fresh thread for every accepted client request; ``on_control(peer, kind,
    question)`` answers a peer node's ``ask`` (outside any query, on the ``CONTROL``
    digest; e.g. "what became of query q?" from a node that restarted).
    """

    def __init__(
        self, me: str, addresses: Mapping[str, str], credentials: PartyCredentials, *,
        analysts: Collection[str], on_query: Callable[[MuxSession, ClientQuery], None],
        timeout: float = 30.0, connect_timeout: float | None = None, bind: str | None = None,
        log: Logger = _no_log, max_payload: int = 1 << 33,
        on_control: ControlHandler | None = None,
    ) -> None:
        if me not in addresses:
            raise ConfigError(f"party {me!r} has no address in the federation",
                              "add it as a [[party]] with address = \"host:port\"")
        self.me = me
        self.timeout = timeout
        self.connect_timeout = min(timeout, 10.0) if connect_timeout is None else connect_timeout
        self.max_payload = max_payload
        self.analysts = frozenset(analysts)
        self.transcript = TranscriptWriter(me)
        self._addr = {p: parse_address(a) for p, a in addresses.items()}
        self._bind = parse_address(bind) if bind is not None else self._addr[me]
        self._server_ctx = server_context(credentials)
        self._client_ctx = client_context(credentials)
        self._on_query = on_query
        self._on_control = on_control
        self._answers = Mailbox(me)  # answers to this node's own ``ask``s
        self._log = log
        self._lock = threading.Lock()
        self._sessions: dict[bytes, MuxSession] = {}
        self._pending: dict[bytes, list[tuple[str, int, str, bytearray]]] = {}
        self._pending_since: dict[bytes, float] = {}
        self._finished: OrderedDict[bytes, None] = OrderedDict()
        self._out: dict[str, Conn] = {}
        self._dial_locks = {p: threading.Lock() for p in self._addr}
        self._conns: set[Conn] = set()
        self._listener: socket.socket | None = None
        self._closing = False

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> tuple[str, int]:
        """Listen at our address and accept in a background thread; the bound address."""
        family = socket.AF_INET6 if ":" in self._bind[0] else socket.AF_INET
        try:
            self._listener = socket.create_server(self._bind, family=family, backlog=64)
        except OSError as exc:
            raise ConfigError(
                f"party {self.me!r} cannot listen on {self._bind[0]}:{self._bind[1]}: "
                f"{exc.strerror or exc}",
                "free the port or change the party's address in the federation file") from exc
        self._listener.settimeout(0.2)
        threading.Thread(target=self._accept_loop, daemon=True,
                         name=f"veil-mux-accept-{self.me}").start()
        host, port = self._listener.getsockname()[:2]
        return host, port

    def close(self) -> None:
        """Stop listening, fail every active session and close every connection."""
        self._closing = True
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            sessions = list(self._sessions.values())
            conns = list(self._conns)
        for s in sessions:
            for p in self._addr:
                s.fail(p, PartyUnavailable(self.me, f"node {self.me!r} is shutting down"))
            s.fail(ANALYST, PartyUnavailable(self.me, f"node {self.me!r} is shutting down"))
        end = time.monotonic() + 1.0  # what is queued may still leave, briefly
        for c in conns:
            c.flush(max(0.0, end - time.monotonic()))
        for c in conns:
            c.close()

    @property
    def closing(self) -> bool:
        """True once ``close`` was called."""
        return self._closing

    @property
    def active(self) -> int:
        """Number of sessions running now."""
        with self._lock:
            return len(self._sessions)

    # -- sessions -----------------------------------------------------------------------
    def session(self, session_id: str, participants: Collection[str] = (),
                client: Conn | None = None) -> MuxSession:
        """Open the per-session transport of ``session_id`` (frames already here included)."""
        s = MuxSession(self, session_id, participants, client)
        with self._lock:
            if s.digest in self._sessions or s.digest in self._finished:
                raise ProtocolError(f"session id {session_id!r} was already used at this node",
                                    "start every query with a fresh session id")
            self._sessions[s.digest] = s
            early = self._pending.pop(s.digest, [])
            self._pending_since.pop(s.digest, None)
        for frm, kind, tag, payload in early:
            s.deliver(frm, kind, tag, payload)
        return s

    def forget(self, s: MuxSession) -> None:
        """Unregister a finished session; its late frames are dropped from now on."""
        with self._lock:
            self._sessions.pop(s.digest, None)
            self._finished[s.digest] = None
            while len(self._finished) > FINISHED_MEMORY:
                self._finished.popitem(last=False)

    # -- control questions between nodes ---------------------------------------------------
    def ask(self, peer: str, kind: str, question: bytes, timeout: float | None = None) -> bytes:
        """Ask node ``peer`` a control question; its answer (PartyUnavailable if none)."""
        qid = secrets.token_hex(8)
        conn = self.outbound(peer, quick=True)
        write_frame(conn, KIND_DATA, CONTROL, f"ask/{kind}/{qid}", question, self.timeout)
        return bytes(self._answers.take(peer, f"answer/{qid}",
                                        self.timeout if timeout is None else timeout))

    def _control(self, frm: str, tag: str, payload: bytearray) -> None:
        """A peer's question (answered in a thread of its own) or an answer to ours."""
        if tag.startswith("answer/"):
            self._answers.put(frm, tag, payload)
            return
        parts = tag.split("/")
        if len(parts) != 3 or parts[0] != "ask" or self._on_control is None:
            self._log(f"ignored control frame {tag[:40]!r} from {frm}")
            return

        def answer() -> None:
            try:
                reply = self._on_control(frm, parts[1], bytes(payload))  # type: ignore[misc]
                write_frame(self.outbound(frm, quick=True), KIND_DATA, CONTROL,
                            f"answer/{parts[2]}", reply, self.timeout)
            except Exception as exc:  # noqa: BLE001 - a bad question must not stop the node
                self._log(f"control question {parts[1]!r} from {frm} failed: {exc}")

        threading.Thread(target=answer, daemon=True, name=f"veil-control-{self.me}").start()

    def _route(self, frm: str, kind: int, digest: bytes, tag: str, payload: bytearray) -> None:
        if digest == CONTROL:
            if kind == KIND_DATA:
                self._control(frm, tag, payload)
            return
        with self._lock:
            s = self._sessions.get(digest)
            if s is None:
                if digest in self._finished:
                    return
                self._expire_pending()
                if sum(len(v) for v in self._pending.values()) >= PENDING_LIMIT:
                    raise ProtocolError(f"too many frames from {frm!r} for unknown sessions")
                self._pending.setdefault(digest, []).append((frm, kind, tag, payload))
                self._pending_since.setdefault(digest, time.monotonic())
                return
        s.deliver(frm, kind, tag, payload)

    def _expire_pending(self) -> None:
        """Drop early frames of sessions that never started here (caller holds the lock)."""
        old = time.monotonic() - 2 * self.timeout
        for d in [d for d, t in self._pending_since.items() if t < old]:
            self._pending.pop(d, None)
            self._pending_since.pop(d, None)

    def _fail_everywhere(self, peer: str, exc: ProtocolError) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
        for s in sessions:
            s.fail(peer, exc)

    # -- inbound ------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._closing:
            try:
                raw, addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handshake, args=(raw, f"{addr[0]}:{addr[1]}"),
                             daemon=True, name=f"veil-mux-hs-{self.me}").start()

    def _handshake(self, raw: socket.socket, where: str) -> None:
        """Authenticate one inbound connection, then serve it (peer link or client query)."""
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.settimeout(HANDSHAKE_TIMEOUT)
        try:
            tls = self._server_ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self._log(f"refused connection from {where}: TLS handshake failed "
                      f"({describe(exc)}); a valid certificate of this federation is required")
            raw.close()
            return
        try:
            who = peer_identity(tls.getpeercert())
            kind, name, _ = read_hello(tls, self.transcript, _sender(who))
            if kind != KIND_HELLO:
                raise ProtocolError("the connection did not start with HELLO")
            if who is None or who[1] != name:
                raise ProtocolError(f"HELLO names {name!r} but the certificate names "
                                    f"{who[1] if who else 'no VeilQL identity'!r}")
            if who[0] == PARTY:
                if name not in self._addr or name == self.me:
                    raise ProtocolError(f"party {name!r} is not a peer of {self.me!r}")
                tls.sendall(encode_frame(KIND_HELLO, NO_SESSION, self.me, b""))
                tls.settimeout(None)
                self._adopt(name, tls, outbound=False)
                return
            if who[0] == ANALYST_KIND:
                if name not in self.analysts:
                    raise ProtocolError(f"analyst {name!r} has no budget in this federation")
                tls.sendall(encode_frame(KIND_HELLO, NO_SESSION, self.me, b""))
                self._client_query(name, tls, where)
                return
            raise ProtocolError("certificate names neither a party nor an analyst")
        except (ProtocolError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
            reason = exc.message if isinstance(exc, ProtocolError) else describe(exc)
            self._log(f"refused connection from {where}: {reason}")
            try:
                tls.sendall(encode_frame(KIND_REJECT, NO_SESSION, self.me, reason.encode()))
            except OSError:
                pass
            tls.close()

    def _client_query(self, analyst: str, tls: ssl.SSLSocket, where: str) -> None:
        kind, tag, payload = read_hello(tls, self.transcript, ANALYST)
        if kind != KIND_DATA or tag != QUERY_TAG:
            raise ProtocolError("expected a QUERY frame after HELLO")
        info = json.loads(payload)
        sid, parts, request = info["session"], info["participants"], info["request"]
        if not isinstance(sid, str) or not isinstance(request, dict) or not all(
                isinstance(p, str) for p in parts):
            raise ProtocolError("malformed QUERY frame")
        tls.settimeout(None)
        conn = Conn(ANALYST, tls)
        try:
            session = self.session(routing_id(analyst, sid), parts, client=conn)
        except ProtocolError as exc:
            write_frame(conn, KIND_REJECT, NO_SESSION, self.me, exc.message.encode(), 1.0)
            conn.flush(1.0)
            conn.close()
            raise
        with self._lock:
            self._conns.add(conn)
        threading.Thread(target=self._client_reader, args=(conn, session), daemon=True,
                         name=f"veil-mux-client-{self.me}").start()
        query = ClientQuery(analyst, sid, tuple(parts), request, where)
        threading.Thread(target=self._on_query, args=(session, query), daemon=True,
                         name=f"veil-query-{sid[:8]}").start()

    def _client_reader(self, conn: Conn, session: MuxSession) -> None:
        """Watch the client link: the client sends nothing more, so any end fails it."""
        try:
            while True:
                kind, _, tag, payload = read_frame(conn, 4096)
                self.transcript.record(ANALYST, tag, payload, KIND_NAMES[kind])
                if kind == KIND_BYE:
                    raise EOFError
        except (Closing, EOFError, ProtocolError, OSError, ValueError):
            # A client that leaves early abandons the query: stop waiting on anyone, so the
            # reservation is aborted now rather than after the timeout.
            gone = PartyUnavailable(ANALYST, "the client went away; query abandoned")
            for p in (ANALYST, *session.participants):
                session.fail(p, gone)
        finally:
            conn.close()
            with self._lock:
                self._conns.discard(conn)

    def linger_close(self, conn: Conn) -> None:
        """Close a client link once the client has closed it (bounded wait)."""
        def later() -> None:
            end = time.monotonic() + 5.0
            while not conn.closing and time.monotonic() < end:
                time.sleep(0.05)
            conn.close()

        threading.Thread(target=later, daemon=True).start()

    # -- peer links ---------------------------------------------------------------------
    def _adopt(self, peer: str, tls: ssl.SSLSocket, *, outbound: bool) -> Conn:
        conn = Conn(peer, tls)
        conn.on_error = lambda exc: self._writer_failed(conn, exc)
        with self._lock:
            self._conns.add(conn)
            if outbound:
                self._out[peer] = conn
        threading.Thread(target=self._peer_reader, args=(conn,), daemon=True,
                         name=f"veil-mux-{self.me}<-{peer}").start()
        return conn

    def _peer_reader(self, conn: Conn) -> None:
        peer = conn.peer
        try:
            while True:
                kind, digest, tag, payload = read_frame(conn, self.max_payload)
                # Recorded on arrival, before routing: frames of sessions that ended, never
                # start here or are never read are in the transcript too.
                self.transcript.record(peer, tag, payload, KIND_NAMES[kind])
                if kind not in (KIND_DATA, KIND_BYE):
                    raise ProtocolError(f"unexpected frame kind {kind} after set-up")
                self._route(peer, kind, digest, tag, payload)
        except Closing:
            return
        except ProtocolError as exc:
            self._log(f"bad frame from {peer}: {exc.message}; closing that link")
            self._fail_everywhere(peer, ProtocolError(
                f"party {peer!r} sent a bad frame: {exc.message}", exc.hint))
        except EOFError:
            self._fail_everywhere(peer, PartyUnavailable(
                peer, f"party {peer!r} closed its connection to {self.me!r}"))
        except (OSError, ValueError) as exc:
            self._fail_everywhere(peer, PartyUnavailable(
                peer, f"connection between {self.me!r} and {peer!r} lost: {describe(exc)}"))
        self.drop(conn)

    def _writer_failed(self, conn: Conn, exc: BaseException) -> None:
        """The writer to a peer stopped: every session waiting on it fails now (the next
        send to it raises too), and the pool dials afresh for later sessions."""
        peer = conn.peer
        if isinstance(exc, Stalled):
            why = f"party {peer!r} accepted no data for {self.timeout:g} s"
        else:
            why = f"connection to {peer!r} lost while sending: {describe(exc)}"
        self._fail_everywhere(peer, PartyUnavailable(peer, why))
        self.drop(conn)

    def drop(self, conn: Conn) -> None:
        """Close a dead link and take it out of the pool."""
        conn.close()
        with self._lock:
            self._conns.discard(conn)
            if self._out.get(conn.peer) is conn:
                del self._out[conn.peer]

    def outbound(self, peer: str, *, quick: bool = False) -> Conn:
        """The pooled link to ``peer``, dialing it when there is none (or it died)."""
        if peer not in self._addr:
            raise ProtocolError(f"no party named {peer!r} in this federation")
        conn = self._out.get(peer)
        if conn is not None and not conn.closing:
            return conn
        with self._dial_locks[peer]:
            conn = self._out.get(peer)
            if conn is not None and not conn.closing:
                return conn
            return self._adopt(peer, self._dial(peer, 1.0 if quick else self.connect_timeout),
                               outbound=True)

    def _dial(self, peer: str, limit: float) -> ssl.SSLSocket:
        host, port = self._addr[peer]
        raw = connect_with_retry(peer, host, port, time.monotonic() + limit, limit,
                                 stop=lambda: self._closing, first_delay=0.05)
        raw.settimeout(HANDSHAKE_TIMEOUT)
        return handshake_client(self._client_ctx, raw, peer, self.me, f"{host}:{port}",
                                self.transcript)


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
