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

OutputKind = Literal["group", "count", "count_distinct", "sum", "avg"]
OUTPUT_KINDS: tuple[str, ...] = ("group", "count", "count_distinct", "sum", "avg")


@dataclass(frozen=True)
class BoundTable:
    """One FROM entry: ``party.table AS alias`` and the table's policy."""

    alias: str
    party: str
    table: str
    policy: TablePolicy

    @property
    def unit(self) -> str:
        """The privacy-unit column (also the only join key)."""
        return self.policy.privacy_unit


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
class JoinEdge:
    """An inner equi-join ``left.unit = right.unit`` between two FROM entries (by alias)."""

    left: str
    right: str
    left_column: str
    right_column: str


@dataclass(frozen=True)
class Output:
    """One SELECT item, in SELECT order.

    ``column`` is set for ``group`` outputs and for ``count_distinct`` (the privacy-unit
    column counted). ``expr`` is the qualified argument of SUM/AVG and ``bounds`` its
    clamping interval, derived from the policies' declared bounds.
    """

    name: str
    kind: OutputKind
    column: BoundColumn | None = None
    expr: exp.Expression | None = None
    bounds: tuple[float, float] | None = None


@dataclass(frozen=True)
class BoundQuery:
    """A query after binding and policy checks; the planner's input."""

    sql: str
    tables: tuple[BoundTable, ...]
    joins: tuple[JoinEdge, ...]
    where: exp.Expression | None
    conjuncts: tuple[exp.Expression, ...]
    group_by: tuple[BoundColumn, ...]
    outputs: tuple[Output, ...]
    having: exp.Expression | None = None
    order_by: tuple[tuple[exp.Expression, bool], ...] = ()
    limit: int | None = None
    epsilon: float | None = None
    delta: float | None = None

    def table(self, alias: str) -> BoundTable:
        """The FROM entry called ``alias`` (KeyError when there is none)."""
        for t in self.tables:
            if t.alias == alias:
                return t
        raise KeyError(alias)

    @property
    def parties(self) -> tuple[str, ...]:
        """Parties whose data the query reads, in FROM order, each once."""
        return tuple(dict.fromkeys(t.party for t in self.tables))

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
    exprs: list[exp.Expression] = list(bound.conjuncts)
    exprs += [o.expr for o in bound.outputs if o.expr is not None]
    for e in exprs:
        for c in e.find_all(exp.Column):
            if c.table in used:
                used[c.table].add(c.name)
    for col in bound.group_by:
        used[col.alias].add(col.column)
    for o in bound.outputs:
        if o.column is not None:
            used[o.column.alias].add(o.column.column)
    return used
