"""bench.linkemu: the delay line's timing and order, and the emulator loop over sockets.

The fast tests need no root: the emulator's devices are ``SOCK_SEQPACKET`` socket pairs,
which keep packet boundaries as a tun device does. The slow test builds a real two-role
link in network namespaces (root only) and checks it is gone afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

from bench.linkemu import DelayLine, Emulator, ipv4_destination

A, B, C = bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2]), bytes([198, 18, 0, 3])


def packet(dst: bytes, body: bytes = b"x") -> bytes:
    """A minimal IPv4 packet to ``dst`` (only the fields the emulator reads)."""
    return bytes([0x45]) + bytes(15) + dst + body


def test_each_packet_waits_exactly_its_links_delay() -> None:
    line = DelayLine({("a", "b"): 0.010, ("b", "a"): 0.001})
    assert line.push(100.0, ("a", "b"), b"p1") == pytest.approx(100.010)
    assert line.push(100.0, ("b", "a"), b"q1") == pytest.approx(100.001)
    assert line.next_due() == pytest.approx(100.001)
    assert line.pop_due(100.0005) == []
    assert line.pop_due(100.001) == [(("b", "a"), b"q1")]
    assert line.pop_due(100.0099) == []
    assert line.pop_due(100.0100001) == [(("a", "b"), b"p1")]
    assert line.next_due() is None


def test_a_link_never_reorders() -> None:
    line = DelayLine({("a", "b"): 0.005})
    for i in range(100):
        line.push(i * 1e-4, ("a", "b"), bytes([i]))
    out = []
    t = 0.0
    while line.queued():
        t += 7e-4
        out += [p[0] for _, p in line.pop_due(t)]
    assert out == list(range(100))


def test_a_slow_link_does_not_hold_back_a_fast_one() -> None:
    line = DelayLine({("a", "b"): 1.0, ("a", "c"): 0.0})
    line.push(0.0, ("a", "b"), b"slow")
    line.push(0.0, ("a", "c"), b"fast")
    assert line.pop_due(0.0) == [(("a", "c"), b"fast")]


def test_counters_count_and_reset() -> None:
    line = DelayLine({("a", "b"): 0.0})
    line.push(0.0, ("a", "b"), b"12345")
    line.push(0.0, ("a", "b"), b"678")
    assert line.stats() == {"a>b": {"packets": 2, "bytes": 8}}
    line.reset()
    assert line.stats() == {"a>b": {"packets": 0, "bytes": 0}}
    assert line.queued() == 2  # a reset forgets counts, not packets


def test_negative_delay_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        DelayLine({("a", "b"): -0.001})


def test_only_ipv4_has_a_destination() -> None:
    assert ipv4_destination(packet(B)) == B
    assert ipv4_destination(bytes([0x60]) + bytes(39)) is None
    assert ipv4_destination(b"\x45" * 10) is None


class _Rig:
    """An emulator over three socket-pair 'devices', run in a thread."""

    def __init__(self, delay_s: float) -> None:
        self.ends: dict[str, socket.socket] = {}
        fds: dict[str, int] = {}
        self._keep = []
        for name in ("a", "b", "c"):
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            mine.setblocking(False)
            theirs.settimeout(5)
            self.ends[name], fds[name] = theirs, mine.fileno()
            self._keep.append(mine)
        self.ctl_r, self.ctl_w = os.pipe()
        self.emu = Emulator({"a": A, "b": B, "c": C}, delay_s, fds)
        self.thread = threading.Thread(target=self.emu.run, args=(self.ctl_r,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        os.write(self.ctl_w, b"quit\n")
        self.thread.join(5)
        for s in [*self.ends.values(), *self._keep]:
            s.close()
        os.close(self.ctl_r)
        os.close(self.ctl_w)


def test_emulator_delivers_after_the_delay_in_order() -> None:
    rig = _Rig(0.05)
    try:
        t0 = time.monotonic()
        for i in range(5):
            rig.ends["a"].send(packet(B, bytes([i])))
        got = [rig.ends["b"].recv(100) for _ in range(5)]
        elapsed = time.monotonic() - t0
        assert [g[-1] for g in got] == [0, 1, 2, 3, 4]
        assert got[0] == packet(B, b"\x00")
        assert elapsed >= 0.05
        assert elapsed < 2.0  # generous: the machine may be busy
        assert rig.thread.is_alive()
    finally:
        rig.close()
    assert not rig.thread.is_alive()
    assert rig.emu.line.stats()["a>b"] == {"packets": 5, "bytes": 5 * 21}
    assert rig.emu.line.stats()["a>c"]["packets"] == 0


def test_emulator_drops_what_has_no_destination() -> None:
    rig = _Rig(0.0)
    try:
        rig.ends["a"].send(bytes([0x60]) + bytes(39))  # IPv6
        rig.ends["a"].send(packet(bytes([198, 18, 0, 9])))  # nobody's address
        rig.ends["a"].send(packet(A))  # back to the sender
        rig.ends["a"].send(packet(C, b"ok"))
        assert rig.ends["c"].recv(100) == packet(C, b"ok")
    finally:
        rig.close()
    assert rig.emu.dropped == 3


def test_emulator_ends_when_its_control_stream_ends() -> None:
    rig = _Rig(0.0)
    os.close(rig.ctl_w)
    rig.thread.join(5)
    assert not rig.thread.is_alive()
    rig.ctl_w = os.open(os.devnull, os.O_WRONLY)  # so close() has something to close
    os.close(rig.ctl_r)
    rig.ctl_r = os.open(os.devnull, os.O_RDONLY)
    for s in [*rig.ends.values(), *rig._keep]:
        s.close()


def _can_build_namespaces() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None:
        return False
    if not os.path.exists("/dev/net/tun"):
        return False
    # A name of this process, outside the lab's "veilwan-" prefix: a lab that is up (another
    # worker's or a bench run's) neither counts nor removes it, and two probes never collide.
    name = f"veilprobe-{os.getpid()}"
    probe = subprocess.run(["ip", "netns", "add", name], capture_output=True)
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
def test_lab_link_has_its_delay_and_is_torn_down() -> None:
    if not _can_build_namespaces():
        pytest.skip("needs root, ip, tc and /dev/net/tun")
    from bench.netlab import Lab, Profile, lab_namespaces

    prof = Profile("test", rate_mbit=100, delay_ms=5, probe_bytes=2_000_000)
    with Lab(prof) as lab:
        assert len(lab_namespaces()) == 4
        root_addrs = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True)
        assert "198.18." not in root_addrs.stdout  # the root namespace has no lab address
        root_routes = subprocess.run(["ip", "route"], capture_output=True, text=True)
        assert "198.18." not in root_routes.stdout and "veilwan" not in root_routes.stdout
        res = lab.check_link("bank", "payments", pings=5)
        assert 9.5 <= res["rtt_ms_median"] <= 40
        assert 40 <= res["flow_mbit_s"] <= 105  # shaped: never above the rate
        stats = lab.emu_command("stats")
        assert stats["links"]
        json.dumps(stats)
    assert lab_namespaces() == []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert "veilwan-" not in links
