"""Quantiles, MIN and MAX from a noisy histogram, and variances from noisy moments.

Everything here runs at the analyst, on released values only: post-processing, no privacy
cost. The mechanisms themselves are ordinary noisy counts and sums (``rewrite/push_local``);
``docs/PRIVACY.md`` ("Quantiles, MIN and MAX", "Variances") gives the guarantees.

**Quantiles.** A histogram's bucket counts ``c_b`` (one noisy count per public bucket,
``plan.nodes.Buckets``) are clamped at 0 and summed into a cumulative count; the quantile
at ``q`` is read off it as DuckDB defines it on the bucketed values:

- ``disc`` (QUANTILE_DISC, PERCENTILE_DISC, APPROX_QUANTILE, QUANTILE): the value of rank
  ``max(ceil(q N) - 1, 0)`` (0-based, ``N`` the clamped total), the inverse of the CDF;
- ``cont`` (MEDIAN, QUANTILE_CONT, PERCENTILE_CONT): linear interpolation between ranks
  ``floor(q (N - 1))`` and ``ceil(q (N - 1))``.

A bucket of one value gives that value to each of its ranks; a bucket of ``k`` values spreads
its ``c`` ranks evenly over its span (rank ``j`` at ``(j + 1/2) / c`` of the way), so a
``cont`` quantile interpolates within the bucket and a ``disc`` one is the representable
value nearest to that point.

**MIN and MAX** are ill-posed under differential privacy (one person moves them anywhere in
the bounds), so VeilQL releases the lowest (highest) bucket that the noise band says is not
empty: the lowest ``b`` with ``c_b >= T``, where ``T = h + 1`` and ``h`` is the half-width
that holds for every bucket's noise at once with probability 95% (each at
``1 - 0.95^(1/B)``). With that probability no empty bucket passes, so the released MIN is at
least the true minimum's bucket; a bucket of few rows may be passed over (at a huge epsilon
``T = 1`` and MIN is exact). The answer is the bucket's lowest value (MAX: its highest); no
bucket passing gives NULL. A MIN or MAX that a released comparison reads has one bucket per
value (up to 100,000 values, ``rewrite/histogram.exact``), so it is read here the same way
and, at a huge epsilon, it is the data's and so is the comparison.

**COUNT(DISTINCT x)** of anything but the unit over at most 1,000 public values
(``sql/distinct.py``) has one bucket per value of ``x`` and releases how many pass the same
threshold ``T``: with probability 95% every bucket counted holds a row, so the count is at
most the truth (a value of few rows may be missed; at a huge epsilon it is exact). Its error
bar runs from the buckets that pass to those the band allows to be non-empty (``c_b + h >=
1``). Above 1,000 values nothing is read here: the distinct values per cell are counted
before the noise and released as one noisy COUNT (``rewrite/histogram.py``).

**Error bars** (``quantile_range``): the buckets the 95% noise band allows. The condition
that bucket ``k`` is at or past the quantile's rank is linear in the prefix count ``P_k`` and
the suffix count ``S_k``; each of these ``2 (B - 1)`` sums of noisy counts gets an interval at
level ``1 - 0.05 / (2 (B - 1))`` (Bonferroni), so with probability 95% all hold, and then the
true quantile's bucket lies between the first bucket the band does not rule out and the
first it proves past the rank. The interval is ``[lowest(k_lo), highest(k_hi)]``. A sum of
``m`` noises is bounded by the smaller of Chernoff's bound on its moment generating
function and the union of ``m`` single intervals (discrete Laplace), or by the sub-Gaussian
bound (discrete Gaussian; Canonne, Kamath and Steinke 2020). MIN's interval runs from the
lowest bucket the band allows to be non-empty (``c_b + h >= 1``) to the released one.

**Variances** (``variance`` and ``variance_range``): with ``Q = sum x^2``, ``S = sum x`` and
``n = count``, ``VAR_SAMP = (Q - S^2/n) / (n - 1)`` (NULL when ``n <= 1``), ``VAR_POP = (Q -
S^2/n) / n`` (NULL when ``n <= 0``), clamped at 0 (noise can make it negative); STDDEV is the
square root. The error bar is the exact range of the statistic over the box of the three
noisy parts, each at level ``0.95^(1/3)`` (independent noises): monotone in ``Q``, in
``S^2``, and in ``n`` between the roots of its derivative, so the extremes are at corners or
at those roots; no dependency problem as naive interval arithmetic would have.

>>> from veilql.engine.plan.nodes import Buckets
>>> b = Buckets(0.0, 0, 10, 1)
>>> counts = [1] * 10
>>> read_quantile(counts, b, "cont", 0.25), read_quantile(counts, b, "disc", 0.55)
(2.25, 5.0)
>>> variance(30.0, 10.0, 5.0, "var_samp")
2.5
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache

import numpy as np

from veilql.engine.dp import half_width
from veilql.engine.dp.calibrate import NoisePlan
from veilql.engine.plan.nodes import Buckets

LEVEL = 0.05  # 1 - the level of every error bar


# ---------------------------------------------------------------- the noise of sums


@lru_cache(maxsize=4096)
def _dlap_sum_bound(t: float, draws: int, alpha: float) -> float:
    """A real ``a`` with ``P(|S| >= a) <= alpha`` for ``S`` the sum of ``draws`` iid DLap(t).

    Chernoff: ``P(S >= a) <= exp(draws log M(l) - l a)`` for every ``0 < l < 1/t``, with
    ``M(l) = (1 - p)^2 / ((1 - p e^l)(1 - p e^-l))`` and ``p = exp(-1/t)``; so
    ``a = min_l (draws log M(l) - log(alpha / 2)) / l`` works (two-sided). Any ``l`` gives
    a valid bound; the grid's minimum is one.
    """
    inv = 1.0 / t
    lam = inv * np.concatenate([np.geomspace(1e-6, 0.5, 400), np.linspace(0.5, 0.999999, 400)])
    log_m = (2 * np.log(-np.expm1(-inv)) - np.log(-np.expm1(lam - inv))
             - np.log(-np.expm1(-lam - inv)))
    a = (draws * log_m - math.log(alpha / 2)) / lam
    return float(np.min(a))


def sum_half_width(noise: NoisePlan, cells: int, alpha: float) -> float:
    """The smallest integer ``h`` this bounds with ``P(|E| > h) <= alpha``, for ``E`` the sum of
    the released noises of ``cells`` cells of an aggregate with noise plan ``noise``.

    >>> from veilql.engine.dp.calibrate import calibrate
    >>> plan = calibrate(1, 1.0, 1.0, 0)
    >>> sum_half_width(plan, 1, 0.05), sum_half_width(plan, 4, 0.05) < 4 * 4
    (4.0, True)
    """
    if cells <= 0:
        return 0.0
    if cells == 1:
        return half_width(noise, alpha)
    draws = cells * noise.draws
    if noise.mechanism == "laplace":
        chernoff = math.ceil(_dlap_sum_bound(noise.party_scale, draws, alpha)) - 1
        union = draws * half_width(replace(noise, adders=(0,), central=False), alpha / draws)
        return float(max(0, min(chernoff, union)))
    # a discrete Gaussian N_Z(0, s^2) is s-subgaussian: P(|S| >= a) <= 2 exp(-a^2 / (2 D s^2))
    s = noise.party_scale
    return float(max(0, math.ceil(s * math.sqrt(2 * draws * math.log(2 / alpha))) - 1))


# ---------------------------------------------------------------- quantiles


def _clamped(counts: Sequence[float]) -> np.ndarray:
    return np.maximum(np.asarray(counts, dtype=np.float64), 0.0)


def _value_at(rank: float, counts: np.ndarray, cum: np.ndarray, buckets: Buckets, *,
              snap: bool) -> float:
    """The value of 0-based ``rank`` (its bucket's values spread evenly over its ranks)."""
    k = int(np.searchsorted(cum, rank + 1 - 1e-9, side="left"))
    k = min(k, len(counts) - 1)
    if buckets.per == 1:
        return buckets.lowest(k)
    before = cum[k - 1] if k > 0 else 0.0
    c = max(counts[k], 1.0)
    low, high = buckets.lowest(k), buckets.highest(k)
    start = low - buckets.step / 2
    x = start + (rank - before + 0.5) / c * (high - low + buckets.step)
    if snap:
        x = buckets.lowest(0) + round((x - buckets.lowest(0)) / buckets.step) * buckets.step
    return float(min(max(x, low), high))


def min_threshold(noise: NoisePlan, count: int, alpha: float = LEVEL) -> float:
    """``T = h + 1``: a bucket whose noisy count reaches it is not empty, for all ``count``
    buckets at once with probability ``1 - alpha``.

    >>> from veilql.engine.dp.calibrate import calibrate
    >>> min_threshold(calibrate(1, 1.0, 100.0, 0), 64)
    1.0
    """
    level = 1.0 - (1.0 - alpha) ** (1.0 / max(count, 1))
    return half_width(noise, level) + 1.0


def read_quantile(counts: Sequence[float], buckets: Buckets, stat: str, q: float | None,
                  noise: NoisePlan | None = None) -> float | None:
    """The released quantile (``stat``: cont, disc, min, max) of a histogram's noisy counts;
    None when the clamped counts are all 0 (no rows), or, for MIN and MAX, when no bucket
    passes the threshold (``min_threshold``; 1 without a noise plan). ``distinct``
    (COUNT(DISTINCT x), one bucket per value): the number of buckets passing it."""
    c = _clamped(counts)
    if stat in ("min", "max", "distinct"):
        threshold = min_threshold(noise, len(c)) if noise is not None else 1.0
        passing = np.flatnonzero(np.asarray(counts, dtype=np.float64) >= threshold)
        if stat == "distinct":  # COUNT(DISTINCT x): the values whose bucket is not empty
            return len(passing)
        if not len(passing):
            return None
        return buckets.lowest(int(passing[0])) if stat == "min" else buckets.highest(
            int(passing[-1]))
    total = float(c.sum())
    if total <= 0:
        return None
    assert q is not None
    cum = np.cumsum(c)
    if stat == "disc":
        rank = max(math.ceil(q * total - 1e-9) - 1, 0)
        return _value_at(rank, c, cum, buckets, snap=True)
    r = q * (total - 1)
    lo, hi = math.floor(r + 1e-12), math.ceil(r - 1e-12)
    a = _value_at(lo, c, cum, buckets, snap=False)
    if hi == lo:
        return a
    b = _value_at(hi, c, cum, buckets, snap=False)
    return a + (r - lo) * (b - a)


def quantile_range(counts: Sequence[float], buckets: Buckets, stat: str, q: float | None,
                   noise: NoisePlan, alpha: float = LEVEL) -> tuple[float, float] | None:
    """An interval holding the true quantile with probability at least ``1 - alpha`` (module
    doc); None when the band allows any bucket to be empty of the quantile's rank."""
    raw = np.asarray(counts, dtype=np.float64)
    n = len(raw)
    if stat in ("min", "max", "distinct"):
        level = 1.0 - (1.0 - alpha) ** (1.0 / max(n, 1))
        h = half_width(noise, level)
        possible = np.flatnonzero(raw + h >= 1)
        passing = np.flatnonzero(raw >= h + 1)
        if stat == "distinct":  # the buckets surely not empty .. those possibly not empty
            return float(len(passing)), float(len(possible))
        if not len(possible):
            return None
        if stat == "min":
            top = buckets.highest(int(passing[0])) if len(passing) else buckets.highest(n - 1)
            return buckets.lowest(int(possible[0])), top
        bottom = buckets.lowest(int(passing[-1])) if len(passing) else buckets.lowest(0)
        return bottom, buckets.highest(int(possible[-1]))
    assert q is not None
    if n == 1:
        return buckets.lowest(0), buckets.highest(0)
    each = alpha / (2 * (n - 1))
    prefix = np.cumsum(raw)[:-1]  # P_k, k = 0..n-2
    suffix = raw.sum() - prefix  # S_k: buckets after k
    hp = np.array([sum_half_width(noise, k + 1, each) for k in range(n - 1)])
    hs = np.array([sum_half_width(noise, n - 1 - k, each) for k in range(n - 1)])
    # Bucket k is at or past the rank when (1 - q) P_k - q S_k >= c (c = 0 for disc, from -q
    # to 1 - q for the two ranks a cont quantile interpolates between).
    c_low, c_high = (0.0, 0.0) if stat == "disc" else (-q, 1.0 - q)
    best = (1 - q) * (prefix + hp) - q * np.maximum(suffix - hs, 0.0)
    worst = (1 - q) * np.maximum(prefix - hp, 0.0) - q * (suffix + hs)
    # ... and holds a row at or before it (a rank's bucket has C(k) >= 1: QUANTILE_DISC at 0)
    maybe = np.flatnonzero((best >= c_low) & (prefix + hp >= 1))
    surely = np.flatnonzero((worst >= c_high) & (prefix - hp >= 1))
    k_lo = int(maybe[0]) if len(maybe) else n - 1
    k_hi = int(surely[0]) if len(surely) else n - 1
    return buckets.lowest(k_lo), buckets.highest(max(k_hi, k_lo))


# ---------------------------------------------------------------- variances


def variance(squares: float, total: float, count: float, stat: str) -> float | None:
    """VAR_SAMP, VAR_POP, STDDEV_SAMP or STDDEV_POP from the moments, clamped at 0; None
    when the count is too small (``n <= 1`` for the sample forms, ``n <= 0`` else).

    >>> variance(30.0, 10.0, 5.0, "stddev_pop"), variance(1.0, 1.0, 1.0, "var_samp")
    (1.4142135623730951, None)
    """
    sample = stat.endswith("samp")
    if count <= (1 if sample else 0):
        return None
    v = max((squares - total * total / count) / (count - 1 if sample else count), 0.0)
    return math.sqrt(v) if stat.startswith("stddev") else v


def variance_range(squares: tuple[float, float], total: tuple[float, float],
                   count: tuple[float, float], stat: str) -> tuple[float, float] | None:
    """The exact range of the statistic over the box of its three parts (module doc); None
    when the count's interval reaches the values where it is undefined.

    >>> variance_range((29.0, 31.0), (9.0, 11.0), (5.0, 5.0), "var_pop")
    (0.9600000000000002, 2.96)
    """
    sample = stat.endswith("samp")
    if count[0] <= (1 if sample else 0):
        return None
    shift = 1.0 if sample else 0.0
    s2 = sorted((total[0] ** 2, total[1] ** 2))
    if total[0] <= 0 <= total[1]:
        s2 = [0.0, s2[1]]
    values = []
    for qv in squares:
        for u in s2:
            ns = list(count)
            # interior stationary points of (q n - u) / (n (n - s)): q n^2 - 2 u n + u s = 0
            disc = u * u - qv * u * shift
            if qv != 0 and disc >= 0:
                ns += [(u + math.sqrt(disc)) / qv, (u - math.sqrt(disc)) / qv]
            for n in ns:
                if count[0] <= n <= count[1]:
                    values.append((qv - u / n) / (n - shift))
    lo, hi = max(min(values), 0.0), max(max(values), 0.0)
    if stat.startswith("stddev"):
        return math.sqrt(lo), math.sqrt(hi)
    return lo, hi
