"""In-process transport: timeouts, dead parties, tag buffering, transcripts at delivery."""

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
    """Arrays round-trip; each message is recorded once, in delivery order."""
    net = InProcessNetwork(["a", "b"], transcript_dir=str(tmp_path))
    arr = np.array([0, 1, 2**64 - 1], dtype=np.uint64)
    net.endpoint("a").send_array("b", "x", arr)
    net.endpoint("a").send("b", "y", b"raw")
    assert net.endpoint("b").recv("a", "y") == b"raw"
    got = net.endpoint("b").recv_array("a", "x")
    assert got.dtype == np.uint64 and got.tolist() == arr.tolist()
    recs = read_transcript(tmp_path / "b.bin")
    # Recorded once each, in delivery order, whatever order they were read in.
    assert recs == [("a", "x", encode_array(arr)), ("a", "y", b"raw")]
    assert not (tmp_path / "a.bin").exists()


def test_transcript_records_at_delivery_not_at_read(tmp_path: Path) -> None:
    """Messages are recorded when they reach the mailbox, read or not, the analyst's too."""
    net = InProcessNetwork(["a", "b", "analyst"], transcript_dir=str(tmp_path))
    net.endpoint("a").send("b", "never/read", b"\x07" * 9)
    net.endpoint("b").send("analyst", "release", b"shares")
    assert read_transcript(tmp_path / "b.bin") == [("a", "never/read", b"\x07" * 9)]
    assert read_transcript(tmp_path / "analyst.bin") == [("b", "release", b"shares")]
    net.endpoint("a").close()  # closing an endpoint drops nothing already recorded
    assert read_transcript(tmp_path / "b.bin") == [("a", "never/read", b"\x07" * 9)]


def test_a_dead_party_leaves_an_error_record_everywhere_else(tmp_path: Path) -> None:
    """``mark_dead`` delivers the reason to every other endpoint, the analyst's included."""
    net = InProcessNetwork(["a", "b", "analyst"], transcript_dir=str(tmp_path))
    net.endpoint("b").send("a", "r1", b"before")
    net.mark_dead("b", "it failed: boom")
    assert read_transcript(tmp_path / "a.bin") == [("b", "r1", b"before"),
                                                   ("b", "!error/b", b"it failed: boom")]
    assert read_transcript(tmp_path / "analyst.bin") == [("b", "!error/b", b"it failed: boom")]
    assert not (tmp_path / "b.bin").exists()


def test_control_tags_cannot_be_forged_by_a_data_tag(tmp_path: Path) -> None:
    """A data tag starting with ``!`` is escaped, so it never reads as a control record."""
    from veilql.engine.transport.base import split_transcript_tag, transcript_tag

    net = InProcessNetwork(["a", "b"], transcript_dir=str(tmp_path))
    net.endpoint("a").send("b", "!error/a", b"not an error")
    assert net.endpoint("b").recv("a", "!error/a") == b"not an error"
    (rec,) = read_transcript(tmp_path / "b.bin")
    assert rec[1] == "!data/!error/a" and split_transcript_tag(rec[1]) == ("data", "!error/a")
    assert transcript_tag("mul/1") == "mul/1"


def test_concurrent_sessions_append_whole_records(tmp_path: Path) -> None:
    """Two sessions in one process share ``b.bin``; concurrent appends never interleave."""
    nets = [InProcessNetwork(["a", "b", "c"], transcript_dir=str(tmp_path)) for _ in range(2)]
    sizes = [0, 1, 7, 1000, 70_000, 300_000]

    def flood(net: InProcessNetwork, sender: str, seed: int) -> None:
        for i in range(30):
            size = sizes[(i + seed) % len(sizes)]
            net.endpoint(sender).send("b", f"{sender}/{seed}/{i}", bytes([seed]) * size)

    threads = [threading.Thread(target=flood, args=(net, who, 2 * k + j))
               for k, net in enumerate(nets) for j, who in enumerate("ac")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    recs = read_transcript(tmp_path / "b.bin")
    assert len(recs) == 4 * 30
    for sender, tag, payload in recs:
        who, seed, i = tag.split("/")
        assert who == sender and payload == bytes([int(seed)]) * sizes[(int(i) + int(seed)) % 6]


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
