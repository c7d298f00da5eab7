"""Place what spans parties on the secure runtime: the joins and cross-party predicates.

A query over one party's tables stays at that party (``mode = "local"``). Otherwise the
parties' rows are aligned by join stages in FROM order: stage ``j`` joins the parties
joined so far with the next one, on tags keyed by the previous party and the next one,
opened to a compute party outside that pair; when a table asks for ``join_reveal =
"nothing"``, the stages are oblivious instead (``_oblivious_stages``: the first party is
the hub, every party is padded to its declared ``max_units``). Every WHERE conjunct
spanning parties is rewritten over local columns: single-party pieces become 0/1
``atom`` columns computed by their owner, and comparisons across parties become
``sum of parts <op> 0`` over fixed-point ``operand`` columns, one part per party; under
OR or NOT in SQL's three-valued logic (``_where_conjunct``). Two parties' group columns
compared directly (``a.status = b.status``, ``a.day < b.day``) are compared as codes
(``rewrite/coded.py``), a product of one factor per party with a number as a product on
shares (``_product_comparison``), a quotient with a number as ``s (N - e D) <op> 0``
(``rewrite/cross_quotient.py``).

>>> from tests.sql_fixtures import federation
>>> from veilql.engine.rewrite import compile_plan
>>> plan = compile_plan(
...     "SELECT COUNT(*) FROM bank.loans l JOIN insurer.policies p "
...     "ON l.customer_id = p.customer_id WHERE l.amount > p.claims_amount OR p.open_claim = 1",
...     federation(), stop_after="place_secure")
>>> plan.cross.sql()  # under OR, the comparison also needs both parts not NULL
'bank.o0 + insurer.o0 > 0 AND bank.a0 = 1 AND insurer.a0 = 1 OR insurer.a1 = 1'
>>> [j.to_s() for j in plan.joins]  # doctest: +NORMALIZE_WHITESPACE
['secure join bank with insurer on the privacy unit: tags keyed by bank&insurer,
  shuffled, matched by payments; reveals the number of matching units']
"""

from __future__ import annotations

import decimal
from dataclasses import replace

from sqlglot import exp

from veilql.engine.plan.nodes import JoinStage, LocalColumn, Plan, cuckoo_bins
from veilql.engine.rewrite import cross_quotient
from veilql.engine.rewrite.coded import coded, is_coded
from veilql.engine.rewrite.context import Context
from veilql.engine.rewrite.linear import is_linear, split_linear, split_product
from veilql.engine.sql.bound import parties_in
from veilql.engine.sql.statistics import is_quotient
from veilql.engine.sql.typecheck import TypeChecker
from veilql.errors import PolicyError, QueryError, UnsupportedError

_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)


def place_secure(plan: Plan, ctx: Context) -> Plan:
    """Choose local or secure mode, the join stages, and the cross-party predicate."""
    parties = ctx.bound.parties
    if len(parties) == 1:
        return replace(plan, mode="local")
    compute = ctx.federation.party_names[:3]
    if len(compute) < 3:
        raise UnsupportedError(
            "a query across parties needs three compute parties, and the federation has "
            f"{len(compute)}",
            "add a helper party to federation.toml",
        )
    for g in plan.groups:
        if g.private and g.party not in compute:
            raise UnsupportedError(
                f"GROUP BY {g.output}: {g.party} is not a compute party, and keys without a "
                "public domain can only be selected at a compute party for now",
                f"declare values = [...] for {g.output} in policies/{g.party}.toml",
            )
    if _oblivious(ctx):
        joins = _oblivious_stages(plan, ctx, parties, compute)
    else:
        joins = []
        for j in range(1, len(parties)):
            pair = (parties[j - 1], parties[j])
            viewer = next(p for p in compute if p not in pair)
            joins.append(JoinStage(tuple(parties[:j]), parties[j], pair, viewer))

    new_cols: dict[str, list[LocalColumn]] = {s.party: list(s.columns) for s in plan.steps}
    cross = [c for c in ctx.bound.conjuncts if len(parties_in(c, ctx.bound)) > 1]
    expr = None
    for conj in cross:
        part = _where_conjunct(conj, ctx, new_cols)
        expr = part if expr is None else exp.And(this=expr, expression=part)
    aggregates = tuple(a if a.cross is None else replace(
        a, cross=_aggregate_predicate(a.cross, ctx, new_cols)) for a in plan.aggregates)
    steps = tuple(replace(s, columns=tuple(new_cols[s.party])) for s in plan.steps)
    return replace(plan, mode="secure", compute=compute, joins=tuple(joins), steps=steps,
                   cross=expr, aggregates=aggregates)


_FLIP: dict[type[exp.Expression], type[exp.Expression]] = {
    exp.EQ: exp.NEQ, exp.NEQ: exp.EQ, exp.GT: exp.LTE, exp.LTE: exp.GT, exp.GTE: exp.LT,
    exp.LT: exp.GTE}


def _where_conjunct(conj: exp.Expression, ctx: Context,
                    cols: dict[str, list[LocalColumn]]) -> exp.Expression:
    """A WHERE conjunct across parties over local columns. A bare comparison reads a NULL
    part as 0 on shares, which is harmless: a row with a NULL part has weight 0 at its owner
    (``push_local``), so it is dropped as SQL drops it. Under OR or NOT it is not (``a.x >
    b.y OR a.z < 5`` with ``b.y`` NULL is ``a.z < 5``), so those are rewritten in SQL's
    three-valued logic, as an aggregate's own condition is (``_aggregate_predicate``)."""
    inner = conj
    while isinstance(inner, exp.Paren):
        inner = inner.this
    if isinstance(inner, _COMPARISONS):
        return _rewrite(conj, ctx, cols)
    return _rewrite_known(_negation_inside(conj, ctx), ctx, cols)


def _aggregate_predicate(node: exp.Expression, ctx: Context,
                         cols: dict[str, list[LocalColumn]]) -> exp.Expression:
    """An aggregate's own condition across parties (``SUM(a.x > b.y)``, ``FILTER (WHERE
    ...)``) over local columns, TRUE exactly where SQL's three-valued logic makes it TRUE:
    NOT is pushed down to the comparisons (``NOT a > b`` is ``a <= b``; one party's pieces
    are atoms its owner evaluates in SQL, NOT included), and each comparison across
    parties also needs every party's part not NULL (a 0/1 atom per party): an operand
    reads NULL as 0, and a comparison with NULL is neither TRUE nor FALSE. (The WHERE's
    top-level comparisons get the same through each party's weight, ``push_local``.)"""
    if any(t.outer for t in ctx.bound.tables):
        raise UnsupportedError(
            f"the condition {node.sql(dialect='duckdb')} across parties inside an aggregate "
            "is not supported with an outer join across parties",
            "use an inner JOIN, or move the condition to WHERE")
    known = _known_of(node)
    if known is not None:  # AVG(c)'s denominator, ``c OR NOT c``: c IS NOT NULL
        return _not_null(known, ctx, cols)
    return _rewrite_known(_negation_inside(node, ctx), ctx, cols)


def _known_of(node: exp.Expression) -> exp.Expression | None:
    """``c`` when ``node`` is ``(c) OR NOT (c)`` (``push_local._known``), else None."""
    while isinstance(node, exp.Paren):
        node = node.this
    if not (isinstance(node, exp.Or) and isinstance(node.expression, exp.Not)):
        return None
    return node.this if node.this.sql() == node.expression.this.sql() else None


def _not_null(node: exp.Expression, ctx: Context,
              cols: dict[str, list[LocalColumn]]) -> exp.Expression:
    """``node IS NOT NULL`` over local columns: for a comparison across parties, its parts'
    not-NULL atoms alone (no comparison on shares); else TRUE or FALSE (``node OR NOT
    node`` in three-valued logic, ``_rewrite_known`` of each side)."""
    inner = node
    while isinstance(inner, exp.Paren):
        inner = inner.this
    if isinstance(inner, _COMPARISONS) and len(parties_in(inner, ctx.bound)) > 1:
        atoms = _known_atoms(inner, ctx, cols)
        if atoms:
            out = atoms[0]
            for a in atoms[1:]:
                out = exp.And(this=out, expression=a)
            return out
    return exp.Or(this=_rewrite_known(_negation_inside(node, ctx), ctx, cols),
                  expression=_rewrite_known(_negation_inside(node, ctx, True), ctx, cols))


def _negation_inside(node: exp.Expression, ctx: Context, negate: bool = False
                     ) -> exp.Expression:
    """``node`` (or NOT ``node``) with NOT pushed down to comparisons across parties and to
    one party's pieces (De Morgan; a NULL stays NULL through each step)."""
    while isinstance(node, exp.Paren):
        node = node.this
    if len(parties_in(node, ctx.bound)) < 2:
        return exp.Not(this=exp.Paren(this=node.copy())) if negate else node.copy()
    if isinstance(node, exp.Not):
        return _negation_inside(node.this, ctx, not negate)
    if isinstance(node, exp.And | exp.Or):
        cls = type(node) if not negate else exp.Or if isinstance(node, exp.And) else exp.And
        return cls(this=_negation_inside(node.this, ctx, negate),
                   expression=_negation_inside(node.expression, ctx, negate))
    if isinstance(node, exp.Between):
        low = exp.GTE(this=node.this.copy(), expression=node.args["low"].copy())
        high = exp.LTE(this=node.this.copy(), expression=node.args["high"].copy())
        return _negation_inside(exp.And(this=low, expression=high), ctx, negate)
    if negate and type(node) in _FLIP:
        return _FLIP[type(node)](this=node.this.copy(), expression=node.expression.copy())
    if negate:
        return exp.Not(this=exp.Paren(this=node.copy()))  # refused by _rewrite, naming it
    return node.copy()


def _rewrite_known(node: exp.Expression, ctx: Context,
                   cols: dict[str, list[LocalColumn]]) -> exp.Expression:
    """``_rewrite`` of a condition in negation normal form, each comparison across parties
    ANDed with its parts' not-NULL atoms."""
    if isinstance(node, exp.And | exp.Or) and len(parties_in(node, ctx.bound)) > 1:
        return type(node)(this=_rewrite_known(node.this, ctx, cols),
                          expression=_rewrite_known(node.expression, ctx, cols))
    out = _rewrite(node, ctx, cols)
    if not isinstance(node, _COMPARISONS) or len(parties_in(node, ctx.bound)) < 2:
        return out
    for atom in _known_atoms(node, ctx, cols):
        out = exp.And(this=out, expression=atom)
    return out


def _known_atoms(node: exp.Expression, ctx: Context,
                 cols: dict[str, list[LocalColumn]]) -> list[exp.Expression]:
    """``party.aN = 1`` per party with a part of the comparison ``node``: the part is not
    NULL (an existing atom of the same SQL reused)."""
    out: list[exp.Expression] = []
    if is_coded(node, TypeChecker(ctx.bound)):
        return out  # its codes' not-NULL atoms are in the comparison already
    for party, part in cross_quotient.comparison_parts(node.this, node.expression, ctx):
        if party is None or not list(part.find_all(exp.Column)):
            continue
        test = f"CASE WHEN ({part.sql(dialect='duckdb')}) IS NULL THEN 0 ELSE 1 END"
        name = next((c.name for c in cols[party] if c.role == "atom" and c.sql == test),
                    None) or _add(cols[party], "a", "atom", test, 0)
        out.append(exp.EQ(this=exp.column(name, table=party),
                          expression=exp.Literal.number(1)))
    return out


def _oblivious(ctx: Context) -> bool:
    """Whether any table of the query asks for a join that reveals nothing."""
    return any(t.policy.join_reveal == "nothing" for t in ctx.bound.tables)


def bounds(ctx: Context) -> dict[str, int]:
    """Each party's declared bound on its units in this query: the least ``max_units`` of
    its tables (its local join is an inner join on the unit). Refuses, naming the table,
    when a table declares none (an oblivious join pads every party to its bound)."""
    asking = next(t for t in ctx.bound.tables if t.policy.join_reveal == "nothing")
    out: dict[str, int] = {}
    for t in ctx.bound.tables:
        if t.policy.max_units is None:
            raise PolicyError(
                f"{t.party}.{t.table} declares no max_units, and this join must reveal "
                f"nothing (join_reveal = \"nothing\" on {asking.party}.{asking.table}): "
                "every table of the query is padded to its declared bound",
                f"declare max_units = N (the most people the table may hold) under "
                f"[tables.{t.table}] in {t.party}'s policy",
            )
        out[t.party] = min(out.get(t.party, t.policy.max_units), t.policy.max_units)
    return out


def _oblivious_stages(plan: Plan, ctx: Context, parties: tuple[str, ...],
                      compute: tuple[str, ...]) -> list[JoinStage]:
    """Stages of the oblivious join: the first party is the hub, joined with each other
    party in turn (every join is on the same privacy unit, so joining each party with the
    hub's rows is the same as the chain). The fetchers of a stage are two compute parties
    other than its right party, the hub among them when it computes."""
    for g in plan.groups:
        if g.private:
            raise UnsupportedError(
                f"GROUP BY {g.output}: a join that reveals nothing cannot group by keys "
                f"without a public domain (their number at {g.party} would be revealed)",
                f"declare values = [...] for {g.output} in policies/{g.party}.toml",
            )
    bound = bounds(ctx)
    hub = parties[0]
    stages = []
    for j in range(1, len(parties)):
        right = parties[j]
        others = [p for p in compute if p != right]
        if hub in others:
            others.sort(key=lambda p: p != hub)
        stages.append(JoinStage(
            tuple(parties[:j]), right, (hub, right), "", mode="oblivious",
            left_rows=bound[hub], right_units=bound[right], bins=cuckoo_bins(bound[right]),
            fetchers=tuple(others[:2])))
    return stages


def _rewrite(
    node: exp.Expression, ctx: Context, cols: dict[str, list[LocalColumn]]
) -> exp.Expression:
    """The cross-party predicate over local columns (see the module docstring)."""
    if isinstance(node, exp.Paren):
        return _rewrite(node.this, ctx, cols)
    owners = parties_in(node, ctx.bound)
    if len(owners) == 1:
        party = next(iter(owners))
        name = _add(cols[party], "a", "atom",
                    f"CASE WHEN {node.sql(dialect='duckdb')} THEN 1 ELSE 0 END", 0)
        return exp.EQ(this=exp.column(name, table=party), expression=exp.Literal.number(1))
    if isinstance(node, exp.And | exp.Or):
        cls = type(node)
        return cls(this=_rewrite(node.this, ctx, cols),
                   expression=_rewrite(node.expression, ctx, cols))
    if isinstance(node, exp.Not):
        return exp.Not(this=_rewrite(node.this, ctx, cols))
    if isinstance(node, exp.Between):
        low = exp.GTE(this=node.this.copy(), expression=node.args["low"].copy())
        high = exp.LTE(this=node.this.copy(), expression=node.args["high"].copy())
        return _rewrite(exp.And(this=low, expression=high), ctx, cols)
    if isinstance(node, _COMPARISONS):
        diff = exp.Sub(this=node.this.copy(), expression=exp.Paren(this=node.expression.copy()))
        checker = TypeChecker(ctx.bound)
        if is_coded(node, checker):  # two parties' text, dates...: codes, NULL-guarded
            return coded(node, ctx, checker, cols, _add, "WHERE")
        if is_quotient(node.this, ctx.party_of):  # a quotient's bucket test
            return cross_quotient.comparison(node, ctx, cols, _add)
        if not is_linear(diff, ctx.party_of):  # a product's bucket test (cross_histogram.py)
            return _product_comparison(node, ctx, cols)
        decimals = ctx.decimals_of(node)
        parts = split_linear(diff, ctx.party_of)
        constant = parts.pop(None, None)
        total: exp.Expression | None = None
        for i, (party, part) in enumerate(parts.items()):
            if i == 0 and constant is not None:
                part = exp.Add(this=part, expression=constant)
            name = _add(cols[party], "o", "operand", part.sql(dialect="duckdb"), decimals)
            ref = exp.column(name, table=party)
            total = ref if total is None else exp.Add(this=total, expression=ref)
        return type(node)(this=total, expression=exp.Literal.number(0))
    raise UnsupportedError(
        f"{node.sql(dialect='duckdb')} across parties is not supported",
        "compare arithmetic of value columns across parties with = <> < <= > >=",
    )


def _product_comparison(node: exp.Expression, ctx: Context,
                        cols: dict[str, list[LocalColumn]]) -> exp.Expression:
    """``a.x * b.y >= e`` (``<``, ``>``, ``<=``; a histogram's bucket test, a FILTER) over
    local columns: one operand per party's factor in its own digits, multiplied on shares,
    against a public integer: the product ``P`` of the scaled factors is an integer, so with
    ``D`` their digits summed ``P >= e 10^D`` exactly when ``P >= ceil(e 10^D)`` (``<``
    too), and ``P > e 10^D`` when ``P > floor(e 10^D)`` (``<=`` too)."""
    if not isinstance(node, exp.GTE | exp.LT | exp.GT | exp.LTE) or \
            list(node.expression.find_all(exp.Column)):
        raise UnsupportedError(
            f"{node.sql(dialect='duckdb')}: a product of several parties' columns is "
            "compared on shares only with a number, by <, <=, > or >=",
            "write e.g. a.x * b.y >= 10, or compare a sum of the parties' parts")
    number = node.expression
    while isinstance(number, exp.Paren):
        number = number.this
    text = number.sql(dialect="duckdb")
    if not isinstance(number.this if isinstance(number, exp.Neg) else number, exp.Literal):
        raise UnsupportedError(
            f"{node.sql(dialect='duckdb')}: a product of several parties' columns is "
            "compared on shares only with a number written in the query",
            f"compute {text} and write the number")
    factors = split_product(node.this, ctx.party_of)
    constant = factors.pop(None, None)
    if constant is not None:  # fold a constant factor into the first party's
        first = next(iter(factors))
        factors[first] = exp.Mul(this=exp.Paren(this=constant),
                                 expression=exp.Paren(this=factors[first]))
    total: exp.Expression | None = None
    digits, reach = 0, 1.0
    for party, factor in factors.items():
        d = ctx.decimals_of(factor)
        digits += d
        num = TypeChecker(ctx.bound).numeric(factor)
        reach *= max(abs(float(num.lo)), abs(float(num.hi))) * 10.0**d
        ref = exp.column(_add(cols[party], "o", "operand", factor.sql(dialect="duckdb"), d),
                         table=party)
        total = ref if total is None else exp.Mul(this=total, expression=ref)
    edge = decimal.Decimal(text).scaleb(digits)
    bound = int(edge.to_integral_value(rounding=decimal.ROUND_CEILING if isinstance(
        node, exp.GTE | exp.LT) else decimal.ROUND_FLOOR))
    if reach + abs(bound) >= 2.0**62:  # compared as a signed 64-bit difference
        raise QueryError(
            f"{node.sql(dialect='duckdb')}: the product of the scaled factors can reach "
            f"{reach:.3g} under the declared bounds, beyond the ring's safe range (2^62)",
            "narrow the declared bounds of its columns")
    return type(node)(this=total, expression=exp.Literal.number(bound))


def _add(cols: list[LocalColumn], prefix: str, role: str, sql: str, decimals: int) -> str:
    for c in cols:  # the same part of two comparisons is one column (and one comparison)
        if c.role == role and c.sql == sql and c.decimals == decimals and \
                c.name.startswith(prefix):
            return c.name
    n = sum(1 for c in cols if c.name.startswith(prefix) and c.name[len(prefix):].isdigit())
    name = f"{prefix}{n}"
    cols.append(LocalColumn(name, role, sql, decimals=decimals))  # type: ignore[arg-type]
    return name
