"""A bound query: names resolved against the federation, policy-checked, ready to plan.

Everything is a frozen dataclass. Expressions inside (sqlglot trees) are shared with the
binder's output: treat them as read-only and ``.copy()`` before rewriting.

Column references in ``where``, ``conjuncts`` and ``Output.expr`` are ``alias.column``
(``exp.Column(this=column, table=alias)``) with the names spelled as in the policy.
``having`` and ``order_by`` refer to outputs by name only (unqualified ``exp.Column``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlglot import exp

from veilql.policies.model import ColumnPolicy, TablePolicy

OutputKind = Literal["group", "count", "count_distinct", "sum", "avg", "expr", "var",
                     "quantile"]
OUTPUT_KINDS: tuple[str, ...] = ("group", "count", "count_distinct", "sum", "avg", "expr",
                                 "var", "quantile")
SemiKind = Literal["", "semi", "anti"]


@dataclass(frozen=True)
class PerUnit:
    """A WITH or derived table that aggregates one table per person (``perunit.py``):
    ``SELECT unit, SUM(x) AS s ... FROM party.table WHERE ... GROUP BY unit``, read at the
    owner as one row per person from at most ``max_rows`` bounded rows of the table.
    ``reads`` are the table's columns it reads, ``items`` each output column's name and its
    aggregate (SQL over ``alias.column``, values clamped to their declared bounds), and
    ``where`` its condition (SQL) or None."""

    max_rows: int
    reads: tuple[str, ...]
    items: tuple[tuple[str, str], ...]
    where: str | None = None
    inner: str = ""  # the alias ``items`` and ``where`` use for the table's rows


@dataclass(frozen=True)
class BoundTable:
    """One FROM entry: ``party.table AS alias`` and the table's policy.

    ``semi`` is ``"semi"`` for the table of an ``IN (SELECT unit ...)`` or ``EXISTS``
    subquery (a semi-join: it only says whether the unit has a row passing ``filter``) and
    ``"anti"`` for ``NOT IN`` / ``NOT EXISTS`` at a party that holds other tables of the
    query; ``""`` for a table of FROM and JOIN.
    """

    alias: str
    party: str
    table: str
    policy: TablePolicy
    semi: SemiKind = ""
    filter: exp.Expression | None = None  # qualified condition inside a semi-join
    # A dimension table (``policy.dimension``): ``party`` is the party that evaluates its
    # columns (the owner of the fact table it joins), ``owner`` the party holding it, and
    # ``link`` the join ``(fact alias, foreign-key column, dimension key column)``.
    owner: str = ""
    link: tuple[str, str, str] | None = None
    # "LEFT", "RIGHT" or "FULL" for the table of an outer join (to the tables before it, at
    # its own party; ``joins.outer_joins``), "" for an inner join.
    outer: str = ""
    # The conditions of an outer join's ON beside the unit equality (qualified; a LEFT,
    # RIGHT or FULL JOIN across two parties, ``joins.outer_joins``): the pairs of rows they
    # reject do not match, and the preserved rows then get NULLs (``rewrite/outer_on.py``).
    on: tuple[exp.Expression, ...] = ()
    # A per-person aggregating WITH / derived table over ``table`` (its policy is derived:
    # one row per unit, value columns bounded by the aggregates' bounds), else None.
    per_unit: PerUnit | None = None

    @property
    def unit(self) -> str:
        """The privacy-unit column (also the only join key); "" for a dimension table."""
        return self.policy.privacy_unit

    @property
    def dimension(self) -> bool:
        """True for a dimension table (no personal data, joined on a foreign key)."""
        return self.policy.dimension


@dataclass(frozen=True)
class BoundColumn:
    """A resolved column reference: which FROM entry, which column, and its policy."""

    alias: str
    party: str
    table: str
    column: str
    policy: ColumnPolicy

    def expr(self) -> exp.Column:
        """The qualified reference ``alias.column``.

        >>> from veilql.policies.model import ColumnPolicy
        >>> policy = ColumnPolicy("amount", "value")
        >>> BoundColumn("l", "bank", "loans", "amount", policy).expr().sql()
        'l.amount'
        """
        return exp.column(self.column, table=self.alias)


@dataclass(frozen=True)
class BoundGroup:
    """One GROUP BY item: a group column or an expression over one party's columns.

    ``name`` is unique among the query's group keys (the column's name, or the
    expression's, with ``_1``, ``_2``... appended to repeats, as DuckDB names repeated
    columns), so two columns of the same name at two parties are two keys. ``expr`` is
    qualified (``alias.column``); ``column`` is set when the item is a bare column.
    ``domain`` is the public domain of the key (declared, or derived from the
    expression); None when the keys are chosen privately (partition selection).
    """

    name: str
    expr: exp.Expression
    party: str
    column: BoundColumn | None
    domain: tuple[str | int | float | bool | None, ...] | None
    # An expression over several parties' group columns (``groups_across``): its columns as
    # keys of their own (their declared values and NULL), and for each combination of their
    # values (mixed radix, the last fastest) the index of the expression's value in ``domain``.
    parts: tuple[BoundGroup, ...] = ()
    index: tuple[int, ...] = ()

    @property
    def private(self) -> bool:
        """True when the keys have no public domain."""
        return self.domain is None

    @property
    def alias(self) -> str:
        """The table alias of a bare group column (else the first column's alias)."""
        if self.column is not None:
            return self.column.alias
        col = next(iter(self.expr.find_all(exp.Column)), None)
        return col.table if col is not None else ""

    @property
    def policy(self) -> ColumnPolicy | None:
        """The policy of a bare group column (None for an expression)."""
        return self.column.policy if self.column is not None else None


@dataclass(frozen=True)
class JoinEdge:
    """An inner equi-join ``left.unit = right.unit`` between two FROM entries (by alias);
    with ``dimension``, ``left.fk = right.key`` joining a fact table's declared foreign key
    to a dimension table's key."""

    left: str
    right: str
    left_column: str
    right_column: str
    dimension: bool = False


@dataclass(frozen=True)
class Output:
    """One SELECT item, in SELECT order.

    ``column`` is set for ``group`` outputs of a bare column and for ``count_distinct``
    (the privacy-unit column counted); ``group`` for every ``group`` output. ``expr`` is the
    qualified argument of SUM/AVG and ``bounds`` its clamping interval, derived from the
    policies' declared bounds by interval arithmetic. A ``count`` or ``count_distinct``
    with ``expr`` counts the rows (units) where that 0/1 expression is 1 (``COUNT(col)``,
    ``FILTER (WHERE ...)``).

    ``kind == "expr"``: computed by the analyst after release (post-processing, no privacy
    cost) from ``post``, an expression over other outputs' names and literals. ``hidden``
    outputs are aggregates that only such expressions, HAVING or ORDER BY read: released
    and used, never shown.

    ``kind == "var"``: VAR_SAMP/VAR_POP/STDDEV_SAMP/STDDEV_POP of ``expr`` (``stat``), from
    noisy moments. ``kind == "quantile"``: a quantile of ``expr`` read off a noisy histogram
    over ``bounds``; ``stat`` is ``cont`` or ``disc`` at fraction ``q``, ``min`` or ``max``,
    or ``distinct`` (COUNT(DISTINCT x): the buckets, one per public value, that pass).
    ``decimals`` is the fixed-point precision of ``expr`` (the histogram's step), ``filter``
    the condition of ``FILTER (WHERE ...)`` (``expr`` itself is unconditioned).
    """

    name: str
    kind: OutputKind
    column: BoundColumn | None = None
    expr: exp.Expression | None = None
    bounds: tuple[float, float] | None = None
    group: BoundGroup | None = None
    post: exp.Expression | None = None
    hidden: bool = False
    stat: str = ""
    q: float | None = None
    decimals: int = 0
    filter: exp.Expression | None = None  # var, quantile: the FILTER (WHERE ...) condition
    # quantile with stat "distinct" (COUNT(DISTINCT x), ``distinct``): the public values of a
    # group expression, one bucket each; None for value columns (buckets of their bounds)
    values: tuple[str | int | float | bool | None, ...] | None = None
    # count, count_distinct, sum, avg: a condition across parties (qualified) a row must
    # meet to count in this aggregate, evaluated on shares (``SUM(a.x > b.y)``, ``FILTER
    # (WHERE a.x > b.y)``); None when every condition is one party's (folded into ``expr``)
    cross: exp.Expression | None = None
    # avg of a condition across parties (``AVG(a.x > b.y)``): the condition whose TRUE rows
    # are counted over the rows where it is not NULL (``cross`` then holds only the FILTER)
    truth: exp.Expression | None = None
    # quantile with stat "min"/"max" that a released comparison reads: planned with one
    # bucket per value (``rewrite/histogram.exact``), so the comparison is the data's
    exact: bool = False


@dataclass(frozen=True)
class BoundQuery:
    """A query after binding and policy checks; the planner's input."""

    sql: str
    tables: tuple[BoundTable, ...]
    joins: tuple[JoinEdge, ...]
    where: exp.Expression | None
    conjuncts: tuple[exp.Expression, ...]
    group_by: tuple[BoundGroup, ...]
    outputs: tuple[Output, ...]
    having: exp.Expression | None = None
    order_by: tuple[tuple[exp.Expression, bool], ...] = ()
    limit: int | None = None
    epsilon: float | None = None
    delta: float | None = None
    # Dimension tables joined on a foreign key (``BoundTable.link``); not in ``tables``.
    dimensions: tuple[BoundTable, ...] = ()

    def table(self, alias: str) -> BoundTable:
        """The FROM entry called ``alias``, a dimension table too (KeyError when none)."""
        for t in self.tables + self.dimensions:
            if t.alias == alias:
                return t
        raise KeyError(alias)

    @property
    def parties(self) -> tuple[str, ...]:
        """Parties whose data the query reads, in FROM order, each once."""
        return tuple(dict.fromkeys(t.party for t in self.tables))

    @property
    def visible(self) -> tuple[Output, ...]:
        """The outputs shown to the analyst, in SELECT order (without hidden ones)."""
        return tuple(o for o in self.outputs if not o.hidden)

    def output(self, name: str) -> Output:
        """The output called ``name`` (KeyError when there is none)."""
        for o in self.outputs:
            if o.name == name:
                return o
        raise KeyError(name)


def aliases_in(expr: exp.Expression | None) -> frozenset[str]:
    """Table aliases referenced by the qualified columns of ``expr``.

    >>> sorted(aliases_in(exp.condition("l.amount + c.age > 3 AND l.term_months = 12")))
    ['c', 'l']
    """
    if expr is None:
        return frozenset()
    return frozenset(c.table for c in expr.find_all(exp.Column) if c.table)


def parties_in(expr: exp.Expression | None, bound: BoundQuery) -> frozenset[str]:
    """Parties whose columns ``expr`` reads (through its qualified columns)."""
    return frozenset(bound.table(a).party for a in aliases_in(expr))


def columns_used(bound: BoundQuery) -> dict[str, set[str]]:
    """Per alias, every column that table must provide locally.

    Always includes the privacy-unit column: the owner needs it to bound contributions
    per person and to join, even when the query does not name it.
    """
    used: dict[str, set[str]] = {t.alias: {t.unit} for t in bound.tables}
    for d in bound.dimensions:
        assert d.link is not None
        fact, fk, key = d.link
        used[d.alias] = {key}
        used[fact].add(fk)
    exprs: list[exp.Expression] = list(bound.conjuncts)
    exprs += [o.expr for o in bound.outputs if o.expr is not None]
    exprs += [o.filter for o in bound.outputs if o.filter is not None]
    exprs += [o.cross for o in bound.outputs if o.cross is not None]
    exprs += [o.truth for o in bound.outputs if o.truth is not None]
    exprs += [g.expr for g in bound.group_by]
    exprs += [t.filter for t in bound.tables if t.filter is not None]
    exprs += [c for t in bound.tables for c in t.on]  # an outer join's ON conditions
    for e in exprs:
        for c in e.find_all(exp.Column):
            if c.table in used and c.name != "__in":  # a semi-join's own 0/1 column
                used[c.table].add(c.name)
    for o in bound.outputs:
        if o.column is not None:
            used[o.column.alias].add(o.column.column)
    return used
