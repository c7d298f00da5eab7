"""The safe range of the ring: how large a released value (truth plus noise) can get.

Shares, factors and aggregates live in Z_2^64 and are read back as signed 64-bit integers, so
a cell is exact only while |true value| + |total noise| < 2^63. We keep a margin and require
``SAFE_RANGE = 2^62``, so that sums of a few such words, the secure comparison of partition
selection (which needs |x - y| < 2^63) and the analyst's post-processing stay exact too.

The noise is unbounded, so the bound on it holds with high probability: ``noise_bound(plan)``
is an integer k with P(|sum of the adders' draws| > k) < 2^-64 (``TAIL_BITS``), obtained by a
union bound over the adders, each held to 2^-64 / adders:

- discrete Laplace DLap(t): P(|X| >= a) = 2 p^a / (1 + p) <= 2 exp(-a / t), p = exp(-1/t);
- discrete Gaussian N_Z(0, s^2): it is s-subgaussian (CKS20, E exp(l X) <= exp(l^2 s^2 / 2)),
  so by Chernoff P(|X| >= a) <= 2 exp(-a^2 / (2 s^2)).

Central noise sampled on shares (``central.py``) is bounded deterministically: it is
``G1 - G2`` with ``0 <= G < 2^K``, so ``|noise| <= 2^K - 1`` always.

Each single draw then stays below 2^62 as well, so OpenDP's i64 samplers, which saturate a
draw at the i64 limits, clamp with probability below 2^-64 (``sample.py`` refuses a draw that
hit a limit anyway). The value side, the largest |true value| of a cell, is the planner's
(``engine/rewrite/check_ranges.py``); it bounds the number of people by ``MAX_UNITS``.

>>> from veilql.engine.dp.calibrate import calibrate
>>> noise_bound(calibrate(1, 1.0, 1.0))  # two adders of DLap(1)
94
"""

from __future__ import annotations

import math
from fractions import Fraction

from veilql.engine.dp.calibrate import NoisePlan
from veilql.engine.dp.central import TRUNCATION_BITS

SAFE_RANGE = 2**62
TAIL_BITS = 64
# The number of people (privacy units) a federation holds is not public, and a cell's true
# value grows with it. A unit is a person (docs/PRIVACY.md) and 2^33 ~ 8.6e9 is more than
# there are people, so no federation holds more.
MAX_UNITS = 2**33
# Float slack on every bound below: the formulas are evaluated in doubles.
_SLACK = 1e-9


def _log_tail_target(adders: int) -> float:
    """-log of the tail each adder's draw may exceed its bound with (2^-64 over the adders)."""
    return TAIL_BITS * math.log(2) + math.log(2 * adders)


def adder_bound(mechanism: str, party_scale: float, adders: int) -> int:
    """An integer k with P(|one adder's draw| > k) <= 2^-64 / adders (see the module doc).

    >>> adder_bound("laplace", 1.0, 2), adder_bound("gaussian", 1.0, 3)
    (47, 11)
    """
    c = _log_tail_target(adders)
    if mechanism == "laplace":
        k = party_scale * c
    elif mechanism == "gaussian":
        k = party_scale * math.sqrt(2 * c)
    else:
        raise ValueError(f"unknown mechanism {mechanism!r}")
    return math.ceil(k * (1 + _SLACK)) + 1


def noise_bound(plan: NoisePlan) -> int:
    """An integer k with P(|total released noise of ``plan``| > k) < 2^-64, per cell
    (for central noise, with probability 0: ``2^K - 1``).

    >>> from veilql.engine.dp.calibrate import calibrate
    >>> noise_bound(calibrate(1, 1.0, 1.0, 1e-6, cells=1))  # |G1 - G2| < 2^7
    127
    """
    if plan.central:
        return (1 << plan.bits) - 1
    m = len(plan.adders)
    return m * adder_bound(plan.mechanism, plan.party_scale, m)


def central_epsilon_for(l1: int, room: int) -> float | None:
    """Smallest epsilon (rounded up) whose central plan has ``2^K - 1 <= room``.

    K is the smallest integer with 2^K >= 100 ln(2) t, so it fits when
    t <= 2^Kmax / (100 ln 2) with Kmax = floor(log2(room + 1)).

    >>> from veilql.engine.dp.calibrate import calibrate
    >>> eps = central_epsilon_for(3, 10**6)
    >>> noise_bound(calibrate(3, 3.0, eps, 1e-6, cells=1)) <= 10**6
    True
    """
    if room < 1:
        return None
    k_max = (room + 1).bit_length() - 1
    t_max = 2.0**k_max / (TRUNCATION_BITS * math.log(2)) / (1 + _SLACK)
    return round_up(l1 / t_max)


def _room_per_adder(room: int, adders: int) -> float:
    """The largest per-adder scale-free budget: each adder's bound must be <= room / adders."""
    return max(0.0, (room // adders - 2) / (1 + _SLACK))


def laplace_epsilon_for(l1: int, adders: int, room: int) -> float | None:
    """Smallest epsilon (rounded up) whose Laplace plan has ``noise_bound <= room``.

    None when no epsilon can: ``room`` is too small for any noise.

    >>> from veilql.engine.dp.calibrate import calibrate
    >>> eps = laplace_epsilon_for(3, 2, 10**6)
    >>> noise_bound(calibrate(3, 3.0, eps)) <= 10**6
    True
    """
    t_max = _room_per_adder(room, adders) / _log_tail_target(adders)
    if t_max <= 0:
        return None
    return round_up(l1 / t_max)


def gaussian_epsilon_for(l2: float, adders: int, honest: int, room: int,
                         delta: float) -> float | None:
    """An epsilon at which the Gaussian plan of L2 sensitivity ``l2`` fits ``room``.

    Sufficient, not tight: with s the largest per-party sigma that fits, the calibration needs
    rho >= l2^2 / (2 honest s^2); Bun and Steinke's conversion, which CKS20's (the one used)
    improves on, gives that rho for epsilon = rho + 2 sqrt(rho ln(1/delta)).
    """
    s_max = _room_per_adder(room, adders) / math.sqrt(2 * _log_tail_target(adders))
    if s_max < 1 or delta <= 0:
        return None
    rho = l2 * l2 / (2 * honest * s_max * s_max) * (1 + 1e-6)
    return round_up(1.01 * (rho + 2 * math.sqrt(rho * math.log(1 / delta))))


def round_up(x: float) -> float:
    """``x`` rounded up to three significant digits (what a person would type).

    >>> round_up(6.3012e-10), round_up(2.0)
    (6.31e-10, 2.0)
    """
    if x <= 0 or not math.isfinite(x):
        return x
    exponent = math.floor(math.log10(x)) - 2
    step = Fraction(10) ** exponent
    return float(math.ceil(Fraction(x) / step) * step)
