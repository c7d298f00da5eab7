"""Scalar subqueries over released aggregates: ``SELECT SUM(x) / (SELECT COUNT(*) FROM ...)``.

A scalar subquery whose FROM, JOINs and WHERE are the outer query's own (written the same
way) aggregates the same rows, so its aggregate is one more aggregate of the same plan: the
subquery is replaced by its aggregate expression, which the binder then releases (hidden when
not selected) and combines after release, as any expression over aggregates. In a query with
GROUP BY the subquery would be over all rows rather than a group's, and a subquery over other
rows (another FROM or WHERE) would be a release of its own: both are refused, naming the
construct (run the subquery as its own query and combine the released values).

>>> import sqlglot
>>> q = sqlglot.parse_one("SELECT SUM(amount) / (SELECT COUNT(*) FROM bank.loans) AS r "
...                       "FROM bank.loans", read="duckdb")
>>> inline_scalar_subqueries(q).sql(dialect="duckdb")
'SELECT SUM(amount) / (COUNT(*)) AS r FROM bank.loans'
"""

from __future__ import annotations

from sqlglot import exp

from veilql.errors import UnsupportedError

_HINT = ("run the subquery as its own query and combine the released values, or write its "
         "aggregate in the outer query (a scalar subquery is supported when it reads the outer "
         "query's own FROM and WHERE, without GROUP BY)")


def _scalar(node: exp.Expr) -> bool:
    return isinstance(node, exp.Subquery) and not isinstance(node.parent, exp.In | exp.Exists)


def _rows(select: exp.Select) -> str:
    """The outer rows a SELECT reads, as text: its FROM, JOINs and WHERE."""
    parts = [select.args.get("from_"), *(select.args.get("joins") or []), select.args.get("where")]
    return " ".join(p.sql(dialect="duckdb") for p in parts if p is not None)


def inline_scalar_subqueries(select: exp.Select) -> exp.Select:
    """``select`` with each scalar subquery of SELECT, HAVING and ORDER BY replaced by its
    aggregate (a copy when there is one); refuse the others (see the module docstring)."""
    places = [*select.expressions, select.args.get("having"), select.args.get("order")]
    found = [n for p in places if p is not None for n in p.find_all(exp.Subquery) if _scalar(n)]
    if not found:
        return select
    select = select.copy()
    places = [*select.expressions, select.args.get("having"), select.args.get("order")]
    rows = _rows(select)
    for node in [n for p in places if p is not None for n in p.find_all(exp.Subquery)
                 if _scalar(n)]:
        body = node.this
        text = node.sql(dialect="duckdb")
        short = text if len(text) <= 60 else text[:57] + "..."
        if not isinstance(body, exp.Select) or len(body.expressions) != 1 or \
                body.expressions[0].find(exp.AggFunc) is None:
            raise UnsupportedError(f"the scalar subquery {short} must select one aggregate",
                                   _HINT)
        for arg, name in (("group", "GROUP BY"), ("having", "HAVING"), ("order", "ORDER BY"),
                          ("limit", "LIMIT"), ("distinct", "DISTINCT"), ("with_", "WITH")):
            if body.args.get(arg):
                raise UnsupportedError(f"{name} inside the scalar subquery {short} is not "
                                       "supported", _HINT)
        if select.args.get("group"):
            raise UnsupportedError(
                f"the scalar subquery {short} in a query with GROUP BY is not supported: it "
                "aggregates all rows, not a group's, and would be a release of its own", _HINT)
        if _rows(body) != rows:
            raise UnsupportedError(
                f"the scalar subquery {short} reads other rows than the query (its FROM, JOIN "
                "or WHERE differ) and would be a release of its own", _HINT)
        item = body.expressions[0]
        value = item.this if isinstance(item, exp.Alias) else item
        node.replace(exp.Paren(this=value.copy()))
    return select
