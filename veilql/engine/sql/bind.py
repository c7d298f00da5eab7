"""Bind a parsed query to the federation: resolve names, check policies, build a BoundQuery.

Nothing here reads data: schemas and policies are public inside the federation, rows are not.
Every refusal happens here, before planning, so a refused query charges nothing.

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
from collections.abc import Mapping, Sequence

from sqlglot import exp

from veilql.engine.sql import checks, limits, typecheck
from veilql.engine.sql.bound import (
    BoundColumn,
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


def bind(
    parsed: ParsedQuery, federation: Federation, catalog: Catalog | None = None
) -> BoundQuery:
    """Resolve and check ``parsed`` against ``federation``; refuse anything not allowed.

    Besides names and policies, every predicate and aggregate argument is type-checked
    (``veilql.engine.sql.typecheck``), so that no query that binds can fail in a party's engine
    because of a row's value. Every refusal is a ``QueryError`` whose message and hint hold
    no control character; a ``RecursionError`` becomes one too.
    """
    try:
        with limits.recursion_guard("binding"):
            bound = _bind(parsed, federation, catalog)
            typecheck.check_types(bound)
            return bound
    except QueryError as error:
        raise limits.printable_error(error) from None


def _bind(
    parsed: ParsedQuery, federation: Federation, catalog: Catalog | None
) -> BoundQuery:
    """The body of ``bind``: names, joins, policies; the BoundQuery."""
    select = checks.check_statement(parsed.tree)
    checks.check_constructs(select)
    scope = _Scope(_bind_tables(select, federation, catalog), catalog)
    joins = _bind_joins(select, scope)

    where_node = select.args.get("where")
    where: exp.Expression | None = None
    conjuncts: tuple[exp.Expression, ...] = ()
    if where_node is not None:
        checks.check_no_aggregate(where_node.this, "WHERE")
        checks.check_predicate(where_node.this, scope.resolve)
        where = scope.qualify(where_node.this)
        conjuncts = tuple(_split_and(where))

    group_by = _bind_group_by(select, scope)
    outputs, signatures = _bind_outputs(select, scope, group_by)
    having_node = select.args.get("having")
    having = None
    if having_node is not None:
        having = _over_outputs(having_node.this, outputs, signatures, scope, "HAVING")
    order_by = _bind_order_by(select, outputs, signatures, scope)
    return BoundQuery(
        sql=parsed.sql,
        tables=scope.tables,
        joins=joins,
        where=where,
        conjuncts=conjuncts,
        group_by=group_by,
        outputs=outputs,
        having=having,
        order_by=order_by,
        limit=_bind_limit(select),
        epsilon=parsed.epsilon,
        delta=parsed.delta,
    )


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


def _bind_joins(select: exp.Select, scope: _Scope) -> tuple[JoinEdge, ...]:
    """Inner joins on the privacy-unit keys, forming one connected join graph."""
    edges: list[JoinEdge] = []
    for join in select.args.get("joins") or []:
        right = join.this.sql(dialect="duckdb")
        kind = (join.args.get("kind") or "").upper()
        side = (join.args.get("side") or "").upper()
        method = (join.args.get("method") or "").upper()
        if side or method or kind not in ("", "INNER"):
            name = " ".join(p for p in (method, side, kind) if p)
            raise UnsupportedError(
                f"{name} JOIN is not supported (joining {right})",
                "use an inner JOIN ... ON x.unit = y.unit on the privacy-unit keys",
            )
        if join.args.get("using"):
            raise UnsupportedError(
                f"JOIN ... USING is not supported (joining {right})",
                "write JOIN ... ON x.unit = y.unit",
            )
        on = join.args.get("on")
        if on is None:
            raise UnsupportedError(
                f"join without ON (comma join or CROSS JOIN) is not supported (joining {right})",
                "write JOIN ... ON x.unit = y.unit on the privacy-unit keys",
            )
        checks.check_no_aggregate(on, "JOIN ... ON")
        for term in _split_and(on):
            edges.append(_join_edge(term, scope))
    _check_connected(scope.tables, edges)
    return tuple(edges)


def _join_edge(term: exp.Expr, scope: _Scope) -> JoinEdge:
    """One ``x.unit = y.unit`` equality of an ON clause."""
    hint = "join tables only on their privacy units, e.g. ON x.customer_id = y.customer_id; " \
        "move other conditions to WHERE"
    text = term.sql(dialect="duckdb")
    if not (isinstance(term, exp.EQ) and isinstance(term.this, exp.Column)
            and isinstance(term.expression, exp.Column)):
        raise PolicyError(f"join condition {text} is not an equality of privacy-unit keys", hint)
    left, right = scope.resolve(term.this), scope.resolve(term.expression)
    for col in (left, right):
        if scope.units[col.alias] != col.column:
            raise PolicyError(
                f"join condition {text}: {col.alias}.{col.column} is not the privacy unit of "
                f"{col.party}.{col.table} ({scope.units[col.alias]})", hint)
    if left.alias == right.alias:
        raise PolicyError(f"join condition {text} compares a table with itself", hint)
    return JoinEdge(left=left.alias, right=right.alias, left_column=left.column,
                    right_column=right.column)


def _check_connected(tables: tuple[BoundTable, ...], edges: list[JoinEdge]) -> None:
    """Every table must be reached from the first through join edges."""
    reached = {tables[0].alias}
    changed = True
    while changed:
        changed = False
        for e in edges:
            if (e.left in reached) != (e.right in reached):
                reached |= {e.left, e.right}
                changed = True
    for t in tables:
        if t.alias not in reached:
            raise PolicyError(
                f"table {t.party}.{t.table} ({t.alias}) is not joined to the others on its "
                "privacy unit",
                f"add ON {t.alias}.{t.unit} = <other>.<unit> to its JOIN",
            )


def _split_and(node: exp.Expression) -> list[exp.Expression]:
    """Top-level conjuncts of ``node`` (through parentheses)."""
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.And):
        return _split_and(node.this) + _split_and(node.expression)
    return [node]


# ---------------------------------------------------------------- GROUP BY and SELECT


def _bind_group_by(select: exp.Select, scope: _Scope) -> tuple[BoundColumn, ...]:
    """GROUP BY items: group columns only (or the alias of a selected group column)."""
    group = select.args.get("group")
    if group is None:
        return ()
    aliases = {
        p.alias.lower(): p.this for p in select.expressions
        if isinstance(p, exp.Alias) and isinstance(p.this, exp.Column)
    }
    out: list[BoundColumn] = []
    for item in group.expressions:
        checks.check_no_aggregate(item, "GROUP BY")
        inner = item.unnest() if isinstance(item, exp.Paren) else item
        if not isinstance(inner, exp.Column):
            hint = "name the column" if isinstance(inner, exp.Literal) else \
                "GROUP BY takes group columns only"
            raise UnsupportedError(
                f"GROUP BY {inner.sql(dialect='duckdb')} is not supported", hint)
        try:
            col = scope.resolve(inner)
        except PolicyError:
            if inner.table or inner.name.lower() not in aliases:
                raise
            col = scope.resolve(aliases[inner.name.lower()])
        if col.policy.role == "key":
            raise checks.refuse_key(col, "GROUP BY")
        if col.policy.role == "value":
            raise PolicyError(
                f"value column {col.alias}.{col.column} cannot be in GROUP BY: its role is "
                "'value'",
                f"group by group columns; or ask {col.party} to declare it with role 'group' "
                "and public values",
            )
        if col not in out:
            out.append(col)
    return tuple(out)


Signature = tuple[str, str]


def _bind_outputs(
    select: exp.Select, scope: _Scope, group_by: tuple[BoundColumn, ...]
) -> tuple[tuple[Output, ...], dict[Signature, str]]:
    """SELECT items as outputs, plus each aggregate's signature -> output name."""
    outputs: list[Output] = []
    signatures: dict[Signature, str] = {}
    explicit = {p.alias.lower() for p in select.expressions if isinstance(p, exp.Alias)}
    taken: set[str] = set()
    for item in select.expressions:
        alias = item.alias if isinstance(item, exp.Alias) else None
        node = item.this if isinstance(item, exp.Alias) else item
        while isinstance(node, exp.Paren):
            node = node.this
        output, signature = _bind_output(node, scope, group_by)
        name = alias or _unique(output.name, taken | explicit)
        if name.lower() in taken:
            raise UnsupportedError(f"output name {name!r} is used twice",
                                   "give each SELECT item its own alias")
        taken.add(name.lower())
        outputs.append(Output(name=name, kind=output.kind, column=output.column,
                              expr=output.expr, bounds=output.bounds))
        signatures.setdefault(signature, name)
    if not any(o.kind != "group" for o in outputs):
        raise UnsupportedError(
            "a query must release at least one aggregate (COUNT, SUM or AVG)",
            "add e.g. COUNT(*) to SELECT; VeilQL releases only noisy aggregates",
        )
    return tuple(outputs), signatures


def _unique(name: str, taken: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3``... if already taken."""
    if name.lower() not in taken:
        return name
    n = 2
    while f"{name}_{n}".lower() in taken:
        n += 1
    return f"{name}_{n}"


def _bind_output(
    node: exp.Expr, scope: _Scope, group_by: tuple[BoundColumn, ...]
) -> tuple[Output, Signature]:
    """One SELECT item (without its alias) as an Output with a default name."""
    if isinstance(node, exp.Column):
        col = scope.resolve(node)
        if col.policy.role == "key":
            raise checks.refuse_key(col, "SELECT")
        if col.policy.role == "value":
            raise PolicyError(
                f"value column {col.alias}.{col.column} cannot be selected as is",
                f"aggregate it: SUM({col.alias}.{col.column}) or AVG({col.alias}.{col.column})",
            )
        if col not in group_by:
            raise UnsupportedError(
                f"column {col.alias}.{col.column} must appear in GROUP BY",
                f"add GROUP BY {col.alias}.{col.column}",
            )
        return Output(col.column, "group", column=col), ("group", f"{col.alias}.{col.column}")
    if isinstance(node, exp.Count):
        unit = checks.check_count(node, scope.resolve, scope.units)
        if unit is None:
            return Output("count", "count"), ("count", "*")
        return (Output("count_distinct", "count_distinct", column=unit),
                ("count_distinct", f"{unit.alias}.{unit.column}"))
    if isinstance(node, exp.Sum | exp.Avg):
        kind: OutputKind = "sum" if isinstance(node, exp.Sum) else "avg"
        arg = node.this
        bounds = checks.derive_bounds(arg, scope.resolve, kind.upper())
        expr = scope.qualify(arg)
        while isinstance(expr, exp.Paren):
            expr = expr.this
        name = f"{kind}_{expr.name}" if isinstance(expr, exp.Column) else kind
        return (Output(name, kind, expr=expr, bounds=bounds),
                (kind, expr.sql(dialect="duckdb")))
    text = node.sql(dialect="duckdb")
    if node.find(exp.AggFunc):
        raise UnsupportedError(
            f"SELECT item {text} is not supported: only plain aggregates can be released",
            "select each aggregate on its own and combine the released values afterwards",
        )
    raise UnsupportedError(f"SELECT item {text} is not a group column or an aggregate",
                           checks.SUPPORTED_SQL)


# ---------------------------------------------------------------- HAVING, ORDER BY, LIMIT

_POST_ALLOWED = (
    exp.Literal, exp.Boolean, exp.Paren, exp.And, exp.Or, exp.Not, exp.EQ, exp.NEQ, exp.LT,
    exp.LTE, exp.GT, exp.GTE, exp.In, exp.Between, exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Neg,
)


def _over_outputs(
    node: exp.Expression, outputs: tuple[Output, ...], signatures: dict[Signature, str],
    scope: _Scope, clause: str,
) -> exp.Expression:
    """Rewrite a HAVING / ORDER BY expression into one over output names only."""
    names = {o.name.lower(): o.name for o in outputs}

    def refer(n: exp.Expr) -> exp.Expr:
        if isinstance(n, exp.Column):
            if not n.table and n.name.lower() in names:
                return exp.column(names[n.name.lower()])
            col = scope.resolve(n)
            found = signatures.get(("group", f"{col.alias}.{col.column}"))
            if found is None:
                raise UnsupportedError(
                    f"{clause} term {n.sql(dialect='duckdb')} is not a SELECT output",
                    f"{clause} acts on released values: add it to SELECT",
                )
            return exp.column(found)
        if isinstance(n, exp.AggFunc):
            _, signature = _bind_output(n, scope, ())
            found = signatures.get(signature)
            if found is None:
                text = n.sql(dialect="duckdb")
                raise UnsupportedError(
                    f"{clause} term {text} is not a SELECT output",
                    f"{clause} acts on released values: add {text} AS <name> to SELECT and "
                    f"write {clause} <name>",
                )
            return exp.column(found)
        if not isinstance(n, _POST_ALLOWED):
            raise UnsupportedError(f"{n.sql(dialect='duckdb')} is not supported in {clause}",
                                   "use outputs, literals, comparisons and arithmetic")
        return n

    return node.copy().transform(refer)


def _bind_order_by(
    select: exp.Select, outputs: tuple[Output, ...], signatures: dict[Signature, str],
    scope: _Scope,
) -> tuple[tuple[exp.Expression, bool], ...]:
    """ORDER BY terms over output names (a position ``ORDER BY 2`` names an output too)."""
    order = select.args.get("order")
    if order is None:
        return ()
    terms: list[tuple[exp.Expression, bool]] = []
    for item in order.expressions:
        this = item.this if isinstance(item, exp.Ordered) else item
        desc = bool(item.args.get("desc")) if isinstance(item, exp.Ordered) else False
        if isinstance(this, exp.Literal) and not this.is_string:
            if not this.is_int or not 1 <= int(this.this) <= len(outputs):
                raise UnsupportedError(
                    f"ORDER BY {this.sql()} is not an output position (1..{len(outputs)})",
                    "order by an output name or its position in SELECT",
                )
            terms.append((exp.column(outputs[int(this.this) - 1].name), desc))
            continue
        terms.append((_over_outputs(this, outputs, signatures, scope, "ORDER BY"), desc))
    return tuple(terms)


def _bind_limit(select: exp.Select) -> int | None:
    """LIMIT n with a non-negative integer literal."""
    limit = select.args.get("limit")
    return None if limit is None else checks.limit_value(limit)
