"""Accuracy at equal privacy spend: VeilQL beside smartnoise-sql on one party's table.

    python -m bench.accuracy --people 100000 --runs 200

The query is COUNT and SUM by a public group on one party's table, one row per person:
``SELECT region, COUNT(*) AS n, SUM(age) AS s FROM bank.customers GROUP BY region``
(``age`` clamped to its declared bounds [18, 100]). Both engines release the two
aggregates for every group; the error of one released value is its difference from the
exact answer computed in DuckDB, and RMSE pools every group and run.

Privacy spent, exactly, per query (pure epsilon-DP, delta = 0, add/remove one person):

- VeilQL at ``epsilon = E`` charges E in total: E/2 to COUNT (discrete Laplace, scale
  2/E) and E/2 to SUM (sensitivity max(|18|, |100|) = 100, scale 200/E); both are added
  by the one party, which may see its own aggregates (``plan (local)`` in explain).
- smartnoise-sql's ``Privacy(epsilon=e)`` is per measurement; with public groups
  (``censor_dims = false``) the query makes two, so e = E/2; ``get_privacy_cost``
  confirms the total (its delta is the float rounding of 0).

smartnoise-sql 1.0.10 needs OpenDP 0.14, so it runs in its own virtual environment
(``bench/.venv-smartnoise``) as a subprocess (``bench/smartnoise_worker.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import duckdb

import veilql
from bench.e2e import ANALYST, CACHE, ROOT, federation
from veilql.engine.dp import LargeEpsilonWarning

SQL = "SELECT region, COUNT(*) AS n, SUM(age) AS s FROM bank.customers GROUP BY region"
SMARTNOISE_PYTHON = ROOT / "bench" / ".venv-smartnoise" / "bin" / "python"
WORKER = ROOT / "bench" / "smartnoise_worker.py"


def smartnoise_available() -> bool:
    """Whether the smartnoise-sql virtual environment exists."""
    return SMARTNOISE_PYTHON.exists()


def _table_path(fed_dir: Path) -> Path:
    return fed_dir / "data" / "bank.duckdb"


def truth(fed_dir: Path) -> dict[str, tuple[int, int]]:
    """Exact COUNT and SUM(clamped age) per region, from the bank's own DuckDB file."""
    con = duckdb.connect(str(_table_path(fed_dir)), read_only=True)
    rows = con.execute("SELECT region, COUNT(*), SUM(LEAST(GREATEST(age, 18), 100)) "
                       "FROM customers GROUP BY region").fetchall()
    con.close()
    return {r: (int(n), int(s)) for r, n, s in rows}


def rmse(errors: list[float]) -> float:
    """Root mean square of ``errors``.

    >>> rmse([3.0, -4.0])
    3.5355339059327378
    """
    return math.sqrt(sum(e * e for e in errors) / len(errors))


def _score(runs: list[list[list[Any]]], exact: dict[str, tuple[int, int]]) -> dict[str, float]:
    """Pooled RMSE of COUNT and SUM over every group and run."""
    count_err: list[float] = []
    sum_err: list[float] = []
    for rows in runs:
        got = {str(r[0]): (float(r[1]), float(r[2])) for r in rows}
        for region, (n, s) in exact.items():
            if region in got:  # public groups: every region is always released
                count_err.append(got[region][0] - n)
                sum_err.append(got[region][1] - s)
    return {"rmse_count": rmse(count_err), "rmse_sum": rmse(sum_err),
            "values_scored": len(count_err)}


def veilql_runs(fed_path: Path, epsilon: float, runs: int) -> dict[str, Any]:
    """Run the query ``runs`` times on one session; released rows and the exact cost."""
    out: list[list[list[Any]]] = []
    with tempfile.TemporaryDirectory(prefix="veil-bench-acc-") as ledger_dir, \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", LargeEpsilonWarning)
        saved = os.environ.get("VEIL_LEDGER_DIR")
        os.environ["VEIL_LEDGER_DIR"] = ledger_dir
        try:
            with veilql.connect(fed_path, ANALYST) as session:
                plan = session.plan(SQL, epsilon=epsilon, delta=0)
                noise = [{"aggregate": a.name, "mechanism": a.noise.mechanism,
                          "scale": float(a.noise.scale), "epsilon": float(a.noise.epsilon)}
                         for a in plan.aggregates]
                t0 = time.perf_counter()
                for _ in range(runs):
                    res = session.sql(SQL, epsilon=epsilon, delta=0)
                    out.append([list(r) for r in res.rows])
                seconds = (time.perf_counter() - t0) / runs
                spent = session.budget(("bank",))["bank"]
        finally:
            if saved is None:
                os.environ.pop("VEIL_LEDGER_DIR", None)
            else:
                os.environ["VEIL_LEDGER_DIR"] = saved
    return {"runs": out, "privacy_per_query": {"epsilon": float(plan.epsilon),
                                               "delta": float(plan.delta)},
            "ledger_epsilon_spent_total": spent["epsilon_spent"], "noise": noise,
            "seconds_per_query": seconds, "mode": plan.mode}


def smartnoise_runs(fed_dir: Path, epsilon: float, runs: int) -> dict[str, Any]:
    """Run the query ``runs`` times in smartnoise-sql at a total spend of ``epsilon``."""
    with tempfile.TemporaryDirectory(prefix="veil-bench-sn-") as tmp:
        csv = Path(tmp) / "customers.csv"
        con = duckdb.connect(str(_table_path(fed_dir)), read_only=True)
        con.execute(f"COPY (SELECT customer_id, region, age FROM customers) TO '{csv}' (HEADER)")
        con.close()
        job = {
            "csv": str(csv), "sql": SQL, "runs": runs,
            "epsilon": epsilon / 2, "delta": 0.0,  # per measurement; two measurements
            "metadata": {"Collection": {"bank": {"customers": {
                "row_privacy": False, "max_ids": 1, "censor_dims": False,
                "customer_id": {"type": "int", "private_id": True},
                "region": {"type": "string"},
                "age": {"type": "int", "lower": 18, "upper": 100},
            }}}},
        }
        proc = subprocess.run([str(SMARTNOISE_PYTHON), str(WORKER)], input=json.dumps(job),
                              capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"smartnoise-sql worker failed: {proc.stderr[-2000:]}")
    res = json.loads(proc.stdout)
    res["epsilon_per_measurement"] = epsilon / 2
    return res


def run(people: int, runs: int, epsilon: float = 1.0, peers: bool = True,
        cache: Path = CACHE) -> dict[str, Any]:
    """RMSE of both engines at total spend ``epsilon``; a JSON-ready dict."""
    fed_path = federation(people, cache)
    exact = truth(fed_path.parent)
    v = veilql_runs(fed_path, epsilon, runs)
    out: dict[str, Any] = {"people": people, "runs": runs, "sql": SQL,
                           "total_epsilon": epsilon, "total_delta": 0.0,
                           "groups": len(exact)}
    out["veilql"] = {**_score(v.pop("runs"), exact), **v}
    # what the mechanisms should give: discrete Laplace with scale t has variance
    # 2 e^{-1/t} / (1 - e^{-1/t})^2 (close to 2 t^2)
    out["veilql"]["expected_rmse"] = {
        n["aggregate"]: math.sqrt(2 * math.exp(-1 / n["scale"])
                                  / (1 - math.exp(-1 / n["scale"])) ** 2)
        for n in v["noise"]}
    if peers and smartnoise_available():
        s = smartnoise_runs(fed_path.parent, epsilon, runs)
        out["smartnoise_sql"] = {**_score(s.pop("runs"), exact), **s}
        sn = out["smartnoise_sql"]
        out["ratio_count"] = out["veilql"]["rmse_count"] / sn["rmse_count"]
        out["ratio_sum"] = out["veilql"]["rmse_sum"] / sn["rmse_sum"]
    else:
        out["smartnoise_sql"] = None
        out["ratio_count"] = out["ratio_sum"] = None
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: print the figures as JSON."""
    ap = argparse.ArgumentParser(prog="python -m bench.accuracy",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--people", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--epsilon", type=float, default=1.0)
    args = ap.parse_args(argv)
    print(json.dumps(run(args.people, args.runs, args.epsilon), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
