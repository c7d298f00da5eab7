"""Split an expression over several parties' columns into one part per party.

Two shapes fit the secure runtime, which multiplies one factor per party and sums:

- **linear** (``split_linear``): a sum of single-party terms. A cross-party comparison
  ``l.amount > 2 * p.monthly_txn_amount + 100`` becomes ``bank: l.amount`` and ``payments:
  -(2 * p.monthly_txn_amount) - 100`` compared with 0; ``SUM(a.x - b.y)`` is
  ``SUM(a.x) - SUM(b.y)`` over the same rows;
- **a product of factors** (``split_product``): ``SUM(p.visits * s.fills)`` is the sum over
  joined rows of ``visits`` (at p) times ``fills`` (at s); ``CASE WHEN a.c THEN b.x END``
  (what ``SUM(b.x) FILTER (WHERE a.c)`` means) is ``[a.c] * b.x``, with the indicator
  ``CASE WHEN a.c THEN 1 END`` computed at a's party. At most one factor per party (a
  party's factors multiply locally). A division by one party's expression ``D`` is the
  product with its reciprocal: ``SUM(a.x / b.d)`` is ``a.x`` (at a) times ``1 / (b.d)``
  (at b, computed in its own engine; ``b.d``'s bounds exclude 0), its digits chosen from
  public bounds (``fixedpoint.product_decimals``).

Anything else across parties (a product of sums, a division by several parties' columns,
a function of two parties' columns) is refused with the reason.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlglot import exp

from veilql.errors import UnsupportedError

Parts = dict[str | None, exp.Expression]  # party -> expression; None: constant part


def _owners(node: exp.Expr, party_of: Callable[[str], str]) -> set[str]:
    return {party_of(c.table) for c in node.find_all(exp.Column)}


def split_linear(node: exp.Expression, party_of: Callable[[str], str]) -> Parts:
    """Per-party parts whose sum equals ``node``; ``party_of`` maps a table alias to its party.

    >>> parts = split_linear(exp.condition("a.x - 2 * b.y + 3"), lambda alias: alias.upper())
    >>> {k: v.sql() for k, v in parts.items()}
    {'A': 'a.x', 'B': '-(2 * b.y)', None: '3'}
    """
    if isinstance(node, exp.Paren):
        return split_linear(node.this, party_of)
    owners = _owners(node, party_of)
    if not owners:
        return {None: node.copy()}
    if len(owners) == 1:
        return {owners.pop(): node.copy()}
    if isinstance(node, exp.Add):
        return _merge(split_linear(node.this, party_of), split_linear(node.expression, party_of))
    if isinstance(node, exp.Sub):
        right = {k: _neg(v) for k, v in split_linear(node.expression, party_of).items()}
        return _merge(split_linear(node.this, party_of), right)
    if isinstance(node, exp.Neg):
        return {k: _neg(v) for k, v in split_linear(node.this, party_of).items()}
    if isinstance(node, exp.Mul):
        left, right = node.this, node.expression
        if not list(left.find_all(exp.Column)):
            return {k: exp.Mul(this=left.copy(), expression=v) for k, v in
                    split_linear(right, party_of).items()}
        if not list(right.find_all(exp.Column)):
            return {k: exp.Mul(this=v, expression=right.copy()) for k, v in
                    split_linear(left, party_of).items()}
    raise UnsupportedError(_across(node, owners), _HINT)


_HINT = ("rewrite it with + and - between parties, or as a product of one factor per party "
         "(SUM(a.x * b.y), CASE WHEN a.c THEN b.x END), or compare each party's part "
         "separately")


def _across(node: exp.Expr, owners: set[str]) -> str:
    what = ("multiplies or divides columns of different parties"
            if isinstance(node, exp.Mul | exp.Div) else
            "adds columns of different parties inside a product"
            if isinstance(node, exp.Add | exp.Sub) else
            f"combines columns of different parties in {_construct(node)}")
    return (f"{node.sql()} {what} ({', '.join(sorted(owners))}), which is not supported "
            "yet")


def _construct(node: exp.Expr) -> str:
    if isinstance(node, exp.Case | exp.If):
        return "a CASE"
    if isinstance(node, exp.Func):
        return f"function {node.sql_name()}"
    return node.key.upper()


def split_product(node: exp.Expression, party_of: Callable[[str], str]) -> Parts:
    """Per-party factors whose product equals ``node`` (None: a constant factor).

    >>> parts = split_product(exp.condition("CASE WHEN a.c > 1 THEN 2 * b.y END"),
    ...                       lambda alias: alias.upper())
    >>> {k: v.sql() for k, v in parts.items()}
    {'A': 'CASE WHEN a.c > 1 THEN 1 END', 'B': '2 * b.y'}
    """
    if isinstance(node, exp.Paren):
        return split_product(node.this, party_of)
    owners = _owners(node, party_of)
    if not owners:
        return {None: node.copy()}
    if len(owners) == 1:
        return {owners.pop(): node.copy()}
    if isinstance(node, exp.Mul):
        return _times(split_product(node.this, party_of),
                      split_product(node.expression, party_of))
    if isinstance(node, exp.Neg):
        return _times({None: exp.Literal.number(-1)}, split_product(node.this, party_of))
    if isinstance(node, exp.Div):
        return _quotient(node, party_of)
    if isinstance(node, exp.Case | exp.If):
        from veilql.engine.sql.functions import branches

        conds, results = branches(node)
        value, default = results[0], results[-1]
        if len(conds) == 1 and _zero_or_null(default):
            factors = _indicators(conds[0], party_of, null=isinstance(default, exp.Null)
                                  or _is_null(default))
            return _times(factors, split_product(value, party_of))
    raise UnsupportedError(_across(node, owners), _HINT)


def _quotient(node: exp.Div, party_of: Callable[[str], str]) -> Parts:
    """``x / D`` across parties as the product ``x * (1 / D)``: the party that owns ``D``
    computes the reciprocal in its own engine, like any of its factors (``x / D`` itself
    when it also owns a factor of ``x``). The binder has refused a ``D`` whose declared
    bounds hold 0 (``typecheck_exprs._division``); its digits come from the public
    bounds of every factor (``fixedpoint.product_decimals``).
    """
    divisor = node.expression
    owners = _owners(divisor, party_of)
    if len(owners) > 1:
        raise UnsupportedError(
            f"{node.sql()} divides by {divisor.sql()}, an expression of several parties' "
            f"columns ({', '.join(sorted(owners))}), which is not supported",
            "divide by one party's expression (its reciprocal is computed by that party), "
            "or aggregate numerator and divisor separately and divide the released values")
    try:
        numerator = split_product(node.this, party_of)
    except UnsupportedError as error:
        raise UnsupportedError(
            f"{node.sql()}: its numerator {node.this.sql()} is not one factor per party "
            f"({error.message})",
            "divide each party's part separately: SUM(a.x / c.d) + SUM(b.y / c.d) rather "
            "than SUM((a.x + b.y) / c.d)") from None
    if not owners:  # a constant divisor of a product across parties
        return _times(numerator, {None: _divided(exp.Literal.number(1), divisor, node)})
    party = owners.pop()
    out = dict(numerator)
    if party in out:  # one division in the party's engine, not a product with 1 / D
        out[party] = _divided(out[party], divisor, node)
    else:
        out[party] = _divided(exp.Literal.number(1), divisor, node)
    return out


def _divided(this: exp.Expression, divisor: exp.Expression, like: exp.Div) -> exp.Div:
    """``this / (divisor)``, a division of the same kind as ``like`` (DuckDB's ``/``)."""
    return exp.Div(this=_paren(this.copy()), expression=_paren(divisor.copy()),
                   typed=like.args.get("typed"), safe=like.args.get("safe"))


def _zero_or_null(node: exp.Expr) -> bool:
    while isinstance(node, exp.Paren):
        node = node.this
    return _is_null(node) or (isinstance(node, exp.Literal) and not node.is_string
                              and float(node.this) == 0)


def _is_null(node: exp.Expr) -> bool:
    while isinstance(node, exp.Paren):
        node = node.this
    return isinstance(node, exp.Null)


def _indicators(cond: exp.Expression, party_of: Callable[[str], str], *, null: bool) -> Parts:
    """One 0/1 indicator per party for a condition that is an AND of single-party parts.

    With ``null``, the indicator is NULL (not 0) where the condition fails, so that the
    product is NULL there, as the CASE without ELSE is (AVG's count of non-NULL rows).
    """
    from veilql.engine.sql.checks import split_and

    per_party: dict[str, list[exp.Expression]] = {}
    for term in split_and(cond):
        owners = _owners(term, party_of)
        if len(owners) != 1:
            raise UnsupportedError(
                f"the condition {term.sql()} of a CASE (or FILTER) across parties "
                f"({', '.join(sorted(owners)) or 'no column'}) is not supported",
                "each condition of a CASE or FILTER across parties must read one party's "
                "columns: move comparisons across parties to WHERE")
        per_party.setdefault(owners.pop(), []).append(term)
    out: Parts = {}
    for party, terms in per_party.items():
        both = terms[0].copy()
        for t in terms[1:]:
            both = exp.And(this=both, expression=t.copy())
        ifs = [exp.If(this=both, true=exp.Literal.number(1))]
        out[party] = exp.Case(ifs=ifs) if null else exp.Case(
            ifs=ifs, default=exp.Literal.number(0))
    return out


def _times(a: Parts, b: Parts) -> Parts:
    out = dict(a)
    for k, v in b.items():
        out[k] = exp.Mul(this=_paren(out[k]), expression=_paren(v)) if k in out else v
    return out


def _paren(e: exp.Expression) -> exp.Expression:
    return e if isinstance(e, exp.Column | exp.Literal | exp.Paren | exp.Case) else exp.Paren(
        this=e)


def _neg(e: exp.Expression) -> exp.Expression:
    return exp.Neg(this=exp.Paren(this=e)) if not isinstance(e, exp.Literal | exp.Column) \
        else exp.Neg(this=e)


def _merge(a: Parts, b: Parts) -> Parts:
    out = dict(a)
    for k, v in b.items():
        out[k] = exp.Add(this=out[k], expression=v) if k in out else v
    return out


def is_linear(node: exp.Expression, party_of: Callable[[str], str]) -> bool:
    """True when ``split_linear`` takes ``node`` (a single party's expression always is)."""
    try:
        split_linear(node, party_of)
    except UnsupportedError:
        return False
    return True
