"""Network namespaces joined by emulated WAN links, built and always torn down here.

    with Lab(PROFILES["100mbit"]) as lab:
        lab.popen("bank", [...])          # a process inside the bank namespace
        lab.check_links()                 # ping RTT and one-flow throughput per link

One namespace per role (``veilwan-bank``, ``veilwan-payments``, ``veilwan-insurer``,
``veilwan-analyst``), each with one tun device holding one address of 198.18.0.0/24 (the
range RFC 2544 sets aside for benchmarks); the root namespace gets no address and no route.
The other end of every tun device is ``bench.linkemu``, a process of the root namespace
that adds the one-way delay; on each device, in the sending namespace, ``htb`` gives every
destination its own class at the profile's rate (a ``u32`` filter on the destination
address) with a ``bfifo`` queue of a few bandwidth-delay products. So every directed
pair of roles is its own link: rate (htb), buffer (bfifo), delay (linkemu).

Teardown is in ``finally`` and on SIGTERM/SIGHUP (turned into ``SystemExit`` while the lab
is up): every process still in a lab namespace is killed by its pid (``ip netns pids``),
the emulator is told to quit (and quits by itself when its stdin closes, so a dead parent
leaves no emulator), and the namespaces are deleted, which deletes their devices.
``cleanup_leftovers`` does the same for whatever an earlier, crashed run left behind: the
unique name prefix ``veilwan-`` marks namespaces and devices as this module's.

``python -m bench.netlab probe-serve|probe`` are the two ends of the link check, run
inside namespaces; ``python -m bench.netlab cleanup`` removes leftovers by hand.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PREFIX = "veilwan-"
ROLES = ("bank", "payments", "insurer", "analyst")
ADDRESSES = {role: f"198.18.0.{i + 1}" for i, role in enumerate(ROLES)}
PROBE_PORT = 5999
PR_SET_PDEATHSIG = 1
LOCK = "/run/lock/veilwan.lock"  # held while a lab is up: a second run would remove it
MTU = 65000  # see bench/README.md: the packet rate, not the byte rate, bounds linkemu


@dataclass(frozen=True)
class Profile:
    """One emulated WAN: every directed link at ``rate_mbit`` with ``delay_ms`` one way."""

    name: str
    rate_mbit: float
    delay_ms: float
    probe_bytes: int  # how much one flow sends in the throughput check

    @property
    def rtt_s(self) -> float:
        """The round trip the links are built for (twice the one-way delay)."""
        return 2 * self.delay_ms / 1e3

    @property
    def bytes_per_s(self) -> float:
        """The link rate in bytes per second."""
        return self.rate_mbit * 1e6 / 8

    def queue_bytes(self, mtu: int = MTU) -> int:
        """The bfifo limit: four bandwidth-delay products, and never under four packets
        (a 64 kB-segment link of 1 Gbit/s and 2 ms holds only four segments per BDP)."""
        return int(max(4 * self.bytes_per_s * self.rtt_s, 4 * (mtu + 100)))


PROFILES = {
    "100mbit": Profile("100mbit", 100, 10, 25_000_000),
    "1gbit": Profile("1gbit", 1000, 1, 200_000_000),
}


def device(role: str) -> str:
    """The tun device name of a role (at most 15 characters, the kernel's limit)."""
    return f"{PREFIX}{role}"[:15]


def namespace(role: str) -> str:
    """The namespace name of a role."""
    return f"{PREFIX}{role}"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check,
                          timeout=30)


def _in_ns(role: str, argv: Sequence[str], check: bool = True) -> str:
    done = subprocess.run(["ip", "netns", "exec", namespace(role), *argv],
                          capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise RuntimeError(f"{role}: {' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


def lab_namespaces() -> list[str]:
    """Namespaces of this module that exist now (from this run or an earlier one)."""
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines()
            if line.split() and line.split()[0].startswith(PREFIX)]


def kill_namespace_processes(ns: str) -> list[int]:
    """SIGKILL every process inside namespace ``ns`` by pid; returns the pids."""
    pids = [int(p) for p in _ip("netns", "pids", ns, check=False).stdout.split()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def cleanup_leftovers() -> dict[str, Any]:
    """Remove every namespace and root-namespace device with the lab prefix; what went."""
    removed: dict[str, Any] = {"namespaces": [], "pids": [], "devices": []}
    for ns in lab_namespaces():
        removed["pids"] += kill_namespace_processes(ns)
        _ip("netns", "del", ns, check=False)
        removed["namespaces"].append(ns)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith(PREFIX):
            _ip("link", "del", name, check=False)
            removed["devices"].append(name)
    return removed


def _die_with_parent() -> None:
    """In a child before exec: SIGKILL when the parent dies (linkemu also ends when its
    stdin closes)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def hold_lock() -> int:
    """Take the lab lock (one lab at a time on a machine) or fail naming the holder.

    ``cleanup_leftovers`` removes every ``veilwan-`` namespace, so a second lab would tear
    down a running one. The lock is a ``flock``: it goes with the process that held it,
    even one killed by SIGKILL.
    """
    os.makedirs(os.path.dirname(LOCK), exist_ok=True)
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RuntimeError(f"another WAN lab is up (pid {holder}); wait for it to end") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


class _Teardown(SystemExit):
    """SIGTERM or SIGHUP while the lab is up: unwind through every ``finally``."""


class Lab:
    """The four namespaces and their links for one profile; a context manager."""

    def __init__(self, profile: Profile, priority: bool = True, mtu: int = MTU) -> None:
        self.profile = profile
        self.priority = priority
        self.mtu = mtu
        self.emu: subprocess.Popen[str] | None = None
        self._saved: dict[int, Any] = {}
        self._lock: int | None = None
        self.leftovers: dict[str, Any] = {}

    # -- life cycle -------------------------------------------------------------------
    def __enter__(self) -> Lab:
        self._lock = hold_lock()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._saved[sig] = signal.signal(sig, self._on_signal)
        try:
            self.leftovers = cleanup_leftovers()
            self._build()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def _on_signal(self, signum: int, _frame: object) -> None:
        raise _Teardown(128 + signum)

    def _build(self) -> None:
        for role in ROLES:
            _ip("netns", "add", namespace(role))
            _ip("-n", namespace(role), "link", "set", "lo", "up")
        devs = [f"{device(r)}={ADDRESSES[r]}" for r in ROLES]
        cmd = [sys.executable, "-m", "bench.linkemu",
               "--delay-ms", str(self.profile.delay_ms),
               "--rate-mbit", str(self.profile.rate_mbit), *devs]
        if self.priority:
            cmd.insert(3, "--priority")
        self.emu = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    text=True, bufsize=1, preexec_fn=_die_with_parent)
        assert self.emu.stdout is not None
        if self.emu.stdout.readline().strip() != "ready":
            raise RuntimeError(f"linkemu did not start (exit {self.emu.poll()})")
        for role in ROLES:
            ns, dev = namespace(role), device(role)
            _ip("link", "set", dev, "netns", ns)
            # No IPv6 on the links: router solicitations would only be dropped by linkemu.
            _in_ns(role, ["sysctl", "-q", "-w", f"net.ipv6.conf.{dev}.disable_ipv6=1"])
            _ip("-n", ns, "link", "set", dev, "mtu", str(self.mtu), "txqueuelen", "1000", "up")
            _ip("-n", ns, "addr", "add", f"{ADDRESSES[role]}/24", "dev", dev)
            self._shape(role)

    def _shape(self, role: str) -> None:
        """htb on the role's device: one class per destination at the profile's rate."""
        p, dev = self.profile, device(role)
        rate = f"{p.rate_mbit:g}mbit"
        # A burst of a few segments: htb releases whole 64 kB packets, and a burst smaller
        # than one packet would stall the class.
        burst = str(4 * (self.mtu + 100))
        tc = ["tc"]
        _in_ns(role, [*tc, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb",
                      "default", "99", "r2q", "1000"])
        for j, other in enumerate(r for r in ROLES if r != role):
            cls = f"1:{10 + j}"
            _in_ns(role, [*tc, "class", "add", "dev", dev, "parent", "1:", "classid", cls,
                          "htb", "rate", rate, "ceil", rate, "burst", burst, "cburst", burst,
                          "quantum", str(self.mtu + 100)])
            _in_ns(role, [*tc, "qdisc", "add", "dev", dev, "parent", cls, "bfifo",
                          "limit", str(p.queue_bytes(self.mtu))])
            _in_ns(role, [*tc, "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip",
                          "prio", "1", "u32", "match", "ip", "dst", f"{ADDRESSES[other]}/32",
                          "flowid", cls])

    def teardown(self) -> None:
        """Kill what runs in the namespaces, stop the emulator, delete the namespaces."""
        try:
            for ns in lab_namespaces():
                kill_namespace_processes(ns)
            if self.emu is not None:
                if self.emu.poll() is None:
                    try:
                        assert self.emu.stdin is not None
                        self.emu.stdin.write("quit\n")
                        self.emu.stdin.close()
                        self.emu.wait(5)
                    except (OSError, subprocess.TimeoutExpired):
                        self.emu.kill()
                        self.emu.wait(5)
                self.emu = None
            cleanup_leftovers()
        finally:
            for sig, handler in self._saved.items():
                signal.signal(sig, handler)
            self._saved.clear()
            if self._lock is not None:
                os.close(self._lock)  # releases the flock
                self._lock = None

    # -- using it ---------------------------------------------------------------------
    def command(self, role: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the role's namespace. ``ip netns exec`` and ``setpriv`` both
        exec, so the started process's pid is the command's own, and it gets SIGKILL
        when the process that started it dies (even by SIGKILL, where no ``finally``
        runs; the next run's ``cleanup_leftovers`` then removes the namespaces)."""
        guard = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []
        return ["ip", "netns", "exec", namespace(role), *guard, *argv]

    def popen(self, role: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside the role's namespace (see ``command``)."""
        return subprocess.Popen(self.command(role, argv), **kw)

    def emu_command(self, cmd: str) -> Any:
        """Send one control line to linkemu; its JSON (or plain) answer."""
        assert self.emu is not None and self.emu.stdin and self.emu.stdout
        self.emu.stdin.write(cmd + "\n")
        self.emu.stdin.flush()
        line = self.emu.stdout.readline().strip()
        return json.loads(line) if line.startswith("{") else line

    def link_stats(self) -> dict[str, Any]:
        """linkemu's counters since the last reset, links named by role: ``links`` maps
        ``src>dst`` to bytes (IP packets); ``busy_any_s``/``busy_sum_s`` as linkemu's."""
        names = {device(r): r for r in ROLES}
        stats = self.emu_command("stats")
        links = {}
        for link, v in stats.pop("links").items():
            src, dst = link.split(">")
            links[f"{names[src]}>{names[dst]}"] = v["bytes"]
        return {"links": links, **stats}

    def check_link(self, src: str, dst: str, pings: int = 20) -> dict[str, Any]:
        """Ping RTT (ICMP echo) and one TCP flow's throughput from ``src`` to ``dst``."""
        server = self.popen(dst, [sys.executable, "-m", "bench.netlab", "probe-serve",
                                  ADDRESSES[dst]], stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            if server.stdout.readline().strip() != "listening":
                raise RuntimeError(f"probe server in {dst} did not start")
            out = subprocess.run(
                self.command(src, [sys.executable, "-m", "bench.netlab", "probe",
                                   ADDRESSES[dst], "--bytes", str(self.profile.probe_bytes),
                                   "--pings", str(pings)]),
                capture_output=True, text=True, timeout=300)
            if out.returncode != 0:
                raise RuntimeError(f"probe {src}->{dst}: {out.stderr[-2000:]}")
            res: dict[str, Any] = json.loads(out.stdout)
        finally:
            server.kill()
            server.wait(10)
        res["link"] = f"{src}>{dst}"
        return res

    def check_links(self, pairs: Sequence[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
        """``check_link`` over the given pairs (default: one direction of every node pair
        and analyst -> bank)."""
        if pairs is None:
            pairs = [("bank", "payments"), ("payments", "insurer"), ("insurer", "bank"),
                     ("analyst", "bank")]
        return [self.check_link(a, b) for a, b in pairs]


# -- the two ends of a link check (run inside namespaces) ---------------------------------
def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def icmp_ping(host: str, count: int, timeout: float = 2.0) -> list[float]:
    """Round-trip times (seconds) of ``count`` ICMP echoes to ``host`` (a raw socket)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.settimeout(timeout)
    ident = os.getpid() & 0xFFFF
    rtts = []
    try:
        for seq in range(count):
            body = struct.pack("!d", time.perf_counter()) + bytes(48)
            head = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            head = struct.pack("!BBHHH", 8, 0, _checksum(head + body), ident, seq)
            t0 = time.perf_counter()
            sock.sendto(head + body, (host, 0))
            while True:
                reply = sock.recv(2048)
                ihl = (reply[0] & 0x0F) * 4
                kind, _, _, rid, rseq = struct.unpack("!BBHHH", reply[ihl:ihl + 8])
                if kind == 0 and rid == ident and rseq == seq:
                    break
            rtts.append(time.perf_counter() - t0)
            time.sleep(0.01)
    finally:
        sock.close()
    return rtts


def probe_serve(addr: str, port: int = PROBE_PORT) -> None:
    """Accept one connection, read until EOF, answer with one byte; then exit."""
    srv = socket.create_server((addr, port))
    srv.settimeout(120)
    print("listening", flush=True)
    conn, _ = srv.accept()
    with conn:
        buf = bytearray(1 << 20)
        while conn.recv_into(buf):
            pass
        conn.sendall(b"!")
    srv.close()


def probe(addr: str, nbytes: int, pings: int, port: int = PROBE_PORT) -> dict[str, Any]:
    """ICMP RTTs, then one TCP flow of ``nbytes``: time from the first send to the
    receiver's answer after the last byte (so the one-way delay of the answer and the
    slow start are inside, as an application sees them)."""
    rtts = icmp_ping(addr, pings)
    conn = socket.create_connection((addr, port), timeout=60)
    block = os.urandom(1 << 20)
    with conn:
        t0 = time.perf_counter()
        sent = 0
        while sent < nbytes:
            n = min(len(block), nbytes - sent)
            conn.sendall(block[:n])
            sent += n
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)
        elapsed = time.perf_counter() - t0
    ms = [r * 1e3 for r in rtts]
    return {"rtt_ms_median": round(statistics.median(ms), 3), "rtt_ms_min": round(min(ms), 3),
            "rtt_ms_max": round(max(ms), 3), "pings": len(ms), "flow_bytes": nbytes,
            "flow_s": round(elapsed, 4), "flow_mbit_s": round(nbytes * 8 / elapsed / 1e6, 2)}


def main(argv: list[str] | None = None) -> int:
    """``probe-serve ADDR``, ``probe ADDR --bytes N --pings K``, ``check PROFILE`` or
    ``cleanup``."""
    ap = argparse.ArgumentParser(prog="python -m bench.netlab")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("probe-serve")
    s.add_argument("addr")
    p = sub.add_parser("probe")
    p.add_argument("addr")
    p.add_argument("--bytes", type=int, default=10_000_000)
    p.add_argument("--pings", type=int, default=20)
    c = sub.add_parser("check")
    c.add_argument("profile", choices=sorted(PROFILES))
    c.add_argument("--mtu", type=int, default=MTU)
    c.add_argument("--no-priority", action="store_true", help="linkemu at normal priority")
    sub.add_parser("cleanup")
    args = ap.parse_args(argv)
    if args.cmd == "probe-serve":
        probe_serve(args.addr)
    elif args.cmd == "probe":
        print(json.dumps(probe(args.addr, args.bytes, args.pings)))
    elif args.cmd == "check":
        with Lab(PROFILES[args.profile], not args.no_priority, args.mtu) as up:
            print(json.dumps({"mtu": args.mtu, "load": os.getloadavg(),
                              "links": up.check_links()}, indent=2))
    else:
        fd = hold_lock()
        try:
            print(json.dumps(cleanup_leftovers()))
        finally:
            os.close(fd)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
