"""Mutual-TLS transport: framing, set-up checks, buffering, failures, transcripts, big arrays.

Most tests run the parties as threads of this process (real TLS sockets on loopback, fast);
those marked ``network`` start real party processes through the launch harness.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veilql.engine.transport.base import encode_array, read_transcript
from veilql.engine.transport.certs import (
    PartyCredentials,
    load_ca,
    make_ca,
    make_cert,
    make_federation_certs,
    peer_party_names,
)
from veilql.engine.transport.frames import (
    HEADER_SIZE,
    KIND_DATA,
    decode_frame,
    encode_frame,
    encode_header,
    parse_address,
    parse_header,
    session_digest,
)
from veilql.engine.transport.launch import (
    run_parties_tls,
    run_parties_tls_detailed,
)
from veilql.engine.transport.tls import (
    TlsTransport,
)
from veilql.errors import ConfigError, PartyUnavailable, ProtocolError

PARTIES = ("a", "b", "c")


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PartyCredentials]:
    return make_federation_certs(tmp_path_factory.mktemp("certs"), PARTIES)


def connect(
    creds: dict[str, PartyCredentials], parties: tuple[str, ...] = PARTIES, *,
    sessions: dict[str, str] | None = None, delays: dict[str, float] | None = None,
    timeout: float = 5.0, connect_timeout: float = 3.0, transcript_dir: str | None = None,
) -> dict[str, Any]:
    """Start one TlsTransport per party in threads; each entry is a transport or the error."""
    listeners = {p: socket.create_server(("127.0.0.1", 0)) for p in parties}
    addrs = {p: ("127.0.0.1", s.getsockname()[1]) for p, s in listeners.items()}
    out: dict[str, Any] = {}

    def start(p: str) -> None:
        time.sleep((delays or {}).get(p, 0.0))
        try:
            out[p] = TlsTransport(
                p, addrs, creds[p], session_id=(sessions or {}).get(p, "sess-1"),
                timeout=timeout, connect_timeout=connect_timeout, listener=listeners[p],
                transcript_dir=transcript_dir, linger=0.5,
            )
        except Exception as exc:  # the test inspects it
            out[p] = exc

    threads = [threading.Thread(target=start, args=(p,)) for p in parties]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def close_all(ts: dict[str, Any]) -> None:
    threads = [threading.Thread(target=t.close) for t in ts.values()
               if isinstance(t, TlsTransport)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.fixture
def trio(creds: dict[str, PartyCredentials]):
    ts = connect(creds)
    assert all(isinstance(t, TlsTransport) for t in ts.values()), ts
    yield ts
    close_all(ts)


# ------------------------------------------------------------------------------- framing
@settings(max_examples=50, deadline=None)
@given(tag=st.text(max_size=40), payload=st.binary(max_size=300), kind=st.sampled_from([0, 1]))
def test_frame_round_trip(tag: str, payload: bytes, kind: int) -> None:
    s = session_digest("sess")
    frame = encode_frame(kind, s, tag, payload)
    assert len(frame) == HEADER_SIZE + len(tag.encode()) + len(payload)
    assert decode_frame(frame, s) == (kind, tag, payload)


def test_header_layout_is_fixed() -> None:
    s = session_digest("x")
    h = encode_header(KIND_DATA, s, b"t", 7)
    assert h[:3] == b"VQL" and h[3] == 1 and h[4] == KIND_DATA
    assert struct.unpack_from("<HQ", h, 6) == (1, 7)
    assert h[16:32] == s and h[32:] == b"t"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda h: b"XQL" + h[3:], "not a VeilQL frame"),
        (lambda h: h[:3] + b"\x09" + h[4:], "unsupported frame version 9"),
        (lambda h: h[:4] + b"\x07" + h[5:], "malformed frame header"),
        (lambda h: h[:5] + b"\x01" + h[6:], "malformed frame header"),
        (lambda h: h[:16] + session_digest("other") + h[32:], "session id mismatch"),
        (lambda h: h[:8] + struct.pack("<Q", 1 << 40) + h[16:], "exceeds the limit"),
        (lambda h: h[:20], "truncated frame header"),
    ],
)
def test_bad_headers_rejected(mutate: Any, message: str) -> None:
    s = session_digest("sess")
    header = encode_header(KIND_DATA, s, b"", 5)
    with pytest.raises(ProtocolError, match=message):
        parse_header(mutate(header), s, max_payload=1 << 30)


def test_frame_length_and_tag_checked() -> None:
    s = session_digest("sess")
    with pytest.raises(ProtocolError, match="length mismatch"):
        decode_frame(encode_frame(KIND_DATA, s, "t", b"abc")[:-1], s)
    with pytest.raises(ProtocolError, match="UTF-8"):
        decode_frame(encode_header(KIND_DATA, s, b"\xff", 0), s)
    with pytest.raises(ProtocolError, match="too long"):
        encode_header(KIND_DATA, s, b"x" * 70000, 0)


def test_parse_address() -> None:
    assert parse_address("node.example:443") == ("node.example", 443)
    assert parse_address("[::1]:7000") == ("::1", 7000)
    with pytest.raises(ConfigError, match="invalid party address 'nohost'") as info:
        parse_address("nohost")
    assert info.value.hint == "write it as host:port"


def test_certificate_names(creds: dict[str, PartyCredentials], tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    cert, key = make_cert(ca, "under_score", tmp_path)
    from cryptography import x509

    c = x509.load_pem_x509_certificate(cert.read_bytes())
    uris = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [
        "veilql:party:under_score"
    ]
    assert key.stat().st_mode & 0o077 == 0  # private key readable by its owner only
    # A certificate whose SANs disagree with its CN claims no name.
    assert peer_party_names({"subject": ((("commonName", "bank"),),),
                             "subjectAltName": (("DNS", "insurer"),)}) == set()


# ------------------------------------------------------------------------------- messaging
def test_send_recv_and_out_of_order_tags(trio: dict[str, TlsTransport]) -> None:
    a, b, c = trio["a"], trio["b"], trio["c"]
    a.send("b", "r2", b"second")
    a.send("b", "r1", b"first")
    c.send("b", "r1", b"from c")
    a.send("b", "r3", b"x1")
    a.send("b", "r3", b"x2")
    assert b.recv("a", "r1") == b"first"
    assert b.recv("c", "r1") == b"from c"
    assert b.recv("a", "r2") == b"second"
    assert [b.recv("a", "r3"), b.recv("a", "r3")] == [b"x1", b"x2"]  # FIFO per (sender, tag)
    b.send("a", "back", bytearray(b"ok"))
    assert a.recv("b", "back") == b"ok"
    assert a.bytes_sent == {"b": 6 + 5 + 2 + 2, "c": 0}


def test_unknown_peer_and_closed_transport(trio: dict[str, TlsTransport]) -> None:
    with pytest.raises(ProtocolError, match="no peer named 'z'"):
        trio["a"].send("z", "t", b"")
    trio["a"].close()
    with pytest.raises(ProtocolError, match="closed"):
        trio["a"].send("b", "t", b"")


def test_connect_in_any_order(creds: dict[str, PartyCredentials]) -> None:
    ts = connect(creds, delays={"c": 0.0, "b": 0.15, "a": 0.3})
    try:
        assert all(isinstance(t, TlsTransport) for t in ts.values()), ts
        ts["c"].send("a", "t", b"hi")
        assert ts["a"].recv("c", "t") == b"hi"
    finally:
        close_all(ts)


def test_recv_times_out_naming_the_party(trio: dict[str, TlsTransport]) -> None:
    t0 = time.monotonic()
    with pytest.raises(PartyUnavailable, match="'c' sent nothing for 0.3 s") as info:
        trio["a"].recv("c", "never", timeout=0.3)
    assert info.value.party == "c"
    assert 0.3 <= time.monotonic() - t0 < 1.0


def test_closed_peer_fails_recv_at_once(trio: dict[str, TlsTransport]) -> None:
    trio["c"].send("a", "last", b"bye")
    threading.Thread(target=trio["c"].close).start()
    assert trio["a"].recv("c", "last") == b"bye"  # what was sent before closing still arrives
    t0 = time.monotonic()
    with pytest.raises(PartyUnavailable, match="'c' closed") as info:
        trio["a"].recv("c", "more", timeout=5.0)
    assert info.value.party == "c"
    assert time.monotonic() - t0 < 1.0
    with pytest.raises(PartyUnavailable):
        trio["a"].send("c", "x", b"")


def test_abort_passes_the_culprit_on(trio: dict[str, TlsTransport]) -> None:
    a, b, c = trio["a"], trio["b"], trio["c"]
    threading.Thread(target=c.close).start()
    with pytest.raises(PartyUnavailable) as info:
        b.recv("c", "r1")
    threading.Thread(target=b.abort, args=(info.value,)).start()
    # a waited on b, but the party that really failed is c.
    with pytest.raises(PartyUnavailable, match="party 'b' stopped because party 'c' closed"
                       ) as info:
        a.recv("b", "r2", timeout=5.0)
    assert info.value.party == "c"


def test_abort_on_own_error_names_the_aborting_party(trio: dict[str, TlsTransport]) -> None:
    with pytest.raises(ValueError):
        with trio["c"]:
            raise ValueError("boom")
    with pytest.raises(PartyUnavailable, match="'c' stopped the session: ValueError: boom"
                       ) as info:
        trio["a"].recv("c", "r1", timeout=5.0)
    assert info.value.party == "c"


def test_reset_connection_marks_peer_dead(trio: dict[str, TlsTransport]) -> None:
    # Simulate a crash: the socket vanishes without a goodbye frame.
    conn = trio["b"]._conns["a"]
    conn.closing = True
    conn.sock.shutdown(socket.SHUT_RDWR)
    t0 = time.monotonic()
    with pytest.raises(PartyUnavailable, match="'b'") as info:
        trio["a"].recv("b", "t", timeout=5.0)
    assert info.value.party == "b" and time.monotonic() - t0 < 1.0


@pytest.mark.parametrize(
    "frame, message",
    [
        (encode_frame(KIND_DATA, session_digest("other"), "t", b"x"), "session id mismatch"),
        (b"GET / HTTP/1.1\r\n" * 2, "not a VeilQL frame"),
    ],
)
def test_bad_frame_fails_only_that_peer(
    trio: dict[str, TlsTransport], frame: bytes, message: str
) -> None:
    a, b, c = trio["a"], trio["b"], trio["c"]
    with a._conns["b"].send_lock:
        a._conns["b"].write(memoryview(frame), 1.0)
    with pytest.raises(ProtocolError, match=message) as info:
        b.recv("a", "t", timeout=5.0)
    assert not isinstance(info.value, PartyUnavailable)
    assert "party 'a' sent a bad frame" in info.value.message
    c.send("b", "fine", b"still working")  # the node itself keeps running
    assert b.recv("c", "fine") == b"still working"


def test_send_to_a_peer_that_stops_reading_times_out(trio: dict[str, TlsTransport]) -> None:
    """The send returns once queued; the writer's stall fails the peer within the timeout:
    a wait on it raises naming it, and so does the next send to it."""
    a = trio["a"]
    a.timeout = 0.5
    stuck = trio["b"]._conns["a"].tls_lock
    stuck.acquire()  # b's reader can no longer read from a: a's socket buffers fill up
    try:
        t0 = time.monotonic()
        a.send("b", "flood", bytes(256 * 2**20))
        assert time.monotonic() - t0 < 0.5  # queued, not written
        with pytest.raises(PartyUnavailable, match="'b' accepted no data for 0.5 s") as info:
            a.recv("b", "never", timeout=5.0)
        assert info.value.party == "b" and time.monotonic() - t0 < 5.0
        with pytest.raises(PartyUnavailable, match="'b' accepted no data") as info:
            a.send("b", "again", b"x")
        assert info.value.party == "b"
    finally:
        stuck.release()
    a.send("c", "t", b"c is fine")
    assert trio["c"].recv("a", "t") == b"c is fine"


def test_sends_to_both_peers_do_not_wait_for_each_other(trio: dict[str, TlsTransport]) -> None:
    """A peer that is slow to read holds up only the frames to it: the frame to the other
    peer leaves at once, and the slow one gets all of its bytes, in order, later."""
    a, b, c = trio["a"], trio["b"], trio["c"]
    big = np.random.default_rng(1).integers(0, 256, 48 * 2**20, dtype=np.uint8).tobytes()
    stuck = b._conns["a"].tls_lock
    stuck.acquire()  # b reads nothing from a for now
    try:
        t0 = time.monotonic()
        a.send("b", "big", big)
        a.send("b", "after", b"second")
        a.send("c", "small", b"to c")
        assert c.recv("a", "small", timeout=2.0) == b"to c"
        assert time.monotonic() - t0 < 1.0
    finally:
        stuck.release()
    assert b.recv("a", "big") == big and b.recv("a", "after") == b"second"


def test_a_mutable_payload_may_be_reused_once_send_returns(
        trio: dict[str, TlsTransport]) -> None:
    a, b = trio["a"], trio["b"]
    arr = np.arange(2**20, dtype=np.uint64)  # 8 MiB: copied, then sent in the background
    a.send("b", "arr", memoryview(arr).cast("B"))
    arr[:] = 0  # the caller reuses its buffer at once
    got = np.frombuffer(b.recv("a", "arr"), dtype=np.uint64)
    assert (got == np.arange(2**20, dtype=np.uint64)).all()


def test_for_federation(creds: dict[str, PartyCredentials], tmp_path: Path) -> None:
    from veilql.policies.model import Federation, Party

    ports = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    addrs = [f"127.0.0.1:{s.getsockname()[1]}" for s in ports]
    for s in ports:
        s.close()
    fed = Federation("f", tmp_path / "federation.toml",
                     (Party("a", addrs[0], "csv:x"), Party("b", addrs[1], "csv:y")), timeout=7.0)
    out: dict[str, Any] = {}

    def start(p: str) -> None:
        out[p] = TlsTransport.for_federation(fed, p, creds[p], session_id="s",
                                             connect_timeout=3.0, linger=0.2)

    ths = [threading.Thread(target=start, args=(p,)) for p in "ab"]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    try:
        assert out["a"].timeout == 7.0 and out["b"].peers == ("a",)
        out["b"].send("a", "t", b"via federation")
        assert out["a"].recv("b", "t") == b"via federation"
    finally:
        close_all(out)
    local = Federation("f", tmp_path / "federation.toml",
                       (Party("a", "local", "csv:x"), Party("b", addrs[1], "csv:y")))
    with pytest.raises(ConfigError, match="address 'local'"):
        TlsTransport.for_federation(local, "b", creds["b"], session_id="s")


def test_large_arrays(trio: dict[str, TlsTransport]) -> None:
    rng = np.random.default_rng(7)
    big = rng.integers(0, 2**64, size=8_000_000, dtype=np.uint64)  # 64 MB
    both = [big, big[::-1].copy()]
    out: dict[str, np.ndarray] = {}

    def sender(src: str, dst: str, arr: np.ndarray) -> None:
        trio[src].send_array(dst, "big", arr)

    # Full duplex: a and b send to each other at once while c sends a small one.
    ths = [threading.Thread(target=sender, args=("a", "b", both[0])),
           threading.Thread(target=sender, args=("b", "a", both[1])),
           threading.Thread(target=sender, args=("c", "a", np.arange(5, dtype=np.int64)))]
    for t in ths:
        t.start()
    out["b"] = trio["b"].recv_array("a", "big")
    out["a"] = trio["a"].recv_array("b", "big")
    small = trio["a"].recv_array("c", "big")
    for t in ths:
        t.join()
    assert np.array_equal(out["b"], both[0]) and np.array_equal(out["a"], both[1])
    assert small.tolist() == [0, 1, 2, 3, 4]
    header = len(encode_array(big[:0]))  # dtype, ndim, shape
    assert trio["a"].bytes_received["b"] == big.nbytes + header


def _kinds(recs: list[tuple[str, str, bytes]]) -> list[tuple[str, str]]:
    """``(sender, kind)`` of every record, in file order (control tags: ``!<kind>/<tag>``)."""
    return [(f, t[1:].partition("/")[0] if t.startswith("!") else "data") for f, t, _ in recs]


def test_transcript_written_at_delivery(
    creds: dict[str, PartyCredentials], tmp_path: Path
) -> None:
    """Frames are recorded as they arrive: unread ones, HELLOs and goodbyes included."""
    ts = connect(creds, transcript_dir=str(tmp_path))
    try:
        ts["a"].send("c", "r1", b"\x00\x01")
        ts["b"].send("c", "r1", b"from b")
        ts["a"].send("c", "r2", b"")
        ts["a"].send("c", "unread", b"never read by c")
        assert ts["c"].recv("a", "r2") == b""  # receiving out of order ...
        assert ts["c"].recv("b", "r1") == b"from b"
        assert ts["c"].recv("a", "r1") == b"\x00\x01"
        ts["b"].abort(ProtocolError("b gives up"))  # an error goodbye
    finally:
        close_all(ts)
    recs = read_transcript(tmp_path / "c.bin")
    data = [r for r in recs if not r[1].startswith("!")]
    assert sorted(data) == sorted([("a", "r1", b"\x00\x01"), ("b", "r1", b"from b"),
                                   ("a", "r2", b""), ("a", "unread", b"never read by c")])
    # ... is still recorded in arrival order per sender, and unread frames too.
    assert [r for r in data if r[0] == "a"] == [
        ("a", "r1", b"\x00\x01"), ("a", "r2", b""), ("a", "unread", b"never read by c")]
    # Set-up and goodbye frames are delivered frames as well.
    assert ("a", "!hello/a", b"") in recs and ("b", "!hello/b", b"") in recs
    (bye_b,) = [p for f, t, p in recs if t == "!bye/b"]  # b aborted first: it told everyone
    assert json.loads(bye_b) == {"culprit": None, "reason": "b gives up"}
    assert sorted(_kinds(recs)[:2]) == [("a", "hello"), ("b", "hello")]  # before any data
    # The dialer records its peers' HELLO answers; a got no data, only set-up and goodbyes.
    at_a = _kinds(read_transcript(tmp_path / "a.bin"))
    assert {("b", "hello"), ("c", "hello"), ("b", "bye")} <= set(at_a) <= {
        ("b", "hello"), ("c", "hello"), ("b", "bye"), ("c", "bye")}
    # a and c closed at once: whoever said goodbye first is not answered (its peer skips a
    # party that already left), but that first goodbye, an empty one, is recorded.
    assert ("a", "!bye/a", b"") in recs or ("c", "bye") in at_a
    assert [p for f, t, p in recs if t == "!bye/a"] in ([], [b""])


# ---------------------------------------------------------------------------- refusals
def test_wrong_session_refused(creds: dict[str, PartyCredentials], tmp_path: Path) -> None:
    """A HELLO of another session is refused with a REJECT, and both are recorded."""
    ts = connect(creds, ("a", "b"), sessions={"a": "sess-1", "b": "sess-2"},
                 connect_timeout=1.0, transcript_dir=str(tmp_path))
    close_all(ts)
    assert isinstance(ts["a"], ProtocolError) and "session id mismatch" in str(ts["a"])
    assert isinstance(ts["b"], PartyUnavailable) and ts["b"].party == "a"
    assert "session id mismatch" in str(ts["b"])
    # The refused HELLO and the REJECT that answered it are both in the transcripts.
    assert read_transcript(tmp_path / "b.bin") == [("a", "!hello/a", b"")]
    assert read_transcript(tmp_path / "a.bin") == [("b", "!reject/b", b"session id mismatch")]


def test_certificate_from_another_ca_refused(
    creds: dict[str, PartyCredentials], tmp_path: Path
) -> None:
    other = make_federation_certs(tmp_path, ["a"])["a"]
    # Right name, trusts the federation CA, but its certificate is signed by another CA.
    rogue = PartyCredentials(creds["a"].ca_path, other.cert_path, other.key_path)
    ts = connect({**creds, "a": rogue}, ("a", "b"), connect_timeout=1.0)
    close_all(ts)
    assert isinstance(ts["a"], ProtocolError) and not isinstance(ts["a"], PartyUnavailable)
    assert "party 'b' refused our TLS certificate" in str(ts["a"]) and ts["a"].hint
    assert isinstance(ts["b"], PartyUnavailable) and ts["b"].party == "a"
    assert "certificate verify failed" in str(ts["b"])


def test_listener_from_another_ca_refused(
    creds: dict[str, PartyCredentials], tmp_path: Path
) -> None:
    rogue = make_federation_certs(tmp_path, ["b"])["b"]
    ts = connect({**creds, "b": rogue}, ("a", "b"), connect_timeout=1.0)
    close_all(ts)
    assert isinstance(ts["a"], ProtocolError)
    assert "TLS handshake with party 'b' failed: certificate verify failed" in str(ts["a"])


def test_wrong_name_refused(creds: dict[str, PartyCredentials], tmp_path: Path) -> None:
    # A valid federation certificate, but for another name, used by the dialing party 'a'.
    fed_ca = load_ca(creds["a"].ca_path.parent)
    cert, key = make_cert(fed_ca, "mallory", tmp_path)
    mallory = PartyCredentials(creds["a"].ca_path, cert, key)
    ts = connect({**creds, "a": mallory}, ("a", "b"), connect_timeout=1.0)
    close_all(ts)
    assert isinstance(ts["a"], ProtocolError)
    assert "'b' refused the connection: certificate for ['mallory']" in str(ts["a"])
    assert isinstance(ts["b"], PartyUnavailable) and ts["b"].party == "a"
    # And the listening side: 'b' holding c's certificate is not accepted as 'b'.
    ts = connect({**creds, "b": creds["c"]}, ("a", "b"), connect_timeout=1.0)
    close_all(ts)
    assert isinstance(ts["a"], ProtocolError)
    assert "certificate for ['c'], not for party 'b'" in str(ts["a"])


def test_missing_party_gives_unavailable_within_connect_timeout(
    creds: dict[str, PartyCredentials],
) -> None:
    port = socket.create_server(("127.0.0.1", 0))
    addr = {"a": ("127.0.0.1", 1), "b": ("127.0.0.1", port.getsockname()[1])}
    port.close()
    t0 = time.monotonic()
    with pytest.raises(PartyUnavailable, match="could not connect to party 'b'") as info:
        TlsTransport("a", addr, creds["a"], session_id="s", connect_timeout=0.5)
    assert info.value.party == "b" and time.monotonic() - t0 < 1.5


# ------------------------------------------------------------------ real party processes
def _wait_for_c(transport: TlsTransport) -> tuple[str, str, float]:
    """Parties a and b wait on c, which never sends; c just sleeps (and gets killed)."""
    if transport.me == "c":
        time.sleep(30)
        return ("", "", 0.0)
    t0 = time.monotonic()
    try:
        transport.recv("c", "never")
    except PartyUnavailable as exc:
        return (exc.party, exc.message, time.monotonic() - t0)
    return ("", "no error", 0.0)


def _big_exchange(transport: TlsTransport, n: int) -> int:
    parties = transport.parties
    i = parties.index(transport.me)
    nxt, prv = parties[(i + 1) % 3], parties[(i - 1) % 3]
    transport.send_array(nxt, "big", np.full(n, i + 1, dtype=np.uint64))
    got = transport.recv_array(prv, "big")
    return int(got.sum())


def _raise(transport: TlsTransport) -> None:
    if transport.me == "b":
        raise ConfigError("made up", "a hint", file="f.toml")
    transport.recv("b", "x", timeout=5)


@pytest.mark.network
def test_three_processes_ping_ring() -> None:
    res = run_parties_tls("veilql.engine.transport.launch:ping_ring", PARTIES, (3,))
    assert res == [[2, 3, 4], [0, 1, 2], [1, 2, 3]]


@pytest.mark.network
def test_killed_party_detected_well_within_timeout() -> None:
    timeout = 10.0
    outcomes = run_parties_tls_detailed(
        f"{__name__}:_wait_for_c", PARTIES, timeout=timeout, kill={"c": 0.3},
    )
    assert outcomes[2].killed
    for o in outcomes[:2]:
        assert o.ok, o.error
        party, message, waited = o.value
        assert party == "c" and "'c'" in message
        assert waited < 0.3 + 1.0 < timeout  # detected from the dead socket, not the timeout


@pytest.mark.network
def test_processes_large_arrays_and_byte_counts() -> None:
    n = 2_000_000  # 16 MB per party
    outcomes = run_parties_tls_detailed(f"{__name__}:_big_exchange", PARTIES, (n,))
    assert [o.value for o in outcomes] == [3 * n, 1 * n, 2 * n]
    header = len(encode_array(np.zeros(0, dtype=np.uint64)))
    assert outcomes[0].bytes_sent == {"b": 8 * n + header, "c": 0}


@pytest.mark.network
def test_processes_write_transcripts(tmp_path: Path) -> None:
    run_parties_tls("veilql.engine.transport.launch:ping_ring", PARTIES, (2, 0),
                    env={"VEIL_TRANSCRIPT_DIR": str(tmp_path)})
    recs = read_transcript(tmp_path / "a.bin")
    assert [r for r in recs if not r[1].startswith("!")] == [
        ("c", "ping/0", struct.pack("<Q", 2)), ("c", "ping/1", struct.pack("<Q", 3))]
    control = _kinds([r for r in recs if r[1].startswith("!")])
    # Both HELLOs; the peers' goodbyes too unless one comes after a has closed (then it is
    # never delivered, so never recorded).
    assert {("b", "hello"), ("c", "hello")} <= set(control)
    assert set(control) <= {("b", "hello"), ("c", "hello"), ("b", "bye"), ("c", "bye")}


@pytest.mark.network
def test_child_errors_come_back_with_their_attributes() -> None:
    with pytest.raises(ConfigError, match="f.toml: made up") as info:
        run_parties_tls(f"{__name__}:_raise", PARTIES, timeout=5)
    assert info.value.file == "f.toml" and info.value.hint == "a hint"
    assert "Traceback" in info.value.remote_traceback  # type: ignore[attr-defined]


@pytest.mark.network
def test_unguarded_script_cannot_start_parties_recursively(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A target module that starts parties at import time (no __main__ guard).
    (tmp_path / "unguarded_mod.py").write_text(
        "from veilql.engine.transport.launch import run_parties_tls\n"
        "def target(transport):\n    return transport.me\n"
        "run_parties_tls('unguarded_mod:target', ['a', 'b'], timeout=5)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from veilql.errors import UsageError

    with pytest.raises(UsageError, match="inside a party process"):
        run_parties_tls("unguarded_mod:target", ["a", "b"], timeout=5, connect_timeout=3,
                        wall_timeout=30)


def test_party_links_get_large_socket_buffers_only_where_the_kernel_allows(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # A quiet direction with an autotuned small window sent at a third of a WAN link's rate
    # (bench/wan.py); a fixed buffer below the kernel's cap would be worse than autotuning.
    import socket

    from veilql.engine.transport import tlsconn

    plain = socket.socket()
    default = plain.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if tlsconn._kernel_limit("rmem_max") >= tlsconn.SOCKET_BUFFER:
        big = socket.socket()
        tlsconn.tune(big)
        assert big.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= tlsconn.SOCKET_BUFFER
        big.close()
    monkeypatch.setattr(tlsconn, "_kernel_limit", lambda name: 212992)  # a stock kernel
    small = socket.socket()
    tlsconn.tune(small)
    assert small.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == default
    assert small.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    plain.close()
    small.close()
