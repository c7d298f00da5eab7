"""Peer queries: COUNT(DISTINCT x) across parties over more than 1,000 values (issue #14 item 2).

The BI federation (``tests/bi_fixtures.py``) with two columns added here at ``alpha.ta``
(two rows per person, DuckDB): ``i`` INTEGER with bounds [0, 10000] (10,001 values, some
NULL) and ``f`` DOUBLE with 2 decimals in [-10, 10] (2,001 values, some outside the bounds,
so clamped). Each COUNT(DISTINCT) has one bucket per value, shared across parties as
two one-hot digits of the bucket index; the (bucket, cell) counts are one matrix product
on shares, each compared with 0 on shares and summed per cell into one noisy count per
cell (``operators/histogram.py``); at a huge epsilon it is DuckDB's count on the union of
the parties' rows, beside COUNT(*) and SUM of another party's column, grouped at either
side, with WHERE at either side, FILTER at the owner, the owner first or second in FROM,
and three parties.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import bi_fixtures
import duckdb
import pytest
from oracle import HUGE_EPSILON, plain, union_connection

import veilql
from veilql.engine.rewrite import compile_plan
from veilql.policies.loader import load_federation

pytestmark = pytest.mark.filterwarnings("ignore::veilql.engine.dp.LargeEpsilonWarning")

COLUMNS = ('i = { role = "value", bounds = [0, 10000] }\n'
           'f = { role = "value", bounds = [-10, 10], decimals = 2 }\n')


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("distinct_across")
    path = bi_fixtures.build(root)
    policy = root / "policies" / "alpha.toml"
    text = policy.read_text()
    anchor = 'merchant_id = { role = "key", references = "beta.merchants.merchant_id" }\n'
    assert anchor in text
    policy.write_text(text.replace(anchor, anchor + COLUMNS, 1))
    con = duckdb.connect(str(root / "data" / "alpha.duckdb"))
    try:
        con.execute("ALTER TABLE ta ADD COLUMN i INTEGER")
        con.execute("ALTER TABLE ta ADD COLUMN f DOUBLE")
        # repeats (about 1 in 3 rows shares its value) and NULLs; f spills over the bounds
        con.execute("UPDATE ta SET i = CASE WHEN (uid + visits) % 11 = 0 THEN NULL "
                    "ELSE (uid * 7919 + (visits % 3) * 104729) % 10001 END, "
                    "f = ROUND(((uid * 37 + visits * 3) % 2201) / 100.0 - 11, 2)")
    finally:
        con.close()
    return path


def _clamped(column: str, lo: float, hi: float) -> str:
    return f"LEAST(GREATEST({column}, {lo}), {hi})"


JOIN = "FROM alpha.ta ta JOIN beta.tb tb ON ta.uid = tb.uid"
# (secure SQL, DuckDB reference on the union when it differs: the clamping of f)
# in the default suite; the others run with -m slow (the suite must stay under 15 min)
FAST = ("integers_beside_count_and_sum", "float_two_decimals")
QUERIES = {
    "integers_beside_count_and_sum": (
        f"SELECT COUNT(DISTINCT ta.i) AS k, COUNT(*) AS n, SUM(tb.fills) AS s {JOIN}", None),
    "float_two_decimals": (
        f"SELECT COUNT(DISTINCT ta.f) AS k, COUNT(*) AS n, SUM(tb.fills) AS s {JOIN}",
        f"SELECT COUNT(DISTINCT {_clamped('ta.f', -10, 10)}) AS k, COUNT(*) AS n, "
        f"SUM(tb.fills) AS s {JOIN}"),
    "grouped_at_the_other_party_where_both": (
        f"SELECT tb.groupby_string_0 AS g, COUNT(DISTINCT ta.i) AS k, COUNT(*) AS n {JOIN} "
        "WHERE ta.visits > 10 AND tb.fills < 15 GROUP BY tb.groupby_string_0", None),
    "grouped_at_the_owner_filter_owner_second": (
        "SELECT ta.groupby_string_0 AS g, COUNT(DISTINCT ta.i) FILTER (WHERE ta.score > 4) "
        "AS k, SUM(tb.fills) AS s FROM beta.tb tb JOIN alpha.ta ta ON tb.uid = ta.uid "
        "GROUP BY ta.groupby_string_0", None),
    "three_parties_two_histograms": (
        "SELECT COUNT(DISTINCT ta.i) AS k, COUNT(DISTINCT ta.f) AS kf, SUM(tc.level) AS l, "
        "COUNT(*) AS n FROM alpha.ta ta JOIN beta.tb tb ON ta.uid = tb.uid "
        "JOIN gamma.tc tc ON tb.uid = tc.person",
        f"SELECT COUNT(DISTINCT ta.i) AS k, COUNT(DISTINCT {_clamped('ta.f', -10, 10)}) AS kf, "
        "SUM(tc.level) AS l, COUNT(*) AS n FROM alpha.ta ta JOIN beta.tb tb "
        "ON ta.uid = tb.uid JOIN gamma.tc tc ON tb.uid = tc.person"),
}


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow)
                                  for n in QUERIES])
def test_peer_query_equals_plain_duckdb(fed: Path, name: str) -> None:
    sql, reference = QUERIES[name]
    with veilql.connect(fed, "oracle") as session, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = sorted(session.sql(sql, epsilon=HUGE_EPSILON, delta=1e-6).rows)
        want = sorted(plain(union_connection(session.federation), reference or sql))
    assert [list(r) for r in got] == [list(r) for r in want]
    distinct = [v for r in got for v in r[1 if isinstance(r[0], str) else 0:][:1]]
    assert all(v > 30 for v in distinct), got  # not a trivial count


def test_plan_is_secure_with_one_bucket_index_column(fed: Path) -> None:
    federation = load_federation(fed)
    plan = compile_plan(QUERIES["integers_beside_count_and_sum"][0], federation,
                        epsilon=1.0, delta=1e-6)
    assert plan.mode == "secure"
    index = [c for c in plan.step("alpha").columns if c.name.startswith("h")
             and c.role == "group"]
    assert len(index) == 1
    # one count per cell (the distinct values, compared with 0 on shares), not a histogram
    assert not [a for a in plan.aggregates if a.family]
    k, n, _ = plan.aggregates
    assert k.buckets == 10001 and (k.l1, k.l2, k.noise) == (n.l1, n.l2, n.noise)
