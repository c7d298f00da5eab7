"""Intervals and integer/decimal types of arithmetic at the declared bounds
(``_Num``), as DuckDB computes it: result types of + - * /, the hull of
CASE branches, the exact interval of a square, SQL's ROUND."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlglot import exp

from veilql.engine.sql.sqltypes import _DIGITS, _int_range

# ---------------------------------------------------------------- numbers


@dataclass(frozen=True)
class _Num:
    """A numeric expression: its interval at the declared bounds and its engine type."""

    lo: float
    hi: float
    ints: tuple[int, int] | None = None  # integer type range
    lit: bool = False  # an integer written in the query (its type adapts, as in DuckDB)
    dec: tuple[int, int] | None = None
    flt: bool = False
    known: bool = True  # False when a column's representation is unknown

    @property
    def magnitude(self) -> float:
        return max(abs(self.lo), abs(self.hi))


def _smallest_int(lo: float, hi: float) -> tuple[int, int] | None:
    """The range of the narrowest signed integer type holding [lo, hi], or None."""
    for bits in (8, 16, 32, 64, 128):
        r = _int_range(bits, True)
        if r[0] <= lo and hi <= r[1]:
            return r
    return None


def _bits(r: tuple[int, int]) -> int:
    return (r[1] - r[0]).bit_length()


def _join_ints(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    """A lower bound of the integer type DuckDB gives ``a op b``: the wider of the two;
    with one signed and one unsigned, only what both hold (conservative)."""
    if (a[0] < 0) == (b[0] < 0):
        return a if _bits(a) >= _bits(b) else b
    wide = max(_bits(a), _bits(b))
    return (0, min(_int_range(wide, True)[1], _int_range(wide, False)[1]))


def _literal_ints(n: _Num) -> tuple[int, int]:
    """The type DuckDB gives an integer literal in arithmetic with other literals."""
    if n.ints is not None:
        return n.ints
    for bits in (32, 64, 128):
        r = _int_range(bits, True)
        if r[0] <= n.lo and n.hi <= r[1]:
            return r
    return _int_range(128, True)


def _as_decimal(n: _Num) -> tuple[int, int]:
    """(width, scale) of ``n`` when it meets a DECIMAL."""
    if n.dec is not None:
        return n.dec
    if n.lit:  # an integer literal is an INTEGER, BIGINT or HUGEINT
        if -(2**31) <= n.lo and n.hi < 2**31:
            return (10, 0)
        return (19, 0) if -(2**63) <= n.lo and n.hi < 2**63 else (38, 0)
    assert n.ints is not None
    return (_DIGITS[min(d for d in _DIGITS if d >= _bits(n.ints))], 0)


def _decimal_result(op: type, a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    """DuckDB's result (width, scale) of a DECIMAL operation."""
    (w1, s1), (w2, s2) = a, b
    if op is exp.Mul:
        width, scale = w1 + w2, s1 + s2
        if w1 <= 18 and w2 <= 18 and width > 18:
            width = 18  # DuckDB keeps 64-bit decimals and checks for overflow
        return min(width, 38), scale
    scale = max(s1, s2)
    return min(max(w1 - s1, w2 - s2) + scale + 1, 38), scale




def _sql_round(x: float, digits: int) -> float:
    """SQL's ROUND: half away from zero."""
    if not math.isfinite(x):
        return x
    scale = 10.0**digits
    return math.copysign(math.floor(abs(x) * scale + 0.5) / scale, x)


def _hull(nums: list[_Num]) -> _Num:
    """The interval holding every branch, in the widest of their types."""
    lo, hi = min(n.lo for n in nums), max(n.hi for n in nums)
    if any(n.flt for n in nums):
        return _Num(lo, hi, flt=True)
    if not all(n.known for n in nums):
        return _Num(lo, hi, known=False)
    decs = [n for n in nums if n.dec is not None]
    if decs:
        scale = max(_as_decimal(n)[1] for n in nums)
        whole = max(_as_decimal(n)[0] - _as_decimal(n)[1] for n in nums)
        return _Num(lo, hi, dec=(min(whole + scale, 38), scale))
    ints = [n.ints if n.ints is not None else _literal_ints(n) for n in nums]
    r = ints[0]
    for other in ints[1:]:
        r = _join_ints(r, other)
    return _Num(lo, hi, ints=r, lit=all(n.lit for n in nums))


def _square(product: _Num, a: _Num) -> _Num:
    """The interval of ``x * x`` for ``x`` in ``[a.lo, a.hi]``: both factors are the same
    value, so it is ``[min(lo^2, hi^2), max(lo^2, hi^2)]``, or from 0 when the interval
    holds 0 (interval arithmetic of two independent factors would give ``lo * hi < 0``).

    >>> _square(_Num(-200.0, 100.0), _Num(-2.0, 10.0))
    _Num(lo=0.0, hi=100.0, ints=None, lit=False, dec=None, flt=False, known=True)
    >>> _square(_Num(6.0, 25.0), _Num(-5.0, -2.0)).lo
    4.0
    """
    ends = (a.lo * a.lo, a.hi * a.hi)
    lo = 0.0 if a.lo <= 0.0 <= a.hi else min(ends)
    return _Num(lo, max(ends), product.ints, product.lit, product.dec, product.flt,
                product.known)


