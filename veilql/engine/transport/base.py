"""The transport interface every party endpoint implements.

A party's code talks to the others only through its own ``Transport``: ``send`` a payload
to a named party under a round tag, ``recv`` the payload a named party sent under a tag.
Messages are framed with the session id and the tag, so a late message of another round
or session can never be taken for the one awaited; messages that arrive early are kept
until asked for. Every ``recv`` has a timeout; a silent or dead party raises
``PartyUnavailable`` naming it.

Arrays travel as a tiny header (dtype, shape as 32-bit lengths) plus their raw bytes
(``encode_array``). Lengths are 32-bit so that no header ever holds a 64-bit small
integer: audits scan transcripts for parties' identifiers as 64-bit words.

**Timeouts are about silence, not work.** A node busy with long local work or a large
secure step keeps its peers informed: ``Heartbeat`` sends an empty frame under the reserved
tag ``HEARTBEAT_TAG`` (``"!alive"``) to every peer of the session every third of the timeout
while the node works. A receiver counts any frame from a sender, heartbeats included, as a
sign of life that restarts the silence clock for that sender (``mailbox.wait_left``), and
never hands a heartbeat to a ``recv``. So a healthy query never trips the timeout, while a
dead or stopped party (a SIGSTOPped process sends nothing) is still named within it. A
party that sends only heartbeats is given up on after ``KEEPALIVE_CAP`` times the timeout.
Heartbeats are recorded in transcripts like every delivered frame (as ``!data/!alive``).
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import struct
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from veilql.errors import ProtocolError

try:  # advisory locks across processes (POSIX); in-process locks alone elsewhere
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<u8"),
    1: np.dtype("<i8"),
    2: np.dtype("u1"),
    3: np.dtype("<f8"),
    4: np.dtype("<u4"),
    5: np.dtype("<i4"),
    6: np.dtype("bool"),
}
_CODES = {dt: code for code, dt in _DTYPES.items()}


def encode_array(arr: np.ndarray) -> bytes:
    """Serialise an array as header (dtype code, ndim, shape) followed by its bytes."""
    a = np.ascontiguousarray(arr)
    dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
    code = _CODES.get(np.dtype(dt))
    if code is None:
        raise ProtocolError(f"cannot send arrays of dtype {a.dtype}")
    if any(d >= 1 << 32 for d in a.shape):
        raise ProtocolError(f"array of shape {a.shape} is too large for one message")
    header = struct.pack(f"<BB{a.ndim}I", code, a.ndim, *a.shape)
    return header + a.astype(dt, copy=False).tobytes()


def decode_array(data: bytes | memoryview) -> np.ndarray:
    """Inverse of ``encode_array``; raises ProtocolError on a malformed payload."""
    try:
        code, ndim = struct.unpack_from("<BB", data, 0)
        shape = struct.unpack_from(f"<{ndim}I", data, 2)
        dt = _DTYPES[code]
        off = 2 + 4 * ndim
        n = int(np.prod(shape, dtype=np.int64)) if ndim else 1
        if len(data) - off != n * dt.itemsize:
            raise ValueError("length mismatch")
        return np.frombuffer(data, dtype=dt, count=n, offset=off).reshape(shape)
    except (struct.error, KeyError, ValueError) as exc:
        raise ProtocolError(f"malformed array message: {exc}") from exc


class Transport(ABC):
    """One party's endpoint: named peers, tagged messages, timeouts on every receive."""

    me: str
    session_id: str
    timeout: float

    @abstractmethod
    def send(self, to: str, tag: str, payload: bytes) -> None:
        """Send ``payload`` to party ``to`` under round tag ``tag``."""

    @abstractmethod
    def recv(self, frm: str, tag: str, timeout: float | None = None) -> bytes:
        """The payload ``frm`` sent under ``tag``; PartyUnavailable after the timeout."""

    def close(self) -> None:  # noqa: B027 - optional for implementations
        """Release connections; further use raises."""

    # Conveniences shared by all implementations.
    def send_array(self, to: str, tag: str, arr: np.ndarray) -> None:
        """Send a numpy array (see ``encode_array``)."""
        self.send(to, tag, encode_array(arr))

    def recv_array(self, frm: str, tag: str, timeout: float | None = None) -> np.ndarray:
        """Receive a numpy array sent with ``send_array``."""
        return decode_array(self.recv(frm, tag, timeout))


HEARTBEAT_TAG = "!alive"  # reserved tag of a heartbeat frame (carries nothing)
HEARTBEAT_SHARE = 3  # a working node sends a heartbeat every timeout / HEARTBEAT_SHARE seconds
KEEPALIVE_CAP = 20  # a wait ends after this many timeouts even if the sender keeps beating


class Heartbeat:
    """While inside, tell ``peers`` every ``interval`` seconds that this node is working.

    A daemon thread sends an empty ``HEARTBEAT_TAG`` frame to each peer over ``transport``;
    a peer that cannot be reached is skipped (the node's own protocol notices and reports
    it). The thread starts only when the first beat is due, ``interval`` after entering
    (``_Starter``, one thread per process, starts it and never sends), so a query that
    ends sooner (a one-party query of a few milliseconds at a timeout of 30 s) neither
    starts nor stops a thread, while a long step beats on the same schedule as before.
    Leaving the block stops the beats at once.

    >>> import time
    >>> from veilql.engine.transport.inprocess import InProcessNetwork
    >>> net = InProcessNetwork(["a", "b"], timeout=0.2)
    >>> with Heartbeat(net.endpoint("a"), ["b"], 0.05):
    ...     time.sleep(0.5)  # long work: 2.5 timeouts of silence but for the heartbeats
    ...     net.endpoint("a").send("b", "result", b"42")
    >>> net.endpoint("b").recv("a", "result")  # heartbeats are never handed to recv
    b'42'
    """

    def __init__(self, transport: Transport, peers: Iterable[str], interval: float) -> None:
        self.transport = transport
        self.peers = tuple(p for p in dict.fromkeys(peers) if p != transport.me)
        self.interval = interval
        self._stop = threading.Event()
        self._lock = threading.Lock()  # orders a late start against leaving the block
        self._thread: threading.Thread | None = None
        self._entry: list[Any] | None = None

    def __enter__(self) -> Heartbeat:
        if self.peers and self.interval > 0:
            self._entry = _STARTER.add(self, time.monotonic() + self.interval)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        with self._lock:
            self._stop.set()
            thread = self._thread
        if self._entry is not None:
            _STARTER.cancel(self._entry)
        if thread is not None:
            thread.join(self.interval)

    def _start(self) -> None:
        """Start the beating thread (the first beat is due now), unless already left."""
        with self._lock:
            if self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._beat, daemon=True,
                                            name=f"veil-heartbeat-{self.transport.me}")
            self._thread.start()

    def _beat(self) -> None:
        while True:
            for peer in self.peers:
                if self._stop.is_set():
                    return
                try:
                    self.transport.send(peer, HEARTBEAT_TAG, b"")
                except Exception:  # noqa: BLE001 - a lost peer is reported by the protocol
                    continue
            if self._stop.wait(self.interval):
                return


class _Starter:
    """One daemon thread per process that starts each ``Heartbeat``'s thread when its
    first beat is due. It never sends, so a peer that blocks a send (a full socket to a
    stopped process) delays only its own query's beats, as before."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: list[list[Any]] = []  # a heap of [due, sequence, heartbeat or None]
        self._seq = itertools.count()
        self._wake = math.inf  # when the thread wakes next; -inf while it works
        self._thread: threading.Thread | None = None

    def add(self, beat: Heartbeat, due: float) -> list[Any]:
        """Start ``beat``'s thread at ``due`` (monotonic seconds); the entry to cancel."""
        entry = [due, next(self._seq), beat]
        with self._cond:
            heapq.heappush(self._due, entry)
            if self._thread is None or not self._thread.is_alive():  # first use, or a fork
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="veil-heartbeat-starter")
                self._thread.start()
            elif due < self._wake:
                self._cond.notify()
        return entry

    def cancel(self, entry: list[Any]) -> None:
        """Forget ``entry``'s heartbeat (its small list leaves the heap when due)."""
        with self._cond:
            entry[2] = None

    def _run(self) -> None:
        while True:
            start: list[Heartbeat] = []
            with self._cond:
                now = time.monotonic()
                while self._due and (self._due[0][2] is None or self._due[0][0] <= now):
                    entry = heapq.heappop(self._due)
                    if entry[2] is not None:
                        start.append(entry[2])
                        entry[2] = None
                if not start:
                    self._wake = self._due[0][0] if self._due else math.inf
                    self._cond.wait(self._wake - now if self._due else None)
                    self._wake = -math.inf
                    continue
            for beat in start:
                try:
                    beat._start()
                except RuntimeError:  # no thread to be had: its peers will name this node
                    continue


_STARTER = _Starter()


# Kinds of delivered frames other than data, as recorded in transcripts (see TranscriptWriter).
DATA, HELLO, BYE, REJECT, ERROR = "data", "hello", "bye", "reject", "error"
CONTROL_PREFIX = "!"  # recorded tags of control frames: "!<kind>/<tag on the wire>"

_PATH_LOCKS: dict[str, threading.Lock] = {}
_PATH_LOCKS_GUARD = threading.Lock()


def _path_lock(path: Path) -> threading.Lock:
    """One lock per transcript file in this process, shared by every writer of that file."""
    key = os.path.abspath(path)
    with _PATH_LOCKS_GUARD:
        return _PATH_LOCKS.setdefault(key, threading.Lock())


def transcript_tag(tag: str, kind: str = DATA) -> str:
    """The tag a delivered frame is recorded under.

    A data frame keeps its round tag; a control frame (hello, bye, reject, error) and a data
    frame whose own tag starts with ``!`` are recorded as ``!<kind>/<tag>``, so the two can
    never be confused (``split_transcript_tag`` inverts it).

    >>> transcript_tag("mul/3"), transcript_tag("bank", BYE), transcript_tag("!x")
    ('mul/3', '!bye/bank', '!data/!x')
    """
    if kind == DATA and not tag.startswith(CONTROL_PREFIX):
        return tag
    return f"{CONTROL_PREFIX}{kind}/{tag}"


def split_transcript_tag(recorded: str) -> tuple[str, str]:
    """``(kind, tag on the wire)`` of a recorded tag; inverse of ``transcript_tag``.

    >>> split_transcript_tag("mul/3"), split_transcript_tag("!bye/bank")
    (('data', 'mul/3'), ('bye', 'bank'))
    """
    if not recorded.startswith(CONTROL_PREFIX):
        return DATA, recorded
    kind, _, tag = recorded[1:].partition("/")
    return kind, tag


class TranscriptWriter:
    """Appends every frame delivered to one endpoint to ``DIR/<party>.bin``.

    Enabled by ``VEIL_TRANSCRIPT_DIR`` (read when the writer is made) or ``directory``.
    Every transport calls ``record`` when a frame is handed to the endpoint, before anyone
    reads it: data frames, set-up frames (HELLO, REJECT), goodbyes and aborts (BYE, whose
    payload says why), failures announced in-process (``error``), frames of sessions that
    ended or never started, frames that are never read. Each record is: u32 sender length,
    sender, u32 tag length, tag (``transcript_tag``), u64 payload length, payload (all
    little-endian), so the file can be audited with ``read_transcript``.

    Appends are atomic per record: one lock per file in the process and an exclusive
    ``flock`` across processes (several sessions or clients may share a file), and one
    ``writev`` of the record on an ``O_APPEND`` descriptor.
    """

    def __init__(self, party: str, directory: str | os.PathLike[str] | None = None) -> None:
        d = directory if directory is not None else os.environ.get("VEIL_TRANSCRIPT_DIR")
        self.path: Path | None = None
        self._lock = threading.Lock()
        if d:
            Path(d).mkdir(parents=True, exist_ok=True)
            self.path = Path(d) / f"{party}.bin"
            self._lock = _path_lock(self.path)

    @property
    def enabled(self) -> bool:
        """True when records are written."""
        return self.path is not None

    def record(self, frm: str, tag: str, payload: bytes | bytearray | memoryview,
               kind: str = DATA) -> None:
        """Append one frame delivered from ``frm`` (no-op when transcripts are off)."""
        if self.path is None:
            return
        view = memoryview(payload).cast("B")
        f, t = frm.encode(), transcript_tag(tag, kind).encode()
        head = b"".join((struct.pack("<I", len(f)), f, struct.pack("<I", len(t)), t,
                         struct.pack("<Q", len(view))))
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        with self._lock:
            try:
                fd = os.open(self.path, flags, 0o600)
            except FileNotFoundError:  # the folder was removed under us: make it again
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, flags, 0o600)
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                _write_all(fd, [memoryview(head), view])
            finally:
                os.close(fd)  # also releases the flock


def _write_all(fd: int, parts: list[memoryview]) -> None:
    """Write ``parts`` in order, with as few system calls as the OS allows."""
    parts = [p for p in parts if len(p)]
    while parts:
        if hasattr(os, "writev"):
            n = os.writev(fd, parts)
        else:  # pragma: no cover - Windows
            n = os.write(fd, parts[0])
        while parts and n >= len(parts[0]):
            n -= len(parts[0])
            parts.pop(0)
        if parts and n:
            parts[0] = parts[0][n:]


def read_transcript(path: str | os.PathLike[str]) -> list[tuple[str, str, bytes]]:
    """Parse a transcript file into (sender, tag, payload) records."""
    data = Path(path).read_bytes()
    out: list[tuple[str, str, bytes]] = []
    i = 0
    while i < len(data):
        (n,) = struct.unpack_from("<I", data, i)
        i += 4
        frm = data[i : i + n].decode()
        i += n
        (n,) = struct.unpack_from("<I", data, i)
        i += 4
        tag = data[i : i + n].decode()
        i += n
        (n,) = struct.unpack_from("<Q", data, i)
        i += 8
        out.append((frm, tag, data[i : i + n]))
        i += n
    return out
