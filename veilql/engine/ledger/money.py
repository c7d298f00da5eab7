"""Exact arithmetic for privacy budgets: parse, serialise and print ``Fraction`` amounts.

A ledger adds up many small costs and compares the sum with a budget. Binary floats drift:
``sum([0.1] * 10) != 1.0``, and even exact conversion, ``Fraction(0.1)``, gives the binary value
``3602879701896397/36028797018963968``, so ten of them exceed ``Fraction(1)`` and the tenth query
of 0.1 against a budget of 1.0 would be refused. Users write ``0.1`` meaning one tenth, so a float
is converted through its shortest round-tripping decimal, ``Fraction(repr(x))``; Python's
``repr`` is the shortest string that reads back as the same float (David Gay's algorithm), so the
conversion is exact for every decimal a user can type into a TOML file or a SQL OPTIONS clause.

>>> to_fraction(0.1) * 10 == to_fraction(1.0)
True
>>> fmt(to_fraction(1e-06)), fmt(Fraction(1, 3))
('1e-06', '1/3')
"""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

Amount = Fraction | Decimal | float | int | str


def to_fraction(value: Amount, *, what: str = "amount") -> Fraction:
    """Convert ``value`` exactly to a non-negative ``Fraction``.

    Floats go through ``repr`` (see the module docstring); strings may be decimals
    (``"0.1"``, ``"1e-6"``) or ratios (``"1/3"``). Raises ``ValueError`` naming ``what``
    for booleans, NaN, infinities, negatives and unparsable strings.

    >>> to_fraction("1/3"), to_fraction(2), to_fraction(0.25)
    (Fraction(1, 3), Fraction(2, 1), Fraction(1, 4))
    """
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number, not a boolean")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{what} must be finite, got {value!r}")
        result = Fraction(repr(value))
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{what} must be finite, got {value!r}")
        result = Fraction(value)
    elif isinstance(value, int | Fraction):
        result = Fraction(value)
    elif isinstance(value, str):
        try:
            result = Fraction(value.strip())
        except (ValueError, ZeroDivisionError) as exc:
            raise ValueError(f"{what} is not a number: {value!r}") from exc
    else:
        raise ValueError(f"{what} must be a number, got {type(value).__name__}")
    if result < 0:
        raise ValueError(f"{what} must not be negative, got {fmt(result)}")
    return result


def _terminating(value: Fraction) -> bool:
    """True when ``value`` has a finite decimal expansion (denominator is 2^a * 5^b)."""
    d = value.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


def encode(value: Fraction) -> str:
    """The canonical text of an amount in a ledger entry: a plain decimal when it terminates,
    else ``"p/q"``. ``Fraction(encode(x)) == x`` always.

    >>> encode(Fraction(1, 10)), encode(Fraction(1, 1000000)), encode(Fraction(2, 3))
    ('0.1', '0.000001', '2/3')
    """
    if not _terminating(value):
        return f"{value.numerator}/{value.denominator}"
    n, d = value.numerator, value.denominator
    if d == 1:
        return str(n)
    # d = 2^a * 5^b: multiplying by 10^max(a, b) clears it; count digits with integers only.
    twos = (d & -d).bit_length() - 1
    fives, rest = 0, d >> twos
    while rest % 5 == 0:
        rest //= 5
        fives += 1
    digits = max(twos, fives)
    scaled = abs(n) * 10**digits // d
    sign = "-" if n < 0 else ""
    text = str(scaled).rjust(digits + 1, "0")
    return f"{sign}{text[:-digits]}.{text[-digits:]}"


def decode(text: str, *, what: str = "amount") -> Fraction:
    """Parse an amount written by ``encode`` (strictly: a string, non-negative, exact).

    >>> decode("0.1") == Fraction(1, 10)
    True
    """
    if not isinstance(text, str):
        raise ValueError(f"{what} must be written as a string, got {type(text).__name__}")
    return to_fraction(text, what=what)


def fmt(value: Fraction) -> str:
    """Print an amount for people: like the float a user typed when that is exact
    (``1.0``, ``0.5``, ``1e-06``), else the exact ratio.

    >>> fmt(Fraction(1)), fmt(Fraction(1, 2)), fmt(Fraction(3, 10)), fmt(Fraction(1, 7))
    ('1.0', '0.5', '0.3', '1/7')
    """
    as_float = float(value)
    if math.isfinite(as_float) and Fraction(repr(as_float)) == value:
        return repr(as_float)
    return encode(value)
