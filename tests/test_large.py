"""Larger federations and the end-to-end privacy audit (slow: run with `make test-all`).

The 10^7-person check runs every oracle query shape in a fresh process (``bench/scale.py``)
with the default settings and a memory cap: the process stops itself if its resident memory
passes ``CAP_MB``; the federation is generated once into ``bench/.data/10000000`` (about
25 s, 1.3 GB). The issue-17 target is 6 GB for the whole embedded process, and the cap is
that target: one session of every shape peaked at 4,927 MiB on 2026-12-01 (the three-way
AVG by region was 6.2 GB alone before the bank shared its values and its region apart,
``factors.separable``: 9 words per person instead of 16), the join query alone at 2.1 GB.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import duckdb
import numpy as np
import pytest
from oracle import HUGE_EPSILON, oracle_federation, plain, same, union_connection
from test_dp_mechanisms import _clopper_pearson

import veilql
from veilql.engine.dp import LargeEpsilonWarning

DEMO = Path(__file__).resolve().parent.parent / "sample_data" / "demo"
QUERIES = [
    "SELECT COUNT(*) AS n, SUM(l.amount) AS total FROM bank.loans l "
    "JOIN insurer.policies p ON l.customer_id = p.customer_id WHERE p.open_claim = 1",
    "SELECT COUNT(*) AS n, SUM(p.premium) AS prem FROM bank.loans l JOIN insurer.policies p "
    "ON l.customer_id = p.customer_id WHERE l.amount > 2 * p.claims_amount",
    "SELECT c.region, AVG(l.defaulted) AS rate, COUNT(*) AS n FROM bank.customers c "
    "JOIN bank.loans l ON c.customer_id = l.customer_id "
    "JOIN payments.accounts a ON a.customer_id = c.customer_id "
    "JOIN insurer.policies p ON p.customer_id = c.customer_id "
    "WHERE a.monthly_txn_count > 10 AND p.open_claim = 1 GROUP BY c.region ORDER BY c.region",
]


@pytest.mark.slow
def test_100k_people_equal_plain_duckdb(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    subprocess.run([sys.executable, "-m", "sample_data.generate", "--people", "100000",
                    "--out", str(out)], check=True, capture_output=True)
    fed = oracle_federation(out, tmp_path / "fed")
    with veilql.connect(fed, "oracle") as session, warnings.catch_warnings():
        warnings.simplefilter("ignore", LargeEpsilonWarning)
        con = union_connection(session.federation)
        for sql in QUERIES:
            got = session.sql(sql, epsilon=HUGE_EPSILON, delta=0).rows
            want = plain(con, sql)
            assert len(got) == len(want)
            for g, w in zip(got, want, strict=True):
                assert all(same(a, b, 0.011) for a, b in zip(g, w, strict=True)), (g, w)


@pytest.mark.slow
def test_privacy_audit_on_neighbouring_federations(tmp_path: Path) -> None:
    """COUNT on a federation and on the same one with one more person: the estimated
    epsilon lower bound from the released answers stays under the claimed epsilon."""
    epsilon, runs = 1.0, 2500
    base = oracle_federation(DEMO, tmp_path / "d0")
    plus = tmp_path / "d1"
    shutil.copytree(base.parent, plus)
    parquet = plus / "data" / "payments" / "accounts.parquet"
    con = duckdb.connect()
    con.execute(f"CREATE TABLE t AS SELECT * FROM read_parquet('{parquet}')")
    con.execute("INSERT INTO t SELECT 10000000 AS customer_id, * EXCLUDE (customer_id) "
                "FROM t LIMIT 1")
    con.execute(f"COPY t TO '{parquet}' (FORMAT parquet)")
    con.close()
    sql = "SELECT COUNT(*) AS n FROM payments.accounts WHERE monthly_txn_count >= 0"
    outputs = []
    for root in (base.parent, plus):
        with veilql.connect(root / "federation.toml", "oracle") as session:
            outputs.append(np.array([session.sql(sql, epsilon=epsilon, delta=0).rows[0][0]
                                     for _ in range(runs)]))
    out0, out1 = outputs
    c = int(np.median(out0))
    thresholds = range(c - 2, c + 4)
    conf = 1 - 1e-3 / len(thresholds)
    eps_lb = 0.0
    for k in thresholds:
        for a, b in (((out1 >= k).sum(), (out0 >= k).sum()),
                     ((out0 <= k).sum(), (out1 <= k).sum())):
            lo, _ = _clopper_pearson(int(a), runs, conf)
            _, hi = _clopper_pearson(int(b), runs, conf)
            if lo > 0:
                eps_lb = max(eps_lb, math.log(lo / hi))
    assert eps_lb <= epsilon
    assert eps_lb > 0.3  # the audit sees a real part of the loss: the test can fail


TARGET_MB = 6144  # issue 17's target (6 GB read as 6 GiB)
CAP_MB = TARGET_MB  # the whole embedded process at 10^7 people, default settings
TEN_MILLION = 10_000_000


@pytest.mark.slow
def test_10m_people_every_oracle_shape_runs_in_bounded_memory(tmp_path: Path) -> None:
    """Every oracle query shape at 10^7 people answers, in one process whose resident
    memory stays under CAP_MB (a watchdog in the child enforces it)."""
    import test_oracle

    from bench import scale

    queries = list(dict.fromkeys([*test_oracle.QUERIES, *QUERIES]))
    listed = tmp_path / "queries.json"
    listed.write_text(json.dumps(queries))
    if not (scale.CACHE / str(TEN_MILLION) / "federation.toml").exists():
        made = scale.child(["generate", str(TEN_MILLION), "4096"], timeout=1800)
        assert "error" not in made, made
        assert made["peak_rss_mb"] < 4096  # the generator runs in bounded memory too
    res = scale.child(["sqls", str(TEN_MILLION), str(listed), str(CAP_MB)], timeout=7200)
    assert "error" not in res, res
    assert [q["sql"] for q in res["queries"]] == queries
    assert all(q["rows"] > 0 for q in res["queries"]), res
    assert res["peak_rss_mb"] < CAP_MB, res
    join = scale.child(["query", str(TEN_MILLION), "join", str(TARGET_MB)], timeout=3600)
    assert "error" not in join, join
    assert join["peak_rss_mb"] < TARGET_MB and join["repeated_s"] < 1.0, join
