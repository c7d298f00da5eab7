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

Side by side (``python -m bench.accuracy --side-by-side [--quick] [--runs N]``): the same
questions over the same people, at the same total spend, asked three ways:

- **VeilQL across parties**: ``payments.accounts JOIN insurer.policies`` of the demo
  federation, noise sampled on shares (``epsilon = E, delta = 1e-6``; the charge's delta is
  the sampler's distance, below 1e-35);
- **VeilQL local mode**: the joined rows as one table of one party (``payments.joined``,
  the same columns, bounds and one row per person), where that party adds the noise;
- **smartnoise-sql** on the same joined rows as a CSV, its per-measurement epsilon set so
  that ``get_privacy_cost`` is exactly ``E`` (probed with zero runs first).

Questions, by segment (4 public groups): COUNT, SUM(monthly_txn_amount), AVG(premium), and
the three together (four aggregates: AVG is a sum and a count). The truth is VeilQL's answer
at epsilon 1e12 (noise 0), checked equal across parties and in local mode. Per output: the
pooled RMSE of each engine, the ratios cross/smartnoise, local/smartnoise and cross/local
with 95% bootstrap intervals (runs resampled, 2,000 times), and for COUNT and SUM the ratio to
a central curator's exact noise sd at the same split. Writes
``bench/results/<date>-accuracy[-quick].json`` and ``.md``.
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


RESULTS = ROOT / "bench" / "results"
_JOIN = ("FROM payments.accounts a JOIN insurer.policies p ON a.customer_id = p.customer_id "
         "GROUP BY a.segment")
#: name -> (the question across parties, the same question over the joined table)
SIDE_QUESTIONS: dict[str, tuple[str, str]] = {
    "count": (f"SELECT a.segment, COUNT(*) AS n {_JOIN}",
              "SELECT segment, COUNT(*) AS n FROM payments.joined GROUP BY segment"),
    "sum": (f"SELECT a.segment, SUM(a.monthly_txn_amount) AS s {_JOIN}",
            "SELECT segment, SUM(monthly_txn_amount) AS s FROM payments.joined GROUP BY segment"),
    "avg": (f"SELECT a.segment, AVG(p.premium) AS pp {_JOIN}",
            "SELECT segment, AVG(premium) AS pp FROM payments.joined GROUP BY segment"),
    "multi": (f"SELECT a.segment, COUNT(*) AS n, SUM(a.monthly_txn_amount) AS s, "
              f"AVG(p.premium) AS pp {_JOIN}",
              "SELECT segment, COUNT(*) AS n, SUM(monthly_txn_amount) AS s, AVG(premium) AS pp "
              "FROM payments.joined GROUP BY segment"),
}
_BOOTSTRAP = 2000


def _side_federation(tmp: Path) -> tuple[Path, Path, dict[str, Any]]:
    """A copy of the demo federation with the joined rows as ``payments.joined`` (same
    columns, bounds and one row per person) and a benchmark analyst; the same rows as a CSV
    for smartnoise-sql; smartnoise's metadata for them."""
    import shutil
    import tomllib

    fed_dir = tmp / "fed"
    shutil.copytree(DEMO, fed_dir, ignore=shutil.ignore_patterns("ledgers"))
    fed = fed_dir / "federation.toml"
    with fed.open("a") as fh:
        fh.write(f"\n[analyst.{ANALYST}]\nepsilon = 1e15\ndelta = 0.5\n")
    policies = fed_dir / "policies"
    accounts = tomllib.loads((policies / "payments.toml").read_text())["tables"]["accounts"]
    policies_cols = tomllib.loads((policies / "insurer.toml").read_text())["tables"][
        "policies"]["columns"]
    segment = accounts["columns"]["segment"]["values"]
    amount = accounts["columns"]["monthly_txn_amount"]["bounds"]
    premium = policies_cols["premium"]["bounds"]
    with (policies / "payments.toml").open("a") as fh:
        fh.write(
            "\n# bench.accuracy --side-by-side: the rows of accounts JOIN policies at one party\n"
            "[tables.joined]\nprivacy_unit = \"customer_id\"\nmax_rows_per_unit = 1\n"
            "join_reveal = \"none\"\n\n[tables.joined.columns]\n"
            "customer_id = { role = \"key\" }\n"
            f"segment = {{ role = \"group\", values = {json.dumps(segment)} }}\n"
            f"monthly_txn_amount = {{ role = \"value\", bounds = {json.dumps(amount)}, "
            "decimals = 2 }\n"
            f"premium = {{ role = \"value\", bounds = {json.dumps(premium)}, decimals = 2 }}\n")
    data = fed_dir / "data"
    csv = tmp / "joined.csv"
    con = duckdb.connect()
    try:
        con.execute(
            "CREATE TABLE joined AS SELECT a.customer_id, a.segment, a.monthly_txn_amount, "
            f"p.premium FROM '{data / 'payments' / 'accounts.parquet'}' a JOIN "
            f"read_csv_auto('{data / 'insurer' / 'policies.csv'}') p "
            "ON a.customer_id = p.customer_id")
        con.execute(f"COPY joined TO '{data / 'payments' / 'joined.parquet'}' (FORMAT parquet)")
        con.execute(f"COPY joined TO '{csv}' (HEADER)")
    finally:
        con.close()
    metadata = {"Collection": {"payments": {"joined": {
        "row_privacy": False, "max_ids": 1, "censor_dims": False,
        "customer_id": {"type": "int", "private_id": True},
        "segment": {"type": "string"},
        "monthly_txn_amount": {"type": "float", "lower": amount[0], "upper": amount[1]},
        "premium": {"type": "float", "lower": premium[0], "upper": premium[1]},
    }}}}
    return fed, csv, metadata


def _errors(runs: list[list[list[Any]]], exact: list[list[Any]]) -> dict[str, list[list[float]]]:
    """Per output column (by position), the errors of every run (rows matched by group)."""
    want = {str(r[0]): r[1:] for r in exact}
    out: dict[str, list[list[float]]] = {}
    for rows in runs:
        got = {str(r[0]): r[1:] for r in rows}
        for j in range(len(next(iter(want.values())))):
            errs = []
            for g, values in want.items():
                v = got.get(g, [None] * len(values))[j]
                if v is not None and values[j] is not None and math.isfinite(float(v)):
                    errs.append(float(v) - float(values[j]))
            out.setdefault(str(j), []).append(errs)
    return out


def _rmse_ci(a: list[list[float]], b: list[list[float]] | None = None,
             seed: int = 0) -> dict[str, float | None]:
    """Pooled RMSE of ``a`` (runs x values) and, with ``b``, the ratio RMSE(a)/RMSE(b) with a
    95% percentile bootstrap interval over runs (each side resampled on its own)."""
    import numpy as np

    rng = np.random.default_rng(seed)  # resampling for the interval, not noise

    def per_run(x: list[list[float]]) -> Any:
        return np.array([float(np.mean(np.square(r))) if r else np.nan for r in x])

    ma = per_run(a)
    out: dict[str, float | None] = {"rmse": float(np.sqrt(np.nanmean(ma))),
                                    "values": sum(len(r) for r in a)}
    if b is None:
        return out
    mb = per_run(b)
    ratio = math.sqrt(float(np.nanmean(ma)) / float(np.nanmean(mb)))
    ia = rng.integers(0, len(ma), (_BOOTSTRAP, len(ma)))
    ib = rng.integers(0, len(mb), (_BOOTSTRAP, len(mb)))
    boot = np.sqrt(np.nanmean(ma[ia], axis=1) / np.nanmean(mb[ib], axis=1))
    out.update(ratio=ratio, ci_low=float(np.percentile(boot, 2.5)),
               ci_high=float(np.percentile(boot, 97.5)))
    return out


def _veilql_side(session: Any, sql: str, runs: int, epsilon: float,
                 delta: float) -> dict[str, Any]:
    """``runs`` released answers of ``sql``, its plan's noise and cost, seconds per query."""
    from veilql.engine.dp.calibrate import dlap_variance

    plan = session.plan(sql, epsilon=epsilon, delta=delta)
    session.sql(sql, epsilon=epsilon, delta=delta)  # warm the join cache
    t0 = time.perf_counter()
    out = [[list(r) for r in session.sql(sql, epsilon=epsilon, delta=delta).rows]
           for _ in range(runs)]
    seconds = (time.perf_counter() - t0) / runs
    curator = {}
    for o in plan.outputs:
        if o.kind in ("count", "sum"):
            agg = plan.aggregate(o.aggregates[0])
            curator[o.name] = math.sqrt(dlap_variance(agg.noise.scale)) / 10**agg.decimals
    return {"runs": out, "mode": plan.mode,
            "privacy_per_query": {"epsilon": float(plan.epsilon), "delta": float(plan.delta)},
            "noise": {a.name: a.noise.describe() for a in plan.aggregates},
            "central_curator_rmse": curator, "seconds_per_query": seconds}


def _smartnoise_side(csv: Path, metadata: dict[str, Any], sql: str, runs: int,
                     epsilon: float) -> dict[str, Any]:
    """``runs`` answers of smartnoise-sql at a total spend of ``epsilon``: its cost at a
    per-measurement epsilon of 1 is probed first (zero runs), then scaled."""
    def call(eps: float, n: int) -> dict[str, Any]:
        job = {"csv": str(csv), "sql": sql, "runs": n, "epsilon": eps, "delta": 0.0,
               "metadata": metadata}
        proc = subprocess.run([str(SMARTNOISE_PYTHON), str(WORKER)], input=json.dumps(job),
                              capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"smartnoise-sql worker failed: {proc.stderr[-2000:]}")
        return json.loads(proc.stdout)

    per_unit = float(call(1.0, 0)["privacy_cost"][0])  # measurements x 1.0
    res = call(epsilon / per_unit, runs)
    res["epsilon_per_measurement"] = epsilon / per_unit
    res["measurements"] = per_unit
    return res


def side_by_side(runs: int = 300, epsilon: float = 1.0, delta: float = 1e-6,
                 peers: bool = True) -> dict[str, Any]:
    """COUNT, SUM, AVG and all three by segment, asked across parties (noise on shares), in
    local mode and (when installed) in smartnoise-sql at the same total epsilon; RMSE of
    each and their ratios with 95% bootstrap intervals (module doc)."""
    sn = peers and smartnoise_available()
    out: dict[str, Any] = {"runs": runs, "epsilon": epsilon, "delta_across_parties": delta,
                           "smartnoise": sn, "questions": {}}
    with tempfile.TemporaryDirectory(prefix="veil-bench-side-") as tmp_name, \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tmp = Path(tmp_name)
        fed, csv, metadata = _side_federation(tmp)
        saved = os.environ.get("VEIL_LEDGER_DIR")
        os.environ["VEIL_LEDGER_DIR"] = str(tmp / "ledgers")
        try:
            with veilql.connect(fed, ANALYST) as session:
                for name, (cross_sql, local_sql) in SIDE_QUESTIONS.items():
                    exact = session.sql(cross_sql, epsilon=1e12, delta=0).rows
                    exact_local = session.sql(local_sql, epsilon=1e12, delta=0).rows
                    if [list(r) for r in exact] != [list(r) for r in exact_local]:
                        raise RuntimeError(f"{name}: the local table does not give the same "
                                           f"answer: {exact} != {exact_local}")
                    cross = _veilql_side(session, cross_sql, runs, epsilon, delta)
                    local = _veilql_side(session, local_sql, runs, epsilon, delta)
                    peer = _smartnoise_side(csv, metadata, local_sql, runs, epsilon) \
                        if sn else None
                    out["questions"][name] = _score_side(
                        session.plan(cross_sql, epsilon=epsilon, delta=delta), exact, cross,
                        local, peer, cross_sql, local_sql)
        finally:
            if saved is None:
                os.environ.pop("VEIL_LEDGER_DIR", None)
            else:
                os.environ["VEIL_LEDGER_DIR"] = saved
    return out


def _score_side(plan: Any, exact: list[list[Any]], cross: dict[str, Any],
                local: dict[str, Any], peer: dict[str, Any] | None, cross_sql: str,
                local_sql: str) -> dict[str, Any]:
    """One question's figures: per output column RMSEs and ratios with intervals."""
    names = [o.name for o in plan.outputs if o.kind != "group"]
    errs = {"cross": _errors(cross.pop("runs"), exact), "local": _errors(local.pop("runs"), exact)}
    if peer is not None:
        errs["smartnoise"] = _errors(peer.pop("runs"), exact)
    outputs = {}
    for j, name in enumerate(names):
        e = {k: v[str(j)] for k, v in errs.items()}
        fig: dict[str, Any] = {k: _rmse_ci(v)["rmse"] for k, v in e.items()}
        fig["mean_error"] = {k: sum(map(sum, v)) / max(1, sum(map(len, v)))
                             for k, v in e.items()}
        fig["cross_over_local"] = _rmse_ci(e["cross"], e["local"], seed=1)
        if peer is not None:
            fig["cross_over_smartnoise"] = _rmse_ci(e["cross"], e["smartnoise"], seed=2)
            fig["local_over_smartnoise"] = _rmse_ci(e["local"], e["smartnoise"], seed=3)
        curator = cross["central_curator_rmse"].get(name)
        if curator:
            fig["central_curator_rmse"] = curator
            fig["cross_over_curator"] = fig["cross"] / curator
            fig["local_over_curator"] = fig["local"] / local["central_curator_rmse"][name]
        fig["values_per_engine"] = _rmse_ci(e["cross"])["values"]
        outputs[name] = fig
    return {"sql_across_parties": cross_sql, "sql_one_table": local_sql, "outputs": outputs,
            "veilql_cross": cross, "veilql_local": local, "smartnoise_sql": peer}


def _ci_text(r: dict[str, Any] | None) -> str:
    if not r or r.get("ratio") is None:
        return ""
    return f"{r['ratio']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"


def side_by_side_markdown(res: dict[str, Any]) -> str:
    """The side-by-side figures as markdown tables, one row per released output."""
    lines = [f"## Accuracy side by side ({res['runs']} runs, total epsilon {res['epsilon']:g}; "
             f"across parties delta {res['delta_across_parties']:g})", "",
             "RMSE of the released values against the exact answer, pooled over the 4 "
             "segments and every run; ratios with 95% bootstrap intervals. Cross: "
             "`payments.accounts JOIN insurer.policies`, noise sampled on shares; local: the "
             "joined rows as one party's table; smartnoise-sql 1.0.10 on the same rows "
             "(per-measurement epsilon so that `get_privacy_cost` is the total).", "",
             "| question | output | VeilQL cross RMSE | VeilQL local RMSE | smartnoise RMSE | "
             "cross / smartnoise | local / smartnoise | cross / local | cross / curator | "
             "mean error cross, local, smartnoise |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for q, body in res["questions"].items():
        for name, f in body["outputs"].items():
            sn = f.get("smartnoise")
            cur = f.get("cross_over_curator")
            lines.append(
                f"| {q} | {name} | {f['cross']:.4g} | {f['local']:.4g} | "
                f"{'' if sn is None else format(sn, '.4g')} | "
                f"{_ci_text(f.get('cross_over_smartnoise'))} | "
                f"{_ci_text(f.get('local_over_smartnoise'))} | {_ci_text(f['cross_over_local'])} "
                f"| {'' if cur is None else format(cur, '.3f')} | "
                + ", ".join(format(m, ".3g") for m in f.get("mean_error", {}).values()) + " |")
    lines.append("")
    for q, body in res["questions"].items():
        c, p = body["veilql_cross"], body["smartnoise_sql"]
        spend = (f"VeilQL charges epsilon {c['privacy_per_query']['epsilon']:g}, delta "
                 f"{c['privacy_per_query']['delta']:.2g} across parties, epsilon "
                 f"{body['veilql_local']['privacy_per_query']['epsilon']:g}, delta "
                 f"{body['veilql_local']['privacy_per_query']['delta']:g} locally")
        if p is not None:
            spend += (f"; smartnoise {p['measurements']:g} measurements at "
                      f"{p['epsilon_per_measurement']:g}, get_privacy_cost "
                      f"{p['privacy_cost'][0]:g}")
        lines.append(f"- {q}: {spend}; s per query: cross {c['seconds_per_query']:.3f}, local "
                     f"{body['veilql_local']['seconds_per_query']:.3f}"
                     + (f", smartnoise {p['seconds_per_query']:.3f}" if p else ""))
    if not res["smartnoise"]:
        lines += ["", "smartnoise-sql was not installed (bench/.venv-smartnoise): only VeilQL's "
                  "two modes and the central curator's noise are compared."]
    return "\n".join(lines) + "\n"


def write_side_by_side(res: dict[str, Any], out_dir: Path = RESULTS,
                       quick: bool = False) -> tuple[Path, Path]:
    """Write ``<date>-accuracy[-quick].json`` and ``.md`` into ``out_dir``; their paths."""
    import datetime as dt

    from bench.run import machine

    res = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
           "machine": machine(), **res}
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{dt.date.today().isoformat()}-accuracy" + ("-quick" if quick else "")
    jpath, mpath = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    jpath.write_text(json.dumps(res, indent=2) + "\n")
    mpath.write_text(side_by_side_page(res, quick))
    return jpath, mpath


def side_by_side_page(res: dict[str, Any], quick: bool = False) -> str:
    """The markdown page of a side-by-side run (``res`` as written to its JSON file)."""
    m = res["machine"]
    runs = "--quick" if quick else f"--runs {res['runs']}"
    return (f"# Accuracy side by side {res['date']}\n\nMachine: {m.get('platform')}, "
            f"{m.get('cpus', m.get('cpu_count'))} CPUs; Python {m.get('python')}, OpenDP "
            f"{m.get('opendp')}, DuckDB {m.get('duckdb')}. Command: `python -m bench.accuracy "
            f"--side-by-side {runs}`.\n\n" + side_by_side_markdown(res))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: print the figures as JSON."""
    ap = argparse.ArgumentParser(prog="python -m bench.accuracy",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--people", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--epsilon", type=float, default=1.0)
    ap.add_argument("--cross", action="store_true",
                    help="cross-party COUNT and SUM: noise on shares vs two adders vs curator")
    ap.add_argument("--side-by-side", action="store_true",
                    help="COUNT, SUM, AVG and all three: VeilQL across parties, VeilQL local "
                         "mode and smartnoise-sql at equal spend; writes bench/results/")
    ap.add_argument("--quick", action="store_true", help="with --side-by-side: 100 runs")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where --side-by-side writes")
    args = ap.parse_args(argv)
    if args.cross:
        print(json.dumps(cross_party(args.runs, args.epsilon), indent=2))
        return 0
    if args.side_by_side:
        runs = 100 if args.quick and args.runs == ap.get_default("runs") else args.runs
        res = side_by_side(runs, args.epsilon)
        res["quick"] = args.quick
        jpath, mpath = write_side_by_side(res, args.out, args.quick)
        print(side_by_side_markdown(res))
        print(f"wrote {jpath} and {mpath}")
        return 0
    print(json.dumps(run(args.people, args.runs, args.epsilon), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
