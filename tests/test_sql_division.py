"""Division by another party's expression (issue #14 item 2): ``x / D`` as ``x * (1 / D)``.

The party that owns ``D`` computes the reciprocal in its own engine, at digits chosen from
public bounds alone (``sql/fixedpoint.py`` ``product_decimals``) so that each row's product
stays exact to the output's fixed point while the ring check holds. Oracle: at a huge
epsilon the answers equal plain DuckDB's on the union of the parties' tables, with the
tolerance of ``tests/test_oracle.py`` (counts exactly, sums to fixed point): divisors whose
values are large (``1 / D`` tiny) and at their bounds, negative divisors, NULL divisors,
AVG and SUM, grouped by either party, FILTER, ``D / x`` the other way round, three
parties and a LEFT JOIN. Refusals name the construct. The digits depend on the policies
only: the plan is the same for other data.
"""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import bi_fixtures
import pytest
from hypothesis import given
from hypothesis import strategies as st
from oracle import HUGE_EPSILON, plain, union_connection
from test_oracle import check_against_duckdb

import veilql
from veilql.engine.rewrite import compile_plan
from veilql.engine.sql.fixedpoint import PRODUCT_DECIMALS, Factor, product_decimals
from veilql.errors import QueryError, UnsupportedError
from veilql.policies.loader import load_federation

J2 = "FROM alpha.ta JOIN beta.tb ON ta.uid = tb.uid"
JD = "FROM alpha.ta JOIN beta.td ON ta.uid = td.uid"
J3 = f"{J2} JOIN gamma.tc ON tc.person = ta.uid"

# beta's second table: divisors far from 0 (large, so that 1 / D is tiny), negative ones,
# and one whose bounds hold 0
TD_POLICY = """
[tables.td]
privacy_unit = "uid"
max_rows_per_unit = 1

[tables.td.columns]
uid = { role = "key" }
big = { role = "value", bounds = [1000, 100000] }
neg = { role = "value", bounds = [-5, -1], decimals = 1 }
zero = { role = "value", bounds = [-3, 3] }
"""


def _td(path: Path, shift: int = 0) -> None:
    """Rows of ``beta.td``: the bounds themselves often (1000, 100000, -1, -5), NULLs."""
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["uid", "big", "neg", "zero"])
        for i in range(1, bi_fixtures.PEOPLE + 1):
            r = bi_fixtures._rand(i * 29 + shift, 1000)
            if r % 9 == 0:
                continue
            big = ("" if r % 13 == 0 else 1000 if r % 5 == 0 else 100000 if r % 7 == 0
                   else 1000 + r * 97)
            neg = -1.0 if r % 4 == 0 else -5.0 if r % 6 == 0 else -1 - (r % 41) / 10
            w.writerow([i, big, f"{neg:.1f}", r % 7 - 3])


def _build(root: Path, shift: int = 0) -> Path:
    fed = bi_fixtures.build(root)
    with (root / "policies" / "beta.toml").open("a") as fh:
        fh.write(TD_POLICY)
    _td(root / "data" / "beta" / "td.csv", shift)
    return fed


@pytest.fixture(scope="module")
def bi(tmp_path_factory: pytest.TempPathFactory):
    """The BI federation with ``beta.td``, a session and DuckDB on the union."""
    fed = _build(tmp_path_factory.mktemp("division"))
    session = veilql.connect(fed, analyst="oracle")
    con = union_connection(session.federation)
    yield session, con
    session.close()
    con.close()


QUERIES = [
    # the peer query: AVG and SUM of a quotient beside other AVGs across parties
    "SELECT AVG(ta.score / (tb.fills * tb.fills + 1)) AS q, "
    # (the sums across parties read columns without NULLs: see the report of issue #14)
    "SUM(ta.score / (tb.fills * tb.fills + 1)) AS s, AVG(ta.visits + tb.rate) AS a, "
    f"AVG(ta.visits - tb.rate) AS d, AVG(ta.score * tb.fills) AS p {J2}",
    # large divisors (1 / D down to 1e-5), some at their bounds, some NULL
    f"SELECT SUM(ta.visits / td.big) AS s, AVG(ta.score / td.big) AS a, "
    f"SUM(ta.spend / td.big) AS t, COUNT(*) AS n {JD}",
    # negative divisors [-5, -1], SUM and AVG
    f"SELECT SUM(ta.score / td.neg) AS s, AVG(ta.visits / td.neg) AS a {JD}",
    # grouped by the numerator's party, and by the divisor's
    f"SELECT ta.groupby_string_0, SUM(ta.visits / td.big) AS s, AVG(ta.score / td.neg) AS a "
    f"{JD} GROUP BY ta.groupby_string_0",
    f"SELECT tb.groupby_string_0, AVG(ta.visits / (tb.fills + 1)) AS a, COUNT(*) AS n, "
    f"SUM(ta.score / (tb.fills + 1)) AS s {J2} GROUP BY tb.groupby_string_0",
    # D / x the other way round (alpha's divisor), and the divisor's party's own numerator
    # (one division there: tb.fills / td.big) times another party's factor
    f"SELECT SUM(td.neg / ta.score) AS s, AVG(tb.fills / ta.score) AS a, "
    f"SUM(ta.visits * tb.fills / td.big) AS m {J2} JOIN beta.td ON td.uid = ta.uid",
    # a constant divisor of a product across parties
    f"SELECT SUM(ta.visits * tb.fills / 3) AS s, AVG(-ta.score / (tb.fills + 2)) AS a {J2}",
    # three parties: the reciprocal at gamma or beta, an indicator at the third party
    "SELECT SUM(CASE WHEN tc.level > 2 THEN ta.visits / (tb.fills + 1) END) AS s, "
    f"AVG(ta.visits / (tc.level + 1)) FILTER (WHERE tb.fills > 5) AS a {J3}",
    f"SELECT ta.groupby_string_0, AVG(ta.score / (tc.level + 1)) AS a, "
    f"SUM(ta.visits / (tc.level + 1)) FILTER (WHERE tb.rate < 0.5) AS s {J3} "
    "GROUP BY ta.groupby_string_0",
    # a LEFT JOIN: the reciprocal on the optional side, and on the preserved side
    "SELECT SUM(ta.visits / (tb.fills + 1)) AS s, AVG(tb.rate / ta.score) AS a "
    "FROM alpha.ta LEFT JOIN beta.tb ON ta.uid = tb.uid",
]


def _run(session: veilql.Session, sql: str) -> veilql.Result:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return session.sql(sql, epsilon=HUGE_EPSILON, delta=1e-6)


@pytest.mark.parametrize("sql", QUERIES, ids=[f"q{i}" for i in range(len(QUERIES))])
def test_division_equals_plain_duckdb(bi, sql: str) -> None:
    session, con = bi
    check_against_duckdb(_run(session, sql), plain(con, sql))


def test_reciprocal_is_computed_by_the_divisor_party(bi) -> None:
    """veil explain: the reciprocal is a local column of the party that owns the divisor,
    at more digits than six when 1 / D is tiny."""
    session, _ = bi
    plan = compile_plan(f"SELECT SUM(ta.visits / td.big) AS s {JD}", session.federation,
                        epsilon=1.0, delta=1e-6)
    beta = next(c for c in plan.step("beta").columns if c.role == "value")
    alpha = next(c for c in plan.step("alpha").columns if c.role == "value")
    assert beta.sql.startswith("1 / ") and "td.big" in beta.sql
    assert "td.big" not in alpha.sql and "ta.visits" in alpha.sql
    assert beta.decimals == 9 and alpha.decimals == 0  # 50 x 1e-3 x 10^9 x 2^33 < 2^61
    text = plan.to_s()
    at_beta = text[text.index("at beta"):]
    assert "v0 (value) = 1 / " in at_beta.splitlines()[2]


def test_digits_depend_on_policies_only(bi, tmp_path: Path) -> None:
    """An attacker who sees the plan (or a refusal) learns nothing of the data: the digits
    come from declared bounds, so other rows give the same plan, word for word."""
    session, _ = bi
    other = load_federation(_build(tmp_path / "other", shift=17))
    for sql in QUERIES:
        a = compile_plan(sql, session.federation, epsilon=1.0, delta=1e-6).to_s()
        b = compile_plan(sql, other, epsilon=1.0, delta=1e-6).to_s()
        assert a == b


REFUSED = [
    # the divisor's declared bounds hold 0
    (f"SELECT SUM(ta.visits / td.zero) {JD}", "include 0"),
    (f"SELECT AVG(td.big / ta.visits) {JD}", "include 0"),
    # a divisor reading two parties
    (f"SELECT SUM(tc.level / (ta.score + tb.fills)) {J3}", "several parties' columns"),
    (f"SELECT SUM(tc.level / (ta.score * tb.rate + 1)) {J3}", "several parties' columns"),
    # a numerator that is not one factor per party
    (f"SELECT SUM((ta.visits + tb.fills) / (tc.level + 1)) {J3}",
     "is not one factor per party"),
    # a quotient inside a sum across parties
    (f"SELECT SUM(ta.visits + ta.score / td.big) {JD}", "inside a product"),
    # no digits fit: spend up to 1000 times 1 / neg up to 1, exact to 2 decimals
    (f"SELECT SUM(ta.spend / td.neg) {JD}", "narrow the declared bounds"),
]


@pytest.mark.parametrize("sql, words", REFUSED, ids=[f"r{i}" for i in range(len(REFUSED))])
def test_unsupported_division_is_refused(bi, sql: str, words: str) -> None:
    session, _ = bi
    with pytest.raises(QueryError) as info:
        compile_plan(sql, session.federation, epsilon=1.0, delta=1e-6)
    text = f"{info.value.message} {info.value.hint}"
    assert words in text, text


@given(st.floats(0.01, 1e5), st.integers(0, 3), st.floats(1e-6, 10.0), st.integers(1, 4))
def test_reciprocal_digits_keep_each_row_exact_and_in_the_ring(
        x: float, dx: int, r: float, rows: int) -> None:
    """Whatever the bounds, chosen digits keep a row's rounding error below half a unit of
    ``d_out`` and the product within the ring's room, or the query is refused."""
    factors = [Factor("a.x", x, dx, False), Factor("1 / b.d", r, 6, True)]
    try:
        _, d = product_decimals(factors, rows, "SUM")
    except UnsupportedError:
        return
    d_out = max(PRODUCT_DECIMALS, dx)
    assert x * 0.5 * 10.0**-d <= 0.5 * 10.0**-d_out
    per_row = (math.ceil(x * 10**dx * (1 + 2**-50)) + 1) * (
        math.ceil(r * 10**d * (1 + 2**-50)) + 1)
    assert 2**33 * rows * per_row < 2**61
