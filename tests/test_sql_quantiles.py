"""Quantiles, MIN/MAX and variances: the mechanisms behind them and their error bars.

The answers against DuckDB are in test_oracle.py. Here: a histogram is one vector-valued
count (one share of the budget, one noise plan for every bucket), its released bucket noise
has the claimed law (chi-square, and the same test rejects a scale 30% off), the moments of a
variance too; the bucket rule; the square's exact bounds; the read-off rules equal DuckDB's
QUANTILE_DISC and QUANTILE_CONT on one-value buckets; the error bars cover at least 95%; MIN
passes an empty bucket with probability at most 5%.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import duckdb
import numpy as np
import pytest
from test_dp_mechanisms import P_FAIL, chi2_pvalue, total_pmf

from veilql.engine import quantiles
from veilql.engine.dp import sample_share
from veilql.engine.dp.calibrate import NoisePlan, calibrate
from veilql.engine.plan.nodes import Buckets, Plan
from veilql.engine.rewrite import compile_plan
from veilql.engine.rewrite.push_local import MAX_BUCKETS, histogram_buckets
from veilql.engine.sql.typecheck import TypeChecker
from veilql.policies.loader import load_federation

DEMO = Path(__file__).resolve().parent.parent / "sample_data" / "demo" / "federation.toml"
RUNS = 100  # releases per noise test (x buckets x cells samples)


@pytest.fixture(scope="module")
def demo():
    return load_federation(DEMO)


def _plan(demo, sql: str, **kw: object) -> Plan:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compile_plan(sql, demo, **kw)  # type: ignore[arg-type]


def _released_noise(plan: Plan, names: list[str], cells: int, runs: int) -> np.ndarray:
    """The noise the release path adds to the named aggregates (every adder's share, as
    ``operators.local_mode.noise_vector`` draws them), ``runs`` times."""
    index = [i for i, a in enumerate(plan.aggregates) if a.name in names]
    adders = sorted({i for a in plan.aggregates for i in a.noise.adders})  # type: ignore[union-attr]
    total = 0  # the runs' draws of each aggregate at once: the same law as run by run
    for party in adders:
        total = total + np.stack([sample_share(plan.aggregates[i].noise, party, cells * runs)
                                  for i in index])
    return np.asarray(total).ravel()


# ---------------------------------------------------------------- one share of the budget


def test_histogram_is_one_aggregate_of_the_budget(demo) -> None:
    plan = _plan(demo, "SELECT MEDIAN(age) AS m, COUNT(*) AS n FROM bank.customers",
                 epsilon=1.0)
    buckets = [a for a in plan.aggregates if a.family]
    assert len(buckets) == histogram_buckets(18, 100, 0).count == 42
    assert all(a.noise == buckets[0].noise for a in buckets)  # one plan for the histogram
    # two noisy quantities (the histogram, the count) share epsilon 1: t = 1 / 0.5
    assert buckets[0].noise.scale == pytest.approx(2.0)  # type: ignore[union-attr]
    assert float(plan.epsilon) == pytest.approx(1.0)
    # quantiles, MIN and MAX of one expression read the same histogram
    both = _plan(demo, "SELECT MEDIAN(age), MIN(age), MAX(age), QUANTILE_CONT(age, 0.9) "
                 "FROM bank.customers", epsilon=1.0)
    assert sum(1 for a in both.aggregates if a.family) == 42
    assert {o.aggregates for o in both.outputs} == {tuple(a.name for a in both.aggregates)}


def test_bucket_rule() -> None:
    assert histogram_buckets(0, 50, 0).per == 1  # 51 values, one bucket each
    assert histogram_buckets(0, 63, 0).count == 64 and histogram_buckets(0, 64, 0).per == 2
    b = histogram_buckets(0, 100000, 2)
    assert b.count <= MAX_BUCKETS and b.lowest(b.count - 1) <= 100000 <= b.highest(b.count - 1)
    edges = [float(e) for e in b.edges()]
    assert edges == sorted(edges) and len(edges) == b.count - 1
    one = histogram_buckets(5, 5, 0)
    assert one.count == 1 and one.lowest(0) == one.highest(0) == 5


def test_square_bounds_are_exact(demo) -> None:
    from sqlglot import exp

    class _Policy:
        def __init__(self, lo: float, hi: float) -> None:
            from veilql.policies.model import ColumnPolicy

            self.col = ColumnPolicy("x", "value", bounds=(lo, hi), type="DOUBLE")

    for lo, hi, want in [(-100, 1000, (0, 1e6)), (2, 5, (4, 25)), (-5, -2, (4, 25)),
                         (-3, 3, (0, 9))]:
        policy = _Policy(lo, hi).col

        class _Checker(TypeChecker):
            def _policy(self, col: exp.Column, _p=policy):  # type: ignore[override]
                return _p

        x = exp.column("x", table="t")
        n = _Checker(None).numeric(exp.Mul(this=x, expression=x.copy()))
        assert (n.lo, n.hi) == want


# ---------------------------------------------------------------- the released noise


def _wrong(plan: Plan, names: list[str], factor: float) -> Plan:
    aggs = tuple(dataclasses.replace(a, noise=dataclasses.replace(
        a.noise, party_scale=a.noise.party_scale * factor))  # type: ignore[union-attr]
        if a.name in names else a for a in plan.aggregates)
    return dataclasses.replace(plan, aggregates=aggs)


HISTOGRAMS = [
    ("local", "SELECT region, MEDIAN(age) AS m FROM bank.customers GROUP BY region", "laplace"),
    ("two adders", "SELECT p.product, MEDIAN(l.amount) AS m FROM bank.loans l JOIN "
     "insurer.policies p ON l.customer_id = p.customer_id GROUP BY p.product", "laplace"),
    ("gaussian", "SELECT p.product, MIN(l.amount) AS m FROM bank.loans l JOIN "
     "insurer.policies p ON l.customer_id = p.customer_id GROUP BY p.product", "gaussian"),
]


@pytest.mark.parametrize("name,sql,mechanism", HISTOGRAMS, ids=[h[0] for h in HISTOGRAMS])
def test_bucket_noise_has_its_scale_and_30_percent_off_is_rejected(demo, name: str, sql: str,
                                                                   mechanism: str) -> None:
    plan = _plan(demo, sql, epsilon=0.5, delta=1e-6, mechanism=mechanism)
    names = [a.name for a in plan.aggregates if a.family]
    noise = plan.aggregates[0].noise
    assert isinstance(noise, NoisePlan) and all(
        a.noise == noise for a in plan.aggregates if a.family)
    rows = math.prod(s.slots for s in plan.steps)
    if mechanism == "laplace":  # the whole epsilon, L1 = the rows of one person
        assert noise.scale == pytest.approx(rows / 0.5)
    pmf, zero = total_pmf(noise)
    cells = len(plan.groups[0].domain)  # type: ignore[arg-type]
    assert chi2_pvalue(_released_noise(plan, names, cells, RUNS), pmf, zero) > P_FAIL
    for factor in (0.7, 1.3):
        wrong = _released_noise(_wrong(plan, names, factor), names, cells, RUNS)
        assert chi2_pvalue(wrong, pmf, zero) < P_FAIL


def test_variance_moments_noise_has_their_scales(demo) -> None:
    plan = _plan(demo, "SELECT region, VAR_SAMP(age) AS v FROM bank.customers GROUP BY region",
                 epsilon=0.9)
    sq, total, count = (plan.aggregate(n) for n in plan.outputs[1].aggregates)
    # each of the three moments gets epsilon / 3; L1 = max|x|^2, max|x|, 1 (one row each)
    assert sq.noise.scale == pytest.approx(100**2 * 10**sq.decimals / 0.3)  # type: ignore[union-attr]
    assert total.noise.scale == pytest.approx(100 / 0.3)  # type: ignore[union-attr]
    assert count.noise.scale == pytest.approx(1 / 0.3)  # type: ignore[union-attr]
    for agg in (sq, total, count):
        pmf, zero = total_pmf(agg.noise)  # type: ignore[arg-type]
        got = _released_noise(plan, [agg.name], 5, 6000)
        assert chi2_pvalue(got, pmf, zero) > P_FAIL
        wrong = _released_noise(_wrong(plan, [agg.name], 1.3), [agg.name], 5, 6000)
        assert chi2_pvalue(wrong, pmf, zero) < P_FAIL


def test_sum_of_squares_keeps_to_the_ring(demo) -> None:
    """Incomes up to 500,000 square to 2.5e11: summed in units of 10^4, not refused."""
    plan = _plan(demo, "SELECT VAR_POP(income) FROM bank.customers", epsilon=1.0)
    sq = plan.aggregate(plan.outputs[0].aggregates[0])
    assert sq.decimals < 0 and sq.bound == pytest.approx(2.5e11)


# ---------------------------------------------------------------- reading quantiles off


def test_read_off_equals_duckdb_on_one_value_buckets() -> None:
    rng = np.random.default_rng(7)
    con = duckdb.connect()
    b = Buckets(0.0, 0, 30, 1)
    for _ in range(60):
        n = int(rng.integers(1, 40))
        values = rng.integers(0, 30, n)
        counts = np.bincount(values, minlength=30)
        con.execute("CREATE OR REPLACE TABLE t AS SELECT * FROM (SELECT UNNEST(?) AS x)",
                    [values.tolist()])
        for q in (0.0, 0.1, 0.25, 0.3, 0.5, 0.55, 0.77, 0.9, 1.0):
            disc, cont = con.execute(f"SELECT QUANTILE_DISC(x, {q}), QUANTILE_CONT(x, {q}) "
                                     "FROM t").fetchone()
            assert quantiles.read_quantile(counts, b, "disc", q) == disc
            assert quantiles.read_quantile(counts, b, "cont", q) == pytest.approx(cont)
        lo, hi = con.execute("SELECT MIN(x), MAX(x) FROM t").fetchone()
        assert quantiles.read_quantile(counts, b, "min", 0.0) == lo
        assert quantiles.read_quantile(counts, b, "max", 1.0) == hi
    assert quantiles.read_quantile(np.zeros(30), b, "cont", 0.5) is None


def test_multi_value_buckets_stay_within_one_bucket() -> None:
    rng = np.random.default_rng(3)
    b = Buckets(0.0, 0, 200, 5)  # 40 buckets of 5 values
    values = rng.integers(0, 200, 500)
    counts = np.bincount(values // 5, minlength=40)
    for q in (0.1, 0.5, 0.9):
        want = float(np.quantile(values, q))
        assert abs(quantiles.read_quantile(counts, b, "cont", q) - want) <= 5
        assert abs(quantiles.read_quantile(counts, b, "disc", q) - want) <= 5


# ---------------------------------------------------------------- error bars


def _trial_counts(rng: np.random.Generator) -> np.ndarray:
    """A skewed true histogram over 40 buckets, empty at both ends."""
    true = np.zeros(40)
    true[6:30] = rng.poisson(np.linspace(40, 3, 24))
    true[6] = max(true[6], 2)
    return true


@pytest.mark.parametrize("stat,q", [("cont", 0.5), ("disc", 0.9), ("cont", 0.1), ("disc", 0.0),
                                    ("cont", 1.0),
                                    ("min", 0.0), ("max", 1.0)])
def test_quantile_error_bars_cover_95_percent(stat: str, q: float) -> None:
    rng = np.random.default_rng(11)
    b = Buckets(0.0, 0, 200, 5)
    noise = calibrate(1, 1.0, 0.5, 0)  # two adders of DLap(2)
    trials, covered, empty_min = 600, 0, 0
    true = _trial_counts(rng)
    truth = quantiles.read_quantile(true, b, stat, q)
    assert truth is not None
    for _ in range(trials):
        draws = sample_share(noise, 0, 40) + sample_share(noise, 1, 40)
        noisy = true + draws
        box = quantiles.quantile_range(noisy, b, stat, q, noise)
        value = quantiles.read_quantile(noisy, b, stat, q, noise)
        if box is not None and box[0] <= truth <= box[1]:
            covered += 1
        if stat == "min" and value is not None and true[int(value // 5)] == 0:
            empty_min += 1
    assert covered / trials >= 0.95
    assert empty_min / trials <= 0.05


def test_variance_error_bars_cover_95_percent() -> None:
    rng = np.random.default_rng(5)
    x = rng.integers(0, 100, 300).astype(float)
    moments = (float((x * x).sum()), float(x.sum()), float(len(x)))
    truth = quantiles.variance(*moments, "var_samp")
    plans = [calibrate(10000, 10000.0, 0.5, 0), calibrate(100, 100.0, 0.5, 0),
             calibrate(1, 1.0, 0.5, 0)]
    level = 1 - 0.95 ** (1 / 3)
    halves = [quantiles.half_width(p, level) for p in plans]
    covered = 0
    trials = 500
    for _ in range(trials):
        noisy = [m + sample_share(p, 0, 1)[0] + sample_share(p, 1, 1)[0]
                 for m, p in zip(moments, plans, strict=True)]
        box = quantiles.variance_range(*((v - h, v + h) for v, h in zip(noisy, halves,
                                                                         strict=True)),
                                       "var_samp")
        covered += box is not None and box[0] <= truth <= box[1]
    assert covered / trials >= 0.95


def test_sum_half_width_is_sound() -> None:
    """The bound on a sum of m bucket noises holds: at most alpha of simulated sums exceed it,
    and it is well below m times one bucket's interval (the union bound)."""
    for plan in (calibrate(1, 1.0, 1.0, 0), calibrate(1, 1.0, 1.0, 1e-6, "gaussian")):
        for m in (4, 16):
            h = quantiles.sum_half_width(plan, m, 0.05)
            sums = sum(sample_share(plan, i, 4000 * m).reshape(4000, m).sum(axis=1)
                       for i in plan.adders)
            assert np.mean(np.abs(sums) > h) <= 0.05
            assert h < m * quantiles.half_width(plan, 0.05)
