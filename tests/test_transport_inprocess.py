"""In-process transport: timeouts, dead parties, tag buffering, transcripts."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from veilql.engine.transport.base import TranscriptWriter, encode_array, read_transcript
from veilql.engine.transport.inprocess import InProcessNetwork
from veilql.errors import PartyUnavailable, ProtocolError


def test_out_of_order_tags_are_buffered() -> None:
    net = InProcessNetwork(["a", "b", "c"], timeout=1.0)
    a, b, c = (net.endpoint(p) for p in "abc")
    a.send("c", "r2", b"two")
    b.send("c", "r1", b"b-one")
    a.send("c", "r1", b"one")
    a.send("c", "r1", b"one again")
    assert c.recv("a", "r1") == b"one"
    assert c.recv("a", "r2") == b"two"
    assert c.recv("b", "r1") == b"b-one"
    assert c.recv("a", "r1") == b"one again"
    assert net.bytes_sent == {"a": 3 + 3 + 9, "b": 5, "c": 0}


def test_recv_times_out_naming_the_party() -> None:
    net = InProcessNetwork(["a", "b"], timeout=0.2)
    t0 = time.monotonic()
    with pytest.raises(PartyUnavailable, match="'b' sent nothing for 0.2 s") as info:
        net.endpoint("a").recv("b", "r1")
    assert info.value.party == "b" and 0.2 <= time.monotonic() - t0 < 1.0
    with pytest.raises(PartyUnavailable, match="0.05 s"):
        net.endpoint("a").recv("b", "r1", timeout=0.05)


def test_dead_party_fails_waiters_at_once() -> None:
    net = InProcessNetwork(["a", "b"], timeout=10.0)
    a = net.endpoint("a")
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            a.recv("b", "r1")
        except PartyUnavailable as exc:
            errors.append(exc)

    t = threading.Thread(target=wait)
    t0 = time.monotonic()
    t.start()
    time.sleep(0.05)
    net.mark_dead("b", "it crashed")
    t.join(2.0)
    assert len(errors) == 1 and errors[0].party == "b"  # type: ignore[attr-defined]
    assert "it crashed" in str(errors[0]) and time.monotonic() - t0 < 1.0
    with pytest.raises(PartyUnavailable):
        a.send("b", "r2", b"")


def test_unknown_party_and_closed_endpoint() -> None:
    net = InProcessNetwork(["a", "b"])
    with pytest.raises(ProtocolError, match="no party named 'z'"):
        net.endpoint("a").send("z", "t", b"")
    net.endpoint("a").close()
    with pytest.raises(ProtocolError, match="closed"):
        net.endpoint("a").send("b", "t", b"")


def test_arrays_and_transcript(tmp_path: Path) -> None:
    net = InProcessNetwork(["a", "b"], transcript_dir=str(tmp_path))
    arr = np.array([0, 1, 2**64 - 1], dtype=np.uint64)
    net.endpoint("a").send_array("b", "x", arr)
    net.endpoint("a").send("b", "y", b"raw")
    assert net.endpoint("b").recv("a", "y") == b"raw"
    got = net.endpoint("b").recv_array("a", "x")
    assert got.dtype == np.uint64 and got.tolist() == arr.tolist()
    recs = read_transcript(tmp_path / "b.bin")
    assert [(f, t) for f, t, _ in recs] == [("a", "y"), ("a", "x")]
    assert recs[0][2] == b"raw" and recs[1][2] == encode_array(arr)


def test_transcript_directory_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VEIL_TRANSCRIPT_DIR", str(tmp_path / "t"))
    w = TranscriptWriter("bank")
    w.record("insurer", "mul/1", b"\x01\x02")
    assert read_transcript(tmp_path / "t" / "bank.bin") == [("insurer", "mul/1", b"\x01\x02")]
    monkeypatch.delenv("VEIL_TRANSCRIPT_DIR")
    off = TranscriptWriter("bank")
    off.record("insurer", "x", b"")
    assert off.path is None
