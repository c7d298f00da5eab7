"""Fixed-point encoding: a numeric column scaled by its declared precision into Z_2^64.

A value ``v`` with ``decimals = d`` becomes the integer ``round(v * 10^d)`` (half away
from zero), stored in two's complement as uint64, so sums of encoded values are exact
integers. Floats are read by their shortest decimal representation (``repr``), so
``2.675`` with two decimals encodes as 268, as a user would expect, although the
binary double is slightly below 2.675. Magnitudes of 2^62 or more are refused: the
secure comparisons need ``|x - y| < 2^63``.

>>> encode([1.5, -2.25, 3], 2).view("int64").tolist()
[150, -225, 300]
>>> decode(encode([2.675, -0.005], 2), 2).tolist()
[2.68, -0.01]
>>> decode_decimal(encode(["12.345"], 3), 3)
[Decimal('12.345')]
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import numpy as np

from veilql.errors import QueryError

LIMIT = 1 << 62
MAX_DECIMALS = 18


class FixedPointRangeError(QueryError):
    """A value cannot be encoded: too large for the ring, not a number, or missing."""


def _check_decimals(decimals: int) -> None:
    if not isinstance(decimals, int | np.integer) or not 0 <= decimals <= MAX_DECIMALS:
        raise FixedPointRangeError(
            f"decimals must be an integer between 0 and {MAX_DECIMALS}, got {decimals!r}",
            "set the column's `decimals` in the policy to its precision, e.g. 2 for cents",
        )


def _exact(v: Any, scale: int, where: str) -> int:
    """round(v * scale) half away from zero, with Decimal arithmetic."""
    if v is None or (isinstance(v, float) and v != v):
        raise FixedPointRangeError(
            f"{where}: missing value (NULL/NaN) cannot be secret-shared",
            "filter NULLs in the party's local SQL or declare a default",
        )
    try:
        d = Decimal(repr(v)) if isinstance(v, float | np.floating) else Decimal(str(v))
        if not d.is_finite():
            raise InvalidOperation
    except (InvalidOperation, ValueError) as exc:
        raise FixedPointRangeError(
            f"{where}: {v!r} is not a finite number", "share numeric columns only",
        ) from exc
    # ROUND_HALF_UP in Decimal rounds half away from zero.
    return int((d * scale).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _range_error(where: str, decimals: int) -> FixedPointRangeError:
    return FixedPointRangeError(
        f"{where}: magnitude reaches 2^62 after scaling by 10^{decimals}",
        "clamp the column to smaller bounds in the policy, or declare fewer decimals",
    )


def encode(values: Any, decimals: int, *, column: str = "value") -> np.ndarray:
    """Scale ``values`` (ints, floats, Decimals, numeric strings, arrays) into uint64."""
    _check_decimals(decimals)
    scale = 10**int(decimals)
    arr = np.asarray(values)
    if arr.dtype.kind in "iub":
        ints = arr.astype(np.int64)
        bound = -(-LIMIT // scale)  # smallest |v| that would overflow after scaling
        if ints.size and int(np.abs(ints).max()) >= bound:
            raise _range_error(column, decimals)
        return (ints * scale).view(np.uint64)
    if arr.dtype.kind == "f":
        return _encode_float(arr.astype(np.float64), decimals, scale, column)
    flat = [_exact(v, scale, column) for v in arr.ravel().tolist()]
    if any(abs(v) >= LIMIT for v in flat):
        raise _range_error(column, decimals)
    return np.array(flat, dtype=np.int64).reshape(arr.shape).view(np.uint64)


def _encode_float(arr: np.ndarray, decimals: int, scale: int, column: str) -> np.ndarray:
    if not np.isfinite(arr).all():
        raise FixedPointRangeError(
            f"{column}: NaN or infinite value cannot be secret-shared",
            "filter NULLs in the party's local SQL or clamp to declared bounds",
        )
    y = np.abs(arr) * scale
    if arr.size and float(y.max()) >= 2.0**62:
        raise _range_error(column, decimals)
    rounded = np.floor(y + 0.5)
    # The float product is exact enough unless it lies near a rounding tie or beyond
    # 2^52 (where floats are spaced >= 1); redo those few values with Decimal.
    frac = y - np.floor(y)
    doubt = (np.abs(frac - 0.5) < 1e-6) | (y >= 2.0**52)
    out = (np.sign(arr) * rounded).astype(np.int64)
    if doubt.any():
        idx = np.flatnonzero(doubt.ravel())
        flat = out.reshape(-1)
        for i in idx.tolist():
            v = _exact(float(arr.reshape(-1)[i]), scale, column)
            if abs(v) >= LIMIT:
                raise _range_error(column, decimals)
            flat[i] = v
    return out.view(np.uint64)


def decode(words: np.ndarray, decimals: int) -> np.ndarray:
    """Signed reading of uint64 words divided by 10^decimals, as float64."""
    _check_decimals(decimals)
    return np.asarray(words, dtype=np.uint64).view(np.int64) / float(10**int(decimals))


def decode_decimal(words: np.ndarray, decimals: int) -> list[Decimal]:
    """Exact decoding: one ``Decimal`` per word (signed, scaled by 10^-decimals)."""
    _check_decimals(decimals)
    ints = np.asarray(words, dtype=np.uint64).view(np.int64).ravel().tolist()
    return [Decimal(v).scaleb(-int(decimals)) for v in ints]
