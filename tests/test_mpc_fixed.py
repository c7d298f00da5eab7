"""Fixed-point encoding of numeric columns."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from veilql.engine.mpc.fixed import FixedPointRangeError, decode, decode_decimal, encode
from veilql.errors import QueryError


def signed(words: np.ndarray) -> list[int]:
    return words.view(np.int64).tolist()


def test_integers_exact() -> None:
    assert signed(encode(np.array([0, 1, -1, 12345]), 2)) == [0, 100, -100, 1234500]
    assert signed(encode([7], 0)) == [7]


def test_round_half_away_from_zero() -> None:
    assert signed(encode([0.5, 1.5, 2.5, -0.5, -2.5], 0)) == [1, 2, 3, -1, -3]
    assert signed(encode([0.125, -0.125], 2)) == [13, -13]


def test_shortest_repr_semantics() -> None:
    # 2.675 is 2.67499999... in binary; its declared decimal value rounds up.
    assert signed(encode([2.675, 1.005, -1.005], 2)) == [268, 101, -101]


def test_decimal_and_strings_exact() -> None:
    big = Decimal("1234567890123.456789")
    assert signed(encode(np.array([big, "-0.0005"], dtype=object), 3)) == [
        1234567890123457, -1]
    assert decode_decimal(encode([big], 6), 6) == [big]


def test_decode_roundtrip() -> None:
    v = np.array([1.25, -3.5, 0.0, 99999.99])
    assert decode(encode(v, 2), 2).tolist() == v.tolist()


def test_limits() -> None:
    lim = (1 << 62) // 100
    encode([lim - 1], 2)
    with pytest.raises(FixedPointRangeError, match="2\\^62"):
        encode([lim + 1], 2)
    with pytest.raises(FixedPointRangeError):
        encode([4.7e18], 0)
    with pytest.raises(FixedPointRangeError):
        encode(np.array([Decimal(2**62)], dtype=object), 0)
    with pytest.raises(QueryError):
        encode([float("nan")], 1)
    with pytest.raises(FixedPointRangeError, match="NULL"):
        encode(np.array([None], dtype=object), 1)
    with pytest.raises(FixedPointRangeError, match="decimals"):
        encode([1], 40)
    err = pytest.raises(FixedPointRangeError, encode, [1e30], 0).value
    assert err.hint and "bounds" in err.hint


def test_large_floats_use_exact_path() -> None:
    x = float(2**55 + 8)
    assert signed(encode([x, -x], 0)) == [2**55 + 8, -(2**55 + 8)]


@given(st.lists(st.decimals(min_value=-10**9, max_value=10**9, places=4,
                            allow_nan=False, allow_infinity=False), max_size=20))
def test_float_path_agrees_with_decimal(values: list[Decimal]) -> None:
    floats = [float(v) for v in values]
    exact = [int((Decimal(repr(f)) * 100).quantize(Decimal(1), rounding="ROUND_HALF_UP"))
             for f in floats]
    assert signed(encode(np.array(floats, dtype=np.float64), 2)) == exact
