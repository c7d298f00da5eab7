"""Joins: inner joins on the privacy unit, dimension tables on declared foreign keys, and
outer joins inside one party.

``bind_joins`` reads ON, USING, comma and CROSS joins into ``JoinEdge``s (a unit equality of
WHERE joins comma-joined tables; other ON conditions go to WHERE) and checks that every table
is reached from the first; ``link_dimensions`` places each dimension table at the party of the
fact table it joins; ``outer_joins`` marks LEFT/RIGHT/FULL joins and refuses those that would
need unmatched people across parties.
"""

from __future__ import annotations

from dataclasses import replace

from sqlglot import exp

from veilql.engine.sql import checks
from veilql.engine.sql.bound import (
    BoundColumn,
    BoundTable,
    JoinEdge,
)
from veilql.engine.sql.scope import Scope
from veilql.errors import PolicyError, UnsupportedError


def bind_joins(
    select: exp.Select, scope: Scope, where: list[exp.Expression]
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
        outer = side in OUTER and kind in ("", "OUTER") and not method
        if (side or method or kind not in ("", "INNER", "CROSS")) and not outer:
            name = " ".join(p for p in (method, side, kind) if p)
            raise UnsupportedError(
                f"{name} JOIN is not supported (joining {right})",
                "use an inner JOIN ... ON x.unit = y.unit on the privacy-unit keys",
            )
        using = join.args.get("using")
        on = join.args.get("on")
        if outer and on is not None:
            checks.check_no_aggregate(on, "JOIN ... ON")
            for term in checks.split_and(on):
                try:
                    edge = _join_edge(term, scope)
                except _NotUnit as other:
                    # Not a filter of the joined rows: ``outer_joins`` reads these conditions
                    # of the ON (or refuses them); a join by nothing else names this one.
                    if other.error is not None:
                        non_unit.setdefault(alias.lower(), other.error)
                    continue
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


OUTER = ("LEFT", "RIGHT", "FULL")


def outer_joins(select: exp.Select, tables: tuple[BoundTable, ...],
                edges: tuple[JoinEdge, ...], scope: Scope) -> tuple[BoundTable, ...]:
    """Mark the tables of LEFT, RIGHT and FULL joins (``BoundTable.outer``) and the
    conditions of their ON beside the unit equality (``BoundTable.on``).

    They run inside one party's local SQL, where the outer join is exact: a LEFT JOIN joins a
    table to an earlier table of the same party on the unit (the rows before it are kept
    whatever the others hold, so it commutes with the joins on the same unit); RIGHT and FULL
    joins, which keep rows the tables before them lack, are supported between the only two
    tables of a query at one party. Across parties a LEFT, RIGHT or FULL JOIN of a query's
    two tables at two parties is kept (``across_parties``; planned in
    ``rewrite/outer_join.py``), any other is refused: the secure join keeps matching people
    only. Further ON conditions are kept for an outer join across parties (they decide
    which pairs match, so they are not a WHERE: ``rewrite/outer_on.py``), and refused
    elsewhere.
    """
    kinds: dict[str, str] = {}
    ons: dict[str, list[exp.Expression]] = {}
    for join in select.args.get("joins") or []:
        side = (join.args.get("side") or "").upper()
        if side in OUTER and not (join.args.get("method") or ""):
            alias = join.this.alias_or_name.lower()
            kinds[alias] = side
            on = join.args.get("on")
            ons[alias] = [t for t in checks.split_and(on) if not _is_unit_edge(t, scope)] \
                if on is not None else []
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
        crossing = len(parties) > 1 and across_parties(tables)
        extra = ons[alias]
        if extra and not crossing:
            term = extra[0].sql(dialect="duckdb")
            raise UnsupportedError(
                f"{side} JOIN ... ON {term}: the ON of an outer join takes only the "
                "privacy-unit equality",
                "write the other conditions in WHERE (they then filter the joined "
                "rows) or in an aggregate's FILTER")
        for term in extra:
            _check_on(term, scope, side)
        if crossing:
            continue  # planned by rewrite/outer_join.py: the secure join plus own totals
        if len(parties) > 1:
            raise UnsupportedError(
                f"{side} JOIN of {t.party}.{t.table} with another party's table "
                f"({', '.join(sorted(parties - {t.party}))}) is not supported: across parties "
                "only a LEFT, RIGHT or FULL JOIN of a query's only two tables (no dimension "
                "tables) is, the secure join keeping the people both parties hold",
                f"use an inner JOIN, an outer JOIN of two tables, or {side} JOIN tables "
                f"of one party ({t.party}'s own)")
        if side != "LEFT" and (len(tables) != 2 or len({x.party for x in tables}) != 1):
            raise UnsupportedError(
                f"{side} JOIN is supported between the only two tables of a query over one "
                "party's tables",
                "write it as a LEFT JOIN with the tables swapped, or join one party's two "
                "tables only")
    return tuple(replace(t, outer=kinds.get(t.alias.lower(), ""),
                         on=tuple(scope.qualify(x) for x in ons.get(t.alias.lower(), ())))
                 for t in tables)


def _is_unit_edge(term: exp.Expression, scope: Scope) -> bool:
    """Whether ``term`` of an outer join's ON is a unit (or foreign-key) equality."""
    try:
        _join_edge(term, scope)
    except (_NotUnit, PolicyError):
        return False
    return True


def _check_on(term: exp.Expression, scope: Scope, side: str) -> None:
    """An outer join's further ON condition: a condition over either side's columns, where
    an equality of two group columns of the two parties is kept too (compared on shares as
    codes, ``rewrite/outer_on.py``); NOT over a comparison across parties is refused (on
    a NULL it would hold, and SQL's ON then rejects the pair)."""
    where = f"{side} JOIN ... ON"
    node = term
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.And | exp.Or):
        _check_on(node.this, scope, side)
        _check_on(node.expression, scope, side)
        return
    parties = {scope.resolve(c).party for c in node.find_all(exp.Column)}
    if isinstance(node, exp.Not) and len(parties) > 1:
        raise UnsupportedError(
            f"{where} {term.sql(dialect='duckdb')}: NOT over a comparison across parties is "
            "not supported in an outer join's ON (a NULL would make it hold)",
            "write the negated comparison instead, e.g. a.x <> b.y for NOT a.x = b.y")
    if len(parties) > 1 and isinstance(node, exp.EQ | exp.NEQ | exp.LT | exp.LTE | exp.GT
                                       | exp.GTE) and all(
            isinstance(c, exp.Column) for c in (node.this, node.expression)):
        cols = [scope.resolve(c) for c in (node.this, node.expression)]
        if all(c.policy.role == "group" for c in cols):
            return  # two group columns of the two parties: codes (rewrite/outer_on.py)
    checks.check_predicate(node, scope.resolve, where)


def across_parties(tables: tuple[BoundTable, ...]) -> bool:
    """Whether an outer join of ``tables`` is the supported one across parties: exactly two
    tables with personal data, at two parties (``rewrite/outer_join.py``)."""
    return len(tables) == 2 and len({x.party for x in tables}) == 2 and \
        not any(x.dimension or x.semi or x.per_unit for x in tables)


def is_optional(t: BoundTable, tables: tuple[BoundTable, ...]) -> bool:
    """True when ``t``'s columns can be NULL for a joined row (the NULL side of an outer
    join)."""
    if t.outer in ("LEFT", "FULL"):
        return True
    later = tables[tables.index(t) + 1:] if t in tables else ()
    return any(x.outer in ("RIGHT", "FULL") for x in later)


def _using_edges(join: exp.Join, scope: Scope) -> list[JoinEdge]:
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


def _join_edge(term: exp.Expr, scope: Scope, *, strict: bool = True) -> JoinEdge:
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


def _dimension_edge(left: BoundColumn, right: BoundColumn, scope: Scope, text: str, *,
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


def link_dimensions(tables: tuple[BoundTable, ...],
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
