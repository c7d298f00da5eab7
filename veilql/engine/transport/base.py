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
"""

from __future__ import annotations

import os
import struct
import threading
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from veilql.errors import ProtocolError

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


class TranscriptWriter:
    """Appends every received message, as received, to ``DIR/<party>.bin``.

    Enabled by ``VEIL_TRANSCRIPT_DIR``. Each record is: u32 sender length, sender,
    u32 tag length, tag, u64 payload length, payload (so the file can be audited).
    """

    def __init__(self, party: str, directory: str | os.PathLike[str] | None = None) -> None:
        d = directory if directory is not None else os.environ.get("VEIL_TRANSCRIPT_DIR")
        self.path: Path | None = None
        self._lock = threading.Lock()
        if d:
            Path(d).mkdir(parents=True, exist_ok=True)
            self.path = Path(d) / f"{party}.bin"

    def record(self, frm: str, tag: str, payload: bytes) -> None:
        """Append one received message (no-op when transcripts are off)."""
        if self.path is None:
            return
        f, t = frm.encode(), tag.encode()
        rec = struct.pack("<I", len(f)) + f + struct.pack("<I", len(t)) + t
        rec += struct.pack("<Q", len(payload))
        with self._lock, open(self.path, "ab") as fh:
            fh.write(rec)
            fh.write(payload)


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
