"""A heartbeat thread starts only when its first beat is due (``transport/base.py``).

A short query (most one-party queries take milliseconds; the first beat is due a third of
the timeout after entering) neither starts nor stops a thread; a long one beats on the
same schedule as before; leaving the block stops the beats, also when it races the start.
The embedded and ``veil serve`` timeouts are checked in ``tests/test_heartbeat.py``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from veilql.engine.transport.base import HEARTBEAT_TAG, Heartbeat, read_transcript
from veilql.engine.transport.inprocess import InProcessNetwork


def _beats(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(1 for _, t, _ in read_transcript(path) if t == f"!data/{HEARTBEAT_TAG}")


def _threads(me: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"veil-heartbeat-{me}"]


def test_a_short_block_starts_no_thread(tmp_path: Path) -> None:
    net = InProcessNetwork(["a", "b"], timeout=3.0, transcript_dir=str(tmp_path))
    for _ in range(200):
        with Heartbeat(net.endpoint("a"), ["b"], 1.0):
            assert not _threads("a")
    assert not _threads("a") and _beats(tmp_path / "b.bin") == 0


def test_a_long_block_beats_and_stops_on_leaving(tmp_path: Path) -> None:
    net = InProcessNetwork(["a", "b", "c"], timeout=1.0, transcript_dir=str(tmp_path))
    start = time.monotonic()
    with Heartbeat(net.endpoint("a"), ["b", "c"], 0.05):
        while _beats(tmp_path / "c.bin") < 3:
            assert time.monotonic() - start < 20, "no heartbeats"
            time.sleep(0.01)
        assert time.monotonic() - start >= 0.1  # the first beat waits its interval
    time.sleep(0.05)
    sent = _beats(tmp_path / "b.bin")
    assert sent >= 3 and not _threads("a")
    time.sleep(0.2)
    assert _beats(tmp_path / "b.bin") == sent  # nothing after leaving


def test_many_blocks_beat_each_on_its_own_schedule(tmp_path: Path) -> None:
    """Heartbeats of several nodes at once, with different intervals, entered out of order:
    each beats; a short block among them sends nothing."""
    names = [f"n{i}" for i in range(6)]
    net = InProcessNetwork([*names, "sink"], timeout=5.0, transcript_dir=str(tmp_path))
    beats = [Heartbeat(net.endpoint(n), ["sink"], 0.3 - 0.04 * i) for i, n in enumerate(names)]
    for b in beats:
        b.__enter__()
    with Heartbeat(net.endpoint("sink"), ["n0"], 10.0):
        pass  # entered and left while the others wait: cancels only itself
    time.sleep(0.8)
    for b in beats:
        b.__exit__(None, None, None)
    got = [tag_sender for tag_sender, t, _ in read_transcript(tmp_path / "sink.bin")
           if t == f"!data/{HEARTBEAT_TAG}"]
    assert set(names) <= set(got)
    assert _beats(tmp_path / "n0.bin") == 0


def test_leaving_as_the_first_beat_is_due_leaves_no_thread() -> None:
    net = InProcessNetwork(["a", "b"], timeout=1.0)
    for i in range(300):
        with Heartbeat(net.endpoint("a"), ["b"], 0.001):
            if i % 3 == 0:
                time.sleep(0.001)  # about when the start is due
    deadline = time.monotonic() + 5
    while _threads("a") and time.monotonic() < deadline:
        time.sleep(0.01)  # a thread already beating ends once it sees the stop
    assert not _threads("a")
