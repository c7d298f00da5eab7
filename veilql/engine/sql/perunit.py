"""WITH and derived tables that aggregate one table per person: one row per privacy unit.

``WITH per AS (SELECT uid, SUM(x) AS s, COUNT(*) AS n FROM a.t WHERE ... GROUP BY uid)
SELECT AVG(per.s) FROM per JOIN b.u ON per.uid = u.uid`` is what analysts write for "the
average per customer". The body reads one table, groups by its privacy unit only and selects
the unit and aliased aggregates (COUNT(*), COUNT(x), SUM, AVG, MIN, MAX of row-level
expressions of that table); it runs in the owner's local SQL over the table's bounded rows
(at most ``max_rows_per_unit`` per person, values clamped to their declared bounds), so the
derived table holds one row per person, and the outer query uses it like any table of that
party: joined on the unit, its columns in WHERE and inside aggregates.

The derived table's policy follows from the declared one alone (every party derives the
same): the unit is a key, one row per unit, and each aggregate is a value column bounded
over a person's at most ``m`` rows of values in ``[lo, hi]``: ``SUM`` in ``[min(lo, m lo),
max(hi, m hi)]``, ``COUNT(*)`` in ``[1, m]``, ``COUNT(x)`` in ``[0, m]``, ``AVG``, ``MIN``,
``MAX`` in ``[lo, hi]``. Sensitivities are then those of any value column of one row per
person (docs/PRIVACY.md).

>>> from pathlib import Path
>>> from veilql.engine.sql.parse import parse
>>> from veilql.engine.sql.bind import bind
>>> from veilql.policies.model import ColumnPolicy, Federation, Party, TablePolicy
>>> t = TablePolicy("t", "uid", 3, columns={
...     "uid": ColumnPolicy("uid", "key"), "x": ColumnPolicy("x", "value", bounds=(0, 10))})
>>> fed = Federation("f", Path("f.toml"), (Party("p", "local", "duckdb:x", {"t": t}),))
>>> q = bind(parse("WITH per AS (SELECT uid, SUM(x) AS s FROM p.t GROUP BY uid) "
...                "SELECT AVG(s) AS a FROM per"), fed)
>>> q.tables[0].policy.columns["s"].bounds, q.outputs[0].bounds
((0.0, 30.0), (0.0, 30.0))
"""

from __future__ import annotations

from dataclasses import replace

from sqlglot import exp

from veilql.engine.sql import checks, functions, typecheck
from veilql.engine.sql.bound import BoundTable, PerUnit
from veilql.errors import PolicyError, UnsupportedError
from veilql.policies.model import ColumnPolicy, Federation, TablePolicy

_HINT = ("a WITH or subquery that aggregates must read one table and GROUP BY its privacy "
         "unit, e.g. WITH per AS (SELECT uid, SUM(x) AS s FROM party.table GROUP BY uid); "
         "select the unit and aliased COUNT, SUM, AVG, MIN or MAX")
_AGGREGATES = (exp.Count, exp.Sum, exp.Avg, exp.Min, exp.Max)


def bind_per_unit(ref: exp.Subquery, federation: Federation, catalog) -> BoundTable:  # noqa: ANN001
    """The aggregating derived table ``ref`` as a table of one row per person."""
    from veilql.engine.sql.scope import Scope, bind_table

    body = ref.this
    alias = ref.alias_or_name
    what = f"the subquery {alias}"
    for arg, name in (("having", "HAVING"), ("order", "ORDER BY"), ("limit", "LIMIT"),
                      ("offset", "OFFSET"), ("qualify", "QUALIFY"), ("joins", "JOIN"),
                      ("distinct", "DISTINCT"), ("with_", "WITH")):
        if body.args.get(arg):
            raise UnsupportedError(f"{name} inside {what}, which aggregates, is not "
                                   "supported", _HINT)
    from_ = body.args.get("from_")
    source = from_.this if from_ is not None else None
    if not isinstance(source, exp.Table):
        raise UnsupportedError(f"{what} must read one table party.table", _HINT)
    table = bind_table(source, federation, catalog)
    if table.dimension:
        raise UnsupportedError(f"{what} aggregates the dimension table {table.party}."
                               f"{table.table}, which holds no people", _HINT)
    inner = Scope((table,), catalog)
    keys = body.args["group"].expressions
    if len(keys) != 1 or not isinstance(keys[0], exp.Column) or \
            inner.resolve(keys[0]).column != table.unit:
        raise UnsupportedError(f"{what} must GROUP BY the privacy unit of {table.party}."
                               f"{table.table} ({table.unit}) alone", _HINT)
    m = table.policy.max_rows_per_unit
    columns: dict[str, ColumnPolicy] = {table.unit: table.policy.columns[table.unit]}
    items: list[tuple[str, str]] = []
    reads: set[str] = {table.unit}
    for item in body.expressions:
        node = item.this if isinstance(item, exp.Alias) else item
        if isinstance(node, exp.Column) and inner.resolve(node).column == table.unit:
            if isinstance(item, exp.Alias) and item.alias.lower() != table.unit.lower():
                raise UnsupportedError(f"{what} renames the unit {table.unit}", _HINT)
            continue
        if not isinstance(item, exp.Alias) or not isinstance(node, _AGGREGATES):
            raise UnsupportedError(f"{item.sql(dialect='duckdb')} in {what} is not "
                                   "supported: select the unit and aliased aggregates", _HINT)
        name = item.alias
        if name.lower() in (c.lower() for c in columns):
            raise UnsupportedError(f"{what} names two columns {name}", _HINT)
        policy, sql = _aggregate(node, name, inner, m, reads)
        columns[name] = policy
        items.append((name, sql))
    if not items:
        raise UnsupportedError(f"{what} selects no aggregate", _HINT)
    where = body.args.get("where")
    cond = None
    if where is not None:
        checks.check_no_aggregate(where.this, "WHERE")
        checks.check_predicate(where.this, inner.resolve)
        qualified = inner.qualify(where.this)
        typecheck.TypeChecker(inner).predicate(qualified)
        reads |= {c.name for c in qualified.find_all(exp.Column)}
        cond = qualified.sql(dialect="duckdb")
    policy = TablePolicy(name=table.table, privacy_unit=table.unit, max_rows_per_unit=1,
                         join_reveal=table.policy.join_reveal,
                         max_units=table.policy.max_units, columns=columns)
    return replace(table, alias=alias, policy=policy,
                   per_unit=PerUnit(m, tuple(sorted(reads)), tuple(items), cond,
                                    table.alias))


def _aggregate(node: exp.Expr, name: str, inner, m: int,  # noqa: ANN001
               reads: set[str]) -> tuple[ColumnPolicy, str]:
    """One aggregate of the body: its column policy (bounds over ``m`` rows) and its SQL
    over the table's clamped values."""
    func = node.sql_name().upper()
    arg = node.this
    if isinstance(node, exp.Count):
        if isinstance(arg, exp.Star):
            return ColumnPolicy(name, "value", bounds=(1.0, float(m)), type="BIGINT"), \
                "COUNT(*)"
        if isinstance(arg, exp.Distinct):
            raise UnsupportedError(f"COUNT(DISTINCT ...) inside a per-person subquery ({name})"
                                   " is not supported", _HINT)
    if isinstance(node, exp.Min | exp.Max) and node.expressions:
        raise UnsupportedError(f"{func} takes one argument ({name})", _HINT)
    if functions.is_condition(arg):
        arg = exp.Case(ifs=[exp.If(this=arg.copy(), true=exp.Literal.number(1))],
                       default=exp.Literal.number(0))
    cols = functions.check_roles(arg, inner.resolve, context="value", where=func)
    for col in cols:
        if col.policy.role == "value" and col.policy.bounds is None:
            raise PolicyError(f"value column {col.alias}.{col.column} has no bounds, so {func} "
                              "cannot clamp it",
                              f"add bounds = [low, high] to {col.column} in "
                              f"policies/{col.party}.toml")
    expr = inner.qualify(arg)
    checker = typecheck.TypeChecker(inner)
    if isinstance(node, exp.Count):  # COUNT(x): the rows where x is not NULL
        checker.expr_type(expr)
        reads |= {c.name for c in expr.find_all(exp.Column)}
        return ColumnPolicy(name, "value", bounds=(0.0, float(m)), type="BIGINT"), \
            f"COUNT({expr.sql(dialect='duckdb')})"
    num = checker.numeric(expr)
    lo, hi = float(num.lo), float(num.hi)

    def clamp(n: exp.Expr) -> exp.Expr:
        if isinstance(n, exp.Column):
            policy = inner.resolve(n).policy
            if policy.role == "value" and policy.bounds is not None:
                return functions.clamp_sql(n.copy(), *policy.bounds)
        return n

    clamped = expr.copy().transform(clamp)
    reads |= {c.name for c in expr.find_all(exp.Column)}

    def digits(c: exp.Column) -> int:
        return inner.resolve(c).policy.decimals

    decimals = functions.value_decimals(expr, digits)
    if isinstance(node, exp.Sum):
        bounds = (min(lo, m * lo), max(hi, m * hi))
    else:
        bounds = (lo, hi)
        if isinstance(node, exp.Avg):  # two digits more than its values, as the ring allows
            decimals = functions.float_digits(min(decimals + 2, functions.MAX_DECIMALS),
                                              max(abs(lo), abs(hi)), m)
    # DOUBLE, so that no integer or decimal type of an engine can overflow in the outer query
    sql = f"CAST({func}({clamped.sql(dialect='duckdb')}) AS DOUBLE)"
    return ColumnPolicy(name, "value", bounds=bounds, decimals=decimals, type="DOUBLE"), sql
