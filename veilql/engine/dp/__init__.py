"""Differential privacy for noise added inside MPC: calibration, exact sampling, error bars.

See docs/PRIVACY.md for the privacy argument behind each mechanism.
"""

from veilql.engine.dp.accuracy import avg_ci95, ci95, half_width
from veilql.engine.dp.calibrate import (
    LargeEpsilonWarning,
    NoisePlan,
    calibrate,
    check_budget,
    split_budget,
)
from veilql.engine.dp.sample import sample_share, sample_total

__all__ = [
    "LargeEpsilonWarning",
    "NoisePlan",
    "avg_ci95",
    "calibrate",
    "check_budget",
    "ci95",
    "half_width",
    "sample_share",
    "sample_total",
    "split_budget",
]
