"""Statistical and calibration tests of the distributed DP mechanisms (veilql.engine.dp).

Distribution tests compare the TOTAL released noise (sum of the three parties' shares) with the
exact claimed pmf, computed here independently by numeric convolution, with a chi-square test
over equal-probability bins; each test also checks that the same procedure rejects a plan whose
scale is 30% off. Samples come from the real samplers (OpenDP, CSPRNG), so the tests use tiny
significance levels (1e-6) to be deterministic in practice.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from veilql.engine.dp import (
    LargeEpsilonWarning,
    NoisePlan,
    avg_ci95,
    calibrate,
    ci95,
    sample_share,
    sample_total,
    split_budget,
)
from veilql.engine.dp.accuracy import _box_avg_half_width, dlap_sum_log_tail, half_width
from veilql.engine.dp.calibrate import (
    MIN_DELTA,
    MIN_EPSILON,
    gaussian_rho_bound,
    kls_tau,
    laplace_scale,
    rho_for,
)
from veilql.engine.dp.ring import SAFE_RANGE, adder_bound, noise_bound
from veilql.engine.dp.sample import NoiseSaturated
from veilql.errors import QueryError

P_FAIL = 1e-6
N_SAMPLES = 30_000


# ---------------------------------------------------------------- exact reference pmfs


def _fft_convolve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    n = len(a) + len(b) - 1
    size = 1 << (n - 1).bit_length()
    out = np.fft.irfft(np.fft.rfft(a, size) * np.fft.rfft(b, size), size)[:n]
    return np.clip(out, 0.0, None)


def dlap_pmf(t: float, half: int) -> np.ndarray:
    """pmf of DLap(t) on -half..half: (1-p)/(1+p) p^|x|."""
    p = math.exp(-1 / t)
    xs = np.abs(np.arange(-half, half + 1))
    return (1 - p) / (1 + p) * np.exp(-xs / t)


def dgauss_pmf(s: float, half: int) -> np.ndarray:
    """pmf of N_Z(0, s^2) on -half..half (normalised numerically; tails beyond are < e^-70)."""
    xs = np.arange(-half, half + 1, dtype=np.float64)
    w = np.exp(-(xs * xs) / (2 * s * s))
    return w / w.sum()


def total_pmf(plan: NoisePlan) -> tuple[np.ndarray, int]:
    """Exact pmf of the sum of every adder's noise; returns (pmf, offset of value 0)."""
    if plan.mechanism == "laplace":
        half = int(40 * plan.party_scale) + 40
        one = dlap_pmf(plan.party_scale, half)
    else:
        half = int(12 * plan.party_scale) + 12
        one = dgauss_pmf(plan.party_scale, half)
    pmf = one
    for _ in range(plan.draws - 1):  # central plans: one draw, no adders
        pmf = _fft_convolve(pmf, one)
    return pmf / pmf.sum(), len(pmf) // 2


def chi2_pvalue(samples: np.ndarray, pmf: np.ndarray, zero: int, bins: int = 40) -> float:
    """Chi-square goodness of fit over ~equal-probability integer bins of the exact pmf."""
    cdf = np.cumsum(pmf)
    cuts = np.unique(np.searchsorted(cdf, np.linspace(0, 1, bins + 1)[1:-1]))
    edges = cuts - zero  # bin i holds values in (edges[i-1], edges[i]]
    expected = np.diff(np.concatenate([[0.0], cdf[cuts], [1.0]]))
    observed = np.bincount(np.searchsorted(edges, samples, side="left"),
                           minlength=len(expected))
    keep = expected > 0
    exp_counts = expected[keep] * len(samples)
    obs = observed[keep]
    return float(stats.chisquare(obs, exp_counts * obs.sum() / exp_counts.sum()).pvalue)


def scaled(plan: NoisePlan, factor: float) -> NoisePlan:
    return dataclasses.replace(plan, party_scale=plan.party_scale * factor)


# ---------------------------------------------------------------- distribution of the noise


LAPLACE_PLANS = [calibrate(1, 1.0, 0.25), calibrate(100, 100.0, 1.0)]
GAUSS_PLANS = [calibrate(1, 1.0, 1.0, 1e-6, "gaussian"), calibrate(30, 10.0, 0.5, 1e-6, "gaussian")]


@pytest.mark.parametrize("plan", LAPLACE_PLANS + GAUSS_PLANS, ids=lambda p: p.describe()[:40])
def test_total_noise_matches_claimed_pmf(plan: NoisePlan) -> None:
    pmf, zero = total_pmf(plan)
    assert chi2_pvalue(sample_total(plan, N_SAMPLES), pmf, zero) > P_FAIL


@pytest.mark.parametrize("factor", [0.7, 1.3])
@pytest.mark.parametrize("plan", LAPLACE_PLANS + GAUSS_PLANS, ids=lambda p: p.describe()[:40])
def test_same_test_rejects_scale_30_percent_off(plan: NoisePlan, factor: float) -> None:
    pmf, zero = total_pmf(plan)
    wrong = sample_total(scaled(plan, factor), N_SAMPLES)
    assert chi2_pvalue(wrong, pmf, zero) < P_FAIL


def test_shares_only_from_adders_and_int64() -> None:
    lap = calibrate(1, 1.0, 1.0)
    assert lap.adders == (0, 1)
    assert not sample_share(lap, 2, 1000).any()
    share = sample_share(lap, 0, 1000)
    assert share.dtype == np.int64 and share.any()
    gauss = calibrate(1, 1.0, 1.0, 1e-6, "gaussian")
    assert gauss.adders == (0, 1, 2)
    assert all(sample_share(gauss, i, 1000).any() for i in range(3))
    with pytest.raises(ValueError):
        sample_share(lap, 3, 1)


def test_large_scale_shares_are_i64_and_right_size() -> None:
    # A SUM in cents: L1 = 1e8 cents at eps 0.1 gives t = 1e9, still exact and in range.
    plan = calibrate(10**8, 1e8, 0.1)
    x = sample_share(plan, 0, 20_000).astype(np.float64)
    # Var DLap(t) ~ 2 t^2; the sample sd is within 5% of sqrt(2) t with 20k draws.
    assert abs(x.std() / (math.sqrt(2) * plan.party_scale) - 1) < 0.05


def test_opendp_library_uses_openssl_rng() -> None:
    # OpenDP's fill_bytes under the use-openssl feature reports "OpenSSL error: "; its presence
    # shows the installed wheel draws noise bits from OpenSSL's RAND_bytes (a CSPRNG).
    import opendp

    lib = Path(opendp.__file__).parent / "lib"
    blobs = [f.read_bytes() for f in lib.iterdir() if f.suffix in {".so", ".dylib", ".dll"}]
    assert any(b"OpenSSL error: " in blob for blob in blobs)


# ---------------------------------------------------------------- accuracy


def test_laplace_closed_form_tail_matches_convolution() -> None:
    for t in (0.7, 3.0, 25.0):
        plan = calibrate_with_scale(t)
        pmf, zero = total_pmf(plan)
        for a in (1, 2, 5, int(3 * t) + 1):
            exact = pmf[zero + a:].sum() + pmf[:zero - a + 1].sum()
            assert math.isclose(math.exp(dlap_sum_log_tail(t, 2, a)), exact, rel_tol=1e-9)


def calibrate_with_scale(t: float) -> NoisePlan:
    return dataclasses.replace(calibrate(1, 1.0, 1.0), scale=t, party_scale=t)


@pytest.mark.parametrize("plan", LAPLACE_PLANS + GAUSS_PLANS + [calibrate(1, 1.0, 0.1)],
                         ids=lambda p: p.describe()[:40])
def test_ci95_is_smallest_integer_with_95_percent_exactly(plan: NoisePlan) -> None:
    pmf, zero = total_pmf(plan)
    h = int(ci95(plan))

    def inside(k: int) -> float:
        return float(pmf[zero - k:zero + k + 1].sum())

    assert inside(h) >= 0.95 > inside(h - 1)


@pytest.mark.parametrize("plan", LAPLACE_PLANS + GAUSS_PLANS, ids=lambda p: p.describe()[:40])
def test_ci95_coverage_between_93_and_97_percent(plan: NoisePlan) -> None:
    noise = sample_total(plan, 20_000)
    coverage = float(np.mean(np.abs(noise) <= ci95(plan)))
    assert 0.93 <= coverage <= 0.97


def test_gaussian_ci_uses_opendp_above_exact_range_and_agrees() -> None:
    plan = calibrate(1000, 1000.0, 1.0, 1e-6, "gaussian")  # party sigma ~ 3200 > 50
    assert plan.party_scale > 50
    pmf, zero = total_pmf(plan)
    h = int(ci95(plan))
    assert abs(h - 1.96 * math.sqrt(3) * plan.party_scale) < 0.01 * h
    assert pmf[zero - h:zero + h + 1].sum() >= 0.95 - 1e-4
    coverage = float(np.mean(np.abs(sample_total(plan, 20_000)) <= h))
    assert 0.93 <= coverage <= 0.97


def test_laplace_single_adder_tail_agrees_with_opendp() -> None:
    import opendp.prelude as dp

    for t in (2.0, 10.0, 1e6):
        acc = dp.discrete_laplacian_scale_to_accuracy(t, 0.05)
        # OpenDP: P(|X| >= acc) <= 0.05, so our one-adder tail at ceil(acc) is <= 0.05.
        assert math.exp(dlap_sum_log_tail(t, 1, math.ceil(acc))) <= 0.05 + 1e-12
        assert math.exp(dlap_sum_log_tail(t, 1, math.ceil(acc) - 1)) > 0.05


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_avg_ci95_coverage_is_near_95_percent(mechanism: str) -> None:
    count_plan = calibrate(1, 1.0, 0.5, 1e-6, mechanism)
    sum_plan = calibrate(100, 100.0, 0.5, 1e-6, mechanism)
    true_count, true_sum = 400, 400 * 37
    n = 3000
    c = true_count + sample_total(count_plan, n)
    s = true_sum + sample_total(sum_plan, n)
    hits = [abs(si / ci - true_sum / true_count) <= avg_ci95(si, ci, sum_plan, count_plan)
            for si, ci in zip(s.tolist(), c.tolist(), strict=True)]
    coverage = sum(hits) / n
    # Exact test inversion: ~95%, unlike the box of two intervals (~99% here). The band is
    # wider than for ci95 because 3000 runs leave a standard error of 0.4%.
    assert 0.935 <= coverage <= 0.97


def test_avg_ci95_is_tighter_than_the_box_of_two_intervals() -> None:
    count_plan, sum_plan = calibrate(1, 1.0, 0.5), calibrate(100, 100.0, 0.5)
    tight = avg_ci95(14800.0, 400.0, sum_plan, count_plan)
    box = _box_avg_half_width(14800.0, 400.0, sum_plan, count_plan)
    assert tight < 0.75 * box
    # Falls back to the box when the count noise is too wide to enumerate.
    wide_count = calibrate(10**5, 1e5, 0.5)
    assert avg_ci95(1e9, 1e7, sum_plan, wide_count) == _box_avg_half_width(
        1e9, 1e7, sum_plan, wide_count)


def test_avg_ci95_infinite_when_count_interval_reaches_zero() -> None:
    plan = calibrate(1, 1.0, 0.1)
    assert avg_ci95(10.0, 3.0, plan, plan) == math.inf
    assert avg_ci95(5000.0, 1000.0, plan, plan) < 1


def test_half_width_grows_as_alpha_shrinks() -> None:
    plan = calibrate(1, 1.0, 0.2)
    assert half_width(plan, 0.01) > half_width(plan, 0.05) > half_width(plan, 0.5)


# ---------------------------------------------------------------- empirical privacy audit


def _clopper_pearson(k: int, n: int, conf: float) -> tuple[float, float]:
    a = 1 - conf
    lo = 0.0 if k == 0 else float(stats.beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def test_privacy_audit_count_stays_under_claimed_epsilon() -> None:
    """Neighbouring counts c and c+1; the view is the worst coalition's: party 0 colludes with
    the analyst and subtracts its own share, leaving c + party 1's noise (one DLap(t))."""
    epsilon = 1.0
    plan = calibrate(1, 1.0, epsilon)
    n, c = 120_000, 50

    def coalition_view(count: int) -> np.ndarray:
        # Party 0's share is known to the coalition and cancels; parties 1 and 2 stay hidden.
        return count + sample_share(plan, 1, n) + sample_share(plan, 2, n)

    out0, out1 = coalition_view(c), coalition_view(c + 1)
    thresholds = range(c - 3, c + 6)
    conf = 1 - 1e-4 / len(thresholds)  # Bonferroni over the output sets tried
    eps_lb = 0.0
    for k in thresholds:
        # Output set {o >= k} favours the larger count; {o <= k} the smaller.
        for a, b in (((out1 >= k).sum(), (out0 >= k).sum()), ((out0 <= k).sum(),
                                                               (out1 <= k).sum())):
            lo, _ = _clopper_pearson(int(a), n, conf)
            _, hi = _clopper_pearson(int(b), n, conf)
            if lo > 0:
                eps_lb = max(eps_lb, math.log(lo / hi))
    assert eps_lb <= epsilon
    assert eps_lb > 0.8 * epsilon  # the audit is strong enough to see most of the loss


# ---------------------------------------------------------------- calibration


def test_laplace_scale_is_l1_over_epsilon() -> None:
    assert calibrate(1, 1.0, 1.0).scale == 1.0
    assert calibrate(5, 3.0, 0.5).scale == 10.0
    t = laplace_scale(1, Fraction(1, 3))
    assert Fraction(1) / Fraction(t) <= Fraction(1, 3)  # never more budget than charged
    assert t == pytest.approx(3.0, rel=1e-15)
    plan = calibrate(7, 7.0, 0.3, 1e-6, "laplace")
    assert plan.delta == 0 and plan.epsilon == Fraction(3, 10)


def test_rho_for_matches_cks20_closed_form() -> None:
    # CKS20 Cor. 13: delta = inf_a exp((a-1)(a rho - eps)) / (a-1) * (1 - 1/a)^a.
    from scipy.optimize import minimize_scalar

    for eps, delta in ((1.0, 1e-6), (0.3, 1e-9), (4.0, 1e-5)):
        rho = rho_for(eps, delta)

        def log_delta(a: float, rho: float = rho, eps: float = eps) -> float:
            return (a - 1) * (a * rho - eps) - math.log(a - 1) + a * math.log(1 - 1 / a)

        best = minimize_scalar(log_delta, bounds=(1 + 1e-6, 1e5), method="bounded").fun
        assert math.exp(best) == pytest.approx(delta, rel=1e-4)


def test_gaussian_sigma_from_rho() -> None:
    plan = calibrate(40, 20.0, 1.0, 1e-6, "gaussian")
    rho = rho_for(1.0, 1e-6)
    # tau is negligible at this scale, so sigma^2 = L2^2 / (2 rho) and each party adds half.
    assert plan.scale**2 == pytest.approx(20.0**2 / (2 * rho), rel=1e-6)
    assert plan.party_scale**2 == pytest.approx(plan.scale**2 / 2, rel=1e-12)
    assert plan.rho is not None and plan.rho <= rho


def test_gaussian_margin_covers_kls_tau_at_small_sigma() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LargeEpsilonWarning)
        plan = calibrate(3, math.sqrt(3), 8.0, 1e-6, "gaussian")
    target = rho_for(8.0, 1e-6)
    tau = kls_tau(plan.party_scale, 2)
    assert tau > 1e-6  # the extra term matters here
    assert gaussian_rho_bound(plan.l2, plan.party_scale, 2, 3) <= target
    assert plan.party_scale**2 * 2 > plan.l2**2 / (2 * target)  # sigma raised above plain zCDP


def test_auto_picks_smaller_variance() -> None:
    single = calibrate(1, 1.0, 1.0, 1e-6)
    assert single.mechanism == "laplace" and single.delta == 0
    many = calibrate(64, 8.0, 1.0, 1e-6)  # one person touches 64 cells by 1
    assert many.mechanism == "gaussian"
    lap = calibrate(64, 8.0, 1.0, 1e-6, "laplace")
    assert many.total_variance < lap.total_variance
    assert calibrate(1, 1.0, 1.0, 0).mechanism == "laplace"
    assert "discrete Gaussian" in many.describe() and "0,1,2" in many.describe()


def test_split_budget_sums_exactly() -> None:
    for eps, delta, k in ((1.0, 1e-6, 3), (0.1, 0, 7), (Fraction(2, 3), Fraction(1, 10**7), 5)):
        shares = split_budget(eps, delta, k)
        assert len(shares) == k
        assert sum(e for e, _ in shares) == Fraction(str(eps))  # decimal, as in the ledger
        assert sum(d for _, d in shares) == Fraction(str(delta))
        assert len({s for s in shares}) == 1


@pytest.mark.parametrize(
    ("eps", "delta", "needle"),
    [(0, 0, "epsilon must be > 0"), (-1.0, 0, "epsilon must be > 0"),
     (float("nan"), 0, "epsilon must be finite"), (float("inf"), 0, "epsilon must be finite"),
     (1.0, 1.0, "delta must be in [0, 1)"), (1.0, -1e-9, "delta must be in [0, 1)"),
     (1.0, float("nan"), "delta must be finite"), ("1", 0, "epsilon must be a number")],
)
def test_bad_budget_is_refused_with_hint(eps: object, delta: object, needle: str) -> None:
    with pytest.raises(QueryError) as err:
        calibrate(1, 1.0, eps, delta)
    assert needle in str(err.value) and err.value.hint


def test_gaussian_without_delta_and_unknown_mechanism_refused() -> None:
    with pytest.raises(QueryError, match="delta > 0"):
        calibrate(1, 1.0, 1.0, 0, "gaussian")
    with pytest.raises(QueryError, match="unknown noise mechanism"):
        calibrate(1, 1.0, 1.0, 0, "staircase")
    with pytest.raises(QueryError):
        split_budget(1.0, 0, 0)


def test_large_epsilon_warns() -> None:
    with pytest.warns(LargeEpsilonWarning, match="epsilon = 6"):
        calibrate(1, 1.0, 6.0)


def test_bad_sensitivity_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        calibrate(0, 1.0, 1.0)
    with pytest.raises(ValueError):
        calibrate(2, 3.0, 1.0)  # L2 > L1 is impossible


# ---------------------------------------------------------------- safe range of the ring


@pytest.mark.parametrize(
    ("eps", "delta", "needle"),
    [(1e-18, 0, "is below 1e-17"), (1e-300, 1e-6, "is below 1e-17"),
     (1e16, 0, "is above 1e+15"), (1.0, 1e-31, "delta 1e-31 is below 1e-30")],
)
def test_budget_outside_the_limits_is_refused_with_hint(eps: float, delta: float,
                                                        needle: str) -> None:
    started = time.monotonic()
    with pytest.raises(QueryError) as err:
        calibrate(1, 1.0, eps, delta)
    assert needle in str(err.value) and err.value.hint
    assert time.monotonic() - started < 0.1


def test_split_below_the_per_aggregate_floor_names_the_query_epsilon() -> None:
    with pytest.raises(QueryError, match="split over 4 aggregates") as err:
        split_budget(2e-17, 0, 4)
    assert err.value.hint == "raise epsilon to at least 4e-17"
    with pytest.raises(QueryError, match="gives 7.5e-31 each") as err:
        split_budget(1.0, 3e-30, 4)
    assert err.value.hint is not None and "raise delta to at least 4e-30" in err.value.hint
    assert split_budget(MIN_EPSILON, MIN_DELTA, 1) == [(MIN_EPSILON, MIN_DELTA)]


@pytest.mark.parametrize("adders", [1, 2, 3])
@pytest.mark.parametrize("t", [0.5, 3.0, 1e3, 1e15])
def test_laplace_noise_bound_holds_with_probability_2_to_minus_64(adders: int, t: float) -> None:
    k = adder_bound("laplace", t, adders)
    # P(|X| > k) = P(|X| >= k + 1), exact closed form, per adder; union over the adders.
    assert dlap_sum_log_tail(t, 1, k + 1) + math.log(adders) <= -64 * math.log(2)
    # and not wildly loose: at 0.9 k the tail is well above 2^-64 / adders
    assert dlap_sum_log_tail(t, 1, int(0.9 * k)) + math.log(adders) > -64 * math.log(2)


@pytest.mark.parametrize("s", [0.5, 3.0, 40.0])
def test_gaussian_noise_bound_holds_with_probability_2_to_minus_64(s: float) -> None:
    k = adder_bound("gaussian", s, 3)
    xs = np.arange(-40 * math.ceil(s) - 40, 40 * math.ceil(s) + 41)
    logw = -(xs.astype(np.float64) ** 2) / (2 * s * s)
    log_z = np.logaddexp.reduce(logw)
    outside = np.logaddexp.reduce(logw[np.abs(xs) > k]) - log_z  # exact discrete Gaussian tail
    assert outside + math.log(3) <= -64 * math.log(2)


def test_sampler_refuses_a_saturated_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    # OpenDP saturates an i64 draw at the limits; such a draw is not the claimed noise.
    import veilql.engine.dp.sample as sample

    plan = calibrate(1, 1.0, 1.0)
    monkeypatch.setattr(sample, "_measurement",
                        lambda *_: (lambda xs: [np.iinfo(np.int64).max] + xs[1:]))
    with pytest.raises(NoiseSaturated):
        sample_share(plan, 0, 3)
    monkeypatch.setattr(sample, "_measurement",
                        lambda *_: (lambda xs: [np.iinfo(np.int64).min] * len(xs)))
    with pytest.raises(NoiseSaturated):
        sample_share(plan, 1, 2)


def _largest_accepted(mechanism: str, adders: int) -> NoisePlan:
    """A plan whose noise bound just fits the ring, with nothing left for the value."""
    c = 64 * math.log(2) + math.log(2 * adders)
    per = SAFE_RANGE // adders - 2
    scale = per / (c if mechanism == "laplace" else math.sqrt(2 * c)) / (1 + 1e-6)
    plan = NoisePlan(mechanism, scale, scale, tuple(range(adders)), Fraction(1), Fraction(0),
                     1, 1.0)
    assert SAFE_RANGE * 0.99 < noise_bound(plan) < SAFE_RANGE
    return plan


@pytest.mark.parametrize(("mechanism", "adders"),
                         [("laplace", 1), ("laplace", 2), ("gaussian", 1), ("gaussian", 3)])
def test_error_bars_at_the_largest_accepted_scale_are_fast(mechanism: str, adders: int) -> None:
    plan = _largest_accepted(mechanism, adders)
    started = time.monotonic()
    h = ci95(plan)
    assert h == half_width(plan, 0.05)
    per_sd = 4.11 if mechanism == "laplace" and adders == 2 else None
    if per_sd:
        assert abs(h / plan.party_scale - per_sd) < 0.01
    assert 0 < h < SAFE_RANGE
    assert half_width(plan, 1e-9) > h
    avg_ci95(1e24, 1e19, plan, plan)
    avg_ci95(10.0, 3.0, plan, plan)
    assert time.monotonic() - started < 1


def test_gaussian_half_width_is_continuous_where_opendp_hands_over() -> None:
    # Up to a total scale of 1e5 OpenDP's accuracy, above it the normal tail: they agree.
    import opendp.prelude as dp

    for total in (9.9e4, 1e5):
        s = total / math.sqrt(3)
        plan = NoisePlan("gaussian", s, s, (0, 1, 2), Fraction(1), Fraction(1, 10**6), 1, 1.0)
        acc = dp.discrete_gaussian_scale_to_accuracy(total, 0.05, T="f64")
        assert abs(half_width(plan, 0.05) - (math.ceil(acc) - 1)) <= 1
    above = NoisePlan("gaussian", 2e5, 2e5, (0, 1, 2), Fraction(1), Fraction(0), 1, 1.0)
    assert abs(half_width(above, 0.05) / (math.sqrt(3) * 2e5) - 1.959964) < 1e-5


def test_rho_for_is_bounded_at_the_smallest_epsilon() -> None:
    # The zCDP bisection used to halve from 1e100 down to 1e-6 (~400 OpenDP calls at 25 ms).
    started = time.monotonic()
    rho = rho_for(float(MIN_EPSILON), 1e-6)
    assert time.monotonic() - started < 5
    assert 0 < rho < 1e-10


def test_rho_for_remembers_a_failed_search() -> None:
    # At a huge epsilon OpenDP's zCDP conversion overflows and callers fall back to Laplace;
    # the failure is cached like a value, so a query's many aggregates do not each repeat it.
    from veilql.engine.dp.calibrate import _rho_outcome
    from veilql.engine.dp.opendp_api import OpenDPException

    before = _rho_outcome.cache_info()
    for _ in range(3):
        with pytest.raises(OpenDPException):
            rho_for(3.5e11, 1e-6)
    after = _rho_outcome.cache_info()
    assert after.misses - before.misses == 1 and after.hits - before.hits == 2
