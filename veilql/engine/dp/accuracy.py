"""Error bars: the half-width of a 95% interval for the TOTAL released noise of a plan.

The analyst's value is ``true + sum of every adder's share``, so the interval is for that sum:

- Laplace plans (two adders of DLap(t)): the pmf of the sum of two discrete Laplaces has a
  closed form (derived in docs/PRIVACY.md), so the tail and the half-width are exact. Central
  plans (one DLap(t) sampled on shares) and local plans use the one-draw tail; for central
  noise the interval's level holds for the exact law, and for the sampled one up to its
  distance from it (below 2^-60, ``central.py``).
- Gaussian plans (every party adds N_Z(0, s^2)): for s <= 2000 the pmf of the sum is computed
  exactly by (FFT) convolution; above, the sum is numerically indistinguishable from
  N_Z(0, m s^2) (the gap is of the order of the KLS21 tau, below 1e-30 there) and OpenDP's
  ``discrete_gaussian_scale_to_accuracy`` on that scale is used, up to a scale of 1e5; beyond
  (where OpenDP's time grows linearly with the scale), the normal tail with continuity
  correction, which agrees with it there.
- AVG: an exact test inversion over the two independent noises (``avg_ci95``).

Every function here runs in bounded time at any scale the planner accepts (up to ~1e17).

The half-width h is the smallest integer with P(|noise| > h) <= alpha, so [v - h, v + h] covers
the truth with probability >= 1 - alpha; at small scales the discreteness makes coverage exceed
1 - alpha a little (it cannot be hit exactly by an integer h).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np

from veilql.engine.dp import opendp_api as dp
from veilql.engine.dp.calibrate import NoisePlan

_EXACT_GAUSS_MAX_SIGMA = 2000.0
_OPENDP_GAUSS_MAX_SCALE = 1e5  # OpenDP's Gaussian accuracy takes ~0.03 s here, linear above
# Each of two independent parts at this level gives a joint level of exactly 95%.
AVG_PART_ALPHA = 1.0 - math.sqrt(0.95)


def _smallest_h(log_tail: Callable[[int], float], alpha: float, hi: int) -> int:
    """Smallest integer h >= 0 with tail(h + 1) = P(|Z| >= h + 1) <= alpha (tail decreasing)."""
    log_alpha = math.log(alpha)
    while log_tail(hi + 1) > log_alpha:
        hi *= 2
    lo = -1  # tail(0) = 1 > alpha
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if log_tail(mid + 1) <= log_alpha:
            hi = mid
        else:
            lo = mid
    return hi


def dlap_sum_log_tail(t: float, adders: int, a: int) -> float:
    """log P(|Z| >= a), a >= 1, for Z the sum of ``adders`` (1 or 2) iid DLap(t).

    With p = exp(-1/t), q = 1 - p: one DLap has P(|X| >= a) = 2 p^a / (1 + p); the sum of two
    has P(|Z| >= a) = 2 p^a (a q + p + (1 + p^2)/(1 + p)) / (1 + p)^2.

    >>> round(math.exp(dlap_sum_log_tail(1.0, 1, 1)), 6)  # 2/(e+1)
    0.537883
    """
    if a < 1:
        return 0.0
    p = math.exp(-1.0 / t)
    q = -math.expm1(-1.0 / t)
    if adders == 1:
        return math.log(2.0) - a / t - math.log1p(p)
    if adders == 2:
        bracket = a * q + p + (1 + p * p) / (1 + p)
        return math.log(2.0) - a / t + math.log(bracket) - 2 * math.log1p(p)
    raise NotImplementedError("closed-form tail only for one or two discrete Laplace adders")


def dlap_sum_upper(t: float, adders: int, alpha: float) -> int:
    """Smallest integer a >= 1 with P(Z >= a) <= alpha, for Z the sum of ``adders`` DLap(t).

    Used for noisy thresholds (partition selection). By symmetry P(Z >= a) is half of
    P(|Z| >= a).

    >>> dlap_sum_upper(1.0, 1, 1e-6)
    14
    """
    return _smallest_h(lambda a: dlap_sum_log_tail(t, adders, a), 2 * alpha, 64) + 1


@lru_cache(maxsize=256)
def _dgauss_sum_pmf(s: float, m: int) -> np.ndarray:
    """Exact pmf (centred, index i <-> value i - len//2) of the sum of m iid N_Z(0, s^2)."""
    half = math.ceil(12 * s + 12)  # mass beyond is below exp(-72)
    xs = np.arange(-half, half + 1, dtype=np.float64)
    one = np.exp(-(xs * xs) / (2 * s * s))
    one /= one.sum()
    pmf = one
    for _ in range(m - 1):
        n = len(pmf) + len(one) - 1
        size = 1 << (n - 1).bit_length()
        pmf = np.fft.irfft(np.fft.rfft(pmf, size) * np.fft.rfft(one, size), size)[:n]
    # FFT round-off leaves ~1e-17 negatives far out in the tails.
    return np.clip(pmf, 0.0, None)


def _dgauss_half_width(s: float, m: int, alpha: float) -> int:
    if s <= _EXACT_GAUSS_MAX_SIGMA:
        pmf = _dgauss_sum_pmf(s, m)
        centre = len(pmf) // 2
        # inside[h] = P(|Z| <= h)
        inside = np.cumsum(pmf[centre:] + pmf[centre::-1]) - pmf[centre]
        h = int(np.searchsorted(inside, 1.0 - alpha))
        return min(h, centre)
    total = math.sqrt(m) * s
    if total <= _OPENDP_GAUSS_MAX_SCALE:
        acc = dp.discrete_gaussian_scale_to_accuracy(total, alpha, T="f64")
        # OpenDP's accuracy satisfies P(|Z| >= acc) <= alpha; for an integer Z,
        # |Z| <= ceil(acc) - 1.
        return max(0, math.ceil(acc) - 1)
    # OpenDP sums the pmf term by term (time linear in the scale: minutes at 1e9). Far above
    # the exact range N_Z(0, total^2) is a normal with continuity correction up to terms like
    # exp(-2 pi^2 total^2) (Poisson summation), the law ``_TotalNoise.ge`` uses too.
    return _smallest_h(lambda a: _log_erfc((a - 0.5) / (math.sqrt(2) * total)), alpha,
                       max(1, int(3 * total) + 10))


def _log_erfc(x: float) -> float:
    e = math.erfc(x)
    return math.log(e) if e > 0 else -math.inf


@lru_cache(maxsize=1024)
def half_width(plan: NoisePlan, alpha: float) -> float:
    """Half-width h of a (1 - alpha) interval for the plan's total released noise.

    >>> from veilql.engine.dp.calibrate import calibrate
    >>> half_width(calibrate(1, 1.0, 0.1), 0.05)
    41.0
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    m = plan.draws
    if plan.mechanism == "laplace":
        t = plan.party_scale
        h = _smallest_h(lambda a: dlap_sum_log_tail(t, m, a), alpha, max(1, int(10 * t) + 10))
        return float(h)
    return float(_dgauss_half_width(plan.party_scale, m, alpha))


def ci95(plan: NoisePlan) -> float:
    """Half-width of the 95% interval of the total released noise of ``plan``.

    >>> from veilql.engine.dp.calibrate import calibrate
    >>> ci95(calibrate(1, 1.0, 1.0))
    4.0
    """
    return half_width(plan, 0.05)


class _TotalNoise:
    """The total released noise of a plan as a distribution on Z: survival function and atoms."""

    def __init__(self, plan: NoisePlan) -> None:
        self.plan = plan
        self.m = plan.draws
        self.s = plan.party_scale
        self.exact_gauss = plan.mechanism == "gaussian" and self.s <= _EXACT_GAUSS_MAX_SIGMA
        self.erfc_tail = plan.mechanism == "gaussian" and not self.exact_gauss  # see ``ge``
        if self.exact_gauss:
            pmf = _dgauss_sum_pmf(self.s, self.m)
            self.offset = len(pmf) // 2
            self.cdf = np.minimum(np.cumsum(pmf), 1.0)

    def ge(self, y: np.ndarray) -> np.ndarray:
        """P(Z >= y) for real y (vectorised)."""
        a = np.ceil(y)
        if self.plan.mechanism == "laplace":
            return self._dlap_ge(a)
        if self.exact_gauss:
            idx = (a - 1 + self.offset).astype(np.int64)  # P(Z >= a) = 1 - cdf[a - 1]
            below = np.where(idx < 0, 0.0, self.cdf[np.clip(idx, 0, len(self.cdf) - 1)])
            return 1.0 - below
        # Above sigma 2000 the sum of discrete Gaussians is N_Z(0, m s^2) up to terms like the
        # KLS21 tau (far below 1e-30), and N_Z is a normal with continuity correction to the
        # same order (Poisson summation).
        z = (a - 0.5) / (math.sqrt(2 * self.m) * self.s)
        return 0.5 * np.asarray(_ERFC(z), dtype=np.float64)

    def _dlap_ge(self, a: np.ndarray) -> np.ndarray:
        t = self.s
        p, q = math.exp(-1.0 / t), -math.expm1(-1.0 / t)
        # P(Z >= a) = upper(a) for a >= 1, and 1 - P(Z >= 1 - a) = 1 - upper(1 - a) for a <= 0
        # (a is an integer): one evaluation of upper, at a or at 1 - a.
        above = a >= 1
        k = np.where(above, a, 1.0 - a)
        if self.m == 1:
            up = np.exp(-k / t) / (1 + p)
        else:
            up = np.exp(-k / t) * (k * q + p + (1 + p * p) / (1 + p)) / (1 + p) ** 2
        return np.where(above, up, 1.0 - up)

    def atoms(self, limit: int = 20_001) -> tuple[np.ndarray, np.ndarray] | None:
        """(values, probabilities) holding all but ~1e-13 of the mass; None if wider than limit."""
        if self.plan.mechanism == "gaussian":
            half = math.ceil(8 * math.sqrt(self.m) * self.s + 10)
        else:
            half = _smallest_h(lambda k: dlap_sum_log_tail(self.s, self.m, k), 1e-13,
                               max(1, int(30 * self.s) + 30))
        if 2 * half + 1 > limit:
            return None
        values = np.arange(-half, half + 1, dtype=np.float64)
        probs = self.ge(values) - self.ge(values + 1)
        return values, np.clip(probs, 0.0, None)


_ERFC = np.frompyfunc(math.erfc, 1, 1)


def _box_avg_half_width(noisy_sum: float, noisy_count: float, plan_sum: NoisePlan,
                        plan_count: NoisePlan) -> float:
    """Fallback: intervals at level sqrt(0.95) each hold jointly with probability 95%."""
    h_s = half_width(plan_sum, AVG_PART_ALPHA)
    h_c = half_width(plan_count, AVG_PART_ALPHA)
    if noisy_count - h_c <= 0:
        return math.inf
    avg = noisy_sum / noisy_count
    corners = [(noisy_sum + a) / (noisy_count + b) for a in (-h_s, h_s) for b in (-h_c, h_c)]
    return max(max(corners) - avg, avg - min(corners))


@lru_cache(maxsize=256)
def _total_noise(plan: NoisePlan) -> _TotalNoise:
    """The plan's noise law, built once per plan (an AVG's error bar asks it per cell)."""
    return _TotalNoise(plan)


@lru_cache(maxsize=256)
def _atoms(plan: NoisePlan) -> tuple[np.ndarray, np.ndarray] | None:
    """``_TotalNoise(plan).atoms()``, kept per plan (read-only arrays)."""
    found = _total_noise(plan).atoms()
    if found is not None:
        for arr in found:
            arr.setflags(write=False)
    return found


# The AVG interval's search evaluates several candidate averages in one numpy call. One
# call costs about as much as this many (candidate, count atom) pairs (measured on numpy's
# per-call overhead here); ``_levels`` trades the two. Which candidates decide the search,
# and so the endpoint reported, is exactly what the one-at-a-time search decides.
_CALL_PAIRS = 512
_CALL_PAIRS_ERFC = 16  # the same when the sum's tail is math.erfc per element (wide Gaussian)
_DOUBLINGS = 20  # step0 * 2^k for k < 20; 2^20 > 1e6, the search's cap


def _levels(pairs: int, atoms: int) -> int:
    """Bisection levels decided per numpy call: the L in 1..6 that minimises the cost per
    level, (one call, worth ``pairs`` pairs, + the 2 (2^L - 1) candidates of both sides) / L.

    >>> _levels(_CALL_PAIRS, 3), _levels(_CALL_PAIRS, 60), _levels(_CALL_PAIRS, 5000)
    (5, 2, 1)
    """
    return min(range(1, 7), key=lambda lv: (pairs + 2 * (2**lv - 1) * atoms) / lv)


def avg_ci95(noisy_sum: float, noisy_count: float, plan_sum: NoisePlan,
             plan_count: NoisePlan) -> float:
    """Half-width of a 95% interval for AVG = noisy_sum / noisy_count (both noisy).

    Method (test inversion): at the true average mu, S~ - mu C~ = e_S - mu e_C =: W_mu exactly,
    and the law of W_mu is known (the two noises are independent with known pmfs). So
    p(mu) = P(|W_mu| >= |S~ - mu C~|) is a valid p-value and {mu : p(mu) > 0.05} covers the
    truth with probability >= 95%; it is not the conservative product of two intervals. The
    set's endpoints are found outward from the released average: steps doubling from a
    first guess until one is rejected, then bisection to 1e-4 of the guess, reporting the
    outer end (errs wide); the half-width is the larger distance to an endpoint, infinite
    when the noisy count is not clearly positive. Falls back to the sqrt(0.95)-box of the
    two intervals (also sound, looser) when the count noise is too wide to enumerate.

    >>> from veilql.engine.dp.calibrate import calibrate
    >>> plan = calibrate(1, 1.0, 1.0)
    >>> round(avg_ci95(5000.0, 100.0, plan, plan), 2)
    2.08
    """
    return avg_ci95_cells([noisy_sum], [noisy_count], plan_sum, plan_count)[0]


def avg_ci95_cells(sums: Sequence[float], counts: Sequence[float], plan_sum: NoisePlan,
                   plan_count: NoisePlan) -> list[float]:
    """``avg_ci95`` of every cell (``sums[i] / counts[i]``, the same two noise plans).

    The search is the sequential one-candidate-at-a-time doubling and bisection of each
    cell's two sides, with the candidates those may visit next evaluated together in one
    numpy call (every open side of every cell; the next doubling steps; the midpoints of the
    next ``_levels`` bisection levels, each computed from its interval's ends as the
    sequential search computes it): each side then takes the sequential search's path, so
    the endpoints are its endpoints (``tests/test_local_avg_ci.py``).

    >>> from veilql.engine.dp.calibrate import calibrate
    >>> plan = calibrate(1, 1.0, 1.0)
    >>> [round(h, 2) for h in avg_ci95_cells([5000.0, 1.0], [100.0, 0.0], plan, plan)]
    [2.08, inf]
    """
    alpha = 0.05
    out = [math.inf] * len(sums)
    positive = [i for i, c in enumerate(counts) if c - half_width(plan_count, AVG_PART_ALPHA) > 0]
    count_noise = _atoms(plan_count)
    if count_noise is None:
        for i in positive:
            out[i] = _box_avg_half_width(sums[i], counts[i], plan_sum, plan_count)
        return out
    values, probs = count_noise
    sum_noise = _total_noise(plan_sum)
    h_sum, h_count = half_width(plan_sum, alpha), half_width(plan_count, alpha)

    def accepted(cands: list[tuple[float, float, float]]) -> list[bool]:
        """Per candidate (mu, noisy sum, noisy count): p(mu) > alpha."""
        mu, s, c = (np.array(x, dtype=np.float64)[:, None] for x in zip(*cands, strict=True))
        d = np.abs(s - mu * c)
        shift = mu * values
        tails = sum_noise.ge(np.concatenate((d + shift, d - shift)))  # one call for both
        return ((tails[:len(cands)] + tails[len(cands):]) @ probs > alpha).tolist()

    # One lane per side of each cell: [cell, sign, avg, step0, inner, outer].
    lanes: list[list] = []
    for i in positive:
        avg = sums[i] / counts[i]
        step0 = (h_sum + abs(avg) * h_count + 1.0) / counts[i]
        lanes += [[i, sign, avg, step0, 0.0, math.nan] for sign in (1.0, -1.0)]
    pairs = _CALL_PAIRS_ERFC if sum_noise.erfc_tail else _CALL_PAIRS
    # Doubling: each lane's first rejected step, ``chunk`` steps a call (none: unbounded).
    chunk = max(1, min(_DOUBLINGS, pairs // (len(values) * max(1, len(positive)))))
    for k in range(0, _DOUBLINGS, chunk):
        open_ = [ln for ln in lanes if math.isnan(ln[5])]
        if not open_:
            break
        steps = [[ln[3] * 2.0**j for j in range(k, min(k + chunk, _DOUBLINGS))] for ln in open_]
        ok = iter(accepted([(ln[2] + ln[1] * s, sums[ln[0]], counts[ln[0]])
                            for ln, part in zip(open_, steps, strict=True) for s in part]))
        for ln, part in zip(open_, steps, strict=True):
            verdicts = [next(ok) for _ in part]
            for s, good in zip(part, verdicts, strict=True):
                if not good:
                    ln[5] = s
                    break
                ln[4] = s
    unbounded = {ln[0] for ln in lanes if math.isnan(ln[5])}  # every step accepted
    lanes = [ln for ln in lanes if ln[0] not in unbounded]
    # Bisection: the midpoints of the next ``levels`` levels of every open lane in one call.
    levels = _levels(max(1, pairs // max(1, len(positive))), len(values))
    while True:
        open_ = [ln for ln in lanes if ln[5] - ln[4] > 1e-4 * ln[3]]
        if not open_:
            break
        cands: list[tuple[float, float, float]] = []
        trees = []  # per open lane: each level's midpoints (Python floats: a few dozen)
        for ln in open_:
            ends, tree = [ln[4], ln[5]], []
            for _ in range(levels):  # each midpoint as the sequential (lo + hi) / 2
                mid = [(lo + hi) / 2 for lo, hi in zip(ends, ends[1:], strict=False)]
                tree.append(mid)
                ends = [x for pair in zip(ends, mid, strict=False) for x in pair] + [ends[-1]]
            cands += [(ln[2] + ln[1] * m, sums[ln[0]], counts[ln[0]])
                      for level in tree for m in level]
            trees.append(tree)
        ok, at = accepted(cands), 0
        for ln, tree in zip(open_, trees, strict=True):
            place, base = 0, at
            for level in tree:  # accepted: the upper half is searched next, else the lower
                if ln[5] - ln[4] <= 1e-4 * ln[3]:
                    break
                mid = level[place]
                if ok[base + place]:
                    ln[4], place = mid, 2 * place + 1
                else:
                    ln[5], place = mid, 2 * place
                base += len(level)
            at += sum(len(level) for level in tree)
    for i in positive:
        if i not in unbounded:
            out[i] = max(ln[5] for ln in lanes if ln[0] == i)
    return out
