"""One-party queries against plain DuckDB on the same table file (issue 17, item 2).

    python -m bench.local_speed [--people 1000000] [--reps 9] [--json]

Target: a query that reads one party only runs within 3x of plain DuckDB at 10^6 rows.
Two copies of the bank's data at ``--people`` (``bench/.data/<N>/``, generated once by
``bench.e2e.federation``) are measured:

- ``bounded``: the sample as generated (no constraint on ``customer_id``), so the party's
  local SQL bounds rows per person with the scan for over-full units;
- ``pk``: the same rows in a copy of ``bank.duckdb`` whose ``customers`` table declares
  ``customer_id`` its PRIMARY KEY and whose ``loans`` table numbers each person's loans in
  a slot column the engine bounds (``slot INTEGER NOT NULL CHECK (slot BETWEEN 1 AND 3)``,
  ``UNIQUE (customer_id, slot)``; three is the policy's ``max_rows_per_unit``)
  (``bench/.data/<N>-keyed/``), so the party reads both without that scan
  (``operators/local.py`` ``with_engine_facts``; commits before 70ab03b still scan loans).

Per federation and query: one ``Session``, one untimed run, then ``--reps`` runs of the
VeilQL query and of the plain aggregate on a DuckDB connection to the same file (opened
with the connector's settings, so both share one database instance and its cache),
alternating, so that both see the same load. Medians of wall time and of the process's
CPU time (every thread: DuckDB's and the parties'), their ratios and the load average
(1 min) before and after are reported. The machine may be shared: compare ratios taken
in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from bench.e2e import ANALYST, CACHE, federation

EPSILON = 1e6  # the figures do not depend on it; a huge epsilon keeps the noise small
QUERIES: dict[str, tuple[str, str]] = {  # name: (VeilQL, plain DuckDB on the bank's file)
    "count_by_region": ("SELECT region, COUNT(*) AS n FROM bank.customers GROUP BY region",
                        "SELECT region, COUNT(*) AS n FROM customers GROUP BY region"),
    "count_avg_where": ("SELECT region, COUNT(*) AS n, AVG(income) AS inc FROM bank.customers "
                        "WHERE age > 40 GROUP BY region",
                        "SELECT region, COUNT(*) AS n, AVG(income) AS inc FROM customers "
                        "WHERE age > 40 GROUP BY region"),
    "sum_by_region": ("SELECT region, SUM(income) AS total FROM bank.customers GROUP BY region",
                      "SELECT region, SUM(income) AS total FROM customers GROUP BY region"),
    "loans_sum_by_term": ("SELECT term_months, SUM(amount) AS s FROM bank.loans "
                          "GROUP BY term_months",
                          "SELECT term_months, SUM(amount) AS s FROM loans GROUP BY term_months"),
}
# The connector's settings (connectors/duckdb.py): a second connection to the same file
# in one process must use the same ones.
_CONFIG = {"autoinstall_known_extensions": False, "autoload_known_extensions": False,
           "enable_external_access": False, "lock_configuration": True}


def pk_federation(people: int) -> Path:
    """A copy of the federation at ``people`` whose bank file declares
    ``customers.customer_id`` a PRIMARY KEY and bounds ``loans`` to three rows per person by
    a slot column (same rows otherwise; other parties' data linked)."""
    import duckdb

    src = federation(people).parent
    out = CACHE / f"{people}-keyed"
    fed = out / "federation.toml"
    if fed.exists():
        return fed
    tmp = Path(tempfile.mkdtemp(prefix=f"{people}-pk-", dir=CACHE))
    shutil.copytree(src / "policies", tmp / "policies")
    shutil.copy(src / "federation.toml", tmp / "federation.toml")
    (tmp / "data").mkdir()
    for item in (src / "data").iterdir():
        if item.name != "bank.duckdb":
            (tmp / "data" / item.name).symlink_to(item.resolve())
    con = duckdb.connect(str(tmp / "data" / "bank.duckdb"))
    try:
        con.execute(f"ATTACH '{src / 'data' / 'bank.duckdb'}' AS src (READ_ONLY)")
        for (table,) in con.execute("SELECT table_name FROM duckdb_tables() "
                                    "WHERE database_name = 'src'").fetchall():
            if table == "customers":
                cols = con.execute("SELECT column_name, data_type FROM duckdb_columns() "
                                   "WHERE database_name = 'src' AND table_name = 'customers' "
                                   "ORDER BY column_index").fetchall()
                body = ", ".join(f"{c} {t}" + (" PRIMARY KEY" if c == "customer_id" else "")
                                 for c, t in cols)
                con.execute(f"CREATE TABLE customers ({body})")
                con.execute("INSERT INTO customers SELECT * FROM src.customers")
            elif table == "loans":
                cols = con.execute("SELECT column_name, data_type FROM duckdb_columns() "
                                   "WHERE database_name = 'src' AND table_name = 'loans' "
                                   "ORDER BY column_index").fetchall()
                body = ", ".join(f"{c} {t}" for c, t in cols)
                con.execute(f"CREATE TABLE loans ({body}, slot INTEGER NOT NULL CHECK "
                            "(slot BETWEEN 1 AND 3), UNIQUE (customer_id, slot))")
                # A person with a fourth loan would fail the CHECK: the copy is refused.
                con.execute("INSERT INTO loans SELECT *, ROW_NUMBER() OVER (PARTITION BY "
                            "customer_id ORDER BY loan_id) FROM src.loans")
            else:
                con.execute(f"CREATE TABLE {table} AS SELECT * FROM src.{table}")
        con.execute("DETACH src")
    finally:
        con.close()
    tmp.rename(out)
    return fed


def measure(fed: Path, reps: int, queries: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """Per query: median seconds of the VeilQL query and of plain DuckDB, and their ratio."""
    import duckdb

    import veilql
    from veilql.engine.dp import LargeEpsilonWarning

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="veil-local-speed-") as ledgers, \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", LargeEpsilonWarning)
        os.environ["VEIL_LEDGER_DIR"] = ledgers
        with veilql.connect(fed, ANALYST) as session:
            session.sql(next(iter(queries.values()))[0], epsilon=EPSILON, delta=0)  # opens
            con = duckdb.connect(str(fed.parent / "data" / "bank.duckdb"), read_only=True,
                                 config=_CONFIG)
            try:
                for name, (sql, plain) in queries.items():
                    load = os.getloadavg()[0]
                    session.sql(sql, epsilon=EPSILON, delta=0)  # untimed: plan, caches
                    con.execute(plain).fetchall()
                    veil, duck, veil_cpu, duck_cpu = [], [], [], []
                    for _ in range(reps):
                        c0, t0 = time.process_time(), time.perf_counter()
                        session.sql(sql, epsilon=EPSILON, delta=0)
                        veil.append(time.perf_counter() - t0)
                        veil_cpu.append(time.process_time() - c0)
                        c0, t0 = time.process_time(), time.perf_counter()
                        con.execute(plain).fetchall()
                        duck.append(time.perf_counter() - t0)
                        duck_cpu.append(time.process_time() - c0)
                    v, d = statistics.median(veil), statistics.median(duck)
                    vc, dc = statistics.median(veil_cpu), statistics.median(duck_cpu)
                    out[name] = {"veil_s": v, "plain_s": d, "ratio": v / d,
                                 "veil_cpu_s": vc, "plain_cpu_s": dc,
                                 "cpu_ratio": vc / dc if dc else None,
                                 "veil_all_s": veil, "plain_all_s": duck,
                                 "load_before": load, "load_after": os.getloadavg()[0]}
            finally:
                con.close()
    return out


def render(res: dict[str, Any]) -> str:
    """Markdown table of a ``run``."""
    rows = ["| data | query | VeilQL median s | plain DuckDB median s | ratio | VeilQL CPU ms "
            "| plain CPU ms | CPU ratio | load |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for kind, queries in res["federations"].items():
        for name, r in queries.items():
            cpu = f"{r['cpu_ratio']:.1f}x" if r.get("cpu_ratio") else "-"
            rows.append(f"| {kind} | {name} | {r['veil_s']:.4f} | {r['plain_s']:.4f} | "
                        f"{r['ratio']:.1f}x | {1e3 * r['veil_cpu_s']:.1f} | "
                        f"{1e3 * r['plain_cpu_s']:.1f} | {cpu} | "
                        f"{r['load_before']:.1f}-{r['load_after']:.1f} |")
    return "\n".join(rows) + "\n"


def run(people: int, reps: int, kinds: list[str]) -> dict[str, Any]:
    """Every figure, as a JSON-ready dict."""
    feds = {"bounded": lambda: federation(people), "pk": lambda: pk_federation(people)}
    res: dict[str, Any] = {"people": people, "reps": reps, "epsilon": EPSILON,
                           "python": sys.version.split()[0], "federations": {}}
    for kind in kinds:
        res["federations"][kind] = measure(feds[kind](), reps, QUERIES)
    return res


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m bench.local_speed",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--people", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=9, help="timed runs per query (>= 7)")
    ap.add_argument("--only", default="pk,bounded", help="which copies: pk, bounded")
    ap.add_argument("--json", action="store_true", help="one line of JSON after the table")
    args = ap.parse_args(argv)
    res = run(args.people, max(7, args.reps), [k for k in args.only.split(",") if k])
    print(render(res), end="")
    if args.json:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
