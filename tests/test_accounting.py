"""The accountant (veilql.engine.dp.account): zCDP composition of Gaussian aggregates, the
variance-minimising split, and what the ledger charges.

- For k Gaussian aggregates the composed charge is what OpenDP certifies, recomputed here
  directly from OpenDP's own measurements (``make_gaussian`` composed, converted with
  ``make_zCDP_to_approxDP``/``make_fix_delta``), and never below it; each aggregate gets about
  k times the rho of the equal split for the same charge.
- The new split's total released variance is below the equal basic-composition split's on
  queries of three or more aggregates, and the equal split is kept where nothing beats it.
- The noise of every aggregate of such plans has its (new) law: chi-square against the exact
  pmf, and the same test rejects a scale 30% off (helpers of test_dp_mechanisms).
- End to end, the ledger charges exactly the plan's Fractions, at least the certified value.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import opendp.prelude as dp
import pytest
from sql_fixtures import federation
from test_central_noise import _dlap_cdf, chi2_cdf
from test_dp_mechanisms import N_SAMPLES, P_FAIL, chi2_pvalue, scaled, total_pmf

import veilql
from veilql.engine.dp import NoisePlan, calibrate, sample_total
from veilql.engine.dp.account import (
    Demand,
    allocate,
    certified_charge,
    certify,
    plan_rho,
)
from veilql.engine.dp.calibrate import cks_epsilon, cks_rho, rho_for
from veilql.engine.mpc.runtime import Runtime
from veilql.engine.mpc.shares import AShare
from veilql.engine.mpc.testing import deterministic_seeds, run_three
from veilql.engine.operators.noise import add_noise
from veilql.engine.rewrite import compile_plan

DEMO = Path(__file__).resolve().parent.parent / "sample_data" / "demo"
FOUR = ("SELECT COUNT(*) AS n, SUM(l.amount) AS s, AVG(p.premium) AS pp "
        "FROM bank.loans l JOIN insurer.policies p ON l.customer_id = p.customer_id")


def oracle_federation(src: Path, dst: Path) -> Path:
    """``oracle.oracle_federation`` without any ledgers left in ``src`` (another run's
    ledger or key, caught mid-write, would make a node refuse): an analyst with a budget
    that never runs out."""
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("ledgers"))
    fed = dst / "federation.toml"
    with fed.open("a") as fh:
        fh.write("\n[analyst.oracle]\nepsilon = 1e15\ndelta = 0.5\n")
    return fed


def _plan(sql: str, epsilon: float = 1.0, delta: float = 1e-6, mechanism: str = "auto"):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compile_plan(sql, federation(), epsilon=epsilon, delta=delta,
                            mechanism=mechanism)


def _direct_opendp_epsilon(plans: list[NoisePlan], delta: float) -> float:
    """OpenDP alone: the honest sums' discrete Gaussians (``make_gaussian`` at scale / L2, so
    one common d_in = 1), composed and converted; no VeilQL code involved."""
    space = dp.vector_domain(dp.atom_domain(T="i64")), dp.l2_distance(T="f64")
    parts = [dp.m.make_gaussian(*space, scale=p.scale / p.l2) for p in plans]
    composed = dp.c.make_zCDP_to_approxDP(dp.c.make_composition(parts))
    eps, _ = dp.c.make_fix_delta(composed, delta).map(1.0)
    return float(eps)


def _equal_split(demands: list[Demand], epsilon: float, delta: float,
                 mechanism: str = "auto") -> list[NoisePlan]:
    """What basic composition gave: every aggregate calibrated alone at (eps/k, delta/k)."""
    k = len(demands)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [calibrate(d.l1, d.l2, Fraction(repr(epsilon)) / k, Fraction(repr(delta)) / k,
                          mechanism, cells=d.cells) for d in demands]


# ---------------------------------------------------------------- the certificate


@pytest.mark.parametrize("k", [2, 3, 4, 6])
def test_k_gaussians_charge_what_opendp_certifies(k: int) -> None:
    demands = [Demand(1, 1.0), Demand(3, math.sqrt(3)), Demand(100, 100.0),
               Demand(16, 4.0), Demand(1, 1.0), Demand(2, 2.0)][:k]
    plans = allocate(demands, 1.0, 1e-6, "gaussian")
    charged = (sum((p.epsilon for p in plans), Fraction(0)),
               sum((p.delta for p in plans), Fraction(0)))
    assert charged == (Fraction(1), Fraction(1, 10**6))  # the budget, exactly, as Fractions
    assert all(isinstance(p.epsilon, Fraction) and isinstance(p.delta, Fraction)
               for p in plans)
    assert all(p.composed == k for p in plans)
    direct = _direct_opendp_epsilon(plans, 1e-6)
    rho, certified = certify(plans, 1e-6)
    # VeilQL's certificate is OpenDP's composition of each plan's map, which adds the KLS21
    # tau (below 1e-30 here) to OpenDP's own Gaussian map: the same number
    assert certified == pytest.approx(direct, rel=1e-12)
    assert certified == plans[0].composed_epsilon and rho == plans[0].composed_rho
    assert rho == pytest.approx(sum(plan_rho(p) for p in plans), rel=1e-14)
    # never charged below what is certified, and the budget is used (within the 1e-9 slack)
    assert Fraction(certified) <= charged[0] and Fraction(direct) <= charged[0]
    assert certified > 1 - 1e-6
    assert certified_charge(plans)[0] <= charged[0]
    assert certified_charge(plans)[1] == charged[1]


def test_four_gaussians_get_about_four_times_the_rho_for_the_same_charge() -> None:
    demands = [Demand(1, 1.0)] * 4
    new = allocate(demands, 1.0, 1e-6, "gaussian")
    old = _equal_split(demands, 1.0, 1e-6, "gaussian")
    assert [p.epsilon for p in new] == [p.epsilon for p in old] == [Fraction(1, 4)] * 4
    assert [p.delta for p in new] == [p.delta for p in old]
    ratio = new[0].rho / old[0].rho  # type: ignore[operator]
    assert 3.8 < ratio < 4.0  # 0.00609 each instead of 0.00157
    assert new[0].rho == pytest.approx(rho_for(1.0, 1e-6) / 4, rel=1e-6)
    assert math.sqrt(old[0].total_variance / new[0].total_variance) > 1.9  # sd 1.97x smaller
    assert "composed in zCDP with 3 other Gaussian aggregates" in new[0].describe()
    assert "(a 1/4 share)" in new[0].describe()


def test_each_aggregate_alone_would_cost_more_than_its_share() -> None:
    """What the composition gains, stated as epsilon: one of the four aggregates' noise,
    released alone, is worth an epsilon far above its 1/4 share of the charge."""
    new = allocate([Demand(1, 1.0)] * 4, 1.0, 1e-6, "gaussian")
    alone = cks_epsilon(new[0].rho, 2.5e-7)  # type: ignore[arg-type]
    assert 0.5 < alone < 0.52 and new[0].epsilon == Fraction(1, 4)


def test_closed_form_conversion_matches_opendp() -> None:
    for eps, delta in ((1.0, 1e-6), (0.1, 1e-9), (5.0, 1e-5), (50.0, 1e-12)):
        assert cks_rho(eps, delta) == pytest.approx(rho_for(eps, delta), rel=1e-9)
        assert cks_epsilon(rho_for(eps, delta), delta) == pytest.approx(eps, rel=1e-9)


def test_laplace_charge_is_opendps_map_up_to_its_rounding() -> None:
    """Laplace aggregates charge the exact l1 / t (a Fraction, what the budget split gave);
    OpenDP's map of the same discrete Laplace rounds that up to a float, within one ulp."""
    plans = allocate([Demand(1, 1.0), Demand(3, 3.0), Demand(10**7, 1e7)], 1.0, 0)
    for p in plans:
        meas = dp.m.make_laplace(dp.vector_domain(dp.atom_domain(T="i64")),
                                 dp.l1_distance(T="i64"), scale=p.scale)
        mapped = meas.map(p.l1)
        assert Fraction(p.l1) / Fraction(p.scale) <= p.epsilon == Fraction(1, 3)
        assert mapped >= float(Fraction(p.l1) / Fraction(p.scale))
        assert mapped <= math.nextafter(float(p.epsilon), math.inf)


# ---------------------------------------------------------------- the split


def _weighted(plans: list[NoisePlan], base: list[NoisePlan]) -> float:
    return sum(p.total_variance / b.total_variance for p, b in zip(plans, base, strict=True))


@pytest.mark.parametrize(
    ("name", "demands", "mechanism"),
    [("three Gaussians", [Demand(1, 1.0), Demand(30, math.sqrt(30)), Demand(5, 5.0)],
      "gaussian"),
     ("counts beside multi-cell counts",
      [Demand(1, 1.0, 10), Demand(1, 1.0, 10), Demand(64, 8.0, 10), Demand(64, 8.0, 10)],
      "auto"),
     ("COUNT(DISTINCT) beside a count",
      [Demand(1, 1.0, 10), Demand(30, math.sqrt(30), 10), Demand(30, math.sqrt(30), 10)],
      "auto"),
     ("twenty counts across parties", [Demand(1, 1.0, 1)] * 20, "auto")],
)
def test_new_split_has_lower_total_variance_than_the_equal_split(
        name: str, demands: list[Demand], mechanism: str) -> None:
    new = allocate(demands, 1.0, 1e-6, mechanism)
    old = _equal_split(demands, 1.0, 1e-6, mechanism)
    k = len(demands)
    assert _weighted(new, old) < 0.99 * k  # relative to the equal split, which scores k
    if len({(d.l1, d.l2) for d in demands}) == 1:  # same units: the raw sum is comparable
        assert sum(p.total_variance for p in new) < sum(p.total_variance for p in old)
    assert sum((p.epsilon for p in new), Fraction(0)) == 1
    assert sum((p.delta for p in new), Fraction(0)) <= Fraction(1, 10**6)
    eps, dlt = certified_charge(new)
    assert eps <= 1 and dlt <= Fraction(1, 10**6)


def test_mixed_split_spends_delta_on_the_gaussians_and_gives_the_counts_more() -> None:
    demands = [Demand(1, 1.0, 10), Demand(1, 1.0, 10), Demand(64, 8.0, 10), Demand(64, 8.0, 10)]
    new = allocate(demands, 1.0, 1e-6)
    old = _equal_split(demands, 1.0, 1e-6)
    assert [p.mechanism for p in old] == ["laplace", "laplace", "gaussian", "gaussian"]
    assert [p.mechanism for p in new] == ["laplace", "laplace", "gaussian", "gaussian"]
    assert new[0].central and new[0].epsilon > Fraction(1, 4)  # the counts get more epsilon
    # ... and every aggregate is less noisy than before
    assert all(p.total_variance < b.total_variance for p, b in zip(new, old, strict=True))
    assert new[2].composed == 2 and new[2].composed_delta == Fraction(1, 10**6) - (
        new[0].delta + new[1].delta)


def test_pure_laplace_queries_keep_the_equal_split() -> None:
    """Pure epsilon (and Laplace plans under delta) compose best by basic composition: the
    accountant changes nothing there, so plans and golden plans stay as they were."""
    for demands, delta, mechanism in (([Demand(1, 1.0, 1)] * 4, 1e-6, "auto"),
                                      ([Demand(1, 1.0), Demand(300, 300.0)], 0.0, "auto"),
                                      ([Demand(1, 1.0, 4)] * 3, 1e-6, "central_laplace"),
                                      ([Demand(7, 7.0)] * 3, 1e-6, "laplace")):
        new = allocate(demands, 1.0, delta, mechanism)
        assert new == _equal_split(demands, 1.0, delta, mechanism)
    plan = _plan(FOUR)
    assert all(a.noise.epsilon == Fraction(1, 4) for a in plan.aggregates)


def test_search_and_certificate_are_fast_enough_to_plan() -> None:
    import time

    t0 = time.perf_counter()
    allocate([Demand(1, 1.0, 10)] * 6 + [Demand(64, 8.0, 10)] * 6, 0.9, 1e-7)
    assert time.perf_counter() - t0 < 10.0  # about 0.1 s; generous for a loaded machine


# ---------------------------------------------------------------- plans and the ledger


def test_compiled_gaussian_plan_composes_every_aggregate() -> None:
    plan = _plan(FOUR, mechanism="gaussian")
    noises = [a.noise for a in plan.aggregates]
    assert len(noises) == 4 and all(n.composed == 4 for n in noises)
    assert plan.epsilon == 1 and plan.delta == Fraction(1, 10**6)
    assert "composed in zCDP with 3 other" in plan.to_s()
    eps, dlt = certified_charge(noises)
    assert eps <= plan.epsilon and dlt == plan.delta
    # the same query under basic composition: every aggregate noisier
    for agg in plan.aggregates:
        alone = calibrate(agg.l1, agg.l2, Fraction(1, 4), Fraction(1, 4 * 10**6), "gaussian")
        assert agg.noise.total_variance < alone.total_variance / 3


def test_partition_selection_keeps_its_share() -> None:
    sql = ("SELECT c.branch, COUNT(*) AS n, SUM(c.income) AS s FROM bank.customers c "
           "JOIN insurer.policies p ON c.customer_id = p.customer_id GROUP BY c.branch")
    plan = _plan(sql, mechanism="gaussian")
    sel = plan.aggregate("__selection").noise
    assert sel.mechanism == "laplace" and sel.epsilon == Fraction(1, 3)
    values = [plan.aggregate(n).noise for n in ("n", "s")]
    assert all(v.composed == 2 for v in values)
    assert sum((v.epsilon for v in values), Fraction(0)) == Fraction(2, 3)
    assert plan.delta == sum((a.noise.delta for a in plan.aggregates), Fraction(0)) \
        + Fraction(1, 2 * 10**6)
    assert plan.delta <= Fraction(1, 10**6)


def test_ledger_charges_the_plans_fractions_at_least_the_certificate(tmp_path: Path) -> None:
    fed = oracle_federation(DEMO, tmp_path / "fed")
    sql = ("SELECT COUNT(*) AS n, SUM(a.monthly_txn_amount) AS s, AVG(p.premium) AS pp "
           "FROM payments.accounts a JOIN insurer.policies p ON a.customer_id = p.customer_id")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with veilql.connect(fed, "oracle") as session:
            res = session.sql(sql, epsilon=0.7, delta=1e-6, mechanism="gaussian")
            exact = session.sql(sql, epsilon=1e12, delta=0).rows[0]
            spent = session.ledger("payments").spent("oracle")  # type: ignore[union-attr]
    plan = res.plan
    assert plan is not None
    noises = [a.noise for a in plan.aggregates]
    assert all(n.composed == len(noises) for n in noises)
    certified = certified_charge(noises)
    # the first query: the ledger holds exactly this plan's charge (the oracle one added
    # 1e12 after it)
    assert spent[1] == plan.delta == Fraction(1, 10**6)
    assert spent[0] == plan.epsilon + Fraction(10**12)
    assert plan.epsilon == Fraction(7, 10) >= certified[0] and plan.delta >= certified[1]
    n, s, pp = res.rows[0]
    assert abs(n - exact[0]) < 10 * res.accuracy["n"]["ci95"]
    assert res.accuracy["s"]["ci95"] > 0 and pp > 0


# ---------------------------------------------------------------- the law of the new noise


def _composed_plans() -> list[NoisePlan]:
    demands = [Demand(1, 1.0), Demand(30, 10.0), Demand(4, 2.0)]
    return allocate(demands, 0.8, 1e-6, "gaussian")


@pytest.mark.parametrize("i", [0, 1, 2])
def test_composed_gaussian_noise_matches_its_scale(i: int) -> None:
    plan = _composed_plans()[i]
    assert plan.composed == 3
    pmf, zero = total_pmf(plan)
    assert chi2_pvalue(sample_total(plan, N_SAMPLES), pmf, zero) > P_FAIL
    for factor in (0.7, 1.3):
        assert chi2_pvalue(sample_total(scaled(plan, factor), N_SAMPLES), pmf, zero) < P_FAIL


@pytest.mark.parametrize("i", [0, 2])
def test_mixed_local_plan_noise_matches_its_scale(i: int) -> None:
    """Local mode: one party adds each aggregate's noise (a Laplace at its new epsilon, or a
    composed Gaussian)."""
    plans = allocate([Demand(1, 1.0), Demand(1, 1.0), Demand(64, 8.0), Demand(64, 8.0)],
                     1.0, 1e-6, local=True)
    assert [p.mechanism for p in plans] == ["laplace", "laplace", "gaussian", "gaussian"]
    plan = plans[i]
    assert plan.adders == (0,)
    pmf, zero = total_pmf(plan)
    assert chi2_pvalue(sample_total(plan, N_SAMPLES), pmf, zero) > P_FAIL
    for factor in (0.7, 1.3):
        assert chi2_pvalue(sample_total(scaled(plan, factor), N_SAMPLES), pmf, zero) < P_FAIL


def test_mixed_plan_on_shares_has_the_new_laws() -> None:
    """A mixed plan across parties, through the real protocol: the counts' Laplace sampled
    on shares at their new (larger) epsilon, the composed Gaussians from every party."""
    plan = _plan("SELECT COUNT(*) AS n FROM bank.loans l JOIN insurer.policies p "
                 "ON l.customer_id = p.customer_id")
    demands = [Demand(1, 1.0, 8000), Demand(1, 1.0, 8000), Demand(64, 8.0, 8000),
               Demand(64, 8.0, 8000)]
    noises = allocate(demands, 1.0, 1e-6)
    assert [n.central for n in noises] == [True, True, False, False]
    aggs = tuple(replace(plan.aggregates[0], name=f"a{i}", noise=n)
                 for i, n in enumerate(noises))
    plan = replace(plan, aggregates=aggs)
    cells = 8000
    zeros = np.zeros((len(aggs), cells), dtype=np.uint64)

    def prog(rt: Runtime):  # type: ignore[no-untyped-def]
        x = AShare(rt.me, zeros.copy(), zeros.copy())
        return rt.open(add_noise(rt, plan, x)).view(np.int64)

    with deterministic_seeds("accounting-law"):
        out = run_three(prog, timeout=300.0)[0]
    t = noises[0].scale
    assert noises[0].epsilon > Fraction(1, 4) and t < 4.0
    for row in (0, 1):
        assert chi2_cdf(out[row], lambda x, t=t: _dlap_cdf(t, x)) > 1e-6
        assert chi2_cdf(out[row], lambda x, t=t: _dlap_cdf(1.3 * t, x)) < 1e-6
        # the equal split's scale (epsilon 1/4) is told apart as well
        assert chi2_cdf(out[row], lambda x: _dlap_cdf(4.0, x)) < 1e-6
    for row in (2, 3):
        pmf, zero = total_pmf(noises[row])
        assert chi2_pvalue(out[row], pmf, zero) > 1e-6
        wrong, wzero = total_pmf(scaled(noises[row], 1.3))
        assert chi2_pvalue(out[row], wrong, wzero) < 1e-6


# ---------------------------------------------------------------- central Laplace vs Gaussian


def _dgauss_variance(sigma2: float) -> float:
    """Var N_Z(0, sigma^2) by direct summation (tails beyond 40 sigma are below e^-800)."""
    half = int(40 * math.sqrt(sigma2)) + 40
    xs = np.arange(-half, half + 1, dtype=np.float64)
    w = np.exp(-(xs * xs) / (2 * sigma2))
    return float((w * xs * xs).sum() / w.sum())


def test_the_two_variance_inequalities_of_the_argument() -> None:
    from veilql.engine.dp.account import dgauss_variance_deficit
    from veilql.engine.dp.calibrate import dlap_variance

    for t in (0.1, 0.5, 1.0, 3.0, 100.0, 1e6):
        assert dlap_variance(t) <= 2 * t * t
    for sigma2 in (0.1, 0.25, 1.0, 9.0, 400.0):
        var = _dgauss_variance(sigma2)
        assert sigma2 * (1 - dgauss_variance_deficit(sigma2)) <= var * (1 + 1e-12)
        assert var <= sigma2 * (1 + 1e-12)


@pytest.mark.parametrize("k", [1, 4, 8, 12, 20])
@pytest.mark.parametrize(("epsilon", "delta"), [(0.1, 1e-5), (1.0, 1e-6), (5.0, 1e-8)])
def test_the_bound_is_above_the_exact_ratio(k: int, epsilon: float, delta: float) -> None:
    from veilql.engine.dp.account import laplace_over_central_gaussian
    from veilql.engine.dp.calibrate import dlap_variance

    rho = rho_for(epsilon, delta)
    exact = math.sqrt(dlap_variance(k / epsilon) / _dgauss_variance(k / (2 * rho)))
    bound = laplace_over_central_gaussian(k, epsilon, delta)
    assert exact <= bound
    if k / epsilon >= 1:  # the 2 t^2 bound on the Laplace variance is loose only at tiny t
        assert bound <= exact * 1.15


def test_central_laplace_is_within_5_percent_of_a_central_gaussian() -> None:
    """The certificate of docs/PRIVACY.md on the test's grid (ratio 1.1; the finer grid of
    the doc, ratio 1.02, certifies one or two more aggregates: the slow test)."""
    from veilql.engine.dp.account import certified_aggregates

    assert certified_aggregates(1e-6, 1.0) == 6
    assert certified_aggregates(1e-6) == 7


@pytest.mark.slow
def test_the_certificates_of_the_doc() -> None:
    from veilql.engine.dp.account import certified_aggregates

    got = {d: (certified_aggregates(d, 1.0, ratio=1.02), certified_aggregates(d, ratio=1.02))
           for d in (1e-5, 1e-6, 1e-8)}
    assert got == {1e-5: (5, 6), 1e-6: (7, 8), 1e-8: (11, 12)}


def test_beyond_the_certificate_the_accountant_stays_within_sqrt_1_5() -> None:
    """For more aggregates the accountant picks distributed Gaussians composed in zCDP:
    their sd is sqrt(3/2) times a central Gaussian's at most (plus the tau margin)."""
    from veilql.engine.dp.account import laplace_over_central_gaussian

    for k in (4, 8, 12, 16, 24):
        plans = allocate([Demand(1, 1.0, 1)] * k, 1.0, 1e-6)
        central = _dgauss_variance(k / (2 * rho_for(1.0, 1e-6)))
        ratio = math.sqrt(plans[0].total_variance / central)
        assert ratio <= min(laplace_over_central_gaussian(k, 1.0, 1e-6),
                            math.sqrt(1.5) * 1.001)
