"""AVG error bars (``dp.accuracy.avg_ci95``): the batched search against the sequential one.

``avg_ci95`` evaluates the candidates its doubling and bisection may visit several at a
time; the endpoint it reports must be the one the one-candidate-at-a-time search (the
implementation before, kept below as the reference) reports. Tolerance: 1e-9 relative,
for the last-bit differences a matrix-vector product may sum in another order than a dot
product (one candidate then lands on the other side of the 0.05 level only if its p-value
is within rounding of it); the cases here agree exactly.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest

from veilql.engine.dp import accuracy
from veilql.engine.dp.accuracy import (
    AVG_PART_ALPHA,
    _TotalNoise,
    avg_ci95,
    avg_ci95_cells,
    half_width,
)
from veilql.engine.dp.calibrate import (
    NoisePlan,
    calibrate,
    calibrate_central_laplace,
    calibrate_gaussian,
    calibrate_laplace,
)


def sequential_avg_ci95(noisy_sum: float, noisy_count: float, plan_sum: NoisePlan,
                        plan_count: NoisePlan) -> float:
    """The search as it was: one candidate average per p-value evaluation."""
    alpha = 0.05
    if noisy_count - half_width(plan_count, AVG_PART_ALPHA) <= 0:
        return math.inf
    count_noise = _TotalNoise(plan_count).atoms()
    if count_noise is None:
        return accuracy._box_avg_half_width(noisy_sum, noisy_count, plan_sum, plan_count)
    values, probs = count_noise
    sum_noise = _TotalNoise(plan_sum)
    avg = noisy_sum / noisy_count

    def accepted(mu: float) -> bool:
        d = abs(noisy_sum - mu * noisy_count)
        shift = mu * values
        return float(probs @ (sum_noise.ge(d + shift) + sum_noise.ge(d - shift))) > alpha

    step0 = (half_width(plan_sum, alpha) + abs(avg) * half_width(plan_count, alpha) + 1.0) \
        / noisy_count
    ends = []
    for sign in (1.0, -1.0):
        inner, step = 0.0, step0
        while accepted(avg + sign * step):
            inner, step = step, 2 * step
            if step > 1e6 * step0:
                return math.inf
        outer = step
        while outer - inner > 1e-4 * step0:
            mid = (inner + outer) / 2
            if accepted(avg + sign * mid):
                inner = mid
            else:
                outer = mid
        ends.append(outer)
    return max(ends)


def _plans() -> list[tuple[str, NoisePlan, NoisePlan]]:
    """(name, sum plan, count plan): each mechanism's law of the total noise."""
    eps = Fraction(1)
    return [
        ("laplace two adders", calibrate_laplace(100, 100.0, eps), calibrate_laplace(1, 1.0, eps)),
        ("laplace tiny noise", calibrate(100, 100.0, 1e6), calibrate(1, 1.0, 1e6)),
        ("laplace wide count", calibrate_laplace(500, 500.0, Fraction(1, 50)),
         calibrate_laplace(1, 1.0, Fraction(1, 50))),
        ("central laplace",
         calibrate_central_laplace(100, 100.0, eps, Fraction(1, 10**6), 5),
         calibrate_central_laplace(1, 1.0, eps, Fraction(1, 10**6), 5)),
        ("gaussian exact", calibrate_gaussian(100, 100.0, eps, Fraction(1, 10**6)),
         calibrate_gaussian(1, 1.0, eps, Fraction(1, 10**6))),
        ("gaussian normal tail", calibrate_gaussian(10**6, 10.0**6, eps, Fraction(1, 10**6)),
         calibrate_gaussian(3, 3.0, Fraction(1, 10), Fraction(1, 10**6))),
    ]


@pytest.mark.parametrize(("name", "plan_sum", "plan_count"), _plans(),
                         ids=[p[0] for p in _plans()])
def test_batched_search_reports_the_sequential_endpoint(name: str, plan_sum: NoisePlan,
                                                        plan_count: NoisePlan) -> None:
    rng = random.Random(17)
    cases = [(5000.0, 100.0), (-5000.0, 100.0), (0.0, 40.0), (1e9, 3.0), (1.0, 1e6),
             (3.0, 2.0)]
    cases += [(rng.uniform(-1e7, 1e7), rng.choice([5.0, 60.0, 700.0, 1e5]))
              for _ in range(6)]
    finite = 0
    for s, c in cases:
        want = sequential_avg_ci95(s, c, plan_sum, plan_count)
        got = avg_ci95(s, c, plan_sum, plan_count)
        if math.isinf(want):
            assert math.isinf(got), (name, s, c)
            continue
        finite += 1
        assert got == pytest.approx(want, rel=1e-9, abs=0), (name, s, c, got, want)
    assert finite >= 4, name  # most cases have a finite interval to compare


def test_small_batches_take_the_same_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # However many candidates a call takes (one a call as the sequential search, a few,
    # many), the doubling's chunks and the bisection's levels end where it ends.
    plan_sum = calibrate_laplace(100, 100.0, Fraction(1, 20))
    plan_count = calibrate_laplace(1, 1.0, Fraction(1, 20))
    for pairs in (1, 300, 1 << 14):
        monkeypatch.setattr(accuracy, "_CALL_PAIRS", pairs)
        for s, c in ((1e5, 900.0), (-3e6, 4000.0), (10.0, 150.0)):
            want = sequential_avg_ci95(s, c, plan_sum, plan_count)
            assert avg_ci95(s, c, plan_sum, plan_count) == pytest.approx(want, rel=1e-9)


def test_count_not_clearly_positive_is_unbounded() -> None:
    plan = calibrate_laplace(1, 1.0, Fraction(1))
    assert math.isinf(avg_ci95(10.0, 1.0, plan, plan))
    assert math.isinf(sequential_avg_ci95(10.0, 1.0, plan, plan))


@pytest.mark.parametrize(("name", "plan_sum", "plan_count"), _plans()[::2],
                         ids=[p[0] for p in _plans()[::2]])
def test_cells_searched_together_end_where_each_ends(name: str, plan_sum: NoisePlan,
                                                     plan_count: NoisePlan) -> None:
    # Many cells in one search (some not clearly positive, some unbounded, one repeated):
    # each cell's endpoint is its own sequential search's.
    rng = random.Random(3)
    cells = [(5000.0, 100.0), (10.0, 0.5), (-2e6, 900.0), (5000.0, 100.0), (1e12, 2.5)]
    cells += [(rng.uniform(-1e7, 1e7), rng.choice([3.0, 60.0, 700.0, 1e5])) for _ in range(9)]
    want = [sequential_avg_ci95(s, c, plan_sum, plan_count) for s, c in cells]
    got = avg_ci95_cells([s for s, _ in cells], [c for _, c in cells], plan_sum, plan_count)
    assert got == pytest.approx(want, rel=1e-9), name
    assert any(math.isinf(w) for w in want) and sum(math.isfinite(w) for w in want) >= 4
