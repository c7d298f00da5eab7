"""Histograms over a large public domain in one bucket-index column, finished two ways.

One local column, the row's bucket index, and two kinds of aggregate over it:

- COUNT(DISTINCT x): one count per cell of its distinct values (below);
- MIN/MAX that a released comparison reads (``exact``, ``plan_exact``): one noisy count per
  bucket and cell, released as one histogram family (``AggregateSpec.family``: one noise
  plan, one share of the budget) and read at the analyst as a 64-bucket histogram is
  (``engine/quantiles.py``), so at a huge epsilon MIN/MAX are the data's and the
  comparison too. A row is in one bucket, so the family's sensitivity is that of the
  64-bucket histogram of the same query. The owner's engine reduces it in local mode (a
  GROUP BY over cells and the index); across parties the two digits' matrix product
  gives the (bucket, cell) counts, noised as they are (``operators/histogram.py``).

A histogram of MIN, MAX or a quantile has at most 64 buckets, and one of COUNT(DISTINCT x)
over at most ``MAX_SECURE_DISTINCT`` values one bucket each; both are planned as one 0/1
local column and one count per bucket (``push_local._quantile``), which every mode
computes. Above that the plan holds one local column instead, the index of the row's
bucket (``-1``: NULL, FILTERed out), and ONE aggregate (``AggregateSpec.buckets``): per
group cell, the number of buckets whose exact count is positive, computed before any
noise. In local mode the party's engine counts it, ``COUNT(DISTINCT index)`` over the
bounded rows that pass WHERE, grouped by the party's group columns; across parties the
owner shares two one-hot digits of the index, the (cell, bucket) counts are one matrix
product on shares, each is compared with 0 on shares and the indicators summed per cell
(``operators/histogram.py``). Only that count per cell is noised and released, as a
COUNT: removing one person removes at most the rows they contribute (``max_rows_per_unit``,
products over a join), each row is in one (cell, bucket), so the vector of distinct counts
per cell changes by at most that in L1 (and L2): the sensitivity and noise of COUNT(*)
of the same query (docs/PRIVACY.md). No per-bucket value reaches the analyst.

The buckets are those of ``push_local.histogram_buckets`` at one value each: bucket ``b``
holds the values in ``[lo + (b - 1/2) step, lo + (b + 1/2) step)``, values below the
bounds fall in the first and values above them in the last (the clamping of every
aggregate), so the distinct values are those of the clamped column.

>>> print(bucket_sql("t.x", None, 0.0, 2, 10001))  # doctest: +NORMALIZE_WHITESPACE
CASE WHEN (t.x) IS NOT NULL THEN CAST(FLOOR((LEAST(GREATEST(t.x, 0), 100.00) - 0) * 100
  + 0.5) AS BIGINT) ELSE -1 END
"""

from __future__ import annotations

import decimal

from veilql.engine.plan.nodes import (
    BUCKET_INDEX_PREFIX,
    AggregateSpec,
    Buckets,
    LocalColumn,
    Term,
)
from veilql.engine.rewrite.context import Context
from veilql.engine.sql.bound import Output, parties_in
from veilql.engine.sql.distinct import MAX_BUCKETS, MAX_SECURE_DISTINCT
from veilql.errors import UnsupportedError

PREFIX = BUCKET_INDEX_PREFIX  # local columns h0, h1, ...: a histogram's bucket index
#: Across parties, the most (bucket, joint cell) counts of one such COUNT(DISTINCT): each
#: is a word of the digits' matrix product and one comparison with 0 on shares (some
#: ``COMPARE_WORDS`` words at a time, in batches; figures in docs/PRIVACY.md). In local
#: mode the party's engine counts distinct values per cell, which needs no such bound.
MAX_SECURE_COUNTS = 10_000_000
#: The most noisy bucket counts (buckets x group cells) of one exact MIN/MAX histogram:
#: each is a count noised, released and read by the analyst. Measured at one party (load
#: ~5 on 2 cores): 100,000 counts 12.5 s, 1,000,000 counts 47 s and 0.37 GB. Across
#: parties each count is also a word of the digits' product and of the noise on shares:
#: the peer's five histograms (80,000 counts) take ~45 s, so the cap there is lower.
MAX_EXACT_COUNTS = 1_000_000
MAX_SECURE_EXACT_COUNTS = 200_000


def dense(out: Output, ctx: Context, points: int) -> bool:
    """Whether ``out`` (COUNT(DISTINCT) over a value's bounds, ``points`` values) is planned
    as one bucket-index column and one count per cell: above ``MAX_SECURE_DISTINCT``
    values. Refused beside a GROUP BY key chosen privately (its number of cells is the
    data's) and, across parties, above ``MAX_SECURE_COUNTS`` buckets x public cells and
    where the two digits cannot stand in for the buckets (``_across``), each naming why."""
    if out.stat != "distinct" or out.values is not None or points <= MAX_SECURE_DISTINCT:
        return False
    what = f"COUNT(DISTINCT {out.expr.sql(dialect='duckdb') if out.expr else ''}) over " \
        f"{points:,} values"
    narrow = f"at most {MAX_SECURE_DISTINCT:,} values there; narrow the column's bounds"
    across = len(ctx.bound.parties) != 1
    if across:
        _across(what, narrow, ctx)
        _owner_filter_check(out, what, narrow, "counted", ctx)
    cells = _cells(what, narrow, ctx)
    if across and points * cells > MAX_SECURE_COUNTS:
        raise UnsupportedError(
            f"{what} is not supported across parties in {cells:,} group cells: "
            f"{points * cells:,} bucket counts compared on shares, more than "
            f"{MAX_SECURE_COUNTS:,}",
            "group by fewer values, narrow the column's bounds, or run it over one "
            "party's tables")
    return True


def exact(out: Output, ctx: Context, buckets: Buckets) -> bool:
    """Whether MIN/MAX ``out`` is planned with one bucket per value in a bucket-index
    column (the binder marked it ``exact``: a released comparison reads it) and one noisy
    count per bucket and cell, released as a histogram family. Refused beside a GROUP BY
    key chosen privately, above ``MAX_EXACT_COUNTS`` buckets x public cells and, across
    parties, where the two digits cannot stand in for the buckets (``_across``)."""
    if not out.exact or buckets.per != 1 or buckets.count <= MAX_BUCKETS:
        return False
    what = (f"{out.stat.upper()}({out.expr.sql(dialect='duckdb') if out.expr else ''}) "
            f"over {buckets.points:,} values, compared after release")
    narrow = (f"compare a MIN/MAX whose bounds hold at most {MAX_BUCKETS} values, or select "
              "it without the comparison (released within a bucket)")
    if len(ctx.bound.parties) != 1:
        _across(what, narrow, ctx)
        _owner_filter_check(out, what, narrow, "compared", ctx)
    cells = _cells(what, narrow, ctx)
    cap = MAX_EXACT_COUNTS if len(ctx.bound.parties) == 1 else MAX_SECURE_EXACT_COUNTS
    if buckets.count * cells > cap:
        where = "" if len(ctx.bound.parties) == 1 else " across parties"
        raise UnsupportedError(
            f"{what} is not supported{where} in {cells:,} group cells: "
            f"{buckets.count * cells:,} noisy bucket counts, more than {cap:,}",
            f"group by fewer values, narrow the column's bounds, or {narrow}")
    return True


def _cells(what: str, narrow: str, ctx: Context) -> int:
    """The public group cells a bucket-index column is counted in (a key over several
    parties' columns in its fine cells, merged later); refused beside a GROUP BY key
    chosen privately (its number of cells is the data's)."""
    cells = 1
    for g in ctx.bound.group_by:
        if g.domain is None:
            raise UnsupportedError(
                f"{what} is not supported with GROUP BY {g.name}, whose keys are chosen "
                "privately (its buckets are counted per public cell)", narrow)
        for d in [p.domain for p in g.parts] or [g.domain]:
            cells *= len(d or ())
    return cells


def _owner_filter_check(out: Output, what: str, narrow: str, role: str, ctx: Context) -> None:
    """Refuse, across parties, a FILTER of ``out`` over columns of a party other than the
    owner of its ``role`` ("counted", "compared") column: the owner's bucket index cannot
    read them."""
    others = parties_in(out.filter, ctx.bound) - parties_in(out.expr, ctx.bound)
    if others:
        raise UnsupportedError(
            f"{what} is not supported with a FILTER over {', '.join(sorted(others))}'s "
            f"columns (across parties its FILTER reads the {role} column's party only)",
            f"move the condition to WHERE, or {narrow}")


def _across(what: str, narrow: str, ctx: Context) -> None:
    """Refuse, across parties, what the digits' matrix product does not compute: it needs
    every party's factor summed over its own rows before the join (no condition across
    parties in WHERE, FILTER or an aggregate, which run on shares per row, and no sum of
    several parties' parts, whose NULL test does), an inner join that reveals sizes (the
    oblivious join's payload and an outer join's shifts are the factors alone)."""
    bound = ctx.bound
    if any(t.outer for t in bound.tables):
        raise UnsupportedError(f"{what} is not supported with an outer join across parties",
                               f"use an inner JOIN, or {narrow}")
    if any(t.policy.join_reveal == "nothing" for t in bound.tables):
        raise UnsupportedError(f'{what} is not supported with join_reveal = "nothing"',
                               narrow)
    for conj in bound.conjuncts:
        if len(parties_in(conj, bound)) > 1:
            raise UnsupportedError(
                f"{what} is not supported beside the condition {conj.sql(dialect='duckdb')} "
                "across parties", f"move the condition to one party, or {narrow}")
    for o in bound.outputs:
        for e in (o.expr, o.filter, o.cross, o.truth):
            if e is not None and (e is o.cross or len(parties_in(e, bound)) > 1):
                raise UnsupportedError(
                    f"{what} is not supported beside {o.name}, which reads several parties' "
                    "columns in one aggregate (computed on shares row by row)",
                    f"aggregate each party's columns apart, or {narrow}")


def bucket_sql(expr: str, cond: str | None, lo: float, decimals: int, points: int) -> str:
    """The SQL of a row's bucket index among ``points`` values from ``lo`` at ``decimals``
    digits: clamped into the bounds first (so the cast cannot overflow), -1 when NULL or
    when ``cond`` fails."""
    scale = 10**decimals
    low = _plain(lo)
    high = _plain(float(decimal.Decimal(repr(float(lo))) + (points - 1) *
                        decimal.Decimal(1).scaleb(-decimals)), decimals)
    test = f"({expr}) IS NOT NULL"
    if cond is not None:
        test = f"({cond}) AND {test}"
    return (f"CASE WHEN {test} THEN CAST(FLOOR((LEAST(GREATEST({expr}, {low}), {high}) - "
            f"{low}) * {scale} + 0.5) AS BIGINT) ELSE -1 END")


def plan_dense(out: Output, ctx: Context, columns: dict[str, list[LocalColumn]],
               aggregates: list[AggregateSpec], buckets: Buckets) -> str:
    """Add ``out``'s bucket-index column and its one aggregate, the number of buckets with
    a positive count per cell (a count of bound 1: ``AggregateSpec.buckets``); returns the
    aggregate's name."""
    party, name = _index_column(out, ctx, columns, buckets)
    aggregates.append(AggregateSpec(out.name, out.name, "count", (Term(party, name),),
                                    bound=1.0, buckets=buckets.count))
    return out.name


def plan_exact(out: Output, ctx: Context, columns: dict[str, list[LocalColumn]],
               aggregates: list[AggregateSpec], buckets: Buckets) -> tuple[str, ...]:
    """Add ``out``'s bucket-index column and one count per bucket (one ``family``: one
    noise plan, one share of the budget, as a 64-bucket histogram's); returns the counts'
    names in bucket order. ``operators/histogram.py`` counts them."""
    party, name = _index_column(out, ctx, columns, buckets)
    family = f"{out.name}.b0"
    term = (Term(party, name),)
    names = tuple(f"{out.name}.b{b}" for b in range(buckets.count))
    aggregates.extend(AggregateSpec(n, out.name, "count", term, bound=1.0, family=family)
                      for n in names)
    return names


def _index_column(out: Output, ctx: Context, columns: dict[str, list[LocalColumn]],
                  buckets: Buckets) -> tuple[str, str]:
    """Add ``out``'s bucket-index column at its owner; returns (party, column name)."""
    assert out.expr is not None
    (party,) = parties_in(out.expr, ctx.bound) or set(ctx.bound.parties)
    cols = columns[party]
    name = f"{PREFIX}{sum(1 for c in cols if c.name.startswith(PREFIX))}"
    cond = out.filter.sql(dialect="duckdb") if out.filter is not None else None
    cols.append(LocalColumn(name, "group", bucket_sql(
        out.expr.sql(dialect="duckdb"), cond, buckets.lo, buckets.decimals, buckets.points)))
    return party, name


def _plain(value: float, decimals: int | None = None) -> str:
    """An exact decimal literal without an exponent.

    >>> _plain(-100.0), _plain(1e-05), _plain(0.30000000000000004, 2)
    ('-100', '0.00001', '0.30')
    """
    d = decimal.Decimal(repr(float(value)))
    if decimals is not None:
        d = d.quantize(decimal.Decimal(1).scaleb(-decimals))
    text = format(d, "f")
    if decimals is None and "." in text:
        text = text.rstrip("0").rstrip(".")
    return text
