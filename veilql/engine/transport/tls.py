"""Network transport: party processes connected pairwise over mutual TLS.

Connection set-up is deterministic so that nodes can start in any order: for every pair of
parties, the one listed first dials and the other listens; the dialer retries with backoff
until the connect deadline. Both ends verify the peer's certificate against the federation CA
and check that it names the party expected at that end (``certs.peer_party_names``); then
they exchange HELLO frames carrying the session id, so a node of another session is refused
before any data flows.

Frames: ``frames`` (the codec); connections and their writer threads: ``tlsconn``.

A reader thread per connection reads frames into per-(sender, tag) mailboxes, recording each
frame in the transcript (``VEIL_TRANSCRIPT_DIR``) as it arrives, before anyone reads it:
data, HELLO and REJECT frames of the set-up, BYE frames and heartbeats included; ``recv``
waits on them with a timeout that bounds the sender's silence (a heartbeat, a DATA frame
tagged ``base.HEARTBEAT_TAG``, restarts it and is never handed to ``recv``). A frame
with a wrong session, magic, version or length fails that
peer with ``ProtocolError``; a closed or reset connection marks the peer dead, so a ``recv``
waiting on it raises ``PartyUnavailable`` at once instead of waiting for the timeout.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import numpy as np

from veilql.engine.transport.base import (
    TranscriptWriter,
    Transport,
    decode_array,
)
from veilql.engine.transport.certs import (
    PartyCredentials,
    client_context,
    peer_party_names,
    server_context,
)
from veilql.engine.transport.frames import (
    DEFAULT_MAX_PAYLOAD,
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
from veilql.engine.transport.mailbox import Mailbox
from veilql.engine.transport.tlsconn import (
    POLL_SLICE,
    Closing,
    Conn,
    Stalled,
    connect_with_retry,
    describe,
    queue_frame,
    read_exact_blocking,
    tune,
)
from veilql.errors import ConfigError, PartyUnavailable, ProtocolError
from veilql.policies.model import Federation


class TlsTransport(Transport):
    """One party's endpoint, connected to every peer over mutual TLS.

    ``addresses`` maps every party of the session, in federation order, to ``"host:port"``
    (or ``(host, port)``); the order decides who dials whom. ``listener`` is an optional
    already-bound listening socket for our own address (tests bind port 0 first); it is
    closed once set-up is done. ``bind`` is the address to listen on when it differs from
    the one peers dial (e.g. ``"0.0.0.0:7001"`` behind NAT). ``timeout`` bounds every
    ``recv`` and any stall of a ``send``; ``linger`` bounds how long ``close`` waits for the
    peers' goodbyes. The constructor returns when every peer is connected, or
    raises ``PartyUnavailable`` (a peer did not connect within ``connect_timeout``) or
    ``ProtocolError`` (certificate, name or session refused).
    """

    def __init__(
        self, me: str, addresses: Mapping[str, str | tuple[str, int]],
        credentials: PartyCredentials, *, session_id: str, timeout: float = 30.0,
        connect_timeout: float | None = None, transcript_dir: str | None = None,
        listener: socket.socket | None = None, max_payload: int = DEFAULT_MAX_PAYLOAD,
        linger: float = 2.0, bind: str | tuple[str, int] | None = None,
    ) -> None:
        if me not in addresses:
            raise ConfigError(f"party {me!r} is not in the session's address list",
                              f"add {me!r} to the federation's parties")
        self.me = me
        self.session_id = session_id
        self.timeout = timeout
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout
        self.linger = linger
        self.max_payload = max_payload
        self.parties = tuple(addresses)
        self.peers = tuple(p for p in self.parties if p != me)
        self._addr = {p: parse_address(a) for p, a in addresses.items()}
        self._bind = parse_address(bind) if bind is not None else self._addr[me]
        self._session = session_digest(session_id)
        self._server_ctx = server_context(credentials)
        self._client_ctx = client_context(credentials)
        self._transcript = TranscriptWriter(me, transcript_dir)
        self._mail = Mailbox(me)
        self._cond = self._mail.cond  # also guards the connection-state checks below
        self._boxes = self._mail.boxes
        self._errors = self._mail.errors
        self._closed = False
        self.bytes_sent: dict[str, int] = {p: 0 for p in self.peers}
        self.bytes_received: dict[str, int] = {p: 0 for p in self.peers}
        socks = self._connect_all(listener)
        self._conns = {p: Conn(p, s) for p, s in socks.items()}
        for p, c in self._conns.items():
            c.on_error = lambda exc, p=p: self._writer_failed(p, exc)
        self._readers = [
            threading.Thread(target=self._read_loop, args=(c,), daemon=True,
                             name=f"veil-tls-{me}<-{p}")
            for p, c in self._conns.items()
        ]
        for t in self._readers:
            t.start()

    @classmethod
    def for_federation(
        cls, federation: Federation, me: str, credentials: PartyCredentials, *,
        session_id: str, **options: Any,
    ) -> TlsTransport:
        """Connect party ``me`` to every other party of ``federation`` at its address."""
        local = [p.name for p in federation.parties if p.is_local]
        if local:
            raise ConfigError(
                f"parties {local} have address 'local' and cannot be reached over the network",
                "give every party a host:port address to run nodes with `veil serve`",
                file=str(federation.path),
            )
        addresses = {p.name: p.address for p in federation.parties}
        options.setdefault("timeout", federation.timeout)
        return cls(me, addresses, credentials, session_id=session_id, **options)

    # ----------------------------------------------------------------------------- set-up
    def _connect_all(self, listener: socket.socket | None) -> dict[str, ssl.SSLSocket]:
        i = self.parties.index(self.me)
        lower, higher = self.parties[:i], self.parties[i + 1:]
        deadline = time.monotonic() + self.connect_timeout
        accepted: dict[str, ssl.SSLSocket] = {}
        rejected: list[str] = []
        acceptor: threading.Thread | None = None
        if lower:
            if listener is None:
                family = socket.AF_INET6 if ":" in self._bind[0] else socket.AF_INET
                try:
                    listener = socket.create_server(self._bind, family=family)
                except OSError as exc:
                    raise ConfigError(
                        f"party {self.me!r} cannot listen on {self._bind[0]}:{self._bind[1]}: "
                        f"{exc.strerror or exc}",
                        "free the port or change the party's address in the federation file",
                    ) from exc
            acceptor = threading.Thread(
                target=self._accept_loop, args=(listener, lower, deadline, accepted, rejected),
                daemon=True, name=f"veil-tls-accept-{self.me}",
            )
            acceptor.start()
        elif listener is not None:
            listener.close()
        dialed: dict[str, ssl.SSLSocket] = {}
        try:
            for peer in higher:
                dialed[peer] = self._dial(peer, deadline)
            if acceptor is not None:
                acceptor.join(max(0.0, deadline - time.monotonic()) + 10.0)
            missing = [p for p in lower if p not in accepted]
            if missing:
                why = f"; refused: {'; '.join(rejected)}" if rejected else ""
                raise PartyUnavailable(
                    missing[0],
                    f"part{'ies' if len(missing) > 1 else 'y'} "
                    f"{', '.join(repr(m) for m in missing)} did not connect to {self.me!r} "
                    f"within {self.connect_timeout:g} s{why}",
                )
        except BaseException:
            for s in [*dialed.values(), *accepted.values()]:
                s.close()
            raise
        finally:
            if listener is not None:
                listener.close()
        return {**accepted, **dialed}

    def _accept_loop(
        self, listener: socket.socket, expected: tuple[str, ...], deadline: float,
        accepted: dict[str, ssl.SSLSocket], rejected: list[str],
    ) -> None:
        listener.settimeout(POLL_SLICE)
        while len(accepted) < len(expected) and time.monotonic() < deadline:
            try:
                raw, addr = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # listener closed under us: set-up is being abandoned
            try:
                peer, tls = self._handshake_server(raw, expected, accepted, deadline)
            except (ProtocolError, OSError, EOFError, ValueError) as exc:
                rejected.append(f"connection from {addr[0]}:{addr[1]}: {describe(exc)}")
                raw.close()
                continue
            accepted[peer] = tls

    def _handshake_server(
        self, raw: socket.socket, expected: tuple[str, ...], accepted: dict[str, ssl.SSLSocket],
        deadline: float,
    ) -> tuple[str, ssl.SSLSocket]:
        tune(raw)
        # A bounded handshake: a peer that connects and stays silent cannot stall set-up.
        raw.settimeout(max(0.5, min(5.0, deadline - time.monotonic())))
        tls = self._server_ctx.wrap_socket(raw, server_side=True)
        names = peer_party_names(tls.getpeercert())
        candidates = [p for p in expected if p in names and p not in accepted]
        if not candidates:
            reason = (f"certificate for {sorted(names)} is not a party expected to dial "
                      f"{self.me!r} (expected one of {list(expected)})")
            self._reject(tls, reason)
            raise ProtocolError(reason)
        peer = candidates[0]
        head = read_exact_blocking(tls, HEADER_SIZE)
        kind, tag_len, n, sess = parse_header(head, None, max_payload=4096)
        body = read_exact_blocking(tls, tag_len + n)
        self._transcript.record(peer, decode_tag(body[:tag_len]), body[tag_len:],
                                KIND_NAMES[kind])
        if kind != KIND_HELLO or sess != self._session or decode_tag(body[:tag_len]) != peer:
            reason = ("session id mismatch" if sess != self._session
                      else f"bad HELLO from {peer!r}")
            self._reject(tls, reason)
            raise ProtocolError(f"{peer!r}: {reason}")
        tls.sendall(encode_frame(KIND_HELLO, self._session, self.me, b""))
        return peer, tls

    def _reject(self, tls: ssl.SSLSocket, reason: str) -> None:
        try:
            tls.sendall(encode_frame(KIND_REJECT, self._session, self.me, reason.encode()))
        except OSError:
            pass
        tls.close()

    def _dial(self, peer: str, deadline: float) -> ssl.SSLSocket:
        host, port = self._addr[peer]
        raw = connect_with_retry(peer, host, port, deadline, self.connect_timeout)
        raw.settimeout(max(0.5, deadline - time.monotonic()))
        hint = "check that every node uses a certificate from the same federation CA"
        try:
            tls = self._client_ctx.wrap_socket(raw)
        except ssl.SSLError as exc:
            raw.close()
            raise ProtocolError(f"TLS handshake with party {peer!r} failed: {describe(exc)}",
                                hint) from exc
        except OSError as exc:
            raw.close()
            raise PartyUnavailable(peer, f"party {peer!r} dropped the TLS handshake: "
                                   f"{describe(exc)}") from exc
        try:
            names = peer_party_names(tls.getpeercert())
            if peer not in names:
                raise ProtocolError(
                    f"the node at {host}:{port} presented a certificate for {sorted(names)}, "
                    f"not for party {peer!r}", "check the federation's party addresses",
                )
            tls.sendall(encode_frame(KIND_HELLO, self._session, self.me, b""))
            head = read_exact_blocking(tls, HEADER_SIZE)
            kind, tag_len, n, sess = parse_header(head, None, max_payload=4096)
            body = read_exact_blocking(tls, tag_len + n)
            self._transcript.record(peer, decode_tag(body[:tag_len]), body[tag_len:],
                                    KIND_NAMES[kind])
            if kind == KIND_REJECT:
                reason = body[tag_len:].decode(errors="replace")
                raise ProtocolError(f"party {peer!r} refused the connection: {reason}", hint)
            if kind != KIND_HELLO or decode_tag(body[:tag_len]) != peer:
                raise ProtocolError(f"unexpected reply from party {peer!r} during set-up")
            if sess != self._session:
                raise ProtocolError(f"party {peer!r} runs another session (session id mismatch)",
                                    "every party must run the same session; restart the query")
        except ssl.SSLError as exc:
            tls.close()
            raise ProtocolError(f"party {peer!r} refused our TLS certificate: {describe(exc)}",
                                hint) from exc
        except (EOFError, OSError) as exc:
            tls.close()
            raise ProtocolError(f"party {peer!r} closed the connection during set-up "
                                f"({describe(exc)})", hint) from exc
        except ProtocolError:
            tls.close()
            raise
        return tls

    # -------------------------------------------------------------------------- messaging
    def _check_peer(self, party: str) -> Conn:
        conn = self._conns.get(party)
        if conn is None:
            raise ProtocolError(f"no peer named {party!r} in this session "
                                f"(peers of {self.me!r}: {list(self.peers)})")
        return conn

    def _fail(self, peer: str, exc: ProtocolError) -> None:
        self._mail.fail(peer, exc)

    def _raise_for(self, peer: str, tag: str) -> None:
        self._mail.raise_for(peer, tag)

    def send(self, to: str, tag: str, payload: bytes | bytearray | memoryview) -> None:
        """Frame ``payload`` with the session and ``tag`` and queue it for ``to``'s writer
        thread (see the module doc: it returns before the bytes are on the wire)."""
        if self._closed:
            raise ProtocolError(f"transport of {self.me!r} is closed")
        conn = self._check_peer(to)
        if to in self._errors:
            self._raise_for(to, tag)
        view = memoryview(payload).cast("B")
        head = encode_header(KIND_DATA, self._session, tag.encode(), len(view))
        try:
            queue_frame(conn, head, payload, view, self.timeout)
        except Stalled:
            self._fail(to, PartyUnavailable(
                to, f"party {to!r} accepted no data for {self.timeout:g} s"))
            self._raise_for(to, tag)
        except (Closing, OSError, ValueError) as exc:
            # The peer's goodbye (which may name the party that really failed) can still be
            # in our reader's hands: give it a moment to land before blaming the peer.
            with self._cond:
                self._cond.wait_for(lambda: to in self._errors, timeout=0.2)
            self._fail(to, PartyUnavailable(
                to, f"connection to party {to!r} lost while sending: {describe(exc)}"))
            self._raise_for(to, tag)
        self.bytes_sent[to] += len(view)

    def recv(self, frm: str, tag: str, timeout: float | None = None) -> bytes:
        """The payload ``frm`` sent under ``tag``; PartyUnavailable on timeout or death."""
        return bytes(self._take(frm, tag, timeout))

    def recv_array(self, frm: str, tag: str, timeout: float | None = None) -> np.ndarray:
        """Receive an array without copying: it is a view of the receive buffer.

        Skipping the ``bytes`` copy of ``recv`` matters: on loopback it raised bulk
        throughput by about half (docs/transport.md). The array is writable and owned by
        the caller.
        """
        return decode_array(self._take(frm, tag, timeout))

    def _take(self, frm: str, tag: str, timeout: float | None) -> bytearray:
        """Pop the first buffered payload of ``(frm, tag)``, waiting up to the timeout."""
        self._check_peer(frm)
        return self._mail.take(frm, tag, self.timeout if timeout is None else timeout)

    def _writer_failed(self, peer: str, exc: BaseException) -> None:
        """The writer thread to ``peer`` stopped: fail every wait on ``peer`` now."""
        if isinstance(exc, Stalled):
            self._fail(peer, PartyUnavailable(
                peer, f"party {peer!r} accepted no data for {self.timeout:g} s"))
            return
        # As in ``send``: the peer's goodbye may still be landing; it names the culprit.
        with self._cond:
            self._cond.wait_for(lambda: peer in self._errors, timeout=0.2)
        self._fail(peer, PartyUnavailable(
            peer, f"connection to party {peer!r} lost while sending: {describe(exc)}"))

    def _read_loop(self, conn: Conn) -> None:
        peer = conn.peer
        header = bytearray(HEADER_SIZE)
        try:
            while True:
                conn.read_into(memoryview(header))
                kind, tag_len, n, _ = parse_header(header, self._session,
                                                   max_payload=self.max_payload)
                raw_tag = bytearray(tag_len)
                conn.read_into(memoryview(raw_tag))
                tag = decode_tag(raw_tag)
                buf = bytearray(n)
                conn.read_into(memoryview(buf))
                self._transcript.record(peer, tag, buf, KIND_NAMES[kind])
                if kind == KIND_BYE:
                    self._fail(peer, _goodbye_error(peer, self.me, buf))
                    return
                if kind != KIND_DATA:
                    raise ProtocolError(f"unexpected frame kind {kind} after set-up")
                with self._cond:
                    self.bytes_received[peer] += n
                self._mail.put(peer, tag, buf)  # a heartbeat only restarts peer's clock
        except Closing:
            return
        except ProtocolError as exc:
            self._fail(peer, ProtocolError(f"party {peer!r} sent a bad frame: {exc.message}",
                                           exc.hint))
            conn.close()
        except EOFError:
            self._fail(peer, PartyUnavailable(peer, f"party {peer!r} closed the connection"))
        except (OSError, ValueError) as exc:
            if not conn.closing:
                self._fail(peer, PartyUnavailable(
                    peer, f"connection to party {peer!r} lost: {describe(exc)}"))

    def close(self) -> None:
        """Say goodbye to every peer, drain their last frames briefly, close the sockets."""
        self._shutdown(b"")

    def abort(self, exc: BaseException) -> None:
        """Close because of ``exc``, telling the peers why.

        A party that gives up because another died passes the culprit on, so the peers
        waiting on *it* report the party that really failed rather than the messenger.
        """
        culprit = exc.party if isinstance(exc, PartyUnavailable) else None
        reason = exc.message if isinstance(exc, ProtocolError) else f"{type(exc).__name__}: {exc}"
        self._shutdown(json.dumps({"culprit": culprit, "reason": reason[:1000]}).encode())

    def _shutdown(self, why: bytes) -> None:
        if self._closed:
            return
        self._closed = True
        bye = encode_frame(KIND_BYE, self._session, self.me, why)
        for p, conn in self._conns.items():
            if p in self._errors:
                continue
            try:  # after every frame still queued to that peer
                conn.enqueue([bye], min(self.linger, 1.0))
            except (Stalled, Closing, OSError, ValueError):
                pass
        end = time.monotonic() + self.linger
        for conn in self._conns.values():
            conn.flush(max(0.0, end - time.monotonic()))
        # Keep reading until each peer says goodbye too, so no unread data makes the kernel
        # reset the connection (a reset can destroy data the peer has not read yet).
        end = time.monotonic() + self.linger
        for t in self._readers:
            t.join(max(0.0, end - time.monotonic()))
        for conn in self._conns.values():
            conn.close()
        with self._cond:
            self._cond.notify_all()

    def __enter__(self) -> TlsTransport:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
        else:
            self.abort(exc)



def _goodbye_error(peer: str, me: str, payload: bytes | bytearray) -> PartyUnavailable:
    """The error a BYE frame from ``peer`` leaves behind (its payload may say why)."""
    if not payload:
        return PartyUnavailable(peer, f"party {peer!r} closed its connection")
    try:
        info = json.loads(bytes(payload))
        culprit, reason = info.get("culprit"), str(info.get("reason"))
    except (ValueError, AttributeError):
        culprit, reason = None, bytes(payload[:200]).decode(errors="replace")
    if isinstance(culprit, str) and culprit not in (peer, me):
        return PartyUnavailable(culprit, f"party {peer!r} stopped because {reason}")
    return PartyUnavailable(peer, f"party {peer!r} stopped the session: {reason}")

