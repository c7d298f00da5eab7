"""Random supported queries over the sample federation equal plain DuckDB on the union.

Hypothesis draws the tables (one to three parties, joined with JOIN ... ON, comma joins
or USING), conditions (comparisons, IN, BETWEEN, LIKE, IS NOT NULL, CASE, arithmetic and
comparisons across parties), group keys (public group columns, CASE bands, FLOOR
buckets) and aggregates (COUNT(*), COUNT(x), SUM, AVG, FILTER, SUM of CASE, products
across parties, expressions over aggregates). Each query runs at a huge epsilon, so the
answer must equal DuckDB's (``test_oracle.check_against_duckdb``). Ten examples run in the
default suite; forty with ``-m slow``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracle import HUGE_EPSILON, oracle_federation, plain, union_connection
from test_oracle import check_against_duckdb

import veilql
from veilql.engine.dp import LargeEpsilonWarning

DEMO = Path(__file__).resolve().parent.parent / "sample_data" / "demo"

# alias -> (party.table, value columns with a literal range, public group columns)
TABLES = {
    "c": ("bank.customers", {"age": (18, 100), "income": (0, 200000)},
          {"region": ("north", "south", "east", "west", "central")}),
    "l": ("bank.loans", {"amount": (0, 100000), "defaulted": (0, 1)},
          {"term_months": (12, 24, 36, 60)}),
    "a": ("payments.accounts", {"monthly_txn_count": (0, 200),
                                "monthly_txn_amount": (0, 20000)},
          {"segment": ("standard", "premium", "business", "student")}),
    "p": ("insurer.policies", {"premium": (0, 5000), "claims_amount": (0, 100000)},
          {"product": ("health", "life", "home", "auto", "travel")}),
}
PARTY = {"c": "bank", "l": "bank", "a": "payments", "p": "insurer"}
SMALL = {"c": "age", "l": "defaulted", "a": "monthly_txn_count", "p": "premium"}
# The binder raises Python's recursion limit for deep SQL; hypothesis notices it.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")


@st.composite
def _tables(draw: st.DrawFn) -> list[str]:
    aliases = draw(st.lists(st.sampled_from(sorted(TABLES)), min_size=1, max_size=3,
                            unique=True))
    return aliases


@st.composite
def _condition(draw: st.DrawFn, aliases: list[str]) -> str:
    alias = draw(st.sampled_from(aliases))
    _, values, groups = TABLES[alias]
    kind = draw(st.sampled_from(["cmp", "between", "in", "like", "null", "case", "cross"]))
    col, (lo, hi) = draw(st.sampled_from(sorted(values.items())))
    x = draw(st.integers(lo, hi))
    if kind == "cmp":
        op = draw(st.sampled_from(["<", "<=", ">", ">=", "<>"]))
        return f"{alias}.{col} {op} {x}"
    if kind == "between":
        y = draw(st.integers(x, hi))
        return f"{alias}.{col} BETWEEN {x} AND {y}"
    if kind in ("in", "like"):
        g, domain = draw(st.sampled_from(sorted(groups.items())))
        if kind == "like" and isinstance(domain[0], str):
            prefix = draw(st.sampled_from(domain))[:2]
            return f"{alias}.{g} LIKE '{prefix}%'"
        picked = draw(st.lists(st.sampled_from(domain), min_size=1, max_size=3, unique=True))
        items = ", ".join(f"'{v}'" if isinstance(v, str) else str(v) for v in picked)
        return f"{alias}.{g} IN ({items})"
    if kind == "null":
        return f"{alias}.{col} IS NOT NULL"
    if kind == "case":
        return f"CASE WHEN {alias}.{col} > {x} THEN 1 ELSE 0 END = 1"
    others = [o for o in aliases if PARTY[o] != PARTY[alias]]
    if not others:
        return f"{alias}.{col} * 2 + 1 > {x}"
    other = draw(st.sampled_from(others))
    ocol = draw(st.sampled_from(sorted(TABLES[other][1])))
    return f"{alias}.{col} > {other}.{ocol} - {x}"


@st.composite
def _group(draw: st.DrawFn, aliases: list[str]) -> str:
    alias = draw(st.sampled_from(aliases))
    _, values, groups = TABLES[alias]
    kind = draw(st.sampled_from(["column", "column", "case", "floor"]))
    if kind == "column":
        return f"{alias}.{draw(st.sampled_from(sorted(groups)))}"
    col, (lo, hi) = draw(st.sampled_from(sorted(values.items())))
    cut = draw(st.integers(lo, hi))
    if kind == "case":
        return f"CASE WHEN {alias}.{col} < {cut} THEN 'low' ELSE 'high' END"
    width = max(1, (hi - lo) // 5)
    if col in ("income", "amount", "claims_amount", "monthly_txn_amount"):
        width = max(width, (hi - lo) // 8)
    return f"FLOOR({alias}.{col} / {width})"


@st.composite
def _aggregate(draw: st.DrawFn, aliases: list[str]) -> str:
    alias = draw(st.sampled_from(aliases))
    _, values, _ = TABLES[alias]
    col = draw(st.sampled_from(sorted(values)))
    kind = draw(st.sampled_from(["count", "count_col", "sum", "avg", "filter", "case",
                                 "product", "ratio"]))
    if kind == "count":
        return "COUNT(*)"
    if kind == "count_col":
        return f"COUNT({alias}.{col})"
    if kind == "sum":
        return f"SUM({alias}.{col})"
    if kind == "avg":
        return f"AVG({alias}.{col})"
    cond = draw(_condition([a for a in aliases if PARTY[a] == PARTY[alias]] or aliases))
    if "CASE" in cond or any(f"{o}." in cond for o in aliases if PARTY[o] != PARTY[alias]):
        cond = f"{alias}.{col} >= 0"
    if kind == "filter":
        return f"COUNT(*) FILTER (WHERE {cond})"
    if kind == "case":
        return f"SUM(CASE WHEN {cond} THEN {alias}.{col} ELSE 0 END)"
    if kind == "product":
        others = [o for o in aliases if PARTY[o] != PARTY[alias]]
        if others:  # columns whose product stays well inside the ring
            other = draw(st.sampled_from(others))
            return f"SUM({alias}.{SMALL[alias]} * {other}.{SMALL[other]})"
        return f"SUM({alias}.{col} * 2)"
    return f"SUM({alias}.{col}) / COUNT(*)"


@st.composite
def queries(draw: st.DrawFn) -> str:
    """One random supported query over the sample federation."""
    aliases = draw(_tables())
    first = aliases[0]
    style = draw(st.sampled_from(["on", "comma", "using"]))
    conditions = draw(st.lists(_condition(aliases), max_size=2))
    if style == "comma":
        from_ = ", ".join(f"{TABLES[a][0]} {a}" for a in aliases)
        joins = [f"{a}.customer_id = {first}.customer_id" for a in aliases[1:]]
        conditions = joins + conditions
    elif style == "using":
        from_ = f"{TABLES[first][0]} {first}" + "".join(
            f" JOIN {TABLES[a][0]} {a} USING (customer_id)" for a in aliases[1:])
    else:
        from_ = f"{TABLES[first][0]} {first}" + "".join(
            f" JOIN {TABLES[a][0]} {a} ON {a}.customer_id = {first}.customer_id"
            for a in aliases[1:])
    groups = draw(st.lists(_group(aliases), max_size=2, unique=True))
    aggs = draw(st.lists(_aggregate(aliases), min_size=1, max_size=3))
    items = [f"{g} AS g{i}" for i, g in enumerate(groups)]
    items += [f"{a} AS x{i}" for i, a in enumerate(aggs)]
    sql = f"SELECT {', '.join(items)} FROM {from_}"
    if conditions:
        sql += " WHERE " + " AND ".join(conditions)
    if groups:
        sql += " GROUP BY " + ", ".join(str(i + 1) for i in range(len(groups)))
    return sql


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory):
    fed = oracle_federation(DEMO, tmp_path_factory.mktemp("property") / "fed")
    session = veilql.connect(fed, analyst="oracle")
    con = union_connection(session.federation)
    yield session, con
    session.close()
    con.close()


def _check(oracle, sql: str) -> None:
    session, con = oracle
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LargeEpsilonWarning)
        result = session.sql(sql, epsilon=HUGE_EPSILON, delta=0)
    check_against_duckdb(result, plain(con, sql), allow_empty=True)


_SETTINGS = dict(deadline=None, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow])


@settings(max_examples=10, derandomize=True, **_SETTINGS)  # type: ignore[arg-type]
@given(sql=queries())
def test_random_supported_queries_equal_duckdb(oracle, sql: str) -> None:
    _check(oracle, sql)


@pytest.mark.slow
@settings(max_examples=40, **_SETTINGS)  # type: ignore[arg-type]
@given(sql=queries())
def test_random_supported_queries_equal_duckdb_more(oracle, sql: str) -> None:
    _check(oracle, sql)
