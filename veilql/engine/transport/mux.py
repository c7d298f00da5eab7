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
import secrets
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping

from veilql.engine.transport.base import TranscriptWriter
from veilql.engine.transport.certs import PartyCredentials, client_context, server_context
from veilql.engine.transport.frames import (
    KIND_BYE,
    KIND_DATA,
    KIND_HELLO,
    KIND_NAMES,
    KIND_REJECT,
    encode_frame,
    parse_address,
    session_digest,
)
from veilql.engine.transport.identity import ANALYST_KIND, PARTY, peer_identity
from veilql.engine.transport.mailbox import Mailbox
from veilql.engine.transport.mux_session import MuxSession
from veilql.engine.transport.muxwire import (
    ANALYST,
    HANDSHAKE_TIMEOUT,
    NO_SESSION,
    QUERY_TAG,
    ClientQuery,
    handshake_client,
    read_frame,
    read_hello,
    routing_id,
    write_frame,
)
from veilql.engine.transport.tlsconn import (
    Closing,
    Conn,
    Stalled,
    connect_with_retry,
    describe,
    tune,
)
from veilql.errors import ConfigError, PartyUnavailable, ProtocolError

PENDING_LIMIT = 100_000  # frames held for sessions not started yet (authenticated peers only)
FINISHED_MEMORY = 4096  # digests of finished sessions whose late frames are dropped
CONTROL = session_digest("veilql/control")  # node-to-node questions outside any query
Logger = Callable[[str], None]
ControlHandler = Callable[[str, str, bytes], bytes]  # (peer, kind, question) -> answer


def _no_log(line: str) -> None:
    """The default log sink: nothing."""


def _sender(who: tuple[str, str] | None) -> str:
    """The transcript sender of an inbound connection: the party named by its certificate,
    ``analyst`` for a client (its endpoint name in every session), else ``unknown``."""
    if who is None:
        return "unknown"
    return who[1] if who[0] == PARTY else ANALYST if who[0] == ANALYST_KIND else "unknown"


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
        tune(raw)
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
