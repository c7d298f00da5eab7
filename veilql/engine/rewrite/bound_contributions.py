"""Bound each person's contribution at the owner, before anything leaves the party.

Every table keeps at most ``max_rows_per_unit`` rows per privacy unit (only units with more
rows are ranked, see ``_bounded``), chosen by a keyed hash of the row under the party's own
secret seed (a fresh cryptographic seed per
party and table, so the choice is random to everyone else yet stable across queries,
which lets a repeated query reuse its join). Aggregate arguments are clamped to their
declared bounds (never bounds taken from the data) and scaled to fixed point (a NULL
adds 0); rows with no unit are dropped. The table of a semi-join (``IN (SELECT unit ...)``,
``EXISTS``) is read as one row per unit saying whether any of its rows passes the
subquery's condition: it adds no rows to a person, so it needs no bound. The result is
the party's local SQL, in DuckDB's dialect; the connector transpiles it to its own.

>>> from tests.sql_fixtures import federation
>>> from veilql.engine.rewrite import compile_plan
>>> plan = compile_plan("SELECT SUM(amount) FROM bank.loans", federation(),
...                     stop_after="bound_contributions")
>>> print(plan.step("bank").sql)  # doctest: +NORMALIZE_WHITESPACE
SELECT loans.customer_id AS __unit, 1 AS w, CASE WHEN (loans.amount) IS NULL THEN 0 ELSE
  CAST(ROUND(LEAST(GREATEST(loans.amount, 0), 100000) * CAST(100 AS BIGINT)) AS BIGINT) END
  AS v0
FROM (SELECT customer_id, amount FROM loans WHERE NOT customer_id IS NULL AND NOT
  customer_id IN (SELECT customer_id FROM loans WHERE NOT customer_id IS NULL GROUP BY
  customer_id HAVING COUNT(*) > 3) UNION ALL SELECT customer_id, amount FROM (SELECT
  customer_id, amount, ROW_NUMBER() OVER (PARTITION BY customer_id ORDER BY
  MD5(CONCAT('$seed:loans', '|', CAST(customer_id AS TEXT), '|', CAST(amount AS TEXT)))) AS
  __rn FROM loans WHERE customer_id IN (SELECT customer_id FROM loans WHERE NOT customer_id
  IS NULL GROUP BY customer_id HAVING COUNT(*) > 3)) AS __b WHERE __rn <= 3) AS loans
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import sqlglot
from sqlglot import exp

from veilql.engine.plan.nodes import (
    DIMENSION_TABLE,
    SEED_PLACEHOLDER,
    DimensionJoin,
    LocalColumn,
    LocalStep,
    PerUnitSource,
    Plan,
)
from veilql.engine.rewrite.context import Context
from veilql.engine.sql.bound import columns_used


def bound_contributions(plan: Plan, ctx: Context) -> Plan:
    """Write each party's local SQL: bounded tables, local join, clamped fixed-point columns."""
    used = columns_used(ctx.bound)
    steps = tuple(replace(s, sql=_local_sql(s, used)) for s in plan.steps)
    return replace(plan, steps=steps)


def _column_sql(col: LocalColumn) -> str:
    """The select expression of one local column.

    A whole scale is multiplied as a BIGINT: an INTEGER column times an INTEGER literal
    stays 32-bit in DuckDB and overflows there (an INTEGER of 30,000,000 at two digits),
    where the fixed-point value itself fits the 64-bit result. A fractional scale (negative
    digits, e.g. a variance's squares) is a DECIMAL literal, whose product is not 32-bit.
    """
    scale = (f"CAST({10 ** col.decimals} AS BIGINT)" if col.decimals >= 0 else
             f"{10 ** col.decimals}")
    if col.role == "value":
        assert col.bounds is not None
        lo, hi = (_number(b) for b in col.bounds)
        # NULL adds 0 (as SUM skips it); GREATEST/LEAST would turn a NULL into a bound.
        scaled = f"LEAST(GREATEST({col.sql}, {lo}), {hi}) * {scale}"
        return (f"CASE WHEN ({col.sql}) IS NULL THEN 0 ELSE CAST(ROUND({scaled}) AS BIGINT) "
                "END")
    if col.role == "operand":
        # Comparisons need no clamping; NULL compares as 0 (documented in the user guide).
        return f"COALESCE(CAST(ROUND(({col.sql}) * {scale}) AS BIGINT), 0)"
    return col.sql


def _local_sql(step: LocalStep, used: dict[str, set[str]]) -> str:
    """The SQL of one party's step (see the module docstring)."""
    sources = []
    semi = step.semi or ("",) * len(step.aliases)
    filters = step.filters or (None,) * len(step.aliases)
    bodies = step.per_unit or (None,) * len(step.aliases)
    for alias, table, unit, m, kind, cond, body in zip(step.aliases, step.tables, step.units,
                                                       step.max_rows, semi, filters, bodies,
                                                       strict=True):
        if body is not None:  # a WITH aggregating per person: its bounded rows, one per unit
            sources.append(_per_unit_source(alias, table, unit, body))
            continue
        if kind:  # a semi-join: one row per unit, __in = 1 if any row passes the condition
            test = f"CASE WHEN {cond} THEN 1 ELSE 0 END" if cond else "1"
            sources.append(f"(SELECT {alias}.{unit}, MAX({test}) AS __in FROM {table} AS "
                           f"{alias} WHERE {alias}.{unit} IS NOT NULL GROUP BY "
                           f"{alias}.{unit}) AS {alias}")
            continue
        cols = [unit] + sorted(used[alias] - {unit})
        sources.append(f"{_bounded(table, unit, cols, m)} AS {alias}")
    first = step.aliases[0]
    outer = step.outer or ("",) * len(step.aliases)
    unit_sql = f"{first}.{step.units[0]}"
    joins = ""
    for src, alias, unit, kind, side in zip(sources[1:], step.aliases[1:], step.units[1:],
                                            semi[1:], outer[1:], strict=True):
        how = f"{side} JOIN" if side else "LEFT JOIN" if kind == "anti" else "JOIN"
        joins += f" {how} {src} ON {unit_sql} = {alias}.{unit}"
        if side in ("RIGHT", "FULL"):  # the unit of a row only the right table holds
            unit_sql = f"COALESCE({unit_sql}, {alias}.{unit})"
    for d in step.dimensions:
        joins += (f" JOIN {_dimension_source(d)} ON {d.fact_alias}.{d.fact_column} = "
                  f"{d.alias}.{d.key}")
    select = [f"{unit_sql} AS __unit"]
    select += [f"{_column_sql(c)} AS {c.name}" for c in step.columns]
    sql = f"SELECT {', '.join(select)} FROM {sources[0]}{joins}"
    # Normalise through sqlglot so golden files are stable and the SQL is known to parse.
    return sqlglot.transpile(sql, read="duckdb", write="duckdb")[0]


def _bounded(table: str, unit: str, cols: list[str], m: int, once: str = "",
             kept: tuple[str, str] | None = None) -> str:
    """At most ``m`` rows per unit of ``table`` (columns ``cols``, unit first), chosen by a
    hash of the row under the party's seed; rows without a unit dropped.

    Only units with more than ``m`` rows are ranked: the keyed hash (MD5 of every row) and
    the window sorted by it are what made the bounded SQL 30-140x slower than the plain
    aggregate, and most tables have few or no over-full units (a customer table has none).
    The rows of every other unit pass as they are, which is the same choice (all of them).
    A ``GROUP BY unit HAVING COUNT(*) > m`` finds the over-full units; it is read twice
    rather than through a WITH, which every engine plans well (4.6x faster on one row per
    person at 10^6 rows, 9x on three, same rows). With ``once`` (a name) it is computed
    once, as a materialized WITH of that name: DuckDB's own form, chosen at run time
    (``engine_sql``), 1.5-1.8x faster there at 10^6 rows (the plan keeps the portable one).
    With ``kept`` (``(table, column)``: the over-full units the party's engine found once
    and kept, ``Connector.overfull_table``; DuckDB) they are read instead of the scan, the
    rows of every other unit passed by an ANTI JOIN (no NULL among the kept units, so it
    keeps what ``NOT IN`` keeps; 1 ms less than ``NOT IN`` at 10^6 rows): the same units,
    so the same rows.
    """
    names = ", ".join(cols)
    key = ", '|', ".join(f"CAST({c} AS VARCHAR)" for c in cols)
    seed = f"'{SEED_PLACEHOLDER}:{table}'"
    over = (f"SELECT {unit} FROM {table} WHERE {unit} IS NOT NULL GROUP BY {unit} "
            f"HAVING COUNT(*) > {m}")
    found = f"({over})"
    if kept is not None:
        found, once = f"(SELECT {kept[1]} FROM {kept[0]})", ""
    elif once:
        found = f"(SELECT {unit} FROM {once})"
    ranked = (f"SELECT {names}, ROW_NUMBER() OVER (PARTITION BY {unit} "
              f"ORDER BY MD5(CONCAT({seed}, '|', {key}))) AS __rn "
              f"FROM {table} WHERE {unit} IN {found}")
    head = f"WITH {once} AS MATERIALIZED ({over}) " if once else ""
    rest = f"UNION ALL SELECT {names} FROM ({ranked}) AS __b WHERE __rn <= {m})"
    if kept is not None:
        return (f"(SELECT {names} FROM {table} ANTI JOIN {kept[0]} AS __o ON "
                f"{table}.{unit} = __o.{kept[1]} WHERE {unit} IS NOT NULL {rest}")
    return (f"({head}SELECT {names} FROM {table} WHERE {unit} IS NOT NULL AND NOT {unit} IN "
            f"{found} {rest}")


def engine_sql(sql: str, unique: Callable[[str, str], bool], *,
               materialize: bool = False,
               overfull: Callable[[str, str, int], tuple[str, str] | None] | None = None,
               ) -> str:
    """``sql`` (a step's local SQL) with each bounded source over a table whose unit column
    the party's engine keeps unique (``unique(table, unit)``) read as the table's rows with
    a unit: the same rows, without the ``GROUP BY unit HAVING COUNT(*) > m`` scan.

    Run by the party on its own engine (``operators/local.py``), decided from its catalog
    (a PRIMARY KEY or UNIQUE constraint the engine enforces: a schema fact, public, never a
    check of the rows), so the plan and its text stay as they are. With a unique unit and
    ``m >= 1`` no unit is over-full, so ``_bounded`` keeps every row that has a unit, which
    is what the replacement reads. Only a source that is exactly ``_bounded``'s output
    (compared as a syntax tree) is replaced; anything else is left bounded. With
    ``materialize`` (a DuckDB engine) a source left bounded finds its over-full units once,
    in a materialized WITH (``_bounded``'s ``once``), or reads the table
    ``overfull(table, unit, m)`` names (the engine found and kept them:
    ``Connector.overfull_table``), and value columns clamp with a CASE (``_case_clamps``):
    the same rows and values.

    >>> from tests.sql_fixtures import federation
    >>> from veilql.engine.rewrite import compile_plan
    >>> sql = compile_plan("SELECT COUNT(*) FROM bank.customers", federation()).steps[0].sql
    >>> print(engine_sql(sql, lambda table, unit: True))  # doctest: +NORMALIZE_WHITESPACE
    SELECT customers.customer_id AS __unit, 1 AS w FROM (SELECT customer_id FROM customers
      WHERE NOT customer_id IS NULL) AS customers
    >>> engine_sql(sql, lambda table, unit: False) == sql
    True
    """
    tree = sqlglot.parse_one(sql, read="duckdb")
    changed = 0
    for node in list(tree.find_all(exp.Union)):
        found = _bounded_parts(node)
        if found is None:
            continue
        table, unit, cols, m = found
        name = table.sql(dialect="duckdb")
        if m >= 1 and unique(table.name, unit):
            node.replace(sqlglot.parse_one(
                f"SELECT {', '.join(cols)} FROM {name} WHERE NOT {unit} IS NULL",
                read="duckdb"))
        elif materialize:
            kept = overfull(table.name, unit, m) if overfull is not None else None
            if kept is not None:
                source = _bounded(name, unit, cols, m, kept=kept)
            else:
                source = _bounded(name, unit, cols, m, once=f"__over{changed}")
            node.replace(sqlglot.parse_one(f"SELECT * FROM {source} AS __x", read="duckdb")
                         .find(exp.Subquery).this)
        else:
            continue
        changed += 1
    if materialize:
        changed += _case_clamps(tree)
    return tree.sql(dialect="duckdb") if changed else sql


def _case_clamps(tree: exp.Expression) -> int:
    """Rewrite each value column of ``_column_sql``'s shape, ``CASE WHEN (x) IS NULL THEN 0
    ELSE CAST(ROUND(LEAST(GREATEST(x, lo), hi) * CAST(s AS BIGINT)) AS BIGINT) END``, to
    clamp ``x`` with
    ``CASE WHEN x < lo THEN lo WHEN x > hi THEN hi ELSE x END``; the number of columns.

    The same value: ``x`` is not NULL there (the outer test), ``lo <= hi`` are constants,
    and a NaN is above every number for both forms; DuckDB computes the CASE 25-35 % faster
    (11.4 ms against 14.8 ms of CPU for a DECIMAL column at 10^6 rows). Only the exact shape
    is touched: a LEAST/GREATEST the analyst wrote keeps its meaning (NULLs skipped).
    """
    count = 0
    for case in list(tree.find_all(exp.Case)):
        ifs = case.args.get("ifs") or []
        cast = case.args.get("default")
        if len(ifs) != 1 or not isinstance(cast, exp.Cast):
            continue
        test, zero = ifs[0].this, ifs[0].args.get("true")
        if not (isinstance(test, exp.Is) and isinstance(test.expression, exp.Null)
                and isinstance(zero, exp.Literal) and zero.this == "0"):
            continue
        x = test.this.unnest() if isinstance(test.this, exp.Paren) else test.this
        rnd = cast.this
        if not isinstance(x, exp.Column):  # an expression would be computed three times
            continue
        if not (isinstance(rnd, exp.Round) and rnd.args.get("decimals") is None
                and isinstance(rnd.this, exp.Mul)):
            continue
        least = rnd.this.this
        if not (isinstance(least, exp.Least) and len(least.expressions) == 1
                and isinstance(least.this, exp.Greatest) and len(least.this.expressions) == 1
                and least.this.this == x):
            continue
        lo, hi = least.this.expressions[0], least.expressions[0]
        if lo.find(exp.Column) or hi.find(exp.Column):
            continue
        least.replace(exp.Case(ifs=[
            exp.If(this=exp.LT(this=x.copy(), expression=lo.copy()), true=lo.copy()),
            exp.If(this=exp.GT(this=x.copy(), expression=hi.copy()), true=hi.copy())],
            default=x.copy()))
        count += 1
    return count


def _bounded_parts(node: exp.Union) -> tuple[exp.Table, str, list[str], int] | None:
    """``(table, unit, columns, m)`` when ``node`` is exactly ``_bounded(table, unit,
    columns, m)`` (the unit is its first column), else None."""
    left, right = node.this, node.expression
    if not isinstance(left, exp.Select) or not isinstance(right, exp.Select):
        return None
    source = left.args.get("from_")
    where = right.args.get("where")
    if source is None or not isinstance(source.this, exp.Table) or where is None:
        return None
    bound = where.this
    if not isinstance(bound, exp.LTE) or not isinstance(bound.expression, exp.Literal) \
            or not bound.expression.is_int:
        return None
    cols = [e.name for e in left.expressions if isinstance(e, exp.Column)]
    if not cols or len(cols) != len(left.expressions):
        return None
    table, m = source.this, int(bound.expression.this)
    expected = sqlglot.parse_one(
        f"SELECT * FROM {_bounded(table.sql(dialect='duckdb'), cols[0], cols, m)} AS __x",
        read="duckdb").find(exp.Union)
    return (table, cols[0], cols, m) if expected == node else None


def _per_unit_source(alias: str, table: str, unit: str, body: PerUnitSource) -> str:
    """A table aggregated per person: its bounded rows, filtered, one row per unit."""
    cols = [unit] + sorted(set(body.reads) - {unit})
    items = ", ".join(f"{s} AS {n}" for n, s in body.items)
    where = f" WHERE {body.where}" if body.where else ""
    rows = body.inner or alias
    return (f"(SELECT {rows}.{unit}, {items} FROM {_bounded(table, unit, cols, body.max_rows)}"
            f" AS {rows}{where} GROUP BY {rows}.{unit}) AS {alias}")


def _dimension_source(d: DimensionJoin) -> str:
    """A dimension table as a join source: one row per key (a repeated key keeps one row,
    chosen by a hash of the row, so a fact row matches at most one), NULL keys dropped. A
    table another party sends is read from ``__dim_<alias>``, which the party replaces by
    the rows it received (``engine/dimensions.py``)."""
    listed = ", ".join(d.columns)
    key = ", '|', ".join(f"CAST({c} AS VARCHAR)" for c in d.columns)
    table = f"{DIMENSION_TABLE}{d.alias}" if d.shipped else d.table
    ranked = (f"SELECT {listed}, ROW_NUMBER() OVER (PARTITION BY {d.key} ORDER BY "
              f"MD5(CONCAT({key}))) AS __rn FROM {table} WHERE {d.key} IS NOT NULL")
    return f"(SELECT {listed} FROM ({ranked}) AS __d WHERE __rn = 1) AS {d.alias}"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))
