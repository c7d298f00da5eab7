"""The accountant: how one query's (epsilon, delta) is divided over its noisy aggregates.

Basic composition (Dwork and Roth 2014, Thm. 3.16) of ``k`` aggregates at ``(epsilon/k,
delta/k)`` each is where VeilQL started (``split_budget``). The same charge buys less noise:

- **Gaussian aggregates compose in zCDP.** Mechanisms that are ``rho_i``-zCDP compose to
  ``(sum rho_i)``-zCDP (Bun and Steinke 2016, Lemma 2.3), and only the total is converted to
  ``(epsilon, delta)`` (CKS20, Cor. 13). ``m`` Gaussian aggregates with a pooled budget
  ``(eps_G, delta_G)`` get ``rho*(eps_G, delta_G) / m`` each instead of
  ``rho*(eps_G / m, delta_G / m)``: at ``(1, 1e-6)`` and ``m = 4``, 0.00609 each instead of
  0.00157 (3.9x the rho, 1.97x less noise sd). The composition and the conversion are
  OpenDP's (``make_composition``, ``make_zCDP_to_approxDP``, ``make_fix_delta``) applied to
  each aggregate's privacy map: OpenDP's ``make_gaussian`` map of the honest parties' sum plus
  the KLS21 ``tau`` term, which OpenDP has no constructor for, carried in by
  ``make_user_measurement`` (hence the ``honest-but-curious`` feature).
- **Laplace aggregates** (sampled on shares or added by two parties) stay pure epsilon-DP and
  compose with the Gaussian group by basic composition, in exact rationals: the query is
  ``(sum eps_j + eps_G, sum delta_j + delta_G)``-DP, where ``delta_j`` is the distance charge
  of noise sampled on shares (``central.py``, 0 otherwise).
- **The split** between the two groups, which aggregates are Gaussian (``mechanism="auto"``)
  and how each group divides its part, minimise the sum over aggregates of each one's noise
  variance *relative to what the equal split gives it* (so a count and a sum in cents weigh
  alike; the equal split scores exactly ``k``). The search is small: aggregates ordered by how
  much the Gaussian suits them (``draws * l1^2 / l2^2``), every prefix of that order as the
  Gaussian group, a grid of 40 group budgets, the variances in closed form and CKS20's
  conversion in floats (``cks_epsilon``); the winner is then calibrated exactly and certified
  by OpenDP, and kept only when it scores below ``k`` (else the equal split, as before).

**What is charged.** Each Laplace aggregate charges its own ``(eps_j, delta_j)``; each member
of the Gaussian group charges ``(eps_G / m, delta_G / m)``, a share of the group's charge
(``NoisePlan.composed*`` record the group). The group is calibrated so that OpenDP certifies
``epsilon <= eps_G`` at ``delta_G`` (rounded down to a float) for the composed rho, and the
shares are exact ``Fraction``s summing to ``(eps_G, delta_G)``: the ledger charges the certified
value rounded up to the budget asked for, never less. ``certify`` recomputes the certificate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from functools import lru_cache

from veilql.engine.dp import opendp_api as dp
from veilql.engine.dp.calibrate import (
    MIN_EPSILON,
    NoisePlan,
    _float_down,
    calibrate,
    calibrate_central_laplace,
    calibrate_laplace,
    cks_epsilon,
    cks_rho,
    dlap_variance,
    gaussian_for_rho,
    kls_tau,
    rho_for,
    split_budget,
)
from veilql.engine.dp.central import MAX_DISTANCE
from veilql.errors import QueryError

# User measurements carry privacy maps OpenDP has no constructor for (the KLS21 bound of a
# sum of discrete Gaussians) into OpenDP's combinators.
dp.enable_features("contrib", "honest-but-curious")

# The search's grid of Gaussian group budgets: rho*(E) * 2^(-j/4), j = 0..GRID.
_GRID = 40
# Laplace budgets are rounded down to multiples of 1/_STEPS of the query's epsilon (readable).
_STEPS = 256
# The equal split is left only for a total relative variance at least 1% lower: a smaller
# gain is not worth budgets nobody would type.
MIN_GAIN = 0.01


@dataclass(frozen=True)
class Demand:
    """One noisy aggregate as the accountant sees it: its L1 and L2 sensitivities and, when
    its noise may be sampled on shares (across parties), the most cells it can have."""

    l1: int
    l2: float
    cells: int | None = None


@dataclass(frozen=True)
class _Model:
    """Closed-form variances of one demand's options, for the search."""

    weight: float  # 1 / variance under the equal split
    cweight: float  # the same in the continuous approximation (for dividing a group's part)
    draws: int  # Laplace draws released (1: on shares or local; 2: two adders)
    coeff: float  # Gaussian released variance = coeff / rho
    floor: float  # ... but at least this (each party's sigma is at least 1/2)
    gaussian_first: bool  # the equal split picks the Gaussian

    def laplace(self, l1: int, eps: float) -> float:
        return self.draws * dlap_variance(l1 / eps)

    def gauss(self, rho: float) -> float:
        return max(self.coeff / rho, self.floor)


def allocate(demands: Sequence[Demand], epsilon: object, delta: object,
             mechanism: str = "auto", *, local: bool = False,
             query_epsilon: Fraction | None = None,
             max_distance: Fraction = MAX_DISTANCE, parties: int = 3) -> list[NoisePlan]:
    """Noise plans for ``demands`` that together spend at most ``(epsilon, delta)``.

    ``mechanism`` as in ``calibrate``: ``"laplace"`` and ``"central_laplace"`` (pure epsilon
    per aggregate) keep the equal split, which is optimal for them; ``"gaussian"`` composes
    every aggregate in zCDP with an equal rho each; ``"auto"`` searches (module doc). ``local``:
    one party adds all the noise (one draw). The charges sum exactly to at most the budget.

    >>> plans = allocate([Demand(1, 1.0)] * 4, 1.0, 1e-6, "gaussian")
    >>> [float(p.epsilon) for p in plans], plans[0].composed
    ([0.25, 0.25, 0.25, 0.25], 4)
    >>> round(plans[0].rho / calibrate(1, 1.0, 0.25, 2.5e-7, "gaussian").rho, 1)
    3.9
    """
    n = len(demands)
    eps_each, delta_each = split_budget(epsilon, delta, n)[0]
    total_eps, total_delta = eps_each * n, delta_each * n
    opts = {"parties": parties, "query_epsilon": query_epsilon, "max_distance": max_distance}

    def equal() -> list[NoisePlan]:
        return [_local(calibrate(d.l1, d.l2, eps_each, delta_each, mechanism, cells=d.cells,
                                 **opts), local) for d in demands]  # type: ignore[arg-type]

    if mechanism == "gaussian":
        if total_delta <= 0:
            return equal()  # refused there, with the usual message
        return _gaussian_group(demands, total_eps, total_delta, [1.0] * n, local, parties)
    if mechanism != "auto" or total_delta == 0:
        return equal()
    try:
        chosen = _search(demands, total_eps, total_delta, eps_each, delta_each, local, opts)
    except (dp.OpenDPException, OverflowError, ZeroDivisionError, ValueError):
        chosen = None  # e.g. the zCDP conversion overflows at a huge epsilon: Laplace then
    return chosen if chosen is not None else equal()


def _local(plan: NoisePlan, local: bool) -> NoisePlan:
    """In local mode the one party adds the full noise (one draw of the honest sum's scale)."""
    return replace(plan, adders=(0,), party_scale=plan.scale) if local else plan


def _laplace(d: Demand, eps: Fraction, allowance: Fraction, opts: dict[str, object],
             local: bool) -> NoisePlan:
    """The Laplace option of ``d`` at ``eps``: on shares when it fits, else two adders."""
    if d.cells is not None:
        try:
            return calibrate_central_laplace(d.l1, d.l2, eps, allowance, d.cells,
                                             **opts)  # type: ignore[arg-type]
        except QueryError:
            pass  # the distance charge does not fit: the distributed mechanism remains
    return _local(calibrate_laplace(d.l1, d.l2, eps, int(opts["parties"])), local)  # type: ignore[call-overload]


def _models(demands: Sequence[Demand], laplace: list[NoisePlan], eps_each: Fraction,
            delta_each: Fraction, local: bool, parties: int) -> list[_Model]:
    """Each demand's closed-form variances and its weight (1 / its equal-split variance)."""
    honest = parties - 1
    rho_each = cks_rho(float(eps_each), float(delta_each))
    out = []
    for d, lap in zip(demands, laplace, strict=True):
        if local:  # one draw of the honest sum's N_Z(0, honest s^2)
            coeff, floor = d.l2**2 / 2, honest * 0.25
        else:  # every party adds N_Z(0, s^2), s^2 = l2^2 / (2 honest rho)
            coeff, floor = parties * d.l2**2 / (2 * honest), parties * 0.25
        v_lap = lap.total_variance
        v_gauss = max(coeff / rho_each, floor)
        # Groups divide their part with the continuous Laplace variance 2 draws (l1 / eps)^2:
        # then aggregates that the equal split gives the same mechanism and whose l1 = l2 get
        # equal parts, exactly (the discrete variance would tilt them by a few percent, or
        # 1e-4 of a rho, for no real gain).
        cont = lap.draws * 2 * (d.l1 / float(eps_each)) ** 2
        out.append(_Model(1.0 / min(v_lap, v_gauss), 1.0 / min(cont, v_gauss), lap.draws,
                          coeff, floor, v_gauss < v_lap))
    return out


def _search(demands: Sequence[Demand], total_eps: Fraction, total_delta: Fraction,
            eps_each: Fraction, delta_each: Fraction, local: bool,
            opts: dict[str, object]) -> list[NoisePlan] | None:
    """The variance-minimising split of ``auto`` (module doc), or None for the equal split."""
    n = len(demands)
    parties = int(opts["parties"])  # type: ignore[call-overload]
    laplace = [_laplace(d, eps_each, delta_each, opts, local) for d in demands]
    models = _models(demands, laplace, eps_each, delta_each, local, parties)
    if n == 1:
        return None  # nothing to split
    big_e, big_d = float(total_eps), _float_down(total_delta)
    candidates: list[tuple[float, tuple[int, ...], Fraction | None]] = []
    # (a) the equal split, with the Gaussians it picks composed
    group = tuple(i for i, m in enumerate(models) if m.gaussian_first)
    if group:
        eps_g = float(eps_each) * len(group)
        candidates.append((_score(demands, models, group, eps_g, big_e, big_d,
                                  float(eps_each)), group, None))
    # (b) prefixes of the order of Gaussian suitability, over a grid of group budgets
    order = sorted(range(n), key=lambda i: -models[i].draws * demands[i].l1**2
                   / demands[i].l2**2)
    rho_all = cks_rho(big_e, big_d)
    for size in range(0, n + 1):
        members = tuple(sorted(order[:size]))
        if size == 0:
            candidates.append((_score(demands, models, (), 0.0, big_e, big_d), (), Fraction(0)))
            continue
        if size == n:
            candidates.append((_score(demands, models, members, big_e, big_e, big_d),
                               members, total_eps))
            continue
        for j in range(1, _GRID + 1):
            eps_g = cks_epsilon(rho_all * 2.0 ** (-j / 4), big_d)
            snapped = _snap(total_eps, eps_g)
            if snapped is None:
                continue
            candidates.append((_score(demands, models, members, float(snapped), big_e,
                                      big_d), members, snapped))
    best = min(candidates, key=lambda c: c[0])
    if best[0] >= n * (1 - MIN_GAIN):
        return None
    _, members, eps_g = best
    plans = _build(demands, models, members, eps_g, total_eps, total_delta, eps_each,
                   delta_each, local, opts)
    if plans is None:
        return None
    exact = sum(m.weight * p.total_variance for m, p in zip(models, plans, strict=True))
    return plans if exact < n * (1 - MIN_GAIN) else None


def _snap(total_eps: Fraction, eps_g: float) -> Fraction | None:
    """The Gaussian group's epsilon: ``eps_g`` raised so the Laplace part is a multiple of
    ``total_eps / _STEPS`` (at least one); None when nothing is left for the Laplace part."""
    steps = math.floor((1 - eps_g / float(total_eps)) * _STEPS)
    if steps < 1:
        return None
    return total_eps - total_eps * Fraction(steps, _STEPS)


def _gauss_shares(demands: Sequence[Demand], models: Sequence[_Model],
                  members: Sequence[int]) -> list[float]:
    """How the group's rho is divided: in proportion to sqrt(weight * coeff), which minimises
    the weighted sum of ``coeff / rho_i`` for a fixed total (equal when those are equal)."""
    roots = [math.sqrt(models[i].cweight * models[i].coeff) for i in members]
    if max(roots) <= min(roots) * (1 + 1e-9):
        return [1.0 / len(roots)] * len(roots)
    total = sum(roots)
    return [r / total for r in roots]


def _laplace_split(demands: Sequence[Demand], models: Sequence[_Model], members: Sequence[int],
                   eps_l: Fraction) -> list[Fraction]:
    """The Laplace part divided in proportion to (weight * draws * l1^2)^(1/3), which
    minimises the weighted sum of ``2 draws (l1 / eps_j)^2`` for a fixed total; equal when
    those are equal (to 1e-9), else in steps of 1/1024 with the remainder to the last."""
    if not members:
        return []
    a = [(models[i].cweight * models[i].draws * 2 * demands[i].l1**2) ** (1 / 3)
         for i in members]
    if max(a) <= min(a) * (1 + 1e-9):
        return [eps_l / len(members)] * len(members)
    total = sum(a)
    parts = [eps_l * Fraction(max(1, round(1024 * x / total)), 1024) for x in a[:-1]]
    last = eps_l - sum(parts, Fraction(0))
    if last <= 0:
        return [eps_l / len(members)] * len(members)
    return [*parts, last]


def _score(demands: Sequence[Demand], models: Sequence[_Model], members: tuple[int, ...],
           eps_g: float, big_e: float, big_d: float, eps_lap: float | None = None) -> float:
    """The objective in closed form: sum of weight * variance. ``eps_lap``: every Laplace
    aggregate at that epsilon (the equal split), else the optimal split of what is left."""
    others = [i for i in range(len(demands)) if i not in members]
    score = 0.0
    if others:
        if eps_lap is not None:
            eps = [eps_lap] * len(others)
        else:
            eps_l = big_e - eps_g
            if eps_l <= 0:
                return math.inf
            eps = [float(e) for e in _laplace_split(demands, models, others,
                                                    Fraction(eps_l))]
        for i, e in zip(others, eps, strict=True):
            if e < float(MIN_EPSILON):
                return math.inf
            score += models[i].weight * models[i].laplace(demands[i].l1, e)
    if members:
        rho = cks_rho_cached(eps_g, big_d)
        for i, share in zip(members, _gauss_shares(demands, models, members), strict=True):
            score += models[i].weight * models[i].gauss(rho * share)
    return score


@lru_cache(maxsize=4096)
def cks_rho_cached(epsilon: float, delta: float) -> float:
    """``cks_rho``, cached: the search asks for the same budgets again and again."""
    return cks_rho(epsilon, delta)


def _build(demands: Sequence[Demand], models: Sequence[_Model], members: tuple[int, ...],
           eps_g: Fraction | None, total_eps: Fraction, total_delta: Fraction,
           eps_each: Fraction, delta_each: Fraction, local: bool,
           opts: dict[str, object]) -> list[NoisePlan] | None:
    """Exact plans of one candidate: Laplace aggregates first (their delta charges come out
    of the pool), then the Gaussian group on what is left, certified by OpenDP."""
    others = [i for i in range(len(demands)) if i not in members]
    if eps_g is None:  # the equal split's own epsilons
        eps_lap = [eps_each] * len(others)
        eps_g = total_eps - eps_each * len(others)
    else:
        eps_lap = _laplace_split(demands, models, others, total_eps - eps_g)
    plans: list[NoisePlan | None] = [None] * len(demands)
    for i, e in zip(others, eps_lap, strict=True):
        if e < MIN_EPSILON:
            return None
        plans[i] = _laplace(demands[i], e, delta_each, opts, local)
    spent = sum((p.delta for p in plans if p is not None), Fraction(0))
    if members:
        delta_g = total_delta - spent
        if delta_g <= 0 or eps_g <= 0:
            return None
        sub = [demands[i] for i in members]
        weights = _gauss_shares(demands, models, members)
        group = _gaussian_group(sub, eps_g, delta_g, weights, local,
                                int(opts["parties"]))  # type: ignore[call-overload]
        for i, p in zip(members, group, strict=True):
            plans[i] = p
    out = [p for p in plans if p is not None]
    return out if len(out) == len(demands) else None


def _gaussian_group(demands: Sequence[Demand], eps_g: Fraction, delta_g: Fraction,
                    weights: Sequence[float], local: bool, parties: int) -> list[NoisePlan]:
    """Gaussian plans for ``demands`` composed in zCDP within ``(eps_g, delta_g)``.

    ``rho* = rho_for(eps_g, delta_g)`` (OpenDP-certified), aggregate ``i`` gets
    ``rho* * weights[i] / sum(weights)`` (each calibrated just below it), and each charges
    ``(eps_g / m, delta_g / m)``. OpenDP then certifies the composition (``certify``); a
    certificate above ``eps_g`` would be a bug and raises.
    """
    m = len(demands)
    eps_f, delta_f = _float_down(eps_g), _float_down(delta_g)
    rho_star = rho_for(eps_f, delta_f)
    total = sum(weights)
    plans = [_local(gaussian_for_rho(d.l1, d.l2, rho_star * w / total, eps_g / m, delta_g / m,
                                     parties), local)
             for d, w in zip(demands, weights, strict=True)]
    if m == 1:
        return plans
    rho, eps = certify(plans, delta_f)
    if Fraction(eps) > eps_g:
        raise RuntimeError(f"the composed Gaussian aggregates certify epsilon {eps}, above the "
                           f"{float(eps_g)} they charge")
    return [replace(p, composed=m, composed_rho=rho, composed_epsilon=eps,
                    composed_delta=delta_g) for p in plans]


def plan_rho(plan: NoisePlan) -> float:
    """The zCDP of one Gaussian plan's released noise, for the accountant: OpenDP's
    ``make_gaussian`` map of the honest parties' sum (scale ``plan.scale``) at the L2
    sensitivity, plus the KLS21 ``tau`` term over the cells that can change when several
    independent draws make up that sum (none in local mode, where one party adds one draw
    and CKS20's bound is exact).

    >>> plan = calibrate(1, 1.0, 1.0, 1e-6, "gaussian")
    >>> abs(plan_rho(plan) - plan.rho) < 1e-12
    True
    """
    if plan.mechanism != "gaussian" or plan.rho is None:
        raise ValueError("only a Gaussian plan has a zCDP map")
    meas = _gaussian_map(plan.scale)
    rho = float(meas.map(float(plan.l2)))
    if len(plan.adders) > 1:
        dims = min(plan.l1, math.ceil(plan.l2 * plan.l2 - 1e-9))
        rho += kls_tau(plan.party_scale, plan.parties - 1) * dims
    return rho


@lru_cache(maxsize=1024)
def _gaussian_map(scale: float) -> dp.Measurement:
    return dp.m.make_gaussian(dp.vector_domain(dp.atom_domain(T="i64")),
                              dp.l2_distance(T="f64"), scale=scale)


def _zcdp_measurement(rho: float) -> dp.Measurement:
    """A measurement whose map is ``rho`` zCDP at one person added or removed (``rho d^2``
    for ``d`` people, group privacy): a carrier of ``plan_rho`` into OpenDP's combinators.
    Its function is never run."""
    return dp.m.make_user_measurement(
        dp.atom_domain(T=bool), dp.symmetric_distance(), dp.zero_concentrated_divergence(),
        function=lambda x: x, privacy_map=lambda d_in: rho * d_in * d_in, TO=bool)


def certify(plans: Sequence[NoisePlan], delta: float) -> tuple[float, float]:
    """(rho, epsilon): OpenDP's composition of the Gaussian plans' maps (``plan_rho``) and
    the epsilon its zCDP -> approxDP conversion certifies at ``delta`` (``make_fix_delta``).

    >>> plans = allocate([Demand(1, 1.0)] * 3, 1.0, 1e-6, "gaussian")
    >>> rho, eps = certify(plans, 1e-6)
    >>> eps <= 1.0, round(rho, 4)
    (True, 0.0244)
    """
    composed = dp.c.make_composition([_zcdp_measurement(plan_rho(p)) for p in plans])
    rho = float(composed.map(1))
    eps, _ = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(composed), delta).map(1)
    return rho, float(eps)


def certified_charge(plans: Sequence[NoisePlan]) -> tuple[Fraction, Fraction]:
    """What the accountant certifies for a query's plans, as exact fractions: the Laplace
    plans' own ``(epsilon, delta)`` plus, per Gaussian group, OpenDP's certified epsilon at
    the group's delta (a Gaussian accounted alone: its own charge, certified by ``rho_for``).

    The ledger charges the sum of the plans' ``epsilon``/``delta``, never less than this.
    """
    eps, dlt = Fraction(0), Fraction(0)
    groups: dict[tuple[float | None, Fraction], list[NoisePlan]] = {}
    for p in plans:
        if p.composed > 1:
            groups.setdefault((p.composed_rho, p.composed_delta), []).append(p)
        else:
            eps += p.epsilon
            dlt += p.delta
    for (_, delta_g), members in groups.items():
        _, e = certify(members, _float_down(delta_g))
        eps += Fraction(e)
        dlt += delta_g
    return eps, dlt


# ---------------------------------------------------------------- central Laplace vs Gaussian


def dgauss_variance_deficit(sigma2: float) -> float:
    """``eta`` with ``Var N_Z(0, sigma^2) >= sigma^2 (1 - eta)``: by Poisson summation,
    ``Var = sigma^2 - F'(a) / F(a)`` with ``a = 1 / (2 sigma^2)`` and
    ``F(a) = sum_k exp(-pi^2 k^2 / a) >= 1``, so ``eta = 8 pi^2 sigma^2 sum_{k >= 1} k^2
    exp(-2 pi^2 sigma^2 k^2)`` (2.1e-7 at ``sigma = 1``, falling fast).

    >>> f"{dgauss_variance_deficit(1.0):.2e}"
    '2.11e-07'
    """
    c = 2 * math.pi**2 * sigma2
    return 4 * c * sum(k * k * math.exp(-c * k * k) for k in range(1, 60))


def laplace_over_central_gaussian(k: int, epsilon: float, delta: float,
                                  epsilon_low: float | None = None) -> float:
    """An upper bound on sd(central Laplace) / sd(central discrete Gaussian) for each of ``k``
    aggregates with ``l1 = l2`` (a person in one cell of each) at ``(epsilon, delta)``.

    The Laplace: ``DLap(k l1 / epsilon)`` per aggregate (basic composition), variance at most
    ``2 t^2`` (``2p/(1-p)^2 <= 2t^2`` as ``2 sinh(x/2) >= x``). The Gaussian: the best central
    plan VeilQL's accountant would certify, ``k`` discrete Gaussians composed in zCDP at
    OpenDP's ``rho*(epsilon, delta)``, ``sigma^2 = k l2^2 / (2 rho*)``, variance at least
    ``sigma^2 (1 - eta)`` (``dgauss_variance_deficit``). So the ratio is at most
    ``2 sqrt(k rho* / (1 - eta)) / epsilon``, independent of ``l1``. ``epsilon_low``: the
    bound over every epsilon in ``[epsilon_low, epsilon]`` (rho* grows with epsilon).

    >>> round(laplace_over_central_gaussian(1, 1.0, 1e-6), 3)
    0.312
    """
    rho = rho_for(epsilon, delta) * (1 + 1e-12)
    eta = dgauss_variance_deficit(k / (2 * rho))
    low = epsilon if epsilon_low is None else epsilon_low
    return 2 * math.sqrt(k * rho / (1 - eta)) / low


def certified_aggregates(delta_max: float, within: float = 1.05, epsilon_min: float = 0.1,
                         epsilon_max: float = 10.0, ratio: float = 1.1) -> int:
    """The most aggregates ``k`` for which, at every epsilon in ``[epsilon_min, epsilon_max]``
    and every ``delta <= delta_max``, central Laplace's sd is at most ``within`` times a
    central discrete Gaussian's (``laplace_over_central_gaussian``). Rigorous over the whole
    range, not just a grid: each cell ``[e, e * ratio]`` is bounded with ``rho*`` at its top
    and ``epsilon`` at its bottom, and ``rho*`` only grows with epsilon and delta.

    >>> certified_aggregates(1e-6, ratio=1.5)  # a coarse grid certifies less
    4
    """
    grid = [epsilon_min]
    while grid[-1] < epsilon_max:
        grid.append(min(epsilon_max, grid[-1] * ratio))

    def worst(k: int) -> float:
        return max(laplace_over_central_gaussian(k, hi, delta_max, lo)
                   for lo, hi in zip(grid, grid[1:], strict=False))

    k = 0
    while worst(k + 1) <= within:
        k += 1
    return k
