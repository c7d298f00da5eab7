"""Policy and construct rules, enforced before any data is touched (fail closed).

``bind`` calls these while it resolves names. Each refusal is an ``UnsupportedError`` (a
construct outside the SQL VeilQL accepts, see CONTRACT.md "SQL") or a ``PolicyError`` (a use of
a column its owner's policy forbids), with a message naming the construct and a hint.

Column roles (policies/<party>.toml):

- ``key``: only in a join condition ``x.unit = y.unit`` and in ``COUNT(DISTINCT unit)``.
- ``group``: GROUP BY, bare in SELECT when grouped, and conditions (comparisons with
  literals or with columns of the same party, LIKE, IS NULL, through text and date
  functions); never as a value (aggregated, or under arithmetic).
- ``value``: WHERE (comparisons and arithmetic, also across parties), SUM/AVG, whose
  argument's clamping bounds follow by interval arithmetic from the declared bounds, and
  GROUP BY expressions whose domain can be derived publicly.

The row-level functions and their role rules are in ``veilql.engine.sql.functions``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from sqlglot import exp

from veilql.engine.sql import functions
from veilql.engine.sql.bound import BoundColumn
from veilql.engine.sql.functions import ROW_EXPRESSIONS, refuse_group_as_value, refuse_key
from veilql.engine.sql.syntax import unparen
from veilql.errors import PolicyError, UnsupportedError

Resolver = Callable[[exp.Column], BoundColumn]

SUPPORTED_SQL = (
    "VeilQL accepts SELECT [groups,] COUNT(*), COUNT(x), COUNT(DISTINCT unit), SUM(expr), "
    "AVG(expr), VAR/STDDEV, MEDIAN, quantiles, MIN, MAX [FILTER (WHERE ...)] and expressions "
    "over them FROM party.table [JOIN "
    "party.table ON x.unit = y.unit] [WHERE ...] [GROUP BY ...] [HAVING ...] [ORDER BY ...] "
    "[LIMIT n], with the functions of docs/reference.md"
)

#: Variances and standard deviations, computed from noisy moments (sum of squares, sum, count).
STATISTICS: tuple[type[exp.Expr], ...] = (
    exp.Variance, exp.VariancePop, exp.Stddev, exp.StddevSamp, exp.StddevPop)
#: Quantiles, MIN and MAX, read off a noisy histogram over the declared bounds.
QUANTILES: tuple[type[exp.Expr], ...] = (
    exp.Median, exp.PercentileCont, exp.PercentileDisc, exp.ApproxQuantile, exp.Quantile,
    exp.Min, exp.Max)
#: Every aggregate function VeilQL releases.
AGGREGATES: tuple[type[exp.Expr], ...] = (exp.Count, exp.Sum, exp.Avg, *STATISTICS, *QUANTILES)

# Nodes allowed anywhere in the statement tree (fail closed: everything else is refused).
_ALLOWED: tuple[type[exp.Expr], ...] = (
    exp.From, exp.Join, exp.Table, exp.TableAlias, exp.Identifier, exp.Column, exp.Literal,
    exp.Boolean, exp.Paren, exp.And, exp.Or, exp.Not, exp.EQ, exp.NEQ, exp.LT, exp.LTE,
    exp.GT, exp.GTE, exp.In, exp.Between, exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Neg,
    exp.Count, exp.Sum, exp.Avg, exp.Alias, exp.Where, exp.Group, exp.Having, exp.Order,
    exp.Ordered, exp.Limit, exp.Filter, exp.WithinGroup, *AGGREGATES, *ROW_EXPRESSIONS,
)

# Readable names of constructs users commonly try, for the refusal message.
_NAMES: dict[type[exp.Expr], str] = {
    exp.Subquery: "subqueries", exp.Exists: "EXISTS subqueries", exp.Window: "window functions",
    exp.With: "WITH (common table expressions)", exp.CTE: "WITH (common table expressions)",
    exp.Union: "UNION", exp.Intersect: "INTERSECT", exp.Except: "EXCEPT",
    exp.SimilarTo: "SIMILAR TO", exp.RegexpLike: "regular expressions",
    exp.TryCast: "TRY_CAST",
    exp.Offset: "OFFSET", exp.Qualify: "QUALIFY",
    exp.IntDiv: "integer division //",
    exp.TableSample: "TABLESAMPLE", exp.Lateral: "LATERAL", exp.Unnest: "UNNEST",
    exp.Values: "VALUES", exp.Cube: "GROUP BY CUBE",
    exp.Rollup: "GROUP BY ROLLUP", exp.GroupingSets: "GROUPING SETS",
    exp.Tuple: "tuples", exp.NullSafeEQ: "IS NOT DISTINCT FROM",
    exp.NullSafeNEQ: "IS DISTINCT FROM",
}
_AGGREGATE_HINT = (
    "VeilQL supports COUNT(*), COUNT(x), COUNT(DISTINCT unit), SUM, AVG, VAR_SAMP, VAR_POP, "
    "VARIANCE, STDDEV, STDDEV_SAMP, STDDEV_POP, MEDIAN, QUANTILE_CONT, QUANTILE_DISC, "
    "PERCENTILE_CONT/PERCENTILE_DISC ... WITHIN GROUP, APPROX_QUANTILE, MIN and MAX"
)


def construct_name(node: exp.Expr) -> str:
    """A readable name for a refused construct.

    >>> construct_name(exp.func("upper", exp.column("x")))
    'function UPPER'
    """
    for cls, name in _NAMES.items():
        if isinstance(node, cls):
            return name
    if isinstance(node, exp.Anonymous):
        return f"function {node.name.upper()}"
    if isinstance(node, exp.Func):
        return f"function {node.sql_name()}"
    return node.key.upper()


def check_statement(tree: exp.Expr) -> exp.Select:
    """The statement must be one plain SELECT; return it.

    >>> import sqlglot
    >>> check_statement(sqlglot.parse_one("SELECT 1 UNION SELECT 2"))
    Traceback (most recent call last):
    ...
    veilql.errors.UnsupportedError: UNION is not supported
    """
    if isinstance(tree, exp.SetOperation):
        raise UnsupportedError(f"{construct_name(tree)} is not supported",
                               "run each SELECT as its own query; " + SUPPORTED_SQL)
    if isinstance(tree, exp.Subquery):
        raise UnsupportedError("subqueries are not supported",
                               "remove the parentheses around the query")
    if not isinstance(tree, exp.Select):
        raise UnsupportedError(
            f"{tree.key.upper()} statements are not supported: VeilQL only runs SELECT queries",
            SUPPORTED_SQL,
        )
    if tree.args.get("with_"):
        raise UnsupportedError("WITH (common table expressions) is not supported",
                               "inline the CTE into one SELECT; " + SUPPORTED_SQL)
    if tree.args.get("distinct"):
        raise UnsupportedError(
            "SELECT DISTINCT is not supported",
            "use GROUP BY on group columns, or COUNT(DISTINCT unit) to count people",
        )
    for arg in ("kind", "into", "exclude", "operation_modifiers"):
        if tree.args.get(arg):
            raise UnsupportedError(f"SELECT {arg.upper()} is not supported", SUPPORTED_SQL)
    return tree


def check_constructs(select: exp.Select) -> None:
    """Refuse every node outside the accepted SQL, anywhere in the statement."""
    for arg, value in select.args.items():
        if arg == "hint" or value is None:
            continue  # the DP clause, checked by the parser
        for child in value if isinstance(value, list) else [value]:
            if isinstance(child, exp.Expr):
                for node in child.walk(prune=_per_unit_body):
                    if not _per_unit_body(node):
                        _check_node(node, select)


def _per_unit_body(node: exp.Expr) -> bool:
    """A derived table aggregating per person: its body is checked by ``perunit``."""
    return isinstance(node, exp.Subquery) and bool(node.meta.get("veil_per_unit"))


def _check_node(node: exp.Expr, select: exp.Select) -> None:
    """Refuse ``node`` unless it is in the whitelist, in a position where it is allowed."""
    if isinstance(node, exp.Subquery) and not isinstance(node.parent, exp.In | exp.Exists):
        raise UnsupportedError(
            "scalar subqueries (SELECT ...) are not supported: the subquery's aggregate "
            "would be a release of its own",
            "run it as its own query and combine the released values; IN (SELECT unit ...) "
            "and EXISTS are supported as conditions of WHERE")
    if isinstance(node, exp.Select | exp.Subquery | exp.Exists) or (
        isinstance(node, exp.In) and (node.args.get("query") or node.args.get("unnest"))
    ):
        raise UnsupportedError(
            "subqueries are not supported here",
            "write one flat SELECT joined on the privacy unit; IN (SELECT unit FROM ...) and "
            "EXISTS (SELECT ... WHERE t.unit = x.unit) are supported as conditions of WHERE "
            "joined by AND; WITH and FROM (SELECT ...) as plain SELECTs over tables",
        )
    if isinstance(node, exp.Star):
        if isinstance(node.parent, exp.Count):
            return
        if node.parent is select or isinstance(node.parent, exp.Column):
            raise UnsupportedError("SELECT * is not supported",
                                   "name the group columns and aggregates to release")
        raise UnsupportedError("* is only supported in COUNT(*)", SUPPORTED_SQL)
    if isinstance(node, exp.Distinct):
        if isinstance(node.parent, exp.Count):
            return
        parent = node.parent
        name = parent.sql_name() if isinstance(parent, exp.Func) else construct_name(parent or node)
        raise UnsupportedError(
            f"DISTINCT inside {name} is not supported",
            "only COUNT(DISTINCT unit) is supported",
        )
    if isinstance(node, exp.AnyValue) or (isinstance(node, exp.IgnoreNulls)
                                          and isinstance(node.this, exp.AnyValue)):
        return  # ANY_VALUE(g) of a group's own key; the binder refuses any other (outputs.py)
    if isinstance(node, exp.AggFunc) and not isinstance(node, AGGREGATES):
        raise UnsupportedError(
            f"aggregate {node.sql_name()} is not supported yet", _AGGREGATE_HINT
        )
    if isinstance(node, exp.WithinGroup) and not isinstance(
            node.this, exp.PercentileCont | exp.PercentileDisc):
        raise UnsupportedError(
            f"{construct_name(node.this)} ... WITHIN GROUP is not supported",
            "WITHIN GROUP takes PERCENTILE_CONT(q) or PERCENTILE_DISC(q)")
    if is_var(node):
        return  # VAR(x) is VAR_SAMP(x); the binder takes it as an aggregate
    if isinstance(node, exp.Array) and isinstance(node.parent, QUANTILES):
        return  # QUANTILE_CONT(x, [0.25, 0.75]): refused by the binder, with its fix
    if isinstance(node, exp.Window):
        raise UnsupportedError("window functions (OVER ...) are not supported",
                               "use GROUP BY with COUNT, SUM or AVG instead")
    if isinstance(node, exp.Limit):
        if node.args.get("offset"):
            raise UnsupportedError("OFFSET is not supported", "use LIMIT n alone")
        limit_value(node)
    if isinstance(node, exp.Group) and (node.args.get("all") or node.args.get("totals")):
        raise UnsupportedError("GROUP BY ALL is not supported", "name the group columns")
    if isinstance(node, exp.Filter) and not isinstance(node.this, (*AGGREGATES,
                                                                    exp.WithinGroup)):
        raise UnsupportedError(f"FILTER on {construct_name(node.this)} is not supported",
                               "use FILTER (WHERE ...) on an aggregate")
    if isinstance(node, exp.Cast) and not (
            isinstance(node.this, exp.Literal) and node.this.is_string and node.to is not None
            and (node.to.this.name.upper() in ("DATE", "DATETIME")
                 or node.to.this.name.upper().startswith("TIMESTAMP"))):
        raise UnsupportedError(
            "CAST is not supported",
            "only DATE '...' and TIMESTAMP '...' literals are; write a factor as 3e0 to "
            "compute in floating point, or use ROUND, FLOOR or CEIL")
    if isinstance(node, exp.Var) and not isinstance(
            node.parent, exp.Extract | exp.TimestampTrunc | exp.DateTrunc | exp.DateDiff
            | exp.Interval):
        raise UnsupportedError(f"{node.sql(dialect='duckdb')} is not supported",
                               SUPPORTED_SQL)
    if isinstance(node, exp.Is) and not isinstance(node.expression, exp.Null | exp.Boolean):
        raise UnsupportedError(f"{node.sql(dialect='duckdb')} is not supported",
                               "write x IS NULL or x IS NOT NULL")
    if not isinstance(node, _ALLOWED):
        name = construct_name(node)
        verb = "are" if name.endswith("s") and not name.startswith("function") else "is"
        hint = SUPPORTED_SQL
        if isinstance(node, exp.Func):
            hint = ("VeilQL evaluates only the functions listed in docs/reference.md (none "
                    "of them reads files, settings or the network)")
        elif isinstance(node, exp.Offset):
            hint = "use LIMIT n alone"
        raise UnsupportedError(f"{name} {verb} not supported", hint)


def is_var(node: exp.Expr) -> bool:
    """True for ``VAR(x)`` (sqlglot knows no such function; it is VAR_SAMP).

    >>> import sqlglot
    >>> is_var(sqlglot.parse_one("VAR(x)")), is_var(sqlglot.parse_one("VARIANCE(x)"))
    (True, False)
    """
    return isinstance(node, exp.Anonymous) and node.name.upper() == "VAR"


def limit_value(limit: exp.Limit) -> int:
    """The n of ``LIMIT n``; refuse anything but a non-negative integer literal.

    >>> import sqlglot
    >>> limit_value(sqlglot.parse_one("SELECT 1 LIMIT 5").args["limit"])
    5
    """
    value = limit.expression
    if (limit.args.get("limit_options") or limit.expressions or not isinstance(value, exp.Literal)
            or value.is_string or not value.is_int or int(value.this) < 0):
        raise UnsupportedError(f"{limit.sql(dialect='duckdb').strip()} is not supported",
                               "LIMIT takes a non-negative integer, e.g. LIMIT 10")
    return int(value.this)


def is_literal(node: exp.Expr) -> bool:
    """True for a number/string/boolean literal, possibly negated or in parentheses."""
    node = unparen(node)
    while isinstance(node, exp.Neg):
        node = unparen(node.this)
    return isinstance(node, exp.Literal | exp.Boolean)


def check_no_aggregate(node: exp.Expr | None, clause: str) -> None:
    """Aggregates belong in SELECT, HAVING and ORDER BY only."""
    agg = node.find(exp.AggFunc) if node is not None else None
    if agg is None and node is not None:
        agg = next((n for n in node.walk() if is_var(n)), None)
    if agg is not None:
        hint = "filter on aggregates with HAVING" if clause == "WHERE" else SUPPORTED_SQL
        raise UnsupportedError(f"aggregate {agg.sql_name()} in {clause} is not supported", hint)


def split_and(node: exp.Expression) -> list[exp.Expression]:
    """Top-level conjuncts of ``node`` (through parentheses).

    >>> [c.sql() for c in split_and(exp.condition("(a AND b) AND (c OR d)"))]
    ['a', 'b', 'c OR d']
    """
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.And):
        return split_and(node.this) + split_and(node.expression)
    return [node]


# ---------------------------------------------------------------- WHERE

__all__ = ["SUPPORTED_SQL", "check_count", "check_predicate", "check_statement",
           "check_constructs", "construct_name", "is_literal", "limit_value",
           "refuse_group_as_value", "refuse_key", "split_and"]


def check_predicate(node: exp.Expr, resolve: Resolver, where: str = "WHERE") -> None:
    """Check a condition: boolean structure over comparisons, IN, BETWEEN, LIKE, IS NULL,
    CASE, and the roles of every column (``functions.check_roles``)."""
    node = unparen(node)
    if isinstance(node, exp.And | exp.Or):
        check_predicate(node.this, resolve, where)
        check_predicate(node.expression, resolve, where)
    elif isinstance(node, exp.Not):
        check_predicate(node.this, resolve, where)
    elif isinstance(node, exp.Boolean):
        return
    elif isinstance(node, (*functions.CONDITIONS, exp.Case, exp.If, exp.Coalesce,
                           exp.Nullif)):
        functions.check_roles(node, resolve, context="cond", where=where)
    elif isinstance(node, exp.Column) and _is_boolean(resolve(node)):
        functions.check_roles(node, resolve, context="cond", where=where)
    else:
        raise UnsupportedError(
            f"{node.sql(dialect='duckdb')} is not a condition",
            "write a comparison, e.g. x.column = 1, x.column IN (...), or BETWEEN",
        )


def _is_boolean(col: BoundColumn) -> bool:
    return (col.policy.type or "").upper() in ("BOOLEAN", "BOOL")


# ---------------------------------------------------------------- aggregates


def check_count(
    node: exp.Count, resolve: Resolver, units: Mapping[str, str]
) -> BoundColumn | None:
    """``COUNT(*)`` (None) or ``COUNT(DISTINCT unit)`` (the unit column); refuse other
    DISTINCTs. ``units`` maps each table alias to its privacy-unit column. (``COUNT(x)``
    is bound by the binder as the count of rows where x is not NULL.)
    """
    arg = node.this
    if isinstance(arg, exp.Star):
        return None
    if isinstance(arg, exp.Distinct) and len(arg.expressions) == 1:
        inner = unparen(arg.expressions[0])
        if isinstance(inner, exp.Column):
            col = resolve(inner)
            if units.get(col.alias) == col.column:
                return col
            raise PolicyError(
                f"COUNT(DISTINCT {col.alias}.{col.column}) is not supported: only the privacy "
                "unit can be counted distinctly",
                "count people with COUNT(DISTINCT <unit>), or groups with GROUP BY",
            )
    raise UnsupportedError(
        f"{node.sql(dialect='duckdb')} is not supported",
        "use COUNT(*) to count rows, COUNT(x) to count rows where x is not NULL, or "
        "COUNT(DISTINCT <unit>) to count people",
    )
