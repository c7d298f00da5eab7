"""A userspace link emulator: a fixed one-way delay on every link between tun devices.

    python -m bench.linkemu --delay-ms 10 --mtu 65000 NAME=ADDR [NAME=ADDR ...]

These kernels have no ``sch_netem`` and cannot load modules, so the delay of an emulated
WAN link cannot come from a qdisc. Instead every namespace of the WAN benchmark
(``bench.netlab``) reaches the others through one tun device, and this process holds the
other end of all of them: it reads each IP packet a namespace sends, looks up the
destination address, keeps the packet for the link's one-way delay and then writes it into
the destination's tun device, where the kernel receives it as if it came off a wire. The
rate is not shaped here: ``htb`` on each tun device (in the sending namespace) shapes every
directed link before its packets reach this process, so a packet's time on the emulated
link is its serialisation at the link's rate (kernel) plus the propagation delay (here).

Each directed link is a FIFO: the delay is the same for every packet of a link, so release
times follow arrival order and the link never reorders (``DelayLine``). Packets to an
address no device holds, and anything that is not IPv4, are dropped and counted.

Control over stdin/stdout, one line each: the emulator prints ``ready`` once its devices
exist (the caller then moves them into namespaces and configures them), and answers
``stats`` with a JSON line of per-link packet and byte counts (IP packets: headers
included) and, given the links' rate, how long any link and all links together were
busy (``busy_any_s``, ``busy_sum_s``); ``reset`` zeroes them; ``quit`` (or the end of
stdin, e.g. because its parent died) closes every device and exits.

The packet rate is what bounds this in Python: a tun device carries one IP packet per read,
so the benchmark gives the devices a large MTU (TCP then sends segments of up to MTU - 52
bytes), which keeps 1 Gbit/s at a few thousand packets per second.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import select
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass, field

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
READ_BURST = 64  # packets read from one device before looking at the others again
MAX_PACKET = 65536


def ipv4_destination(packet: bytes) -> bytes | None:
    """The destination address of an IPv4 packet (4 bytes), or None for anything else.

    >>> ipv4_destination(bytes([0x45]) + bytes(15) + bytes([198, 18, 0, 2]))
    b'\\xc6\\x12\\x00\\x02'
    >>> ipv4_destination(bytes([0x60]) + bytes(39)) is None
    True
    """
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    return packet[16:20]


@dataclass
class LinkCounter:
    """Packets and bytes one directed link carried."""

    packets: int = 0
    bytes: int = 0


@dataclass
class DelayLine:
    """Directed links with a fixed one-way delay each; FIFO per link.

    ``push`` a packet arriving on a link at time ``now``; ``pop_due`` returns, in release
    order per link, the packets whose delay has passed. The delay is fixed per link, so a
    later arrival is never released before an earlier one on the same link.
    """

    delays: dict[tuple[str, str], float]
    queues: dict[tuple[str, str], deque[tuple[float, bytes]]] = field(default_factory=dict)
    counters: dict[tuple[str, str], LinkCounter] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for link, delay in self.delays.items():
            if delay < 0:
                raise ValueError(f"link {link}: negative delay {delay}")
            self.queues[link] = deque()
            self.counters[link] = LinkCounter()

    def push(self, now: float, link: tuple[str, str], packet: bytes) -> float:
        """Queue ``packet`` arriving on ``link`` at ``now``; returns its release time."""
        due = now + self.delays[link]
        self.queues[link].append((due, packet))
        count = self.counters[link]
        count.packets += 1
        count.bytes += len(packet)
        return due

    def next_due(self) -> float | None:
        """The earliest release time of any queued packet, or None when all are empty."""
        heads = [q[0][0] for q in self.queues.values() if q]
        return min(heads) if heads else None

    def pop_due(self, now: float) -> list[tuple[tuple[str, str], bytes]]:
        """Every packet whose release time is at or before ``now``, FIFO within a link."""
        out: list[tuple[tuple[str, str], bytes]] = []
        for link, q in self.queues.items():
            while q and q[0][0] <= now:
                out.append((link, q.popleft()[1]))
        return out

    def queued(self) -> int:
        """Packets held right now over all links."""
        return sum(len(q) for q in self.queues.values())

    def stats(self) -> dict[str, dict[str, int]]:
        """Per-link counters as ``{"src>dst": {"packets": n, "bytes": b}}``."""
        return {f"{a}>{b}": {"packets": c.packets, "bytes": c.bytes}
                for (a, b), c in self.counters.items()}

    def reset(self) -> None:
        """Zero the counters (queued packets stay queued)."""
        for c in self.counters.values():
            c.packets = c.bytes = 0


def busy_time(intervals: list[tuple[float, float]]) -> float:
    """The length of the union of ``(start, end)`` intervals.

    >>> busy_time([(0.0, 1.0), (0.5, 2.0), (3.0, 4.0)])
    3.0
    """
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


TIMELINE_BIN_S = 0.25


def timeline(on_wire: list[tuple[float, float]], links: list[tuple[str, str]],
             bin_s: float = TIMELINE_BIN_S) -> list[dict[str, float]]:
    """Per ``bin_s`` seconds from the first packet: each busy link's seconds on the wire
    (``src>dst``), so a benchmark shows when links take turns or stand idle.

    >>> timeline([(0.0, 0.1), (0.3, 0.35)], [("a", "b"), ("b", "a")], bin_s=0.25)
    [{'a>b': 0.1}, {'b>a': 0.05}]
    """
    if not on_wire:
        return []
    t0 = min(a for a, _ in on_wire)
    bins: list[dict[str, float]] = []
    for (a, b), (src, dst) in zip(on_wire, links, strict=True):
        k = int((b - t0) // bin_s)
        while len(bins) <= k:
            bins.append({})
        name = f"{src}>{dst}"
        bins[k][name] = bins[k].get(name, 0.0) + (b - a)
    return [{k: round(v, 3) for k, v in sorted(x.items())} for x in bins]


def open_tun(name: str) -> int:
    """Create the tun device ``name`` (IP packets, no extra header); its non-blocking fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


class Emulator:
    """The select loop: tun devices in, the delay line, tun devices out, stdin control."""

    def __init__(self, devices: dict[str, bytes], delay_s: float,
                 fds: dict[str, int], rate_bytes_s: float | None = None) -> None:
        self.by_addr = {addr: name for name, addr in devices.items()}
        self.fds = fds
        self.names = {fd: name for name, fd in fds.items()}
        links = {(a, b): delay_s for a in devices for b in devices if a != b}
        self.line = DelayLine(links)
        self.dropped = 0
        self.late_max = 0.0  # the latest a packet left after its release time (seconds)
        self.peak_queued = 0
        # With the links' rate known: when each packet was on its link, [arrival - its
        # serialisation time, arrival], as htb hands a packet over once it has "sent" it.
        self.rate = rate_bytes_s
        self.on_wire: list[tuple[float, float]] = []
        self.wire_links: list[tuple[str, str]] = []  # the link of each on_wire interval

    def _read(self, fd: int, now: float) -> None:
        src = self.names[fd]
        for _ in range(READ_BURST):
            try:
                packet = os.read(fd, MAX_PACKET)
            except BlockingIOError:
                return
            dst = self.by_addr.get(ipv4_destination(packet) or b"")
            if dst is None or dst == src:
                self.dropped += 1
                continue
            self.line.push(now, (src, dst), packet)
            if self.rate:
                self.on_wire.append((now - len(packet) / self.rate, now))
                self.wire_links.append((src, dst))

    def _flush(self, now: float) -> None:
        due = self.line.next_due()
        if due is not None and due <= now:
            self.late_max = max(self.late_max, now - due)
        for (_src, dst), packet in self.line.pop_due(now):
            try:
                os.write(self.fds[dst], packet)
            except (BlockingIOError, OSError):
                self.dropped += 1  # the receiving stack refused it, as a full NIC would

    def _control(self, line: str) -> bool:
        """Handle one command; False to stop."""
        cmd = line.strip()
        if cmd in ("", "quit"):
            return False
        if cmd == "stats":
            out = {"links": self.line.stats(), "dropped": self.dropped,
                   "late_max_ms": round(self.late_max * 1e3, 3),
                   "peak_queued": self.peak_queued}
            if self.rate:
                # Sum over links / union: how many links were busy at once, on average.
                out["busy_any_s"] = round(busy_time(self.on_wire), 4)
                out["busy_sum_s"] = round(sum(b - a for a, b in self.on_wire), 4)
                out["timeline"] = timeline(self.on_wire, self.wire_links)
            sys.stdout.write(json.dumps(out) + "\n")
        elif cmd == "reset":
            self.line.reset()
            self.dropped = 0
            self.late_max = 0.0
            self.peak_queued = 0
            self.on_wire.clear()
            self.wire_links.clear()
            sys.stdout.write("ok\n")
        else:
            sys.stdout.write(json.dumps({"error": f"unknown command {cmd!r}"}) + "\n")
        sys.stdout.flush()
        return True

    def run(self, control: int) -> None:
        """Serve until ``quit`` or end of the control stream."""
        watch = [control, *self.fds.values()]
        buf = b""
        while True:
            due = self.line.next_due()
            # select() takes microseconds (epoll only milliseconds): a 1 ms link needs that.
            timeout = None if due is None else max(0.0, due - time.monotonic())
            ready, _, _ = select.select(watch, [], [], timeout)
            now = time.monotonic()
            for fd in ready:
                if fd == control:
                    chunk = os.read(control, 4096)
                    if not chunk:
                        return
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        if not self._control(line.decode()):
                            return
                else:
                    self._read(fd, now)
            self.peak_queued = max(self.peak_queued, self.line.queued())
            self._flush(time.monotonic())


def _device(spec: str) -> tuple[str, bytes]:
    name, _, addr = spec.partition("=")
    parts = [int(x) for x in addr.split(".")]
    if not name or len(parts) != 4 or not all(0 <= x < 256 for x in parts):
        raise argparse.ArgumentTypeError(f"expected NAME=A.B.C.D, got {spec!r}")
    return name, bytes(parts)


def main(argv: list[str] | None = None) -> int:
    """Create the devices, print ``ready``, then emulate until told to quit."""
    ap = argparse.ArgumentParser(prog="python -m bench.linkemu",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--delay-ms", type=float, required=True, help="one-way delay per link")
    ap.add_argument("--rate-mbit", type=float, default=None,
                    help="the links' rate, for the busy-time figures of 'stats'")
    ap.add_argument("--priority", action="store_true",
                    help="run under SCHED_FIFO (the wire is not on the parties' CPUs)")
    ap.add_argument("devices", nargs="+", type=_device, metavar="NAME=ADDR")
    args = ap.parse_args(argv)
    devices = dict(args.devices)
    fds: dict[str, int] = {}
    try:
        for name in devices:
            fds[name] = open_tun(name)
        if args.priority:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        rate = args.rate_mbit * 1e6 / 8 if args.rate_mbit else None
        Emulator(devices, args.delay_ms / 1e3, fds, rate).run(sys.stdin.fileno())
    finally:
        for fd in fds.values():
            os.close(fd)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
