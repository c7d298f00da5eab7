"""Evaluate a cross-party predicate on shares, per combination of the parties' slots.

The plan's predicate refers to local columns as ``party.column``: 0/1 ``atom`` columns
(``party.a0 = 1``) and fixed-point ``operand`` columns whose sum is compared with 0.
Comparisons run as secure LT/EQ and come back as arithmetic 0/1 shares; AND, OR and NOT
are then products and sums (a OR b = a + b - ab).

An aggregate may have its own predicate (``SUM(a.x > b.y)``, ``FILTER (WHERE a.x > b.y)``;
``AggregateSpec.cross``): ``per_chain_predicate`` evaluates each distinct one once and
lays them out along the aggregates' axis, so the secure sum multiplies every chain by its
own 0/1 column. Leakage: none beyond the WHERE's (every comparison runs on shares over all
rows and slots, whatever the data; the shapes follow the plan and the units' count).
Cost: one secure comparison per distinct predicate and slot combination (a comparison and
its complement, ``x < 0`` and ``x >= 0``, are one), and one product per AND/OR (the
not-NULL atoms of each comparison included).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sqlglot import exp

from veilql.engine.mpc.runtime import Runtime
from veilql.engine.mpc.shares import AShare
from veilql.errors import ProtocolError

Lookup = Callable[[str, str], AShare]  # (party, column) -> shares expanded to all slot combos


def evaluate(rt: Runtime, node: exp.Expression, column: Lookup,
             memo: dict[str, AShare] | None = None) -> AShare:
    """0/1 arithmetic shares of ``node`` for every row and slot combination; ``memo``
    keeps each comparison's bits by its text, so that predicates sharing one (``SUM(c)``
    beside ``AVG(c)``) compare once."""
    if isinstance(node, exp.Paren):
        return evaluate(rt, node.this, column, memo)
    if isinstance(node, exp.And):
        left = evaluate(rt, node.this, column, memo)
        right = evaluate(rt, node.expression, column, memo)
        return rt.mul(left, right)
    if isinstance(node, exp.Or):
        left = evaluate(rt, node.this, column, memo)
        right = evaluate(rt, node.expression, column, memo)
        return left + right - rt.mul(left, right)
    if isinstance(node, exp.Not):
        return -evaluate(rt, node.this, column, memo) + 1
    if isinstance(node, exp.EQ) and _is_atom(node):
        col = node.this
        return column(col.table, col.name)
    if isinstance(node, exp.EQ | exp.NEQ | exp.GT | exp.GTE | exp.LT | exp.LTE):
        key = node.sql()
        if memo is not None and key in memo:
            return memo[key]
        if memo is not None:  # x < 0 is NOT x >= 0: one comparison for both (the edge
            # tests of a histogram across parties, rewrite/cross_histogram.py)
            other = _COMPLEMENT[type(node)](this=node.this.copy(),
                                            expression=node.expression.copy()).sql()
            if other in memo:
                memo[key] = -memo[other] + 1
                return memo[key]
        total = _sum(rt, node.this, column, memo)
        bits = {
            exp.EQ: rt.eq, exp.NEQ: rt.eq, exp.GT: rt.gt, exp.GTE: rt.ge,
            exp.LT: rt.lt, exp.LTE: rt.le,
        }[type(node)](total, _public(node.expression))
        if isinstance(node, exp.NEQ):
            bits = bits ^ 1
        out = rt.b2a_bit(bits)
        if memo is not None:
            memo[key] = out
        return out
    raise ProtocolError(f"cannot evaluate {node.sql()} on shares")


_COMPLEMENT: dict[type[exp.Expression], type[exp.Expression]] = {
    exp.EQ: exp.NEQ, exp.NEQ: exp.EQ, exp.GT: exp.LTE, exp.LTE: exp.GT, exp.GTE: exp.LT,
    exp.LT: exp.GTE}


def _is_atom(node: exp.EQ) -> bool:
    return (isinstance(node.this, exp.Column) and node.this.name.startswith("a")
            and isinstance(node.expression, exp.Literal))


def _public(node: exp.Expression) -> int:
    """The public integer a comparison's operands are compared with (0, or a product's
    scaled bucket edge: ``place_secure._product_comparison``)."""
    if isinstance(node, exp.Neg):
        return -_public(node.this)
    if isinstance(node, exp.Literal) and not node.is_string:
        return int(node.this)
    raise ProtocolError(f"unexpected bound {node.sql()} in a secure comparison")


def _sum(rt: Runtime, node: exp.Expression, column: Lookup,
         memo: dict[str, AShare] | None) -> AShare:
    if isinstance(node, exp.Add):
        return _sum(rt, node.this, column, memo) + _sum(rt, node.expression, column, memo)
    if isinstance(node, exp.Mul) and not list(node.this.find_all(exp.Column)):
        # a public integer times a share: local (a quotient's bucket test, cross_quotient.py)
        return _sum(rt, node.expression, column, memo) * _public(node.this)
    if isinstance(node, exp.Mul):  # one factor per party, multiplied once for every edge
        key = "*" + node.sql()
        if memo is not None and key in memo:
            return memo[key]
        out = rt.mul(_sum(rt, node.this, column, memo), _sum(rt, node.expression, column,
                                                             memo))
        if memo is not None:
            memo[key] = out
        return out
    if isinstance(node, exp.Column):
        return column(node.table, node.name)
    raise ProtocolError(f"unexpected operand {node.sql()} in a secure comparison")


def per_chain_predicate(rt: Runtime, own: list[exp.Expression | None],
                        where: AShare | None, column: Lookup,
                        shape: tuple[int, ...]) -> AShare:
    """0/1 shares of shape (units, slots..., chains): per chain, its own predicate (each
    distinct one evaluated once) times the WHERE's, or the WHERE's (1 without one)."""
    done: dict[str, AShare] = {}
    memo: dict[str, AShare] = {}
    per: list[AShare] = []
    for cond in own:
        if cond is None:
            value = where if where is not None else AShare(
                rt.me, np.zeros(shape, dtype=np.uint64), np.zeros(shape, dtype=np.uint64)) + 1
        else:
            key = cond.sql()
            if key not in done:
                test = evaluate(rt, cond, column, memo)
                done[key] = test if where is None else rt.mul(test, where)
            value = done[key]
        per.append(value.reshape(*shape, 1))
    return AShare.concat(per, axis=len(shape))
