"""UNION ALL of several parties' tables in FROM (issue #14): summed on shares, no join.

Oracle: at a huge epsilon the answer equals plain DuckDB on the union of the parties'
tables (counts exactly, sums to fixed point), for two and three parties, branches at one
party, and a fourth data party that only inputs shares; MIN, MAX, MEDIAN and quantiles (one
histogram over common buckets) exactly where a bucket is one value wide, else within one
bucket; VAR/STDDEV from moments. Refusals name the construct. An
attack check: a compute party receives messages of the same lengths whether or not one
person is in the data.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
from lengths import data_records, run_recorded
from oracle import HUGE_EPSILON, oracle_federation, plain, same, union_connection

import veilql
from veilql.engine.rewrite import compile_plan
from veilql.errors import QueryError
from veilql.policies.loader import load_federation

DEMO = Path(__file__).resolve().parent.parent / "sample_data" / "demo"

QUERIES = [
    # two parties, WHERE in a branch and outside
    "SELECT COUNT(*) AS n, SUM(x) AS s FROM (SELECT amount AS x FROM bank.loans "
    "UNION ALL SELECT premium FROM insurer.policies WHERE open_claim = 1) AS u WHERE x > 10",
    # three parties, GROUP BY a public domain (the union of the branches' values), AVG
    "SELECT g, COUNT(*) AS n, AVG(v) AS a FROM (SELECT region AS g, income AS v "
    "FROM bank.customers WHERE age > 30 UNION ALL SELECT segment, monthly_txn_amount "
    "FROM payments.accounts UNION ALL SELECT product, premium FROM insurer.policies) u "
    "GROUP BY g ORDER BY g",
    # two branches at one party beside another party, COUNT(col), row-level expression
    "SELECT COUNT(v) AS c, SUM(v * 2 + 1) AS s2 FROM (SELECT age AS v FROM bank.customers "
    "UNION ALL SELECT monthly_txn_count FROM payments.accounts "
    "UNION ALL SELECT defaulted FROM bank.loans WHERE amount > 5000) AS u",
    # branches of different fixed points (age: whole numbers, premium: cents), AVG and SUM
    "SELECT AVG(v) AS a, SUM(v) AS s, COUNT(*) AS n FROM (SELECT age AS v FROM "
    "bank.customers UNION ALL SELECT premium FROM insurer.policies WHERE premium < 900) u",
    # GROUP BY an integer domain, HAVING and LIMIT on released values
    "SELECT t, SUM(a) AS total FROM (SELECT term_months AS t, amount AS a FROM bank.loans "
    "UNION ALL SELECT CASE WHEN monthly_txn_count > 50 THEN 24 ELSE 12 END, "
    "monthly_txn_amount FROM payments.accounts) AS u GROUP BY t HAVING total > 0 "
    "ORDER BY t LIMIT 3",
]


def _check(session, con, sql: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = session.sql(sql, epsilon=HUGE_EPSILON, delta=1e-6)
    want = plain(con, sql)
    assert len(got.rows) == len(want), (got.rows, want)
    for g, w in zip(got.rows, want, strict=True):
        for a, b in zip(g, w, strict=True):
            assert same(a, b, 0.02), (sql, got.rows, want)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory):
    fed = oracle_federation(DEMO, tmp_path_factory.mktemp("union") / "fed")
    session = veilql.connect(fed, analyst="oracle")
    con = union_connection(session.federation)
    yield session, con
    session.close()
    con.close()


@pytest.mark.parametrize("sql", QUERIES, ids=[f"u{i}" for i in range(len(QUERIES))])
def test_union_equals_plain_duckdb(oracle, sql: str) -> None:
    session, con = oracle
    _check(session, con, sql)


def test_union_pure_epsilon_equals_plain_duckdb(oracle) -> None:
    # delta = 0: two compute parties each add a discrete Laplace share (the distributed path)
    session, con = oracle
    sql = ("SELECT WITH DIFFERENTIAL_PRIVACY OPTIONS (epsilon = 1e12, delta = 0) "
           + QUERIES[1][len("SELECT "):])
    _check(session, con, sql)


# Quantiles over the union: one histogram over common buckets (the hull of the branches'
# bounds), summed over the branches. ``exact``: every bucket is one value wide (the common
# range spans <= 64 integers), so MIN, MAX and MEDIAN equal DuckDB's; else within a bucket.
QUANTILE_QUERIES = [
    # two parties, different bounds ([18, 60] and [10, 50]): one bucket per value of [10, 60]
    ("SELECT MIN(x) AS lo, MAX(x) AS hi, MEDIAN(x) AS m, QUANTILE_DISC(x, 0.9) AS q9, "
     "COUNT(*) AS n FROM (SELECT LEAST(age, 60) AS x FROM bank.customers UNION ALL "
     "SELECT LEAST(monthly_txn_count, 40) + 10 FROM payments.accounts) u", True),
    # grouped by a public column (the union of the branches' domains), exact buckets
    ("SELECT g, MIN(x) AS lo, MAX(x) AS hi, MEDIAN(x) AS m FROM (SELECT region AS g, "
     "LEAST(age, 60) AS x FROM bank.customers WHERE age > 25 UNION ALL SELECT segment, "
     "LEAST(monthly_txn_count, 40) + 10 FROM payments.accounts) u GROUP BY g ORDER BY g", True),
    # two branches at one party beside a third party, FILTER, exact buckets of [0, 50]
    ("SELECT MIN(x) AS lo, MAX(x) AS hi, MEDIAN(x) AS m, MAX(x) FILTER (WHERE x < 40) AS h2 "
     "FROM (SELECT LEAST(age, 50) AS x FROM bank.customers UNION ALL SELECT defaulted "
     "FROM bank.loans UNION ALL SELECT open_claim + 3 FROM insurer.policies "
     "WHERE premium > 100) u", True),
    # three parties, grouped, different bounds and fixed points ([18, 100] whole numbers,
    # [0, 200], [0, 5000] in cents): 64 buckets of [0, 5000] in cents, within one bucket
    ("SELECT g, MIN(v) AS lo, MAX(v) AS hi, MEDIAN(v) AS m, QUANTILE_CONT(v, 0.25) AS q1 "
     "FROM (SELECT region AS g, age AS v FROM bank.customers UNION ALL SELECT segment, "
     "monthly_txn_count FROM payments.accounts UNION ALL SELECT product, premium "
     "FROM insurer.policies) u GROUP BY g ORDER BY g", False),
]


def _bucket_width(plan) -> float:
    b = next(o.buckets for o in plan.outputs if o.buckets is not None)
    return b.per * b.step


@pytest.mark.parametrize("sql, exact", [q if i == 0 else pytest.param(
    *q, marks=pytest.mark.slow) for i, q in enumerate(QUANTILE_QUERIES)],
                         ids=[f"q{i}" for i in range(len(QUANTILE_QUERIES))])  # others: -m slow
def test_union_quantiles_equal_plain_duckdb(oracle, sql: str, exact: bool) -> None:
    session, con = oracle
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = session.sql(sql, epsilon=HUGE_EPSILON, delta=1e-6)
    want = plain(con, sql)
    width = _bucket_width(got.plan)
    assert (width == 1) == exact
    assert len(got.rows) == len(want), (got.rows, want)
    for g, w in zip(got.rows, want, strict=True):
        for a, b in zip(g, w, strict=True):
            if isinstance(b, str) or exact:
                assert a == b, (sql, got.rows, want)
            else:  # a bucket's end, or a value interpolated within the bucket
                assert abs(float(a) - float(b)) <= width, (sql, got.rows, want)


def test_union_variances_equal_plain_duckdb(oracle) -> None:
    # VAR / STDDEV from moments (COUNT, SUM, SUM of squares), each summed over the branches
    session, con = oracle
    _check(session, con, "SELECT g, VAR_SAMP(v) AS vs, STDDEV_POP(v) AS sp, AVG(v) AS a FROM "
           "(SELECT region AS g, age AS v FROM bank.customers UNION ALL SELECT product, "
           "premium FROM insurer.policies) u GROUP BY g ORDER BY g")


def test_union_histogram_buckets_are_common_and_pay_once() -> None:
    fed = load_federation(DEMO / "federation.toml")
    plan = compile_plan("SELECT MIN(x) AS lo, MEDIAN(x) AS m, COUNT(*) AS n FROM (SELECT age "
                        "AS x FROM bank.customers UNION ALL SELECT amount FROM bank.loans "
                        "UNION ALL SELECT premium FROM insurer.policies) u", fed, epsilon=1.0)
    common = plan.outputs[0].buckets
    assert common is not None and common.lo == 0 and common.decimals == 2
    assert common.highest(common.count - 1) == 100000 and common.count == 64
    for branch in plan.branches:  # every branch bucketed alike, whatever its own bounds
        assert [o.buckets for o in branch.outputs] == [common, common, None]
    buckets = [a for a in plan.aggregates if a.family]
    assert len(buckets) == 64 and all(a.noise == buckets[0].noise for a in buckets)
    # one person in every branch: 1 customer row + 3 loans + 1 policy, one bucket each
    assert buckets[0].l1 == 1 + 3 + 1
    assert plan.epsilon == 1  # the histogram and the count: two shares of the budget, once


def test_union_charges_every_party_read(oracle) -> None:
    session, _ = oracle
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = session.sql(QUERIES[0], epsilon=1.0)
    assert set(result.budget) == {"bank", "insurer"}
    assert result.plan.charged == ("bank", "insurer")  # type: ignore[union-attr]


def _four_parties(root: Path) -> Path:
    """The demo with a fourth data party (a second insurer over the same file): the
    federation's first three parties compute, the fourth only inputs shares."""
    fed = oracle_federation(DEMO, root)
    text = fed.read_text().replace(
        "[analyst.alice]", '[[party]]\nname = "reinsurer"\naddress = "local"\n'
        'connector = "csv:data/insurer"\n\n[analyst.alice]')
    fed.write_text(text)
    shutil.copy(root / "policies" / "insurer.toml", root / "policies" / "reinsurer.toml")
    return fed


def test_union_with_a_fourth_data_party(tmp_path: Path) -> None:
    fed = _four_parties(tmp_path / "fed")
    sql = ("SELECT p, COUNT(*) AS n, SUM(x) AS s FROM (SELECT product AS p, premium AS x "
           "FROM reinsurer.policies WHERE open_claim = 0 UNION ALL SELECT region, income "
           "FROM bank.customers) AS u GROUP BY p ORDER BY p")
    with veilql.connect(fed, analyst="oracle") as session:
        plan = compile_plan(sql, session.federation, epsilon=1.0)
        assert "reinsurer" in plan.charged and "reinsurer" not in plan.compute
        con = union_connection(session.federation)
        _check(session, con, sql)
        con.close()


def test_union_plan_sensitivity_adds_branch_bounds() -> None:
    fed = load_federation(DEMO / "federation.toml")
    plan = compile_plan("SELECT COUNT(*) AS n, SUM(x) AS s FROM (SELECT amount AS x FROM "
                        "bank.loans UNION ALL SELECT premium FROM insurer.policies) u",
                        fed, epsilon=1.0)
    n, s = plan.aggregates
    assert n.l1 == 3 + 1  # loans: 3 rows per unit, policies: 1
    assert s.l1 == 3 * 100000 * 100 + 1 * 5000 * 100
    assert plan.epsilon == 1 and plan.charged == ("bank", "insurer")
    text = plan.to_s()
    assert "branch 1:" in text and "branch 2:" in text and "secure sum" in text


@pytest.mark.parametrize("sql, words", [
    ("SELECT ARRAY_AGG(x) FROM (SELECT age AS x FROM bank.customers UNION ALL SELECT "
     "premium FROM insurer.policies) u", "ARRAY_AGG over a UNION ALL is not supported"),
    ("SELECT COUNT(*) FROM (SELECT age AS x FROM bank.customers UNION SELECT premium "
     "FROM insurer.policies) u", "UNION (without ALL)"),
    ("SELECT COUNT(DISTINCT x) FROM (SELECT age AS x FROM bank.customers UNION ALL "
     "SELECT premium FROM insurer.policies) u", "COUNT(DISTINCT"),
    ("SELECT COUNT(*) FROM (SELECT customer_id AS k FROM bank.customers UNION ALL "
     "SELECT customer_id FROM insurer.policies) u JOIN payments.accounts a "
     "ON u.k = a.customer_id", "JOIN"),
    ("SELECT b, COUNT(*) FROM (SELECT branch AS b FROM bank.customers UNION ALL "
     "SELECT product FROM insurer.policies) u GROUP BY b", "public domain"),
    ("SELECT COUNT(*) FROM (SELECT c.age FROM bank.customers c JOIN bank.loans l "
     "ON c.customer_id = l.customer_id UNION ALL SELECT premium FROM insurer.policies) u",
     "JOIN inside branch 1"),
    ("SELECT COUNT(*) FROM (SELECT age FROM bank.customers UNION ALL "
     "SELECT premium, open_claim FROM insurer.policies) u", "has 2 columns"),
    ("SELECT SUM(x) / (SELECT COUNT(*) FROM bank.loans) FROM (SELECT age AS x FROM "
     "bank.customers UNION ALL SELECT premium FROM insurer.policies) u", "subqueries"),
    ("SELECT SUM(y) FROM (SELECT age AS x FROM bank.customers UNION ALL "
     "SELECT premium FROM insurer.policies) u", "y is not a column"),
])
def test_union_refusals_name_the_construct(sql: str, words: str) -> None:
    fed = load_federation(DEMO / "federation.toml")
    with pytest.raises(QueryError) as info:
        compile_plan(sql, fed, epsilon=1.0, delta=1e-6)
    assert words in info.value.message


def _lengths(fed: Path, out: Path, sql: str) -> list[tuple[str, str, int]]:
    """``(sender, kind, payload length)`` of every non-heartbeat record ``payments`` (a
    compute party that holds no branch here) received running ``sql``."""
    run_recorded(fed, out, sql)
    return data_records(out / "payments.bin")


def test_compute_party_sees_the_same_lengths_for_neighbouring_federations(
        tmp_path: Path) -> None:
    # The attack: a compute party compares what it receives with and without one person
    # (the insurer's customer 2, and a whole region of the bank's customers' rows).
    sql = ("SELECT g, COUNT(*) AS n, SUM(v) AS s, MAX(v) AS hi FROM (SELECT region AS g, "
           "income AS v FROM bank.customers UNION ALL SELECT product, premium FROM "
           "insurer.policies) u GROUP BY g")
    first = oracle_federation(DEMO, tmp_path / "a")
    second = oracle_federation(DEMO, tmp_path / "b")
    csv = tmp_path / "b" / "data" / "insurer" / "policies.csv"
    lines = csv.read_text().splitlines()
    kept = [lines[0]] + [ln for ln in lines[1:] if not ln.startswith("2,")]
    assert len(kept) == len(lines) - 1
    csv.write_text("\n".join(kept) + "\n")
    a = _lengths(first, tmp_path / "ta", sql)
    b = _lengths(second, tmp_path / "tb", sql)
    assert a and sorted(a) == sorted(b)
    assert any(f == "bank" and n > 0 for f, _, n in a)  # the bank's shares did arrive
