"""The SQL of issue 14 end to end: each construct is explained, refused ones charge nothing,
the allow-list keeps to itself, computed outputs carry error bars that hold, a SUM over no
rows is 0 in every format, private keys keep their type, and safe forms keep engines from
failing on values outside the declared bounds. (Answers against DuckDB: test_oracle.py.)
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import bi_fixtures
import pytest
from oracle import HUGE_EPSILON, oracle_federation
from sqlglot import exp

import veilql
from veilql.engine import postprocess
from veilql.engine.dp import LargeEpsilonWarning, half_width
from veilql.engine.rewrite import compile_plan
from veilql.engine.sql import checks, functions
from veilql.errors import QueryError
from veilql.policies.loader import load_federation
from veilql.ui.formats import render

DEMO = Path(__file__).resolve().parent.parent / "sample_data" / "demo"

# (construct, SQL, text the plan must show)
EXPLAINED = [
    ("comma join", "SELECT COUNT(*) FROM bank.loans l, insurer.policies p "
     "WHERE l.customer_id = p.customer_id", "secure join bank with insurer"),
    ("JOIN USING", "SELECT COUNT(*) FROM bank.loans JOIN insurer.policies USING (customer_id)",
     "secure join bank with insurer"),
    ("extra ON condition", "SELECT COUNT(*) FROM bank.loans l JOIN insurer.policies p "
     "ON l.customer_id = p.customer_id AND p.open_claim = 1", "(p.open_claim = 1)"),
    ("same-party join", "SELECT COUNT(*) FROM bank.customers c JOIN bank.loans l "
     "ON c.customer_id = l.customer_id AND c.region = 'north' JOIN insurer.policies p "
     "ON p.customer_id = c.customer_id", "customers AS c (<= 1 rows per unit), loans AS l"),
    ("COUNT(x)", "SELECT COUNT(premium) FROM insurer.policies",
     "CASE WHEN NOT policies.premium IS NULL THEN 1 ELSE 0 END"),
    ("FILTER", "SELECT COUNT(*) FILTER (WHERE premium > 10) FROM insurer.policies",
     "COUNT(rows WHERE insurer.v0 = 1)"),
    ("SUM(condition)", "SELECT SUM(premium > 10) FROM insurer.policies",
     "CASE WHEN policies.premium > 10 THEN 1 WHEN NOT (policies.premium > 10) THEN 0 END"),
    ("SUM(CASE)", "SELECT SUM(CASE WHEN open_claim = 1 THEN premium ELSE 0 END) "
     "FROM insurer.policies", "CASE WHEN policies.open_claim = 1 THEN policies.premium ELSE 0"),
    ("product across parties", "SELECT SUM(a.monthly_txn_count * p.premium) FROM "
     "payments.accounts a JOIN insurer.policies p ON a.customer_id = p.customer_id",
     "SUM(payments.v0 * insurer.v0)"),
    ("FILTER across parties", "SELECT SUM(p.premium) FILTER (WHERE a.monthly_txn_count > 5) "
     "FROM payments.accounts a JOIN insurer.policies p ON a.customer_id = p.customer_id",
     "CASE WHEN a.monthly_txn_count > 5 THEN 1 END"),
    ("division", "SELECT AVG(income / age) FROM bank.customers",
     "customers.income / (CASE WHEN customers.age < 18 THEN 18 ELSE customers.age END)"),
    ("expression over aggregates", "SELECT SUM(income) / COUNT(*) AS m FROM bank.customers",
     "compute m = __sum_income / __count"),
    ("literal beside aggregates", "SELECT 'all' AS scope, COUNT(*) FROM bank.customers",
     "compute scope = 'all'"),
    ("HAVING on an expression", "SELECT region, COUNT(*) AS n FROM bank.customers GROUP BY "
     "region HAVING SUM(income) / COUNT(*) > 5", "HAVING __sum_income / n > 5"),
    ("row functions", "SELECT COUNT(*) FROM bank.customers WHERE UPPER(branch) LIKE 'N%' AND "
     "COALESCE(age, 0) % 3 = 1 AND LENGTH(TRIM(region)) > 2", "UPPER(customers.branch) LIKE"),
    ("GROUP BY CASE", "SELECT CASE WHEN age < 40 THEN 'young' ELSE 'old' END AS band, "
     "COUNT(*) FROM bank.customers GROUP BY 1", "domain ['young', 'old']"),
    ("GROUP BY FLOOR", "SELECT FLOOR(age / 10) AS d, COUNT(*) FROM bank.customers GROUP BY 1",
     "domain [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"),
    ("GROUP BY image of a domain", "SELECT UPPER(region) AS r, COUNT(*) FROM bank.customers "
     "GROUP BY 1", "domain ['NORTH', 'SOUTH', 'EAST', 'WEST', 'CENTRAL']"),
    ("WITH", "WITH x AS (SELECT customer_id, amount FROM bank.loans WHERE amount > 5) "
     "SELECT SUM(x.amount) FROM x", "loans AS x (<= 3 rows per unit)"),
    ("derived table", "SELECT COUNT(*) FROM (SELECT customer_id FROM insurer.policies) AS d "
     "JOIN bank.customers c ON c.customer_id = d.customer_id", "policies AS d"),
    ("IN (SELECT unit)", "SELECT COUNT(*) FROM bank.customers c WHERE c.customer_id IN "
     "(SELECT customer_id FROM insurer.policies WHERE open_claim = 1)",
     "policies AS policies (semi-join: one row per unit, __in = 1 if a row WHERE "
     "policies.open_claim = 1)"),
    ("EXISTS", "SELECT COUNT(*) FROM bank.customers c WHERE EXISTS (SELECT 1 FROM "
     "insurer.policies p WHERE p.customer_id = c.customer_id)", "(semi-join"),
    ("NOT EXISTS at one party", "SELECT COUNT(*) FROM bank.customers c WHERE NOT EXISTS "
     "(SELECT 1 FROM bank.loans l WHERE l.customer_id = c.customer_id)", "LEFT JOIN"),
    ("VAR_SAMP", "SELECT VAR_SAMP(age) FROM bank.customers",
     "VAR_SAMP from variance_age.sq (sum of squares)"),
    ("STDDEV FILTER", "SELECT STDDEV(premium) FILTER (WHERE open_claim = 1) FROM "
     "insurer.policies", "compute stddev_premium = STDDEV_SAMP"),
    ("MEDIAN", "SELECT MEDIAN(age) FROM bank.customers", "QUANTILE_CONT(0.5) off the noisy "
     "histogram median_age.b0 (42 buckets of 2 values each over [18, 100] (step 1))"),
    ("PERCENTILE_CONT WITHIN GROUP", "SELECT PERCENTILE_CONT(0.9) WITHIN GROUP (ORDER BY age) "
     "FROM bank.customers", "QUANTILE_CONT(0.9)"),
    ("QUANTILE_DISC", "SELECT QUANTILE_DISC(amount, 0.25) FROM bank.loans",
     "QUANTILE_DISC(0.25)"),
    ("APPROX_QUANTILE", "SELECT APPROX_QUANTILE(amount, 0.25) FROM bank.loans",
     "QUANTILE_DISC(0.25)"),
    ("MIN", "SELECT MIN(age) FROM bank.customers", "MIN (lowest bucket passing the noise band)"),
    ("MAX across parties", "SELECT MAX(p.premium) FROM bank.loans l JOIN insurer.policies p "
     "ON l.customer_id = p.customer_id", "more bucket counts of this histogram"),
    ("LEFT JOIN at one party", "SELECT COUNT(*) FROM bank.customers c LEFT JOIN bank.loans l "
     "ON c.customer_id = l.customer_id", "LEFT JOIN loans AS l"),
    ("FULL JOIN at one party", "SELECT COUNT(*) FROM bank.customers c FULL JOIN bank.loans l "
     "ON c.customer_id = l.customer_id", "COALESCE(c.customer_id, l.customer_id) AS __unit"),
]


@pytest.fixture(scope="module")
def demo():
    return load_federation(DEMO / "federation.toml")


@pytest.mark.parametrize("name,sql,needle", EXPLAINED, ids=[e[0] for e in EXPLAINED])
def test_every_construct_appears_in_explain(demo, name: str, sql: str, needle: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = compile_plan(sql, demo, epsilon=1.0, delta=1e-6).to_s()
    assert needle in text, text


def test_date_functions_appear_in_explain(tmp_path: Path) -> None:
    fed = load_federation(bi_fixtures.build(tmp_path))
    sql = ("SELECT EXTRACT(month FROM ta.day) AS m, DATE_TRUNC('month', ta.day) AS mo, "
           "COUNT(*) FROM alpha.ta WHERE ta.day < DATE '2024-06-01' + INTERVAL 1 DAY "
           "GROUP BY 1, 2")
    text = compile_plan(sql, fed, epsilon=1.0).to_s()
    assert "domain [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]" in text
    assert "domain ['2024-01-01 00:00:00', '2024-02-01 00:00:00'" in text
    assert "INTERVAL '1' DAY" in text


# -- refusals: named, before any charge -----------------------------------------------------

REFUSED = [
    ("SELECT COUNT(*) FROM bank.loans WHERE read_text('/etc/passwd') = ''", "READ_TEXT"),
    ("SELECT COUNT(*) FROM bank.loans WHERE current_setting('threads') = '1'",
     "CURRENT_SETTING"),
    ("SELECT COUNT(*) FROM bank.loans WHERE getenv('HOME') = ''", "GETENV"),
    ("SELECT COUNT(*) FROM bank.loans WHERE regexp_matches(CAST(amount AS VARCHAR), '1')",
     "regular expressions"),
    ("SELECT SUM(CAST(amount AS INTEGER)) FROM bank.loans", "CAST"),
    ("SELECT SUM(LN(defaulted)) FROM bank.loans", "logarithm of a number <= 0"),
    ("SELECT SUM(amount / defaulted) FROM bank.loans", "include 0"),
    ("SELECT SUM(SQRT(amount - 1)) FROM bank.loans", "square root of a negative"),
    ("SELECT COUNT(*) FROM bank.customers c WHERE c.customer_id NOT IN "
     "(SELECT customer_id FROM insurer.policies)", "NOT IN"),
    ("SELECT COUNT(*) / (SELECT COUNT(*) FROM bank.loans) FROM bank.customers",
     "scalar subquery"),
    ("SELECT COUNT(*) FROM bank.customers c JOIN bank.loans l ON c.age = l.term_months",
     "is not the privacy unit"),
    ("SELECT FLOOR(income) AS i, COUNT(*) FROM bank.customers GROUP BY 1", "no public domain"),
    ("WITH x AS (SELECT term_months, SUM(amount) AS t FROM bank.loans GROUP BY term_months) "
     "SELECT AVG(t) FROM x", "must GROUP BY the privacy unit"),
]


@pytest.mark.parametrize("sql,needle", REFUSED, ids=[r[1] for r in REFUSED])
def test_refusals_name_the_construct_and_charge_nothing(tmp_path: Path, sql: str,
                                                        needle: str) -> None:
    fed = oracle_federation(DEMO, tmp_path / "fed")
    session = veilql.connect(fed, analyst="oracle")
    try:
        before = session.budget()
        with pytest.raises(QueryError) as info:
            session.sql(sql, epsilon=1.0, delta=1e-6)
        assert needle in info.value.message, info.value.message
        assert info.value.hint and info.value.exit_code == 1
        assert session.budget() == before
    finally:
        session.close()


def test_allow_list_is_explicit_and_refuses_the_rest() -> None:
    allowed = set(checks._ALLOWED)
    assert set(functions.ROW_EXPRESSIONS) <= allowed
    # nothing in the allow-list reads a file, a setting, the clock or the network
    for cls in allowed:
        name = cls.__name__.lower()
        assert not any(w in name for w in ("read", "file", "setting", "env", "current",
                                           "now", "http", "random", "uuid")), name


# -- computed outputs: values and error bars --------------------------------------------------


def test_post_processing_interval_holds_whenever_the_parts_hold() -> None:
    """Interval arithmetic is an enclosure: for any values inside the boxes, the value of
    the expression is inside the computed interval."""
    import random

    rng = random.Random(7)
    node = exp.maybe_parse("ROUND(100.0 * (a - b) / c, 1) + ABS(a) - GREATEST(b, 3)")
    for _ in range(300):
        boxes = {}
        values = {}
        for name in "abc":
            lo = rng.uniform(-50, 50) if name != "c" else rng.uniform(1, 50)
            hi = lo + rng.uniform(0, 20)
            boxes[name] = (lo, hi)
            values[name] = rng.uniform(lo, hi)
        box = postprocess.interval(node, boxes)
        assert box is not None
        v = postprocess.evaluate(node, values)
        assert box[0] - 1e-9 <= v <= box[1] + 1e-9


def test_ratio_error_bar_is_interval_arithmetic_over_the_parts(tmp_path: Path) -> None:
    fed = oracle_federation(DEMO, tmp_path / "fed")
    session = veilql.connect(fed, analyst="oracle")
    try:
        sql = "SELECT SUM(income) AS s, COUNT(*) AS n, SUM(income) / COUNT(*) AS m " \
              "FROM bank.customers"
        r = session.sql(sql, epsilon=1.0, delta=0)
        s, n, m = r.rows[0]
        assert m == pytest.approx(s / n)
        plan = r.plan
        alpha = postprocess.level(2)
        hs = half_width(plan.aggregate("s").noise, alpha) / 100
        hn = half_width(plan.aggregate("n").noise, alpha)
        ends = [(s + a) / (n + b) for a in (-hs, hs) for b in (-hn, hn)]
        want = max(m - min(ends), max(ends) - m)
        assert r.accuracy["m"]["ci95_rows"][0] == pytest.approx(want, rel=1e-3)
        assert r.accuracy["m"]["ci95"] > 0
    finally:
        session.close()


def test_sum_over_no_rows_is_zero_in_every_format(tmp_path: Path) -> None:
    """One rule: a SUM (and a COUNT) over no rows is released as a noisy 0, never NULL;
    an AVG over no rows is NULL once its released count is not positive."""
    fed = oracle_federation(DEMO, tmp_path / "fed")
    session = veilql.connect(fed, analyst="oracle")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LargeEpsilonWarning)
            r = session.sql("SELECT SUM(amount) AS s, COUNT(amount) AS c, AVG(amount) AS a "
                            "FROM bank.loans WHERE amount < 0", epsilon=HUGE_EPSILON, delta=0)
    finally:
        session.close()
    assert r.rows == [[0.0, 0, None]]
    assert json.loads(json.dumps(r.to_dict()))["rows"] == [[0.0, 0, None]]
    assert json.loads(render(r.columns, r.rows, "json"))["rows"] == [[0.0, 0, None]]
    assert render(r.columns, r.rows, "csv").splitlines()[1] == "0.0,0,"
    assert "NULL" in render(r.columns, r.rows, "table")


def test_private_integer_keys_are_integers_in_json(tmp_path: Path) -> None:
    fed = bi_fixtures.build(tmp_path)
    session = veilql.connect(fed, analyst="oracle")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LargeEpsilonWarning)
            r = session.sql("SELECT groupby_int_0, COUNT(*) AS n FROM alpha.ta "
                            "GROUP BY groupby_int_0", epsilon=HUGE_EPSILON, delta=1e-6)
    finally:
        session.close()
    rows = json.loads(json.dumps(r.to_dict()))["rows"]
    assert sorted(k for k, _ in rows) == [30, 200, 1000]


# -- safe forms: values outside the declared bounds do not make an engine fail ---------------


def test_values_outside_the_bounds_meet_clamped_divisors_and_logarithms(mini_fed) -> None:
    """``level`` is declared in [1, 5] but a row holds 0: the divisor and the logarithm's
    argument are clamped to 1 in the party's SQL instead of failing or dividing by 0."""
    members = mini_fed.root / "data" / "club" / "members.csv"
    members.write_text("customer_id,level,nickname\n1,3,x\n2,0,y\n3,5,z\n")
    mini_fed.edit_federation("[analyst.alice]\nepsilon = 2.0",
                             "[analyst.alice]\nepsilon = 1e15")
    session = veilql.connect(mini_fed.path, analyst="alice")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = session.sql("SELECT SUM(10 / level) AS d, SUM(LN(level)) AS l, "
                            "COUNT(*) AS n FROM club.members", epsilon=1e12, delta=0)
    finally:
        session.close()
    d, ln_sum, n = r.rows[0]
    assert n == 3
    assert d == pytest.approx(10 / 3 + 10 / 1 + 10 / 5, abs=1e-3)
    assert ln_sum == pytest.approx(math.log(3) + 0 + math.log(5), abs=1e-3)


def test_inlining_cannot_multiply_the_work(demo) -> None:
    """Route: a WITH whose long expression is referenced many times would make every party
    copy it as often; it is refused (quickly, before copying) once it would exceed the
    limit of inlined terms, and doubling chains of WITH are caught at each step."""
    import time

    from veilql.engine.sql.bind import bind
    from veilql.engine.sql.parse import parse

    body = " + ".join(["amount"] * 200)
    refs = " + ".join(["x.e"] * 200)
    chain = ("WITH a AS (SELECT customer_id, amount + amount AS e FROM bank.loans), "
             + ", ".join(f"{n} AS (SELECT customer_id, {p}.e + {p}.e AS e FROM {p})"
                         for p, n in zip("abcdefghijklm", "bcdefghijklmn", strict=True)) +
             " SELECT SUM(n.e) FROM n")
    for sql in (f"WITH x AS (SELECT customer_id, {body} AS e FROM bank.loans) "
                f"SELECT SUM({refs}) FROM x", chain):
        start = time.monotonic()
        with pytest.raises(QueryError, match="too large once its WITH"):
            bind(parse(sql), demo)
        assert time.monotonic() - start < 2.0


# -- dimension tables -------------------------------------------------------------------------

BI_GOLDEN = Path(__file__).parent / "golden" / "plans" / "dimension"


@pytest.fixture(scope="module")
def bi_fed(tmp_path_factory: pytest.TempPathFactory):
    return load_federation(bi_fixtures.build(tmp_path_factory.mktemp("bi_dim")))


@pytest.mark.parametrize("case", sorted(BI_GOLDEN.glob("*.sql")), ids=lambda p: p.stem)
def test_dimension_plans_match_golden(bi_fed, case: Path) -> None:
    """Golden plans over the BI federation (regenerate with VEIL_UPDATE_GOLDEN=1)."""
    import os

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = compile_plan(case.read_text(), bi_fed, epsilon=1.0, delta=1e-6).to_s() + "\n"
    expected = case.with_suffix(".plan")
    if os.environ.get("VEIL_UPDATE_GOLDEN") or not expected.exists():
        expected.write_text(text)
    assert text == expected.read_text()


def test_dimension_table_is_sent_only_where_it_is_another_partys(bi_fed) -> None:
    sent = compile_plan("SELECT m.category, COUNT(*) FROM alpha.ta JOIN beta.merchants m "
                        "ON ta.merchant_id = m.merchant_id GROUP BY m.category", bi_fed,
                        epsilon=1.0)
    assert sent.mode == "local" and sent.parties == ("alpha",)  # beta's data is not personal
    assert [(o, t, d.columns) for o, t, d in sent.shipments] == [
        ("beta", "alpha", ("merchant_id", "category"))]
    assert sent.charged == ("alpha",)
    own = compile_plan("SELECT b.kind, COUNT(*) FROM alpha.ta2 JOIN alpha.branches b "
                       "ON ta2.branch_id = b.branch_id GROUP BY b.kind", bi_fed, epsilon=1.0)
    assert own.shipments == () and "its own table" in own.to_s()
    assert "FROM branches WHERE" in own.step("alpha").sql


DIMENSION_REFUSED = [
    ("SELECT COUNT(*) FROM alpha.ta JOIN beta.merchants m ON ta.uid = m.merchant_id",
     "is not a foreign key to beta.merchants.merchant_id"),
    ("SELECT COUNT(*) FROM beta.merchants m", "dimension tables only"),
    ("SELECT COUNT(*) FROM alpha.ta JOIN beta.merchants m ON ta.merchant_id = m.merchant_id "
     "JOIN alpha.branches b ON b.branch_id = m.merchant_id", "joins two dimension tables"),
    ("SELECT COUNT(*) FROM alpha.ta WHERE ta.uid IN (SELECT merchant_id FROM beta.merchants)",
     "over the dimension table"),
    ("SELECT COUNT(*) FROM alpha.ta, beta.merchants m WHERE m.category = 'food'",
     "is not joined on a foreign key"),
    ("SELECT m.merchant_id, COUNT(*) FROM alpha.ta JOIN beta.merchants m "
     "ON ta.merchant_id = m.merchant_id GROUP BY m.merchant_id", "merchant_id"),
    ("SELECT COUNT(*) FROM alpha.ta LEFT JOIN beta.merchants m "
     "ON ta.merchant_id = m.merchant_id", "dimension table"),
]


@pytest.mark.parametrize("sql,needle", DIMENSION_REFUSED, ids=[r[1] for r in DIMENSION_REFUSED])
def test_dimension_refusals_name_the_construct(bi_fed, sql: str, needle: str) -> None:
    with pytest.raises(QueryError) as info:
        compile_plan(sql, bi_fed, epsilon=1.0)
    assert needle in info.value.message, info.value.message
    assert info.value.hint


def test_a_dimension_table_too_large_to_send_is_refused(tmp_path: Path) -> None:
    fed = bi_fixtures.build(tmp_path)
    policy = tmp_path / "policies" / "beta.toml"
    policy.write_text(policy.read_text().replace("max_rows = 1000", "max_rows = 60000"))
    with pytest.raises(QueryError) as info:
        compile_plan("SELECT COUNT(*) FROM alpha.ta JOIN beta.merchants m "
                     "ON ta.merchant_id = m.merchant_id", load_federation(fed), epsilon=1.0)
    assert "declares max_rows = 60000, more than the 50000 rows" in info.value.message


POLICY_ERRORS = [
    ("beta", "dimension = true\nmax_rows = 1000", "dimension = true\nmax_rows = 1000\n"
     "privacy_unit = \"merchant_id\"", "is not allowed on a dimension table"),
    ("beta", "dimension = true\nmax_rows = 1000", "dimension = true", "tables.merchants.max_rows"),
    ("alpha", 'references = "beta.merchants.merchant_id"', 'references = "beta.tb.uid"',
     "is not a dimension table"),
    ("alpha", 'references = "beta.merchants.merchant_id"', 'references = "beta.merchants.fee"',
     "has no key column 'fee'"),
    ("alpha", 'merchant_id = { role = "key", references', 'merchant_id = { role = "group", '
     'references', "references is only allowed on key columns"),
    ("alpha", 'references = "beta.merchants.merchant_id"', 'references = "merchants"',
     "must be \"party.table.column\""),
]


@pytest.mark.parametrize("party,old,new,needle", POLICY_ERRORS, ids=[e[3] for e in POLICY_ERRORS])
def test_dimension_policies_are_validated(tmp_path: Path, party: str, old: str, new: str,
                                          needle: str) -> None:
    from veilql.errors import ConfigError

    fed = bi_fixtures.build(tmp_path)
    policy = tmp_path / "policies" / f"{party}.toml"
    text = policy.read_text()
    assert old in text
    policy.write_text(text.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_federation(fed)
    assert needle in str(info.value), str(info.value)


def test_dimension_rows_over_the_declared_bound_fail_after_the_charge(tmp_path: Path) -> None:
    fed = bi_fixtures.build(tmp_path)
    policy = tmp_path / "policies" / "beta.toml"
    policy.write_text(policy.read_text().replace("max_rows = 1000", "max_rows = 10"))
    session = veilql.connect(fed, analyst="oracle")
    try:
        with pytest.raises(veilql.errors.QueryFailed):
            session.sql("SELECT COUNT(*) FROM alpha.ta JOIN beta.merchants m "
                        "ON ta.merchant_id = m.merchant_id", epsilon=1.0, delta=0)
    finally:
        session.close()


def test_a_changed_dimension_table_is_read_again(tmp_path: Path) -> None:
    """The join cache key covers the dimension table's version: after the owner changes it,
    a repeated query sees the new rows."""
    fed = bi_fixtures.build(tmp_path)
    session = veilql.connect(fed, analyst="oracle")
    sql = ("SELECT COUNT(*) AS n FROM alpha.ta JOIN beta.merchants m "
           "ON ta.merchant_id = m.merchant_id JOIN gamma.tc ON tc.person = ta.uid "
           "WHERE m.category = 'food'")
    merchants = tmp_path / "data" / "beta" / "merchants.csv"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LargeEpsilonWarning)
            before = session.sql(sql, epsilon=HUGE_EPSILON, delta=1e-6).rows[0][0]
            merchants.write_text(merchants.read_text().replace(",food,", ",fuel,"))
            after = session.sql(sql, epsilon=HUGE_EPSILON, delta=1e-6).rows[0][0]
    finally:
        session.close()
    assert before > 0 and after == 0
