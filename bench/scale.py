"""Scale: time and peak memory of the embedded mode at 10^6 and 10^7 people (issue 17).

    python -m bench.scale [--people 1000000,10000000] [--queries join,local,...]
                          [--cap-mb 12000] [--shapes] [--cli] [--json]
    python -m bench.scale --render RESULT.json   # its figures against issue 17's targets

Every figure comes from a fresh child process, one at a time (never two large runs at
once), so each peak is its own: ``VmHWM`` of the child (every party is a thread of it with
``address = "local"``), its CPU time (user and system) and wall time.

- ``generate``: ``python -m sample_data.generate --people N`` into ``bench/.data/<N>/`` (run
  only when that folder has no federation yet; its figures are then reported);
- per query: a fresh ``Session``: the first run (local SQL, sharing, join, aggregate,
  noise), then the same query again (the compute parties reuse the join's exact
  aggregates); the query runs with the default settings (``VEIL_MEMORY_MB`` unset unless
  the caller sets it) and the federation's timeout;
- ``duckdb``: the local query in plain DuckDB on the party's own file (what local mode is
  compared with), and the party's bounded local SQL alone (its floor: rows per person chosen
  with the secret seed, values clamped).

- ``--shapes``: every oracle query shape (``tests/test_oracle.py``, ``tests/test_large.py``)
  once, in one session, at the largest population (the slow 10^7 check's child);
- ``--cli``: ``veil --version``, ``--help``, ``parties``, a join and a one-party query on
  the bundled 20,000-person sample, each a fresh process timed end to end (after one
  untimed warm-up with bytecode caching on).

Every child's row carries the load average before and after it.
A child whose resident memory passes ``--cap-mb`` stops itself (a watchdog thread samples
it every 20 ms), so a run cannot starve the machine; its row then says so. On a shared
machine, compare CPU seconds as much as wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from bench.e2e import ANALYST, CACHE, EPSILON, ROOT, federation

QUERIES: dict[str, str] = {
    "join": ("SELECT COUNT(*) AS n, SUM(l.amount) AS total FROM bank.loans l "
             "JOIN insurer.policies p ON l.customer_id = p.customer_id WHERE p.open_claim = 1"),
    "cross": ("SELECT COUNT(*) AS n FROM bank.loans l JOIN insurer.policies p "
              "ON l.customer_id = p.customer_id WHERE l.amount > p.claims_amount"),
    "three_way": ("SELECT c.region, COUNT(*) AS n, SUM(l.amount) AS total FROM bank.customers c "
                  "JOIN bank.loans l ON c.customer_id = l.customer_id "
                  "JOIN payments.accounts a ON a.customer_id = c.customer_id "
                  "JOIN insurer.policies p ON p.customer_id = c.customer_id "
                  "WHERE a.monthly_txn_count > 10 AND p.open_claim = 1 GROUP BY c.region"),
    "avg_by_group": ("SELECT a.segment, COUNT(*) AS n, AVG(l.defaulted) AS rate "
                     "FROM bank.loans l JOIN payments.accounts a "
                     "ON l.customer_id = a.customer_id GROUP BY a.segment"),
    "local": ("SELECT region, COUNT(*) AS n, AVG(income) AS inc FROM bank.customers "
              "WHERE age > 40 GROUP BY region"),
}
LOCAL_PLAIN = ("SELECT region, COUNT(*) AS n, AVG(income) AS inc FROM customers "
               "WHERE age > 40 GROUP BY region")
REPEATS = 3  # repeated runs of each query (median reported)


def _status(key: str) -> float:
    """A ``/proc/self/status`` figure in MiB (e.g. ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


_RUNNING: dict[str, str] = {}  # what the child is doing, for the watchdog's report


def _watchdog(cap_mb: float) -> None:
    """Stop this process at once when its resident memory passes ``cap_mb``."""
    def watch() -> None:
        while True:
            if _status("VmRSS") > cap_mb:
                print(json.dumps({"error": f"resident memory passed the cap of {cap_mb:g} MiB",
                                  "peak_rss_mb": _status("VmHWM"), **_RUNNING}), flush=True)
                os._exit(3)
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()


def _ledger_dir() -> str:
    """A temporary ledger folder for this child, removed when it exits normally."""
    import atexit
    import shutil

    path = tempfile.mkdtemp(prefix="veil-scale-ledger-")
    atexit.register(shutil.rmtree, path, True)
    return path


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


def child_query(people: int, name: str, cap_mb: float) -> dict[str, Any]:
    """In a fresh process: the first and repeated runs of query ``name`` at ``people``."""
    import veilql
    from veilql.engine.dp import LargeEpsilonWarning

    _watchdog(cap_mb)
    fed = federation(people)
    sql = QUERIES[name]
    os.environ["VEIL_LEDGER_DIR"] = _ledger_dir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LargeEpsilonWarning)
        with veilql.connect(fed, ANALYST) as session:
            cpu0, t0 = _cpu(), time.perf_counter()
            rows = session.sql(sql, epsilon=EPSILON, delta=0).rows
            first, first_cpu = time.perf_counter() - t0, _cpu() - cpu0
            first_peak = _status("VmHWM")
            again = []
            for _ in range(REPEATS):
                t0 = time.perf_counter()
                session.sql(sql, epsilon=EPSILON, delta=0)
                again.append(time.perf_counter() - t0)
    return {"first_s": first, "first_cpu_s": first_cpu, "repeated_s": statistics.median(again),
            "peak_rss_mb_first": first_peak, "peak_rss_mb": _status("VmHWM"),
            "rows": len(rows)}


def child_sqls(people: int, path: Path, cap_mb: float) -> dict[str, Any]:
    """In a fresh process: each SQL of the JSON list at ``path`` once, in one session (what
    the slow 10^7 check of ``tests/test_large.py`` runs); per query its seconds, rows and
    the peak so far."""
    import veilql
    from veilql.engine.dp import LargeEpsilonWarning

    _watchdog(cap_mb)
    fed = federation(people)
    os.environ["VEIL_LEDGER_DIR"] = _ledger_dir()
    out: dict[str, Any] = {"queries": []}
    with warnings.catch_warnings(), veilql.connect(fed, ANALYST) as session:
        warnings.simplefilter("ignore", LargeEpsilonWarning)
        for sql in json.loads(Path(path).read_text()):
            _RUNNING["running"] = sql
            t0 = time.perf_counter()
            rows = session.sql(sql, epsilon=EPSILON, delta=1e-6).rows
            out["queries"].append({"sql": sql, "seconds": time.perf_counter() - t0,
                                   "rows": len(rows), "peak_rss_mb": _status("VmHWM")})
    out["peak_rss_mb"] = _status("VmHWM")
    return out


def child_duckdb(people: int, reps: int = 5) -> dict[str, Any]:
    """In a fresh process: the local query in plain DuckDB, and the bounded SQL alone."""
    import duckdb

    from veilql.engine.plan.nodes import SEED_PLACEHOLDER
    from veilql.engine.rewrite import compile_plan
    from veilql.policies.loader import load_federation

    fed = load_federation(federation(people))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = compile_plan(QUERIES["local"], fed, epsilon=EPSILON, delta=0)
    bounded = plan.steps[0].sql.replace(SEED_PLACEHOLDER, "0123456789abcdef" * 2)
    con = duckdb.connect(str(fed.root / "data" / "bank.duckdb"), read_only=True)

    def median(sql: str) -> float:
        times = []
        for _ in range(reps + 1):
            t0 = time.perf_counter()
            con.execute(sql).fetchall()
            times.append(time.perf_counter() - t0)
        return statistics.median(times[1:])  # the first run warms DuckDB's caches

    out = {"plain_s": median(LOCAL_PLAIN), "bounded_sql_s": median(f"SELECT COUNT(*) FROM "
                                                                   f"({bounded})")}
    con.close()
    return out


def child_generate(people: int, cap_mb: float) -> dict[str, Any]:
    """In a fresh process: generate the federation of ``people`` into the cache."""
    from sample_data.generate import generate

    _watchdog(cap_mb)
    out = CACHE / str(people)
    t0, cpu0 = time.perf_counter(), _cpu()
    generate(out, people=people, force=True)
    return {"seconds": time.perf_counter() - t0, "cpu_s": _cpu() - cpu0,
            "peak_rss_mb": _status("VmHWM")}


def child(args: list[str], timeout: float) -> dict[str, Any]:
    """Run ``python -m bench.scale --child ...``; its last line of JSON, with the load
    average before and after (other jobs on the machine slow wall times down)."""
    load = os.getloadavg()
    proc = subprocess.run([sys.executable, "-m", "bench.scale", "--child", *args],
                          capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-2000:]}"}
    return {**json.loads(lines[-1]), "load_before": load, "load_after": os.getloadavg()}


def shapes() -> list[str]:
    """Every oracle query shape (``tests/test_oracle.py``) and those of the slow 10^7 check
    (``tests/test_large.py``), in the order the slow check runs them."""
    import ast

    found: list[str] = []
    for name in ("test_oracle.py", "test_large.py"):
        tree = ast.parse((ROOT / "tests" / name).read_text())
        for node in tree.body:  # the module-level ``QUERIES = [...]`` list of literals
            if (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and getattr(node.targets[0], "id", "") == "QUERIES"):
                found.extend(ast.literal_eval(node.value))
    return list(dict.fromkeys(found))


def cli(reps: int = 5) -> dict[str, Any]:
    """Wall time of the console script, a fresh process each run (median of ``reps``, after
    one untimed warm-up that writes the bytecode cache):
    ``veil --version``, ``veil --help``, ``veil parties``, a join query and a one-party query
    on the bundled 20,000-person sample, end to end (ledgers in a temporary folder: nothing
    is spent)."""
    veil = str(Path(sys.executable).with_name("veil"))
    sql = ("SELECT COUNT(*) AS n, SUM(l.amount) AS total FROM bank.loans l "
           "JOIN insurer.policies p ON l.customer_id = p.customer_id WHERE p.open_claim = 1")
    commands = {"version": [veil, "--version"], "help": [veil, "--help"],
                "parties": [veil, "parties"],
                "sample_join_query": [veil, "query", "--analyst", "alice", "--epsilon", "0.5",
                                      sql],
                "sample_local_query": [veil, "query", "--analyst", "alice", "--epsilon", "0.5",
                                       "SELECT region, COUNT(*) AS n FROM bank.customers "
                                       "GROUP BY region"]}
    out: dict[str, Any] = {"load_before": os.getloadavg(), "warm": True}
    for key, cmd in commands.items():
        times = []
        # One untimed run first, with bytecode caching on (a user's default): a checkout
        # whose .pyc files are not written yet, or PYTHONDONTWRITEBYTECODE in the caller's
        # environment, would otherwise time compiling VeilQL's sources in every process.
        for rep in range(reps + 1):
            with tempfile.TemporaryDirectory(prefix="veil-scale-cli-") as ledgers:
                env = dict(os.environ, VEIL_LEDGER_DIR=ledgers)
                env.pop("VEIL_FEDERATION", None)
                env.pop("PYTHONDONTWRITEBYTECODE", None)
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                                      env=env, cwd=tempfile.gettempdir())
            if rep:
                times.append(time.perf_counter() - t0)
            if proc.returncode != 0:
                out[key] = {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-500:]}"}
                break
        else:
            out[key] = {"median_s": statistics.median(times), "min_s": min(times),
                        "all_s": times}
    out["load_after"] = os.getloadavg()
    return out


def run(people: list[int], queries: list[str], cap_mb: float, timeout: float = 3600,
        all_shapes: bool = False, with_cli: bool = False) -> dict[str, Any]:
    """Every figure, one child process at a time; a JSON-ready dict. ``all_shapes``: also
    every oracle query shape in one session at the largest population; ``with_cli``: the
    console script's start-up and a query on the bundled sample first."""
    out: dict[str, Any] = {"cap_mb": cap_mb, "memory_mb": os.environ.get("VEIL_MEMORY_MB"),
                           "load_before": os.getloadavg(), "people": {}}
    if with_cli:
        out["cli"] = cli()
    for n in people:
        res: dict[str, Any] = {}
        if not (CACHE / str(n) / "federation.toml").exists():
            res["generate"] = child(["generate", str(n), str(cap_mb)], timeout)
        res["duckdb"] = child(["duckdb", str(n)], timeout)
        res["queries"] = {q: child(["query", str(n), q, str(cap_mb)], timeout) for q in queries}
        local = res["queries"].get("local", {})
        if "repeated_s" in local and "plain_s" in res["duckdb"]:
            res["local_over_duckdb"] = local["repeated_s"] / res["duckdb"]["plain_s"]
            res["bounded_sql_over_duckdb"] = (res["duckdb"]["bounded_sql_s"]
                                              / res["duckdb"]["plain_s"])
        out["people"][str(n)] = res
    if all_shapes and people:
        with tempfile.TemporaryDirectory(prefix="veil-scale-shapes-") as tmp:
            listed = Path(tmp) / "queries.json"
            listed.write_text(json.dumps(shapes()))
            out["shapes"] = {"people": max(people), **child(
                ["sqls", str(max(people)), str(listed), str(cap_mb)], 2 * timeout)}
    out["load_after"] = os.getloadavg()
    return out


# Issue 17's targets (6 GB read as 6 GiB, as tests/test_large.py does).
TARGET_FIRST_JOIN_S, TARGET_REPEATED_S, TARGET_MB = 15.0, 0.3, 6144.0
TARGET_LOCAL_RATIO, TARGET_CLI_S, TARGET_SAMPLE_S = 3.0, 0.3, 1.0


def render(res: dict[str, Any]) -> str:
    """Markdown of a ``run``: every figure against its target, then the per-query table."""
    def fmt(x: Any, unit: str = "") -> str:
        return "-" if x is None else (f"{x:,.3g}{unit}" if x < 100 else f"{x:,.0f}{unit}")

    def load(row: dict[str, Any]) -> str:
        return f"{row['load_before'][0]:.1f}" if "load_before" in row else "?"

    rows: list[tuple[str, Any, str, bool | None, str]] = []
    big = str(max(int(n) for n in res["people"]))
    q = res["people"][big].get("queries", {})
    if "shapes" in res:
        sh = res["shapes"]
        ok = "error" not in sh and all(x["rows"] > 0 for x in sh.get("queries", []))
        rows.append((f"every oracle shape at {int(big):,} people, one session, default "
                     f"settings ({len(sh.get('queries', []))} queries)", "answered" if ok
                     else sh.get("error"), "all answer", ok, load(sh)))
        rows.append(("peak RSS of that session", fmt(sh.get("peak_rss_mb"), " MiB"),
                     f"<= {TARGET_MB:,.0f} MiB", (sh.get("peak_rss_mb") or 1e12) <= TARGET_MB,
                     load(sh)))
    if "join" in q and "first_s" in q["join"]:
        j = q["join"]
        rows.append((f"first join query, {int(big):,} people (CPU {j['first_cpu_s']:.1f} s)",
                     fmt(j["first_s"], " s"), f"<= {TARGET_FIRST_JOIN_S:g} s",
                     j["first_s"] <= TARGET_FIRST_JOIN_S, load(j)))
        rows.append(("repeated join query", fmt(j["repeated_s"], " s"),
                     f"<= {TARGET_REPEATED_S:g} s", j["repeated_s"] <= TARGET_REPEATED_S,
                     load(j)))
    peaks = {k: v["peak_rss_mb"] for k, v in q.items() if "peak_rss_mb" in v}
    if peaks:
        top = max(peaks, key=lambda k: peaks[k])
        rows.append((f"peak RSS, one query per process (highest: {top})",
                     fmt(peaks[top], " MiB"), f"<= {TARGET_MB:,.0f} MiB",
                     peaks[top] <= TARGET_MB, load(q[top])))
    for n, r in res["people"].items():
        if "local_over_duckdb" in r and int(n) == 1_000_000:
            rows.append((f"one-party query / plain DuckDB, {int(n):,} rows (repeated run)",
                         f"{r['local_over_duckdb']:.0f}x", f"<= {TARGET_LOCAL_RATIO:g}x",
                         r["local_over_duckdb"] <= TARGET_LOCAL_RATIO,
                         load(r["queries"]["local"])))
    for key, label, goal in (("version", "veil --version", TARGET_CLI_S),
                             ("help", "veil --help", TARGET_CLI_S),
                             ("parties", "veil parties", TARGET_CLI_S),
                             ("sample_join_query", "join query on the 20,000-person sample, "
                              "end to end", TARGET_SAMPLE_S),
                             ("sample_local_query", "one-party query on the sample, end to end",
                              TARGET_SAMPLE_S)):
        c = res.get("cli", {}).get(key, {})
        if "median_s" in c:
            rows.append((label + " (median of 5)", fmt(c["median_s"], " s"), f"< {goal:g} s",
                         c["median_s"] < goal, load(res["cli"])))
    out = ["| target | measured | goal | met | load (1 min) |", "| --- | --- | --- | --- | --- |"]
    out += [f"| {a} | {b} | {c} | {'yes' if d else 'no'} | {e} |" for a, b, c, d, e in rows]
    out += ["", "| people | query | first s | first CPU s | repeated s | peak MiB | load |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for n, r in res["people"].items():
        for name, v in r.get("queries", {}).items():
            if "first_s" in v:
                out.append(f"| {int(n):,} | {name} | {fmt(v['first_s'])} | "
                           f"{fmt(v['first_cpu_s'])} | {fmt(v['repeated_s'])} | "
                           f"{fmt(v['peak_rss_mb'])} | {load(v)} |")
            else:
                out.append(f"| {int(n):,} | {name} | {v.get('error')} | | | | |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``--child`` is the per-figure process)."""
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    ap.add_argument("--people", default="1000000,10000000")
    ap.add_argument("--queries", default=",".join(QUERIES))
    ap.add_argument("--cap-mb", type=float, default=12000.0,
                    help="resident memory at which a child stops itself (MiB)")
    ap.add_argument("--json", action="store_true", help="one line of JSON")
    ap.add_argument("--shapes", action="store_true",
                    help="also every oracle query shape in one session at the largest N")
    ap.add_argument("--cli", action="store_true",
                    help="also the console script's start-up and a query on the sample")
    ap.add_argument("--render", type=Path, help="print the markdown of a past run's JSON")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.render:
        print(render(json.loads(args.render.read_text())), end="")
        return 0
    if args.child:
        kind, n, *rest = args.child
        if kind == "query":
            res = child_query(int(n), rest[0], float(rest[1]))
        elif kind == "duckdb":
            res = child_duckdb(int(n))
        elif kind == "sqls":
            res = child_sqls(int(n), Path(rest[0]), float(rest[1]))
        else:
            res = child_generate(int(n), float(rest[0]))
        print(json.dumps(res), flush=True)
        return 0
    people = [int(x) for x in args.people.split(",") if x]
    res = run(people, [q for q in args.queries.split(",") if q], args.cap_mb,
              all_shapes=args.shapes, with_cli=args.cli)
    print(json.dumps(res, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
