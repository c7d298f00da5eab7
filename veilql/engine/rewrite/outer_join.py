"""Plan a LEFT, RIGHT or FULL JOIN of two parties' tables on the privacy unit.

For ``a LEFT JOIN b`` the answer of a cell is, over the units ``u`` of ``a``,
``sum F_a(u) * G_b(u)`` where ``G_b(u)`` is ``b``'s factor (``operators/factors.py``) for a
matched unit and ``g0``, ``b``'s factor on a row of NULLs, for an unmatched one. So

    answer = sum over u in a of F_a(u) * g0  +  sum over matched u of F_a(u) * (F_b(u) - g0)

The first term is ``a``'s own aggregate times a public constant (``operators/outer.py``
computes it at ``a`` and secret-shares it), the second the inner join with ``b``'s factors
shifted by ``g0`` before sharing. ``g0`` is computed here, per term chain, by evaluating
``b``'s weight and value columns (the clamped fixed-point SQL of its local step) on a row
whose every column is NULL, in DuckDB. RIGHT JOIN is the same with the sides swapped.
Further ON conditions become a predicate on shares (``rewrite/outer_on.py``); a FULL JOIN
shifts both sides and shares both own totals (``operators/outer.py`` has both arguments).

Refused, naming why: group keys, WHERE conditions or cross-party predicates that read the
optional side (``b``'s predicates would be evaluated on NULLs, which SQL semantics make an
inner join; write an inner JOIN), group keys without a public domain (partition
selection), COUNT(DISTINCT), variances and quantiles, a sum that adds columns of both sides
(``a.x + NULL`` is NULL), dimension tables, and a join that must reveal nothing; for a
FULL JOIN also every group key and WHERE condition (either side is NULL for someone).
"""

from __future__ import annotations

from dataclasses import replace

import duckdb
import sqlglot
from sqlglot import exp

from veilql.engine.operators import factors as fac
from veilql.engine.plan.nodes import LocalStep, Plan
from veilql.engine.rewrite.bound_contributions import _column_sql
from veilql.engine.rewrite.context import Context
from veilql.engine.rewrite.outer_on import on_predicate
from veilql.engine.sql.bound import parties_in
from veilql.engine.sql.joins import across_parties
from veilql.errors import UnsupportedError

_HINT = "use an inner JOIN, or LEFT JOIN with group keys, WHERE and aggregates as supported"


def outer_join(plan: Plan, ctx: Context) -> Plan:
    """Mark a cross-party LEFT/RIGHT/FULL JOIN on the plan (``Plan.outer``, ``own_total``,
    ``optional``, ``shift``, ``shift_own``, and ``cross`` for further ON conditions), or
    refuse what it cannot answer exactly."""
    tables = ctx.bound.tables
    if plan.mode != "secure" or not any(t.outer for t in tables) or \
            not across_parties(tables):
        return plan
    joined = next(t for t in tables if t.outer)
    side = joined.outer
    first = tables[0]
    preserved, optional = (joined, first) if side == "RIGHT" else (first, joined)
    what = f"{side} JOIN of {joined.party}.{joined.table} with {first.party}.{first.table}"
    null_cell = -1
    if side == "FULL":
        _refuse_full(plan, ctx, what)
        plan, null_cell = _null_group(plan, ctx, what)
    _refuse(plan, ctx, what, preserved.party, optional.party, full=side == "FULL")
    if joined.on:  # the predicate of the pairs that match (rewrite/outer_on.py)
        nullable = (optional.party, preserved.party) if side == "FULL" else (optional.party,)
        plan = on_predicate(plan, ctx, joined.on, nullable, f"{side} JOIN")
    chains, _ = fac.expand_terms(plan)

    def null_row(party: str) -> tuple[int, ...]:
        step = plan.step(party)
        return tuple(_null_factor(step, fac.factor_kind(c, party)) for c in chains)

    steps = tuple(replace(s, outer=()) for s in plan.steps)  # one table each: no local join
    return replace(plan, steps=steps, outer=side, own_total=preserved.party,
                   optional=optional.party, shift=null_row(optional.party),
                   shift_own=null_row(preserved.party) if side == "FULL" else (),
                   null_cell=null_cell)


def _refuse_full(plan: Plan, ctx: Context, what: str) -> None:
    """A FULL JOIN keeps the unmatched people of both sides: group keys of both sides, or
    a WHERE condition, would read NULLs of one side or the other."""
    if len({g.party for g in plan.groups}) > 1:
        raise UnsupportedError(
            f"{what}: GROUP BY {', '.join(g.output for g in plan.groups)} reads both sides "
            "of a FULL JOIN across parties, which is not supported",
            "group by the columns of one side (the other side's unmatched people then form "
            "the NULL group)")
    for c in ctx.bound.conjuncts:
        raise UnsupportedError(
            f"{what}: the condition {c.sql(dialect='duckdb')} reads a side of a FULL JOIN, "
            "whose columns are NULL for the other side's unmatched people",
            "use an aggregate's FILTER (WHERE ...), or a LEFT or RIGHT JOIN")


def _null_group(plan: Plan, ctx: Context, what: str) -> tuple[Plan, int]:
    """A FULL JOIN grouped by one side's keys: the other side's unmatched people fall in
    the cell of the keys' values on a row of NULLs, evaluated like ``_null_factor``; a key
    that is NULL there gets NULL added to its public domain (SQL's NULL group), a value
    outside the domain is refused. Returns the plan and that cell's index among the
    grouping party's cells (-1 without group keys)."""
    if not plan.groups:
        return plan, -1
    party = plan.groups[0].party
    step = plan.step(party)
    exprs = {g.name: g.expr.sql(dialect="duckdb") for g in ctx.bound.group_by}
    columns = {c.name: c for c in step.columns}
    keys, cell = [], 0
    for g in plan.groups:
        assert g.domain is not None  # private keys are refused (_refuse)
        col = columns[g.column]
        index, value = _on_nulls(step, [col.sql, exprs[g.output]])
        domain = g.domain
        if index is None or int(index) < 0:
            if value is not None:
                raise UnsupportedError(
                    f"{what}: GROUP BY {g.output} is {value!r} on the other side's unmatched "
                    "people, outside its public domain",
                    "group by a column whose value on NULLs is NULL or a declared value")
            index = len(domain)
            domain = (*domain, None)  # type: ignore[assignment]
            sql = f"CASE WHEN ({exprs[g.output]}) IS NULL THEN {index} ELSE {col.sql} END"
            columns[g.column] = replace(col, sql=sql, domain=domain)
        keys.append(replace(g, domain=domain))
        cell = cell * len(domain) + int(index)
    step = replace(step, columns=tuple(columns[c.name] for c in step.columns))
    steps = tuple(step if s.party == party else s for s in plan.steps)
    return replace(plan, groups=tuple(keys), steps=steps), cell


def _refuse(plan: Plan, ctx: Context, what: str, preserved: str, optional: str, *,
            full: bool = False) -> None:
    """Refuse, naming the construct, what the outer join cannot answer exactly."""
    if any(j.mode == "oblivious" for j in plan.joins):
        raise UnsupportedError(f"{what}: an outer join that must reveal nothing "
                               "(join_reveal = \"nothing\") is not supported", _HINT)
    for g in plan.groups:
        if g.private:
            raise UnsupportedError(
                f"{what}: GROUP BY {g.output} has no public domain; partition selection is not "
                "supported with an outer join across parties",
                f"declare values = [...] for {g.output}, or use an inner JOIN")
        if g.party == optional and not full:
            raise UnsupportedError(
                f"{what}: GROUP BY {g.output} reads the optional side ({optional}), whose "
                "columns are NULL for unmatched people", f"group by {preserved}'s columns only")
    for c in ctx.bound.conjuncts:
        if optional in parties_in(c, ctx.bound):
            raise UnsupportedError(
                f"{what}: the condition {c.sql(dialect='duckdb')} reads the optional side "
                f"({optional}); on NULLs it would make the outer join an inner one",
                "write an inner JOIN, or an aggregate's FILTER on the other side's columns")
    for o in list(plan.outputs) + list(plan.hidden):
        if o.kind in ("var", "quantile", "count_distinct"):
            raise UnsupportedError(
                f"{what}: {o.name} (variance, quantile, MIN/MAX or COUNT(DISTINCT)) is not "
                "supported with an outer join across parties",
                "use COUNT(*), COUNT(col), SUM or AVG")
    for a in plan.aggregates:
        owners = {t.party for t in a.terms if t.party is not None}
        if a.kind == "count_distinct":
            raise UnsupportedError(f"{what}: COUNT(DISTINCT) is not supported with an outer "
                                   "join across parties", "use COUNT(*), COUNT(col), SUM or AVG")
        if len(owners) > 1 and not a.product:
            raise UnsupportedError(
                f"{what}: {a.output} adds columns of both sides (NULL for unmatched people, "
                "which makes the whole sum NULL)", "aggregate each side's columns apart")
    if any(s.dimensions or s.semi or s.per_unit for s in plan.steps):
        raise UnsupportedError(f"{what}: dimension tables, semi-joins and per-person tables "
                               "are not supported with an outer join across parties", _HINT)


def _null_factor(step: LocalStep, kind: str) -> int:
    """The optional party's factor on a row of NULLs for one chain: its weight times, unless
    the chain counts rows (``kind == "w"``), its clamped fixed-point value column."""
    cols = [step.column("w")] + ([] if kind == "w" else [step.column(kind)])
    out = 1
    for v in _on_nulls(step, [_column_sql(c) for c in cols]):
        out *= int(v or 0)  # a NULL weight or value adds nothing, as SQL's aggregates skip it
    return out


def _on_nulls(step: LocalStep, exprs: list[str]) -> tuple[object, ...]:
    """``exprs`` (SQL over ``step``'s table) evaluated on a row whose every column is NULL,
    in an in-memory DuckDB: no table is read, only the NULL row."""
    names: set[str] = set()
    for e in exprs:
        names |= {c.name for c in sqlglot.parse_one(e, read="duckdb").find_all(exp.Column)}
    alias = step.aliases[0]
    nulls = ", ".join(f'NULL AS "{n}"' for n in sorted(names)) or "NULL AS __none"
    sql = (f"SELECT {', '.join(f'({e})' for e in exprs)} "
           f'FROM (SELECT {nulls}) AS "{alias}"')
    try:
        with duckdb.connect() as con:
            row = con.execute(sql).fetchone()
    except duckdb.Error as error:
        raise UnsupportedError(
            f"an expression of {step.party}'s columns cannot be evaluated on the NULLs of an "
            f"unmatched row of an outer join ({error})",
            "aggregate and group by plain columns of the optional side, or use an inner "
            "JOIN") from None
    assert row is not None
    return tuple(row)
