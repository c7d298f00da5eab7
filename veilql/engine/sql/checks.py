"""Policy and construct rules, enforced before any data is touched (fail closed).

``bind`` calls these while it resolves names. Each refusal is an ``UnsupportedError`` (a
construct outside the SQL VeilQL accepts, see CONTRACT.md "SQL") or a ``PolicyError`` (a use of
a column its owner's policy forbids), with a message naming the construct and a hint.

Column roles (policies/<party>.toml):

- ``key``: only in a join condition ``x.unit = y.unit`` and in ``COUNT(DISTINCT unit)``.
- ``group``: GROUP BY, bare in SELECT when grouped, and WHERE comparisons with literals or
  with columns of the same party; never as a value (aggregates, arithmetic).
- ``value``: WHERE (comparisons and arithmetic, also across parties) and SUM/AVG, whose
  argument's clamping bounds follow by interval arithmetic from the declared bounds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from sqlglot import exp

from veilql.engine.sql.bound import BoundColumn
from veilql.errors import PolicyError, UnsupportedError

Resolver = Callable[[exp.Column], BoundColumn]

SUPPORTED_SQL = (
    "VeilQL accepts SELECT [groups,] COUNT(*), COUNT(DISTINCT unit), SUM(expr), AVG(expr) "
    "FROM party.table [JOIN party.table ON x.unit = y.unit] [WHERE ...] [GROUP BY ...] "
    "[HAVING ...] [ORDER BY ...] [LIMIT n]"
)

# Nodes allowed anywhere in the statement tree (fail closed: everything else is refused).
_ALLOWED: tuple[type[exp.Expr], ...] = (
    exp.From, exp.Join, exp.Table, exp.TableAlias, exp.Identifier, exp.Column, exp.Literal,
    exp.Boolean, exp.Paren, exp.And, exp.Or, exp.Not, exp.EQ, exp.NEQ, exp.LT, exp.LTE,
    exp.GT, exp.GTE, exp.In, exp.Between, exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Neg,
    exp.Count, exp.Sum, exp.Avg, exp.Alias, exp.Where, exp.Group, exp.Having, exp.Order,
    exp.Ordered, exp.Limit,
)

# Readable names of constructs users commonly try, for the refusal message.
_NAMES: dict[type[exp.Expr], str] = {
    exp.Subquery: "subqueries", exp.Exists: "EXISTS subqueries", exp.Window: "window functions",
    exp.With: "WITH (common table expressions)", exp.CTE: "WITH (common table expressions)",
    exp.Union: "UNION", exp.Intersect: "INTERSECT", exp.Except: "EXCEPT",
    exp.Case: "CASE expressions", exp.If: "IF expressions", exp.Like: "LIKE",
    exp.ILike: "ILIKE", exp.SimilarTo: "SIMILAR TO", exp.RegexpLike: "regular expressions",
    exp.Is: "IS [NOT] NULL / TRUE / FALSE", exp.Null: "NULL", exp.Cast: "CAST",
    exp.TryCast: "TRY_CAST",
    exp.Offset: "OFFSET", exp.Qualify: "QUALIFY", exp.Filter: "FILTER (WHERE ...)",
    exp.Mod: "the % operator", exp.IntDiv: "integer division //", exp.Pow: "powers",
    exp.TableSample: "TABLESAMPLE", exp.Lateral: "LATERAL", exp.Unnest: "UNNEST",
    exp.Values: "VALUES", exp.Interval: "INTERVAL", exp.Cube: "GROUP BY CUBE",
    exp.Rollup: "GROUP BY ROLLUP", exp.GroupingSets: "GROUPING SETS", exp.DPipe: "||",
    exp.Tuple: "tuples",
}
_AGGREGATE_HINT = (
    "VeilQL supports COUNT(*), COUNT(DISTINCT unit), SUM and AVG; MIN, MAX, quantiles and "
    "variances are planned"
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
                for node in child.walk():
                    _check_node(node, select)


def _check_node(node: exp.Expr, select: exp.Select) -> None:
    """Refuse ``node`` unless it is in the whitelist, in a position where it is allowed."""
    if isinstance(node, exp.Select | exp.Subquery | exp.Exists) or (
        isinstance(node, exp.In) and (node.args.get("query") or node.args.get("unnest"))
    ):
        raise UnsupportedError("subqueries are not supported",
                               "write one flat SELECT; join tables on their privacy unit instead")
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
    if isinstance(node, exp.AggFunc) and not isinstance(node, exp.Count | exp.Sum | exp.Avg):
        raise UnsupportedError(
            f"aggregate {node.sql_name()} is not supported yet", _AGGREGATE_HINT
        )
    if isinstance(node, exp.Window):
        raise UnsupportedError("window functions (OVER ...) are not supported",
                               "use GROUP BY with COUNT, SUM or AVG instead")
    if isinstance(node, exp.Limit):
        if node.args.get("offset"):
            raise UnsupportedError("OFFSET is not supported", "use LIMIT n alone")
        limit_value(node)
    if isinstance(node, exp.Group) and (node.args.get("all") or node.args.get("totals")):
        raise UnsupportedError("GROUP BY ALL is not supported", "name the group columns")
    if not isinstance(node, _ALLOWED):
        name = construct_name(node)
        verb = "are" if name.endswith("s") and not name.startswith("function") else "is"
        hint = SUPPORTED_SQL
        if isinstance(node, exp.Case | exp.If):
            hint = "CASE is planned; for now filter with WHERE and run one query per case"
        elif isinstance(node, exp.Func):
            hint = "only arithmetic (+, -, *, /) and COUNT, SUM, AVG are supported"
        elif isinstance(node, exp.Like | exp.ILike):
            hint = "compare group columns with =, <> or IN (list of values)"
        elif isinstance(node, exp.Is | exp.Null):
            hint = "NULL handling is not supported yet; compare with values instead"
        elif isinstance(node, exp.Offset):
            hint = "use LIMIT n alone"
        raise UnsupportedError(f"{name} {verb} not supported", hint)


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


def _unparen(node: exp.Expr) -> exp.Expr:
    while isinstance(node, exp.Paren):
        node = node.this
    return node


def is_literal(node: exp.Expr) -> bool:
    """True for a number/string/boolean literal, possibly negated or in parentheses."""
    node = _unparen(node)
    while isinstance(node, exp.Neg):
        node = _unparen(node.this)
    return isinstance(node, exp.Literal | exp.Boolean)


def check_no_aggregate(node: exp.Expr | None, clause: str) -> None:
    """Aggregates belong in SELECT, HAVING and ORDER BY only."""
    agg = node.find(exp.AggFunc) if node is not None else None
    if agg is not None:
        hint = "filter on aggregates with HAVING" if clause == "WHERE" else SUPPORTED_SQL
        raise UnsupportedError(f"aggregate {agg.sql_name()} in {clause} is not supported", hint)


def _policy_hint(col: BoundColumn) -> str:
    return f"see the column's role in policies/{col.party}.toml (table {col.table})"


def refuse_key(col: BoundColumn, where: str) -> PolicyError:
    """Error for a key column used outside a join condition or COUNT(DISTINCT unit)."""
    return PolicyError(
        f"key column {col.alias}.{col.column} cannot be used in {where}: key columns only join "
        "tables and count people",
        "use it only in JOIN ... ON x.unit = y.unit or COUNT(DISTINCT unit)",
    )


def refuse_group_as_value(col: BoundColumn, where: str) -> PolicyError:
    """Error for a group column used as a number."""
    return PolicyError(
        f"group column {col.alias}.{col.column} cannot be used as a value ({where}): its role "
        "is 'group'",
        "use it in GROUP BY or compare it with literals in WHERE; " + _policy_hint(col),
    )


# ---------------------------------------------------------------- WHERE

_SYMBOLS: dict[type[exp.Expr], str] = {
    exp.EQ: "=", exp.NEQ: "<>", exp.LT: "<", exp.LTE: "<=", exp.GT: ">", exp.GTE: ">=",
}
_COMPARISONS = tuple(_SYMBOLS)


def check_predicate(node: exp.Expr, resolve: Resolver) -> None:
    """Check a WHERE condition: boolean structure over comparisons, IN and BETWEEN."""
    node = _unparen(node)
    if isinstance(node, exp.And | exp.Or):
        check_predicate(node.this, resolve)
        check_predicate(node.expression, resolve)
    elif isinstance(node, exp.Not):
        check_predicate(node.this, resolve)
    elif isinstance(node, exp.Boolean):
        return
    elif isinstance(node, _COMPARISONS):
        _check_operands([node.this, node.expression], resolve, _SYMBOLS[type(node)])
    elif isinstance(node, exp.Between):
        _check_operands([node.this, node.args["low"], node.args["high"]], resolve, "BETWEEN")
    elif isinstance(node, exp.In):
        for item in node.expressions:
            if not is_literal(item):
                raise UnsupportedError(
                    f"IN list item {item.sql(dialect='duckdb')} is not a literal",
                    "IN takes a list of literal values, e.g. region IN ('north', 'south')",
                )
        _check_operands([node.this, *node.expressions], resolve, "IN")
    else:
        raise UnsupportedError(
            f"{node.sql(dialect='duckdb')} is not a condition",
            "write a comparison, e.g. x.column = 1, x.column IN (...), or BETWEEN",
        )


def _check_operands(operands: list[exp.Expr], resolve: Resolver, op: str) -> None:
    """Roles of the columns compared by one comparison / IN / BETWEEN."""
    bare_groups: list[BoundColumn] = []
    all_cols: list[BoundColumn] = []
    for operand in operands:
        inner = _unparen(operand)
        if isinstance(inner, exp.Column):
            col = resolve(inner)
            all_cols.append(col)
            if col.policy.role == "key":
                raise refuse_key(col, "WHERE")
            if col.policy.role == "group":
                bare_groups.append(col)
            continue
        _check_term(inner, resolve, all_cols)
    parties = {c.party for c in all_cols}
    for group in bare_groups:
        others = [c for c in all_cols if c.party != group.party]
        if others:
            other = others[0]
            raise PolicyError(
                f"group column {group.alias}.{group.column} is compared with "
                f"{other.alias}.{other.column} of another party ({other.party})",
                "compare group columns with literals (=, <>, IN, BETWEEN, <, >); only value "
                "columns can be compared across parties",
            )
    if len(parties) > 1:
        for operand in operands:
            div = operand.find(exp.Div)
            if div is not None:
                raise UnsupportedError(
                    f"division in a comparison across parties ({op}) is not supported",
                    "multiply out instead, e.g. a > b * 2 rather than a / b > 2",
                )


def _check_term(node: exp.Expr, resolve: Resolver, cols: list[BoundColumn]) -> None:
    """An arithmetic term in WHERE: value columns and numeric literals only."""
    node = _unparen(node)
    if isinstance(node, exp.Column):
        col = resolve(node)
        cols.append(col)
        if col.policy.role == "key":
            raise refuse_key(col, "WHERE")
        if col.policy.role == "group":
            raise refuse_group_as_value(col, "arithmetic in WHERE")
    elif isinstance(node, exp.Literal | exp.Boolean):
        return
    elif isinstance(node, exp.Neg):
        _check_term(node.this, resolve, cols)
    elif isinstance(node, exp.Add | exp.Sub | exp.Mul | exp.Div):
        _check_term(node.this, resolve, cols)
        _check_term(node.expression, resolve, cols)
    else:
        raise UnsupportedError(
            f"{node.sql(dialect='duckdb')} is not supported as a value in WHERE",
            "compare columns, literals and arithmetic (+, -, *, /) of value columns",
        )


# ---------------------------------------------------------------- aggregates


def derive_bounds(node: exp.Expr, resolve: Resolver, func: str) -> tuple[float, float]:
    """Clamping interval of a SUM/AVG argument by interval arithmetic over declared bounds.

    Supports value columns, numeric literals, ``+``, ``-``, ``*`` and unary minus. Division is
    refused: a divisor's interval may contain 0, so no finite bound follows.
    """
    node = _unparen(node)
    if isinstance(node, exp.Column):
        col = resolve(node)
        if col.policy.role == "key":
            raise refuse_key(col, func)
        if col.policy.role == "group":
            raise refuse_group_as_value(col, f"inside {func}")
        if col.policy.bounds is None:
            raise PolicyError(
                f"value column {col.alias}.{col.column} has no bounds, so {func} cannot clamp it",
                f"add bounds = [low, high] to {col.column} in policies/{col.party}.toml",
            )
        lo, hi = col.policy.bounds
        return float(lo), float(hi)
    if isinstance(node, exp.Literal) and not node.is_string:
        v = float(node.this.replace("_", ""))
        return v, v
    if isinstance(node, exp.Neg):
        lo, hi = derive_bounds(node.this, resolve, func)
        return -hi, -lo
    if isinstance(node, exp.Add | exp.Sub | exp.Mul):
        a = derive_bounds(node.this, resolve, func)
        b = derive_bounds(node.expression, resolve, func)
        if isinstance(node, exp.Add):
            return a[0] + b[0], a[1] + b[1]
        if isinstance(node, exp.Sub):
            return a[0] - b[1], a[1] - b[0]
        products = [x * y for x in a for y in b]
        return min(products), max(products)
    if isinstance(node, exp.Div):
        raise UnsupportedError(
            f"division inside {func} is not supported: its bounds cannot be derived",
            "aggregate numerator and denominator separately and divide the results",
        )
    if isinstance(node, exp.AggFunc):
        raise UnsupportedError(f"nested aggregate {node.sql_name()} inside {func}",
                               "aggregates cannot contain aggregates")
    raise UnsupportedError(
        f"{node.sql(dialect='duckdb')} inside {func} is not supported",
        "use value columns, numbers and +, -, * inside SUM and AVG",
    )


def check_count(
    node: exp.Count, resolve: Resolver, units: Mapping[str, str]
) -> BoundColumn | None:
    """``COUNT(*)`` (None) or ``COUNT(DISTINCT unit)`` (the unit column); refuse the rest.

    ``units`` maps each table alias to its privacy-unit column.
    """
    arg = node.this
    if isinstance(arg, exp.Star):
        return None
    if isinstance(arg, exp.Distinct) and len(arg.expressions) == 1:
        inner = _unparen(arg.expressions[0])
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
        "use COUNT(*) to count rows or COUNT(DISTINCT <unit>) to count people",
    )

