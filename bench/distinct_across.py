"""Time and peak memory of a large COUNT(DISTINCT x) across parties (issue #14 item 2).

Two data parties (``p1`` owns ``x``, ``p2`` a value summed beside it) and a third compute
party with a small table of its own, one row per person everywhere, all in one process
(``address = "local"``). Each configuration (buckets x rows) runs in a fresh subprocess
(one at a time), which prints its wall time, its peak RSS (``ru_maxrss``) and whether the
answer at a huge epsilon equals DuckDB's on the union.

    .venv/bin/python bench/distinct_across.py [--buckets 10001 100000] [--rows 1000 100000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

FEDERATION = """\
[federation]
name = "distinct-across"
policies = "policies"

[[party]]
name = "p1"
address = "local"
connector = "duckdb:data/p1.duckdb"

[[party]]
name = "p2"
address = "local"
connector = "duckdb:data/p2.duckdb"

[[party]]
name = "p3"
address = "local"
connector = "duckdb:data/p3.duckdb"

[analyst.bench]
epsilon = 1e15
delta = 0.5
"""
SQL = ("SELECT COUNT(DISTINCT a.x) AS k, COUNT(*) AS n, SUM(b.y) AS s "
       "FROM p1.t a JOIN p2.u b ON a.id = b.id")


def build(root: Path, buckets: int, rows: int) -> Path:
    """The federation under ``root``: ``rows`` people at p1 and p2 (p2 holds 9 in 10 of
    them), ``x`` in [0, buckets - 1] with repeats and NULLs."""
    import duckdb

    (root / "data").mkdir(parents=True)
    (root / "policies").mkdir()
    (root / "federation.toml").write_text(FEDERATION)
    policy = ('[tables.{t}]\nprivacy_unit = "id"\nmax_rows_per_unit = 1\n\n'
              '[tables.{t}.columns]\nid = {{ role = "key" }}\n{col} = {{ role = "value", '
              'bounds = [0, {hi}] }}\n')
    for party, table, col, hi, expr in (
            ("p1", "t", "x", buckets - 1,
             f"CASE WHEN i % 17 = 0 THEN NULL ELSE (i * 7919) % {buckets} END"),
            ("p2", "u", "y", 20, "i % 21"), ("p3", "v", "z", 5, "i % 6")):
        (root / "policies" / f"{party}.toml").write_text(
            policy.format(t=table, col=col, hi=hi))
        con = duckdb.connect(str(root / "data" / f"{party}.duckdb"))
        where = "WHERE i % 10 <> 0" if party == "p2" else ""
        con.execute(f"CREATE TABLE {table} AS SELECT i AS id, ({expr})::BIGINT AS {col} "
                    f"FROM range(1, {rows + 1}) r(i) {where}")
        con.close()
    return root / "federation.toml"


def one(buckets: int, rows: int) -> dict[str, object]:
    """Run the query once in this process; its wall time, peak RSS and exactness."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from oracle import HUGE_EPSILON, plain, union_connection

    import veilql

    with tempfile.TemporaryDirectory() as tmp:
        fed = build(Path(tmp) / "fed", buckets, rows)
        with veilql.connect(fed, "bench") as session, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            got = session.sql(SQL, epsilon=HUGE_EPSILON, delta=1e-6).rows
            wall = time.perf_counter() - start
            want = plain(union_connection(session.federation), SQL)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"buckets": buckets, "rows": rows, "seconds": round(wall, 1),
            "peak_mib": round(peak), "exact": [list(r) for r in got] == [list(r) for r in want],
            "answer": [list(r) for r in got]}


def main() -> None:
    """Each configuration in its own subprocess, one after the other."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buckets", type=int, nargs="+", default=[10001, 100000])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 100000])
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.buckets[0], args.rows[0])))
        return
    for buckets in args.buckets:
        for rows in args.rows:
            out = subprocess.run([sys.executable, __file__, "--one", "--buckets", str(buckets),
                                  "--rows", str(rows)], capture_output=True, text=True,
                                 timeout=3600, check=False)
            lines = out.stdout.strip().splitlines()
            print(lines[-1] if lines else f"{buckets} x {rows}: failed: {out.stderr[-2000:]}",
                  flush=True)


if __name__ == "__main__":
    main()
