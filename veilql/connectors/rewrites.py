"""Rewrites that give a party's engine DuckDB's semantics, shared by the connectors.

Each connector transpiles the party's local SQL (DuckDB dialect) with sqlglot and then
rewrites what sqlglot leaves with another meaning in the target engine: integer division,
one-argument LOG, and so on. The engine-specific rewrites stay in each connector module.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlglot
from sqlglot import exp


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (its type name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def template(sql: str, dialect: str, *, paren: bool = False) -> Callable[..., exp.Expression]:
    """A function filling ``__a`` and ``__b`` of the ``dialect`` expression ``sql`` (parsed
    once) with expressions; ``paren`` wraps the result in parentheses.

    >>> template("__a + __b", "mysql")(exp.column("x"), exp.Literal.number(1)).sql("mysql")
    '(x) + (1)'
    """
    select = sqlglot.parse_one(f"SELECT {sql}", read=dialect)  # TRUNCATE(...) alone is DDL
    assert isinstance(select, exp.Select)
    tree = select.expressions[0]

    def fill(a: exp.Expression, b: exp.Expression | None = None) -> exp.Expression:
        args = {"__a": a, "__b": b}

        def put(n: exp.Expression) -> exp.Expression:
            if isinstance(n, exp.Column) and n.name in args and not n.table:
                value = args[n.name]
                assert value is not None
                return exp.Paren(this=value.copy())
            return n
        out = tree.transform(put)
        return exp.Paren(this=out) if paren else out
    return fill


def bottom_up(tree: exp.Expression,
              rewrite: Callable[[exp.Expression], exp.Expression | None]) -> exp.Expression:
    """Apply ``rewrite`` to every node of ``tree``, children before parents, so a rewritten
    node's arguments are already rewritten; None keeps the node. New nodes are not revisited.

    >>> t = sqlglot.parse_one("SELECT LOG(LOG(x))")
    >>> bottom_up(t, log_base_ten).sql("mysql")
    'SELECT LOG(10, LOG(10, x))'
    """
    nodes = list(tree.walk())
    for node in reversed(nodes):
        new = rewrite(node)
        if new is not None and new is not node:
            if node is tree:
                tree = new
            else:
                node.replace(new)
    return tree


def float_division(node: exp.Expression) -> exp.Expression | None:
    """``a / b`` divides in DOUBLE, as DuckDB's ``/`` does for integers and DECIMALs.

    >>> float_division(sqlglot.parse_one("a / 2")).sql("mysql")
    'CAST(a AS DOUBLE) / 2'
    """
    if isinstance(node, exp.Div) and not node.args.get("typed"):
        double = exp.DataType.build("DOUBLE")
        return exp.Div(this=exp.Cast(this=node.this.copy(), to=double),
                       expression=node.expression.copy())
    return None


def log_base_ten(node: exp.Expression) -> exp.Expression | None:
    """DuckDB's one-argument ``LOG(x)`` is base 10 (MySQL's and Spark's is ``LN``)."""
    if isinstance(node, exp.Log) and node.args.get("expression") is None:
        return exp.Log(this=exp.Literal.number(10), expression=node.this.copy())
    return None
