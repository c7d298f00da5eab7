"""Network transport: party processes connected pairwise over mutual TLS.

Connection set-up is deterministic so that nodes can start in any order: for every pair of
parties, the one listed first dials and the other listens; the dialer retries with backoff
until the connect deadline. Both ends verify the peer's certificate against the federation CA
and check that it names the party expected at that end (``certs.peer_party_names``); then
they exchange HELLO frames carrying the session id, so a node of another session is refused
before any data flows.

Frames (all integers little-endian)::

    magic "VQL" | version u8 | kind u8 | reserved u8 = 0 | tag length u16 | payload length u64
    | session digest (16 bytes, BLAKE2b of the session id) | tag (UTF-8) | payload

A reader thread per connection reads frames into per-(sender, tag) mailboxes, recording each
frame in the transcript (``VEIL_TRANSCRIPT_DIR``) as it arrives, before anyone reads it:
data, HELLO and REJECT frames of the set-up, BYE frames and heartbeats included; ``recv``
waits on them with a timeout that bounds the sender's silence (a heartbeat, a DATA frame
tagged ``base.HEARTBEAT_TAG``, restarts it and is never handed to ``recv``). A frame
with a wrong session, magic, version or length fails that
peer with ``ProtocolError``; a closed or reset connection marks the peer dead, so a ``recv``
waiting on it raises ``PartyUnavailable`` at once instead of waiting for the timeout.

Why a lock around every TLS call: OpenSSL does not allow one ``SSL`` object to be used from two
threads at once, and a full-duplex connection has a reader thread and a writer thread. The
socket is therefore non-blocking, every ``SSL_read``/``SSL_write`` runs under a per-connection
lock, and waiting for the socket (``poll``) happens outside the lock, so the two directions
never block each other. Large payloads go out as ``memoryview`` slices and come in by
``recv_into`` a preallocated buffer: no quadratic copies.

Sends do not wait for the wire. Each connection has one writer thread fed by a queue
(``_Conn.enqueue``), so a party that sends to both peers has both frames on their way at
once, and overlaps its next local work with the encryption and the transfer (the ``ssl``
module releases the GIL inside ``SSL_write``). ``send`` returns once the frame is queued:
an immutable ``bytes`` payload is referenced, a mutable one (a view of an array the caller
may reuse) is copied first when it is at most ``COPY_LIMIT`` bytes and otherwise waited
for until written, as before. At most ``QUEUE_BYTES`` wait per connection (a sender
beyond that waits for room), and frames to one peer keep their order. The writer is the
only thread that writes on the connection besides direct ``_Conn.write`` callers, and
it holds ``send_lock`` per frame, so frames never interleave. A writer that fails (a
peer that accepts no data for the timeout, a lost connection) records the error: it fails
the peer at once for every ``recv`` waiting on it and is raised, naming the peer, by the
next ``send`` to it.
"""

from __future__ import annotations

import hashlib
import json
import select
import socket
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

import numpy as np

from veilql.engine.transport.base import (
    BYE,
    DATA,
    HELLO,
    REJECT,
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
from veilql.engine.transport.mailbox import Mailbox
from veilql.errors import ConfigError, PartyUnavailable, ProtocolError
from veilql.policies.model import Federation

MAGIC = b"VQL"
VERSION = 1
KIND_DATA, KIND_HELLO, KIND_BYE, KIND_REJECT = 0, 1, 2, 3
_KINDS = (KIND_DATA, KIND_HELLO, KIND_BYE, KIND_REJECT)
KIND_NAMES = {KIND_DATA: DATA, KIND_HELLO: HELLO, KIND_BYE: BYE, KIND_REJECT: REJECT}
_HEADER = struct.Struct("<3sBBBHQ16s")
HEADER_SIZE = _HEADER.size  # 32 bytes
DEFAULT_MAX_PAYLOAD = 1 << 33  # 8 GiB: refuses absurd lengths from a corrupt header
_SMALL = 64 * 1024  # payloads up to this size go out in one write with their header
_CHUNK = 256 * 1024  # bytes per SSL_write on large payloads
_POLL_SLICE = 0.2  # seconds; loops re-check closing and deadlines at least this often
QUEUE_BYTES = 64 << 20  # bytes one connection may hold queued for its writer thread
COPY_LIMIT = 32 << 20  # mutable payloads up to this size are copied and sent in the background


def session_digest(session_id: str) -> bytes:
    """The 16-byte session field of every frame: BLAKE2b-128 of the session id.

    >>> len(session_digest("abc")), session_digest("abc") == session_digest("abd")
    (16, False)
    """
    return hashlib.blake2b(session_id.encode(), digest_size=16).digest()


def encode_header(kind: int, session: bytes, tag: bytes, payload_len: int) -> bytes:
    """Frame header plus tag bytes; the payload follows separately."""
    if len(tag) > 0xFFFF:
        raise ProtocolError(f"round tag too long ({len(tag)} bytes; at most 65535)")
    return _HEADER.pack(MAGIC, VERSION, kind, 0, len(tag), payload_len, session) + tag


def parse_header(
    header: bytes | bytearray | memoryview, session: bytes | None, *,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> tuple[int, int, int, bytes]:
    """Check a 32-byte header; returns ``(kind, tag_len, payload_len, session)``.

    Raises ``ProtocolError`` on a wrong magic, version, kind, session (unless ``session`` is
    None) or a payload longer than ``max_payload``.

    >>> s = session_digest("s1")
    >>> parse_header(encode_header(KIND_DATA, s, b"r1", 5)[:HEADER_SIZE], s)[:3]
    (0, 2, 5)
    >>> parse_header(encode_header(KIND_DATA, s, b"r1", 5)[:HEADER_SIZE], session_digest("s2"))
    Traceback (most recent call last):
    ...
    veilql.errors.ProtocolError: frame for another session (session id mismatch)
    """
    if len(header) != HEADER_SIZE:
        raise ProtocolError(f"truncated frame header ({len(header)} of {HEADER_SIZE} bytes)")
    magic, version, kind, reserved, tag_len, payload_len, sess = _HEADER.unpack(header)
    if magic != MAGIC:
        raise ProtocolError(f"not a VeilQL frame (magic {bytes(magic)!r})",
                            "check that the address points at a VeilQL party node")
    if version != VERSION:
        raise ProtocolError(f"unsupported frame version {version} (this node speaks {VERSION})",
                            "run the same VeilQL version on every party node")
    if kind not in _KINDS or reserved != 0:
        raise ProtocolError(f"malformed frame header (kind {kind}, reserved {reserved})")
    if session is not None and sess != session:
        raise ProtocolError("frame for another session (session id mismatch)",
                            "every party must run the same session; restart the query")
    if payload_len > max_payload:
        raise ProtocolError(f"frame payload of {payload_len} bytes exceeds the limit of "
                            f"{max_payload} bytes")
    return kind, tag_len, payload_len, sess


def encode_frame(kind: int, session: bytes, tag: str, payload: bytes) -> bytes:
    """A whole frame as bytes (small messages, tests)."""
    return encode_header(kind, session, tag.encode(), len(payload)) + payload


def decode_frame(
    data: bytes, session: bytes | None, *, max_payload: int = DEFAULT_MAX_PAYLOAD
) -> tuple[int, str, bytes]:
    """Inverse of ``encode_frame``: ``(kind, tag, payload)``; ProtocolError if malformed.

    >>> s = session_digest("s1")
    >>> decode_frame(encode_frame(KIND_DATA, s, "mul/3", b"xyz"), s)
    (0, 'mul/3', b'xyz')
    """
    kind, tag_len, n, _ = parse_header(data[:HEADER_SIZE], session, max_payload=max_payload)
    if len(data) != HEADER_SIZE + tag_len + n:
        raise ProtocolError(f"frame length mismatch ({len(data)} bytes, header says "
                            f"{HEADER_SIZE + tag_len + n})")
    return kind, _decode_tag(data[HEADER_SIZE:HEADER_SIZE + tag_len]), data[HEADER_SIZE + tag_len:]


def _decode_tag(raw: bytes | bytearray | memoryview) -> str:
    try:
        return bytes(raw).decode()
    except UnicodeDecodeError as exc:
        raise ProtocolError("round tag is not valid UTF-8") from exc


def parse_address(address: str | tuple[str, int]) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) to ``(host, port)``.

    >>> parse_address("127.0.0.1:7001")
    ('127.0.0.1', 7001)
    """
    if isinstance(address, tuple):
        return address[0], int(address[1])
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"invalid party address {address!r}", "write it as host:port")
    return host.strip("[]"), int(port)


def connect_with_retry(
    peer: str, host: str, port: int, deadline: float, limit: float,
    stop: Callable[[], bool] = lambda: False, first_delay: float = 0.02,
) -> socket.socket:
    """A TCP connection to ``peer`` (Nagle off), retried with backoff until ``deadline``.

    Nodes start in any order, so a refused connection is retried; ``PartyUnavailable``
    names the party when the deadline passes (or ``stop()`` says to give up).
    """
    delay, last = first_delay, "no attempt"
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or stop():
            raise PartyUnavailable(peer, f"could not connect to party {peer!r} at "
                                   f"{host}:{port} within {limit:g} s ({last})")
        try:
            raw = socket.create_connection((host, port), timeout=min(left, 5.0))
            break
        except OSError as exc:
            last = _describe(exc)
            time.sleep(min(delay, max(0.0, left)))
            delay = min(delay * 2, 0.5)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return raw


class _Stalled(Exception):
    """A wait on the socket passed its deadline."""


class _Closing(Exception):
    """Our own transport is closing; the reader stops quietly."""


class _Frame:
    """One queued frame: its parts (header, payload), the stall limit, and, for a frame
    whose sender waits for it, an event set once it is written or has failed."""

    __slots__ = ("parts", "size", "stall", "done", "error")

    def __init__(self, parts: Sequence[bytes | memoryview], stall: float, wait: bool) -> None:
        self.parts = [memoryview(x).cast("B") for x in parts]
        self.size = sum(len(x) for x in self.parts)
        self.stall = stall
        self.done = threading.Event() if wait else None
        self.error: BaseException | None = None


class _Conn:
    """One peer's TLS connection: non-blocking socket, every TLS call under one lock, a
    writer thread for queued frames (see the module doc)."""

    def __init__(self, peer: str, sock: ssl.SSLSocket) -> None:
        self.peer = peer
        self.sock = sock
        self.fd = sock.fileno()
        self.tls_lock = threading.Lock()  # serialises SSL_read/SSL_write (see module doc)
        self.send_lock = threading.Lock()  # one frame at a time on the wire
        self.closing = False
        self.error: BaseException | None = None  # why the writer stopped
        self.on_error: Callable[[BaseException], None] | None = None  # told once, by the writer
        self._queue: deque[_Frame] = deque()
        self._queued = 0
        self._qcond = threading.Condition()
        self._writer: threading.Thread | None = None
        sock.setblocking(False)

    def enqueue(self, parts: Sequence[bytes | memoryview], stall: float, *,
                wait: bool = False, inline: bool = False) -> None:
        """Queue one frame for the writer thread; with ``wait``, return once it is written.

        The parts are referenced, not copied: the caller passes bytes it will not change
        (or waits). ``inline`` (small frames): when nothing is queued and nobody writes,
        write it in this thread at once, which saves a thread hand-off per small message
        (a round of tiny messages is latency-bound). Raises the writer's error if it has
        stopped, ``_Closing`` once closing.
        """
        frame = _Frame(parts, stall, wait)
        with self._qcond:
            while True:
                if self.error is not None:
                    raise self.error
                if self.closing:
                    raise _Closing
                if inline and not self._queue and self.send_lock.acquire(blocking=False):
                    break
                inline = False
                if not self._queue or self._queued + frame.size <= QUEUE_BYTES:
                    break
                self._qcond.wait(_POLL_SLICE)  # the writer frees room or fails within stall
            if inline:  # frames queued from now on wait for send_lock: order is kept
                pass
            else:
                self._queue.append(frame)
                self._queued += frame.size
                if self._writer is None:
                    self._writer = threading.Thread(target=self._write_loop, daemon=True,
                                                    name=f"veil-tls-writer->{self.peer}")
                    self._writer.start()
                self._qcond.notify_all()
        if inline:
            try:
                for part in frame.parts:
                    self.write(part, stall)
            except BaseException as exc:
                with self._qcond:
                    self.error = exc  # later frames to this peer raise it too
                    self._qcond.notify_all()
                raise
            finally:
                self.send_lock.release()
            return
        if frame.done is not None:
            while not frame.done.wait(_POLL_SLICE):
                if self.closing:
                    raise _Closing
            if frame.error is not None:
                raise frame.error

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until every queued frame is written (or failed)."""
        end = time.monotonic() + timeout
        with self._qcond:
            while self._queue and self.error is None and not self.closing:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._qcond.wait(min(left, _POLL_SLICE))
        return not self._queue

    def _write_loop(self) -> None:
        while True:
            with self._qcond:
                while not self._queue and not self.closing:
                    self._qcond.wait(_POLL_SLICE)
                if not self._queue:
                    return  # closing with nothing left to write
                frame = self._queue[0]
            try:
                with self.send_lock:
                    for part in frame.parts:
                        self.write(part, frame.stall)
            except BaseException as exc:  # noqa: BLE001 - kept and raised to the senders
                with self._qcond:
                    self.error = exc
                    for f in self._queue:
                        f.error = exc
                        if f.done is not None:
                            f.done.set()
                    self._queue.clear()
                    self._queued = 0
                    self._qcond.notify_all()
                if self.on_error is not None and not isinstance(exc, _Closing):
                    self.on_error(exc)
                return
            with self._qcond:
                self._queue.popleft()
                self._queued -= frame.size
                if frame.done is not None:
                    frame.done.set()
                self._qcond.notify_all()

    def _wait(self, want_read: bool, deadline: float | None) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN if want_read else select.POLLOUT)
        left = _POLL_SLICE if deadline is None else min(_POLL_SLICE, deadline - time.monotonic())
        if left <= 0:
            raise _Stalled
        poller.poll(left * 1000)

    def write(self, data: memoryview, stall: float) -> None:
        """Write all of ``data``; ``_Stalled`` if no progress for ``stall`` seconds."""
        sent, total = 0, len(data)
        deadline = time.monotonic() + stall
        while sent < total:
            # The same slice must be retried after WANT_WRITE (OpenSSL's SSL_write contract).
            chunk = data[sent:sent + _CHUNK]
            while True:
                if self.closing:
                    raise _Closing
                with self.tls_lock:
                    try:
                        n = self.sock.send(chunk)
                        break
                    except ssl.SSLWantWriteError:
                        want_read = False
                    except ssl.SSLWantReadError:
                        want_read = True
                self._wait(want_read, deadline)
            sent += n
            deadline = time.monotonic() + stall

    def read_into(self, view: memoryview, deadline: float | None = None) -> None:
        """Fill ``view`` exactly; EOFError on a closed connection, _Closing when closing."""
        got, total = 0, len(view)
        while got < total:
            if self.closing:
                raise _Closing
            with self.tls_lock:
                try:
                    n = self.sock.recv_into(view[got:], total - got)
                except ssl.SSLWantReadError:
                    n, want_read = -1, True
                except ssl.SSLWantWriteError:
                    n, want_read = -1, False
            if n == 0:
                raise EOFError
            if n < 0:
                self._wait(want_read, deadline)
            else:
                got += n

    def close(self) -> None:
        """Tear the connection down (the reader and writer threads notice and stop)."""
        self.closing = True
        with self._qcond:
            self._qcond.notify_all()
        with self.tls_lock:
            try:
                self.sock.close()
            except OSError:
                pass


def _read_exact_blocking(sock: ssl.SSLSocket, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError
        got += k
    return bytes(buf)


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
        self._conns = {p: _Conn(p, s) for p, s in socks.items()}
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
        listener.settimeout(_POLL_SLICE)
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
                rejected.append(f"connection from {addr[0]}:{addr[1]}: {_describe(exc)}")
                raw.close()
                continue
            accepted[peer] = tls

    def _handshake_server(
        self, raw: socket.socket, expected: tuple[str, ...], accepted: dict[str, ssl.SSLSocket],
        deadline: float,
    ) -> tuple[str, ssl.SSLSocket]:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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
        head = _read_exact_blocking(tls, HEADER_SIZE)
        kind, tag_len, n, sess = parse_header(head, None, max_payload=4096)
        body = _read_exact_blocking(tls, tag_len + n)
        self._transcript.record(peer, _decode_tag(body[:tag_len]), body[tag_len:],
                                KIND_NAMES[kind])
        if kind != KIND_HELLO or sess != self._session or _decode_tag(body[:tag_len]) != peer:
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
            raise ProtocolError(f"TLS handshake with party {peer!r} failed: {_describe(exc)}",
                                hint) from exc
        except OSError as exc:
            raw.close()
            raise PartyUnavailable(peer, f"party {peer!r} dropped the TLS handshake: "
                                   f"{_describe(exc)}") from exc
        try:
            names = peer_party_names(tls.getpeercert())
            if peer not in names:
                raise ProtocolError(
                    f"the node at {host}:{port} presented a certificate for {sorted(names)}, "
                    f"not for party {peer!r}", "check the federation's party addresses",
                )
            tls.sendall(encode_frame(KIND_HELLO, self._session, self.me, b""))
            head = _read_exact_blocking(tls, HEADER_SIZE)
            kind, tag_len, n, sess = parse_header(head, None, max_payload=4096)
            body = _read_exact_blocking(tls, tag_len + n)
            self._transcript.record(peer, _decode_tag(body[:tag_len]), body[tag_len:],
                                    KIND_NAMES[kind])
            if kind == KIND_REJECT:
                reason = body[tag_len:].decode(errors="replace")
                raise ProtocolError(f"party {peer!r} refused the connection: {reason}", hint)
            if kind != KIND_HELLO or _decode_tag(body[:tag_len]) != peer:
                raise ProtocolError(f"unexpected reply from party {peer!r} during set-up")
            if sess != self._session:
                raise ProtocolError(f"party {peer!r} runs another session (session id mismatch)",
                                    "every party must run the same session; restart the query")
        except ssl.SSLError as exc:
            tls.close()
            raise ProtocolError(f"party {peer!r} refused our TLS certificate: {_describe(exc)}",
                                hint) from exc
        except (EOFError, OSError) as exc:
            tls.close()
            raise ProtocolError(f"party {peer!r} closed the connection during set-up "
                                f"({_describe(exc)})", hint) from exc
        except ProtocolError:
            tls.close()
            raise
        return tls

    # -------------------------------------------------------------------------- messaging
    def _check_peer(self, party: str) -> _Conn:
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
        except _Stalled:
            self._fail(to, PartyUnavailable(
                to, f"party {to!r} accepted no data for {self.timeout:g} s"))
            self._raise_for(to, tag)
        except (_Closing, OSError, ValueError) as exc:
            # The peer's goodbye (which may name the party that really failed) can still be
            # in our reader's hands: give it a moment to land before blaming the peer.
            with self._cond:
                self._cond.wait_for(lambda: to in self._errors, timeout=0.2)
            self._fail(to, PartyUnavailable(
                to, f"connection to party {to!r} lost while sending: {_describe(exc)}"))
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
        if isinstance(exc, _Stalled):
            self._fail(peer, PartyUnavailable(
                peer, f"party {peer!r} accepted no data for {self.timeout:g} s"))
            return
        # As in ``send``: the peer's goodbye may still be landing; it names the culprit.
        with self._cond:
            self._cond.wait_for(lambda: peer in self._errors, timeout=0.2)
        self._fail(peer, PartyUnavailable(
            peer, f"connection to party {peer!r} lost while sending: {_describe(exc)}"))

    def _read_loop(self, conn: _Conn) -> None:
        peer = conn.peer
        header = bytearray(HEADER_SIZE)
        try:
            while True:
                conn.read_into(memoryview(header))
                kind, tag_len, n, _ = parse_header(header, self._session,
                                                   max_payload=self.max_payload)
                raw_tag = bytearray(tag_len)
                conn.read_into(memoryview(raw_tag))
                tag = _decode_tag(raw_tag)
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
        except _Closing:
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
                    peer, f"connection to party {peer!r} lost: {_describe(exc)}"))

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
            except (_Stalled, _Closing, OSError, ValueError):
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


def queue_frame(conn: _Conn, head: bytes, payload: bytes | bytearray | memoryview,
                view: memoryview, stall: float) -> None:
    """Queue header ``head`` and ``payload`` (``view`` of it) as one frame on ``conn``.

    Small frames are joined into one write (a copy); an immutable ``bytes`` payload is
    referenced; a mutable one is copied when at most ``COPY_LIMIT`` bytes, so the caller
    may reuse its buffer at once, and otherwise written before this returns.
    """
    if len(view) <= _SMALL:
        conn.enqueue([head + view], stall, inline=True)
    elif isinstance(payload, bytes):
        conn.enqueue([head, view], stall)
    elif len(view) <= COPY_LIMIT:
        conn.enqueue([head, bytes(view)], stall)
    else:
        conn.enqueue([head, view], stall, wait=True)


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


def _describe(exc: BaseException) -> str:
    """A short human description of a socket/TLS exception."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    if isinstance(exc, EOFError):
        return "connection closed"
    return str(exc) or type(exc).__name__
