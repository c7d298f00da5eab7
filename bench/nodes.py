"""The join queries over three ``veil serve`` nodes on loopback TLS beside the embedded mode.

    python -m bench.nodes --json [--people 1000000] [--reps 3]

The sample federation at N people comes from ``bench.e2e.federation`` (cached in
``bench/.data/<N>/``, analyst ``bench`` with a budget that never runs out). A temporary
folder holds two federation files over the same data and policy folders (symlinked, so
both modes read identical data): ``federation.toml`` with every party at
``127.0.0.1:<free port>`` plus certificates from ``veil certs init``, and
``federation-local.toml`` with every party ``local`` (the embedded mode: all parties are
threads of this process). Ledgers go to that temporary folder, so no real budget is spent.

For each query (``join_filter_sum``, ``cross_party_predicate``) and each of ``reps``
repetitions, in both modes: a fresh start (new ``Session``; in network mode also three
freshly started node processes, because a node keeps its join cache across client
sessions), the **first run**, then the **repeated run** on the same session (the compute
parties reuse the joined shares). Figures are medians over the repetitions; the ratios
are network / embedded.

Resources, from the first repetition:

- network mode, per node process: the growth of ``wchar`` in ``/proc/<pid>/io`` over the
  query. ``wchar`` counts every byte the process handed to ``write``-like system calls:
  TLS records to its peers and to the client (so TLS framing is included), plus its log
  line and ledger entries (a few hundred bytes). The engine is not instrumented. Peak
  resident memory per node is ``VmHWM`` from ``/proc/<pid>/status``, reset before each
  run by writing ``5`` to ``/proc/<pid>/clear_refs`` (so it is the query's own peak over
  the node's resident baseline, not the start-up's);
- embedded mode: the payload bytes each party sent through the in-process network
  (``bench.e2e.Meter``; no TLS framing) and the peak memory of this whole process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import veilql
from bench.e2e import ANALYST, CACHE, EPSILON, QUERIES, Meter, federation, peak_rss_mb
from veilql.engine.dp import LargeEpsilonWarning

NODE_QUERIES = ("join_filter_sum", "cross_party_predicate")
PARTIES = ("bank", "payments", "insurer")
START_TIMEOUT = 60.0  # seconds a node may take to say "listening on"
QUERY_TIMEOUT = 300  # the federation's timeout: every silent wait of a node ends within it
VEIL = [sys.executable, "-m", "veilql.cli"]
# Variables that would make the client or a node use other certificates or ledgers.
_ENV_DROP = ("VEIL_CERT", "VEIL_KEY", "VEIL_CA", "VEIL_LEDGER_DIR", "VEIL_ANALYST",
             "VEIL_FEDERATION")


def _free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def proc_field(pid: int, name: str, field: str) -> int:
    """An integer field of ``/proc/<pid>/<name>`` (``io`` or ``status``; kB stays kB)."""
    for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/{pid}/{name}")


def layout(fed_path: Path, root: Path) -> tuple[Path, Path]:
    """Write the networked and the embedded federation files into ``root``.

    Both point at the cached data and policies (symlinked); returns (network, local).
    """
    src = fed_path.parent
    for sub in ("data", "policies"):
        (root / sub).symlink_to(src / sub, target_is_directory=True)
    text = fed_path.read_text().replace(
        "default_delta = 1e-06", f"default_delta = 1e-06\ntimeout = {QUERY_TIMEOUT}", 1)
    if f"timeout = {QUERY_TIMEOUT}" not in text:
        raise RuntimeError(f"{fed_path}: no 'default_delta = 1e-06' line to add a timeout after")
    local = root / "federation-local.toml"
    local.write_text(text)
    ports = iter(_free_ports(len(PARTIES)))
    net = root / "federation.toml"
    net.write_text(re.sub(r'address = "local"',
                          lambda m: f'address = "127.0.0.1:{next(ports)}"', text))
    return net, local


class Nodes:
    """Three ``veil serve`` processes for one federation file; a context manager that
    kills every one of them on exit."""

    def __init__(self, fed: Path, env: dict[str, str]) -> None:
        self.fed, self.env, self.root = fed, env, fed.parent
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def log(self, party: str) -> str:
        """What the party's node wrote to stderr so far."""
        path = self.root / f"{party}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def command(self, party: str) -> list[str]:
        """The command line that starts the party's node (``bench.wan`` prefixes it)."""
        return [*VEIL, "serve", "-f", str(self.fed), "--party", party]

    def __enter__(self) -> Nodes:
        try:
            marks = {}
            for party in PARTIES:
                marks[party] = len(self.log(party))
                with open(self.root / f"{party}.log", "ab") as log:
                    self.procs[party] = subprocess.Popen(
                        self.command(party),
                        stdout=subprocess.DEVNULL, stderr=log, env=self.env, cwd=self.root)
            deadline = time.monotonic() + START_TIMEOUT
            for party in PARTIES:
                while "listening on" not in self.log(party)[marks[party]:]:
                    if self.procs[party].poll() is not None:
                        raise RuntimeError(f"node {party} exited: {self.log(party)[-2000:]}")
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"node {party} did not start within "
                                           f"{START_TIMEOUT:g} s: {self.log(party)[-2000:]}")
                    time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGTERM every node, SIGKILL any still alive after 10 s; reap them all."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.procs.clear()

    def sample(self) -> dict[str, int]:
        """``wchar`` of every node process now."""
        return {p: proc_field(pr.pid, "io", "wchar") for p, pr in self.procs.items()}

    def reset_peaks(self) -> None:
        """Restart each node's ``VmHWM`` from its current resident size."""
        for pr in self.procs.values():
            Path(f"/proc/{pr.pid}/clear_refs").write_text("5")

    def peaks_mb(self) -> dict[str, float]:
        """``VmHWM`` of every node process, MiB."""
        return {p: round(proc_field(pr.pid, "status", "VmHWM") / 1024, 1)
                for p, pr in self.procs.items()}


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _query(session: veilql.Session, sql: str) -> veilql.Result:
    return session.sql(sql, epsilon=EPSILON, delta=0)


def network_query(net: Path, env: dict[str, str], sql: str, reps: int) -> dict[str, Any]:
    """First and repeated run over freshly started nodes, ``reps`` times; medians."""
    first, repeated = [], []
    out: dict[str, Any] = {}
    for i in range(reps):
        with Nodes(net, env) as nodes, veilql.connect(net, ANALYST) as session:
            for label, times in (("first", first), ("repeated", repeated)):
                nodes.reset_peaks()
                before = nodes.sample()
                times.append(_timed(lambda: _query(session, sql)))
                if i == 0:
                    after = nodes.sample()
                    out[f"bytes_written_{label}"] = {p: after[p] - before[p] for p in PARTIES}
                    out[f"peak_rss_mb_{label}"] = nodes.peaks_mb()
    out.update(first_s=statistics.median(first), repeated_s=statistics.median(repeated),
               first_runs=first, repeated_runs=repeated)
    return out


def embedded_query(local: Path, sql: str, reps: int, meter: Meter) -> dict[str, Any]:
    """The same in the embedded mode (every party a thread of this process)."""
    first, repeated = [], []
    out: dict[str, Any] = {}
    for i in range(reps):
        with veilql.connect(local, ANALYST) as session:
            for label, times in (("first", first), ("repeated", repeated)):
                meter.reset()
                times.append(_timed(lambda: _query(session, sql)))
                if i == 0:
                    out[f"bytes_sent_{label}"] = meter.bytes_sent()
    out.update(first_s=statistics.median(first), repeated_s=statistics.median(repeated),
               first_runs=first, repeated_runs=repeated)
    return out


def run(people: int = 1_000_000, reps: int = 3, cache: Path = CACHE) -> dict[str, Any]:
    """Both join queries at ``people`` persons, network and embedded; a JSON-ready dict."""
    fed_path = federation(people, cache)
    out: dict[str, Any] = {"people": people, "reps": reps, "epsilon": EPSILON,
                           "analyst": ANALYST, "queries": {}}
    saved = {k: os.environ.pop(k) for k in _ENV_DROP if k in os.environ}
    root = Path(tempfile.mkdtemp(prefix="veil-bench-nodes-"))
    out["workdir"] = str(root)  # removed at the end; lets a caller check no node survived
    try:
        net, local = layout(fed_path, root)
        env = dict(os.environ)
        done = subprocess.run([*VEIL, "certs", "init", "-f", str(net)], capture_output=True,
                              text=True, timeout=120, env=env, cwd=root)
        if done.returncode != 0:
            raise RuntimeError(f"veil certs init failed: {done.stderr[-2000:]}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LargeEpsilonWarning)
            for name in NODE_QUERIES:
                sql = QUERIES[name]
                # The embedded mode's ledgers apart from the nodes' (<root>/ledgers).
                os.environ["VEIL_LEDGER_DIR"] = str(root / "ledgers-embedded")
                try:
                    with Meter().installed() as meter:
                        emb = embedded_query(local, sql, reps, meter)
                finally:
                    os.environ.pop("VEIL_LEDGER_DIR", None)
                nw = network_query(net, env, sql, reps)
                out["queries"][name] = {
                    "sql": sql, "network": nw, "embedded": emb,
                    "ratio_first": nw["first_s"] / emb["first_s"],
                    "ratio_repeated": nw["repeated_s"] / emb["repeated_s"],
                }
    finally:
        os.environ.pop("VEIL_LEDGER_DIR", None)
        os.environ.update(saved)
        shutil.rmtree(root, ignore_errors=True)
    out["peak_rss_mb_embedded_process"] = round(peak_rss_mb(), 1)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: print the figures as JSON."""
    ap = argparse.ArgumentParser(prog="python -m bench.nodes",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--people", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="one line of JSON")
    ap.add_argument("--cache", type=Path, default=CACHE, help="folder of generated federations")
    args = ap.parse_args(argv)
    res = run(args.people, args.reps, args.cache)
    print(json.dumps(res, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
