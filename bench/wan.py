"""The join queries over three ``veil serve`` nodes on emulated WAN links.

    python -m bench.wan --json [--people N] [--profile 100mbit|1gbit|both] [--quick]
                        [--reps R] [--out PREFIX]

Each profile builds its own lab (``bench.netlab``): the three nodes and the analyst in
four network namespaces, every directed link shaped by ``htb`` to the profile's rate and
delayed by ``bench.linkemu`` (100 Mbit/s with 10 ms one way, or 1 Gbit/s with 1 ms); the
root namespace gets no address or route. The lab checks its links first (ICMP round trip,
one TCP flow's throughput) and is torn down in a ``finally`` and on SIGTERM/SIGHUP.

For each query of ``bench.nodes`` and each repetition: three freshly started nodes (a
node keeps its join cache across sessions), a client process in the analyst's namespace,
the **first run**, then the **repeated run** on the same session. Per run: wall time (at
the client), bytes every node wrote (``wchar``, as in ``bench.nodes``), bytes on every
directed link (IP packets counted by linkemu: TCP/IP and TLS framing included), CPU time
of every node and of the client, how long any link and all links were busy, and the load
average before and after.

Rounds cannot be read from a ``veil serve`` process without instrumenting the engine, so
they come from the **embedded mode on the same data**: ``Runtime.rounds`` of every compute
party (``bench.e2e.Meter``), the largest of the three. The bound adds the exchanges the
query's life cycle makes outside the runtime (``LIFECYCLE_RTTS``, ``SETUP_RTTS``).

The bound is the issue's: bytes on the busiest link / rate + rounds x RTT; ``bound``
also gives a tighter one. The embedded run's time (all parties' compute in one process,
no network) and the nodes' CPU time are reported beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from bench.e2e import ANALYST, CACHE, EPSILON, QUERIES, Meter, federation
from bench.netlab import ADDRESSES, PROFILES, Lab, Profile
from bench.nodes import _ENV_DROP, NODE_QUERIES, PARTIES, QUERY_TIMEOUT, VEIL, Nodes

PORT = 7400  # every node listens on its own address, so one port serves all three
# Round trips outside the runtime, per query: plan agreement, reservation outcome and
# commit notice among the nodes (engine/node.py, PartyNode.serve), plus the analyst's
# query going out and the release coming back (one round trip together).
LIFECYCLE_RTTS = 4
# Connection set-up: TCP (1 RTT), TLS 1.3 with a client certificate (1 RTT) and the HELLO
# exchange (1 RTT). The client connects afresh for every query; fresh nodes also dial
# their peer links on the first run (the pool keeps them for later queries).
SETUP_RTTS = {"first": 6, "repeated": 3}


def write_layout(fed_path: Path, root: Path) -> tuple[Path, Path]:
    """The networked federation (every party at its namespace's address) and the
    embedded one (every party ``local``) in ``root``, over the cached data; (net, local)."""
    src = fed_path.parent
    for sub in ("data", "policies"):
        (root / sub).symlink_to(src / sub, target_is_directory=True)
    text = fed_path.read_text().replace(
        "default_delta = 1e-06", f"default_delta = 1e-06\ntimeout = {QUERY_TIMEOUT}", 1)
    local = root / "federation-local.toml"
    local.write_text(text)
    out, party = [], None
    for line in text.splitlines():
        m = re.match(r'name = "(\w+)"', line)
        party = m.group(1) if m else party
        if line.strip() == 'address = "local"':
            if party not in PARTIES:
                raise RuntimeError(f"{fed_path}: address line outside a known party")
            line = f'address = "{ADDRESSES[party]}:{PORT}"'
        out.append(line)
    net = root / "federation.toml"
    net.write_text("\n".join(out) + "\n")
    return net, local


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def embedded_reference(local: Path, name: str, env: dict[str, str]) -> dict[str, Any]:
    """``embedded_main`` in a child process (so its memory is gone before the nodes run)."""
    done = subprocess.run([sys.executable, "-m", "bench.wan", "embedded", str(local), name],
                          capture_output=True, text=True, env=env, cwd=local.parent,
                          timeout=QUERY_TIMEOUT * 2)
    if done.returncode != 0:
        raise RuntimeError(f"embedded {name}: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def embedded_main(local: str, name: str) -> int:
    """First and repeated run in the embedded mode: time, rounds, payload bytes (JSON)."""
    from veilql.engine.dp import LargeEpsilonWarning

    warnings.simplefilter("ignore", LargeEpsilonWarning)
    sql = QUERIES[name]
    out: dict[str, Any] = {"load_before": load()}
    with Meter().installed() as meter:
        import veilql

        with veilql.connect(local, ANALYST) as session:
            for label in ("first", "repeated"):
                meter.reset()
                t0 = time.perf_counter()
                session.sql(sql, epsilon=EPSILON, delta=0)
                out[f"{label}_s"] = round(time.perf_counter() - t0, 4)
                out[f"rounds_{label}"] = meter.rounds()
                out[f"bytes_sent_{label}"] = meter.bytes_sent()
    out["load_after"] = load()
    print(json.dumps(out))
    return 0


class WanNodes(Nodes):
    """``bench.nodes.Nodes`` with each node in its party's namespace (``ip netns exec``
    execs, so a node's pid, whose ``wchar`` and CPU time are read, is the node's own)."""

    def __init__(self, lab: Lab, fed: Path, env: dict[str, str]) -> None:
        super().__init__(fed, env)
        self.lab = lab

    def command(self, party: str) -> list[str]:
        """``veil serve`` inside the party's namespace."""
        return self.lab.command(party, super().command(party))

    def cpu(self) -> dict[str, float]:
        """User + system CPU seconds of every node so far (all its threads)."""
        return {p: cpu_seconds(pr.pid) for p, pr in self.procs.items()}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


class Client:
    """``python -m bench.wan client`` in the analyst's namespace: one session, one query
    per ``go`` line, its time as a JSON line."""

    def __init__(self, lab: Lab, fed: Path, name: str, env: dict[str, str]) -> None:
        self.proc = lab.popen("analyst", [sys.executable, "-m", "bench.wan", "client",
                                          str(fed), name],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=env, cwd=fed.parent, bufsize=1)
        self._expect("ready")

    def _expect(self, word: str) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith(word):
            self.close()
            raise RuntimeError(f"client: expected {word!r}, got {line!r}")
        return line

    def run(self) -> float:
        """One query; its wall time at the client, seconds."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return float(json.loads(self._expect("{"))["s"])

    def close(self) -> None:
        """End the client (end of stdin, then a kill after 30 s)."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def client_main(fed: str, name: str) -> int:
    """The analyst's side: connect, then run ``QUERIES[name]`` once per ``go``."""
    import veilql
    from veilql.engine.dp import LargeEpsilonWarning

    warnings.simplefilter("ignore", LargeEpsilonWarning)
    with veilql.connect(fed, ANALYST) as session:
        print("ready", flush=True)
        for line in sys.stdin:
            if line.strip() != "go":
                break
            t0 = time.perf_counter()
            session.sql(QUERIES[name], epsilon=EPSILON, delta=0)
            print(json.dumps({"s": time.perf_counter() - t0}), flush=True)
    return 0


def bound(profile: Profile, busiest: int, rounds: dict[str, int]) -> dict[str, float]:
    """The issue's bound, busiest link / rate + rounds x RTT, and a tighter one.

    The tighter one counts what each exchange needs at least: a runtime round or a
    life-cycle exchange among the nodes, in which every party sends and then receives, one
    one-way delay; the analyst's query and release, and every set-up round trip, one RTT.
    """
    transfer = busiest / profile.bytes_per_s
    total = sum(rounds.values())
    one_way = profile.rtt_s / 2
    node_exchanges = rounds["mpc"] + rounds["lifecycle"] - 1  # all but the analyst's
    tight = transfer + node_exchanges * one_way + (1 + rounds["setup"]) * profile.rtt_s
    return {"bound_s": round(transfer + total * profile.rtt_s, 4),
            "transfer_s": round(transfer, 4), "bound_tight_s": round(tight, 4)}


def wan_query(lab: Lab, net: Path, env: dict[str, str], name: str, reps: int,
              ref: dict[str, Any]) -> dict[str, Any]:
    """First and repeated run over fresh nodes, ``reps`` times; figures and the bound."""
    runs: dict[str, list[dict[str, Any]]] = {"first": [], "repeated": []}
    for _ in range(reps):
        with WanNodes(lab, net, env) as nodes:
            client = Client(lab, net, name, env)
            try:
                for label in ("first", "repeated"):
                    lab.emu_command("reset")
                    before, cpu0, load_before = nodes.sample(), nodes.cpu(), load()
                    client0 = cpu_seconds(client.proc.pid)
                    seconds = client.run()
                    after, cpu1, wire = nodes.sample(), nodes.cpu(), lab.link_stats()
                    client_cpu = cpu_seconds(client.proc.pid) - client0
                    runs[label].append({
                        "s": round(seconds, 4), "load_before": load_before,
                        "load_after": load(),
                        "bytes_written": {p: after[p] - before[p] for p in PARTIES},
                        "cpu_s": {p: round(cpu1[p] - cpu0[p], 3) for p in PARTIES},
                        "client_cpu_s": round(client_cpu, 3),
                        "link_bytes": wire["links"], "busy_any_s": wire.get("busy_any_s"),
                        "busy_sum_s": wire.get("busy_sum_s"),
                        "timeline": wire.get("timeline")})
            finally:
                client.close()
    out: dict[str, Any] = {}
    for label, rs in runs.items():
        links = rs[0]["link_bytes"]
        busiest = max(links, key=links.__getitem__)
        rounds = {"mpc": ref[f"rounds_{label}"], "lifecycle": LIFECYCLE_RTTS,
                  "setup": SETUP_RTTS[label]}
        total_rounds = sum(rounds.values())
        b = bound(lab.profile, links[busiest], rounds)
        median = statistics.median(r["s"] for r in rs)
        out[label] = {
            "s": median, "runs": rs, "busiest_link": busiest,
            "node_cpu_max_s": max(rs[0]["cpu_s"].values()),
            "busy_any_s": rs[0]["busy_any_s"], "busy_sum_s": rs[0]["busy_sum_s"],
            "busiest_link_bytes": links[busiest], "wire_bytes_total": sum(links.values()),
            "rounds": rounds, "rounds_total": total_rounds, **b,
            "ratio": round(median / b["bound_s"], 2),
            "ratio_tight": round(median / b["bound_tight_s"], 2),
            "embedded_s": ref[f"{label}_s"],
        }
    return out


def _revision() -> dict[str, Any]:
    """The commit measured and whether the engine's files differed from it (the work tree
    is shared, so an uncommitted change to ``veilql/`` would be measured too)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists() and (root / "REVISION").exists():
        # A clean export of one commit (git archive), as the results in bench/results were.
        return {"commit": (root / "REVISION").read_text().strip(), "veilql_uncommitted": []}
    git = ["git", "-C", str(root)]
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "veilql"],
                           capture_output=True, text=True)
    return {"commit": head.stdout.strip() or None,
            "veilql_uncommitted": sorted(line[3:] for line in dirty.stdout.splitlines())}


def run(people: int, profiles: list[str], reps: int, cache: Path = CACHE) -> dict[str, Any]:
    """Every profile and query at ``people`` persons; a JSON-ready dict."""
    fed_path = federation(people, cache)
    out: dict[str, Any] = {"people": people, "reps": reps, "epsilon": EPSILON,
                           "machine": {"cpus": os.cpu_count(), "platform": sys.platform},
                           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "embedded": {}, "profiles": {}, **_revision()}
    saved = {k: os.environ.pop(k) for k in _ENV_DROP if k in os.environ}
    root = Path(tempfile.mkdtemp(prefix="veil-bench-wan-"))
    try:
        net, local = write_layout(fed_path, root)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent.parent),
                                                         env.get("PYTHONPATH")]))
        done = subprocess.run([*VEIL, "certs", "init", "-f", str(net)], capture_output=True,
                              text=True, timeout=120, env=env, cwd=root)
        if done.returncode != 0:
            raise RuntimeError(f"veil certs init failed: {done.stderr[-2000:]}")
        # The embedded mode's ledgers apart from the nodes' (<root>/ledgers).
        emb_env = {**env, "VEIL_LEDGER_DIR": str(root / "ledgers-embedded")}
        for name in NODE_QUERIES:
            out["embedded"][name] = embedded_reference(local, name, emb_env)
        for pname in profiles:
            with Lab(PROFILES[pname]) as lab:
                prof: dict[str, Any] = {"rate_mbit": lab.profile.rate_mbit,
                                        "delay_ms": lab.profile.delay_ms,
                                        "queue_bytes": lab.profile.queue_bytes(lab.mtu),
                                        "mtu": lab.mtu,
                                        "leftovers_removed": lab.leftovers,
                                        "links": lab.check_links(), "queries": {}}
                for name in NODE_QUERIES:
                    q = wan_query(lab, net, env, name, reps, out["embedded"][name])
                    for label in ("first", "repeated"):
                        q[label]["bytes_per_person"] = round(
                            q[label]["wire_bytes_total"] / people, 1)
                    prof["queries"][name] = q
                prof["emulator"] = lab.emu_command("stats")
                out["profiles"][pname] = prof
    finally:
        os.environ.update(saved)
        shutil.rmtree(root, ignore_errors=True)
    out["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return out


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f}"


def render(res: dict[str, Any]) -> str:
    """The markdown tables of one run."""
    lines = [f"# WAN benchmark, {res['people']:,} people ({res['started']} - "
             f"{res['finished']}, {res['reps']} repetition(s), medians)", "",
             f"Commit {res.get('commit')}; engine files uncommitted at the time: "
             f"{', '.join(res.get('veilql_uncommitted') or []) or 'none'}. Bound: bytes on the "
             "busiest link / rate + rounds x RTT; the tight bound, busy times and rounds are "
             "explained in bench/README.md (WAN section).", ""]
    for pname, prof in res["profiles"].items():
        lines += [f"## {pname}: {prof['rate_mbit']:g} Mbit/s, {prof['delay_ms']:g} ms one way",
                  "", "| link | ping RTT median (min-max) ms | one TCP flow Mbit/s |",
                  "| --- | --- | --- |"]
        for lk in prof["links"]:
            lines.append(f"| {lk['link']} | {lk['rtt_ms_median']} ({lk['rtt_ms_min']}-"
                         f"{lk['rtt_ms_max']}) | {lk['flow_mbit_s']} |")
        lines += ["", "| query | run | time s | bound s (time / bound) | tight bound s (time / "
                  "tight) | embedded s | node CPU s, max | links busy s: any, sum | busiest link "
                  "MB | wire MB, all links | bytes/person | rounds (mpc+life+setup) | MB "
                  "written per node | load before -> after |",
                  "|" + " --- |" * 14]
        for name, q in prof["queries"].items():
            for label in ("first", "repeated"):
                r = q[label]
                w = r["runs"][0]
                per_node = ", ".join(f"{p} {_mb(b)}" for p, b in w["bytes_written"].items())
                rd = r["rounds"]
                lines.append(
                    f"| {name} | {label} | {r['s']:.2f} | {r['bound_s']:.2f} ({r['ratio']}) "
                    f"| {r['bound_tight_s']:.2f} ({r['ratio_tight']}) | {r['embedded_s']:.2f} "
                    f"| {r['node_cpu_max_s']:.2f} | {r['busy_any_s']:.2f}, {r['busy_sum_s']:.2f} "
                    f"| {_mb(r['busiest_link_bytes'])} "
                    f"({r['busiest_link']}) | {_mb(r['wire_bytes_total'])} "
                    f"| {r['bytes_per_person']} | {r['rounds_total']} ({rd['mpc']}+"
                    f"{rd['lifecycle']}+{rd['setup']}) | {per_node} | "
                    f"{w['load_before'][0]} -> {w['load_after'][0]} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``client FED QUERY`` is the analyst's side, ``embedded
    LOCAL QUERY`` the reference run)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["client"]:
        return client_main(argv[1], argv[2])
    if argv[:1] == ["embedded"]:
        return embedded_main(argv[1], argv[2])
    ap = argparse.ArgumentParser(prog="python -m bench.wan", description=__doc__.split("\n")[0])
    ap.add_argument("--people", type=int, default=None)
    ap.add_argument("--profile", choices=["100mbit", "1gbit", "both"], default="both")
    ap.add_argument("--quick", action="store_true", help="100,000 people, one profile")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="one line of JSON")
    ap.add_argument("--cache", type=Path, default=CACHE, help="folder of generated federations")
    ap.add_argument("--out", type=Path, default=None,
                    help="also write OUT.json and OUT.md (e.g. bench/results/DATE-wan)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.wan: needs root (network namespaces, tun devices, tc)", file=sys.stderr)
        return 2
    people = args.people or (100_000 if args.quick else 1_000_000)
    profiles = (["100mbit", "1gbit"] if args.profile == "both" and not args.quick
                else ["100mbit" if args.profile == "both" else args.profile])
    res = run(people, profiles, args.reps, args.cache)
    if args.out is not None:
        args.out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(render(res))
    print(json.dumps(res, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
