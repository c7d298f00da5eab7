"""GROUP BY: group columns and row-level expressions over one party's columns, each with its
public domain where one can be derived (else the keys are chosen privately), expressions
over several parties' group columns with declared values (``groups_across``), and the
output names unaliased items get (DuckDB's rule: ``g``, ``g_1``, ...).
"""

from __future__ import annotations

from dataclasses import replace

from sqlglot import exp

from veilql.engine.sql import checks, functions, groups_across, typecheck
from veilql.engine.sql.bound import BoundColumn, BoundGroup
from veilql.engine.sql.scope import Scope
from veilql.errors import PolicyError, UnsupportedError


def default_name(node: exp.Expr) -> str:
    """The name an unaliased expression gets (see the module docstring)."""
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Column):
        return node.name
    if isinstance(node, exp.Case | exp.If):
        return "case"
    if isinstance(node, exp.Func) and not isinstance(node, exp.Binary):
        return node.sql_name().lower()
    return "expr"


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name_1``, ``name_2``... if already taken (DuckDB's rule)."""
    if name.lower() not in taken:
        return name
    n = 1
    while f"{name}_{n}".lower() in taken:
        n += 1
    return f"{name}_{n}"


def select_items(select: exp.Select) -> list[tuple[str | None, exp.Expr]]:
    """``(alias or None, expression without parentheses)`` of each SELECT item."""
    out = []
    for item in select.expressions:
        alias = item.alias if isinstance(item, exp.Alias) else None
        node = item.this if isinstance(item, exp.Alias) else item
        while isinstance(node, exp.Paren):
            node = node.this
        out.append((alias, node))
    return out


def bind_group_by(select: exp.Select, scope: Scope) -> tuple[BoundGroup, ...]:
    """GROUP BY items: group columns, or expressions over one party's columns (also by the
    alias or the position of a SELECT item)."""
    group = select.args.get("group")
    if group is None:
        return ()
    items = select_items(select)
    aliases = {a.lower(): n for a, n in items if a}
    out: list[BoundGroup] = []
    names: set[str] = set()
    seen: set[str] = set()
    for item in group.expressions:
        checks.check_no_aggregate(item, "GROUP BY")
        inner = item
        while isinstance(inner, exp.Paren):
            inner = inner.this
        named: str | None = None  # the alias of the SELECT item the key is (if any)
        if isinstance(inner, exp.Literal) and not inner.is_string:
            if not inner.is_int or not 1 <= int(inner.this) <= len(items):
                raise UnsupportedError(
                    f"GROUP BY {inner.sql()} is not a SELECT position (1..{len(items)})",
                    "group by a column, an expression, or the position of a SELECT item")
            named, inner = items[int(inner.this) - 1]
            if inner.find(exp.AggFunc):
                raise UnsupportedError(f"GROUP BY {item.sql()} names an aggregate",
                                       "group by a column or a row-level expression")
        elif isinstance(inner, exp.Column) and not inner.table and \
                inner.name.lower() in aliases:
            try:
                scope.resolve(inner)
            except PolicyError:
                named, inner = inner.name, aliases[inner.name.lower()]
        if isinstance(inner, exp.Literal | exp.Boolean | exp.Null):
            raise UnsupportedError(f"GROUP BY {inner.sql(dialect='duckdb')} is not supported",
                                   "name the column")
        g = bind_group(inner, scope)
        key = g.expr.sql(dialect="duckdb")
        if key in seen:
            continue
        seen.add(key)
        if named is None:  # the key is also selected with an alias: it takes that name
            named = next((a for a, n in items if a and _same_expr(n, g.expr, scope)), None)
        name = unique_name(named or g.name, names)
        names.add(name.lower())
        out.append(replace(g, name=name))
    return tuple(out)


def _same_expr(node: exp.Expr, qualified: exp.Expression, scope: Scope) -> bool:
    """True when the SELECT item ``node`` is the qualified expression ``qualified``."""
    if node.find(exp.AggFunc) is not None:
        return False
    try:
        return scope.qualify(node).sql(dialect="duckdb") == qualified.sql(dialect="duckdb")
    except PolicyError:
        return False


def bind_group(node: exp.Expr, scope: Scope) -> BoundGroup:
    """One GROUP BY expression with its public domain (None: private keys)."""
    if isinstance(node, exp.Column):
        col = scope.resolve(node)
        if col.policy.role == "key":
            raise checks.refuse_key(col, "GROUP BY")
        if col.policy.role == "value":
            raise PolicyError(
                f"value column {col.alias}.{col.column} cannot be in GROUP BY: its role is "
                "'value'",
                f"group by group columns, or by buckets of it (CASE WHEN ... THEN 'low' ... "
                f"END, FLOOR({col.alias}.{col.column} / 10)); or ask {col.party} to declare "
                "it with role 'group' and public values",
            )
        # its declared values, NULL among them when the column is nullable
        return BoundGroup(col.column, col.expr(), col.party, col, col.policy.domain)
    raw = [scope.resolve(c) for c in node.find_all(exp.Column)]
    if len({c.party for c in raw}) > 1:
        # Never run on rows (its values come from DuckDB over the declared values): the
        # allow-list and the key columns' refusal apply, and its group columns are read as
        # numbers of one party (arithmetic, comparisons between parties' columns)
        functions.check_roles(node, lambda c: _as_value(scope.resolve(c)),
                              context="group", where="GROUP BY")
        return groups_across.bind_across(node, scope.qualify(node), default_name(node), raw)
    cols = functions.check_roles(node, scope.resolve, context="group", where="GROUP BY")
    text = node.sql(dialect="duckdb")
    if not cols:
        raise UnsupportedError(f"GROUP BY {text} reads no column", "name a column")
    expr = scope.qualify(node)
    checker = typecheck.TypeChecker(scope)
    checker.expr_type(expr)

    def interval(n: exp.Expr) -> tuple[float, float]:
        num = checker.numeric(n)
        return num.lo, num.hi

    numeric = all(c.policy.role == "value" for c in cols)
    domain = functions.group_domain(expr, cols, interval if numeric else None,
                                    functions.integer_valued(expr))
    if domain is None and any(c.policy.role == "value" for c in cols):
        value = next(c for c in cols if c.policy.role == "value")
        raise PolicyError(
            f"GROUP BY {text}: its values have no public domain, and value column "
            f"{value.alias}.{value.column} may not be released as a group key",
            "bucket it into a public domain: CASE WHEN ... THEN 'a' ... END with literal "
            f"results, or an integer expression such as FLOOR({value.alias}.{value.column} / "
            f"10) over at most {functions.MAX_DERIVED_DOMAIN} values within its bounds")
    column = cols[0] if isinstance(node, exp.Column) else None
    return BoundGroup(default_name(node), expr, cols[0].party, column, domain)


def _as_value(col: BoundColumn) -> BoundColumn:
    """``col`` as the roles check of a key across parties reads it: a group column with
    declared values as a value column, and every column as one party's."""
    if col.policy.role == "group" and col.policy.values:
        col = replace(col, policy=replace(col.policy, role="value"))
    return replace(col, party="")
