"""A one-party reduction grouped by the raw group columns, mapped to cells afterwards.

``rewrite/push_local.py`` gives each group column with a public domain as the index of its
value in the domain, ``CASE WHEN key = v0 THEN 0 WHEN key = v1 THEN 1 ... ELSE -1 END``
(``WHEN (key) IS NULL THEN i`` for a NULL in the domain). In local mode the party's engine
would evaluate those comparisons on every row (for a text key of five values, 7.0 ms of
DuckDB's CPU at 10^6 rows against 4.3 ms for grouping by the key itself). Here the party's
engine groups by the key itself, and the same ``CASE`` over the grouped key then maps
each group to its cell in one more ``GROUP BY`` over those few groups
(``factors.aggregate_sql`` with ``cells``).

Why the answer is the same: the outer ``CASE`` is the step's own, evaluated by the same
engine on the same value of the same type (a projection keeps the type, collation
included), so a group goes to the cell (or to -1, no cell) each of its rows would have
gone to; a GROUP BY of SQL puts rows in one group only when they are equal (NULLs
together), and equal values take the same branch of the ``CASE``. The sums of a
chain's sums are the chain's sums; only ``COUNT(DISTINCT)`` does not add up that way, so
a plan with one keeps the per-row ``CASE`` (``factors.reduce_in_engine``). The result has
at most one row per cell as before.

Applied only where the step's SQL holds exactly ``push_local``'s shape for the column
(compared as a syntax tree), on an engine of DuckDB's dialect; anything else keeps the
per-row ``CASE``. Decided from the plan's text, never from the rows; the released values,
their shapes and the messages are unchanged. Timing: the engine's work now grows with the
number of distinct key values rather than with the number of domain values a row is
compared with (both depend on the data; the analyst sees the duration: docs/SECURITY.md).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import sqlglot
from sqlglot import exp

from veilql.engine.plan.nodes import GroupKey, LocalStep

KEPT = 32  # rewritten step texts kept per process (a sqlglot parse is about 1-3 ms)
_KEPT: dict[tuple[str, tuple[tuple[str, tuple[object, ...]], ...]], RawGroups | None] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class RawGroups:
    """A step's SQL with each public group column projected as its raw key, and per such
    column its cell index as a ``CASE`` over the grouped column (named as the column)."""

    sql: str
    cells: dict[str, str]


def raw_groups(step: LocalStep, groups: Sequence[GroupKey]) -> RawGroups | None:
    """``step``'s SQL grouped by the raw keys of its public ``groups``, or None when a
    column is not of ``push_local``'s shape (then the per-row ``CASE`` stays).

    >>> sql = ("SELECT t.id AS __unit, 1 AS w, CASE WHEN t.r = 'a' THEN 0 WHEN (t.r) IS NULL "
    ...        "THEN 1 ELSE -1 END AS g0 FROM t")
    >>> step = LocalStep("p", ("t",), ("t",), ("id",), (1,), (), sql=sql)
    >>> raw = raw_groups(step, [GroupKey("r", "p", "g0", ("a", None))])
    >>> print(raw.sql)
    SELECT t.id AS __unit, 1 AS w, t.r AS g0 FROM t
    >>> print(raw.cells["g0"])
    CASE WHEN "g0" = 'a' THEN 0 WHEN ("g0") IS NULL THEN 1 ELSE -1 END
    """
    public = [g for g in groups if g.domain is not None]
    if not public:
        return None
    key = (step.sql, tuple((g.column, tuple(g.domain or ())) for g in public))
    with _LOCK:
        if key in _KEPT:
            return _KEPT[key]
    try:
        found = _rewrite(step.sql, public)
    except sqlglot.errors.SqlglotError:
        found = None  # not parsed: the step's SQL runs as it is
    with _LOCK:
        if len(_KEPT) >= KEPT:
            _KEPT.pop(next(iter(_KEPT)))  # the oldest
        _KEPT[key] = found
    return found


def _rewrite(sql: str, groups: Sequence[GroupKey]) -> RawGroups | None:
    tree = sqlglot.parse_one(sql, read="duckdb")
    if not isinstance(tree, exp.Select) or any(
            tree.args.get(k) for k in ("group", "having", "distinct", "qualify")):
        return None  # a grouped or filtered projection: the key may not stand alone there
    names = {g.column for g in groups}
    # A projection's alias could be read again in its own SELECT (DuckDB reuses aliases):
    # then the raw key would change what that reads.
    if any(c.name in names and not c.table for c in tree.find_all(exp.Column)):
        return None
    by_alias = {p.alias: p for p in tree.expressions if isinstance(p, exp.Alias)}
    cells = {}
    for g in groups:
        proj = by_alias.get(g.column)
        if proj is None:
            return None
        case = proj.this
        raw = _key(case, g.domain or ())
        if raw is None:
            return None
        grouped = exp.column(g.column, quoted=True)
        cells[g.column] = case.copy().transform(
            lambda node, raw=raw, grouped=grouped: grouped.copy() if node == raw else node
        ).sql(dialect="duckdb")
        proj.set("this", raw.copy())
    return RawGroups(tree.sql(dialect="duckdb"), cells)


def _key(case: exp.Expression, domain: Sequence[object]) -> exp.Expression | None:
    """The key of ``push_local``'s index ``CASE`` over ``domain``, or None for any other
    expression."""
    if not isinstance(case, exp.Case) or case.this is not None:
        return None
    default = case.args.get("default")
    ifs = case.args.get("ifs") or []
    if default is None or default.sql() != "-1" or len(ifs) != len(domain):
        return None
    key: exp.Expression | None = None
    for i, (branch, value) in enumerate(zip(ifs, domain, strict=True)):
        cond, then = branch.this, branch.args.get("true")
        if then is None or then.sql() != str(i):
            return None
        if value is None:
            if not isinstance(cond, exp.Is) or not isinstance(cond.expression, exp.Null):
                return None
            k = cond.this.this if isinstance(cond.this, exp.Paren) else cond.this
        else:
            if not isinstance(cond, exp.EQ) or not isinstance(
                    cond.expression, exp.Literal | exp.Boolean | exp.Neg):
                return None
            k = cond.this
        if key is None:
            key = k
        elif k != key:
            return None
    # A key that is itself a condition (a comparison, AND/OR, NOT) is left alone: written
    # without parentheses, ``a > 5 = TRUE`` may not parse back as it was meant.
    if key is None or isinstance(key, exp.Predicate | exp.Connector | exp.Not) or \
            key.find(exp.Column) is None:
        return None
    return key
