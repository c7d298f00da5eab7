"""Central discrete Laplace sampled on shares: coin thresholds, digits, and the exact distance.

The protocol (``engine/mpc/protocols/noise.py``) draws ``DLap(t) = G1 - G2`` from the binary
digits of two geometrics, ``P(G = g) = (1 - q) q^g``, ``q = exp(-1/t)``: digit ``k`` of ``G``
is an independent coin with ``p_k = q^(2^k) / (1 + q^(2^k))`` (``P(G = g)`` is proportional to
``q^g = prod_k (q^(2^k))^(bit k of g)``, a product over the digits). On shares, coin ``k`` is
``[U < tau_k]`` for a uniform 128-bit ``U``, so its probability is exactly ``tau_k / 2^128``.
This module computes, with ``decimal`` arithmetic at 80 significant digits (never floats):

- ``digits(t)``: ``K``, the smallest integer with ``q^(2^K) <= 2^-100``; digits ``k >= K``
  are dropped, so ``0 <= G < 2^K`` and ``|noise| <= 2^K - 1`` deterministically;
- ``thresholds(t)``: ``tau_k = round(p_k 2^128)`` for ``k < K``;
- ``distance_per_cell(t)``: an exact (rational) upper bound on the total-variation distance
  between one sampled cell and ``DLap(t)``.

**Distance.** Couple each sampled digit with the ideal one (the maximal coupling of two coins
differs with probability ``|p - p'|``): the sampled and ideal geometrics differ only if some
digit does, so ``TV(G', G) <= sum_{k<K} |p_k - tau_k 2^-128| + sum_{k>=K} p_k``. The first
sum is at most ``K 2^-128`` (rounding to nearest is within ``2^-129``; the 80-digit
computation of ``p_k`` adds less than ``10^-79``). For the second, ``p_k <= q^(2^k)`` and
``q^(2^(k+1)) = (q^(2^k))^2``, so with ``x = q^(2^K) <= 2^-100`` it is at most
``x + x^2 + x^4 + ... <= x / (1 - x)``. ``DLap = G1 - G2`` is a function of two independent
geometrics, which does not increase the distance, so per cell
``eta = 2 (K 2^-128 + x / (1 - x))`` (``x`` replaced by an upper bound). Cells are
independent, so a vector of ``n`` cells is within ``n eta``.

**Charge** (``charged_delta``). If a mechanism ``M'`` is within TV ``eta`` of an
``(epsilon, delta)``-DP mechanism ``M`` on every input, then for neighbours ``D, D'`` and
any output set ``S``: ``P[M'(D) in S] <= P[M(D) in S] + eta <= e^epsilon P[M(D') in S] +
delta + eta <= e^epsilon (P[M'(D') in S] + eta) + delta + eta``, so ``M'`` is
``(epsilon, delta + eta (1 + e^epsilon))``-DP. (A folklore triangle argument, proved here in
full rather than cited to a lemma number; ``delta + eta`` alone would be wrong in general,
the ``e^epsilon eta`` term comes from the neighbour's side.) The planner applies it once to
the whole query (``epsilon`` is the query's total), and charges ``eta (1 + e^epsilon)``,
rounded up, as delta.
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Context, Decimal
from fractions import Fraction
from functools import lru_cache

TWO_128 = 1 << 128
# Drop digits whose coin is below 2^-100: the truncation term of the distance.
TRUNCATION_BITS = 100
# The most a whole query's sampled noise may differ from the exact law (total variation).
MAX_DISTANCE = Fraction(1, 2**60)
# Above this epsilon, e^epsilon makes the charge absurd: the central route is not offered.
_MAX_LEMMA_EPSILON = 1000
_PREC = 80


def _ctx(rounding: str = ROUND_HALF_EVEN) -> Context:
    # Every operation below goes through this context's methods: Decimal's operators
    # (even unary minus) round to the thread's default context, 28 digits.
    return Context(prec=_PREC, rounding=rounding, Emin=-10**9, Emax=10**9)


def _dec(x: float | Fraction, rounding: str) -> Decimal:
    """``x`` as a Decimal, rounded in the given direction (exact for most floats)."""
    f = Fraction(x)
    ctx = _ctx(rounding)
    return ctx.divide(Decimal(f.numerator), Decimal(f.denominator))


@lru_cache(maxsize=1024)
def digits(t: float) -> int:
    """K: the smallest integer with exp(-2^K / t) <= 2^-100, i.e. 2^K >= 100 ln(2) t.

    >>> digits(1.0), digits(6.0), digits(6e7)
    (7, 9, 32)
    """
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"the Laplace scale must be positive and finite, got {t!r}")
    ctx = _ctx()
    need = ctx.multiply(ctx.multiply(Decimal(TRUNCATION_BITS), ctx.ln(Decimal(2))),
                        _dec(t, ROUND_CEILING))
    k = 0
    while Decimal(2**k) < need:
        k += 1
    return k


def _exp_neg(y: Decimal, rounding: str) -> Decimal:
    """exp(-y) bounded in the direction ``rounding`` (ROUND_CEILING: an upper bound)."""
    ctx = _ctx()
    e = ctx.exp(ctx.minus(y))  # correctly rounded (half even): within half an ulp
    return ctx.next_plus(e) if rounding == ROUND_CEILING else ctx.next_minus(e)


@lru_cache(maxsize=1024)
def thresholds(t: float) -> tuple[int, ...]:
    """tau_k = round(p_k 2^128), p_k = q^(2^k) / (1 + q^(2^k)), q = exp(-1/t), k < K.

    >>> th = thresholds(1.0)
    >>> len(th), round(th[0] / 2**128, 6)   # p_0 = 1 / (e + 1)
    (7, 0.268941)
    """
    ctx = _ctx()
    td = _dec(t, ROUND_HALF_EVEN)
    out = []
    for k in range(digits(t)):
        e = ctx.exp(ctx.minus(ctx.divide(Decimal(2**k), td)))
        p = ctx.divide(e, ctx.add(Decimal(1), e))
        tau = ctx.multiply(p, Decimal(TWO_128)).to_integral_value(rounding=ROUND_HALF_EVEN)
        out.append(int(tau))
    return tuple(out)


@lru_cache(maxsize=1024)
def distance_per_cell(t: float) -> Fraction:
    """An exact upper bound on TV(one sampled cell, DLap(t)): 2 (K 2^-128 + x / (1 - x)).

    ``x`` is an upper bound on q^(2^K) = exp(-2^K / t) (see the module doc).

    >>> d = distance_per_cell(1.0)   # K = 7 and x = e^-128: the rounding term dominates
    >>> d > Fraction(14, 2**128), float(d * 2**128)
    (True, 14.0)
    """
    k = digits(t)
    y = _dec(Fraction(2**k) / Fraction(t), ROUND_FLOOR)
    x = Fraction(_exp_neg(min(y, Decimal(10**6)), ROUND_CEILING))
    return 2 * (Fraction(k, TWO_128) + x / (1 - x))


def round_up(x: Fraction, digits_kept: int = 2) -> Fraction:
    """``x`` rounded up to ``digits_kept`` significant decimal digits (an exact Fraction).

    >>> round_up(Fraction(1, 3))
    Fraction(17, 50)
    """
    if x <= 0:
        return Fraction(0)
    # the exponent may be off by one in float; the result is an upper bound either way
    exponent = math.floor(math.log10(x.numerator) - math.log10(x.denominator)) - digits_kept + 1
    step = Fraction(10) ** exponent
    return math.ceil(x / step) * step


def charged_delta(distance: Fraction, epsilon: Fraction) -> Fraction | None:
    """distance * (1 + e^epsilon), rounded up: the delta the TV lemma adds (module doc).

    None when epsilon is too large for the charge to mean anything (above 1000).

    >>> float(charged_delta(Fraction(1, 10**30), Fraction(1)))   # 1e-30 (1 + e), rounded up
    3.8e-30
    """
    if distance <= 0:
        return Fraction(0)
    if epsilon > _MAX_LEMMA_EPSILON:
        return None
    ctx = _ctx()
    e_eps = ctx.next_plus(ctx.exp(_dec(epsilon, ROUND_CEILING)))
    return round_up(distance * (1 + Fraction(e_eps)))


def log2(x: Fraction) -> float:
    """log2 of a positive Fraction, without float underflow.

    >>> log2(Fraction(1, 2**100))
    -100.0
    """
    return math.log2(x.numerator) - math.log2(x.denominator)
