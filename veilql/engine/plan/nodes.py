"""The plan: small frozen dataclasses, each with ``to_s()`` for ``veil explain``.

A plan says, for one query, what every party computes locally (plain SQL on its own
engine, one row per privacy unit and slot), how the secure runtime aligns the parties'
rows (a join on blinded tags), which predicates and aggregates run on secret shares,
how much noise each released value gets, and what the analyst does afterwards on the
noisy values (HAVING, ORDER BY, LIMIT).

Names of local columns are stable (``w``, ``g0``, ``v0``, ``a0``, ``o0``, ``n0``), so a
cross-party predicate can refer to them as ``party.column``.
"""

from __future__ import annotations

import datetime
import decimal
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

from sqlglot import exp

LocalRole = Literal["weight", "group", "label", "value", "nn", "atom", "operand"]
AggKind = Literal["count", "count_distinct", "sum", "avg"]
SEED_PLACEHOLDER = "$seed"  # replaced by the party's own secret seed when it runs the SQL
# A dimension table another party sends is read from ``__dim_<alias>`` in the local SQL,
# replaced by its rows (``dimensions.values_sql``) when the party runs it.
DIMENSION_TABLE = "__dim_"


@dataclass(frozen=True)
class LocalColumn:
    """One column of a party's local result.

    ``role``: ``weight`` (1 when the row passes the party's own predicates), ``group``
    (index of the row's value in the public domain, -1 outside it), ``value`` (a clamped
    aggregate argument in fixed point), ``nn`` (1 when that argument is not NULL),
    ``atom`` (a 0/1 single-party piece of a cross-party predicate), ``operand`` (this
    party's part of a cross-party comparison, in fixed point).
    """

    name: str
    role: LocalRole
    sql: str
    decimals: int = 0
    bounds: tuple[float, float] | None = None
    domain: tuple[str | int | float | bool, ...] | None = None

    def to_s(self) -> str:
        """One line: name, role, expression and, where set, bounds and domain."""
        extra = ""
        if self.bounds is not None:
            extra += f" clamp [{_num(self.bounds[0])}, {_num(self.bounds[1])}]"
        if self.decimals:
            extra += f" x10^{self.decimals}"
        if self.domain is not None:
            extra += f" domain {list(self.domain)}"
        return f"{self.name} ({self.role}) = {self.sql}{extra}"


@dataclass(frozen=True)
class DimensionJoin:
    """A dimension table joined in a party's local step on a fact table's foreign key.

    ``owner`` holds the table; when it is another party (``shipped``), it sends the table's
    ``columns`` (at most ``max_rows`` rows, a public bound) to this party before the local
    SQL runs, and learns nothing of which rows are used. A key repeated in the table keeps
    one of its rows (chosen by a hash of the row), so a fact row matches at most one.
    """

    alias: str
    owner: str
    table: str
    key: str  # the dimension's key column
    fact_alias: str
    fact_column: str  # the fact table's foreign key
    columns: tuple[str, ...]  # the columns the query reads, the key first
    max_rows: int
    shipped: bool

    def to_s(self) -> str:
        """One line: which table, joined how, sent by whom."""
        how = (f"sent by {self.owner} ({', '.join(self.columns)}; at most {self.max_rows} "
               "rows)" if self.shipped else "its own table")
        return (f"dimension {self.owner}.{self.table} AS {self.alias} ({how}) joined ON "
                f"{self.fact_alias}.{self.fact_column} = {self.alias}.{self.key}")


@dataclass(frozen=True)
class PerUnitSource:
    """A table read as one row per person: its bounded rows (``max_rows`` per unit, the
    columns ``reads``) filtered by ``where`` and aggregated per unit into ``items``
    (``(name, aggregate SQL)``), e.g. ``s = SUM(x)``: a WITH that aggregates per person."""

    max_rows: int
    reads: tuple[str, ...]
    items: tuple[tuple[str, str], ...]
    where: str | None = None
    inner: str = ""  # the alias ``items`` and ``where`` use for the table's rows


@dataclass(frozen=True)
class LocalStep:
    """What one party runs on its own engine: bounded tables, local join, local SQL."""

    party: str
    aliases: tuple[str, ...]
    tables: tuple[str, ...]
    units: tuple[str, ...]  # privacy-unit column of each alias
    max_rows: tuple[int, ...]  # max_rows_per_unit of each alias
    columns: tuple[LocalColumn, ...]
    where: str | None = None  # the party's own conjuncts, folded into the weight
    sql: str = ""  # the full local query (DuckDB dialect), set by ``bound_contributions``
    # Per alias: "" (a table of FROM), "semi" (IN / EXISTS: one row per unit, with a 0/1
    # column ``__in`` saying whether a row passes ``filters``) or "anti" (NOT IN / NOT
    # EXISTS: the same, left-joined). Empty for a step without semi-joins.
    semi: tuple[str, ...] = ()
    filters: tuple[str | None, ...] = ()  # per alias: the semi-join's condition (SQL)
    dimensions: tuple[DimensionJoin, ...] = ()  # dimension tables joined on foreign keys
    # Per alias: "" (an inner join) or "LEFT", "RIGHT", "FULL" (an outer join on the unit to
    # the aliases before it). Empty for a step without outer joins.
    outer: tuple[str, ...] = ()
    # Per alias: a table aggregated per person first (``PerUnitSource``; its ``max_rows``
    # entry is then 1) or None. Empty for a step without such tables.
    per_unit: tuple[PerUnitSource | None, ...] = ()

    @property
    def slots(self) -> int:
        """Rows per privacy unit this party can contribute after bounding."""
        n = 1
        for m in self.max_rows:
            n *= m
        return n

    def column(self, name: str) -> LocalColumn:
        """The local column called ``name``."""
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_s(self) -> str:
        """The party's tables, bounding and local SQL."""
        semi = self.semi or ("",) * len(self.aliases)
        filters = self.filters or (None,) * len(self.aliases)

        outer = self.outer or ("",) * len(self.aliases)
        per = dict(zip(self.aliases, self.per_unit, strict=True)) if self.per_unit else {}

        def entry(a: str, t: str, m: int, kind: str, cond: str | None, side: str) -> str:
            body = per.get(a)
            if body is not None:
                test = f" WHERE {body.where}" if body.where else ""
                what = ", ".join(f"{n} = {s}" for n, s in body.items)
                return (f"{t} AS {a} (per person: <= {body.max_rows} rows per unit{test}, "
                        f"one row per unit with {what})")
            if side:
                return f"{side} JOIN {t} AS {a} (<= {m} rows per unit; NULLs where unmatched)"
            if not kind:
                return f"{t} AS {a} (<= {m} rows per unit)"
            test = f" WHERE {cond}" if cond else ""
            word = "semi-join" if kind == "semi" else "anti-join"
            return f"{t} AS {a} ({word}: one row per unit, __in = 1 if a row{test})"

        tables = ", ".join(
            entry(a, t, m, k, f, o)
            for a, t, m, k, f, o in zip(self.aliases, self.tables, self.max_rows, semi, filters,
                                        outer, strict=True)
        )
        lines = [f"at {self.party}: {tables}"]
        lines += [f"  {d.to_s()}" for d in self.dimensions]
        lines += [f"  {line}" for line in _runs(self.columns)]
        if self.sql:
            lines.append("  SQL: " + self.sql.replace("\n", "\n       "))
        return "\n".join(lines)


def _is_bucket(name: str) -> bool:
    return name.startswith("b") and name[1:].isdigit()


def _runs(columns: tuple[LocalColumn, ...]) -> list[str]:
    """Each column's line, a histogram's run of bucket columns ``b0``, ``b1``... shown as
    its first and last (the step's SQL line holds every one)."""
    lines: list[str] = []
    i = 0
    while i < len(columns):
        j = i
        while j < len(columns) and _is_bucket(columns[j].name):
            j += 1
        if j - i > 3:
            lines.append(columns[i].to_s())
            lines.append(f"... {columns[i + 1].name} to {columns[j - 2].name}: one 0/1 column "
                         "per bucket in between, alike")
            lines.append(columns[j - 1].to_s())
            i = j
            continue
        lines.append(columns[i].to_s())
        i += 1
    return lines


def cuckoo_bins(units: int) -> int:
    """Bins of the cuckoo table a party of at most ``units`` people fills in an oblivious
    join: three equal parts (one per hash function), 1.3 bins per unit in all plus a
    margin (three hash functions fill up to about 92 %; at this load of at most 77 % an
    insertion fails with vanishing probability).

    >>> cuckoo_bins(1), cuckoo_bins(1000000)
    (69, 1300068)
    """
    return 3 * (-(-13 * units // 30) + 22)


@dataclass(frozen=True)
class JoinStage:
    """Align the rows of ``left`` (parties joined so far) with ``right`` on the unit key.

    ``mode = "reveal"``: tags are keyed pseudorandom functions of the unit key under a key
    that only the two ``key_parties`` share; after a secret shuffle the tags are opened to
    ``viewer``, who knows neither the key nor the whole permutation, and who publishes
    matching positions (revealing the sizes of both sides and of the match).

    ``mode = "oblivious"`` (``join_reveal = "nothing"``): the first party of the plan (the
    *hub*, ``key_parties[0]``) pads its rows to its declared bound ``left_rows``; ``right``
    places its rows in ``bins`` cuckoo bins (its bound is ``right_units``); the two
    ``fetchers`` (compute parties other than ``right``) learn each hub row's three
    candidate bins and fetch them on shares; equality of tags, payloads and everything
    after stay on shares. Every array length is a function of the declared bounds.
    """

    left: tuple[str, ...]
    right: str
    key_parties: tuple[str, str]
    viewer: str
    mode: Literal["reveal", "oblivious"] = "reveal"
    left_rows: int = 0
    right_units: int = 0
    bins: int = 0
    fetchers: tuple[str, ...] = ()

    def to_s(self) -> str:
        """One line describing the stage and what it reveals."""
        left = " + ".join(self.left)
        if self.mode == "oblivious":
            return (
                f"oblivious join {left} with {self.right} on the privacy unit: tags keyed by "
                f"{self.key_parties[0]}&{self.key_parties[1]}; {self.key_parties[0]} pads to "
                f"{self.left_rows} rows, {self.right} places at most {self.right_units} units "
                f"in {self.bins} cuckoo bins, {self.fetchers[0]}&{self.fetchers[1]} fetch "
                "three candidate bins per row on shares; reveals nothing but the declared "
                "bounds"
            )
        return (
            f"secure join {left} with {self.right} on the privacy unit: tags keyed by "
            f"{self.key_parties[0]}&{self.key_parties[1]}, shuffled, matched by "
            f"{self.viewer}; reveals the number of matching units"
        )


@dataclass(frozen=True)
class GroupKey:
    """A GROUP BY column held by ``party`` as local column ``column``.

    ``domain`` is the public domain; None for a column without one, whose keys are
    chosen privately (partition selection with a noisy threshold, ``Plan.threshold``).
    """

    output: str
    party: str
    column: str
    domain: tuple[str | int | float | bool, ...] | None

    @property
    def private(self) -> bool:
        """True when the keys are not public and must pass the noisy threshold."""
        return self.domain is None


@dataclass(frozen=True)
class MergedKey:
    """A GROUP BY expression over several parties' group columns (``sql/groups_across``):
    grouped by its columns' keys ``parts`` (``GroupKey.output``, hidden), whose fine cells
    the compute parties add into the cells of its public ``domain`` on shares before the
    noise; ``index`` gives, per combination of the parts' values (mixed radix in ``parts``
    order, the last fastest), its value's index in ``domain`` (``operators/cells``)."""

    output: str
    parts: tuple[str, ...]
    domain: tuple[str | int | float | bool | None, ...]
    index: tuple[int, ...]


@dataclass(frozen=True)
class Term:
    """One party's contribution to an aggregate: a local value column, or a count."""

    party: str | None  # owner of ``column``; None for a plain count
    column: str | None


@dataclass(frozen=True)
class AggregateSpec:
    """One noisy quantity the analyst receives (AVG is two: a sum and a count).

    ``value`` is the sum of the terms' columns over the rows (units for
    ``count_distinct``) that pass every predicate, per group cell.
    """

    name: str  # internal name, e.g. "total" or "avg_amount.num"
    output: str  # the SELECT output it feeds
    kind: Literal["count", "count_distinct", "sum"]
    terms: tuple[Term, ...]
    decimals: int = 0
    bound: float = 1.0  # largest |value| one row adds (before fixed-point scaling)
    l1: int = 0  # sensitivity of the cell vector, fixed-point units (set by attach_noise)
    l2: float = 0.0
    noise: object | None = None  # veilql.engine.dp.NoisePlan, set by attach_noise
    # The terms multiply (one factor per party: SUM(a.x * b.y)) instead of adding up.
    product: bool = False
    # A histogram's bucket counts share one ``family`` (its first bucket's name): together they
    # are one vector-valued count (a row falls in one bucket), so they share one share of the
    # budget and one noise plan (each bucket still gets its own independent draws).
    family: str = ""
    # Rows must also meet this condition across parties, evaluated on shares like
    # ``Plan.cross`` (over ``party.column`` local columns once ``place_secure`` ran; before,
    # over the query's ``alias.column``): ``SUM(a.x > b.y)``, ``FILTER (WHERE a.x > b.y)``.
    cross: exp.Expression | None = None
    # COUNT(DISTINCT x) over a large domain (``rewrite/histogram.py``): its one term is a
    # bucket-index column of this many buckets, and the aggregate is, per cell, the number
    # of buckets whose exact count is positive (compared on shares across parties): one
    # count per cell, noised and released as a COUNT; 0 for every other aggregate.
    buckets: int = 0

    def to_s(self, *, branches: bool = False) -> str:
        """One line: what is summed and, once attached, its sensitivity and noise.

        ``branches``: the terms are a UNION ALL's branches, whose counts add up (in a join
        the 0/1 columns of a COUNT multiply: a row counts when every party's says 1).
        """
        what = {"count": "COUNT(*)", "count_distinct": "COUNT(DISTINCT unit)"}.get(self.kind)
        columns = [t for t in self.terms if t.column is not None]
        if branches and self.kind == "count" and columns:
            what = " + ".join(f"COUNT(rows WHERE {t.party}.{t.column} = 1)" for t in columns)
        elif self.kind == "count_distinct" and columns:
            what = "COUNT(DISTINCT unit WHERE " + " * ".join(
                f"{t.party}.{t.column}" for t in columns) + " > 0)"
        elif self.buckets and len(columns) == 1:  # one count per cell, no bucket released
            what = (f"COUNT(DISTINCT {columns[0].party}.{columns[0].column}) over "
                    f"{self.buckets:,} buckets: per cell the buckets whose exact count is "
                    "> 0 (across parties compared with 0 on shares), one noisy count per "
                    "cell; no bucket count is released")
        elif self.kind == "count" and len(columns) == 1 and self.family and \
                _bucket_index(columns[0].column):  # a bucket of a bucket-index column
            what = (f"COUNT(rows WHERE {columns[0].party}.{columns[0].column} = "
                    f"{self.name.rsplit('.b', 1)[-1]})")
        elif self.kind == "count" and columns:  # COUNT(x), FILTER: rows whose 0/1 column is 1
            what = "COUNT(rows WHERE " + " * ".join(
                f"{t.party}.{t.column}" for t in columns) + " = 1)"
        elif what is None:
            op = " * " if self.product else " + "
            what = "SUM(" + op.join(f"{t.party}.{t.column}" for t in self.terms) + ")"
        line = f"{self.name} = {what}"
        if self.cross is not None:
            line += f" over rows where {self.cross.sql()} (on shares)"
        if self.l1:
            line += f"; sensitivity L1 {self.l1}, L2 {self.l2:g} (x10^{self.decimals})"
        if self.noise is not None:
            describe = getattr(self.noise, "describe", None)
            line += "; noise " + (describe() if describe else str(self.noise))
        return line


#: Local columns ``h0``, ``h1``...: a histogram's bucket index (``rewrite/histogram.py``).
BUCKET_INDEX_PREFIX = "h"


def _bucket_index(column: str | None) -> bool:
    """Whether ``column`` is a bucket-index local column.

    >>> _bucket_index("h0"), _bucket_index("b12"), _bucket_index(None)
    (True, False, False)
    """
    return column is not None and column.startswith(BUCKET_INDEX_PREFIX) and \
        column[len(BUCKET_INDEX_PREFIX):].isdigit()


@dataclass(frozen=True)
class Buckets:
    """The public buckets of a histogram over a value's declared bounds.

    The bounds ``[lo, ...]`` hold ``points`` representable values ``lo + i * step`` (``step``
    = 10^-decimals); each bucket holds ``per`` consecutive ones (the last may hold fewer), so
    bucket ``b`` spans ``[lowest(b) - step/2, highest(b) + step/2)``. Values below the first
    edge fall in the first bucket and values above the last in the last (the clamping of
    every aggregate). With ``per == 1`` a bucket is one value (exact quantiles).

    >>> b = Buckets(18.0, 0, 83, 2)
    >>> b.count, b.lowest(0), b.highest(0), b.highest(41), b.edges()[:3]
    (42, 18.0, 19.0, 100.0, ['19.5', '21.5', '23.5'])
    """

    lo: float
    decimals: int
    points: int
    per: int
    # COUNT(DISTINCT x) of a group expression: one bucket per public value (``x = value``),
    # in this order; None for buckets of a value's bounds
    values: tuple[Any, ...] | None = None

    @property
    def count(self) -> int:
        """The number of buckets."""
        return len(self.values) if self.values is not None else -(-self.points // self.per)

    @property
    def step(self) -> float:
        """The distance between two representable values."""
        return float(decimal.Decimal(1).scaleb(-self.decimals))

    def _exact(self, i: int) -> decimal.Decimal:
        return decimal.Decimal(repr(float(self.lo))) + i * decimal.Decimal(1).scaleb(
            -self.decimals)

    def lowest(self, b: int) -> float:
        """The lowest representable value of bucket ``b``."""
        return float(self._exact(b * self.per))

    def highest(self, b: int) -> float:
        """The highest representable value of bucket ``b``."""
        return float(self._exact(min((b + 1) * self.per, self.points) - 1))

    def edges(self) -> list[str]:
        """The ``count - 1`` inner edges between consecutive buckets, as exact decimals
        (half-way between the last value of one bucket and the first of the next)."""
        half = decimal.Decimal(1).scaleb(-self.decimals) / 2
        return [str(self._exact(b * self.per) - half) for b in range(1, self.count)]

    def to_s(self) -> str:
        """``42 buckets of 2 values each over [18, 100] (step 1)``."""
        if self.values is not None:
            return f"{self.count} buckets, one per public value"
        what = "one value each" if self.per == 1 else f"{self.per} values each"
        return (f"{self.count} buckets of {what} over [{_num(self.lowest(0))}, "
                f"{_num(self.highest(self.count - 1))}] (step {_num(self.step)})")


@dataclass(frozen=True)
class OutputSpec:
    """One released column: a group key, a noisy aggregate (AVG = num / den), or an
    expression the analyst computes from other outputs (``expr``: ``post`` over output
    names, e.g. ``total / n``; post-processing, with no privacy cost).

    ``var``: a variance or standard deviation (``stat``: ``var_samp``, ``var_pop``,
    ``stddev_samp``, ``stddev_pop``) computed from three noisy aggregates, the sum of
    squares, the sum and the count of non-NULL rows. ``quantile``: read off a noisy
    histogram (``aggregates``: one count per bucket of ``buckets``); ``stat`` is ``cont``
    or ``disc`` (at fraction ``q``), ``min``, ``max`` or ``distinct`` (COUNT(DISTINCT x):
    how many buckets pass the noise band).
    """

    name: str
    kind: Literal["group", "count", "count_distinct", "sum", "avg", "expr", "var",
                  "quantile"]
    aggregates: tuple[str, ...] = ()  # AggregateSpec names (avg: numerator, denominator)
    group: str | None = None  # GroupKey.output for group outputs
    post: exp.Expression | None = None  # kind "expr": over output names and literals
    stat: str = ""  # var: which statistic; quantile: cont, disc, min or max
    q: float | None = None  # quantile: the fraction
    buckets: Buckets | None = None  # quantile: the histogram's public buckets


@dataclass(frozen=True)
class Plan:
    """The whole plan of one query."""

    sql: str
    mode: Literal["local", "secure", "union"]
    compute: tuple[str, ...]
    steps: tuple[LocalStep, ...]
    outputs: tuple[OutputSpec, ...]
    groups: tuple[GroupKey, ...] = ()
    aggregates: tuple[AggregateSpec, ...] = ()
    joins: tuple[JoinStage, ...] = ()
    cross: exp.Expression | None = None  # over ``party.column`` references to local columns
    having: exp.Expression | None = None
    order_by: tuple[tuple[exp.Expression, bool], ...] = ()
    limit: int | None = None
    # The cost, exact: the sum of what the aggregates' mechanisms spend (set by attach_noise),
    # reserved as is by every charged party's ledger. Print or serialise it with float().
    epsilon: Fraction = Fraction(1)
    delta: Fraction = Fraction(0)
    charged: tuple[str, ...] = ()
    threshold: int | None = None  # partition selection: release cells whose noisy count exceeds it
    notes: tuple[str, ...] = field(default_factory=tuple)
    # Outputs released and used by ``expr`` outputs, HAVING or ORDER BY, never shown.
    hidden: tuple[OutputSpec, ...] = ()
    # mode "union" (a UNION ALL in FROM, ``rewrite/union.py``): each branch's one-party plan,
    # whose aggregates are summed on shares; ``steps`` holds their local steps in order.
    branches: tuple[Plan, ...] = ()
    # A LEFT or RIGHT JOIN across two parties (``rewrite/outer_join.py``): ``outer`` names it,
    # ``own_total`` is the preserved party (it secret-shares its own aggregates times
    # ``shift``), ``optional`` the party whose factors are shifted by ``shift`` (per term
    # chain of ``factors.expand_terms``: its factor on the all-NULL row) before sharing.
    # With further ON conditions ``cross`` is their predicate (``rewrite/outer_on.py``). A
    # FULL JOIN: ``own_total`` is the first table's party, whose own NULL-row values are
    # ``shift_own``; both parties shift and share their own totals (``operators/outer.py``).
    outer: str = ""
    own_total: str = ""
    optional: str = ""
    shift: tuple[int, ...] = ()
    shift_own: tuple[int, ...] = ()
    # A FULL JOIN grouped by one side's keys: the cell, among that side's cells, of its
    # keys' values on a row of NULLs (where the other side's unmatched people count).
    null_cell: int = -1
    # GROUP BY expressions over several parties' group columns (``MergedKey``): the cells of
    # ``groups`` (their columns among them) merged on shares into the released cells.
    merge: tuple[MergedKey, ...] = ()

    @property
    def on_shares(self) -> bool:
        """Whether a predicate runs on shares (the WHERE's or an aggregate's own), so that
        every party shares its factors per slot."""
        return self.cross is not None or any(a.cross is not None for a in self.aggregates)

    def step(self, party: str) -> LocalStep:
        """The local step of ``party``."""
        for s in self.steps:
            if s.party == party:
                return s
        raise KeyError(party)

    @property
    def parties(self) -> tuple[str, ...]:
        """Parties whose data the plan reads (once each: a union's branches may share one)."""
        return tuple(dict.fromkeys(s.party for s in self.steps))

    @property
    def shipments(self) -> tuple[tuple[str, str, DimensionJoin], ...]:
        """``(owner, receiving party, dimension)`` for every dimension table one party
        sends to another before the local step."""
        return tuple((d.owner, s.party, d) for s in self.steps for d in s.dimensions
                     if d.shipped)

    def aggregate(self, name: str) -> AggregateSpec:
        """The aggregate called ``name`` (the first of that name).

        Indexed once per plan: a COUNT(DISTINCT) histogram holds up to 100,000 bucket
        counts, each looked up by name (a scan each took 11 minutes to release it)."""
        index = self.__dict__.get("_by_name")
        if index is None:  # not a field: equality, hashing and replace() ignore it
            index = {a.name: a for a in reversed(self.aggregates)}
            object.__setattr__(self, "_by_name", index)
        if name not in index:
            raise KeyError(name)
        return index[name]

    def to_s(self) -> str:
        """The plan as a person reads it (``veil explain``; ``plan/explain.py``)."""
        from veilql.engine.plan.explain import plan_text  # it imports this module

        return plan_text(self)


def _num(x: float | Fraction) -> str:
    """Numbers (floats or exact fractions) without a trailing ``.0`` where they are whole.

    >>> _num(Fraction(1)), _num(Fraction(1, 10**6)), _num(0.5)
    ('1', '1e-06', '0.5')
    """
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


def plain_value(v: Any) -> str | int | float | bool | None:
    """A value as JSON and plans hold it: dates as ISO text, decimals as numbers.

    >>> plain_value(datetime.date(2024, 3, 1)), plain_value(decimal.Decimal("2.50"))
    ('2024-03-01', 2.5)
    """
    if isinstance(v, datetime.datetime):
        return str(v)
    if isinstance(v, datetime.date):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    if hasattr(v, "item") and not isinstance(v, str | bytes):
        return plain_value(v.item())
    if isinstance(v, float) and math.isnan(v):
        return None
    if v is None or isinstance(v, str | int | float | bool):
        return v
    return str(v)
