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

Across parties (``python -m bench.accuracy --cross [--runs 1000]``): COUNT and SUM by a
public group over a join of two parties of the demo federation (``CROSS_SQL``), at
``epsilon = 1, delta = 1e-6`` (noise sampled on shares, one central DLap per cell) and at
``delta = 0`` (two parties each add a DLap), pooled RMSE of the released values against the
exact answer, divided by the RMSE of a central curator's DLap(l1/epsilon_aggregate) at the
same split (the noise's exact sd): ~1.00x and ~1.41x. Also the seconds per query of each,
on a cached join (so the difference is the noise).
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


CROSS_SQL = ("SELECT a.segment, COUNT(*) AS n, SUM(a.monthly_txn_amount) AS s "
             "FROM payments.accounts a JOIN insurer.policies p "
             "ON a.customer_id = p.customer_id GROUP BY a.segment")
DEMO = ROOT / "sample_data" / "demo"


def cross_party(runs: int = 1000, epsilon: float = 1.0, delta: float = 1e-6) -> dict[str, Any]:
    """RMSE of cross-party COUNT and SUM against a central curator's, with noise sampled on
    shares (``delta``) and with the two-adder noise (``delta = 0``); seconds per query."""
    import shutil

    from veilql.engine.dp.calibrate import dlap_variance

    out: dict[str, Any] = {"sql": CROSS_SQL, "runs": runs, "epsilon": epsilon}
    with tempfile.TemporaryDirectory(prefix="veil-bench-cross-") as tmp, \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fed_dir = Path(tmp) / "fed"
        shutil.copytree(DEMO, fed_dir, ignore=shutil.ignore_patterns("ledgers"))
        fed = fed_dir / "federation.toml"
        with fed.open("a") as fh:
            fh.write("\n[analyst.bench_cross]\nepsilon = 1e15\ndelta = 0.5\n")
        saved = os.environ.get("VEIL_LEDGER_DIR")
        os.environ["VEIL_LEDGER_DIR"] = str(Path(tmp) / "ledgers")
        try:
            with veilql.connect(fed, "bench_cross") as session:
                exact = session.sql(CROSS_SQL, epsilon=1e12, delta=0).rows  # noise 0 there
                for label, dlt in (("central", delta), ("distributed", 0.0)):
                    plan = session.plan(CROSS_SQL, epsilon=epsilon, delta=dlt)
                    session.sql(CROSS_SQL, epsilon=epsilon, delta=dlt)  # warm the join cache
                    errors: dict[str, list[float]] = {"n": [], "s": []}
                    t0 = time.perf_counter()
                    for _ in range(runs):
                        res = session.sql(CROSS_SQL, epsilon=epsilon, delta=dlt)
                        for row, want in zip(res.rows, exact, strict=True):
                            errors["n"].append(row[1] - want[1])
                            errors["s"].append(row[2] - want[2])
                    seconds = (time.perf_counter() - t0) / runs
                    fig: dict[str, Any] = {"seconds_per_query": seconds,
                                           "charged_delta": float(plan.delta)}
                    for name in ("n", "s"):
                        agg = plan.aggregate(name)
                        noise = agg.noise
                        t = noise.scale
                        curator = math.sqrt(dlap_variance(t)) / 10**agg.decimals
                        got = rmse(errors[name])
                        fig[name] = {"mechanism": noise.describe(), "rmse": got,
                                     "central_curator_rmse": curator,
                                     "ratio": got / curator}
                    out[label] = fig
        finally:
            if saved is None:
                os.environ.pop("VEIL_LEDGER_DIR", None)
            else:
                os.environ["VEIL_LEDGER_DIR"] = saved
    out["values_per_aggregate"] = runs * len(exact)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: print the figures as JSON."""
    ap = argparse.ArgumentParser(prog="python -m bench.accuracy",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--people", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--epsilon", type=float, default=1.0)
    ap.add_argument("--cross", action="store_true",
                    help="cross-party COUNT and SUM: noise on shares vs two adders vs curator")
    args = ap.parse_args(argv)
    if args.cross:
        print(json.dumps(cross_party(args.runs, args.epsilon), indent=2))
        return 0
    print(json.dumps(run(args.people, args.runs, args.epsilon), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
