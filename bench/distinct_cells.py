"""Time and peak memory of a large COUNT(DISTINCT x) across three parties in many group cells.

The distinct values are counted per cell before any noise: the (bucket, cell) counts on
shares (two one-hot digits, one matrix product), each compared with 0 on shares, the bits
summed per cell, one noisy count per cell (``operators/histogram.py``). Three data parties,
``people`` persons each (one row per person; p2 and p3 hold 9 in 10 of p1's), four group
columns of ``side`` public values each (p1: ``g1`` beside ``x``; p2: ``g2`` and ``g3``;
p3: ``g4``): ``side^4`` cells. All parties in one process (``address = "local"``); each
configuration runs in a fresh subprocess, one at a time, and prints its wall time, peak RSS
(``ru_maxrss``) and whether the answer at a huge epsilon equals DuckDB's on the union.

    .venv/bin/python bench/distinct_cells.py [--buckets 10001 100000] [--side 4]
                                             [--people 300]
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
name = "distinct-cells"
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
SQL = ("SELECT a.g1, b.g2, b.g3, c.g4, COUNT(DISTINCT a.x) AS k, COUNT(*) AS n "
       "FROM p1.t a JOIN p2.u b ON a.id = b.id JOIN p3.v c ON a.id = c.id "
       "GROUP BY 1, 2, 3, 4")


def build(root: Path, buckets: int, side: int, people: int) -> Path:
    """The federation under ``root`` (module docstring)."""
    import duckdb

    (root / "data").mkdir(parents=True)
    (root / "policies").mkdir()
    (root / "federation.toml").write_text(FEDERATION)
    values = ", ".join(str(v) for v in range(side))
    group = f'{{{{ role = "group", values = [{values}] }}}}'
    for party, table, cols in (
            ("p1", "t", {"g1": "i % {s}", "x": f"CASE WHEN i % 17 = 0 THEN NULL ELSE "
                                               f"(i * 7919) % {buckets} END"}),
            ("p2", "u", {"g2": "(i // {s}) % {s}", "g3": "(i // ({s} * {s})) % {s}"}),
            ("p3", "v", {"g4": "(i // ({s} * {s} * {s})) % {s}"})):
        lines = [f'[tables.{table}]', 'privacy_unit = "id"', 'max_rows_per_unit = 1', '',
                 f'[tables.{table}.columns]', 'id = { role = "key" }']
        for name in cols:
            lines.append(f"{name} = " + (f'{{ role = "value", bounds = [0, {buckets - 1}] }}'
                                         if name == "x" else group.format()))
        (root / "policies" / f"{party}.toml").write_text("\n".join(lines) + "\n")
        con = duckdb.connect(str(root / "data" / f"{party}.duckdb"))
        where = "" if party == "p1" else "WHERE i % 10 <> 0"
        select = ", ".join(f"({sql.format(s=side)})::BIGINT AS {name}"
                           for name, sql in cols.items())
        con.execute(f"CREATE TABLE {table} AS SELECT i AS id, {select} "
                    f"FROM range(1, {people + 1}) r(i) {where}")
        con.close()
    return root / "federation.toml"


def one(buckets: int, side: int, people: int) -> dict[str, object]:
    """Run the query once in this process; its wall time, peak RSS and exactness."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from oracle import HUGE_EPSILON, plain, union_connection

    import veilql

    with tempfile.TemporaryDirectory() as tmp:
        fed = build(Path(tmp) / "fed", buckets, side, people)
        with veilql.connect(fed, "bench") as session, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            got = session.sql(SQL, epsilon=HUGE_EPSILON, delta=1e-6).rows
            wall = time.perf_counter() - start
            want = plain(union_connection(session.federation), SQL)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # DuckDB lists only the cells that hold rows; VeilQL releases every public cell
    held = sorted([list(r) for r in got if r[-1] != 0])
    return {"buckets": buckets, "cells": side ** 4, "people": people,
            "seconds": round(wall, 1), "peak_mib": round(peak),
            "exact": held == sorted([list(r) for r in want]),
            "cells_with_rows": len(held)}


def main() -> None:
    """Each configuration in its own subprocess, one after the other."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buckets", type=int, nargs="+", default=[10001, 100000])
    parser.add_argument("--side", type=int, nargs="+", default=[4])
    parser.add_argument("--people", type=int, default=300)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.buckets[0], args.side[0], args.people)))
        return
    for buckets in args.buckets:
        for side in args.side:
            out = subprocess.run([sys.executable, __file__, "--one", "--buckets", str(buckets),
                                  "--side", str(side), "--people", str(args.people)],
                                 capture_output=True, text=True, timeout=3600, check=False)
            lines = out.stdout.strip().splitlines()
            print(lines[-1] if lines else
                  f"{buckets} x {side ** 4}: failed: {out.stderr[-2000:]}", flush=True)


if __name__ == "__main__":
    main()
