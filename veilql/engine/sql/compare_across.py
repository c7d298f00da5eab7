"""Which comparisons across parties the binder keeps (``functions._check_sides``).

A comparison reads columns of several parties; the rewrite compares it on shares in one of
three shapes, and everything else across parties is refused here, before any plan:

- **two group columns of two parties** compared directly (``c.region = a.segment``,
  ``a.day < b.day``): codes on shares (``rewrite/coded.py``; dates any comparison, declared
  values ``=`` and ``<>``; the rewrite refuses other types, naming them). A group column
  inside arithmetic, or against another party's value column, stays refused;
- **a sum of the parties' parts** (or a product of one factor per party compared with a
  number): fixed-point operands (``rewrite/place_secure._rewrite``);
- **a quotient compared with a number** (``a.x / (b.y + 1) > 2``): ``N / D`` with ``N`` a
  sum of the parties' parts and ``D`` one party's expression whose bounds exclude 0 (the
  type check refuses the bounds, naming them), as ``s (N - e D) >= 0`` on shares
  (``rewrite/cross_quotient.py``). Any other division in a comparison across parties is
  refused with the reason.

>>> op_text(exp.GTE(this=exp.column("a"), expression=exp.column("b")))
'>='
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlglot import exp

from veilql.engine.sql.bound import BoundColumn
from veilql.engine.sql.statistics import is_quotient
from veilql.engine.sql.syntax import short, unparen
from veilql.engine.sql.typecheck import TypeChecker
from veilql.errors import PolicyError, UnsupportedError

_COMPARE = (exp.EQ, exp.NEQ, exp.LT, exp.LTE, exp.GT, exp.GTE)
_OPS = {exp.EQ: "=", exp.NEQ: "<>", exp.LT: "<", exp.LTE: "<=", exp.GT: ">", exp.GTE: ">="}


def op_text(node: exp.Expr) -> str:
    """The operator of a comparison as written in SQL (``BETWEEN``, ``IN``... by name)."""
    return _OPS.get(type(node), node.key.upper())


def coded_pair(node: exp.Expr, checker: TypeChecker) -> bool:
    """Whether the comparison ``node`` of two bare columns is one of codes
    (``rewrite/coded.py``): they are not both numbers, or both are group columns that
    declare values (numbers without bounds: not a fixed-point difference)."""
    while isinstance(node, exp.Paren):
        node = node.this
    if not isinstance(node, _COMPARE):
        return False
    pair = (unparen(node.this), unparen(node.expression))
    if not all(isinstance(c, exp.Column) for c in pair):
        return False
    if any(checker.column(c).kind != "num" for c in pair):  # type: ignore[arg-type]
        return True
    policies = [checker.bound.table(c.table).policy.column(c.name)  # type: ignore[union-attr]
                for c in pair]
    return all(p is not None and p.role == "group" and p.values for p in policies)


def check_groups(node: exp.Expr, sides: Sequence[Sequence[BoundColumn]]) -> None:
    """Refuse a group column compared with another party's column, unless ``node`` is a
    comparison of two bare group columns of two parties (compared as codes)."""
    every = [c for side in sides for c in side]
    if _two_groups(node, sides):
        return
    for side in sides:
        for group in (c for c in side if c.policy.role == "group"):
            others = [c for c in every if c.party != group.party]
            if others:
                other = others[0]
                raise PolicyError(
                    f"group column {group.alias}.{group.column} is compared with "
                    f"{other.alias}.{other.column} of another party ({other.party})",
                    "compare group columns with literals (=, <>, IN, BETWEEN, <, >), or "
                    "directly with another party's group column (a.g = b.g: declared "
                    "values on both sides, or DATEs); only value columns enter arithmetic "
                    "across parties",
                )


def _two_groups(node: exp.Expr, sides: Sequence[Sequence[BoundColumn]]) -> bool:
    if not isinstance(node, _COMPARE) or len(sides) != 2:
        return False
    if not all(isinstance(unparen(o), exp.Column) for o in (node.this, node.expression)):
        return False
    cols = [side[0] for side in sides if len(side) == 1]
    return len(cols) == 2 and all(c.policy.role == "group" for c in cols) and \
        cols[0].party != cols[1].party


def check_division(node: exp.Expr, operands: Sequence[exp.Expr],
                   sides: Sequence[Sequence[BoundColumn]]) -> None:
    """Refuse a division in a comparison across parties unless it is a quotient ``N / D``
    (``D`` one party's expression) compared with a number written in the query."""
    every = [c for side in sides for c in side]
    if len({c.party for c in every}) < 2 or not any(o.find(exp.Div) for o in operands):
        return
    parties = {c.alias.lower(): c.party for c in every}

    def party_of(alias: str) -> str:
        return parties[alias.lower()]

    op = op_text(node)
    if isinstance(node, _COMPARE) and is_quotient(node.this, party_of):
        inner = unparen(node.expression)
        inner = unparen(inner.this) if isinstance(inner, exp.Neg) else inner
        if isinstance(inner, exp.Literal) and not inner.is_string:
            return
        raise UnsupportedError(
            f"a quotient across parties ({short(node.this)}) is compared on shares only "
            f"with a number written in the query, not with {short(node.expression)} ({op})",
            "multiply out instead, e.g. a.x > 2 * b.y rather than a.x / b.y > 2, or write "
            "the number")
    if isinstance(node, _COMPARE) and is_quotient(node.expression, party_of):
        raise UnsupportedError(
            f"division in a comparison across parties ({op}): write the quotient "
            f"{short(node.expression)} on the left of the comparison",
            f"e.g. {short(node.expression)} {_FLIPPED.get(op, op)} "
            f"{short(node.this)}")
    raise UnsupportedError(
        f"division in a comparison across parties ({op}) is supported only as N / D "
        "compared with a number, D one party's expression (a.x / (b.y + 1) > 2)",
        "multiply out instead, e.g. a > b * 2 rather than a / b > 2")


_FLIPPED = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "=": "=", "<>": "<>"}


