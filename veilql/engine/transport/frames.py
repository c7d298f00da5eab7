"""The frame codec of the network transport: headers, frames and party addresses.

Frames (all integers little-endian)::

    magic "VQL" | version u8 | kind u8 | reserved u8 = 0 | tag length u16 | payload length u64
    | session digest (16 bytes, BLAKE2b of the session id) | tag (UTF-8) | payload

A frame with a wrong session, magic, version or length raises ``ProtocolError``; readers
fail that peer (``tls.TlsTransport``, ``mux``).
"""

from __future__ import annotations

import hashlib
import struct

from veilql.engine.transport.base import BYE, DATA, HELLO, REJECT
from veilql.errors import ConfigError, ProtocolError

MAGIC = b"VQL"
VERSION = 1
KIND_DATA, KIND_HELLO, KIND_BYE, KIND_REJECT = 0, 1, 2, 3
_KINDS = (KIND_DATA, KIND_HELLO, KIND_BYE, KIND_REJECT)
KIND_NAMES = {KIND_DATA: DATA, KIND_HELLO: HELLO, KIND_BYE: BYE, KIND_REJECT: REJECT}
_HEADER = struct.Struct("<3sBBBHQ16s")
HEADER_SIZE = _HEADER.size  # 32 bytes
DEFAULT_MAX_PAYLOAD = 1 << 33  # 8 GiB: refuses absurd lengths from a corrupt header


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
    return kind, decode_tag(data[HEADER_SIZE:HEADER_SIZE + tag_len]), data[HEADER_SIZE + tag_len:]


def decode_tag(raw: bytes | bytearray | memoryview) -> str:
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

