"""Small helpers on sqlglot trees shared by the SQL modules."""

from __future__ import annotations

from sqlglot import exp


def unparen(node: exp.Expr) -> exp.Expr:
    """``node`` without the parentheses around it."""
    while isinstance(node, exp.Paren):
        node = node.this
    return node


def short(node: exp.Expr) -> str:
    """The SQL of ``node`` for a message, cut to a readable length."""
    text = node.sql(dialect="duckdb")
    return text if len(text) <= 60 else text[:57] + "..."
