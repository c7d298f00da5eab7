"""One peer's TLS connection: a non-blocking socket, a writer thread, framed sends.

Why a lock around every TLS call: OpenSSL does not allow one ``SSL`` object to be used from two
threads at once, and a full-duplex connection has a reader thread and a writer thread. The
socket is therefore non-blocking, every ``SSL_read``/``SSL_write`` runs under a per-connection
lock, and waiting for the socket (``poll``) happens outside the lock, so the two directions
never block each other. Large payloads go out as ``memoryview`` slices and come in by
``recv_into`` a preallocated buffer: no quadratic copies.

Sends do not wait for the wire. Each connection has one writer thread fed by a queue
(``Conn.enqueue``), so a party that sends to both peers has both frames on their way at
once, and overlaps its next local work with the encryption and the transfer (the ``ssl``
module releases the GIL inside ``SSL_write``). ``send`` returns once the frame is queued:
an immutable ``bytes`` payload is referenced, a mutable one (a view of an array the caller
may reuse) is copied first when it is at most ``COPY_LIMIT`` bytes and otherwise waited
for until written, as before. At most ``QUEUE_BYTES`` wait per connection (a sender
beyond that waits for room), and frames to one peer keep their order. The writer is the
only thread that writes on the connection besides direct ``Conn.write`` callers, and
it holds ``send_lock`` per frame, so frames never interleave. A writer that fails (a
peer that accepts no data for the timeout, a lost connection) records the error: it fails
the peer at once for every ``recv`` waiting on it and is raised, naming the peer, by the
next ``send`` to it.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from veilql.errors import PartyUnavailable

_SMALL = 64 * 1024  # payloads up to this size go out in one write with their header
_CHUNK = 256 * 1024  # bytes per SSL_write on large payloads
POLL_SLICE = 0.2  # seconds; loops re-check closing and deadlines at least this often
QUEUE_BYTES = 64 << 20  # bytes one connection may hold queued for its writer thread
COPY_LIMIT = 32 << 20  # mutable payloads up to this size are copied and sent in the background
# Socket buffers of a link between parties: at least a bandwidth-delay product (1 Gbit/s x
# 20 ms = 2.5 MB). Left to the kernel's autotuning, a direction that stayed quiet while the
# other carried the shares kept a small receive window and later crawled at a third of a
# 100 Mbit/s, 20 ms link (bench/wan.py's timeline); the kernel caps it at net.core.*mem_max.
SOCKET_BUFFER = 4 << 20


def tune(raw: socket.socket) -> None:
    """No Nagle delay on small frames; socket buffers of ``SOCKET_BUFFER`` bytes where the
    kernel allows that much (a fixed buffer below it would cap the window lower than the
    kernel's own autotuning may grow it, so then the buffers are left to the kernel)."""
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt, limit in ((socket.SO_RCVBUF, "rmem_max"), (socket.SO_SNDBUF, "wmem_max")):
        if _kernel_limit(limit) >= SOCKET_BUFFER:
            try:
                raw.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
            except OSError:
                pass  # the kernel's autotuning then


def _kernel_limit(name: str) -> int:
    """Linux's ``net.core.<name>`` in bytes (0 where it cannot be read)."""
    try:
        with open(f"/proc/sys/net/core/{name}") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 0


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
            last = describe(exc)
            time.sleep(min(delay, max(0.0, left)))
            delay = min(delay * 2, 0.5)
    tune(raw)
    return raw


class Stalled(Exception):
    """A wait on the socket passed its deadline."""


class Closing(Exception):
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


class Conn:
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
        stopped, ``Closing`` once closing.
        """
        frame = _Frame(parts, stall, wait)
        with self._qcond:
            while True:
                if self.error is not None:
                    raise self.error
                if self.closing:
                    raise Closing
                if inline and not self._queue and self.send_lock.acquire(blocking=False):
                    break
                inline = False
                if not self._queue or self._queued + frame.size <= QUEUE_BYTES:
                    break
                self._qcond.wait(POLL_SLICE)  # the writer frees room or fails within stall
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
            while not frame.done.wait(POLL_SLICE):
                if self.closing:
                    raise Closing
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
                self._qcond.wait(min(left, POLL_SLICE))
        return not self._queue

    def _write_loop(self) -> None:
        while True:
            with self._qcond:
                while not self._queue and not self.closing:
                    self._qcond.wait(POLL_SLICE)
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
                if self.on_error is not None and not isinstance(exc, Closing):
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
        left = POLL_SLICE if deadline is None else min(POLL_SLICE, deadline - time.monotonic())
        if left <= 0:
            raise Stalled
        poller.poll(left * 1000)

    def write(self, data: memoryview, stall: float) -> None:
        """Write all of ``data``; ``Stalled`` if no progress for ``stall`` seconds."""
        sent, total = 0, len(data)
        deadline = time.monotonic() + stall
        while sent < total:
            # The same slice must be retried after WANT_WRITE (OpenSSL's SSL_write contract).
            chunk = data[sent:sent + _CHUNK]
            while True:
                if self.closing:
                    raise Closing
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
        """Fill ``view`` exactly; EOFError on a closed connection, Closing when closing."""
        got, total = 0, len(view)
        while got < total:
            if self.closing:
                raise Closing
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


def read_exact_blocking(sock: ssl.SSLSocket, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError
        got += k
    return bytes(buf)


def queue_frame(conn: Conn, head: bytes, payload: bytes | bytearray | memoryview,
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



def describe(exc: BaseException) -> str:
    """A short human description of a socket/TLS exception."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    if isinstance(exc, EOFError):
        return "connection closed"
    return str(exc) or type(exc).__name__
