"""Noisy values as text: the value to the precision its 95% interval allows.

Shared by `veil query`'s table format and the shell, so both print ``3101 ± 3`` and
``0.083 ± 0.012`` rather than digits that are only noise.
"""

from __future__ import annotations

import math
from typing import Any


def _fixed(x: float, decimals: int) -> str:
    """``x`` with ``decimals`` places and never in exponent notation."""
    return f"{x:.{decimals}f}"


def noisy_text(value: Any, half: float | None) -> tuple[str, str]:
    """A noisy value and its 95% half-width as text, with as many decimals as the noise allows.

    >>> noisy_text(3101, 3.0), noisy_text(15136246.4, 2468000.0), noisy_text(0.08341, 0.01234)
    (('3101', '3'), ('15136246', '2468000'), ('0.083', '0.012'))
    """
    if value is None:
        return "NULL", ""
    if half is None or not math.isfinite(half):
        return (str(value) if not isinstance(value, float) else f"{value:.6g}"), ""
    if isinstance(value, int) and not isinstance(value, bool):  # counts: whole numbers
        return str(value), _fixed(half, 0) if half >= 1 else f"{half:.2g}"
    # Two significant digits of the interval, and the value to the same place: more digits
    # would be noise (the convention for reporting a measurement with its uncertainty).
    decimals = max(0, min(10, 1 - math.floor(math.log10(half)))) if half > 0 else 6
    return _fixed(float(value), decimals), _fixed(half, decimals)
