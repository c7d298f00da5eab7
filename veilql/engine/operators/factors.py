"""Each party's factors: what it multiplies into every aggregate, computed on its own rows.

An aggregate over the joined rows is a sum over units (and slots) of a product with one
factor per party: the party's weight (its own predicates passed), times the indicator of
its part of the group cell, times the aggregated value when the party owns it. Each party
computes its factors locally in the clear, so only the cross-party products and sums run
on shares. Without a cross-party predicate the slots of a unit are summed locally first
(for COUNT(DISTINCT) they are OR-ed), which leaves one row per unit to share.

Arrays have shape (units, slots, aggregates, cells of this party), int64 in fixed point.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import sqlglot
from sqlglot import exp

from veilql.connectors.base import Connector
from veilql.engine.dp.ring import MAX_UNITS
from veilql.engine.operators.exact_sums import EngineSums, scaled_after_sum
from veilql.engine.operators.local import PartyRows
from veilql.engine.operators.raw_groups import raw_groups
from veilql.engine.plan.nodes import AggregateSpec, GroupKey, LocalStep, Plan
from veilql.errors import ProtocolError


def party_cells(groups: tuple[GroupKey, ...], party: str) -> tuple[GroupKey, ...]:
    """The group keys ``party`` holds, in GROUP BY order."""
    return tuple(g for g in groups if g.party == party)


def group_size(g: GroupKey, rows: PartyRows | None = None) -> int:
    """Size of a group's domain: public, or the owner's private list of keys."""
    if g.domain is not None:
        return len(g.domain)
    if rows is None or g.column not in rows.labels:
        raise ValueError(f"the keys of {g.output} are private to {g.party}")
    return len(rows.labels[g.column])


def cell_count(groups: tuple[GroupKey, ...], rows: PartyRows | None = None) -> int:
    """Number of cells spanned by ``groups`` (1 when there are none): the cells that occur
    in ``rows`` when they are sparse (``sparsify``), else every combination of domains."""
    if rows is not None and rows.cells is not None and any(g.private for g in groups):
        return len(rows.cells)
    n = 1
    for g in groups:
        n *= group_size(g, rows)
    return n


def dense_index(rows: PartyRows, groups: tuple[GroupKey, ...]) -> np.ndarray:
    """Mixed-radix index over the domains of ``groups`` of each (unit, slot); -1 outside.

    >>> from veilql.engine.operators.local import pivot
    >>> rows = pivot({"__unit": np.array([1, 2]), "g0": np.array([1, -1])}, ["g0"], 1)
    >>> dense_index(rows, (GroupKey("r", "bank", "g0", ("a", "b")),)).tolist()
    [[1], [-1]]
    """
    idx = np.zeros(rows.present.shape, dtype=np.int64)
    outside = np.zeros(rows.present.shape, dtype=bool)
    for g in groups:
        col = rows.cols[g.column]
        outside |= col < 0
        idx = idx * group_size(g, rows) + np.maximum(col, 0)
    idx[outside] = -1
    return idx


def cell_index(rows: PartyRows, groups: tuple[GroupKey, ...]) -> np.ndarray:
    """Cell index of each (unit, slot) over ``groups``: the mixed-radix index, or with
    sparse cells its place among the occurring ones; -1 outside the domains."""
    dense = dense_index(rows, groups)
    if rows.cells is None or not any(g.private for g in groups):
        return dense
    return sparse_places(rows.cells, dense)


def sparse_places(cells: np.ndarray, dense: np.ndarray) -> np.ndarray:
    """Each dense index's place in the sorted ``cells``, -1 where it is not one of them.

    >>> sparse_places(np.array([3, 7, 40]), np.array([7, -1, 40, 5])).tolist()
    [1, -1, 2, -1]
    """
    if len(cells) == 0:
        return np.full(dense.shape, -1, dtype=np.int64)
    place = np.minimum(np.searchsorted(cells, dense), len(cells) - 1)
    return np.where((dense >= 0) & (cells[place] == dense), place, -1).astype(np.int64)


def sparsify(plan: Plan, party: str, rows: PartyRows) -> None:
    """With a private group key among ``party``'s group columns, keep as its cells only the
    combinations that occur in its (bounded) rows, in sorted mixed-radix order.

    A cell that occurs at no party is an exact 0 that partition selection would drop, so it
    needs no factor column; with several group columns at one party the combinations of
    their domains (e.g. 2 x 16 x 3,000) far outnumber the rows. What the compute parties
    learn is the number of occurring combinations (the array length) instead of the
    number of distinct private keys (``docs/SECURITY.md``). Public domains alone stay dense:
    every cell of a public domain is released, and which occur must stay private.
    """
    groups = party_cells(plan.groups, party)
    if not any(g.private for g in groups):
        return
    rows.cells = None
    dense = dense_index(rows, groups)
    rows.cells = np.unique(dense[rows.present & (dense >= 0)])


def factor_kind(agg: AggregateSpec, party: str) -> str:
    """Which of its columns ``party`` multiplies into ``agg``: ``w`` or a value column (its
    term's; for a product, its factor's)."""
    for term in agg.terms:
        if term.party == party and term.column is not None:
            return term.column
    return "w"


def factor_width(plan: Plan, party: str, rows: PartyRows, aggregates: tuple[AggregateSpec, ...],
                 *, slot_level: bool) -> int:
    """Words per unit of ``party``'s factors and of the temporaries that build them (the
    slots times aggregates times cells, before the slots are summed)."""
    ncell = cell_count(party_cells(plan.groups, party), rows)
    return rows.present.shape[1] * max(1, len(aggregates)) * ncell


def collapsible(party: str, aggregates: tuple[AggregateSpec, ...]) -> bool:
    """Whether ``party`` multiplies the same factor into every aggregate: the same column
    (e.g. only its weight, when it owns no value) and the same reduction of slots."""
    kinds = {(factor_kind(a, party), a.kind == "count_distinct") for a in aggregates}
    return len(aggregates) > 1 and len(kinds) == 1


def build_factors(
    plan: Plan, party: str, rows: PartyRows, aggregates: tuple[AggregateSpec, ...],
    *, slot_level: bool, chunk_rows: int | None = None, collapse: bool = False,
    cells: bool = True,
) -> np.ndarray:
    """Factors of ``party`` for ``aggregates``: shape (units, slots or 1, aggs, cells).

    For a SUM with terms at several parties, the factor of a party that owns no term of
    it is its weight; this function is called once per term chain by the caller, which
    passes one aggregate per term (see ``expand_terms``). Units are taken ``chunk_rows`` at
    a time (all at once by default), so the temporaries stay within a chunk; the result
    does not depend on it. With ``collapse``, a party whose factor is the same for every
    aggregate (``collapsible``) gets one aggregate axis of length 1, which the secure sum
    broadcasts (e.g. the owner of the group columns, four cells and three aggregates:
    four words per unit instead of twelve). ``cells=False`` ignores the party's group
    columns (one cell: the values part of ``separable`` factors).
    """
    if collapse and collapsible(party, aggregates):
        aggregates = aggregates[:1]
    groups = party_cells(plan.groups, party) if cells else ()
    ncell = cell_count(groups, rows)
    n, slots = rows.present.shape
    out = np.zeros((n, slots if slot_level else 1, len(aggregates), ncell), dtype=np.int64)
    step = max(1, chunk_rows or n)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        part = PartyRows(rows.keys[lo:hi], {k: v[lo:hi] for k, v in rows.cols.items()},
                         rows.present[lo:hi], rows.labels, rows.cells)
        _factors(part, groups, party, aggregates, slot_level, out[lo:hi])
    return out


def _factors(rows: PartyRows, groups: tuple[GroupKey, ...], party: str,
             aggregates: tuple[AggregateSpec, ...], slot_level: bool, out: np.ndarray) -> None:
    """``build_factors`` of one chunk of units, written into ``out`` (zeros on entry).

    Each (unit, slot) adds its value into its one cell (a scatter per slot: a unit's slots
    are distinct rows of it, so no two writes of one slot meet), rather than multiplying
    by a one-hot row of every cell; COUNT(DISTINCT) ORs its slots' ``value > 0``.
    """
    cells = cell_index(rows, groups) if groups else None  # no groups: one cell, all in it
    inside = cells >= 0 if cells is not None else None
    w = rows.cols["w"] * rows.present
    ncell = out.shape[3]
    for k, agg in enumerate(aggregates):
        kind = factor_kind(agg, party)
        value = w if kind == "w" else w * rows.cols[kind]
        distinct = agg.kind == "count_distinct" and not slot_level
        if distinct:
            value = (value > 0).astype(np.int64)
        if ncell == 1 or cells is None:
            if inside is not None:
                value = value * inside
            if slot_level:
                out[:, :, k, 0] = value
                continue
            # slot by slot: a reduction over a short last axis is several times slower
            target = out[:, 0, k, 0]
            target[...] = value[:, 0]
            for s in range(1, value.shape[1]):
                if distinct:
                    target |= value[:, s]
                else:
                    target += value[:, s]
            continue
        assert cells is not None and inside is not None
        for s in range(value.shape[1]):
            units = np.flatnonzero(inside[:, s])
            target = out[:, s if slot_level else 0, k, :]  # a view: written through
            where = (units, cells[units, s])
            if slot_level:
                target[where] = value[units, s]
            elif distinct:
                target[where] |= value[units, s]
            else:
                target[where] += value[units, s]


def separable(plan: Plan, party: str) -> bool:
    """Whether ``party`` shares its factors as two parts, values (units, 1, aggregates, 1)
    and a one-hot row of its cells (units, 1, 1, cells), whose product on shares is the
    factor: aggregates + cells words per unit instead of aggregates x cells.

    Decided from the plan alone (the shapes must not depend on the data): slots summed
    locally (no cross-party predicate), only public group domains, a factor not already
    collapsed, and every group column read only from tables the party keeps one row per
    person of (``max_rows_per_unit = 1``, joined on the unit, not outer, semi or through a
    dimension), so that all of a unit's slots fall in one cell.
    """
    groups = party_cells(plan.groups, party)
    if plan.on_shares or not groups or any(g.private for g in groups):
        return False
    chains, _ = expand_terms(plan)
    ncell = cell_count(groups)
    if collapsible(party, chains) or len(chains) + ncell >= len(chains) * ncell:
        return False
    step = plan.step(party)
    if step.dimensions:
        return False
    for g in groups:
        tree = sqlglot.parse_one(step.column(g.column).sql, read="duckdb")
        for col in tree.find_all(exp.Column):
            if col.table not in step.aliases:
                return False  # unqualified or unknown: not provably one row per person
            i = step.aliases.index(col.table)
            if step.max_rows[i] != 1 or (step.semi and step.semi[i]) or \
                    (step.outer and step.outer[i]):
                return False
    return True


def cell_indicator(plan: Plan, party: str, rows: PartyRows) -> np.ndarray:
    """The one-hot row of each unit's cell, shape (units, 1, 1, cells), int64 (zeros
    outside the domains); the cell of a unit is that of its present slots, which agree
    when ``separable`` holds."""
    groups = party_cells(plan.groups, party)
    ncell = cell_count(groups, rows)
    cell = np.where(rows.present, cell_index(rows, groups), -1).max(axis=1)
    out = np.zeros((rows.units, 1, 1, ncell), dtype=np.int64)
    units = np.flatnonzero(cell >= 0)
    out[units, 0, 0, cell[units]] = 1
    return out


def expand_terms(plan: Plan) -> tuple[tuple[AggregateSpec, ...], list[tuple[int, int]]]:
    """The distinct term chains, and which aggregate each adds into: ``(chain, aggregate)``
    pairs, so that aggregate ``a`` is the sum of the chains paired with it.

    SUM(a.x + b.y) becomes SUM(a.x) and SUM(b.y) over the same rows, added on shares. A
    product SUM(a.x * b.y) is one chain whose factor is a.x at a and b.y at b (each party
    multiplies its own term into the product; ``factor_kind``). Chains that compute the
    same quantity (the same kind, terms and product, e.g. AVG(x)'s count beside COUNT(*))
    are built, shared and multiplied once: their exact values are equal, and each
    aggregate still gets its own noise.
    """
    chains: list[AggregateSpec] = []
    owner: list[tuple[int, int]] = []
    seen: dict[tuple[object, ...], int] = {}

    def add(chain: AggregateSpec, agg: int) -> None:
        key = (chain.kind, chain.terms, chain.product,
               chain.cross.sql() if chain.cross is not None else None)
        if key not in seen:
            seen[key] = len(chains)
            chains.append(chain)
        owner.append((seen[key], agg))

    for i, agg in enumerate(plan.aggregates):
        if agg.product:
            add(AggregateSpec(agg.name, agg.output, agg.kind, agg.terms, product=True,
                              cross=agg.cross), i)
            continue
        for term in agg.terms:
            add(AggregateSpec(agg.name, agg.output, agg.kind, (term,), cross=agg.cross), i)
    return tuple(chains), owner


def combine_plain(factors: list[np.ndarray]) -> np.ndarray:
    """The aggregates in the clear from one or more parties' aligned factors.

    Used by the single-party path, and by tests as the reference for the secure path.
    Returns shape (aggs, cells) in party order of the cell axes.
    """
    n = factors[0].shape[0]
    aggs = factors[0].shape[2]
    acc = factors[0].reshape(n, factors[0].shape[1], aggs, -1)
    for f in factors[1:]:
        # outer product over slots and cells, elementwise over units and aggregates
        s, c = f.shape[1], f.shape[3]
        acc = (acc[:, :, None, :, :, None] * f[:, None, :, :, None, :]).reshape(
            n, acc.shape[1] * s, aggs, acc.shape[3] * c)
    return acc.sum(axis=(0, 1))


def aggregate_sql(plan: Plan, party: str, sql: str, cells: dict[str, str] | None = None,
                  sums: EngineSums | None = None) -> tuple[str, list[str], list[str]]:
    """The SQL that reduces ``party``'s bounded local result ``sql`` to its aggregates.

    One row per combination of the party's group columns, with per term chain its sum of
    the weight times its value (``SUM(w)`` for a count; for COUNT(DISTINCT) the units with a
    positive factor) and the number of rows, exactly what ``build_factors`` and
    ``combine_plain`` compute over the pivoted rows. Returns the SQL, the group columns and
    the names of the chain columns. With ``cells`` (``raw_groups``: ``sql`` projects those
    group columns as their raw keys) the rows are grouped by the raw keys and the groups
    mapped to their cells by ``cells[column]`` in one more GROUP BY, whose sums are the
    same (no COUNT(DISTINCT) chain then).

    Rows of weight 0 (failing the party's own WHERE) are left out (``WHERE "w" <> 0``):
    every chain multiplies by the weight, so they add nothing to any sum or distinct count,
    and the engine then evaluates the value columns and groups only the rows that pass
    (at 10^6 rows 12.3 ms against 9.1 ms of DuckDB for a query with one predicate). The
    row count ``__rows`` then counts passing rows only, still an upper bound of the units
    that contribute, which is all ``reduce_in_engine`` uses it for. Not with a private group
    key of ``party``: its occurring keys are those of all its rows, as the secure path's.
    ``sums`` (``exact_sums``, its ``sql`` being ``sql``): value columns projected unscaled,
    each with the factor its sum is multiplied by, and whether the weight is 0 or 1 (then,
    with the rows of weight 0 left out, a count is ``COUNT(*)`` and a sum needs no product).

    >>> from veilql.engine.plan.nodes import Term
    >>> plan = Plan.__new__(Plan)
    >>> object.__setattr__(plan, "groups", (GroupKey("r", "bank", "g0", ("a", "b")),))
    >>> count = AggregateSpec("n", "n", "count", (Term(None, None),))
    >>> object.__setattr__(plan, "aggregates", (count,))
    >>> print(aggregate_sql(plan, "bank", "SELECT 1")[0])  # doctest: +NORMALIZE_WHITESPACE
    SELECT "g0", SUM("w") AS "__c0", COUNT(*) AS "__rows" FROM (SELECT 1) AS "__l"
      WHERE "w" <> 0 GROUP BY "g0"
    """
    keys = party_cells(plan.groups, party)
    groups = [g.column for g in keys]
    filtered = not any(g.private for g in keys)
    scaled = sums.scaled if sums is not None else {}
    binary = filtered and sums is not None and sums.binary
    chains, _ = expand_terms(plan)
    parts = [f'"{g}"' for g in groups]
    names = []
    for i, chain in enumerate(chains):
        kind = factor_kind(chain, party)
        value = '"w"' if kind == "w" else f'"w" * "{kind}"'
        name = f"__c{i}"
        factor = scaled.get(kind)
        if chain.kind == "count_distinct":  # the sign is the same unscaled
            parts.append(f'COUNT(DISTINCT CASE WHEN {value} > 0 THEN "__unit" END) AS "{name}"')
            names.append(name)
            continue
        total = ("COUNT(*)" if kind == "w" else f'SUM("{kind}")') if binary else f"SUM({value})"
        if factor is not None and kind != "w":
            total = f"CAST({total} * {factor} AS HUGEINT)"
        parts.append(f'{total} AS "{name}"')
        names.append(name)
    parts.append('COUNT(*) AS "__rows"')
    out = f'SELECT {", ".join(parts)} FROM ({sql}) AS "__l"'
    if filtered:
        out += ' WHERE "w" <> 0'
    if groups:
        out += " GROUP BY " + ", ".join(f'"{g}"' for g in groups)
    if cells and groups:
        assert not any(c.kind == "count_distinct" for c in chains), "distinct units do not add"
        keys = [f'{cells[g]} AS "{g}"' if g in cells else f'"{g}"' for g in groups]
        sums = [f'SUM("{n}") AS "{n}"' for n in [*names, "__rows"]]
        out = (f'SELECT {", ".join(keys + sums)} FROM ({out}) AS "__r" GROUP BY '
               + ", ".join(str(i + 1) for i in range(len(groups))))
    return out, groups, names


def reduce_groups(plan: Plan, party: str, result: list[dict], groups: list[str],
                  names: list[str]) -> tuple[np.ndarray, PartyRows]:
    """Per chain and cell the sums of ``aggregate_sql``'s ``result`` rows, shape (chains,
    cells), and a ``PartyRows`` holding only the private group labels (indexed as
    ``local.index_labels`` indexes them over all rows: the same distinct values) and, with
    a private key, the occurring cells (the same as ``sparsify`` over the pivoted rows)."""
    from veilql.engine.operators.local import index_labels, labels_only

    keys = party_cells(plan.groups, party)
    data = {g: np.array([row[g] for row in result], dtype=object) for g in groups}
    labels: dict[str, list] = {}
    for g in keys:
        if g.private:
            data[g.column], labels[g.column] = index_labels(data[g.column])
    rows = labels_only(PartyRows(np.empty(0), {}, np.zeros((0, 1), dtype=bool), labels))
    sizes = [group_size(g, rows) for g in keys]
    cell = np.zeros(len(result), dtype=np.int64)
    inside = np.ones(len(result), dtype=bool)
    for g, size in zip(keys, sizes, strict=True):
        col = np.array([0 if v is None else int(v) for v in data[g.column]], dtype=np.int64)
        inside &= col >= 0
        cell = cell * size + np.maximum(col, 0)
    if any(g.private for g in keys):  # sparse cells, as ``sparsify`` makes them
        rows.cells = np.unique(cell[inside])
        cell = sparse_places(rows.cells, cell)
        ncell = len(rows.cells)
    else:
        ncell = int(np.prod(sizes, dtype=np.int64)) if sizes else 1
    out = np.zeros((len(names), ncell), dtype=np.int64)
    for i, name in enumerate(names):
        sums = np.array([int(row[name] or 0) for row in result], dtype=np.int64)
        np.add.at(out[i], cell[inside], sums[inside])
    return out, rows


def reduce_in_engine(plan: Plan, step: LocalStep, connector: Connector,
                     seed: str) -> tuple[np.ndarray, PartyRows]:
    """A single-party plan's aggregates, shape (aggregates, cells), reduced by the party's
    own engine (``aggregate_sql`` around the bounded local SQL; on DuckDB grouped by the raw
    group keys, ``raw_groups``), and its private group labels (a ``PartyRows`` without
    arrays); what ``local_mode.aggregate_plain`` computes over the pivoted rows."""
    from veilql.engine.operators import histogram
    from veilql.engine.operators.local import bounded_sql, run_engine

    if histogram.families(plan, step.party):  # a large COUNT(DISTINCT): grouped by bucket
        return histogram.reduce_in_engine(plan, step, connector, seed)
    party = step.party
    chains, _ = expand_terms(plan)
    raw = None
    if connector.dialect == "duckdb" and not any(c.kind == "count_distinct" for c in chains):
        raw = raw_groups(step, party_cells(plan.groups, party))  # group by the raw keys
    local, sums = bounded_sql(replace(step, sql=raw.sql) if raw else step, seed), None
    if connector.dialect == "duckdb":  # exact values summed first, scaled once per group
        sums = scaled_after_sum(local, connector, step.tables)
        local = sums.sql
    sql, groups, names = aggregate_sql(plan, party, local, raw.cells if raw else None, sums)
    result = run_engine(connector, sql)
    if sum(int(r["__rows"] or 0) for r in result) > MAX_UNITS:
        # Rows bound units from above; count them exactly only when that bound is too big.
        count = run_engine(connector, 'SELECT COUNT(DISTINCT "__unit") AS "n" FROM '
                                      f'({bounded_sql(step, seed)}) AS "__l"')
        if int(count[0]["n"]) > MAX_UNITS:
            raise ProtocolError(f"{party} holds more than {MAX_UNITS} people in the tables of "
                                "this query, beyond the range the plan was checked for")
    per_chain, rows = reduce_groups(plan, party, result, groups, names)
    _, owner = expand_terms(plan)
    out = np.zeros((len(plan.aggregates), per_chain.shape[1]), dtype=np.int64)
    for i, agg in owner:
        out[agg] += per_chain[i]
    return out, rows
