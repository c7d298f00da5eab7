"""End to end: VeilQL queries over the sample federation beside plain DuckDB on the union.

    python -m bench.e2e --people 100000 [--reps 3] [--json]

The federation comes from ``sample_data.generate`` (cached in ``bench/.data/<N>/``) with
one more analyst, ``bench``, whose budget never runs out; ledgers go to a temporary
``VEIL_LEDGER_DIR`` so no real budget is spent. For each query in ``QUERIES``:

- **first run**: a fresh ``Session`` (nothing cached: local SQL, sharing, join, aggregate,
  noise, ledger), median over ``reps`` fresh sessions;
- **repeated run**: the same query again on the last of those sessions (the compute
  parties reuse the joined shares), median over ``reps``;
- **DuckDB**: the same SQL on one DuckDB holding every party's tables (the trusted union
  the parties will not build), median over ``reps``; the ratios are VeilQL / DuckDB.

Resources per query: bytes each party sent and rounds each compute party ran (read from
the in-process network and the runtimes, which this module wraps while it runs), and
the peak resident memory of this process (every party is a thread of it with
``address = "local"``). ``run.py`` runs each N in its own process so peaks do not mix.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

import veilql
import veilql.engine.node as node_module
import veilql.engine.session as session_module
from veilql.connectors.base import open_connector
from veilql.engine.dp import LargeEpsilonWarning
from veilql.engine.mpc.runtime import Runtime
from veilql.engine.transport.inprocess import InProcessNetwork
from veilql.policies.loader import load_federation
from veilql.policies.model import Federation

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".data"
ANALYST = "bench"
EPSILON = 1.0  # the cost asked of every query; the figures do not depend on it

QUERIES: dict[str, str] = {
    "join_filter_sum": (
        "SELECT COUNT(*) AS n, SUM(l.amount) AS total FROM bank.loans l "
        "JOIN insurer.policies p ON l.customer_id = p.customer_id WHERE p.open_claim = 1"),
    "cross_party_predicate": (
        "SELECT COUNT(*) AS n FROM bank.loans l JOIN insurer.policies p "
        "ON l.customer_id = p.customer_id WHERE l.amount > p.claims_amount"),
    "three_way_group_by": (
        "SELECT c.region, COUNT(*) AS n, SUM(l.amount) AS total FROM bank.customers c "
        "JOIN bank.loans l ON c.customer_id = l.customer_id "
        "JOIN payments.accounts a ON a.customer_id = c.customer_id "
        "JOIN insurer.policies p ON p.customer_id = c.customer_id "
        "WHERE a.monthly_txn_count > 10 AND p.open_claim = 1 GROUP BY c.region"),
    "avg_by_group": (
        "SELECT a.segment, COUNT(*) AS n, AVG(l.defaulted) AS rate FROM bank.loans l "
        "JOIN payments.accounts a ON l.customer_id = a.customer_id GROUP BY a.segment"),
    "single_party_group_by": (
        "SELECT region, COUNT(*) AS n, AVG(income) AS inc FROM bank.customers "
        "WHERE age > 40 GROUP BY region"),
}


def federation(people: int, cache: Path = CACHE) -> Path:
    """The sample federation for ``people`` persons, generated once into the cache, with
    the benchmark analyst ``bench`` (an effectively unlimited budget) added."""
    from sample_data.generate import generate

    out = cache / str(people)
    fed = out / "federation.toml"
    if not fed.exists():
        generate(out, people=people, force=True)
    text = fed.read_text()
    if f"[analyst.{ANALYST}]" not in text:
        fed.write_text(text + f"\n[analyst.{ANALYST}]\nepsilon = 1e15\ndelta = 0.5\n")
    return fed


def union_connection(fed: Federation) -> duckdb.DuckDBPyConnection:
    """One in-memory DuckDB with every party's tables as ``party.table`` (the trusted union)."""
    con = duckdb.connect()
    for party in fed.parties:
        con.execute(f'CREATE SCHEMA "{party.name}"')
        conn = open_connector(party.connector, fed.root)
        for table in conn.catalog():
            con.register("__src", conn.run(f'SELECT * FROM "{table}"'))
            con.execute(f'CREATE TABLE "{party.name}"."{table}" AS SELECT * FROM __src')
            con.unregister("__src")
        conn.close()
    return con


class Meter:
    """Bytes each party sent and rounds each compute party ran, over the queries it sees.

    It wraps the in-process network the session builds per query and the runtimes the
    nodes build (benchmark-only instrumentation: the engine is not changed).
    """

    def __init__(self) -> None:
        self.networks: list[InProcessNetwork] = []
        self.runtimes: list[Runtime] = []

    def reset(self) -> None:
        """Forget what was seen so far."""
        self.networks.clear()
        self.runtimes.clear()

    def bytes_sent(self) -> dict[str, int]:
        """Bytes sent per party (and by the analyst) since the last reset."""
        out: dict[str, int] = {}
        for net in self.networks:
            for p, b in net.bytes_sent.items():
                out[p] = out.get(p, 0) + b
        return out

    def rounds(self) -> int:
        """Largest number of rounds any compute party ran since the last reset."""
        return max((rt.rounds for rt in self.runtimes), default=0)

    @contextmanager
    def installed(self) -> Iterator[Meter]:
        """Wrap the session's network and the nodes' runtime class while inside."""
        meter = self

        class CountingNetwork(InProcessNetwork):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                meter.networks.append(self)

        class CountingRuntime(Runtime):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                meter.runtimes.append(self)

        saved = session_module.InProcessNetwork, node_module.Runtime
        session_module.InProcessNetwork = CountingNetwork  # type: ignore[misc]
        node_module.Runtime = CountingRuntime  # type: ignore[misc]
        try:
            yield self
        finally:
            session_module.InProcessNetwork, node_module.Runtime = saved  # type: ignore[misc]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB.

    Linux's ``VmHWM`` belongs to the process image: unlike ``ru_maxrss``, which a child
    started by fork + exec inherits from its parent, it starts afresh in every process.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench_query(fed_path: Path, con: duckdb.DuckDBPyConnection, sql: str, reps: int,
                meter: Meter) -> dict[str, Any]:
    """First run (fresh sessions), repeated run (same session) and DuckDB for one query."""
    first: list[float] = []
    repeated: list[float] = []
    session = None
    traffic: dict[str, int] = {}
    rounds = 0
    for i in range(reps):
        if session is not None:
            session.close()
        session = veilql.connect(fed_path, ANALYST)
        meter.reset()
        t, _ = _timed(lambda s=session: s.sql(sql, epsilon=EPSILON, delta=0))
        first.append(t)
        if i == 0:
            traffic, rounds = meter.bytes_sent(), meter.rounds()
    assert session is not None
    meter.reset()
    for _ in range(reps):
        t, _ = _timed(lambda: session.sql(sql, epsilon=EPSILON, delta=0))
        repeated.append(t)
    again_traffic = {p: b // reps for p, b in meter.bytes_sent().items()}
    again_rounds = meter.rounds()
    session.close()
    duck = []
    for _ in range(reps + 1):
        t, rows = _timed(lambda: con.execute(sql).fetchall())
        duck.append(t)
    duck_s = statistics.median(duck[1:])  # the first DuckDB run warms its caches
    f, r = statistics.median(first), statistics.median(repeated)
    return {
        "first_s": f, "repeated_s": r, "duckdb_s": duck_s,
        "ratio_first": f / duck_s, "ratio_repeated": r / duck_s,
        "first_runs": first, "repeated_runs": repeated,
        "bytes_sent_first": traffic, "rounds_first": rounds,
        "bytes_sent_repeated": again_traffic, "rounds_repeated": again_rounds,
    }


def run(people: int, reps: int = 3, queries: dict[str, str] | None = None,
        cache: Path = CACHE) -> dict[str, Any]:
    """Every query at ``people`` persons; a JSON-ready dict."""
    fed_path = federation(people, cache)
    queries = QUERIES if queries is None else queries
    out: dict[str, Any] = {"people": people, "reps": reps, "epsilon": EPSILON,
                           "analyst": ANALYST, "queries": {}}
    with tempfile.TemporaryDirectory(prefix="veil-bench-ledger-") as ledger_dir, \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", LargeEpsilonWarning)
        saved = os.environ.get("VEIL_LEDGER_DIR")
        os.environ["VEIL_LEDGER_DIR"] = ledger_dir
        try:
            fed = load_federation(fed_path)
            out["rows"] = {}
            t, con = _timed(lambda: union_connection(fed))
            out["duckdb_load_s"] = t
            for party in fed.parties:
                for (table,) in con.execute(
                        "SELECT table_name FROM information_schema.tables "
                        f"WHERE table_schema = '{party.name}'").fetchall():
                    out["rows"][f"{party.name}.{table}"] = con.execute(
                        f'SELECT COUNT(*) FROM "{party.name}"."{table}"').fetchone()[0]
            with Meter().installed() as meter:
                for name, sql in queries.items():
                    out["queries"][name] = {"sql": sql, **bench_query(fed_path, con, sql, reps,
                                                                        meter)}
            con.close()
        finally:
            if saved is None:
                os.environ.pop("VEIL_LEDGER_DIR", None)
            else:
                os.environ["VEIL_LEDGER_DIR"] = saved
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: print the figures as JSON."""
    ap = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.split("\n")[0])
    ap.add_argument("--people", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated query names")
    ap.add_argument("--json", action="store_true", help="one line of JSON")
    ap.add_argument("--cache", type=Path, default=CACHE, help="folder of generated federations")
    args = ap.parse_args(argv)
    queries = {k: v for k, v in QUERIES.items() if not args.only or k in args.only.split(",")}
    res = run(args.people, args.reps, queries, args.cache)
    print(json.dumps(res, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
