"""Every CONTRACT query shape, answered on secret shares, equals plain DuckDB on the union.

At a huge epsilon the noise is (almost surely) zero, so counts must match exactly and
sums to fixed-point precision. Cells of a public group domain that DuckDB does not
return (no rows) must be released as zero.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import bi_fixtures
import pytest
from oracle import HUGE_EPSILON, oracle_federation, plain, same, union_connection

import veilql
import veilql.errors
from veilql.engine.dp import LargeEpsilonWarning

DEMO = Path(__file__).resolve().parent.parent / "sample_data" / "demo"

QUERIES = [
    # one party, local mode
    "SELECT COUNT(*) AS n FROM bank.customers",
    "SELECT region, COUNT(*) AS n, AVG(income) AS inc FROM bank.customers WHERE age > 40 "
    "GROUP BY region",
    "SELECT c.region, COUNT(*) AS n, SUM(l.amount) AS total FROM bank.customers c "
    "JOIN bank.loans l ON c.customer_id = l.customer_id GROUP BY c.region",
    "SELECT term_months, COUNT(DISTINCT customer_id) AS people FROM bank.loans "
    "WHERE amount BETWEEN 1000 AND 50000 GROUP BY term_months",
    # two parties: join, filter at one party, aggregate at the other
    "SELECT COUNT(*) AS n, SUM(l.amount) AS total FROM bank.loans l "
    "JOIN insurer.policies p ON l.customer_id = p.customer_id WHERE p.open_claim = 1",
    "SELECT COUNT(DISTINCT l.customer_id) AS people FROM bank.loans l "
    "JOIN insurer.policies p ON l.customer_id = p.customer_id WHERE p.open_claim = 1",
    "SELECT a.segment, COUNT(*) AS n, AVG(l.defaulted) AS rate FROM bank.loans l "
    "JOIN payments.accounts a ON l.customer_id = a.customer_id GROUP BY a.segment",
    "SELECT a.segment, p.product, COUNT(*) AS n FROM payments.accounts a "
    "JOIN insurer.policies p ON a.customer_id = p.customer_id GROUP BY a.segment, p.product",
    # cross-party predicates and arithmetic
    "SELECT COUNT(*) AS n FROM bank.loans l JOIN insurer.policies p "
    "ON l.customer_id = p.customer_id WHERE l.amount > p.claims_amount",
    "SELECT COUNT(*) AS n, SUM(p.premium) AS prem FROM bank.loans l JOIN insurer.policies p "
    "ON l.customer_id = p.customer_id WHERE l.amount > 2 * p.claims_amount + 100 "
    "OR p.premium < 500",
    "SELECT COUNT(DISTINCT l.customer_id) AS people FROM bank.loans l "
    "JOIN insurer.policies p ON l.customer_id = p.customer_id WHERE l.amount < p.premium * 10",
    "SELECT COUNT(*) AS n FROM payments.accounts a JOIN insurer.policies p "
    "ON a.customer_id = p.customer_id WHERE NOT (a.monthly_txn_amount <= p.premium) "
    "AND a.monthly_txn_count <> 3",
    "SELECT SUM(a.monthly_txn_amount - p.premium) AS d FROM payments.accounts a "
    "JOIN insurer.policies p ON a.customer_id = p.customer_id",
    # three parties, the design document's question, and post-processing
    "SELECT c.region, AVG(l.defaulted) AS rate, COUNT(*) AS n FROM bank.customers c "
    "JOIN bank.loans l ON c.customer_id = l.customer_id "
    "JOIN payments.accounts a ON a.customer_id = c.customer_id "
    "JOIN insurer.policies p ON p.customer_id = c.customer_id "
    "WHERE a.monthly_txn_count > 10 AND p.open_claim = 1 GROUP BY c.region",
    "SELECT WITH DIFFERENTIAL_PRIVACY OPTIONS (epsilon = 1e12, delta = 0) "
    "p.product, COUNT(*) AS n FROM bank.customers c JOIN payments.accounts a "
    "ON c.customer_id = a.customer_id JOIN insurer.policies p ON p.customer_id = a.customer_id "
    "WHERE c.income > a.monthly_txn_amount * 12 GROUP BY p.product HAVING n > 10 "
    "ORDER BY n DESC LIMIT 3",
]


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory):
    fed = oracle_federation(DEMO, tmp_path_factory.mktemp("oracle") / "fed")
    session = veilql.connect(fed, analyst="oracle")
    con = union_connection(session.federation)
    yield session, con
    session.close()
    con.close()


@pytest.mark.parametrize("sql", QUERIES, ids=[f"q{i}" for i in range(len(QUERIES))])
def test_secure_answer_equals_plain_duckdb(oracle, sql: str) -> None:
    session, con = oracle
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LargeEpsilonWarning)
        result = session.sql(sql, epsilon=HUGE_EPSILON, delta=0)
    expected = plain(con, sql)
    groups = sum(1 for o in result.plan.outputs if o.kind == "group")
    ordered = bool(result.plan.order_by) or result.plan.limit is not None
    if ordered:  # HAVING/ORDER BY/LIMIT: same rows in the same order
        assert len(result.rows) == len(expected)
        pairs = list(zip(result.rows, expected, strict=True))
    else:
        by_key = {tuple(str(v) for v in row[:groups]): row for row in result.rows}
        pairs = [(by_key.get(tuple(str(v) for v in row[:groups])), row) for row in expected]
        released = {tuple(str(v) for v in row[:groups]) for row in expected}
        for key, row in by_key.items():  # public-domain cells DuckDB did not return: empty
            if key not in released:
                assert all(v in (0, None) for v in row[groups:]), row
    assert pairs
    for got, want in pairs:
        assert got is not None, f"missing group {want}"
        for g, w in zip(got, want, strict=True):
            assert same(g, w, tol=0.011), (got, want)


PRIVATE_GROUPS = [
    ("SELECT branch, COUNT(*) AS n, AVG(income) AS inc FROM bank.customers GROUP BY branch",
     "SELECT branch, COUNT(*) AS n, AVG(income) AS inc FROM bank.customers GROUP BY branch "
     "HAVING COUNT(DISTINCT customer_id) >= 2"),
    ("SELECT c.branch, p.product, COUNT(*) AS n FROM bank.customers c "
     "JOIN insurer.policies p ON c.customer_id = p.customer_id WHERE p.open_claim = 1 "
     "GROUP BY c.branch, p.product",
     "SELECT c.branch, p.product, COUNT(*) AS n FROM bank.customers c "
     "JOIN insurer.policies p ON c.customer_id = p.customer_id WHERE p.open_claim = 1 "
     "GROUP BY c.branch, p.product HAVING COUNT(DISTINCT c.customer_id) >= 2"),
]


@pytest.mark.parametrize("sql,reference", PRIVATE_GROUPS, ids=["local", "secure"])
def test_private_group_keys_pass_a_noisy_threshold(oracle, sql: str, reference: str) -> None:
    """Keys without a public domain: at a huge epsilon exactly the groups of two or more
    people are released (the smallest threshold that a single person fails)."""
    session, con = oracle
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LargeEpsilonWarning)
        result = session.sql(sql, epsilon=HUGE_EPSILON, delta=1e-6)
    assert result.plan.threshold == 1
    expected = {tuple(str(v) for v in row[:-1]): row[-1] for row in plain(con, reference)}
    got = {tuple(str(v) for v in row[:-1]): row[-1] for row in result.rows}
    assert got.keys() == expected.keys() and len(got) > 3
    for key, value in expected.items():
        assert same(got[key], value, tol=0.011)


def test_private_group_keys_need_delta(oracle) -> None:
    session, _ = oracle
    with pytest.raises(veilql.errors.QueryError, match="needs delta > 0"):
        session.sql("SELECT branch, COUNT(*) FROM bank.customers GROUP BY branch",
                    epsilon=1.0, delta=0)


# -- SQL that BI analysts write (issue 14) ---------------------------------------------------
# Each construct locally and across two and three parties, against plain DuckDB on the
# union. Keys compare as values (an integer label 3 equals DuckDB's 3.0), a SUM over no
# rows is 0 here and NULL in DuckDB, and sums of floating-point expressions are rounded
# to fixed point per row, hence a small relative tolerance.

ANALYST_QUERIES = [
    # joins as analysts write them
    "SELECT COUNT(*) AS n, SUM(l.amount) AS s FROM bank.loans l, insurer.policies p "
    "WHERE l.customer_id = p.customer_id AND p.open_claim = 1",
    "SELECT p.product, COUNT(*) AS n FROM bank.customers c, payments.accounts a, "
    "insurer.policies p WHERE c.customer_id = a.customer_id AND a.customer_id = p.customer_id "
    "AND c.age > 30 GROUP BY p.product",
    "SELECT COUNT(*) AS n FROM bank.customers JOIN payments.accounts USING (customer_id)",
    "SELECT COUNT(*) AS n FROM bank.loans l JOIN insurer.policies p "
    "ON l.customer_id = p.customer_id AND p.premium > 1000",
    "SELECT c.region, COUNT(*) AS n, SUM(p.premium) AS prem FROM bank.customers c "
    "JOIN bank.loans l ON c.customer_id = l.customer_id AND l.term_months = 36 "
    "JOIN insurer.policies p ON p.customer_id = l.customer_id GROUP BY c.region",
    # aggregates: COUNT(x), FILTER, SUM of conditions and CASE, products, divisions
    "SELECT COUNT(amount) AS n, COUNT(*) FILTER (WHERE amount > 50000) AS big, "
    "SUM(amount > 50000) AS big2, SUM(CASE WHEN defaulted = 1 THEN amount ELSE 0 END) AS bad "
    "FROM bank.loans",
    "SELECT term_months, AVG(amount) FILTER (WHERE defaulted = 1) AS avg_bad, "
    "COUNT(DISTINCT customer_id) FILTER (WHERE amount > 20000) AS people "
    "FROM bank.loans GROUP BY term_months",
    "SELECT COUNT(p.premium) AS n, SUM(p.premium) FILTER (WHERE a.monthly_txn_count > 10) AS s, "
    "AVG(a.monthly_txn_amount) FILTER (WHERE p.open_claim = 1) AS a "
    "FROM payments.accounts a JOIN insurer.policies p ON a.customer_id = p.customer_id",
    "SELECT SUM(a.monthly_txn_count * p.premium) AS s, AVG(a.monthly_txn_count * p.premium) "
    "AS m FROM payments.accounts a JOIN insurer.policies p ON a.customer_id = p.customer_id",
    "SELECT c.region, SUM(CASE WHEN p.open_claim = 1 THEN l.amount END) AS s "
    "FROM bank.customers c JOIN bank.loans l ON c.customer_id = l.customer_id "
    "JOIN insurer.policies p ON p.customer_id = c.customer_id GROUP BY c.region",
    "SELECT AVG(income / age) AS r, SUM(LN(age)) AS l, SUM(SQRT(income)) AS q, "
    "SUM(age % 7) AS m, SUM(POWER(age, 2)) AS p, SUM(ABS(age - 50)) AS a, "
    "SUM(GREATEST(age, 40)) AS g, SUM(LEAST(income, 1000)) AS le, SUM(EXP(age / 100.0)) AS e "
    "FROM bank.customers",
    # expressions over released aggregates (post-processing)
    "SELECT p.product, SUM(l.amount) / COUNT(*) AS per_row, COUNT(*) AS n "
    "FROM bank.loans l JOIN insurer.policies p ON l.customer_id = p.customer_id "
    "GROUP BY p.product",
    "SELECT 'all' AS scope, ROUND(100.0 * COUNT(*) / 5, 1) AS pct, "
    "SUM(income) - SUM(age) AS d, ROUND(AVG(age), 1) AS mean_age FROM bank.customers",
    "SELECT region, COUNT(*) AS n FROM bank.customers GROUP BY region "
    "HAVING SUM(income) / COUNT(*) > 60000 ORDER BY SUM(income) DESC",
    # row-level functions in WHERE
    "SELECT COUNT(*) AS n FROM bank.customers WHERE COALESCE(age, 0) > 30 "
    "AND region IS NOT NULL AND LENGTH(branch) > 5 AND SUBSTRING(branch, 1, 4) = 'west'",
    "SELECT COUNT(*) AS n FROM bank.customers WHERE LOWER(UPPER(region)) LIKE 'n%' "
    "OR TRIM(CONCAT(region, ' ')) ILIKE 'SOUTH' OR NULLIF(region, 'east') IS NULL",
    "SELECT COUNT(*) AS n FROM bank.loans l JOIN payments.accounts a "
    "ON l.customer_id = a.customer_id WHERE CASE WHEN l.term_months > 24 THEN l.amount "
    "ELSE 0 END > a.monthly_txn_amount AND ROUND(l.amount / 1000) % 2 = 0 "
    "AND FLOOR(a.monthly_txn_amount) >= CEIL(10.5)",
    # GROUP BY expressions with a derived public domain
    "SELECT CASE WHEN age < 40 THEN 'young' ELSE 'old' END AS band, COUNT(*) AS n, "
    "AVG(income) AS inc FROM bank.customers GROUP BY 1",
    "SELECT FLOOR(age / 10) AS decade, COUNT(*) AS n FROM bank.customers "
    "GROUP BY FLOOR(age / 10)",
    "SELECT UPPER(c.region) AS r, CASE WHEN p.premium > 2000 THEN 'high' ELSE 'low' END AS tier, "
    "COUNT(*) AS n FROM bank.customers c JOIN insurer.policies p "
    "ON c.customer_id = p.customer_id GROUP BY UPPER(c.region), tier",
    # subqueries and CTEs
    "WITH big AS (SELECT customer_id, amount FROM bank.loans WHERE amount > 20000) "
    "SELECT COUNT(*) AS n, SUM(b.amount) AS s FROM big b JOIN insurer.policies p "
    "ON b.customer_id = p.customer_id",
    "SELECT d.segment, COUNT(*) AS n FROM (SELECT customer_id, segment FROM payments.accounts "
    "WHERE monthly_txn_count > 5) AS d JOIN bank.customers c ON c.customer_id = d.customer_id "
    "GROUP BY d.segment",
    "SELECT c.region, COUNT(*) AS n FROM bank.customers c JOIN payments.accounts a "
    "ON c.customer_id = a.customer_id WHERE c.customer_id IN "
    "(SELECT customer_id FROM insurer.policies WHERE premium > 1000) GROUP BY c.region",
    "SELECT COUNT(*) AS n FROM bank.customers c WHERE EXISTS (SELECT 1 FROM bank.loans l "
    "WHERE l.customer_id = c.customer_id AND l.defaulted = 1)",
    "SELECT COUNT(*) AS n, AVG(c.income) AS inc FROM bank.customers c "
    "JOIN insurer.policies p ON p.customer_id = c.customer_id "
    "WHERE c.customer_id NOT IN (SELECT customer_id FROM bank.loans WHERE defaulted = 1)",
    "SELECT COUNT(*) AS n FROM (SELECT customer_id, age FROM bank.customers WHERE "
    "customer_id IN (SELECT customer_id FROM insurer.policies WHERE open_claim = 1)) AS d "
    "WHERE d.age > 30",
    "WITH x AS (SELECT l.customer_id, l.amount FROM bank.loans l WHERE EXISTS (SELECT 1 "
    "FROM insurer.policies p WHERE p.customer_id = l.customer_id)) "
    "SELECT SUM(amount) AS s, COUNT(*) AS n FROM x",
    "SELECT UPPER(region) AS r, COUNT(*) AS n FROM bank.customers GROUP BY 1 "
    "HAVING r <> 'EAST' ORDER BY n DESC",
    # products and FILTER with a cross-party predicate (slot-level factors)
    "SELECT COUNT(DISTINCT l.customer_id) FILTER (WHERE p.open_claim = 1 AND l.amount > 10000) "
    "AS people, SUM(l.defaulted * p.premium) AS s, AVG(l.amount) FILTER (WHERE p.premium > "
    "1000) AS a FROM bank.loans l JOIN insurer.policies p ON l.customer_id = p.customer_id "
    "WHERE l.amount > p.premium",
    "SELECT l.term_months, COUNT(DISTINCT l.customer_id) FILTER (WHERE p.open_claim = 1) AS "
    "people, COUNT(l.amount) AS c FROM bank.loans l JOIN insurer.policies p "
    "ON l.customer_id = p.customer_id JOIN payments.accounts a ON a.customer_id = l.customer_id "
    "WHERE l.amount > a.monthly_txn_amount GROUP BY l.term_months",
]


def _key(v: object) -> object:
    """A group key as a value: numbers as floats, dates as their ISO text."""
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int | float):
        return float(v)
    return str(v)


def _close(got: object, want: object) -> bool:
    if want is None and got in (0, 0.0, None):
        return True  # SUM over no rows: 0 here (never NULL, see docs/reference.md)
    if isinstance(got, int | float) and isinstance(want, int | float) and not isinstance(
            want, bool):
        return math.isclose(float(got), float(want), rel_tol=2e-6, abs_tol=0.011)
    return same(got, want, tol=0.011)


def check_against_duckdb(result: veilql.Result, expected: list[tuple], *,
                         allow_empty: bool = False) -> None:
    """Rows of ``result`` equal DuckDB's, by group key (public cells without rows: zero).
    ``allow_empty``: DuckDB may return no row at all (random queries)."""
    groups = sum(1 for o in result.plan.outputs if o.kind == "group")
    ordered = bool(result.plan.order_by) or result.plan.limit is not None
    if ordered:
        assert len(result.rows) == len(expected), (result.rows, expected)
        pairs = list(zip(result.rows, expected, strict=True))
    else:
        by_key = {tuple(_key(v) for v in row[:groups]): row for row in result.rows}
        pairs = [(by_key.get(tuple(_key(v) for v in row[:groups])), row) for row in expected]
        released = {tuple(_key(v) for v in row[:groups]) for row in expected}
        for key, row in by_key.items():
            if key not in released:
                assert all(v in (0, None) for v in row[groups:]), row
    assert pairs or (allow_empty and not expected)
    for got, want in pairs:
        assert got is not None, f"missing group {want}"
        for g, w in zip(got, want, strict=True):
            if groups and isinstance(w, int | float) and isinstance(g, int | float):
                assert _close(g, w), (got, want)
            elif isinstance(w, str) or w is None or isinstance(w, bool):
                assert _close(g, w), (got, want)
            else:
                assert _close(g, w) or _key(g) == _key(w), (got, want)


def _run(session: veilql.Session, sql: str, delta: float = 0.0) -> veilql.Result:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LargeEpsilonWarning)
        return session.sql(sql, epsilon=HUGE_EPSILON, delta=delta)


@pytest.mark.parametrize("sql", ANALYST_QUERIES,
                         ids=[f"a{i}" for i in range(len(ANALYST_QUERIES))])
def test_analyst_sql_equals_plain_duckdb(oracle, sql: str) -> None:
    session, con = oracle
    check_against_duckdb(_run(session, sql), plain(con, sql))


@pytest.fixture(scope="module")
def bi(tmp_path_factory: pytest.TempPathFactory):
    """The BI federation (tests/bi_fixtures.py): same-named group columns at every party,
    dates, a private INTEGER key, NULLs."""
    fed = bi_fixtures.build(tmp_path_factory.mktemp("bi"))
    session = veilql.connect(fed, analyst="oracle")
    con = union_connection(session.federation)
    yield session, con
    session.close()
    con.close()


BI_QUERIES = [
    # the wrong answer of issue 14: two parties' GROUP BY columns of the same name
    "SELECT ta.groupby_string_0, tb.groupby_string_0, COUNT(*) AS n, SUM(ta.visits) AS v "
    "FROM alpha.ta JOIN beta.tb ON ta.uid = tb.uid "
    "GROUP BY ta.groupby_string_0, tb.groupby_string_0",
    "SELECT tb.groupby_string_0, ta.groupby_string_0, COUNT(*) AS n FROM alpha.ta "
    "JOIN beta.tb ON ta.uid = tb.uid GROUP BY tb.groupby_string_0, ta.groupby_string_0",
    # and at one party, in two tables; and at three parties
    "SELECT ta.groupby_string_0, ta2.groupby_string_0, COUNT(*) AS n FROM alpha.ta "
    "JOIN alpha.ta2 ON ta.uid = ta2.uid JOIN beta.tb ON tb.uid = ta.uid "
    "GROUP BY ta.groupby_string_0, ta2.groupby_string_0",
    "SELECT ta.groupby_string_0, tb.groupby_string_0, COUNT(*) AS n, SUM(tc.level) AS l "
    "FROM alpha.ta, beta.tb, gamma.tc WHERE ta.uid = tb.uid AND tc.person = tb.uid "
    "GROUP BY ta.groupby_string_0, tb.groupby_string_0",
    # NULLs, products, FILTER across parties
    "SELECT SUM(ta.score) AS s, AVG(ta.score) AS a, COUNT(ta.score) AS c, SUM(ta.spend) AS sp, "
    "AVG(ta.spend) AS asp FROM alpha.ta",
    "SELECT SUM(ta.visits * tb.fills) AS s, AVG(ta.visits * tb.fills) AS a, "
    "SUM(ta.spend * tb.rate) AS w FROM alpha.ta JOIN beta.tb ON ta.uid = tb.uid",
    "SELECT COUNT(*) FILTER (WHERE tb.fills > 10) AS n, AVG(ta.visits) FILTER "
    "(WHERE tb.fills > 10) AS av, COUNT(DISTINCT ta.uid) FILTER (WHERE tb.fills > 10 "
    "AND ta.visits > 20) AS people FROM alpha.ta JOIN beta.tb ON ta.uid = tb.uid",
    "SELECT tb.groupby_string_0, SUM(ta.visits * tb.fills * tc.level) AS s FROM alpha.ta "
    "JOIN beta.tb ON ta.uid = tb.uid JOIN gamma.tc ON tc.person = ta.uid "
    "GROUP BY tb.groupby_string_0",
    # dates
    "SELECT EXTRACT(month FROM ta.day) AS m, COUNT(*) AS n FROM alpha.ta "
    "GROUP BY EXTRACT(month FROM ta.day)",
    "SELECT DATE_TRUNC('month', ta.day) AS mo, COUNT(*) AS n, SUM(tb.fills) AS f "
    "FROM alpha.ta JOIN beta.tb ON ta.uid = tb.uid GROUP BY DATE_TRUNC('month', ta.day)",
    "SELECT COUNT(*) AS n FROM alpha.ta WHERE ta.day >= DATE '2024-02-01' "
    "AND ta.day < DATE '2024-03-01' + INTERVAL 1 MONTH "
    "AND DATE_DIFF('day', ta.day, DATE '2024-12-31') > 200",
]

BI_PRIVATE = [
    ("SELECT ta.groupby_int_0, COUNT(*) AS n FROM alpha.ta GROUP BY ta.groupby_int_0",
     "SELECT ta.groupby_int_0, COUNT(*) AS n FROM alpha.ta GROUP BY ta.groupby_int_0 "
     "HAVING COUNT(DISTINCT ta.uid) >= 2"),
    ("SELECT ta.groupby_int_0, tb.groupby_string_0, COUNT(*) AS n FROM alpha.ta "
     "JOIN beta.tb ON ta.uid = tb.uid GROUP BY ta.groupby_int_0, tb.groupby_string_0",
     "SELECT ta.groupby_int_0, tb.groupby_string_0, COUNT(*) AS n FROM alpha.ta "
     "JOIN beta.tb ON ta.uid = tb.uid GROUP BY ta.groupby_int_0, tb.groupby_string_0 "
     "HAVING COUNT(DISTINCT ta.uid) >= 2"),
    ("SELECT tc.joined, COUNT(*) AS n FROM gamma.tc JOIN beta.tb "
     "ON tc.person = tb.uid GROUP BY tc.joined",
     "SELECT tc.joined, COUNT(*) AS n FROM gamma.tc JOIN beta.tb "
     "ON tc.person = tb.uid GROUP BY tc.joined HAVING COUNT(DISTINCT tc.person) >= 2"),
    # three columns named groupby_string_0, at three parties, one of them private
    ("SELECT tc.groupby_string_0, ta.groupby_string_0, tb.groupby_string_0, COUNT(*) AS n "
     "FROM alpha.ta JOIN beta.tb ON ta.uid = tb.uid JOIN gamma.tc ON tc.person = ta.uid "
     "GROUP BY tc.groupby_string_0, ta.groupby_string_0, tb.groupby_string_0",
     "SELECT tc.groupby_string_0, ta.groupby_string_0, tb.groupby_string_0, COUNT(*) AS n "
     "FROM alpha.ta JOIN beta.tb ON ta.uid = tb.uid JOIN gamma.tc ON tc.person = ta.uid "
     "GROUP BY tc.groupby_string_0, ta.groupby_string_0, tb.groupby_string_0 "
     "HAVING COUNT(DISTINCT ta.uid) >= 2"),
]


@pytest.mark.parametrize("sql", BI_QUERIES, ids=[f"bi{i}" for i in range(len(BI_QUERIES))])
def test_bi_sql_equals_plain_duckdb(bi, sql: str) -> None:
    session, con = bi
    result = _run(session, sql)
    check_against_duckdb(result, plain(con, sql))
    assert len(set(result.columns)) == len(result.columns)


def test_same_named_group_columns_of_two_parties_are_two_columns(bi) -> None:
    """The wrong answer of issue 14: both columns came back with one party's labels."""
    session, con = bi
    result = _run(session, BI_QUERIES[0])
    assert result.columns == ["groupby_string_0", "groupby_string_0_1", "n", "v"]
    assert {r[1] for r in result.rows} == {"x", "y", "w"}  # beta's domain, not alpha's
    assert {r[0] for r in result.rows} == {"x", "y", "z"}
    want = {(a, b): n for a, b, n, _ in plain(con, BI_QUERIES[0])}
    assert {(a, b): n for a, b, n, _ in result.rows if n} == want


@pytest.mark.parametrize("sql,reference", BI_PRIVATE,
                         ids=["local", "secure", "date", "three_same_names"])
def test_private_keys_come_back_in_their_type(bi, sql: str, reference: str) -> None:
    session, con = bi
    result = _run(session, sql, delta=1e-6)
    expected = {tuple(_key(v) for v in row[:-1]): row[-1] for row in plain(con, reference)}
    got = {tuple(_key(v) for v in row[:-1]): row[-1] for row in result.rows}
    assert got == expected
    assert len(set(result.columns)) == len(result.columns)
    first = result.columns[0]
    types = {type(r[0]) for r in result.rows}
    assert types == ({int} if first == "groupby_int_0" else {str}), types


# -- variances, quantiles, MIN/MAX, dimension tables (issue 14, second half) -----------------
# Variances come from noisy moments: at a huge epsilon they equal DuckDB's up to the fixed
# point of the sum of squares (a relative 1e-5). Quantiles come from a noisy histogram over
# public buckets: within one bucket of DuckDB's answer (exact when a bucket is one value),
# and MIN/MAX are the lowest/highest non-empty bucket (docs/PRIVACY.md).

STAT_QUERIES = [
    # one party, local mode
    "SELECT region, VAR_SAMP(income) AS v, STDDEV_POP(age) AS s, COUNT(*) AS n "
    "FROM bank.customers GROUP BY region",
    "SELECT term_months, MEDIAN(amount) AS m, MIN(amount) AS lo, MAX(amount) AS hi, "
    "QUANTILE_DISC(amount, 0.9) AS p90, AVG(amount) AS a FROM bank.loans GROUP BY term_months",
    "SELECT MEDIAN(age) AS m, PERCENTILE_CONT(0.25) WITHIN GROUP (ORDER BY age) AS q1, "
    "PERCENTILE_DISC(0.75) WITHIN GROUP (ORDER BY age DESC) AS q1d, MIN(age) AS lo, "
    "MAX(age) AS hi, VARIANCE(age) AS v FROM bank.customers WHERE income > 50000",
    # two parties
    "SELECT p.product, MEDIAN(l.amount) AS m, STDDEV(l.amount) AS s, COUNT(*) AS n "
    "FROM bank.loans l JOIN insurer.policies p ON l.customer_id = p.customer_id "
    "GROUP BY p.product",
    "SELECT QUANTILE_CONT(a.monthly_txn_count, 0.9) FILTER (WHERE p.open_claim = 1) AS q, "
    "VAR_POP(a.monthly_txn_amount) FILTER (WHERE p.premium > 1000) AS v, "
    "MAX(p.premium) AS hi FROM payments.accounts a JOIN insurer.policies p "
    "ON a.customer_id = p.customer_id",
    # three parties, with a cross-party predicate and an expression over a statistic
    "SELECT c.region, MEDIAN(p.premium) AS m, ROUND(STDDEV_SAMP(a.monthly_txn_count), 2) AS s, "
    "MIN(c.age) AS youngest FROM bank.customers c JOIN payments.accounts a "
    "ON c.customer_id = a.customer_id JOIN insurer.policies p ON p.customer_id = c.customer_id "
    "WHERE c.income > a.monthly_txn_amount * 12 GROUP BY c.region",
]

# outer joins inside one party's local SQL (across parties they are refused)
OUTER_QUERIES = [
    "SELECT c.region, COUNT(*) AS n, COUNT(l.amount) AS c, SUM(l.amount) AS s, "
    "AVG(l.amount) AS a FROM bank.customers c LEFT JOIN bank.loans l "
    "ON c.customer_id = l.customer_id GROUP BY c.region",
    "SELECT p.product, COUNT(*) AS n, COUNT(l.amount) AS c, SUM(l.defaulted) AS d "
    "FROM bank.customers c LEFT JOIN bank.loans l ON c.customer_id = l.customer_id "
    "JOIN insurer.policies p ON p.customer_id = c.customer_id WHERE c.age > 30 "
    "GROUP BY p.product",
    "SELECT a.segment, COUNT(*) AS n, SUM(l.amount) AS s FROM payments.accounts a "
    "JOIN bank.customers c ON c.customer_id = a.customer_id LEFT JOIN bank.loans l "
    "ON l.customer_id = c.customer_id JOIN insurer.policies p ON p.customer_id = a.customer_id "
    "GROUP BY a.segment",
    "SELECT COUNT(*) AS n, COUNT(c.age) AS a, SUM(l.amount) AS s FROM bank.customers c "
    "RIGHT JOIN bank.loans l ON c.customer_id = l.customer_id",
    "SELECT COUNT(*) AS n, COUNT(c.age) AS a, COUNT(l.amount) AS s FROM bank.customers c "
    "FULL OUTER JOIN bank.loans l ON c.customer_id = l.customer_id",
]


@pytest.mark.parametrize("sql", OUTER_QUERIES, ids=[f"o{i}" for i in range(len(OUTER_QUERIES))])
def test_outer_joins_equal_plain_duckdb(oracle, sql: str) -> None:
    session, con = oracle
    check_against_duckdb(_run(session, sql), plain(con, sql))


def test_bi_left_join_with_nulls(bi) -> None:
    """Not every person at alpha.ta is in alpha.ta2: unmatched rows count in COUNT(*) and
    not in COUNT(x), SUM or AVG."""
    session, con = bi
    sql = ("SELECT ta.groupby_string_0, COUNT(*) AS n, COUNT(ta2.tenure) AS t, "
           "SUM(ta2.tenure) AS s, AVG(ta2.tenure) AS a FROM alpha.ta LEFT JOIN alpha.ta2 "
           "ON ta.uid = ta2.uid JOIN gamma.tc ON tc.person = ta.uid GROUP BY 1")
    result = _run(session, sql)
    expected = plain(con, sql)
    assert any(r[1] != r[2] for r in expected)  # some rows have no match
    check_against_duckdb(result, expected)


BI_STAT_QUERIES = [
    "SELECT ta.groupby_string_0, MEDIAN(ta.visits) AS m, VAR_SAMP(ta.spend) AS v, "
    "MIN(ta.score) AS lo FROM alpha.ta GROUP BY ta.groupby_string_0",
    "SELECT tb.groupby_string_0, QUANTILE_CONT(tc.level, 0.5) AS m, STDDEV_POP(tb.fills) AS s "
    "FROM beta.tb JOIN gamma.tc ON tc.person = tb.uid GROUP BY tb.groupby_string_0",
    # dimension tables: another party's (sent to the fact party) and the party's own
    "SELECT m.category, COUNT(*) AS n, SUM(ta.visits) AS v, AVG(m.fee) AS f "
    "FROM alpha.ta JOIN beta.merchants m ON ta.merchant_id = m.merchant_id GROUP BY m.category",
    "SELECT m.category, COUNT(*) AS n, SUM(ta.visits * m.fee) AS w, MEDIAN(ta.visits) AS med "
    "FROM alpha.ta JOIN beta.merchants m ON ta.merchant_id = m.merchant_id "
    "JOIN gamma.tc ON tc.person = ta.uid WHERE m.fee > 1 AND tc.level > 2 GROUP BY m.category",
    "SELECT b.kind, COUNT(*) AS n, SUM(tb.fills) AS f, AVG(b.staff) AS st FROM alpha.ta2 "
    "JOIN alpha.branches b ON ta2.branch_id = b.branch_id JOIN beta.tb ON tb.uid = ta2.uid "
    "GROUP BY b.kind",
    "SELECT COUNT(*) AS n FROM alpha.ta, beta.merchants m, beta.tb "
    "WHERE ta.merchant_id = m.merchant_id AND tb.uid = ta.uid AND m.category = 'fuel' "
    "AND tb.fills > m.fee * 2",
]


def check_statistics(result: veilql.Result, expected: list[tuple]) -> None:
    """``check_against_duckdb`` with each statistic's own tolerance: a variance to 1e-5 of
    its value, a quantile to one bucket width."""
    plan = result.plan
    specs = {o.name: o for o in plan.outputs}
    groups = sum(1 for o in plan.outputs if o.kind == "group")
    by_key = {tuple(_key(v) for v in row[:groups]): row for row in result.rows}
    assert expected
    for want in expected:
        got = by_key.get(tuple(_key(v) for v in want[:groups]))
        assert got is not None, f"missing group {want}"
        for name, g, w in zip(result.columns, got, want, strict=True):
            spec = specs[name]
            if w is None or g is None:
                assert g == w or (w is None and g in (0, None)), (name, got, want)
            elif spec.kind == "quantile":
                width = spec.buckets.per * spec.buckets.step
                assert abs(float(g) - float(w)) <= width + 1e-9, (name, got, want, width)
            elif spec.kind == "var":
                assert _var_close(plan, spec, float(g), float(w)), (name, got, want)
            elif spec.kind == "expr" and isinstance(w, float):
                assert math.isclose(float(g), float(w), rel_tol=1e-5, abs_tol=0.011), (
                    name, got, want)
            else:
                assert _close(g, w) or _key(g) == _key(w), (name, got, want)


def _var_close(plan, spec, got: float, want: float) -> bool:
    """A variance (or standard deviation) equal to DuckDB's to the fixed-point precision
    of its sum of squares: each square is rounded to a unit of 10^-d, so VAR_POP is off by
    at most half a unit and VAR_SAMP by n/(n-1) of that, i.e. by at most 10^-d for n >= 2
    (d < 0 for large squares, see ``push_local._square_digits``)."""
    square = next(a for a in plan.aggregates if a.name == spec.aggregates[0])
    unit = 10.0 ** -square.decimals
    if math.isclose(got, want, rel_tol=1e-5, abs_tol=0.011):
        return True
    if spec.stat.startswith("stddev"):  # |a - b| = |a^2 - b^2| / (a + b)
        return abs(got - want) * (got + want) <= unit + 1e-9
    return abs(got - want) <= unit + 1e-9


@pytest.mark.parametrize("sql", STAT_QUERIES, ids=[f"st{i}" for i in range(len(STAT_QUERIES))])
def test_statistics_equal_plain_duckdb(oracle, sql: str) -> None:
    session, con = oracle
    check_statistics(_run(session, sql), plain(con, sql))


@pytest.mark.parametrize("sql", BI_STAT_QUERIES,
                         ids=[f"bst{i}" for i in range(len(BI_STAT_QUERIES))])
def test_bi_statistics_and_dimensions_equal_plain_duckdb(bi, sql: str) -> None:
    session, con = bi
    check_statistics(_run(session, sql, delta=1e-6), plain(con, sql))


def test_exact_buckets_give_exact_quantiles(bi) -> None:
    """A bucket of one value (bounds holding at most 64 values): quantiles, MIN and MAX equal
    DuckDB's exactly at a huge epsilon."""
    session, con = bi
    sql = ("SELECT MEDIAN(ta.visits) AS m, QUANTILE_DISC(ta.visits, 0.3) AS d, "
           "QUANTILE_CONT(ta.visits, 0.77) AS c, MIN(ta.visits) AS lo, MAX(ta.visits) AS hi "
           "FROM alpha.ta")
    result = _run(session, sql)
    assert all(o.buckets.per == 1 for o in result.plan.outputs)
    want = plain(con, sql)[0]
    assert all(math.isclose(float(g), float(w), abs_tol=1e-9)
               for g, w in zip(result.rows[0], want, strict=True)), (result.rows, want)
