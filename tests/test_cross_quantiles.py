"""MIN, MAX, MEDIAN and quantiles of an expression across parties (issue #14 item 2).

``MAX(ta.visits + tb.fills)``: each bucket of the histogram counts the joined rows where
``e_{b-1} <= E < e_b``, compared on shares (``rewrite/cross_histogram.py``). Oracle: at a
huge epsilon the answer is plain DuckDB's on the union of the BI federation's tables within
one bucket (exactly when a bucket is one value), grouped by one party's column, with WHERE
on one party and across parties, a one-party FILTER, three parties, NULL parts (a row where
any part is NULL is in no bucket), the oblivious join. Cost: one secure comparison per
inner edge (the upper test of a bucket is the complement of the next bucket's lower test).
An attack check: a compute party's received message lengths do not change when a
person's values do. Products of one factor per party
(``MAX(ta.visits * tb.fills)``) multiply the factors on shares before the comparisons, and
a FILTER may compare such a product with a number. Refusals name the construct (divisors,
sums of products, variances, FILTER across parties, outer joins).
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from pathlib import Path

import bi_fixtures
import duckdb
import pytest
from lengths import received, run_recorded
from oracle import HUGE_EPSILON, plain, union_connection
from test_oracle import check_statistics

import veilql
from veilql.engine.dp import LargeEpsilonWarning
from veilql.engine.mpc.protocols import compare
from veilql.engine.rewrite import compile_plan
from veilql.errors import QueryError, UnsupportedError
from veilql.policies.loader import load_federation

J2 = "FROM alpha.ta JOIN beta.tb ON ta.uid = tb.uid"
J3 = f"{J2} JOIN gamma.tc ON tc.person = ta.uid"
QUERIES = [
    f"SELECT MAX(ta.visits + tb.fills) AS mx, MIN(ta.score - tb.rate) AS mn, "
    f"MEDIAN(ta.visits - tb.fills) AS md {J2}",
    f"SELECT ta.groupby_string_0, MAX(ta.visits + tb.fills) AS mx, MIN(ta.score - tb.rate) "
    f"AS mn, MEDIAN(ta.visits - tb.fills) AS md {J2} WHERE ta.visits > 5 GROUP BY 1",
    f"SELECT tb.groupby_string_0, MAX(ta.visits + tb.fills) AS mx, QUANTILE_CONT(ta.visits "
    f"- tb.fills, 0.9) AS q {J2} WHERE ta.visits > tb.fills - 10 GROUP BY 1",
    f"SELECT MAX(ta.visits + tb.fills + tc.level) AS mx, MIN(tb.fills - 2 * tc.level + 3) AS "
    f"mn, QUANTILE_DISC(ta.score - tc.level, 0.25) AS q {J3}",
    f"SELECT MAX(ta.visits + tb.fills) FILTER (WHERE ta.visits < 30) AS mx, "
    f"MIN(ta.visits - tb.fills) FILTER (WHERE tb.rate > 0.5 AND ta.visits > 2) AS mn, "
    f"PERCENTILE_DISC(0.5) WITHIN GROUP (ORDER BY ta.spend + tb.fills) AS p {J2}",
    # products of one factor per party: the factors multiplied on shares, then compared
    f"SELECT MAX(ta.visits * tb.fills) AS mx, MIN(ta.score * tb.rate) AS mn, "
    f"MEDIAN(ta.visits * tb.fills) AS md, MAX(-2 * ta.visits * tb.fills) AS neg {J2}",
    f"SELECT tb.groupby_string_0, MAX(ta.score * tb.fills) AS mx, QUANTILE_CONT(tb.fills * "
    f"tc.level, 0.75) AS q, MIN(ta.visits * tb.fills * tc.level) AS mn {J3} "
    "WHERE ta.visits > 3 GROUP BY 1",
]
#: Conditions comparing a product of one factor per party with a number (FILTER, WHERE's OR)
PRODUCT_FILTERS = [
    f"SELECT COUNT(*) FILTER (WHERE ta.visits * tb.fills >= 100) AS a, COUNT(*) FILTER "
    f"(WHERE ta.visits * tb.fills > 100) AS b, SUM(ta.visits) FILTER (WHERE ta.visits * "
    f"tb.fills < 99.5) AS c, COUNT(*) FILTER (WHERE ta.score * tb.rate <= 2.5) AS d {J2}",
    f"SELECT COUNT(*) FILTER (WHERE NOT (ta.score * tb.rate > 4) OR tb.fills < 3) AS a, "
    f"SUM(ta.visits * tb.fills >= 60) AS b {J2}",
    f"SELECT COUNT(*) AS n {J2} WHERE ta.visits * tb.fills >= 100 OR ta.visits < 5",
]


@pytest.fixture(scope="module")
def bi(tmp_path_factory: pytest.TempPathFactory):
    fed = bi_fixtures.build(tmp_path_factory.mktemp("cross_quantiles"))
    session = veilql.connect(fed, analyst="oracle")
    con = union_connection(session.federation)
    yield session, con
    session.close()
    con.close()


def _run(session: veilql.Session, sql: str, delta: float = 1e-6) -> veilql.Result:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LargeEpsilonWarning)
        return session.sql(sql, epsilon=HUGE_EPSILON, delta=delta)


@pytest.mark.parametrize("sql", [q if i in (0, 2) else pytest.param(q, marks=pytest.mark.slow)
                                 for i, q in enumerate(QUERIES)],
                         ids=[f"q{i}" for i in range(len(QUERIES))])  # q1, q3.. with -m slow
def test_quantiles_across_parties_equal_plain_duckdb(bi, sql: str) -> None:
    session, con = bi
    check_statistics(_run(session, sql), plain(con, sql))


@pytest.mark.parametrize("sql", PRODUCT_FILTERS, ids=[f"f{i}" for i in
                                                    range(len(PRODUCT_FILTERS))])
def test_product_conditions_equal_plain_duckdb(bi, sql: str) -> None:
    """A product compared with a number is exact: the scaled factors' product is an
    integer, compared with the ceiling (or floor) of the scaled number; NULL factors follow
    SQL's three-valued logic."""
    session, con = bi
    check_statistics(_run(session, sql), plain(con, sql))


def test_one_value_buckets_give_exact_answers(bi) -> None:
    """``tb.fills - tc.level`` spans [-5, 19]: 25 values, one bucket each, so MIN, MAX and
    the quantiles are DuckDB's exactly at a huge epsilon."""
    session, con = bi
    sql = (f"SELECT MIN(tb.fills - tc.level) AS lo, MAX(tb.fills - tc.level) AS hi, "
           f"MEDIAN(tb.fills - tc.level) AS m, QUANTILE_DISC(tb.fills - tc.level, 0.3) AS d "
           f"{J3}")
    result = _run(session, sql)
    assert all(o.buckets.per == 1 for o in result.plan.outputs)
    assert [tuple(float(v) for v in r) for r in result.rows] == [
        tuple(float(v) for v in r) for r in plain(con, sql)]


def test_rows_with_a_null_part_are_in_no_bucket(bi) -> None:
    """Rows where only ``ta.score`` is NULL exist, and counted with score as 0 (what an
    operand reads a NULL as) they would put MIN below DuckDB's by several buckets."""
    session, con = bi
    sql = f"SELECT MIN(ta.score - tb.rate) AS lo {J2}"
    (want,), = plain(con, sql)
    (as_zero,), = plain(con, f"SELECT MIN(-tb.rate) {J2} WHERE ta.score IS NULL")
    result = _run(session, sql)
    buckets = result.plan.outputs[0].buckets
    assert as_zero < want - 2 * buckets.per * buckets.step
    check_statistics(result, [(want,)])


def test_one_comparison_per_inner_edge(bi, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bucket ``b``'s test ``E < e_b`` and bucket ``b + 1``'s ``E >= e_b`` are one secure
    comparison: 36 buckets of ``ta.visits + tb.fills`` cost 35 per compute party."""
    session, _ = bi
    calls: list[int] = []
    lt = compare.lt

    def counted(*args, **kwargs):
        calls.append(1)
        return lt(*args, **kwargs)

    monkeypatch.setattr(compare, "lt", counted)
    base = f"SELECT COUNT(*) AS n {J2}"
    _run(session, base, delta=0.0)
    before = len(calls)
    result = _run(session, f"SELECT MAX(ta.visits + tb.fills) AS mx {J2}", delta=0.0)
    edges = result.plan.outputs[0].buckets.count - 1
    assert edges == 35
    # the COUNT's own comparisons (if any) and one per edge at each compute party (one chunk)
    assert len(calls) - before == before + 3 * edges


def _lengths(fed: Path, out: Path, sql: str) -> Counter:
    """``(receiver, sender, payload length)`` of every data record a compute party got."""
    run_recorded(fed, out, sql)
    return received(out, ("alpha", "beta", "gamma"))


def test_message_lengths_do_not_depend_on_a_persons_values(tmp_path: Path) -> None:
    # The attack: a compute party compares its received messages between two federations
    # that differ only in one person's values (moved from the lowest bucket to the highest,
    # and another's part made NULL), hoping a bucket's work shows the row's bucket.
    sql = (f"SELECT ta.groupby_string_0, MAX(ta.visits + tb.fills) AS mx, "
           f"MEDIAN(ta.score - tb.rate) AS md, MIN(ta.score * tb.fills) AS p {J2} "
           "WHERE ta.visits > tb.fills - 30 GROUP BY 1")
    first = bi_fixtures.build(tmp_path / "a")
    second = bi_fixtures.build(tmp_path / "b")
    con = duckdb.connect(str(tmp_path / "b" / "data" / "alpha.duckdb"))
    try:
        con.execute("UPDATE ta SET visits = 50, score = 10 WHERE uid = 2")
        con.execute("UPDATE ta SET score = NULL WHERE uid = 4")
    finally:
        con.close()
    one = _lengths(first, tmp_path / "o1", sql)
    two = _lengths(second, tmp_path / "o2", sql)
    assert one and one == two


@pytest.mark.parametrize(("sql", "words"), [
    # a quotient by one party's expression is bucketed (tests/test_cross_quotient.py) when
    # the divisor's bounds exclude 0
    (f"SELECT MAX(ta.visits / tb.fills) AS m {J2}", "bounds [0, 20] include 0"),
    (f"SELECT MAX(ta.visits * tb.fills + tb.fills) AS m {J2}", "in a sum of products or"),
    (f"SELECT MEDIAN(GREATEST(ta.visits, tb.fills)) AS m {J2}", "in a sum of products or"),
    (f"SELECT COUNT(*) FILTER (WHERE ta.visits * tb.fills = 100) AS n {J2}",
     "only with a number, by <, <=, > or >="),
    (f"SELECT COUNT(*) FILTER (WHERE ta.visits * tb.fills > tb.fills) AS n {J2}",
     "only with a number, by <, <=, > or >="),
    (f"SELECT COUNT(*) FILTER (WHERE ta.visits * tb.fills > 2 * 50) AS n {J2}",
     "with a number written in the query"),
    (f"SELECT VAR_POP(ta.visits + tb.fills) AS v {J2}", "its squares would multiply"),
    (f"SELECT MAX(ta.visits + tb.fills) FILTER (WHERE ta.visits > tb.fills) AS m {J2}",
     "a condition across parties inside this aggregate"),
    ("SELECT MAX(ta.visits + tb.fills) AS m FROM alpha.ta LEFT JOIN beta.tb "
     "ON ta.uid = tb.uid", "beside an outer join"),
])
def test_refusals_name_the_construct(bi, sql: str, words: str) -> None:
    session, _ = bi
    with pytest.raises(UnsupportedError) as info:
        _run(session, sql)
    assert words in info.value.message


def test_bucket_tests_beyond_the_ring_are_refused(bi) -> None:
    session, _ = bi
    with pytest.raises(QueryError) as info:
        _run(session, f"SELECT MAX(ta.visits * 10000000000000000 + tb.fills) AS m {J2}")
    assert "beyond the ring's safe range" in info.value.message


def test_plan_one_family_of_bucket_counts(tmp_path: Path) -> None:
    fed = load_federation(bi_fixtures.build(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = compile_plan(f"SELECT MAX(ta.visits + tb.fills) AS mx, MIN(tb.fills + "
                            f"ta.visits) AS mn, MEDIAN(ta.visits + tb.fills) AS md {J2}",
                            fed, epsilon=1.0, delta=1e-6)
    buckets = [a for a in plan.aggregates if a.family]
    # MAX and MEDIAN of one expression share one histogram; MIN's is written apart
    assert len({a.family for a in buckets}) == 2 and len(buckets) == 72
    assert all(a.cross is not None and a.l1 == buckets[0].l1 for a in buckets)
    assert len({a.noise for a in buckets if a.family == buckets[0].family}) == 1


@pytest.mark.slow  # the oblivious join (10 s); the revealing join's oracle stays
def test_oblivious_join_gives_the_same_answers(tmp_path: Path) -> None:
    """With ``join_reveal = "nothing"`` the hub's padded rows (dummies and people the other
    party lacks) are in no bucket: the same answers as DuckDB's."""
    fed = bi_fixtures.build(tmp_path)
    for policy in (tmp_path / "policies").glob("*.toml"):
        policy.write_text(re.sub(r"^(privacy_unit = .*)$",
                                 r'\1\njoin_reveal = "nothing"\nmax_units = 500',
                                 policy.read_text(), flags=re.M))
    sql = f"SELECT MAX(ta.visits + tb.fills) AS mx, MEDIAN(ta.visits - tb.fills) AS md {J2}"
    with veilql.connect(fed, analyst="oracle") as session:
        con = union_connection(session.federation)
        try:
            result = _run(session, sql)
            assert result.plan.joins[0].mode == "oblivious"
            check_statistics(result, plain(con, sql))
        finally:
            con.close()
