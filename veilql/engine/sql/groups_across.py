"""GROUP BY an expression over several parties' group columns (``a.g + b.h``, a CASE or an
allowed function of them), each column with declared values.

No party can compute such a key alone, but its values are public: the expression is
evaluated by DuckDB over the product of the columns' declared values (NULL added to each,
as a row may hold it), from the policies alone, so every party derives the same domain.
The query is then grouped by the columns themselves (the *fine* cells, each column a key
of its own at its owner, ``parts``), and the compute parties add the fine cells of each
value of the expression into its *coarse* cell on shares before the noise
(``operators/cells.merge_cells``): a public 0/1 matrix, one 1 per fine cell, so a row
lands in exactly one coarse cell and no sensitivity grows. ``index`` holds, for each
combination of the parts' values (mixed radix in ``parts`` order, the last fastest), the
index of the expression's value in the coarse domain.

>>> grid_combinations([(1, 2, None), ("x", None)])[:3]
[(1, 'x'), (1, None), (2, 'x')]
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from sqlglot import exp

from veilql.engine.sql import functions
from veilql.engine.sql.bound import BoundColumn, BoundGroup, BoundQuery
from veilql.errors import UnsupportedError

#: The most combinations of a key's columns' values (its fine cells, NULLs included): each
#: is a cell of every aggregate on shares before the merge.
MAX_MERGED_GRID = 10_000
PART = "__part "  # prefix of the hidden key of one column of such an expression

DomainValue = str | int | float | bool | None


def grid_combinations(domains: Sequence[Sequence[DomainValue]]) -> list[tuple]:
    """Every combination of the parts' values, the last part varying fastest."""
    return list(itertools.product(*domains))


def bind_across(node: exp.Expr, expr: exp.Expression, name: str,
                cols: Sequence[BoundColumn]) -> BoundGroup:
    """The merged key of ``expr`` (qualified ``node``) over ``cols`` of several parties."""
    text = node.sql(dialect="duckdb")
    hint = ("group by an expression whose every column is a group column with declared "
            "values = [...], or one GROUP BY item per party")
    distinct: dict[tuple[str, str], BoundColumn] = {}
    for c in cols:
        distinct.setdefault((c.alias, c.column), c)
    for c in distinct.values():
        if c.policy.role != "group" or not c.policy.values:
            what = "a value column" if c.policy.role == "value" else \
                "a group column without declared values"
            raise UnsupportedError(
                f"GROUP BY {text} reads columns of several parties, and {c.alias}.{c.column} "
                f"is {what} (its values are not public, so the expression's are not)", hint)
    parts = list(distinct.values())
    # NULL is a value of every part, nullable or not (each part's NULL fine cell is counted
    # whenever the expression maps it to a value of the coarse domain: a.g + b.h is NULL
    # when either is); ``nullable`` only adds it to a bare column's own domain
    domains = [tuple(c.policy.values or ()) + (None,) for c in parts]
    size = 1
    for d in domains:
        size *= len(d)
    if size > MAX_MERGED_GRID:
        raise UnsupportedError(
            f"GROUP BY {text} reads columns of several parties whose values (NULL included) "
            f"make {size:,} combinations, more than {MAX_MERGED_GRID:,}",
            "group by fewer columns in one expression, or by each party's column")
    combos = grid_combinations(domains)
    values = _evaluate(expr, parts, combos, text)
    domain = _ordered(values)
    if len(domain) > functions.MAX_DERIVED_DOMAIN:
        raise UnsupportedError(
            f"GROUP BY {text} takes {len(domain):,} values over its columns' declared values, "
            f"more than {functions.MAX_DERIVED_DOMAIN:,}",
            "bucket the expression (CASE WHEN ... THEN 'a' ... END), or group by each "
            "party's column")
    position = {_key(v): i for i, v in enumerate(domain)}
    keys = tuple(BoundGroup(f"{PART}{c.alias}.{c.column}", c.expr(), c.party, c,
                            dom) for c, dom in zip(parts, domains, strict=True))
    return BoundGroup(name, expr, parts[0].party, None, domain, parts=keys,
                      index=tuple(position[_key(v)] for v in values))


def _key(v: DomainValue) -> tuple[str, DomainValue]:
    return (type(v).__name__, v)


def _ordered(values: list[DomainValue]) -> tuple[DomainValue, ...]:
    """The distinct values, sorted (NULL last; mixed types by type name)."""
    seen = {_key(v): v for v in values}
    return tuple(sorted(seen.values(), key=lambda v: (v is None, type(v).__name__,
                                                      0 if v is None else v)))


def _evaluate(expr: exp.Expression, parts: list[BoundColumn], combos: list[tuple],
              text: str) -> list[DomainValue]:
    """``expr`` at every combination, by DuckDB on literals only (no data)."""
    import duckdb

    names = {(c.alias.lower(), c.column.lower()): f"__p{i}" for i, c in enumerate(parts)}

    def placeholder(n: exp.Expr) -> exp.Expr:
        if isinstance(n, exp.Column):
            return exp.column(names[(n.table.lower(), n.name.lower())])
        return n

    body = expr.copy().transform(placeholder)
    literals = [[functions._typed_literal(v) if v is not None else "NULL" for v in combo]
                for combo in combos]
    # the first row types every column (a declared value, never NULL: NULL comes last)
    rows = ", ".join(f"({i}, {', '.join(lit)})" for i, lit in enumerate(literals))
    cols = ", ".join(names.values())
    sql = (f"SELECT {body.sql(dialect='duckdb')} FROM (VALUES {rows}) AS t(__i, {cols}) "
           "ORDER BY __i")
    con = duckdb.connect()
    try:
        result = [r[0] for r in con.execute(sql).fetchall()]
    except duckdb.Error as e:
        raise UnsupportedError(
            f"GROUP BY {text} cannot be evaluated over its columns' declared values "
            f"({str(e).splitlines()[0][:120]})",
            "check the expression's types against the declared values") from None
    finally:
        con.close()
    return [functions.plain_value(v) for v in result]


def split_merged(group_by: Sequence[BoundGroup]) -> tuple[
        list[BoundGroup], list[tuple[str, tuple[str, ...], tuple, tuple[int, ...]]]]:
    """The keys each party computes (plain keys and the merged keys' columns, each column
    once) and, per merged key, ``(name, its columns' key names, domain, index)``."""
    flat: list[BoundGroup] = []
    merged = []
    seen: set[str] = set()
    for g in group_by:
        if not g.parts:
            flat.append(g)
            continue
        for p in g.parts:
            if p.name not in seen:
                seen.add(p.name)
                flat.append(p)
        merged.append((g.name, tuple(p.name for p in g.parts), g.domain, g.index))
    return flat, merged


def check_merged(bound: BoundQuery, kinds: Sequence[tuple[str, str]]) -> None:
    """Refuse what a merged key cannot stand beside, naming it. ``kinds`` lists each
    aggregate's ``(name, kind)``. (A large COUNT(DISTINCT x) merges its bucket counts
    before comparing them with 0, ``operators/histogram.secure_counts``.)"""
    merged = [g for g in bound.group_by if g.parts]
    if not merged:
        return
    what = f"GROUP BY {merged[0].expr.sql(dialect='duckdb')} (over several parties' columns)"
    private = [g for g in bound.group_by if g.private]
    if private:
        raise UnsupportedError(
            f"{what} is not supported beside GROUP BY {private[0].name}, whose keys are chosen "
            "privately", f"declare values = [...] for {private[0].name}")
    if any(t.outer for t in bound.tables):
        raise UnsupportedError(f"{what} is not supported with a LEFT, RIGHT or FULL JOIN",
                               "use an inner join, or group by each party's column")
    # A person is in several fine cells of one merged cell only through several rows at a
    # party holding one of its columns
    owners = {p.party for g in merged for p in g.parts}
    many = [t for t in bound.tables if t.party in owners and not t.semi
            and t.policy.max_rows_per_unit > 1]
    for _, kind in kinds:
        if kind == "count_distinct" and many:
            raise UnsupportedError(
                f"COUNT(DISTINCT unit) is not supported with {what} when a table keeps "
                f"several rows per person ({many[0].alias}: max_rows_per_unit "
                f"{many[0].policy.max_rows_per_unit}): a person in two merged cells would "
                "count twice", "use COUNT(*), or group by each party's column")
