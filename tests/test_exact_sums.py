"""A one-party reduction that sums exact values before scaling them gives the same sums.

``operators/exact_sums.py`` and ``factors.aggregate_sql``: on a DuckDB engine a value
column of an exact type (integers, DECIMALs with at most the plan's digits) is summed
clamped and scaled to fixed point once per group, rows of weight 0 are left out, and a 0/1
weight turns its sums into counts and plain sums. Checked here against the per-row form
(the rewrite switched off) on random data with NULLs, values beyond both bounds and
negative ones, for every column type that should and should not be rewritten, bounds
finer than the digits, a weight that is not 0/1, and a private group key (no filter).
"""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest
import sqlglot

from veilql.connectors.duckdb import DuckDBConnector
from veilql.engine.operators import exact_sums
from veilql.engine.operators import factors as fac
from veilql.engine.operators.exact_sums import EngineSums, scaled_after_sum
from veilql.engine.operators.local import PartyRows
from veilql.engine.plan.nodes import AggregateSpec, GroupKey, LocalColumn, LocalStep, Plan, Term
from veilql.engine.rewrite.bound_contributions import _case_clamps, _column_sql

SEED = "0123456789abcdef" * 2
TYPES = ["DECIMAL(12, 2)", "DECIMAL(18, 4)", "DECIMAL(9, 0)", "INTEGER", "BIGINT",
         "HUGEINT", "DOUBLE", "REAL"]


def _value(x: str, lo: str, hi: str, digits: int) -> str:
    """A value column as bound_contributions writes it for DuckDB (``_column_sql``, then
    ``_case_clamps``)."""
    col = LocalColumn("v0", "value", x, decimals=digits, bounds=(float(lo), float(hi)))
    tree = sqlglot.parse_one(f"SELECT {_column_sql(col)}", read="duckdb")
    _case_clamps(tree)
    return tree.expressions[0].sql(dialect="duckdb")


def _plan(value: str, *, weight: str = "CASE WHEN (t.k > 1) THEN 1 ELSE 0 END",
          private: bool = False) -> Plan:
    """COUNT(*), SUM(v) and COUNT(DISTINCT unit) by one group column over ``t``."""
    group = "t.g" if private else "CASE WHEN t.g = 'a' THEN 0 WHEN t.g = 'b' THEN 1 ELSE -1 END"
    sql = f"SELECT t.id AS __unit, {weight} AS w, {group} AS g0, {value} AS v0 FROM t"
    step = LocalStep("p", ("t",), ("t",), ("id",), (1,), (), sql=sql)
    domain = None if private else ("a", "b")
    aggs = (AggregateSpec("n", "n", "count", (Term(None, None),)),
            AggregateSpec("s", "s", "sum", (Term("p", "v0"),)),
            AggregateSpec("d", "d", "count_distinct", (Term("p", "v0"),)))
    plan = Plan.__new__(Plan)
    for name, v in (("groups", (GroupKey("o", "p", "g0", domain),)), ("aggregates", aggs),
                    ("steps", (step,))):
        object.__setattr__(plan, name, v)
    return plan


@pytest.fixture(scope="module")
def conn(tmp_path_factory: pytest.TempPathFactory) -> DuckDBConnector:
    import duckdb

    db = tmp_path_factory.mktemp("exact") / "t.duckdb"
    con = duckdb.connect(str(db))
    cols = ", ".join(f"x{i} {t}" for i, t in enumerate(TYPES))
    con.execute(f"CREATE TABLE t (id BIGINT, g VARCHAR, k INTEGER, {cols})")
    rng = np.random.default_rng(11)
    rows = []
    for i in range(2000):
        vals = []
        for t in TYPES:
            if rng.random() < 0.1:
                vals.append(None)
                continue
            v = float(rng.choice([rng.uniform(-50, 250), rng.uniform(-1e6, 1e6), 0.0, 99.995]))
            vals.append(round(v) if "INT" in t or t.endswith(", 0)") else round(v, 4))
        rows.append((i, "abc"[i % 3], int(rng.integers(0, 4)), *vals))
    holes = ", ".join("?" for _ in range(3 + len(TYPES)))
    con.executemany(f"INSERT INTO t VALUES ({holes})", rows)
    con.close()
    with DuckDBConnector(db) as c:
        yield c


def _both(plan: Plan, conn: DuckDBConnector, monkeypatch: pytest.MonkeyPatch
          ) -> tuple[np.ndarray, np.ndarray, list[str], list[PartyRows]]:
    """The reduction with the rewrite and without it (per-row form, no filter, no
    simplification), the SQL the engine ran with it, and both private labels."""
    seen: list[str] = []
    run = conn._execute
    monkeypatch.setattr(conn, "_execute", lambda sql: (seen.append(sql), run(sql))[1])
    fast, rows = fac.reduce_in_engine(plan, plan.steps[0], conn, SEED)
    with monkeypatch.context() as m:
        m.setattr(fac, "scaled_after_sum", lambda sql, *a: EngineSums(sql))
        slow, slow_rows = fac.reduce_in_engine(plan, plan.steps[0], conn, SEED)
    return fast, slow, seen, [rows, slow_rows]


@pytest.mark.parametrize("lo,hi,digits", [("0", "100", 2), ("-20", "200.5", 1), ("-3", "3", 0),
                                          ("0", "0.125", 2), ("0", "1000000", 4)])
@pytest.mark.parametrize("i", range(len(TYPES)), ids=TYPES)
def test_sums_scaled_once_equal_the_per_row_form(i: int, lo: str, hi: str, digits: int,
                                                 conn: DuckDBConnector,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    plan = _plan(_value(f"t.x{i}", lo, hi, digits))
    fast, slow, seen, _ = _both(plan, conn, monkeypatch)
    assert np.array_equal(fast, slow), (TYPES[i], fast, slow)
    assert fast[0].sum() > 0 and fast[1].any()
    kind = TYPES[i].replace(" ", "")
    exact = "INT" in kind or (kind.startswith("DECIMAL") and int(kind[:-1].split(",")[1]) <= digits)
    # a bound finer than the digits is rounded per row: left as it is
    fine = all(Decimal(b) * 10 ** digits % 1 == 0 for b in (lo, hi))
    rewritten = "ROUND(" not in seen[0]
    assert rewritten == (exact and fine), (TYPES[i], lo, hi, digits, seen[0])
    assert 'WHERE "w" <> 0' in seen[0] and 'COUNT(*) AS "__c0"' in seen[0]


def test_a_weight_that_is_not_zero_or_one_is_multiplied(conn: DuckDBConnector,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    plan = _plan(_value("t.x0", "0", "100", 2),
                 weight="CASE WHEN (t.k > 1) THEN 2 ELSE 0 END")
    fast, slow, seen, _ = _both(plan, conn, monkeypatch)
    assert np.array_equal(fast, slow)
    assert 'SUM("w") AS "__c0"' in seen[0] and 'SUM("w" * "v0")' in seen[0]


def test_a_private_key_keeps_every_row(conn: DuckDBConnector,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    plan = _plan(_value("t.x3", "0", "100", 0), private=True)
    fast, slow, seen, (rows, slow_rows) = _both(plan, conn, monkeypatch)
    assert np.array_equal(fast, slow) and rows.labels == slow_rows.labels
    assert 'WHERE "w" <> 0' not in seen[0] and "ROUND(" not in seen[0]


def test_other_shapes_and_unbound_sql_are_left_alone(conn: DuckDBConnector) -> None:
    exact_sums._KEPT.clear()
    # an expression, not a column, inside the clamp; an unknown table: left as they are
    for sql in ["SELECT t.id AS __unit, 1 AS w, " + _value("t.x0 + 1", "0", "9", 2) +
                " AS v0 FROM t",
                "SELECT u.id AS __unit, 1 AS w, " + _value("u.x0", "0", "9", 2) + " AS v0 FROM u"]:
        found = scaled_after_sum(sql, conn, ("t",))
        assert found.sql == sql and not found.scaled
    # the alias read again inside its own SELECT: left as it is
    sql = "SELECT t.id AS __unit, 1 AS w, " + _value("t.x0", "0", "9", 2) + " AS v0, v0 AS z FROM t"
    assert scaled_after_sum(sql, conn, ("t",)).sql == sql


@pytest.mark.parametrize("role", ["value", "operand"])
def test_a_scale_past_32_bits_does_not_overflow_an_integer_column(role: str) -> None:
    """An INTEGER of 30,000,000 at two digits is 3e9 in fixed point: beyond 32 bits, which an
    INTEGER times an INTEGER literal would stay in (DuckDB's overflow error); the scale is
    multiplied as a BIGINT (``bound_contributions._column_sql``)."""
    import duckdb

    con = duckdb.connect()
    con.execute("CREATE TABLE t (x INTEGER)")
    con.execute("INSERT INTO t VALUES (30000000), (-5), (NULL), (2147483647)")
    col = LocalColumn("v0", role, "t.x", decimals=2,
                      bounds=(0, 5e7) if role == "value" else None)
    got = [r[0] for r in con.execute(f"SELECT {_column_sql(col)} FROM t").fetchall()]
    if role == "value":  # clamped to [0, 5e7], NULL adds 0
        assert got == [3_000_000_000, 0, 0, 5_000_000_000]
    else:  # not clamped, NULL compares as 0
        assert got == [3_000_000_000, -500, 0, 214_748_364_700]
    # a fractional scale (negative digits, as a variance's squares get) stays a fraction
    col = LocalColumn("v0", role, "t.x", decimals=-4,
                      bounds=(0, 5e7) if role == "value" else None)
    got = [r[0] for r in con.execute(f"SELECT {_column_sql(col)} FROM t").fetchall()]
    assert got[0] == 3000 and got[2] == 0
