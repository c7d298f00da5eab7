"""A one-party reduction grouped by the raw group keys gives exactly the per-row CASE's sums.

``operators/raw_groups.py``: on a DuckDB engine a one-party query groups by each public
group column's key itself and maps the groups to cells with the step's own CASE afterwards.
Checked here: every cell's exact (pre-noise) sums and the private labels equal those of
the per-row CASE over keys of every kind (text with and without a collation, DECIMAL,
DOUBLE with -0.0/NaN/inf, INTEGER against a fractional value, DATE and TIMESTAMP against
text, BOOLEAN, NULLs in and out of the domain, values outside it), over the demo and the
BI federations (DuckDB, CSV and Parquet parties, private keys beside public ones, local
joins, dimension tables); which SQL runs depends on the plan only; a shape that is not
exactly push_local's keeps the per-row CASE.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import bi_fixtures
import numpy as np
import pytest
from oracle import oracle_federation

from veilql.connectors.base import open_connector
from veilql.connectors.duckdb import DuckDBConnector
from veilql.engine.operators import factors as fac
from veilql.engine.operators.local import fetch
from veilql.engine.operators.raw_groups import raw_groups
from veilql.engine.plan.nodes import AggregateSpec, GroupKey, LocalStep, Plan, Term
from veilql.engine.rewrite import compile_plan
from veilql.engine.rewrite.push_local import _literal
from veilql.policies.loader import load_federation

DEMO = Path(__file__).resolve().parent.parent / "sample_data" / "demo"
SEED = "0123456789abcdef" * 2


def _case(key: str, domain: tuple[object, ...]) -> str:
    """push_local's index CASE of ``key`` over ``domain``."""
    cases = " ".join(f"WHEN ({key}) IS NULL THEN {i}" if v is None else
                     f"WHEN {key} = {_literal(v)} THEN {i}" for i, v in enumerate(domain))
    return f"CASE {cases} ELSE -1 END"


def _plan(domains: list[tuple[object, ...]], keys: list[str], *,
          distinct: bool = False) -> Plan:
    """A one-party plan over ``t`` (COUNT(*), SUM(v) and optionally COUNT(DISTINCT id))
    grouped by ``keys`` with public ``domains``, in push_local's shape."""
    groups = tuple(GroupKey(f"o{i}", "p", f"g{i}", d) for i, d in enumerate(domains))
    cols = ", ".join(f"{_case(k, d)} AS g{i}" for i, (k, d) in
                     enumerate(zip(keys, domains, strict=True)))
    sql = (f"SELECT t.id AS __unit, CASE WHEN (t.v > 1) THEN 1 ELSE 0 END AS w, {cols}, "
           "CASE WHEN (t.v) IS NULL THEN 0 ELSE t.v END AS v0 FROM t")
    step = LocalStep("p", ("t",), ("t",), ("id",), (1,), (), sql=sql)
    aggs = [AggregateSpec("n", "n", "count", (Term(None, None),)),
            AggregateSpec("s", "s", "sum", (Term("p", "v0"),))]
    if distinct:
        aggs.append(AggregateSpec("d", "d", "count_distinct", (Term(None, None),)))
    plan = Plan.__new__(Plan)
    for name, value in (("groups", groups), ("aggregates", tuple(aggs)), ("steps", (step,))):
        object.__setattr__(plan, name, value)
    return plan


def _both(plan: Plan, conn: DuckDBConnector, monkeypatch: pytest.MonkeyPatch
          ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The engine's reduction with raw keys and with the per-row CASE, and the SQL run."""
    seen: list[str] = []
    run = conn._execute
    monkeypatch.setattr(conn, "_execute", lambda sql: (seen.append(sql), run(sql))[1])
    raw, _ = fac.reduce_in_engine(plan, plan.steps[0], conn, SEED)
    with monkeypatch.context() as m:
        m.setattr(fac, "raw_groups", lambda *a: None)
        case, _ = fac.reduce_in_engine(plan, plan.steps[0], conn, SEED)
    return raw, case, seen


KEYS = [  # column type, values in the table, public domain
    ("VARCHAR", ["north", "south", None, "North", "", "o'k", "west"],
     ("north", "south", "o'k", "", None)),
    ("VARCHAR COLLATE NOCASE", ["north", "North", "NORTH", "south", None], ("north", "south")),
    ("DECIMAL(10, 2)", [0.10, 1.00, 2.5, -0.0, 7.25, None], (0.1, 1, 2.5, 0)),
    ("DOUBLE", [0.1, -0.0, 0.0, float("nan"), float("inf"), 1.5, None], (0.1, 0, 1.5)),
    ("INTEGER", [1, 2, 3, None, -1], (1, 2, 1.5, -1, None)),
    ("DATE", ["2024-01-01", "2024-02-01", "2025-01-01", None], ("2024-01-01", "2024-02-01")),
    ("TIMESTAMP", ["2024-01-01 06:00:00", "2024-01-01 07:00:00", None],
     ("2024-01-01 06:00:00", None)),
    ("BOOLEAN", [True, False, None], (True, None)),
]


@pytest.mark.parametrize("kind,values,domain", KEYS, ids=[k[0] for k in KEYS])
def test_raw_keys_give_the_per_row_case_sums(kind: str, values: list[object],
                                             domain: tuple[object, ...], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import duckdb

    db = tmp_path / "t.duckdb"
    con = duckdb.connect(str(db))
    con.execute(f"CREATE TABLE t (id BIGINT, x {kind}, y VARCHAR, v INTEGER)")
    rng = np.random.default_rng(7)
    rows = [(i, values[int(rng.integers(len(values)))], "ab"[i % 2],
             None if i % 11 == 0 else int(rng.integers(0, 9))) for i in range(600)]
    con.executemany("INSERT INTO t VALUES (?, CAST(? AS " + kind.split(" COLLATE")[0] +
                    "), ?, ?)", rows)
    con.close()
    with DuckDBConnector(db) as conn:
        for plan in (_plan([domain], ["t.x"]),  # one key, then beside a second one
                     _plan([("b", "a"), domain], ["t.y", "t.x"])):
            assert raw_groups(plan.steps[0], plan.groups) is not None
            raw, case, seen = _both(plan, conn, monkeypatch)
            assert 'AS "__r" GROUP BY' in seen[0] and 'AS "__r"' not in seen[1]
            assert np.array_equal(raw, case), (kind, raw, case)
            assert raw[0].sum() < 600  # some rows fall outside the domain or weigh 0
        # COUNT(DISTINCT) does not add up over raw groups: the per-row CASE stays
        plan = _plan([domain], ["t.x"], distinct=True)
        raw, case, seen = _both(plan, conn, monkeypatch)
        assert 'AS "__r"' not in seen[0] and np.array_equal(raw, case)


@pytest.mark.parametrize("sql", [
    "SELECT CASE WHEN t.x = 'a' THEN 0 ELSE -1 END AS g0 FROM t WHERE g0 > 0",  # alias reused
    "SELECT CASE WHEN t.x = 'a' THEN 0 WHEN t.z = 'b' THEN 1 ELSE -1 END AS g0 FROM t",
    "SELECT CASE WHEN t.x = 'a' THEN 1 WHEN t.x = 'b' THEN 0 ELSE -1 END AS g0 FROM t",
    "SELECT CASE WHEN t.x = 'a' THEN 0 WHEN t.x = 'b' THEN 1 ELSE 0 END AS g0 FROM t",
    "SELECT CASE WHEN t.x > 1 = TRUE THEN 0 WHEN t.x > 1 = FALSE THEN 1 ELSE -1 END AS g0 "
    "FROM t",
    "SELECT t.x AS g0 FROM t",
    "SELECT CASE WHEN t.x = 'a' THEN 0 WHEN t.x = 'b' THEN 1 ELSE -1 END AS g1 FROM t",
    "SELECT CASE WHEN t.x = 'a' THEN 0 WHEN t.x = 'b' THEN 1 ELSE -1 END AS g0 FROM t "
    "GROUP BY 1",
    "SELECT DISTINCT CASE WHEN t.x = 'a' THEN 0 WHEN t.x = 'b' THEN 1 ELSE -1 END AS g0 "
    "FROM t",
])
def test_other_shapes_keep_the_per_row_case(sql: str) -> None:
    step = LocalStep("p", ("t",), ("t",), ("id",), (1,), (), sql=sql)
    domain = (True, False) if "TRUE" in sql else ("a", "b")
    assert raw_groups(step, [GroupKey("o", "p", "g0", domain)]) is None


DEMO_QUERIES = [
    "SELECT region, COUNT(*) AS n, SUM(income) AS s, AVG(income) AS a FROM bank.customers "
    "WHERE age > 40 GROUP BY region",
    "SELECT region, branch, COUNT(*) AS n FROM bank.customers GROUP BY region, branch",
    "SELECT c.region, COUNT(*) AS n, SUM(l.amount) AS s FROM bank.customers c JOIN "
    "bank.loans l ON c.customer_id = l.customer_id GROUP BY c.region",
    "SELECT region, COUNT(DISTINCT customer_id) AS n FROM bank.customers GROUP BY region",
]
BI_QUERIES = [
    "SELECT groupby_string_0, COUNT(*) AS n, SUM(visits) AS v, AVG(spend) AS a FROM alpha.ta "
    "GROUP BY groupby_string_0",
    "SELECT day, groupby_string_0, COUNT(*) AS n FROM alpha.ta GROUP BY day, groupby_string_0",
    "SELECT groupby_string_0, groupby_int_0, SUM(score) AS s FROM alpha.ta "
    "GROUP BY groupby_string_0, groupby_int_0",
    "SELECT b.kind, COUNT(*) AS n, SUM(t.tenure) AS s FROM alpha.ta2 t JOIN alpha.branches b "
    "ON t.branch_id = b.branch_id GROUP BY b.kind",
    "SELECT groupby_string_0, city, SUM(fills) AS f FROM beta.tb GROUP BY groupby_string_0, city",
    "SELECT groupby_string_0, COUNT(*) AS n FROM beta.tb WHERE rate > 0.5 GROUP BY "
    "groupby_string_0",
]


def _recorder(run: Callable[[str], object], seen: list[str]) -> Callable[[str], object]:
    """``run``, recording each SQL text in ``seen``."""
    def recorded(sql: str) -> object:
        seen.append(sql)
        return run(sql)
    return recorded


@pytest.mark.parametrize("which", ["demo", "bi"])
def test_released_cells_and_labels_equal_on_the_federations(
        which: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exact values per cell, the occurring cells and the private labels, both ways."""
    path = oracle_federation(DEMO, tmp_path / "fed") if which == "demo" else \
        bi_fixtures.build(tmp_path / "bi")
    fed = load_federation(path)
    for sql in DEMO_QUERIES if which == "demo" else BI_QUERIES:
        plan = compile_plan(sql, fed, epsilon=1.0, delta=1e-6)
        assert plan.mode == "local", sql
        step = plan.steps[0]
        with open_connector(fed.party(step.party).connector, fed.root) as conn:
            seen: list[str] = []
            monkeypatch.setattr(conn, "run", _recorder(conn.run, seen))
            monkeypatch.setattr(conn, "run_rows", _recorder(conn.run_rows, seen))
            raw, raw_rows = fetch(step, conn, SEED, reduce=plan)
            # grouped by the raw keys unless a COUNT(DISTINCT) needs the per-row CASE (that
            # of the query, or partition selection's count of people beside a private key)
            distinct = any(a.kind == "count_distinct" for a in plan.aggregates)
            assert ('AS "__r" GROUP BY' in seen[0]) is not distinct, sql
            with monkeypatch.context() as m:
                m.setattr(fac, "raw_groups", lambda *a: None)
                case, case_rows = fetch(step, conn, SEED, reduce=plan)
        assert np.array_equal(raw, case), sql
        assert raw_rows.labels == case_rows.labels, sql
        assert (raw_rows.cells is None) == (case_rows.cells is None), sql
        if raw_rows.cells is not None:
            assert np.array_equal(raw_rows.cells, case_rows.cells), sql
        assert raw.sum() > 0, sql


def test_an_outside_value_changes_no_sql_and_no_shape(tmp_path: Path) -> None:
    """The attack: tell apart neighbouring data (one person's key moved outside the public
    domain, a new distinct raw value) from what the party runs or sends. The SQL texts and
    the shape of the exact values are the same; the person falls in no cell."""
    import duckdb

    sql = "SELECT region, COUNT(*) AS n, SUM(income) AS s FROM bank.customers GROUP BY region"
    texts, values = [], []
    for name in ("as is", "moved"):
        path = oracle_federation(DEMO, tmp_path / name.replace(" ", "_"))
        if name == "moved":
            con = duckdb.connect(str(path.parent / "data" / "bank.duckdb"))
            con.execute("UPDATE customers SET region = 'nowhere' WHERE customer_id = "
                        "(SELECT MIN(customer_id) FROM customers)")
            con.close()
        fed = load_federation(path)
        plan = compile_plan(sql, fed, epsilon=1.0, delta=1e-6)
        with open_connector(fed.party("bank").connector, fed.root) as conn:
            seen: list[str] = []
            conn.run = _recorder(conn.run, seen)  # type: ignore[method-assign]
            conn.run_rows = _recorder(conn.run_rows, seen)  # type: ignore[method-assign]
            got, _ = fetch(plan.steps[0], conn, SEED, reduce=plan)
        texts.append(seen)
        values.append(got)
    assert texts[0] == texts[1] and 'AS "__r" GROUP BY' in texts[0][0]
    assert values[0].shape == values[1].shape
    assert values[0][0].sum() - values[1][0].sum() == 1  # counted in no cell
