"""The bucket tests of a quotient across parties: ``MAX(a.x / (b.y * b.y + 1))``.

A histogram across parties (``rewrite/cross_histogram.py``) compares its expression ``Q``
with each public bucket edge ``e`` on shares. For ``Q = N / D``, ``N`` a sum of the
parties' parts and ``D`` one party's expression whose declared bounds lie on one side of 0
(the type check refuses ``D`` otherwise, naming the bounds), ``Q >= e`` is ``s (N - e D) >=
0`` with ``s`` the sign of ``D`` (every comparison ``< <= > >= = <>`` the same way): no
reciprocal, no product of shares. Each party shares its part of ``N`` in ``a`` digits
(``N'``, a BIGINT) and ``D``'s owner shares ``D`` in ``b`` digits (``D'``); with ``e = m
10^-c`` (``c`` its own digits) and ``k = max(a, b + c)``,

    10^k (N - e D) = 10^(k - a) N' - m 10^(k - b - c) D',

an exact integer whose coefficients are public: the compute parties multiply their shares
by them locally (``operators/predicate._sum``) and compare the sum with 0, one secure
comparison per inner edge as for a sum (the upper test of a bucket is the complement of
the next bucket's lower test). The digits ``a``, ``b`` are those at which the parts are
exact under the columns' declared digits (a product's digits add up), at most
``MAX_DECIMALS`` (a quotient or a function inside a part: ``MAX_DECIMALS``, so there the
test is exact to that precision). Each operand is clamped to its declared interval at its
owner (``D`` keeps its sign on every row: the binder's own clamp of a divisor,
``typecheck_exprs._division``, keeps it off 0 too), and under those bounds the scaled sum
must stay below the ring's safe range (``dp/ring.SAFE_RANGE``), else the plan is refused
before anything is read, naming the reach (``buckets`` first takes fewer digits for the
edges when that is enough). A row where a part of ``N`` or ``D`` is NULL is in no
bucket (its not-NULL atoms, as for a sum). Since every test is exact for the clamped
operands, a row's tests are monotone in the edge and it lands in one bucket at most: the
sensitivity of a histogram. Leakage and cost: those of a sum's histogram, with one operand
column per part of ``N`` and one for ``D`` instead of one per edge at the first party.

>>> scaled_coefficients("2.5", 2, 0)  # 100 (N - 2.5 D) = N' - 250 D'
(1, -250, 2)
>>> scaled_coefficients("1562.5", 0, 2)  # 1000 N - 1562500 D = 1000 N' - 15625 D'
(1000, -15625, 3)
>>> scaled_coefficients("-3", 1, 1)  # 10 (N + 3 D) = N' + 3 D'
(1, 3, 1)
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Callable

from sqlglot import exp

from veilql.engine.dp.ring import SAFE_RANGE
from veilql.engine.plan.nodes import Buckets, LocalColumn
from veilql.engine.rewrite.context import MAX_DECIMALS, Context
from veilql.engine.sql.parts import is_linear, split_linear, split_product
from veilql.engine.sql.statistics import is_quotient
from veilql.engine.sql.typecheck import TypeChecker
from veilql.errors import QueryError, UnsupportedError

#: ``place_secure._add``: (columns, prefix, role, sql, digits) -> the column's name
Add = Callable[[list[LocalColumn], str, str, str, int], str]


def scaled_coefficients(edge: str, a: int, b: int) -> tuple[int, int, int]:
    """``(c_N, c_D, k)``: ``10^k (N - e D) = c_N N' + c_D D'`` exactly, for ``N' = N 10^a``
    and ``D' = D 10^b`` integers and ``e`` the decimal ``edge``, with ``k`` the fewest
    digits that make both coefficients integers."""
    sign, digits, exponent = decimal.Decimal(edge).normalize().as_tuple()
    assert isinstance(exponent, int)
    m = int("".join(map(str, digits))) * (-1 if sign else 1)
    c = max(-exponent, 0)
    m *= 10 ** max(exponent, 0)  # 1E+3 normalised: the integer 1000
    k = max(a, b + c)
    return 10 ** (k - a), -m * 10 ** (k - b - c), k


def split(expr: exp.Expression, ctx: Context) -> tuple[dict[str | None, exp.Expression],
                                                        str, exp.Expression]:
    """``N``'s parts (None: its constant), ``D``'s party and ``D`` of ``N / D``."""
    while isinstance(expr, exp.Paren):
        expr = expr.this
    assert isinstance(expr, exp.Div)
    divisor = expr.expression
    party = ctx.party_of(next(divisor.find_all(exp.Column)).table)
    return split_linear(expr.this, ctx.party_of), party, divisor


def not_null_parts(expr: exp.Expression, ctx: Context) -> list[tuple[str, exp.Expression]]:
    """``(party, part)`` for each part of ``N`` and for ``D``: the row is in a bucket only
    where every one is not NULL."""
    numerator, party, divisor = split(expr, ctx)
    out = [(p, part) for p, part in numerator.items()
           if p is not None and list(part.find_all(exp.Column))]
    return [*out, (party, divisor)]


def comparison_parts(left: exp.Expression, right: exp.Expression, ctx: Context
                     ) -> list[tuple[str | None, exp.Expression]]:
    """``(party, part)`` of the comparison ``left <op> right`` across parties, each of which
    must be not NULL for the comparison to be: a quotient's parts of ``N`` and ``D``, a
    product's factors, else the parts of ``left - right`` (None: the constant)."""
    if is_quotient(left, ctx.party_of):
        return list(not_null_parts(left, ctx))
    diff = exp.Sub(this=left.copy(), expression=exp.Paren(this=right.copy()))
    if is_linear(diff, ctx.party_of):
        return list(split_linear(diff, ctx.party_of).items())
    return list(split_product(left, ctx.party_of).items())


Terms = tuple[int, int, int, list[tuple[str, exp.Expression, float, float]]]
# The last few quotients' terms, by their SQL, beside the bound query they were read from:
# every bucket test of one histogram has the same ones (64 type checks otherwise), and
# holding the query keeps its id from being reused while it is cached.
_CACHE: dict[tuple[int, str], tuple[object, Terms]] = {}


def _terms(expr: exp.Expression, ctx: Context) -> Terms:
    """``(a, b, s, terms)`` of ``N / D``: the digits of ``N`` and ``D``, the sign of ``D``,
    and ``(party, part, lo, hi)`` (its declared interval) for each part of ``N`` (the
    constant folded into the first) and, last, for ``D``."""
    key = (id(ctx.bound), expr.sql())
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is ctx.bound:
        return hit[1]
    if len(_CACHE) >= 32:
        _CACHE.clear()
    out = _read_terms(expr, ctx)
    _CACHE[key] = (ctx.bound, out)
    return out


def _read_terms(expr: exp.Expression, ctx: Context) -> Terms:
    numerator, party, divisor = split(expr, ctx)
    d_lo, d_hi = _interval(divisor, ctx)
    if d_lo <= 0 <= d_hi:  # the type check refuses it first
        raise UnsupportedError(
            f"{expr.sql(dialect='duckdb')}: the divisor's declared bounds [{d_lo:.6g}, "
            f"{d_hi:.6g}] include 0, so the sign of a bucket test is not known",
            "declare bounds that exclude 0 for the divisor's columns (e.g. [1, 10])")
    sign = 1 if d_lo > 0 else -1
    constant = numerator.pop(None, None)
    a = max(_digits(p, ctx) for p in numerator.values())
    if constant is not None:
        a = max(a, _digits(constant, ctx))
        first = next(iter(numerator))
        numerator[first] = exp.Add(this=numerator[first], expression=constant)
    b = _digits(divisor, ctx)
    terms: list[tuple[str, exp.Expression, float, float]] = [
        (p, part, *_interval(part, ctx)) for p, part in numerator.items() if p is not None]
    return a, b, sign, [*terms, (party, divisor, d_lo, d_hi)]


def _reach(a: int, b: int, terms: list[tuple[str, exp.Expression, float, float]],
           edge: str) -> float:
    """The largest ``|c_N N' + c_D D'|`` of the test at ``edge`` under the declared bounds
    (one unit of rounding more per operand), for ``_terms``' ``a``, ``b`` and terms."""
    c_n, c_d, _ = scaled_coefficients(edge, a, b)
    out = 0
    for i, (_, _, lo, hi) in enumerate(terms):
        last = i == len(terms) - 1
        top = max(abs(lo), abs(hi)) * 10.0 ** (b if last else a)
        out += abs(c_d if last else c_n) * (math.ceil(top) + 1)
    return float(out)


def comparison(node: exp.Expression, ctx: Context, cols: dict[str, list[LocalColumn]],
               add: Add) -> exp.Expression:
    """``N / D <op> e`` (``e`` a number: a bucket edge) as ``sum of c_i * party.o_i <op>
    0`` over operand columns added to ``cols`` by ``add`` (``place_secure._add``);
    refused when it could leave the ring's safe range."""
    text = _edge_text(node)
    a, b, sign, terms = _terms(node.this, ctx)
    c_n, c_d, _ = scaled_coefficients(text, a, b)
    size = _reach(a, b, terms, text)
    if size >= SAFE_RANGE:
        raise QueryError(
            f"the bucket tests of {node.this.sql(dialect='duckdb')} across parties can reach "
            f"{size:.3g} in fixed point under the declared bounds (at the edge {text}, "
            f"numerator in {a} digits, divisor in {b}), beyond the ring's safe range (2^62)",
            "narrow the declared bounds of its columns (the divisor's especially), or "
            "declare fewer decimals")
    total: exp.Expression | None = None
    for i, (p, part, lo, hi) in enumerate(terms):
        last = i == len(terms) - 1
        coef = sign * (c_d if last else c_n)
        ref: exp.Expression = exp.column(
            add(cols[p], "o", "operand", _clamped(part, lo, hi), b if last else a), table=p)
        if coef != 1:
            ref = exp.Mul(this=exp.Literal.number(coef), expression=ref)
        total = ref if total is None else exp.Add(this=total, expression=ref)
    assert total is not None
    return type(node)(this=total, expression=exp.Literal.number(0))


def _clamped(part: exp.Expression, lo: float, hi: float) -> str:
    """``part`` clamped to its declared interval by a CASE (a NULL stays NULL: its atom
    drops the row), so that every row's test is exact and within the ring whatever the
    data: then a row's tests are monotone in the edge, and it is in one bucket at most."""
    sql = part.sql(dialect="duckdb")
    low, high = _num(lo), _num(hi)
    return (f"CASE WHEN ({sql}) < {low} THEN {low} WHEN ({sql}) > {high} THEN {high} "
            f"ELSE ({sql}) END")


def _num(x: float) -> str:
    """A bound as SQL: an integer when it is one, else its shortest decimal."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _edge_text(node: exp.Expression) -> str:
    """The number a quotient is compared with, as written (a bucket edge)."""
    number = node.expression
    while isinstance(number, exp.Paren):
        number = number.this
    inner = number.this if isinstance(number, exp.Neg) else number
    if not isinstance(node, exp.EQ | exp.NEQ | exp.GT | exp.GTE | exp.LT | exp.LTE) or \
            not (isinstance(inner, exp.Literal) and not inner.is_string):
        raise UnsupportedError(
            f"{node.sql(dialect='duckdb')}: a quotient across parties is compared on "
            "shares only with a number written in the query",
            "multiply out: a.x > 2 * b.y rather than a.x / b.y > 2")
    return ("-" if isinstance(number, exp.Neg) else "") + inner.this


def _interval(node: exp.Expression, ctx: Context) -> tuple[float, float]:
    num = TypeChecker(ctx.bound).numeric(node)
    return float(num.lo), float(num.hi)


def _digits(node: exp.Expression, ctx: Context) -> int:
    """Digits at which ``node`` is exact given its columns' declared digits: the most of a
    sum's terms, the sum of a product's factors; ``MAX_DECIMALS`` for anything else (a
    quotient, a function), and never more."""
    while isinstance(node, exp.Paren | exp.Neg):
        node = node.this
    if isinstance(node, exp.Column):
        policy = ctx.bound.table(node.table).policy.column(node.name)
        return min(policy.decimals if policy is not None else 0, MAX_DECIMALS)
    if isinstance(node, exp.Literal) and not node.is_string:
        return ctx.decimals_of(node)
    if isinstance(node, exp.Add | exp.Sub):
        return max(_digits(node.this, ctx), _digits(node.expression, ctx))
    if isinstance(node, exp.Mul):
        return min(_digits(node.this, ctx) + _digits(node.expression, ctx), MAX_DECIMALS)
    if isinstance(node, exp.Case):  # the binder's clamp of a divisor: its branches' digits
        results = [i.args["true"] for i in node.args.get("ifs") or []]
        default = node.args.get("default")
        return max(_digits(r, ctx) for r in [*results, *([default] if default else [])])
    return MAX_DECIMALS


def buckets(expr: exp.Expression, bounds: tuple[float, float], digits: int,
            ctx: Context) -> Buckets:
    """The histogram's buckets for the quotient ``expr``: its bounds (a quotient's are
    rarely round, 1 / 21) widened to ``d`` digits, with the most ``d <= digits`` whose every
    bucket test fits the ring's safe range (``digits`` when none does: ``comparison`` then
    refuses, naming the reach). An edge's digits scale the divisor's coefficient, and over
    wide bounds 64 buckets need few of them.

    >>> _rounded((1 / 21, 20.0), 2)
    (0.04, 20.0)
    """
    from veilql.engine.rewrite.push_local import histogram_buckets

    a, b, _, terms = _terms(expr, ctx)
    for d in range(digits, -1, -1):
        out = histogram_buckets(*_rounded(bounds, d), d)
        if all(_reach(a, b, terms, e) < SAFE_RANGE for e in out.edges()):
            return out
    return histogram_buckets(*_rounded(bounds, digits), digits)


def _rounded(bounds: tuple[float, float], digits: int) -> tuple[float, float]:
    """``bounds`` widened outwards to multiples of ``10^-digits``."""
    lo, hi = (decimal.Decimal(repr(float(b))) for b in bounds)
    unit = decimal.Decimal(1).scaleb(-digits)
    return (float(lo.quantize(unit, rounding=decimal.ROUND_FLOOR)),
            float(hi.quantize(unit, rounding=decimal.ROUND_CEILING)))
