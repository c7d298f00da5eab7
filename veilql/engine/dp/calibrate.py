"""Calibrate distributed noise: which parties add what, so honest parties alone meet (eps, delta).

Setting (docs/PRIVACY.md): ``parties`` compute parties, semi-honest, at most one corrupted and
possibly colluding with the analyst, who sees ``true + sum of all noise shares``. The corrupted
party knows its own share and can subtract it, so the guarantee must come from the honest
parties' noise alone; everything else is post-processing.

- Pure epsilon (delta = 0): discrete Laplace DLap(t), t = L1/eps, added in full by two parties
  (0 and 1). Whoever is corrupted, one full-scale DLap(t) from an honest adder remains (geometric
  mechanism, Ghosh-Roughgarden-Sundararajan 2009). Released variance: 2x a central curator's.
- delta > 0: discrete Gaussian N_Z(0, sigma_p^2) from every party. Any ``parties - 1`` honest
  shares sum to a sum of discrete Gaussians, which is rho-zCDP up to an extra tau term by
  Kairouz-Liu-Steinke 2021, Proposition 14; we calibrate so ``rho + tau * d`` meets the target.
  zCDP converts to (eps, delta) through OpenDP's ``make_zCDP_to_approxDP`` (the conversion of
  Canonne-Kamath-Steinke 2020, Corollary 13).
- delta > 0, across parties: one central DLap(L1/eps) sampled inside the MPC from shared
  random coins (``central.py``, ``engine/mpc/protocols/noise.py``), known to no party, so no
  coalition of one compute party and the analyst can subtract any of it. The sampler is
  within a total-variation distance ``eta`` (exact, per query) of the exact law, which costs
  ``eta (1 + e^eps)`` of delta (``central.charged_delta``). Released variance: 1x central.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Literal

from veilql.engine.dp import opendp_api as dp
from veilql.engine.dp.central import (
    MAX_DISTANCE,
    charged_delta,
    digits,
    distance_per_cell,
    log2,
    thresholds,
)
from veilql.errors import QueryError

dp.enable_features("contrib")

Mechanism = Literal["laplace", "gaussian"]
# "laplace" and "gaussian" force the distributed mechanisms (each adder draws its own share);
# "central_laplace" forces one DLap sampled on shares; "auto" picks the smallest variance.
MECHANISMS = ("auto", "laplace", "gaussian", "central_laplace")
LARGE_EPSILON = 5
# Limits of a budget (docs/PRIVACY.md, "Safe range of the ring"). Below MIN_EPSILON not even a
# COUNT (L1 = 1, one adder) gets Laplace noise that provably fits the 64-bit ring (t <= 1e17);
# only the Gaussian's (0, delta) regime would, where the charge is in effect all delta. Above
# MAX_EPSILON, L1/epsilon and exp(-1/t) leave the range where float calibration means anything
# (the exact-answer oracle tests run at 1e12). Below MIN_DELTA the Gaussian's zCDP conversion
# works on numbers that small that the calibration is no longer checked by anything we trust.
MIN_EPSILON = Fraction(1, 10**17)
MAX_EPSILON = Fraction(10**15)
MIN_DELTA = Fraction(1, 10**30)
# Relative slack kept below the zCDP target so float rounding in the bound cannot push it over.
_RHO_SLACK = 1e-9


class LargeEpsilonWarning(UserWarning):
    """Epsilon above 5: the guarantee is weak (e^5 ~ 148x likelihood ratio)."""


@dataclass(frozen=True)
class NoisePlan:
    """How much noise each party adds for one (vector-valued) aggregate.

    ``scale`` is the noise of the honest parties' sum (the quantity the privacy proof is about):
    the discrete Laplace scale t, or the discrete Gaussian sigma with ``sigma^2`` the sum of the
    honest parties' variances. ``party_scale`` is what each adder passes to OpenDP's sampler.
    ``epsilon``/``delta`` are what is charged to the budget (exact fractions). ``rho`` is the
    proven zCDP of the honest sum (Gaussian only, including the KLS21 tau term).

    ``central``: the noise is ONE ``DLap(scale)`` per cell, sampled on shares from ``bits``
    binary digits per geometric (``central.py``); no party adds anything (``adders == ()``),
    ``|noise| <= 2^bits - 1`` exactly, ``cells`` is the most cells the plan may have, and
    ``distance`` the total-variation distance of all of them from the exact law, whose
    lemma charge ``delta`` includes.
    """

    mechanism: Mechanism
    scale: float
    party_scale: float
    adders: tuple[int, ...]
    epsilon: Fraction
    delta: Fraction
    l1: int
    l2: float
    parties: int = 3
    rho: float | None = None
    central: bool = False
    bits: int = 0
    cells: int = 0
    distance: Fraction = Fraction(0)
    # Gaussian plans accounted together in zCDP (``account.py``): how many share the composed
    # charge (0: accounted alone), their total rho, and the (epsilon, delta) OpenDP certifies
    # for it; ``epsilon``/``delta`` above are then this aggregate's share of that charge.
    composed: int = 0
    composed_rho: float | None = None
    composed_epsilon: float | None = None
    composed_delta: Fraction = Fraction(0)

    def describe(self) -> str:
        """One line for ``veil explain``.

        >>> calibrate(1, 1.0, 1.0, 0).describe()
        'discrete Laplace t=1 added in full by parties 0,1 (L1=1); charged eps=1, delta=0'
        >>> calibrate(1, 1.0, 1.0, 1e-6, cells=4).describe()  # doctest: +NORMALIZE_WHITESPACE
        'discrete Laplace t=1 sampled on shares, known to no party (7 binary digits per
        geometric, |noise| < 2^7; distance <= 2^-122.2 from the exact law over <= 4 cells)
        (L1=1); charged eps=1, delta=6.2e-37'
        """
        who = ",".join(str(i) for i in self.adders)
        cost = f"charged eps={_fmt(self.epsilon)}, delta={_fmt(self.delta)}"
        if self.central:
            return (f"discrete Laplace t={self.scale:.6g} sampled on shares, known to no party "
                    f"({self.bits} binary digits per geometric, |noise| < 2^{self.bits}; "
                    f"distance <= 2^{log2(self.distance):.1f} from the exact law over <= "
                    f"{self.cells} cells) (L1={self.l1}); {cost}")
        if self.mechanism == "laplace":
            return (f"discrete Laplace t={self.scale:.6g} added in full by parties {who} "
                    f"(L1={self.l1}); {cost}")
        if len(self.adders) == 1:
            what = (f"discrete Gaussian sigma={self.scale:.6g} added by party {who} "
                    f"(L2={self.l2:.6g}, rho={self.rho:.6g})")
        else:
            what = (f"discrete Gaussian sigma={self.scale:.6g} over honest parties, each of "
                    f"parties {who} adds N_Z(0, {self.party_scale:.6g}^2) (L2={self.l2:.6g}, "
                    f"rho={self.rho:.6g})")
        if self.composed > 1:
            return (f"{what}, composed in zCDP with {self.composed - 1} other Gaussian "
                    f"aggregate{'s' if self.composed > 2 else ''} (rho={self.composed_rho:.6g} "
                    f"in all: ({self.composed_epsilon:.6g}, {_fmt(self.composed_delta)})-DP by "
                    f"OpenDP's zCDP to approxDP); {cost} (a 1/{self.composed} share)")
        return f"{what}; {cost}"

    @property
    def draws(self) -> int:
        """How many independent draws of ``party_scale`` the released noise sums: 1 when
        central, else one per adder."""
        return 1 if self.central else len(self.adders)

    @property
    def thresholds(self) -> tuple[int, ...]:
        """The public coin thresholds of a central plan's digits (``central.thresholds``)."""
        if not self.central:
            raise ValueError("only a central plan samples its noise on shares")
        return thresholds(self.scale)

    @property
    def total_variance(self) -> float:
        """Variance of the released noise (sum over all draws), per cell; an upper bound for
        the discrete Gaussian (CKS20: Var N_Z(0, s^2) <= s^2)."""
        if self.mechanism == "laplace":
            return self.draws * dlap_variance(self.party_scale)
        return self.draws * self.party_scale**2


def _fmt(x: Fraction) -> str:
    return f"{float(x):.6g}"


def dlap_variance(t: float) -> float:
    """Variance of the discrete Laplace with pmf proportional to exp(-|x|/t): 2p/(1-p)^2.

    >>> round(dlap_variance(1.0), 4)
    1.8413
    """
    p = math.exp(-1.0 / t)
    one_minus_p = -math.expm1(-1.0 / t)
    return 2.0 * p / one_minus_p**2


def _as_fraction(value: object, name: str) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise QueryError(f"{name} must be a number, got {value!r}",
                         hint=f"write {name} as a decimal number, e.g. {name} = 1.0")
    if isinstance(value, float) and not math.isfinite(value):
        raise QueryError(f"{name} must be finite, got {value!r}",
                         hint=f"give a finite {name}, e.g. {name} = 1.0")
    # Floats mean their shortest decimal (0.1 is one tenth), as in the ledger (docs/ledger.md),
    # so the charge here and the ledger's agree exactly; calibration then rounds the float
    # parameters it hands to OpenDP in the safe direction.
    return Fraction(repr(value)) if isinstance(value, float) else Fraction(value)


def exact_amount(value: object, name: str = "epsilon") -> Fraction:
    """``value`` as an exact ``Fraction``, a float read as its shortest decimal (as the ledger).

    >>> exact_amount(0.1), exact_amount(Fraction(1, 3))
    (Fraction(1, 10), Fraction(1, 3))
    """
    return _as_fraction(value, name)


def check_budget(epsilon: object, delta: object) -> tuple[Fraction, Fraction]:
    """Validate (epsilon, delta) and return them as exact fractions; warn when epsilon > 5.

    Refuses epsilon outside [MIN_EPSILON, MAX_EPSILON] and a positive delta below MIN_DELTA.

    >>> check_budget(0.5, 0)
    (Fraction(1, 2), Fraction(0, 1))
    """
    eps = _as_fraction(epsilon, "epsilon")
    dlt = _as_fraction(delta, "delta")
    if eps <= 0:
        raise QueryError(f"epsilon must be > 0, got {float(eps)}",
                         hint="set a positive epsilon in OPTIONS (epsilon = ...) or --epsilon")
    if dlt < 0 or dlt >= 1:
        raise QueryError(f"delta must be in [0, 1), got {float(dlt)}",
                         hint="use delta = 0 for pure DP, or a small delta such as 1e-6")
    if eps < MIN_EPSILON:
        raise QueryError(
            f"epsilon {float(eps):g} is below {float(MIN_EPSILON):g}, the smallest VeilQL "
            "accepts: at a smaller epsilon no Laplace noise fits the 64-bit ring the parties "
            "compute in",
            f"raise epsilon to at least {float(MIN_EPSILON):g}; a query of larger sensitivity "
            f"needs more, and planning it at {float(MIN_EPSILON):g} says how much")
    if eps > MAX_EPSILON:
        raise QueryError(
            f"epsilon {float(eps):g} is above {float(MAX_EPSILON):g}, the largest VeilQL "
            "accepts (the noise calibration is not meaningful beyond it)",
            f"lower epsilon to at most {float(MAX_EPSILON):g}; anything above "
            f"{LARGE_EPSILON} already gives a weak guarantee")
    if 0 < dlt < MIN_DELTA:
        raise QueryError(
            f"delta {float(dlt):g} is below {float(MIN_DELTA):g}, the smallest positive delta "
            "VeilQL accepts",
            f"raise delta to at least {float(MIN_DELTA):g}, or use delta = 0 for pure DP")
    if eps > LARGE_EPSILON:
        warnings.warn(f"epsilon = {float(eps):g} is above {LARGE_EPSILON}: the privacy "
                      "guarantee is weak", LargeEpsilonWarning, stacklevel=3)
    return eps, dlt


def split_budget(epsilon: object, delta: object, k: int) -> list[tuple[Fraction, Fraction]]:
    """Split (epsilon, delta) equally over k aggregates by basic composition, exactly.

    Group cells of one aggregate are one vector-valued query (its sensitivity covers all cells
    a person touches), so they are not split here.

    >>> shares = split_budget(1.0, 1e-6, 3)
    >>> shares[0], sum(e for e, _ in shares), sum(d for _, d in shares)
    ((Fraction(1, 3), Fraction(1, 3000000)), Fraction(1, 1), Fraction(1, 1000000))
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise QueryError(f"cannot split a privacy budget over {k!r} aggregates",
                         hint="a DP query needs at least one aggregate (COUNT, SUM, AVG)")
    eps, dlt = check_budget(epsilon, delta)
    if eps / k < MIN_EPSILON:
        least = MIN_EPSILON * k
        raise QueryError(
            f"epsilon {float(eps):g} split over {k} aggregates gives {float(eps / k):g} each, "
            f"below {float(MIN_EPSILON):g}, the smallest VeilQL accepts per aggregate",
            f"raise epsilon to at least {float(least):g}")
    if 0 < dlt / k < MIN_DELTA:
        raise QueryError(
            f"delta {float(dlt):g} split over {k} aggregates gives {float(dlt / k):g} each, "
            f"below {float(MIN_DELTA):g}, the smallest positive delta VeilQL accepts",
            f"raise delta to at least {float(MIN_DELTA * k):g}, or use delta = 0 for pure DP")
    return [(eps / k, dlt / k)] * k


def _float_down(x: Fraction) -> float:
    """Largest float <= x (so a float parameter never claims more budget than x)."""
    f = float(x)
    return f if Fraction(f) <= x else math.nextafter(f, -math.inf)


def _check_sensitivity(l1: int, l2: float) -> None:
    if isinstance(l1, bool) or not isinstance(l1, numbers.Integral) or l1 < 1:
        raise ValueError(f"L1 sensitivity must be a positive integer, got {l1!r}")
    if not (isinstance(l2, numbers.Real) and math.isfinite(l2) and 0 < l2 <= l1):
        raise ValueError(f"L2 sensitivity must be in (0, L1={l1}], got {l2!r}")
    if l2 * l2 < 1 - 1e-12:
        # An integer vector that differs at all has L2 >= 1.
        raise ValueError(f"L2 sensitivity of an integer query is at least 1, got {l2!r}")


def laplace_scale(l1: int, epsilon: Fraction) -> float:
    """Smallest float t with l1/t <= epsilon exactly (t = L1/eps rounded up).

    >>> laplace_scale(3, Fraction(1, 2))
    6.0
    """
    t = float(Fraction(l1) / epsilon)
    while Fraction(l1) / Fraction(t) > epsilon:
        t = math.nextafter(t, math.inf)
    return t


def cks_epsilon(rho: float, delta: float) -> float:
    """The epsilon of CKS20's zCDP -> (epsilon, delta) conversion (Cor. 13), in floats.

    ``inf_{a > 1} a rho + (a log(1 - 1/a) - log(a - 1) + log(1/delta)) / (a - 1)``, by
    golden-section search over ``log(a - 1)`` (the bound is unimodal in ``a``). The formula
    OpenDP's ``make_zCDP_to_approxDP`` evaluates (they agree to ~1e-15, OpenDP rounding up);
    used only to search and to start a bisection, never to certify a charge.

    >>> round(cks_epsilon(0.0243, 1e-6), 6)
    0.998769
    """
    if rho <= 0:
        return 0.0
    log_inv = -math.log(delta)

    def eps_at(u: float) -> float:
        a = 1.0 + math.exp(u)
        return a * rho + (a * math.log1p(-1.0 / a) - u + log_inv) / (a - 1.0)

    lo, hi = -40.0, 40.0
    g = (math.sqrt(5.0) - 1.0) / 2.0
    x1, x2 = hi - g * (hi - lo), lo + g * (hi - lo)
    f1, f2 = eps_at(x1), eps_at(x2)
    for _ in range(100):
        if f1 < f2:
            hi, x2, f2 = x2, x1, f1
            x1 = hi - g * (hi - lo)
            f1 = eps_at(x1)
        else:
            lo, x1, f1 = x1, x2, f2
            x2 = lo + g * (hi - lo)
            f2 = eps_at(x2)
    return max(0.0, min(f1, f2))


def cks_rho(epsilon: float, delta: float) -> float:
    """The largest rho with ``cks_epsilon(rho, delta) <= epsilon`` (bisection, floats).

    Like ``cks_epsilon``, for searching and bracketing only; ``rho_for`` is the certified one.

    >>> 0.0243 < cks_rho(1.0, 1e-6) < 0.0244
    True
    """
    log_inv = -math.log(delta)
    # Bun-Steinke's rho (rho + 2 sqrt(rho ln(1/delta)) = epsilon) is always admitted by CKS20.
    lo = (epsilon / (math.sqrt(log_inv + epsilon) + math.sqrt(log_inv))) ** 2
    hi = 2 * lo
    for _ in range(200):
        if cks_epsilon(hi, delta) > epsilon:
            break
        lo, hi = hi, 2 * hi
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if not lo < mid < hi or hi / lo - 1 < 1e-14:
            break
        if cks_epsilon(mid, delta) <= epsilon:
            lo = mid
        else:
            hi = mid
    return lo


def rho_for(epsilon: float, delta: float) -> float:
    """Largest zCDP rho that OpenDP's zCDP -> (eps, delta) conversion certifies (CKS20 Cor. 13).

    Bisection over the scale of a unit-sensitivity discrete Gaussian whose privacy map OpenDP
    computes; the returned rho is OpenDP's own (rounded-up) map value, so the certification is
    OpenDP's. The bracket starts within 1e-8 of the closed form (``cks_rho``) and the bisection
    stops at a relative width of 1e-13 (about 20 of OpenDP's maps, where starting from
    Bun-Steinke's rho took about 100); if the closed form were off, the bracket widens by
    factors of 2 (at most 64 times each way), so the time stays bounded at any (epsilon,
    delta) that ``check_budget`` accepts.

    >>> 0.0243 < rho_for(1.0, 1e-6) < 0.0244
    True

    A failure (OpenDP's conversion overflows at a huge epsilon, where callers fall back to
    Laplace) is remembered like a result: each aggregate of such a query would otherwise
    repeat the whole failed search (about 0.5 s at epsilon 1e12).
    """
    outcome = _rho_outcome(epsilon, delta)
    if isinstance(outcome, BaseException):
        raise outcome.with_traceback(None)
    return outcome


@lru_cache(maxsize=256)
def _rho_outcome(epsilon: float, delta: float) -> float | BaseException:
    """``rho_for``'s value, or the exception its search raised."""
    try:
        return _search_rho(epsilon, delta)
    except (dp.OpenDPException, OverflowError, RuntimeError) as exc:
        exc.__context__ = None
        return exc


def _search_rho(epsilon: float, delta: float) -> float:
    """The bisection behind ``rho_for`` (uncached)."""
    space = dp.atom_domain(T="i64"), dp.absolute_distance(T="i64")

    def eps_of(scale: float) -> tuple[float, float]:
        meas = dp.m.make_gaussian(*space, scale=scale)
        rho = meas.map(1)
        return dp.c.make_zCDP_to_approxDP(meas).map(1).epsilon(delta), rho

    def ok(scale: float) -> bool:
        return eps_of(scale)[0] <= epsilon

    # eps(scale) decreases in scale. rho = 1 / (2 scale^2) for sensitivity 1.
    guess = 1.0 / math.sqrt(2.0 * cks_rho(epsilon, delta))
    hi = max(1e-6, guess * (1 + 1e-8))
    for _ in range(64):
        if ok(hi):
            break
        hi *= 2
    else:
        raise RuntimeError(f"zCDP calibration failed for epsilon={epsilon}, delta={delta}")
    lo = min(hi, guess) * (1 - 1e-8)
    for _ in range(64):
        if lo <= 1e-6 or not ok(lo):
            break
        hi, lo = lo, lo / 2
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if not lo < mid < hi or hi / lo - 1 < 1e-13:
            break
        if ok(mid):
            hi = mid
        else:
            lo = mid
    eps_hi, rho = eps_of(hi)
    if eps_hi > epsilon:  # cannot happen: hi only ever moves to scales that passed the check
        raise RuntimeError(f"zCDP calibration failed for epsilon={epsilon}, delta={delta}")
    return rho


def kls_tau(party_sigma: float, honest: int) -> float:
    """tau of Kairouz-Liu-Steinke 2021, Prop. 14, for a sum of ``honest`` N_Z(0, s^2) draws.

    tau = 10 * sum_{k=1}^{n-1} exp(-2 pi^2 s^2 k/(k+1)); zero for a single summand.

    >>> kls_tau(1.0, 1)
    0.0
    >>> f"{kls_tau(1.0, 2):.3e}"
    '5.172e-04'
    """
    return 10.0 * sum(math.exp(-2 * math.pi**2 * party_sigma**2 * k / (k + 1))
                      for k in range(1, honest))


def gaussian_rho_bound(l2: float, party_sigma: float, honest: int, dims: int) -> float:
    """Proven zCDP of the honest sum: L2^2/(2 n s^2) + tau*d (KLS21 Prop. 14, first bound).

    KLS21 give D_alpha <= alpha*L2^2/(2 n s^2) + tau*d; since alpha >= 1, tau*d <= alpha*tau*d,
    so the sum is (L2^2/(2 n s^2) + tau*d)-zCDP. Only coordinates where neighbours differ
    contribute (Renyi divergence adds over independent coordinates and is 0 where they agree),
    so ``dims`` is the number of cells one person can change, at most min(L1, L2^2).
    """
    if party_sigma < 0.5:
        raise ValueError("KLS21 Prop. 14 needs each summand's sigma >= 1/2")
    return l2 * l2 / (2 * honest * party_sigma**2) + kls_tau(party_sigma, honest) * dims


def _gaussian_party_sigma(l2: float, l1: int, rho_target: float, honest: int) -> float:
    """Smallest per-party sigma (>= 1/2) whose proven rho stays below the target."""
    dims = min(l1, math.ceil(l2 * l2 - 1e-9))
    goal = rho_target * (1 - _RHO_SLACK)

    def ok(s: float) -> bool:
        return gaussian_rho_bound(l2, s, honest, dims) <= goal

    lo = max(0.5, l2 / math.sqrt(2 * honest * goal))
    if ok(lo):
        return lo
    hi = lo * 1.01
    while not ok(hi):
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def calibrate_laplace(l1: int, l2: float, epsilon: Fraction, parties: int = 3) -> NoisePlan:
    """Pure-DP plan: parties 0 and 1 each add DLap(L1/eps) in full; charges (eps, 0).

    >>> calibrate_laplace(2, 2.0, Fraction(1, 2)).scale
    4.0
    """
    t = laplace_scale(l1, epsilon)
    return NoisePlan("laplace", t, t, (0, 1), epsilon, Fraction(0), int(l1), float(l2), parties)


def calibrate_central_laplace(l1: int, l2: float, epsilon: Fraction, delta: Fraction,
                              cells: int, *, query_epsilon: Fraction | None = None,
                              max_distance: Fraction = MAX_DISTANCE,
                              parties: int = 3) -> NoisePlan:
    """One DLap(L1/eps) per cell sampled on shares; charges (eps, eta (1 + e^query_epsilon)).

    ``cells`` bounds the number of cells, ``eta`` is their exact distance from the exact law
    (``central.py``); ``query_epsilon`` (default ``epsilon``) is the epsilon of the whole
    query, to which the distance lemma is applied. Refused (QueryError) when delta is 0, when
    ``eta`` exceeds ``max_distance`` or when the charge exceeds ``delta``.

    >>> plan = calibrate_central_laplace(1, 1.0, Fraction(1), Fraction(1, 10**6), 1)
    >>> plan.central, plan.adders, plan.bits, plan.draws, float(plan.delta)
    (True, (), 7, 1, 1.6e-37)
    """
    if delta <= 0:
        raise QueryError(
            "noise sampled on shares needs delta > 0: its sampler is within a tiny distance "
            "of the exact discrete Laplace, which is charged as delta",
            "set delta (e.g. delta = 1e-6), or use mechanism 'laplace' for pure epsilon")
    if isinstance(cells, bool) or not isinstance(cells, int) or cells < 1:
        raise ValueError(f"the number of cells must be a positive integer, got {cells!r}")
    t = laplace_scale(l1, epsilon)
    eta = cells * distance_per_cell(t)
    if eta > max_distance:
        raise QueryError(
            f"noise sampled on shares over up to {cells} cells would be 2^{log2(eta):.1f} "
            f"from the exact law, above 2^{log2(max_distance):.1f}, the most VeilQL accepts "
            "(2^-60 per query)",
            "use mechanism 'laplace' or 'gaussian' (noise added by the parties), or group by "
            "columns with public values")
    lemma_eps = epsilon if query_epsilon is None else query_epsilon
    charge = charged_delta(eta, lemma_eps)
    if charge is None or charge > delta:
        least = "" if charge is None else f" at least {float(charge):.2g}"
        raise QueryError(
            f"noise sampled on shares would cost delta{least or ' more than allowed'} at "
            f"epsilon {float(lemma_eps):g} (its distance from the exact law times "
            f"1 + e^epsilon), more than the {float(delta):g} this aggregate may spend",
            f"raise delta{least}, lower epsilon, or use mechanism 'laplace' or 'gaussian'")
    return NoisePlan("laplace", t, t, (), epsilon, charge, int(l1), float(l2), parties,
                     central=True, bits=digits(t), cells=cells, distance=eta)


def calibrate_gaussian(l1: int, l2: float, epsilon: Fraction, delta: Fraction,
                       parties: int = 3) -> NoisePlan:
    """zCDP plan: every party adds N_Z(0, sigma_p^2); any parties-1 honest shares meet (eps, delta).

    >>> plan = calibrate_gaussian(1, 1.0, Fraction(1), Fraction(1, 10**6))
    >>> round(plan.scale, 3), round(plan.party_scale, 3)
    (4.531, 3.204)
    """
    if delta <= 0:
        raise QueryError("the discrete Gaussian mechanism needs delta > 0",
                         hint="set delta (e.g. delta = 1e-6) or use mechanism 'laplace'")
    rho_target = rho_for(_float_down(epsilon), _float_down(delta))
    return gaussian_for_rho(l1, l2, rho_target, epsilon, delta, parties)


def gaussian_for_rho(l1: int, l2: float, rho_target: float, epsilon: Fraction,
                     delta: Fraction, parties: int = 3) -> NoisePlan:
    """The Gaussian plan whose proven zCDP (KLS21, with the tau term) stays below
    ``rho_target``, charging ``(epsilon, delta)``: the caller certifies that this charge covers
    ``rho_target`` (``calibrate_gaussian`` alone, ``account.py`` for several composed).

    >>> plan = gaussian_for_rho(1, 1.0, 0.02, Fraction(1, 2), Fraction(1, 10**6))
    >>> plan.rho <= 0.02, plan.epsilon
    (True, Fraction(1, 2))
    """
    honest = parties - 1
    s = _gaussian_party_sigma(float(l2), int(l1), rho_target, honest)
    dims = min(int(l1), math.ceil(l2 * l2 - 1e-9))
    rho = gaussian_rho_bound(float(l2), s, honest, dims)
    return NoisePlan("gaussian", s * math.sqrt(honest), s, tuple(range(parties)), epsilon, delta,
                     int(l1), float(l2), parties, rho)


def calibrate(l1: int, l2: float, epsilon: object, delta: object = 0,
              mechanism: str = "auto", *, parties: int = 3, cells: int | None = None,
              query_epsilon: Fraction | None = None,
              max_distance: Fraction = MAX_DISTANCE) -> NoisePlan:
    """Choose and calibrate the mechanism for one aggregate with L1/L2 sensitivities l1, l2.

    ``mechanism="auto"``: distributed Laplace when delta == 0; otherwise whichever of central
    Laplace on shares (offered when ``cells``, the most cells the aggregate may have, is
    given and its distance charge fits, see ``calibrate_central_laplace``), distributed
    Laplace (charges delta 0) and distributed Gaussian releases the smallest noise variance.
    ``"laplace"``/``"gaussian"`` force the distributed mechanisms, ``"central_laplace"`` the
    central one (refused when it does not fit).

    >>> calibrate(1, 1.0, 1.0, 1e-6).mechanism
    'laplace'
    >>> calibrate(100, 10.0, 1.0, 1e-6).mechanism
    'gaussian'
    >>> calibrate(1, 1.0, 1.0, 1e-6, cells=10).central
    True
    """
    if mechanism not in MECHANISMS:
        raise QueryError(f"unknown noise mechanism {mechanism!r}",
                         hint="use one of: " + ", ".join(MECHANISMS))
    if parties < 2:
        raise ValueError("distributed noise needs at least 2 compute parties")
    eps, dlt = check_budget(epsilon, delta)
    _check_sensitivity(l1, l2)
    if mechanism == "central_laplace":
        if cells is None:
            raise QueryError("noise sampled on shares needs a query across parties",
                             "use mechanism 'laplace' or 'auto'")
        return calibrate_central_laplace(l1, l2, eps, dlt, cells, query_epsilon=query_epsilon,
                                         max_distance=max_distance, parties=parties)
    if mechanism == "laplace" or (mechanism == "auto" and dlt == 0):
        return calibrate_laplace(l1, l2, eps, parties)
    if mechanism == "gaussian":
        return calibrate_gaussian(l1, l2, eps, dlt, parties)
    options = [calibrate_laplace(l1, l2, eps, parties)]
    if cells is not None:
        try:
            options.insert(0, calibrate_central_laplace(
                l1, l2, eps, dlt, cells, query_epsilon=query_epsilon,
                max_distance=max_distance, parties=parties))
        except QueryError:
            pass  # the distance charge does not fit: the distributed mechanisms remain
    try:
        options.append(calibrate_gaussian(l1, l2, eps, dlt, parties))
    except (dp.OpenDPException, OverflowError):
        # At very large epsilon the zCDP conversion overflows; Laplace is then tiny anyway.
        pass
    return min(options, key=lambda plan: plan.total_variance)  # first of equals: central
