"""Scale: time and peak memory of the embedded mode at 10^6 and 10^7 people (issue 17).

    python -m bench.scale [--people 1000000,10000000] [--queries join,local,...]
                          [--cap-mb 12000] [--json]

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

from bench.e2e import ANALYST, CACHE, EPSILON, federation

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
    os.environ["VEIL_LEDGER_DIR"] = tempfile.mkdtemp(prefix="veil-scale-ledger-")
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
    os.environ["VEIL_LEDGER_DIR"] = tempfile.mkdtemp(prefix="veil-scale-ledger-")
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
    """Run ``python -m bench.scale --child ...``; its last line of JSON."""
    proc = subprocess.run([sys.executable, "-m", "bench.scale", "--child", *args],
                          capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-2000:]}"}
    return json.loads(lines[-1])


def run(people: list[int], queries: list[str], cap_mb: float,
        timeout: float = 3600) -> dict[str, Any]:
    """Every figure, one child process at a time; a JSON-ready dict."""
    out: dict[str, Any] = {"cap_mb": cap_mb, "memory_mb": os.environ.get("VEIL_MEMORY_MB"),
                           "load_before": os.getloadavg(), "people": {}}
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
    out["load_after"] = os.getloadavg()
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``--child`` is the per-figure process)."""
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    ap.add_argument("--people", default="1000000,10000000")
    ap.add_argument("--queries", default=",".join(QUERIES))
    ap.add_argument("--cap-mb", type=float, default=12000.0,
                    help="resident memory at which a child stops itself (MiB)")
    ap.add_argument("--json", action="store_true", help="one line of JSON")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
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
    res = run(people, [q for q in args.queries.split(",") if q], args.cap_mb)
    print(json.dumps(res, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
