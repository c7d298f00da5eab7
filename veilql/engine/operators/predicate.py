"""Evaluate a cross-party predicate on shares, per combination of the parties' slots.

The plan's predicate refers to local columns as ``party.column``: 0/1 ``atom`` columns
(``party.a0 = 1``) and fixed-point ``operand`` columns whose sum is compared with 0.
Comparisons run as secure LT/EQ and come back as arithmetic 0/1 shares; AND, OR and NOT
are then products and sums (a OR b = a + b - ab).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlglot import exp

from veilql.engine.mpc.runtime import Runtime
from veilql.engine.mpc.shares import AShare
from veilql.errors import ProtocolError

Lookup = Callable[[str, str], AShare]  # (party, column) -> shares expanded to all slot combos


def evaluate(rt: Runtime, node: exp.Expression, column: Lookup) -> AShare:
    """0/1 arithmetic shares of ``node`` for every row and slot combination."""
    if isinstance(node, exp.Paren):
        return evaluate(rt, node.this, column)
    if isinstance(node, exp.And):
        left, right = evaluate(rt, node.this, column), evaluate(rt, node.expression, column)
        return rt.mul(left, right)
    if isinstance(node, exp.Or):
        left, right = evaluate(rt, node.this, column), evaluate(rt, node.expression, column)
        return left + right - rt.mul(left, right)
    if isinstance(node, exp.Not):
        return -evaluate(rt, node.this, column) + 1
    if isinstance(node, exp.EQ) and _is_atom(node):
        col = node.this
        return column(col.table, col.name)
    if isinstance(node, exp.EQ | exp.NEQ | exp.GT | exp.GTE | exp.LT | exp.LTE):
        total = _sum(node.this, column)
        bits = {
            exp.EQ: rt.eq, exp.NEQ: rt.eq, exp.GT: rt.gt, exp.GTE: rt.ge,
            exp.LT: rt.lt, exp.LTE: rt.le,
        }[type(node)](total, 0)
        if isinstance(node, exp.NEQ):
            bits = bits ^ 1
        return rt.b2a_bit(bits)
    raise ProtocolError(f"cannot evaluate {node.sql()} on shares")


def _is_atom(node: exp.EQ) -> bool:
    return (isinstance(node.this, exp.Column) and node.this.name.startswith("a")
            and isinstance(node.expression, exp.Literal))


def _sum(node: exp.Expression, column: Lookup) -> AShare:
    if isinstance(node, exp.Add):
        return _sum(node.this, column) + _sum(node.expression, column)
    if isinstance(node, exp.Column):
        return column(node.table, node.name)
    raise ProtocolError(f"unexpected operand {node.sql()} in a secure comparison")
