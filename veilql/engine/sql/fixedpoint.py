"""Intervals and integer/decimal types of arithmetic at the declared bounds
(``_Num``), as DuckDB computes it: result types of + - * /, the hull of
CASE branches, the exact interval of a square, SQL's ROUND."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlglot import exp

from veilql.engine.sql.sqltypes import _DIGITS, _int_range
from veilql.errors import UnsupportedError

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




# ------------------------------------------------- floating-point factors of a product

#: Decimals to which each row's product is exact, at least, when a factor of a product
#: across parties is computed in floating point (a reciprocal ``1 / D``): cents, or the
#: other factors' own digits when they have more.
PRODUCT_DECIMALS = 2
#: The most digits a floating-point factor gets: a double holds about 15.9 of them.
MAX_FLOAT_DIGITS = 15
# Per person and row, a product may use half of the ring's safe range 2^62 (the rest is for
# the noise) over up to 2^33 people (``dp/ring.py`` MAX_UNITS, ``rewrite/check_ranges.py``).
_ROOM = 2.0**62 / 2 / 2.0**33


@dataclass(frozen=True)
class Factor:
    """One party's factor of a product across parties, as its public bounds describe it."""

    label: str  # how a refusal names it, e.g. "beta's factor 1 / (tb.fills + 1)"
    magnitude: float  # its largest |value| under the declared bounds
    decimals: int  # its own fixed-point digits
    floating: bool  # computed in floating point: its digits are chosen here
    columns: tuple[str, ...] = ()  # the columns it reads, named by a refusal's hint


def product_decimals(factors: list[Factor], rows: int, what: str) -> list[int]:
    """Digits of each factor of ``what``, a product across parties, from public bounds.

    A factor computed in floating point (``1 / D``, ``x / D``, ``SQRT(x)``) is rounded to
    ``d`` digits at its party, so each row's product is off by up to ``M * 0.5 * 10^-d``,
    where ``M`` bounds the product of the other factors: with ``1 / D`` tiny, six digits
    would keep one or two significant ones. It gets at least ``need = d_out +
    ceil(log10 M) + 1`` digits, so that this error stays below ``0.5 * 10^-d_out``
    (``d_out``: ``PRODUCT_DECIMALS``, or the other factors' digits when more), and then
    as many more as keep the product, at its scale (the sum of the factors' digits), within
    ``_ROOM / rows`` for up to 2^33 people with ``rows`` joined rows each (the ring check of
    ``rewrite/check_ranges.py``). Other factors keep their digits; when the least digits
    do not fit, the query is refused, naming the bounds to narrow.

    >>> product_decimals([Factor("ta.score", 10.0, 2, False),
    ...                   Factor("1 / (tb.fills + 1)", 1.0, 6, True)], 2, "SUM")
    [2, 5]
    >>> product_decimals([Factor("ta.visits", 50.0, 0, False),
    ...                   Factor("1 / (tb.d)", 1e-3, 6, True)], 2, "SUM")
    [0, 9]
    """
    digits = [f.decimals for f in factors]
    floating = [i for i, f in enumerate(factors) if f.floating]
    if not floating:
        return digits
    exact = [f.decimals for f in factors if not f.floating]
    d_out = max([PRODUCT_DECIMALS, *exact])
    room = _ROOM / max(rows, 1)

    def size(ds: list[int]) -> float:  # as check_ranges' per_row: one unit of rounding each
        out = 1.0
        for f, d in zip(factors, ds, strict=True):
            out *= math.ceil(f.magnitude * 10.0**d * (1 + 2.0**-50)) + 1
        return out

    for i in floating:
        others = math.prod(f.magnitude for j, f in enumerate(factors) if j != i)
        need = d_out + math.ceil(math.log10(others)) + 1 if others > 0 else 0
        digits[i] = max(need, 0)
    if size(digits) >= room or max(digits[i] for i in floating) > MAX_FLOAT_DIGITS:
        raise _unfit(factors, digits, floating, d_out, rows, what)
    grown = True
    while grown:  # more digits while they fit: each row's error shrinks tenfold per digit
        grown = False
        for i in floating:
            more = digits[:i] + [digits[i] + 1] + digits[i + 1:]
            if more[i] <= MAX_FLOAT_DIGITS and size(more) < room:
                digits, grown = more, True
    return digits


def _unfit(factors: list[Factor], digits: list[int], floating: list[int], d_out: int,
           rows: int, what: str) -> UnsupportedError:
    """The refusal of a floating-point factor whose least digits leave the ring."""
    i = floating[0]
    others = math.prod(f.magnitude for j, f in enumerate(factors) if j != i)
    columns = sorted({c for f in factors for c in f.columns}) or [f.label for f in factors]
    return UnsupportedError(
        f"{what}: {factors[i].label} is computed in floating point and needs {digits[i]} "
        f"decimals, so that its product with the other factors (up to {others:.6g}) is "
        f"exact to {d_out} decimals on each row; but the product, at {sum(digits)} "
        f"decimals in all, could then leave the safe range of the 64-bit ring (2^62, for "
        f"up to 2^33 people x {rows} rows each)",
        f"narrow the declared bounds of {', '.join(columns)} in the parties' policies (a "
        "smaller numerator, or a divisor farther from 0), or lower max_rows_per_unit")
