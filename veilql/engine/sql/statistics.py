"""Which variance or quantile an aggregate call asks for: VAR/STDDEV (from moments),
MIN, MAX, MEDIAN and the quantile functions (from a histogram), with the fraction written
in the query; ``aggregates.py`` binds them.

>>> import sqlglot
>>> statistic(sqlglot.parse_one("QUANTILE_CONT(x, 0.9)", read="duckdb"))[:3]
('quantile_cont', 'cont', 0.9)
"""

from __future__ import annotations

from collections.abc import Callable

from sqlglot import exp

from veilql.engine.sql import checks, parts
from veilql.errors import UnsupportedError

#: VAR_SAMP (VARIANCE), VAR_POP, STDDEV (STDDEV_SAMP), STDDEV_POP as computed from moments.
_STATS: dict[type[exp.Expr], str] = {
    exp.Variance: "var_samp", exp.VariancePop: "var_pop", exp.Stddev: "stddev_samp",
    exp.StddevSamp: "stddev_samp", exp.StddevPop: "stddev_pop"}


def _fraction(node: exp.Expr | None, func: str) -> float:
    """The fraction of a quantile: a number in [0, 1] written in the query."""
    inner = node
    while isinstance(inner, exp.Paren):
        inner = inner.this
    if isinstance(inner, exp.Array):
        raise UnsupportedError(
            f"{func} with a list of fractions is not supported",
            f"write one {func}(x, q) per fraction, e.g. {func}(x, 0.25), {func}(x, 0.75)")
    if not (isinstance(inner, exp.Literal) and not inner.is_string):
        raise UnsupportedError(f"{func}: the fraction must be a number written in the query",
                               f"write e.g. {func}(x, 0.5)")
    q = float(inner.this)
    if not 0.0 <= q <= 1.0:
        raise UnsupportedError(f"{func}: the fraction {inner.this} is not between 0 and 1",
                               "write a fraction in [0, 1], e.g. 0.9 for the 90th percentile")
    return q


def statistic(node: exp.Expr) -> tuple[str, str, float | None, exp.Expr] | None:
    """``(function name, stat, q, argument)`` of a variance or quantile aggregate, else None.

    ``stat``: ``var_samp``, ``var_pop``, ``stddev_samp``, ``stddev_pop``, or ``cont``,
    ``disc``, ``min``, ``max`` for quantiles at fraction ``q``.
    """
    if checks.is_var(node):
        if len(node.expressions) != 1:
            raise UnsupportedError("VAR takes one argument", "write VAR(x)")
        return "var", "var_samp", None, node.expressions[0]
    for cls, stat in _STATS.items():
        if type(node) is cls:
            return node.sql_name().lower(), stat, None, node.this
    if isinstance(node, exp.Min | exp.Max):
        if node.expressions:
            raise UnsupportedError(f"{node.sql_name()} takes one argument",
                                   f"write {node.sql_name()}(x); LEAST/GREATEST compare values "
                                   "within a row")
        word = "min" if isinstance(node, exp.Min) else "max"
        return word, word, 0.0 if word == "min" else 1.0, node.this
    if isinstance(node, exp.Median):
        return "median", "cont", 0.5, node.this
    if isinstance(node, exp.PercentileCont | exp.PercentileDisc):
        func = "quantile_cont" if isinstance(node, exp.PercentileCont) else "quantile_disc"
        stat = "cont" if isinstance(node, exp.PercentileCont) else "disc"
        return func, stat, _fraction(node.expression, func.upper()), node.this
    if isinstance(node, exp.ApproxQuantile | exp.Quantile):
        func = "approx_quantile" if isinstance(node, exp.ApproxQuantile) else "quantile"
        return func, "disc", _fraction(node.args.get("quantile"), func.upper()), node.this
    if isinstance(node, exp.WithinGroup):
        inner = node.this
        func = "percentile_cont" if isinstance(inner, exp.PercentileCont) else "percentile_disc"
        order = node.expression
        items = order.expressions if isinstance(order, exp.Order) else []
        if len(items) != 1 or not isinstance(items[0], exp.Ordered):
            raise UnsupportedError(f"{func.upper()} ... WITHIN GROUP must order by one "
                                   "expression", f"write {func.upper()}(0.5) WITHIN GROUP "
                                   "(ORDER BY x)")
        q = _fraction(inner.this, func.upper())
        if items[0].args.get("desc"):
            q = 1.0 - q
        stat = "cont" if isinstance(inner, exp.PercentileCont) else "disc"
        return func, stat, q, items[0].this
    return None


def check_across_parties(word: str, expr: exp.Expression, q: float | None,
                         owners: set[str], party_of: Callable[[str], str]) -> None:
    """A statistic of an expression reading several parties' columns (``expr`` qualified):
    MIN, MAX or a quantile of a linear one (``a.x + b.y``, ``a.x - 2 * b.y + 3``), of a
    product of one factor per party (``a.x * b.y``) or of a quotient ``N / D`` (``N``
    linear, ``D`` one party's expression: ``is_quotient``) is read off a histogram whose
    bucket tests are comparisons on shares (``rewrite/cross_histogram.py``); a variance
    (its squares would multiply the parties' columns), a sum of products or a function of
    several parties' columns is refused, naming why."""
    text = f"{word}({expr.sql(dialect='duckdb')})"
    who = ", ".join(sorted(owners))
    if q is None:
        raise UnsupportedError(
            f"{text} reads columns of several parties ({who}): its squares would multiply "
            "columns of different parties, which is not supported",
            f"take {word} of one party's expression; conditions on other parties go in "
            "WHERE or FILTER (WHERE ...)")
    if not parts.is_linear(expr, party_of) and not is_product(expr, party_of) and \
            not is_quotient(expr, party_of):
        raise UnsupportedError(
            f"{text} reads columns of several parties ({who}) in a sum of products or "
            "quotients, a quotient by several parties' columns or a function: its "
            "histogram's buckets compare only a sum of the parties' parts, a product of "
            "one factor per party, or such a sum divided by one party's expression, on "
            "shares",
            f"take {word} of a.x + b.y, a.x - 2 * b.y, a.x * b.y, a.x / (b.y + 1), or of "
            "one party's expression")


def is_product(expr: exp.Expression, party_of: Callable[[str], str]) -> bool:
    """Whether ``expr`` is a product of one factor per party (``a.x * b.y``, ``-2 * a.x *
    b.y``), without a quotient or a CASE (whose factors would be indicators or
    reciprocals: not compared on shares)."""
    if any(isinstance(n, exp.Div | exp.Case | exp.If) for n in expr.walk()):
        return False
    try:
        parts.split_product(expr, party_of)
    except UnsupportedError:
        return False
    return True


def is_quotient(expr: exp.Expression, party_of: Callable[[str], str]) -> bool:
    """Whether ``expr`` is ``N / D`` with ``N`` a sum of the parties' parts and ``D`` one
    party's expression (``a.x / (b.y * b.y + 1)``, ``(a.x + b.z) / b.y``): its bucket test
    ``N / D >= e`` is the linear ``N - e D >= 0`` when ``D > 0`` (``<=`` when ``D < 0``;
    ``rewrite/cross_quotient.py``). ``D``'s declared bounds must exclude 0, which the type
    check refuses first, naming them."""
    while isinstance(expr, exp.Paren):
        expr = expr.this
    if not isinstance(expr, exp.Div):
        return False
    owners = {party_of(c.table) for c in expr.expression.find_all(exp.Column)}
    if len(owners) != 1 or not list(expr.this.find_all(exp.Column)):
        return False
    return parts.is_linear(expr.this, party_of)
