"""Each compute party's noise share, drawn with OpenDP's exact integer samplers.

A party calls ``sample_share(plan, my_index, n)`` locally, secret-shares the result and adds it to
the shared aggregate before anything is opened (docs/PRIVACY.md).

Why these samplers: OpenDP's ``make_laplace`` and ``make_gaussian`` over an i64 vector domain
sample the discrete Laplace and discrete Gaussian exactly, with rational arithmetic and
Bernoulli(exp(-x)) trials (Canonne-Kamath-Steinke 2020, Algorithms 1-3); no floating-point
noise, so none of the attacks of Mironov 2012 apply. Their randomness is OpenDP's Rust
``fill_bytes``; the wheel installed here is built with the ``use-openssl`` feature (its library
carries the ``"OpenSSL error: "`` message of that code path, checked by the tests), so the bits
come from OpenSSL's ``RAND_bytes``: a CTR-DRBG (AES-256) seeded from the OS (getrandom). That is
a cryptographic source. OpenDP builds without ``use-openssl`` fall back to ``rand``'s
``thread_rng``/CTR-DRBG, also a CSPRNG. No numpy or ``random`` generator is involved.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from veilql.engine.dp import opendp_api as dp
from veilql.engine.dp.calibrate import NoisePlan

dp.enable_features("contrib")


@lru_cache(maxsize=64)
def _measurement(mechanism: str, party_scale: float) -> dp.Measurement:
    """OpenDP measurement that adds one party's noise to an i64 vector (cached per scale)."""
    domain = dp.vector_domain(dp.atom_domain(T="i64"))
    if mechanism == "laplace":
        return dp.m.make_laplace(domain, dp.l1_distance(T="i64"), scale=party_scale)
    if mechanism == "gaussian":
        return dp.m.make_gaussian(domain, dp.l2_distance(T="f64"), scale=party_scale)
    raise ValueError(f"unknown mechanism {mechanism!r}")


def sample_share(plan: NoisePlan, party_index: int, n: int) -> np.ndarray:
    """Party ``party_index``'s noise for ``n`` cells (int64); zeros if it is not an adder.

    >>> from veilql.engine.dp.calibrate import calibrate
    >>> plan = calibrate(1, 1.0, 1.0)
    >>> sample_share(plan, 2, 3)
    array([0, 0, 0])
    >>> sample_share(plan, 0, 4).dtype, sample_share(plan, 1, 4).shape
    (dtype('int64'), (4,))
    """
    if not 0 <= party_index < plan.parties:
        raise ValueError(f"party index {party_index} outside 0..{plan.parties - 1}")
    if n < 0:
        raise ValueError(f"number of cells must be >= 0, got {n}")
    if party_index not in plan.adders or n == 0:
        return np.zeros(n, dtype=np.int64)
    noisy = np.asarray(_measurement(plan.mechanism, plan.party_scale)([0] * n), dtype=np.int64)
    _check_not_saturated(noisy)
    return noisy


class NoiseSaturated(RuntimeError):
    """A noise draw hit the i64 limit, where OpenDP's sampler clamps: it is not exact noise."""


_I64 = np.iinfo(np.int64)


def _check_not_saturated(noisy: np.ndarray) -> None:
    """Refuse draws at the i64 limits rather than release clamped (so not DP) noise.

    OpenDP samples exactly on big integers and then saturates to i64, and two clamped draws
    cancel in Z_2^64. The planner only accepts scales whose draws reach 2^62 with probability
    below 2^-64 (``ring.py``), so this never fires for a plan it produced.

    >>> _check_not_saturated(np.array([_I64.max]))
    Traceback (most recent call last):
    ...
    veilql.engine.dp.sample.NoiseSaturated: a noise draw hit the i64 limit of OpenDP's sampler ...
    """
    if noisy.size and (noisy.max() >= _I64.max or noisy.min() <= _I64.min):
        raise NoiseSaturated("a noise draw hit the i64 limit of OpenDP's sampler (the noise "
                             "scale is too large for the ring); nothing is released")


def sample_total(plan: NoisePlan, n: int) -> np.ndarray:
    """Sum of every party's share for ``n`` cells: the noise the analyst's opening carries.

    For tests and simulation; in a run each party samples its own share and never sees this.
    Central plans have no shares (their noise is sampled on shares, in the MPC): refused.
    """
    if plan.central:
        raise ValueError("central noise is sampled on shares (mpc.protocols.noise), not by "
                         "the parties")
    total = np.zeros(n, dtype=np.int64)
    for party in range(plan.parties):
        total += sample_share(plan, party, n)
    return total
