"""Semi-joins: ``x.unit IN (SELECT unit FROM party.table WHERE ...)`` and correlated
``EXISTS`` (and their negations) as semi-joined tables.

Each subquery becomes a table read at its owner as one row per unit with a 0/1 column
``__in`` (whether some row passes its condition), joined on the unit like any other table;
the outer query's condition is ``__in = 1`` (or, negated, NULL or 0).
"""

from __future__ import annotations

from dataclasses import replace

from sqlglot import exp

from veilql.engine.sql import checks, normalize
from veilql.engine.sql.bound import (
    BoundColumn,
    BoundTable,
    JoinEdge,
)
from veilql.engine.sql.scope import Catalog, Scope, bind_table, columns_of
from veilql.errors import PolicyError, UnsupportedError
from veilql.policies.model import Federation

SEMI_COLUMN = "__in"  # the 0/1 column of a semi-join's per-unit source (bound_contributions)


_SEMI_HINT = ("write x.unit IN (SELECT unit FROM party.table WHERE ...) or EXISTS (SELECT 1 "
              "FROM party.table t WHERE t.unit = x.unit AND ...), as a condition of WHERE "
              "joined by AND")


def take_semi_joins(select: exp.Select) -> tuple[exp.Select, list[tuple[bool, exp.Expr]]]:
    """Remove the top-level IN-subquery and EXISTS conditions of WHERE (to bind as
    semi-joins); return the rest and those conditions (with whether each is negated)."""
    where = select.args.get("where")
    if where is None:
        return select, []
    taken: list[tuple[bool, exp.Expr]] = []
    kept: list[exp.Expression] = []
    for term in checks.split_and(where.this):
        node, negated = term, False
        while isinstance(node, exp.Paren):
            node = node.this
        if isinstance(node, exp.Not):
            inner = node.this
            while isinstance(inner, exp.Paren):
                inner = inner.this
            if _is_semi(inner):
                node, negated = inner, True
        if _is_semi(node):
            taken.append((negated, node))
        else:
            kept.append(term)
    if not taken:
        return select, []
    select = select.copy()
    cond = None
    for k in kept:
        cond = k.copy() if cond is None else exp.And(this=cond, expression=k.copy())
    select.set("where", None if cond is None else exp.Where(this=cond))
    return select, taken


def _is_semi(node: exp.Expr) -> bool:
    return isinstance(node, exp.Exists) or (
        isinstance(node, exp.In) and node.args.get("query") is not None)


def bind_semi_joins(
    semis: list[tuple[bool, exp.Expr]], scope: Scope, federation: Federation,
    catalog: Catalog | None,
) -> tuple[list[BoundTable], list[JoinEdge], list[exp.Expression]]:
    """Each IN / EXISTS subquery as a semi-joined table, its edge and its 0/1 condition."""
    tables: list[BoundTable] = []
    edges: list[JoinEdge] = []
    conds: list[exp.Expression] = []
    taken = {t.alias.lower() for t in scope.tables}
    for negated, node in semis:
        body = node.this if isinstance(node, exp.Exists) else node.args["query"].this
        word = ("NOT " if negated else "") + ("EXISTS" if isinstance(node, exp.Exists)
                                              else "IN (SELECT ...)")
        if not isinstance(body, exp.Select):
            raise UnsupportedError(f"{word} over {body.key.upper()} is not supported",
                                   _SEMI_HINT)
        body = normalize.inline_subqueries(body, columns_of(federation))
        assert isinstance(body, exp.Select)
        for arg in ("group", "having", "order", "limit", "joins", "distinct", "with_"):
            if body.args.get(arg):
                raise UnsupportedError(
                    f"{word}: the subquery must read one table, without JOIN, GROUP BY, "
                    "DISTINCT, ORDER BY or LIMIT", _SEMI_HINT)
        from_ = body.args.get("from_")
        ref = from_.this if from_ is not None else None
        if not isinstance(ref, exp.Table):
            raise UnsupportedError(f"{word}: the subquery must read a table party.table",
                                   _SEMI_HINT)
        table = bind_table(ref, federation, catalog)
        if table.dimension:
            raise UnsupportedError(
                f"{word} over the dimension table {table.party}.{table.table} is not supported",
                "join the dimension table on its foreign key and filter its columns in WHERE")
        alias = table.alias
        n = 1
        while alias.lower() in taken:
            alias = f"{table.alias}_{n}"
            n += 1
        taken.add(alias.lower())
        inner = Scope((replace(table, alias=alias),), catalog)
        inner_alias = table.alias

        def local(c: exp.Column, _alias: str = inner_alias, _party: str = table.party) -> bool:
            return not c.table or c.table.lower() == _alias.lower() or bool(
                c.db and c.db.lower() == _party.lower())

        def requalify(n: exp.Expr, _alias: str = alias, _inner: str = inner_alias) -> exp.Expr:
            if isinstance(n, exp.Column) and n.table.lower() == _inner.lower() and not n.db:
                return exp.column(n.name, table=_alias)
            return n

        outer_col: BoundColumn
        filters: list[exp.Expression] = []
        where = body.args.get("where")
        terms = checks.split_and(where.this) if where is not None else []
        if isinstance(node, exp.In):
            items = body.expressions
            if len(items) != 1 or not isinstance(items[0], exp.Column) or not local(items[0]):
                raise UnsupportedError(f"{word}: the subquery must select its table's privacy "
                                       f"unit ({table.unit})", _SEMI_HINT)
            sub_col = inner.resolve(items[0].transform(requalify))  # type: ignore[arg-type]
            operand = node.this
            while isinstance(operand, exp.Paren):
                operand = operand.this
            if not isinstance(operand, exp.Column):
                raise UnsupportedError(f"{word}: compare a privacy unit, e.g. "
                                       f"c.customer_id IN (SELECT ...)", _SEMI_HINT)
            outer_col = scope.resolve(operand)
        else:
            correlation = None
            for term in terms:
                t = term
                while isinstance(t, exp.Paren):
                    t = t.this
                if (correlation is None and isinstance(t, exp.EQ)
                        and isinstance(t.this, exp.Column)
                        and isinstance(t.expression, exp.Column)):
                    a, b = t.this, t.expression
                    if local(a) and not local(b):
                        correlation = (a, b)
                        continue
                    if local(b) and not local(a):
                        correlation = (b, a)
                        continue
                filters.append(term)
            if correlation is None:
                raise UnsupportedError(
                    f"{word}: the subquery must be correlated on the privacy unit, e.g. "
                    f"WHERE {inner_alias}.{table.unit} = x.{table.unit}", _SEMI_HINT)
            sub_col = inner.resolve(correlation[0].transform(requalify))  # type: ignore[arg-type]
            outer_col = scope.resolve(correlation[1])
            terms = filters
        if sub_col.column != table.unit:
            raise PolicyError(f"{word}: {sub_col.alias}.{sub_col.column} is not the privacy "
                              f"unit of {table.party}.{table.table} ({table.unit})", _SEMI_HINT)
        if outer_col.column != scope.units[outer_col.alias]:
            raise PolicyError(
                f"{word}: {outer_col.alias}.{outer_col.column} is not the privacy unit of "
                f"{outer_col.party}.{outer_col.table} ({scope.units[outer_col.alias]})",
                _SEMI_HINT)
        cond = None
        for term in terms:
            for c in term.find_all(exp.Column):
                if not local(c):
                    raise UnsupportedError(
                        f"{word}: the condition {term.sql(dialect='duckdb')} reads columns "
                        "outside the subquery; only the unit equality may", _SEMI_HINT)
            term = term.transform(requalify)
            checks.check_no_aggregate(term, "WHERE")
            checks.check_predicate(term, inner.resolve)
            q = inner.qualify(term)
            cond = q if cond is None else exp.And(this=cond, expression=q)
        kind = "anti" if negated else "semi"
        if negated and not any(t.party == table.party for t in scope.tables):
            raise UnsupportedError(
                f"{word} over {table.party}.{table.table} is not supported: {table.party} "
                "holds no other table of the query, and a person without rows there cannot "
                "be seen on shares (the secure join keeps matching people only)",
                f"move the condition into a query over {table.party}'s tables, or count the "
                "matching people and subtract")
        tables.append(replace(table, alias=alias, semi=kind, filter=cond))
        edges.append(JoinEdge(left=outer_col.alias, right=alias,
                              left_column=outer_col.column, right_column=table.unit))
        flag = exp.column(SEMI_COLUMN, table=alias)
        conds.append(exp.EQ(this=flag, expression=exp.Literal.number(1)) if not negated else
                     exp.Paren(this=exp.Or(this=exp.Is(this=flag.copy(), expression=exp.Null()),
                                           expression=exp.EQ(this=flag.copy(),
                                                             expression=exp.Literal.number(0)))))
    return tables, edges, conds
