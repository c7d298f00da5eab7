"""Rewrite the SQL analysts write into the flat SELECT the binder takes.

``WITH`` (common table expressions) and derived tables (``FROM (SELECT ...) AS d``) whose
body is a plain SELECT (tables, joins, WHERE, columns and row-level expressions; no
aggregate, GROUP BY, DISTINCT or LIMIT) are inlined: the body's tables take the place of
the reference, its WHERE joins the outer WHERE, and every reference ``d.x`` becomes the
body's expression for ``x``. The body's tables then belong to the outer query like any
other, so what touches one party is pushed down to that party's local SQL as usual. A body
with GROUP BY stays a derived table, marked for ``perunit`` (a table aggregated per person,
grouped by its privacy unit).

Aliases: a body over one table gives that table the reference's alias (``FROM (SELECT ...
FROM bank.loans) AS d`` reads ``bank.loans AS d``); a body over several tables prefixes
theirs (``d_l``, ``d_c``).

>>> import sqlglot
>>> tree = sqlglot.parse_one("WITH big AS (SELECT customer_id, amount * 2 AS a2 FROM "
...     "bank.loans WHERE amount > 10) SELECT SUM(b.a2) FROM big b", read="duckdb")
>>> inline_subqueries(tree).sql(dialect="duckdb")
'SELECT SUM((b.amount * 2)) FROM bank.loans AS b WHERE (b.amount > 10)'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlglot import exp

from veilql.engine.sql.limits import MAX_INLINED_NODES
from veilql.engine.sql.syntax import short
from veilql.errors import PolicyError, UnsupportedError

# table reference (party, table) -> its usable column names (from the policies), for
# ``SELECT *`` and unqualified columns inside a body over several tables.
ColumnsOf = Callable[[str, str], Sequence[str] | None]

_HINT = ("a WITH or subquery in FROM may be a plain SELECT over party tables (columns, "
         "expressions, joins, WHERE); aggregate in the outer query")


def inline_subqueries(select: exp.Expression, columns_of: ColumnsOf | None = None,
                      ctes: dict[str, exp.Select] | None = None) -> exp.Expression:
    """``select`` with its CTEs and derived tables inlined (a copy; see the module doc)."""
    if not isinstance(select, exp.Select):
        return select
    select = select.copy()
    known = dict(ctes or {})
    with_ = select.args.get("with_")
    if with_ is not None:
        if with_.args.get("recursive"):
            raise UnsupportedError("WITH RECURSIVE is not supported", _HINT)
        for cte in with_.expressions:
            body = cte.this
            name = cte.alias_or_name.lower()
            if cte.args.get("alias") is not None and cte.args["alias"].columns:
                raise UnsupportedError(f"column names after WITH {cte.alias_or_name} are not "
                                       "supported", "name the columns inside the SELECT")
            if not isinstance(body, exp.Select):
                raise UnsupportedError(
                    f"WITH {cte.alias_or_name} AS ({body.key.upper()} ...) is not supported",
                    _HINT)
            known[name] = inline_subqueries(body, columns_of, known)  # type: ignore[assignment]
        select.set("with_", None)
    from_ = select.args.get("from_")
    if from_ is None:
        return select
    while True:  # each round replaces one reference by base tables
        current = [select.args["from_"].this] + [j.this for j in select.args.get("joins") or []]
        for entry in current:
            body, alias = _body(entry, known, columns_of)
            if body is not None and body.args.get("group") is not None:
                # a body that aggregates (per person, ``perunit.py``) stays a derived table
                entry.replace(per_unit_reference(body, alias))
                break
            if body is not None:
                select = _inline(select, entry, body, alias, columns_of)
                break
        else:
            return select


PER_UNIT = "veil_per_unit"  # meta key of a derived table that aggregates per person


def per_unit_reference(body: exp.Select, alias: str) -> exp.Subquery:
    """``(body) AS alias`` marked as an aggregating derived table (bound by ``perunit``)."""
    ref = exp.Subquery(this=body, alias=exp.TableAlias(this=exp.to_identifier(alias)))
    ref.meta[PER_UNIT] = True
    return ref


def is_per_unit(node: exp.Expr) -> bool:
    """True for a derived table ``per_unit_reference`` made."""
    return isinstance(node, exp.Subquery) and bool(node.meta.get(PER_UNIT))


def _body(entry: exp.Expression, ctes: dict[str, exp.Select],
          columns_of: ColumnsOf | None) -> tuple[exp.Select | None, str]:
    """The SELECT an entry of FROM stands for (a CTE or a derived table), with its alias."""
    if is_per_unit(entry):
        return None, ""
    if isinstance(entry, exp.Table) and not entry.db and entry.name.lower() in ctes:
        return ctes[entry.name.lower()].copy(), entry.alias_or_name
    if isinstance(entry, exp.Subquery):
        body = entry.this
        if not isinstance(body, exp.Select):
            raise UnsupportedError(f"{body.key.upper()} in FROM is not supported", _HINT)
        alias = entry.alias or "unnamed_subquery"
        if entry.args.get("alias") is not None and entry.args["alias"].columns:
            raise UnsupportedError(f"column names after the subquery alias {alias} are not "
                                   "supported", "name the columns inside the SELECT")
        return inline_subqueries(body, columns_of, ctes), alias  # type: ignore[return-value]
    return None, ""


def _check_body(body: exp.Select, alias: str) -> None:
    """A body must be a plain row-level SELECT."""
    what = f"the subquery {alias}"
    for arg, name in (("group", "GROUP BY"), ("having", "HAVING"), ("order", "ORDER BY"),
                      ("limit", "LIMIT"), ("offset", "OFFSET"), ("qualify", "QUALIFY")):
        if body.args.get(arg):
            raise UnsupportedError(f"{name} inside {what} is not supported", _HINT)
    if body.args.get("distinct"):
        raise UnsupportedError(f"SELECT DISTINCT inside {what} is not supported", _HINT)
    for item in body.expressions:
        agg = item.find(exp.AggFunc)
        if agg is not None:
            raise UnsupportedError(
                f"aggregate {agg.sql_name()} inside {what} is not supported: a subquery is "
                "inlined row by row", _HINT)
        if item.find(exp.Window) is not None:
            raise UnsupportedError(f"window functions inside {what} are not supported", _HINT)
    if body.args.get("from_") is None:
        raise UnsupportedError(f"{what} has no FROM", _HINT)


def _inline(select: exp.Select, entry: exp.Expression, body: exp.Select, alias: str,
            columns_of: ColumnsOf | None) -> exp.Select:
    _check_body(body, alias)
    tables = [body.args["from_"].this] + [j.this for j in body.args.get("joins") or []]
    for t in tables:  # base tables, or a table aggregated per person (kept as it is)
        if not isinstance(t, exp.Table) and not is_per_unit(t):
            raise UnsupportedError(f"{short(t)} inside the subquery {alias} is not "
                                   "supported", _HINT)

    def names_of(t: exp.Expression) -> Sequence[str] | None:
        """The columns an entry of the body's FROM offers."""
        if is_per_unit(t):
            return [item.alias_or_name for item in t.this.expressions]
        return columns_of(t.db, t.name) if columns_of is not None else None

    taken = {e.alias_or_name.lower() for e in
             [select.args["from_"].this] + [j.this for j in select.args.get("joins") or []]
             if e is not entry}
    renames: dict[str, str] = {}
    for t in tables:
        inner = t.alias_or_name
        new = alias if len(tables) == 1 else f"{alias}_{inner}"
        n = 1
        base = new
        while new.lower() in taken:
            new = f"{base}_{n}"
            n += 1
        taken.add(new.lower())
        renames[inner.lower()] = new
    owners = {renames[t.alias_or_name.lower()]: t for t in tables}

    def rename(node: exp.Expr) -> exp.Expr:
        if not isinstance(node, exp.Column):
            return node
        if node.args.get("db") is not None or node.table:
            key = node.table.lower()
            matches = [new for new, t in owners.items() if
                       (node.db and isinstance(t, exp.Table)
                        and t.db.lower() == node.db.lower() and t.name.lower() == key)
                       or (not node.db and (t.alias_or_name.lower() == key))]
            if not matches:
                return node  # an outer reference: left to the binder (correlated: refused)
            return exp.column(node.name, table=matches[0])
        if node.find_ancestor(exp.Select, exp.Subquery) is not None:
            return node  # an unqualified column of a nested query is that query's own
        if len(owners) == 1:
            return exp.column(node.name, table=next(iter(owners)))
        found = [new for new, t in owners.items()
                 if any(c.lower() == node.name.lower() for c in names_of(t) or ())]
        if len(found) != 1:
            problem = "is ambiguous" if found else "is unknown"
            raise PolicyError(f"column {node.name} in the subquery {alias} {problem}",
                              "qualify it with its table's alias")
        return exp.column(node.name, table=found[0])

    mapping: dict[str, exp.Expression] = {}
    shown: dict[str, str] = {}  # each output's name as the body writes it
    for item in body.expressions:
        if isinstance(item, exp.Star) or (isinstance(item, exp.Column)
                                          and isinstance(item.this, exp.Star)):
            for new, t in owners.items():
                if isinstance(item, exp.Column) and item.table and \
                        renames.get(item.table.lower()) != new:
                    continue
                cols = names_of(t)
                if cols is None:
                    raise UnsupportedError(f"SELECT * inside the subquery {alias}: the "
                                           "table's columns are not known", "name them")
                for c in cols:
                    mapping.setdefault(c.lower(), exp.column(c, table=new))
                    shown.setdefault(c.lower(), c)
            continue
        name = item.alias_or_name
        inner = item.this if isinstance(item, exp.Alias) else item
        if not name or (not isinstance(item, exp.Alias) and not isinstance(item, exp.Column)):
            continue  # an unnamed expression cannot be referenced
        mapping.setdefault(name.lower(), inner.copy().transform(rename))
        shown.setdefault(name.lower(), name)

    # Refuse before copying: every reference becomes a copy of the body's expression.
    sizes = {name: sum(1 for _ in e.walk()) for name, e in mapping.items()}
    copies = 0
    for col in select.find_all(exp.Column):
        name = col.name.lower()
        if name in sizes and (not col.table or col.table.lower() == alias.lower()):
            copies += sizes[name]
    if copies > MAX_INLINED_NODES:
        raise UnsupportedError(
            f"the query is too large once its WITH and subqueries are inlined: more than "
            f"{MAX_INLINED_NODES:,} terms (columns, literals, operators)",
            "refer to a subquery's long expressions fewer times")

    def substitute(node: exp.Expr) -> exp.Expr:
        if not isinstance(node, exp.Column) or isinstance(node.this, exp.Star):
            return node
        if node.table and node.table.lower() == alias.lower() and not node.db:
            found = mapping.get(node.name.lower())
            if found is None:
                raise PolicyError(
                    f"column {alias}.{node.name} is not an output of the subquery {alias}",
                    f"its outputs: {', '.join(sorted(mapping)) or '(none)'}")
            return _wrap(found.copy())
        return node

    outer_aliases = {i.alias.lower() for i in select.expressions if isinstance(i, exp.Alias)}
    # A selected output of the subquery keeps its name (``SELECT k ... HAVING k > 3``): in
    # HAVING and ORDER BY the name is that output (the same value), not a copy of its body
    outer_aliases |= {i.name.lower() for i in select.expressions if isinstance(i, exp.Column)
                      and i.name.lower() in mapping
                      and (not i.table or i.table.lower() == alias.lower())}
    others = [e for e in [select.args["from_"].this]
              + [j.this for j in select.args.get("joins") or []] if e is not entry]

    def bare(node: exp.Expr, in_post: bool) -> exp.Expr:
        if not isinstance(node, exp.Column) or node.table or isinstance(node.this, exp.Star):
            return node
        if node.find_ancestor(exp.Select, exp.Subquery) is not None:
            return node  # an unqualified column of a nested query is that query's own
        name = node.name.lower()
        if name not in mapping or (in_post and name in outer_aliases):
            return node
        if columns_of is not None and any(
                isinstance(o, exp.Table) and any(c.lower() == name for c in
                                                 columns_of(o.db, o.name) or ())
                for o in others):
            raise PolicyError(f"column {node.name} is ambiguous",
                              f"qualify it: {alias}.{node.name} or <table>.{node.name}")
        return _wrap(mapping[name].copy())

    select.set("expressions", _stars(select, alias, shown, bool(others)))
    for key in ("expressions", "where", "group", "having", "order", "joins"):
        value = select.args.get(key)
        if value is None:
            continue
        in_post = key in ("having", "order")
        items = value if isinstance(value, list) else [value]
        fixed = []
        for it in items:
            if key == "joins" and it.this is entry:
                fixed.append(it)
                continue
            new_it = it.transform(substitute).transform(lambda n, p=in_post: bare(n, p))
            if key == "expressions" and isinstance(it, exp.Column) and not (
                    isinstance(new_it, exp.Column) and new_it.name == it.name):
                new_it = exp.alias_(new_it, it.name)  # keep the name the subquery gave it
            fixed.append(new_it)
        select.set(key, fixed if isinstance(value, list) else fixed[0])
    # Splice the body's tables in place of the entry.
    first = tables[0].copy()
    first.set("alias", exp.TableAlias(this=exp.to_identifier(renames[
        tables[0].alias_or_name.lower()])))
    body_joins = []
    for j in body.args.get("joins") or []:
        new_j = j.copy()
        t = new_j.this
        t.set("alias", exp.TableAlias(this=exp.to_identifier(renames[t.alias_or_name.lower()])))
        if new_j.args.get("on") is not None:
            new_j.set("on", new_j.args["on"].transform(rename))
        body_joins.append(new_j)
    joins = list(select.args.get("joins") or [])
    if select.args["from_"].this is entry:
        select.args["from_"].set("this", first)
        joins = body_joins + joins
    else:
        for i, j in enumerate(joins):
            if j.this is entry:
                j = j.copy()
                j.set("this", first)
                if j.args.get("on") is not None:
                    j.set("on", j.args["on"].transform(substitute).transform(
                        lambda n: bare(n, False)))
                joins = joins[:i] + [j] + body_joins + joins[i + 1:]
                break
    select.set("joins", joins or None)
    inner_where = body.args.get("where")
    if inner_where is not None:
        cond = exp.Paren(this=inner_where.this.transform(rename))
        outer = select.args.get("where")
        select.set("where", exp.Where(this=cond if outer is None else exp.And(
            this=outer.this, expression=cond)))
    return select


def _stars(select: exp.Select, alias: str, shown: dict[str, str],
           others: bool) -> list[exp.Expression]:
    """The SELECT items with ``*`` (or ``alias.*``) over the subquery ``alias`` as its
    outputs (``alias.x AS x``, substituted next), as SQL means: left as ``*`` once inlined,
    it would name the body's tables' columns instead."""
    out: list[exp.Expression] = []
    for item in select.expressions:
        star = isinstance(item, exp.Star) or (isinstance(item, exp.Column)
                                              and isinstance(item.this, exp.Star))
        table = item.table if isinstance(item, exp.Column) else ""
        if not star or (table and table.lower() != alias.lower()):
            out.append(item)
            continue
        if not table and others:
            raise UnsupportedError(
                f"SELECT * over the subquery {alias} beside other tables is not supported",
                f"name the columns, or write {alias}.*")
        out += [exp.alias_(exp.column(name, table=alias), name) for name in shown.values()]
    return out


def _wrap(node: exp.Expression) -> exp.Expression:
    return node if isinstance(node, exp.Column | exp.Literal | exp.Paren) else exp.Paren(
        this=node)
