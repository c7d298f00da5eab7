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

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

from sqlglot import exp

from veilql.engine.sql import checks, functions, limits, normalize, parts, typecheck
from veilql.engine.sql.bound import (
    BoundColumn,
    BoundGroup,
    BoundQuery,
    BoundTable,
    JoinEdge,
    Output,
    OutputKind,
)
from veilql.engine.sql.parse import ParsedQuery
from veilql.errors import PolicyError, QueryError, UnsupportedError
from veilql.policies.model import Federation

# party -> table -> column names the party's engine really has (from its connector). Optional:
# with it, a column that exists but is absent from the policy is reported as "not usable"
# rather than "unknown".
Catalog = Mapping[str, Mapping[str, Sequence[str]]]

__all__ = ["Catalog", "bind"]

SEMI_COLUMN = "__in"  # the 0/1 column of a semi-join's per-unit source (bound_contributions)


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


def _columns_of(federation: Federation):  # noqa: ANN202 - a normalize.ColumnsOf
    def columns_of(party: str, table: str) -> Sequence[str] | None:
        p = federation.party(_lookup(party, federation.party_names) or party)
        if p is None:
            return None
        name = _lookup(table, list(p.tables))
        return list(p.tables[name].columns) if name is not None else None

    return columns_of


def _bind(
    parsed: ParsedQuery, federation: Federation, catalog: Catalog | None
) -> BoundQuery:
    """The body of ``bind``: names, joins, policies; the BoundQuery."""
    if isinstance(parsed.tree, exp.Select):
        tree = normalize.inline_subqueries(parsed.tree, _columns_of(federation))
        if tree is not parsed.tree and (parsed.tree.args.get("with_") or tree.find(
                exp.Subquery) is not None or parsed.tree.find(exp.Subquery) is not None):
            limits.check_tree(tree, inlined=True)
    else:
        tree = parsed.tree
    select = checks.check_statement(tree)
    select, semis = _take_semi_joins(select)
    checks.check_constructs(select)
    scope = _Scope(_bind_tables(select, federation, catalog), catalog)
    where_node = select.args.get("where")
    raw = checks.split_and(where_node.this) if where_node is not None else []
    for term in raw:
        checks.check_no_aggregate(term, "WHERE")
    joins, raw = _bind_joins(select, scope, raw)
    scope = _Scope(_outer_joins(select, _link_dimensions(scope.tables, joins), joins), catalog)
    conjuncts: list[exp.Expression] = []
    for term in raw:
        checks.check_predicate(term, scope.resolve)
        conjuncts.append(scope.qualify(term))
    semi_tables, semi_edges, semi_conjuncts = _bind_semi_joins(semis, scope, federation,
                                                               catalog)
    joins = joins + tuple(semi_edges)
    conjuncts += semi_conjuncts

    group_by = _bind_group_by(select, scope)
    binder = _Outputs(scope, group_by)
    binder.bind_select(select)
    having_node = select.args.get("having")
    having = None
    if having_node is not None:
        having = binder.over_outputs(having_node.this, "HAVING")
    order_by = _bind_order_by(select, binder)
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
        limit=_bind_limit(select),
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


# ---------------------------------------------------------------- names


def _lookup(name: str, names: Sequence[str]) -> str | None:
    """``name`` as spelled in ``names``, case-insensitively (DuckDB identifiers are)."""
    lowered = name.lower()
    return next((n for n in names if n.lower() == lowered), None)


def _suggest(name: str, names: Sequence[str]) -> str | None:
    close = difflib.get_close_matches(name.lower(), [n.lower() for n in names], n=1, cutoff=0.6)
    return _lookup(close[0], names) if close else None


def _bind_tables(
    select: exp.Select, federation: Federation, catalog: Catalog | None
) -> tuple[BoundTable, ...]:
    """FROM entries in order, each ``party.table [AS alias]``."""
    from_ = select.args.get("from_")
    if from_ is None:
        raise UnsupportedError("a query needs FROM party.table", checks.SUPPORTED_SQL)
    refs = [from_.this] + [j.this for j in select.args.get("joins") or []]
    tables: list[BoundTable] = []
    for ref in refs:
        if not isinstance(ref, exp.Table) or not isinstance(ref.this, exp.Identifier):
            raise UnsupportedError(
                f"{ref.sql(dialect='duckdb')} is not supported in FROM",
                "FROM takes tables written party.table",
            )
        bound = _bind_table(ref, federation, catalog)
        for other in tables:
            if (other.party, other.table) == (bound.party, bound.table):
                raise UnsupportedError(
                    f"self-join of {bound.party}.{bound.table} is not supported",
                    "each table may appear once in FROM",
                )
            if other.alias.lower() == bound.alias.lower():
                raise UnsupportedError(
                    f"alias {bound.alias!r} is used for two tables",
                    "give each table its own alias, e.g. FROM a.t AS x JOIN b.t AS y",
                )
        tables.append(bound)
    return tuple(tables)


def _bind_table(ref: exp.Table, federation: Federation, catalog: Catalog | None) -> BoundTable:
    """Resolve one ``party.table`` reference."""
    name = ref.name
    parties = federation.party_names
    if ref.args.get("catalog"):
        raise UnsupportedError(
            f"table {ref.sql(dialect='duckdb')} has too many parts",
            "write tables as party.table, e.g. bank.loans",
        )
    if not ref.db:
        owners = [
            f"{p.name}.{t}" for p in federation.parties for t in p.tables
            if t.lower() == name.lower()
        ]
        hint = f"did you mean {' or '.join(owners)}?" if owners else (
            "known tables: " + ", ".join(
                f"{p.name}.{t}" for p in federation.parties for t in p.tables))
        raise UnsupportedError(f"table {name!r} must be written party.table", hint)
    party_name = _lookup(ref.db, parties)
    if party_name is None:
        raise PolicyError(f"unknown party {ref.db!r} in {ref.db}.{name}",
                          "known parties: " + ", ".join(parties))
    party = federation.party(party_name)
    assert party is not None
    table_name = _lookup(name, list(party.tables))
    if table_name is None:
        known = ", ".join(f"{party.name}.{t}" for t in party.tables) or "none"
        hidden = catalog is not None and _lookup(name, list(catalog.get(party.name, {})))
        if hidden:
            raise PolicyError(
                f"table {party.name}.{name} is not usable: it is not in {party.name}'s policy",
                f"add [tables.{name}] to policies/{party.name}.toml; usable tables: {known}",
            )
        raise PolicyError(f"unknown table {party.name}.{name}", f"known tables of "
                          f"{party.name}: {known}")
    table_alias = ref.args.get("alias")
    if table_alias is not None and table_alias.columns:
        raise UnsupportedError(
            f"column aliases on table {party.name}.{table_name} are not supported",
            "alias the table only, e.g. FROM bank.loans AS l",
        )
    alias = ref.alias or table_name
    return BoundTable(alias=alias, party=party.name, table=table_name,
                      policy=party.tables[table_name])


class _Scope:
    """The FROM entries of a query, resolving column references against their policies."""

    def __init__(self, tables: tuple[BoundTable, ...], catalog: Catalog | None) -> None:
        self.tables = tables
        self.catalog = catalog
        self.units = {t.alias: t.unit for t in tables}

    def table(self, alias: str) -> BoundTable:
        """The FROM entry called ``alias`` (KeyError when there is none)."""
        for t in self.tables:
            if t.alias == alias:
                return t
        raise KeyError(alias)

    def party_of(self, alias: str) -> str:
        """The party owning FROM entry ``alias``."""
        return self.table(alias).party

    def resolve(self, ref: exp.Column) -> BoundColumn:
        """The column ``ref`` names; refuse unknown, ambiguous and unusable columns."""
        text = ref.sql(dialect="duckdb")
        if ref.args.get("catalog"):
            raise UnsupportedError(f"column {text} has too many parts",
                                   "write alias.column or party.table.column")
        candidates = self._candidates(ref)
        matches = [
            (t, found) for t in candidates
            if (found := _lookup(ref.name, list(t.policy.columns))) is not None
        ]
        if len(matches) > 1:
            options = " or ".join(f"{t.alias}.{c}" for t, c in matches)
            raise PolicyError(f"column {text} is ambiguous", f"qualify it: {options}")
        if matches:
            table, column = matches[0]
            return BoundColumn(alias=table.alias, party=table.party, table=table.table,
                               column=column, policy=table.policy.columns[column])
        raise self._missing(ref, candidates)

    def _candidates(self, ref: exp.Column) -> list[BoundTable]:
        """FROM entries a (possibly qualified) column reference may belong to."""
        if ref.db:
            found = [t for t in self.tables
                     if t.party.lower() == ref.db.lower() and t.table.lower() == ref.table.lower()]
            if not found:
                raise PolicyError(f"table {ref.db}.{ref.table} of column "
                                  f"{ref.sql(dialect='duckdb')} is not in FROM",
                                  "add the table to FROM (joined on its privacy unit)")
            return found
        if ref.table:
            found = [t for t in self.tables if t.alias.lower() == ref.table.lower()]
            if found:
                return found
            named = [t for t in self.tables if t.table.lower() == ref.table.lower()]
            if named:
                raise PolicyError(
                    f"table {named[0].party}.{named[0].table} is aliased {named[0].alias!r}; "
                    f"{ref.sql(dialect='duckdb')} does not name it",
                    f"write {named[0].alias}.{ref.name}",
                )
            raise PolicyError(f"unknown table or alias {ref.table!r} in "
                              f"{ref.sql(dialect='duckdb')}",
                              "aliases in FROM: " + ", ".join(t.alias for t in self.tables))
        return list(self.tables)

    def _missing(self, ref: exp.Column, candidates: list[BoundTable]) -> PolicyError:
        """The error for a column no candidate table's policy lists."""
        text = ref.sql(dialect="duckdb")
        if self.catalog is not None:
            for t in candidates:
                real = self.catalog.get(t.party, {}).get(t.table, ())
                if _lookup(ref.name, list(real)):
                    return PolicyError(
                        f"column {t.alias}.{ref.name} ({t.party}.{t.table}) is not usable: it is "
                        f"not in {t.party}'s policy",
                        f"add it to policies/{t.party}.toml under [tables.{t.table}.columns] "
                        "with a role (key, group or value)",
                    )
        usable = [f"{t.alias}.{c}" for t in candidates for c in t.policy.columns]
        for t in candidates:
            for col in t.policy.columns.values():
                if col.values and any(str(v).lower() == ref.name.lower() for v in col.values):
                    return PolicyError(
                        f"unknown column {text}",
                        f"to compare with the value {ref.name!r}, quote it: "
                        f"{t.alias}.{col.name} = '{ref.name}'",
                    )
        suggestion = _suggest(ref.name, [c for t in candidates for c in t.policy.columns])
        hint = f"did you mean {suggestion}?" if suggestion else "usable columns: " + ", ".join(
            usable)
        where = "" if self.catalog is not None else " (or not in its party's policy)"
        return PolicyError(f"unknown column {text}{where}", hint)

    def qualify(self, node: exp.Expression) -> exp.Expression:
        """A copy of ``node`` with every column rewritten to ``alias.column``."""

        def rewrite(n: exp.Expr) -> exp.Expr:
            return self.resolve(n).expr() if isinstance(n, exp.Column) else n

        return node.copy().transform(rewrite)


# ---------------------------------------------------------------- joins


def _bind_joins(
    select: exp.Select, scope: _Scope, where: list[exp.Expression]
) -> tuple[tuple[JoinEdge, ...], list[exp.Expression]]:
    """Inner joins on the privacy-unit keys, forming one connected join graph.

    Returns the edges and the conditions left for WHERE: ``where`` without the unit
    equalities that join tables (comma joins), plus the conditions of ON that are not unit
    equalities (an inner join's ON is a WHERE).
    """
    edges: list[JoinEdge] = []
    rest: list[exp.Expression] = []
    loose: list[str] = []  # aliases joined without a condition (comma or CROSS JOIN)
    non_unit: dict[str, PolicyError] = {}  # alias -> why its ON joins no unit
    for join in select.args.get("joins") or []:
        right = join.this.sql(dialect="duckdb")
        alias = join.this.alias_or_name
        kind = (join.args.get("kind") or "").upper()
        side = (join.args.get("side") or "").upper()
        method = (join.args.get("method") or "").upper()
        outer = side in _OUTER and kind in ("", "OUTER") and not method
        if (side or method or kind not in ("", "INNER", "CROSS")) and not outer:
            name = " ".join(p for p in (method, side, kind) if p)
            raise UnsupportedError(
                f"{name} JOIN is not supported (joining {right})",
                "use an inner JOIN ... ON x.unit = y.unit on the privacy-unit keys",
            )
        using = join.args.get("using")
        on = join.args.get("on")
        if outer and on is not None:
            for term in checks.split_and(on):
                try:
                    edge = _join_edge(term, scope)
                except _NotUnit as other:
                    raise UnsupportedError(
                        f"{side} JOIN ... ON {term.sql(dialect='duckdb')}: the ON of an outer "
                        "join takes only the privacy-unit equality",
                        "write the other conditions in WHERE (they then filter the joined "
                        "rows) or in an aggregate's FILTER") from (other.error or None)
                if edge.dimension:
                    raise UnsupportedError(f"{side} JOIN of a dimension table is not supported",
                                           "join dimension tables with an inner JOIN")
                edges.append(edge)
            continue
        if outer and not using:
            raise UnsupportedError(f"{side} JOIN without ON is not supported ({right})",
                                   f"write {side} JOIN ... ON x.unit = y.unit")
        if using:
            if kind == "CROSS":
                raise UnsupportedError(f"CROSS JOIN ... USING is not supported ({right})",
                                       "write JOIN ... USING (unit)")
            edges += _using_edges(join, scope)
            continue
        if on is None:
            loose.append(alias)
            continue
        if kind == "CROSS":
            raise UnsupportedError(f"CROSS JOIN ... ON is not supported ({right})",
                                   "write JOIN ... ON x.unit = y.unit")
        checks.check_no_aggregate(on, "JOIN ... ON")
        for term in checks.split_and(on):
            try:
                edges.append(_join_edge(term, scope))
            except _NotUnit as other:
                if other.error is not None:
                    non_unit.setdefault(alias.lower(), other.error)
                rest.append(term)
    for term in where:
        try:
            edges.append(_join_edge(term, scope, strict=False))
        except _NotUnit:
            rest.append(term)
    _check_connected(scope.tables, edges, loose, non_unit)
    return tuple(edges), rest


class _NotUnit(Exception):
    """A condition of ON or WHERE that is not an equality of two tables' units."""

    def __init__(self, error: PolicyError | None = None) -> None:
        super().__init__()
        self.error = error


_OUTER = ("LEFT", "RIGHT", "FULL")


def _outer_joins(select: exp.Select, tables: tuple[BoundTable, ...],
                 edges: tuple[JoinEdge, ...]) -> tuple[BoundTable, ...]:
    """Mark the tables of LEFT, RIGHT and FULL joins (``BoundTable.outer``).

    They run inside one party's local SQL, where the outer join is exact: a LEFT JOIN joins a
    table to an earlier table of the same party on the unit (the rows before it are kept
    whatever the others hold, so it commutes with the joins on the same unit); RIGHT and FULL
    joins, which keep rows the tables before them lack, are supported between the only two
    tables of a query at one party. Across parties an outer join is refused: the secure join
    keeps matching people only.
    """
    kinds: dict[str, str] = {}
    for join in select.args.get("joins") or []:
        side = (join.args.get("side") or "").upper()
        if side in _OUTER and not (join.args.get("method") or ""):
            kinds[join.this.alias_or_name.lower()] = side
    if not kinds:
        return tables
    by_alias = {t.alias.lower(): t for t in tables}
    for alias, side in kinds.items():
        t = by_alias[alias]
        mine = [e for e in edges if t.alias in (e.left, e.right) and not e.dimension]
        earlier = {x.alias for x in tables[:tables.index(t)]}
        others = {e.left if e.right == t.alias else e.right for e in mine} & earlier
        if not others:
            raise UnsupportedError(f"{side} JOIN of {t.party}.{t.table} must join it to an "
                                   "earlier table on the privacy unit",
                                   f"write {side} JOIN ... ON <earlier>.<unit> = "
                                   f"{t.alias}.{t.unit}")
        parties = {by_alias[o.lower()].party for o in others} | {t.party}
        if len(parties) > 1:
            raise UnsupportedError(
                f"{side} JOIN of {t.party}.{t.table} with another party's table "
                f"({', '.join(sorted(parties - {t.party}))}) is not supported: the secure join "
                "keeps the people both parties hold, so unmatched people cannot be seen",
                f"use an inner JOIN, or {side} JOIN tables of one party ({t.party}'s own); "
                "count the unmatched people as COUNT(*) of one party minus that of the join")
        if side != "LEFT" and (len(tables) != 2 or len({x.party for x in tables}) != 1):
            raise UnsupportedError(
                f"{side} JOIN is supported between the only two tables of a query over one "
                "party's tables",
                "write it as a LEFT JOIN with the tables swapped, or join one party's two "
                "tables only")
    return tuple(replace(t, outer=kinds.get(t.alias.lower(), "")) for t in tables)


def _optional(t: BoundTable, tables: tuple[BoundTable, ...]) -> bool:
    """True when ``t``'s columns can be NULL for a joined row (the NULL side of an outer
    join)."""
    if t.outer in ("LEFT", "FULL"):
        return True
    later = tables[tables.index(t) + 1:] if t in tables else ()
    return any(x.outer in ("RIGHT", "FULL") for x in later)


def _using_edges(join: exp.Join, scope: _Scope) -> list[JoinEdge]:
    """``JOIN t USING (unit)``: the table's unit equals the same column of an earlier table."""
    right = next(t for t in scope.tables if t.alias.lower() == join.this.alias_or_name.lower())
    out = []
    for ident in join.args["using"]:
        name = ident.name
        if name.lower() != right.unit.lower():
            raise PolicyError(
                f"JOIN ... USING ({name}): {name} is not the privacy unit of "
                f"{right.party}.{right.table} ({right.unit})",
                "join tables only on their privacy units, e.g. USING (customer_id)")
        earlier = [t for t in scope.tables[:scope.tables.index(right)]
                   if t.unit.lower() == name.lower()]
        if not earlier:
            raise PolicyError(
                f"JOIN ... USING ({name}): no earlier table has {name} as its privacy unit",
                "write JOIN ... ON x.unit = y.unit")
        out.append(JoinEdge(left=earlier[0].alias, right=right.alias,
                            left_column=earlier[0].unit, right_column=right.unit))
    return out


def _join_edge(term: exp.Expr, scope: _Scope, *, strict: bool = True) -> JoinEdge:
    """One ``x.unit = y.unit`` equality (of ON, or of WHERE for comma joins).

    Raises ``_NotUnit`` for any other condition (kept as a predicate); with ``strict``, an
    equality of two columns of different tables that are not both units carries the
    refusal, in case the table is joined by nothing else.
    """
    hint = "join tables only on their privacy units, e.g. ON x.customer_id = y.customer_id; " \
        "move other conditions to WHERE"
    text = term.sql(dialect="duckdb")
    inner = term
    while isinstance(inner, exp.Paren):
        inner = inner.this
    if not (isinstance(inner, exp.EQ) and isinstance(inner.this, exp.Column)
            and isinstance(inner.expression, exp.Column)):
        raise _NotUnit()
    left, right = scope.resolve(inner.this), scope.resolve(inner.expression)
    if left.alias != right.alias and (scope.table(left.alias).dimension
                                      or scope.table(right.alias).dimension):
        return _dimension_edge(left, right, scope, text, strict=strict)
    if left.alias == right.alias:
        if strict and left.column == scope.units[left.alias]:
            raise PolicyError(f"join condition {text} compares a table with itself", hint)
        raise _NotUnit()
    for col in (left, right):
        if scope.units[col.alias] != col.column:
            if not strict:
                raise _NotUnit()
            raise _NotUnit(PolicyError(
                f"join condition {text}: {col.alias}.{col.column} is not the privacy unit of "
                f"{col.party}.{col.table} ({scope.units[col.alias]})",
                hint + "; a join on another key would let one person's rows reach any "
                "number of other people's rows, so no contribution bound would hold"))
    return JoinEdge(left=left.alias, right=right.alias, left_column=left.column,
                    right_column=right.column)


def _dimension_edge(left: BoundColumn, right: BoundColumn, scope: _Scope, text: str, *,
                    strict: bool) -> JoinEdge:
    """``fact.fk = dim.key``: a fact table's declared foreign key (``references``) joined to
    the dimension table's key column it names."""
    fact, dim = (right, left) if scope.table(left.alias).dimension else (left, right)
    hint = ("join a dimension table on the foreign key a fact table declares, e.g. ON "
            "t.merchant_id = m.merchant_id with references = \"party.merchants.merchant_id\" "
            "on t.merchant_id")
    if scope.table(fact.alias).dimension:
        raise PolicyError(f"join condition {text} joins two dimension tables, which is not "
                          "supported", hint)
    target = f"{dim.party}.{dim.table}.{dim.column}".lower()
    if (fact.policy.references or "").lower() != target or dim.policy.role != "key":
        if not strict:
            raise _NotUnit()
        declared = (f"it references {fact.policy.references}" if fact.policy.references
                    else "it declares no references")
        raise _NotUnit(PolicyError(
            f"join condition {text}: {fact.alias}.{fact.column} is not a foreign key to "
            f"{dim.party}.{dim.table}.{dim.column} ({declared})",
            hint + "; any other join to a dimension table could match one row many times"))
    return JoinEdge(left=fact.alias, right=dim.alias, left_column=fact.column,
                    right_column=dim.column, dimension=True)


def _link_dimensions(tables: tuple[BoundTable, ...],
                     edges: tuple[JoinEdge, ...]) -> tuple[BoundTable, ...]:
    """Dimension tables, each joined to one fact table: evaluated at that table's party."""
    out = []
    for t in tables:
        if not t.dimension:
            out.append(t)
            continue
        links = [e for e in edges if e.dimension and e.right == t.alias]
        if len(links) != 1:
            raise UnsupportedError(
                f"dimension table {t.party}.{t.table} ({t.alias}) is joined on "
                f"{len(links)} conditions; it must join exactly one fact table's foreign key",
                "join it once, e.g. JOIN party.merchants m ON t.merchant_id = m.merchant_id")
        e = links[0]
        fact = next(x for x in tables if x.alias == e.left)
        out.append(replace(t, party=fact.party, owner=t.party,
                           link=(e.left, e.left_column, e.right_column)))
    return tuple(out)


def _check_connected(tables: tuple[BoundTable, ...], edges: list[JoinEdge],
                     loose: list[str], non_unit: dict[str, PolicyError]) -> None:
    """Every table must be reached from the first through join edges: tables with personal
    data through unit edges, each dimension table through its foreign key."""
    facts = [t for t in tables if not t.dimension]
    if not facts:
        raise UnsupportedError(
            "a query over dimension tables only releases nothing about people",
            "join the dimension table to a table with personal data on its foreign key")
    reached = {facts[0].alias}
    changed = True
    while changed:
        changed = False
        for e in edges:
            if e.dimension and e.left not in reached:
                continue
            if (e.left in reached) != (e.right in reached):
                reached |= {e.left, e.right}
                changed = True
    for t in tables:
        if t.alias in reached:
            continue
        if t.alias.lower() in non_unit:
            raise non_unit[t.alias.lower()]
        if t.dimension:
            keys = ", ".join(c for c, p in t.policy.columns.items() if p.role == "key")
            raise PolicyError(
                f"dimension table {t.party}.{t.table} ({t.alias}) is not joined on a foreign "
                "key of a table with personal data",
                f"add ON <fact>.<column> = {t.alias}.<key> (its keys: {keys}), where the fact "
                f"table's column declares references = \"{t.party}.{t.table}.<key>\"")
        if t.alias in loose:
            raise PolicyError(
                f"table {t.party}.{t.table} ({t.alias}) is joined without a condition on its "
                "privacy unit (comma join or CROSS JOIN)",
                f"add WHERE {t.alias}.{t.unit} = <other>.<unit>, or write JOIN "
                f"{t.party}.{t.table} AS {t.alias} ON {t.alias}.{t.unit} = <other>.<unit>")
        raise PolicyError(
            f"table {t.party}.{t.table} ({t.alias}) is not joined to the others on its "
            "privacy unit",
            f"add ON {t.alias}.{t.unit} = <other>.<unit> to its JOIN",
        )


# ---------------------------------------------------------------- semi-joins

_SEMI_HINT = ("write x.unit IN (SELECT unit FROM party.table WHERE ...) or EXISTS (SELECT 1 "
              "FROM party.table t WHERE t.unit = x.unit AND ...), as a condition of WHERE "
              "joined by AND")


def _take_semi_joins(select: exp.Select) -> tuple[exp.Select, list[tuple[bool, exp.Expr]]]:
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


def _bind_semi_joins(
    semis: list[tuple[bool, exp.Expr]], scope: _Scope, federation: Federation,
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
        body = normalize.inline_subqueries(body, _columns_of(federation))
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
        table = _bind_table(ref, federation, catalog)
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
        inner = _Scope((replace(table, alias=alias),), catalog)
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


# ---------------------------------------------------------------- GROUP BY


def _default_name(node: exp.Expr) -> str:
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


def _unique(name: str, taken: set[str]) -> str:
    """``name``, or ``name_1``, ``name_2``... if already taken (DuckDB's rule)."""
    if name.lower() not in taken:
        return name
    n = 1
    while f"{name}_{n}".lower() in taken:
        n += 1
    return f"{name}_{n}"


def _select_items(select: exp.Select) -> list[tuple[str | None, exp.Expr]]:
    out = []
    for item in select.expressions:
        alias = item.alias if isinstance(item, exp.Alias) else None
        node = item.this if isinstance(item, exp.Alias) else item
        while isinstance(node, exp.Paren):
            node = node.this
        out.append((alias, node))
    return out


def _bind_group_by(select: exp.Select, scope: _Scope) -> tuple[BoundGroup, ...]:
    """GROUP BY items: group columns, or expressions over one party's columns (also by the
    alias or the position of a SELECT item)."""
    group = select.args.get("group")
    if group is None:
        return ()
    items = _select_items(select)
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
        g = _bind_group(inner, scope)
        key = g.expr.sql(dialect="duckdb")
        if key in seen:
            continue
        seen.add(key)
        if named is None:  # the key is also selected with an alias: it takes that name
            named = next((a for a, n in items if a and _same_expr(n, g.expr, scope)), None)
        name = _unique(named or g.name, names)
        names.add(name.lower())
        out.append(replace(g, name=name))
    return tuple(out)


def _same_expr(node: exp.Expr, qualified: exp.Expression, scope: _Scope) -> bool:
    """True when the SELECT item ``node`` is the qualified expression ``qualified``."""
    if node.find(exp.AggFunc) is not None:
        return False
    try:
        return scope.qualify(node).sql(dialect="duckdb") == qualified.sql(dialect="duckdb")
    except PolicyError:
        return False


def _bind_group(node: exp.Expr, scope: _Scope) -> BoundGroup:
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
        return BoundGroup(col.column, col.expr(), col.party, col, col.policy.values)
    cols = functions.check_roles(node, scope.resolve, context="group", where="GROUP BY")
    text = node.sql(dialect="duckdb")
    parties = {c.party for c in cols}
    if not cols:
        raise UnsupportedError(f"GROUP BY {text} reads no column", "name a column")
    if len(parties) > 1:
        raise UnsupportedError(
            f"GROUP BY {text} reads columns of several parties ({', '.join(sorted(parties))})",
            "group by an expression over one party's columns, one GROUP BY item per party")
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
    return BoundGroup(_default_name(node), expr, cols[0].party, column, domain)


# ---------------------------------------------------------------- SELECT

Signature = tuple[str, str]


class _Outputs:
    """SELECT items as outputs; aggregates that only expressions, HAVING or ORDER BY read
    become hidden outputs."""

    def __init__(self, scope: _Scope, group_by: tuple[BoundGroup, ...]) -> None:
        self.scope = scope
        self.group_by = group_by
        self.visible: list[Output] = []
        self.hidden: list[Output] = []
        self.signatures: dict[Signature, str] = {}
        self.taken: set[str] = set()

    def all_outputs(self) -> tuple[Output, ...]:
        """Visible outputs in SELECT order, then the hidden ones."""
        return tuple(self.visible + self.hidden)

    def bind_select(self, select: exp.Select) -> None:
        """Every SELECT item, in order. Plain aggregates and group columns are bound first,
        so that an expression over aggregates reads the selected ones where it can (and a
        hidden aggregate only for the others)."""
        items = _select_items(select)
        explicit = {a.lower() for a, _ in items if a}
        outputs: list[tuple[Output, Signature | None] | None] = []
        for _alias, node in items:
            later = not _is_aggregate(node) and node.find(exp.AggFunc) is not None
            outputs.append(None if later else self._item(node))
        names = []
        for (alias, node), done in zip(items, outputs, strict=True):
            default = done[0].name if done is not None else _default_name(node)
            name = alias or _unique(default, self.taken | explicit)
            if name.lower() in self.taken:
                raise UnsupportedError(f"output name {name!r} is used twice",
                                       "give each SELECT item its own alias")
            self.taken.add(name.lower())
            names.append(name)
            if done is not None and done[1] is not None:
                self.signatures.setdefault(done[1], name)
        for i, ((_alias, node), done) in enumerate(zip(items, outputs, strict=True)):
            if done is None:
                done = (Output(names[i], "expr", post=self._post(node, "SELECT")), None)
            self.visible.append(replace(done[0], name=names[i]))
        if not any(o.kind not in ("group", "expr") for o in self.visible + self.hidden):
            raise UnsupportedError(
                "a query must release at least one aggregate (COUNT, SUM or AVG)",
                "add e.g. COUNT(*) to SELECT; VeilQL releases only noisy aggregates",
            )

    def _item(self, node: exp.Expr) -> tuple[Output, Signature | None]:
        """One SELECT item (without its alias) as an Output with a default name."""
        if _is_aggregate(node):
            return _bind_aggregate(node, self.scope)
        if not list(node.find_all(exp.Column)):
            text = node.sql(dialect="duckdb")
            if not isinstance(node, exp.Literal | exp.Boolean | exp.Null | exp.Neg | exp.Add
                              | exp.Sub | exp.Mul | exp.Div | exp.Cast):
                raise UnsupportedError(f"SELECT item {text} is not a group column or an "
                                       "aggregate", checks.SUPPORTED_SQL)
            self._check_post(node, "SELECT")
            return Output(_default_name(node), "expr", post=node.copy()), None
        group = self._group_of(node)
        return (Output(group.name if group.column is None else group.column.column, "group",
                       column=group.column, group=group),
                ("group", group.expr.sql(dialect="duckdb")))

    def _group_of(self, node: exp.Expr) -> BoundGroup:
        """The GROUP BY item a non-aggregate SELECT item (or HAVING term) names."""
        if isinstance(node, exp.Column):
            col = self.scope.resolve(node)
            if col.policy.role == "key":
                raise checks.refuse_key(col, "SELECT")
            for g in self.group_by:
                if g.column == col:
                    return g
            if col.policy.role == "value":
                raise PolicyError(
                    f"value column {col.alias}.{col.column} cannot be selected as is",
                    f"aggregate it: SUM({col.alias}.{col.column}) or AVG({col.alias}."
                    f"{col.column})",
                )
            raise UnsupportedError(
                f"column {col.alias}.{col.column} must appear in GROUP BY",
                f"add GROUP BY {col.alias}.{col.column}",
            )
        functions.check_roles(node, self.scope.resolve, context="group", where="SELECT")
        text = self.scope.qualify(node).sql(dialect="duckdb")
        for g in self.group_by:
            if g.expr.sql(dialect="duckdb") == text:
                return g
        raise UnsupportedError(f"SELECT item {node.sql(dialect='duckdb')} must appear in "
                               "GROUP BY", f"add GROUP BY {node.sql(dialect='duckdb')}")

    def aggregate_ref(self, node: exp.Expr) -> exp.Column:
        """A reference to the output releasing aggregate ``node`` (hidden if new)."""
        output, signature = _bind_aggregate(node, self.scope)
        assert signature is not None
        found = self.signatures.get(signature)
        if found is None:
            found = _unique("__" + output.name, self.taken)
            self.taken.add(found.lower())
            self.hidden.append(replace(output, name=found, hidden=True))
            self.signatures[signature] = found
        return exp.column(found)

    def _post(self, node: exp.Expr, clause: str) -> exp.Expression:
        """An expression over aggregates as one over output names (post-processing)."""
        self._check_post(node, clause)

        def refer(n: exp.Expr) -> exp.Expr:
            if _is_aggregate(n):
                return self.aggregate_ref(n)
            if isinstance(n, exp.Column):
                raise UnsupportedError(
                    f"{clause} item {node.sql(dialect='duckdb')} combines the column "
                    f"{n.sql(dialect='duckdb')} with aggregates",
                    "an expression over released values may use aggregates and literals; "
                    "select group columns on their own")
            return n

        return node.copy().transform(refer)

    def _check_post(self, node: exp.Expr, clause: str) -> None:
        for n in node.walk():
            if _is_aggregate(n):
                continue
            if any(isinstance(a, exp.AggFunc | exp.Filter) for a in _ancestors(n, node)):
                continue
            if isinstance(n, exp.AggFunc | exp.Filter):
                continue
            if not isinstance(n, (*functions.POST_EXPRESSIONS, exp.Column, exp.Identifier)):
                raise UnsupportedError(
                    f"{n.sql(dialect='duckdb')} is not supported in an expression over "
                    f"released values ({clause})",
                    "use aggregates, literals, + - * /, ROUND, ABS, FLOOR, CEIL, LEAST, "
                    "GREATEST, COALESCE and NULLIF")

    def over_outputs(self, node: exp.Expression, clause: str) -> exp.Expression:
        """Rewrite a HAVING / ORDER BY expression into one over output names only."""
        names = {o.name.lower(): o.name for o in self.visible}

        def refer(n: exp.Expr) -> exp.Expr:
            if _is_aggregate(n):
                return self.aggregate_ref(n)
            if isinstance(n, exp.Column):
                if not n.table and n.name.lower() in names:
                    return exp.column(names[n.name.lower()])
                col = self.scope.resolve(n)
                found = self.signatures.get(("group", col.expr().sql(dialect="duckdb")))
                if found is None:
                    raise UnsupportedError(
                        f"{clause} term {n.sql(dialect='duckdb')} is not a SELECT output",
                        f"{clause} acts on released values: add it to SELECT",
                    )
                return exp.column(found)
            return n

        for n in node.walk():
            if _is_aggregate(n) or any(_is_aggregate(a) for a in _ancestors(n, node)):
                continue
            if not isinstance(n, (*functions.POST_EXPRESSIONS, exp.Column, exp.Identifier,
                                  exp.In, exp.Between, exp.And, exp.Or, exp.Not,
                                  exp.EQ, exp.NEQ, exp.LT, exp.LTE, exp.GT, exp.GTE)):
                raise UnsupportedError(f"{n.sql(dialect='duckdb')} is not supported in "
                                       f"{clause}",
                                       "use outputs, literals, comparisons and arithmetic")
        return node.copy().transform(refer)


def _ancestors(node: exp.Expr, root: exp.Expr) -> list[exp.Expr]:
    out = []
    p = node.parent
    while p is not None and node is not root:
        out.append(p)
        if p is root:
            break
        p = p.parent
    return out


def _is_aggregate(node: exp.Expr) -> bool:
    if isinstance(node, exp.Filter):
        node = node.this
    return isinstance(node, checks.AGGREGATES) or checks.is_var(node) or (
        isinstance(node, exp.WithinGroup)
        and isinstance(node.this, exp.PercentileCont | exp.PercentileDisc))


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


def _statistic(node: exp.Expr) -> tuple[str, str, float | None, exp.Expr] | None:
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


def _bind_aggregate(node: exp.Expr, scope: _Scope) -> tuple[Output, Signature]:
    """COUNT / SUM / AVG (with FILTER) as an Output with a default name, and its signature."""
    cond = None
    if isinstance(node, exp.Filter):
        where = node.expression
        cond_node = where.this if isinstance(where, exp.Where) else where
        checks.check_no_aggregate(cond_node, "FILTER (WHERE ...)")
        checks.check_predicate(cond_node, scope.resolve, "FILTER (WHERE ...)")
        cond = scope.qualify(cond_node)
        node = node.this
    if isinstance(node, exp.Count):
        return _bind_count(node, cond, scope)
    statistic = _statistic(node)
    if statistic is not None:
        return _bind_statistic(statistic, cond, scope)
    if not isinstance(node, exp.Sum | exp.Avg):
        raise UnsupportedError(f"aggregate {node.sql_name()} is not supported yet",
                               checks.SUPPORTED_SQL)
    kind: OutputKind = "sum" if isinstance(node, exp.Sum) else "avg"
    func = kind.upper()
    arg = node.this
    while isinstance(arg, exp.Paren):
        arg = arg.this
    inner = node.this
    if functions.is_condition(arg):  # SUM(a > 0): the rows where it holds
        arg = exp.Case(ifs=[exp.If(this=arg.copy(), true=exp.Literal.number(1)),
                            exp.If(this=exp.Not(this=exp.Paren(this=arg.copy())),
                                   true=exp.Literal.number(0))])
    cols = functions.check_roles(arg, scope.resolve, context="value", where=func)
    for col in cols:
        if col.policy.role == "value" and col.policy.bounds is None:
            raise PolicyError(
                f"value column {col.alias}.{col.column} has no bounds, so {func} cannot "
                "clamp it",
                f"add bounds = [low, high] to {col.column} in policies/{col.party}.toml",
            )
    expr = scope.qualify(arg)
    if cond is not None:
        expr = exp.Case(ifs=[exp.If(this=cond, true=expr)])
    bounds = _bounds(expr, scope, func)
    _check_factors(expr, scope, func)
    plain = inner
    while isinstance(plain, exp.Paren):
        plain = plain.this
    name = f"{kind}_{plain.name}" if isinstance(plain, exp.Column) else kind
    return Output(name, kind, expr=expr, bounds=bounds), (kind, expr.sql(dialect="duckdb"))


def _bind_statistic(statistic: tuple[str, str, float | None, exp.Expr],
                    cond: exp.Expression | None, scope: _Scope) -> tuple[Output, Signature]:
    """A variance (from noisy moments) or a quantile (from a noisy histogram) of one
    party's expression of value columns, with an optional FILTER condition."""
    func, stat, q, arg = statistic
    word = func.upper()
    while isinstance(arg, exp.Paren):
        arg = arg.this
    if isinstance(arg, exp.Star | exp.Distinct):
        raise UnsupportedError(f"{word}({arg.sql(dialect='duckdb')}) is not supported",
                               f"write {word}(x) of a value column x")
    if functions.is_condition(arg):
        arg = exp.Case(ifs=[exp.If(this=arg.copy(), true=exp.Literal.number(1)),
                            exp.If(this=exp.Not(this=exp.Paren(this=arg.copy())),
                                   true=exp.Literal.number(0))])
    cols = functions.check_roles(arg, scope.resolve, context="value", where=word)
    if not cols:
        raise UnsupportedError(f"{word}({arg.sql(dialect='duckdb')}) reads no column",
                               f"write {word}(x) of a value column x")
    for col in cols:
        if col.policy.role == "value" and col.policy.bounds is None:
            raise PolicyError(
                f"value column {col.alias}.{col.column} has no bounds, so {word} cannot "
                "bucket or clamp it",
                f"add bounds = [low, high] to {col.column} in policies/{col.party}.toml")
    parties = {c.party for c in cols}
    if len(parties) > 1:
        what = ("its squares would multiply columns of different parties" if q is None else
                "its histogram's buckets would compare columns of different parties")
        raise UnsupportedError(
            f"{word}({arg.sql(dialect='duckdb')}) reads columns of several parties "
            f"({', '.join(sorted(parties))}): {what}, which is not supported",
            f"take {word} of one party's expression; conditions on other parties go in "
            "WHERE or FILTER (WHERE ...)")
    expr = scope.qualify(arg)
    bounds = _bounds(expr, scope, word)
    folded = expr if cond is None else exp.Case(ifs=[exp.If(this=cond, true=expr)])
    _check_factors(folded, scope, word)

    def digits(c: exp.Column) -> int:
        return scope.resolve(c).policy.decimals

    decimals = functions.value_decimals(expr, digits)
    plain = arg
    name = f"{func}_{plain.name}" if isinstance(plain, exp.Column) else func
    kind: OutputKind = "var" if q is None else "quantile"
    signature = (kind, "|".join((stat, repr(q), expr.sql(dialect="duckdb"),
                                 cond.sql(dialect="duckdb") if cond is not None else "")))
    return (Output(name, kind, expr=expr, bounds=bounds, stat=stat, q=q, filter=cond,
                   decimals=decimals), signature)


def _bind_count(node: exp.Count, cond: exp.Expression | None,
                scope: _Scope) -> tuple[Output, Signature]:
    """COUNT(*), COUNT(DISTINCT unit), COUNT(x) (rows where x is not NULL), with FILTER."""
    arg = node.this
    while isinstance(arg, exp.Paren):
        arg = arg.this
    if isinstance(arg, exp.Star | exp.Distinct):
        unit = checks.check_count(node, scope.resolve, scope.units)
        if unit is not None and _optional(scope.table(unit.alias), scope.tables):
            raise UnsupportedError(
                f"COUNT(DISTINCT {unit.alias}.{unit.column}) of the NULL side of an outer join "
                "is not supported", "count the people of the preserved side, or COUNT("
                f"{unit.alias}.{unit.column}) for the joined rows that have one")
        kind: OutputKind = "count" if unit is None else "count_distinct"
        name = "count" if unit is None else "count_distinct"
        if cond is None:
            what = "*" if unit is None else f"{unit.alias}.{unit.column}"
            return Output(name, kind, column=unit), (kind, what)
        expr = _indicator(cond)
        _check_factors(expr, scope, "COUNT")
        return (Output(name, kind, column=unit, expr=expr, bounds=(0.0, 1.0)),
                (kind, expr.sql(dialect="duckdb")))
    if isinstance(arg, exp.Literal | exp.Boolean):
        test = None
    elif isinstance(arg, exp.Column) and scope.resolve(arg).policy.role == "key":
        test = None  # units are never NULL: COUNT(unit) counts rows
    else:
        functions.check_roles(arg, scope.resolve, context="operand", where="COUNT")
        test = exp.Not(this=exp.Is(this=scope.qualify(arg), expression=exp.Null()))
        parties = {c.party for c in (scope.resolve(c) for c in arg.find_all(exp.Column))}
        if len(parties) > 1:
            raise UnsupportedError(
                f"COUNT({arg.sql(dialect='duckdb')}) over columns of several parties is not "
                "supported", "count each party's column: COUNT(a.x) FILTER (WHERE b.y IS "
                "NOT NULL)")
    name = f"count_{arg.name}" if isinstance(arg, exp.Column) else "count"
    if test is None and cond is None:
        return Output("count", "count"), ("count", "*")
    full = test if cond is None else cond if test is None else exp.And(
        this=exp.Paren(this=cond), expression=test)
    expr = _indicator(full)
    _check_factors(expr, scope, "COUNT")
    return (Output(name, "count", expr=expr, bounds=(0.0, 1.0)),
            ("count", expr.sql(dialect="duckdb")))


def _indicator(cond: exp.Expression) -> exp.Expression:
    """``CASE WHEN cond THEN 1 ELSE 0 END``."""
    return exp.Case(ifs=[exp.If(this=cond.copy(), true=exp.Literal.number(1))],
                    default=exp.Literal.number(0))


def _bounds(expr: exp.Expression, scope: _Scope, func: str) -> tuple[float, float]:
    """The clamping interval of an aggregated value, by interval arithmetic."""
    inner = expr
    while isinstance(inner, exp.Paren):
        inner = inner.this
    if isinstance(inner, exp.Column):
        col = scope.resolve(inner)
        assert col.policy.bounds is not None
        return float(col.policy.bounds[0]), float(col.policy.bounds[1])
    num = typecheck.TypeChecker(scope).numeric(expr)
    if not (math.isfinite(num.lo) and math.isfinite(num.hi)):
        raise UnsupportedError(
            f"the argument of {func} has no bounds: {expr.sql(dialect='duckdb')}",
            "aggregate value columns (their declared bounds clamp them) and numbers")
    return float(num.lo), float(num.hi)


def _check_factors(expr: exp.Expression, scope: _Scope, func: str) -> None:
    """The argument must be linear across parties, or a product of one factor per party."""
    def party_of(alias: str) -> str:
        return scope.party_of(alias)

    if parts.is_linear(expr, party_of):
        return
    try:
        parts.split_product(expr, party_of)
    except UnsupportedError as error:
        raise UnsupportedError(f"{func}: {error.message}", error.hint) from None


# ---------------------------------------------------------------- ORDER BY, LIMIT


def _bind_order_by(select: exp.Select, binder: _Outputs
                   ) -> tuple[tuple[exp.Expression, bool], ...]:
    """ORDER BY terms over output names (a position ``ORDER BY 2`` names an output too)."""
    order = select.args.get("order")
    if order is None:
        return ()
    visible = binder.visible
    terms: list[tuple[exp.Expression, bool]] = []
    for item in order.expressions:
        this = item.this if isinstance(item, exp.Ordered) else item
        desc = bool(item.args.get("desc")) if isinstance(item, exp.Ordered) else False
        if isinstance(this, exp.Literal) and not this.is_string:
            if not this.is_int or not 1 <= int(this.this) <= len(visible):
                raise UnsupportedError(
                    f"ORDER BY {this.sql()} is not an output position (1..{len(visible)})",
                    "order by an output name or its position in SELECT",
                )
            terms.append((exp.column(visible[int(this.this) - 1].name), desc))
            continue
        terms.append((binder.over_outputs(this, "ORDER BY"), desc))
    return tuple(terms)


def _bind_limit(select: exp.Select) -> int | None:
    """LIMIT n with a non-negative integer literal."""
    limit = select.args.get("limit")
    return None if limit is None else checks.limit_value(limit)
