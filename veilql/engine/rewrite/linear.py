"""Split arithmetic over several parties' columns into one part per party.

A cross-party comparison ``l.amount > 2 * p.monthly_txn_amount + 100`` becomes
``bank: l.amount`` and ``payments: -(2 * p.monthly_txn_amount) - 100`` compared with 0:
each party computes its own part locally, and only the sum is computed on shares.
Products of two parties' columns are not linear and are refused.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlglot import exp

from veilql.errors import UnsupportedError

Parts = dict[str | None, exp.Expression]  # party -> expression; None: constant part


def split_linear(node: exp.Expression, party_of: Callable[[str], str]) -> Parts:
    """Per-party parts whose sum equals ``node``; ``party_of`` maps a table alias to its party.

    >>> parts = split_linear(exp.condition("a.x - 2 * b.y + 3"), lambda alias: alias.upper())
    >>> {k: v.sql() for k, v in parts.items()}
    {'A': 'a.x', 'B': '-(2 * b.y)', None: '3'}
    """
    if isinstance(node, exp.Paren):
        return split_linear(node.this, party_of)
    owners = {party_of(c.table) for c in node.find_all(exp.Column)}
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
    raise UnsupportedError(
        f"{node.sql()} multiplies or divides columns of different parties "
        f"({', '.join(sorted(owners))}), which is not supported yet",
        "rewrite it with + and - between parties, or compare each party's part separately",
    )


def _neg(e: exp.Expression) -> exp.Expression:
    return exp.Neg(this=exp.Paren(this=e)) if not isinstance(e, exp.Literal | exp.Column) \
        else exp.Neg(this=e)


def _merge(a: Parts, b: Parts) -> Parts:
    out = dict(a)
    for k, v in b.items():
        out[k] = exp.Add(this=out[k], expression=v) if k in out else v
    return out
