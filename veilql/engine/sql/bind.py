"""Bind a parsed query to the federation: resolve names, check policies, build a BoundQuery.

Nothing here reads data: schemas and policies are public inside the federation, rows are not.
Every refusal happens here, before planning, so a refused query charges nothing.

Before binding, ``normalize.inline_subqueries`` inlines WITH and derived tables. The binder
then takes comma joins (``FROM a.t, b.u WHERE t.unit = u.unit``), ``CROSS JOIN`` with such a
condition and ``JOIN ... USING (unit)`` as the JOIN ... ON form, moves conditions of ON
other than unit equalities to WHERE, turns ``x.unit IN (SELECT unit FROM ...)`` and
``EXISTS (SELECT ... WHERE t.unit = x.unit ...)`` into semi-joins, lowers ``COUNT(x)``,
``FILTER (WHERE ...)`` and ``SUM(condition)`` to sums of 0/1 expressions, and splits
expressions over released aggregates (``SUM(a) / SUM(b)``) into hidden aggregates and a
post-processing expression.

Output names: an item's alias; else the column's name, ``count``, ``count_distinct``,
``sum_<column>``/``avg_<column>`` (``sum``/``avg`` for an expression), ``count_<column>``,
the lower-case name of a function, or ``expr``; a name already taken gets ``_1``, ``_2``...
(as DuckDB names repeated columns), so two group columns of one name at two parties come
back as ``name`` and ``name_1``.

>>> from pathlib import Path
>>> from veilql.engine.sql.parse import parse
>>> from veilql.policies.model import ColumnPolicy, Federation, Party, TablePolicy
>>> loans = TablePolicy("loans", "customer_id", 3, columns={
...     "customer_id": ColumnPolicy("customer_id", "key"),
...     "amount": ColumnPolicy("amount", "value", bounds=(0, 1000)),
...     "grade": ColumnPolicy("grade", "group", values=("a", "b"))})
>>> fed = Federation("f", Path("f.toml"), (Party("bank", "local", "duckdb:x", {"loans": loans}),))
>>> q = bind(parse("SELECT grade, SUM(amount * 2) AS s FROM bank.loans l GROUP BY grade"), fed)
>>> [(o.name, o.kind, o.bounds) for o in q.outputs]
[('grade', 'group', None), ('s', 'sum', (0.0, 2000.0))]
>>> q.outputs[1].expr.sql()
'l.amount * 2'
"""

from __future__ import annotations

from dataclasses import replace

from sqlglot import exp

from veilql.engine.sql import checks, functions, limits, normalize, scalars, typecheck
from veilql.engine.sql.bound import BoundQuery
from veilql.engine.sql.groups import bind_group_by
from veilql.engine.sql.joins import bind_joins, link_dimensions, outer_joins
from veilql.engine.sql.outputs import Outputs, bind_limit, bind_order_by
from veilql.engine.sql.parse import ParsedQuery
from veilql.engine.sql.scope import Catalog, Scope, bind_tables, columns_of
from veilql.engine.sql.semijoins import bind_semi_joins, take_semi_joins
from veilql.errors import QueryError
from veilql.policies.model import Federation

__all__ = ["Catalog", "bind"]


def bind(
    parsed: ParsedQuery, federation: Federation, catalog: Catalog | None = None
) -> BoundQuery:
    """Resolve and check ``parsed`` against ``federation``; refuse anything not allowed.

    Besides names and policies, every predicate and aggregate argument is type-checked
    (``veilql.engine.sql.typecheck``), so that no query that binds can fail in a party's engine
    because of a row's value; expressions that could fail on a value outside the declared
    bounds get their safe form (``functions.safe_forms``). Every refusal is a ``QueryError``
    whose message and hint hold no control character; a ``RecursionError`` becomes one too.
    """
    try:
        with limits.recursion_guard("binding"):
            bound = _bind(parsed, federation, catalog)
            typecheck.check_types(bound)
            return _safe(bound)
    except QueryError as error:
        raise limits.printable_error(error) from None


def _bind(
    parsed: ParsedQuery, federation: Federation, catalog: Catalog | None
) -> BoundQuery:
    """The body of ``bind``: names, joins, policies; the BoundQuery."""
    if isinstance(parsed.tree, exp.Select):
        tree = normalize.inline_subqueries(parsed.tree, columns_of(federation))
        if tree is not parsed.tree and (parsed.tree.args.get("with_") or tree.find(
                exp.Subquery) is not None or parsed.tree.find(exp.Subquery) is not None):
            limits.check_tree(tree, inlined=True)
    else:
        tree = parsed.tree
    select = checks.check_statement(tree)
    select = scalars.inline_scalar_subqueries(select)
    select, semis = take_semi_joins(select)
    checks.check_constructs(select)
    scope = Scope(bind_tables(select, federation, catalog), catalog)
    where_node = select.args.get("where")
    raw = checks.split_and(where_node.this) if where_node is not None else []
    for term in raw:
        checks.check_no_aggregate(term, "WHERE")
    joins, raw = bind_joins(select, scope, raw)
    scope = Scope(outer_joins(select, link_dimensions(scope.tables, joins), joins, scope),
                  catalog)
    conjuncts: list[exp.Expression] = []
    for term in raw:
        checks.check_predicate(term, scope.resolve)
        conjuncts.append(scope.qualify(term))
    semi_tables, semi_edges, semi_conjuncts = bind_semi_joins(semis, scope, federation,
                                                               catalog)
    joins = joins + tuple(semi_edges)
    conjuncts += semi_conjuncts

    group_by = bind_group_by(select, scope)
    binder = Outputs(scope, group_by)
    binder.bind_select(select)
    having_node = select.args.get("having")
    having = None
    if having_node is not None:
        having = binder.over_outputs(having_node.this, "HAVING")
    order_by = bind_order_by(select, binder)
    where = None
    for c in conjuncts:
        where = c if where is None else exp.And(this=where, expression=c)
    return BoundQuery(
        sql=parsed.sql,
        tables=tuple(t for t in scope.tables if not t.dimension) + tuple(semi_tables),
        dimensions=tuple(t for t in scope.tables if t.dimension),
        joins=joins,
        where=where,
        conjuncts=tuple(conjuncts),
        group_by=group_by,
        outputs=binder.all_outputs(),
        having=having,
        order_by=order_by,
        limit=bind_limit(select),
        epsilon=parsed.epsilon,
        delta=parsed.delta,
    )


def _safe(bound: BoundQuery) -> BoundQuery:
    """``bound`` with every row-level expression in its safe form (see ``functions``)."""
    checker = typecheck.TypeChecker(bound)

    def interval(node: exp.Expr) -> tuple[float, float]:
        n = checker.numeric(node)
        return n.lo, n.hi

    def fix(node: exp.Expression | None) -> exp.Expression | None:
        return None if node is None else functions.safe_forms(node, interval)

    conjuncts = tuple(fix(c) for c in bound.conjuncts)  # type: ignore[misc]
    where = None
    for c in conjuncts:
        where = c if where is None else exp.And(this=where, expression=c)
    groups = tuple(replace(g, expr=fix(g.expr)) for g in bound.group_by)
    by_name = {g.name: g for g in groups}
    outputs = tuple(replace(o, expr=fix(o.expr), filter=fix(o.filter),
                            group=by_name.get(o.group.name) if o.group is not None else None)
                    for o in bound.outputs)
    tables = tuple(replace(t, filter=fix(t.filter)) for t in bound.tables)
    return replace(bound, conjuncts=conjuncts, where=where, group_by=groups,
                   outputs=outputs, tables=tables)
