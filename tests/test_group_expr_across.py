"""GROUP BY an expression over several parties' group columns (issue #14): ``a.g + b.h``, a
CASE or a function of them, each column with declared values; and derived tables that only
project (inlined before binding).

The key's domain is evaluated over the product of the declared values (NULL included) at
plan time; the parties group by the columns themselves and the compute parties merge the
fine cells into the key's cells on shares before the noise (``operators/cells.py``).
Oracle: at a huge epsilon the answer is plain DuckDB's on the union of the parties' tables
(counts exact, sums to fixed point, MIN/MAX within a bucket); public cells without rows are
released as (noisy) zeros, so every released row DuckDB lacks has COUNT 0. An attack check:
the message lengths every compute party receives do not change when one person's group
values do.
"""

from __future__ import annotations

import itertools
from collections import Counter
from functools import partial
from pathlib import Path

import duckdb
import group_expr_fixtures as gf
import pytest
from lengths import received, run_recorded
from oracle import oracle_pair, plain, run_huge
from test_oracle import check_statistics

import veilql
from veilql.engine.operators import cells
from veilql.engine.rewrite import compile_plan
from veilql.engine.sql import groups_across
from veilql.errors import PolicyError, QueryError, UnsupportedError

J2 = ("FROM alice.alice_tbl_0 a JOIN bob.bob_tbl_0 b ON a.join_int_0 = b.join_int_0")
J3 = f"{J2} JOIN carol.carol_tbl_0 c ON c.join_int_0 = b.join_int_0"
PEER = """select key1, key2, count(*) as c, count(distinct bob_encrypt) as cd,
       sum(bob_aggregate) as sb, max(carol_aggregate) as sc, min(carol_aggregate) as min_ca,
       avg(carol_aggregate) as avg_ca
from (select bob.encrypt_int_0 as bob_encrypt, bob.aggregate_int_0 as bob_aggregate,
             carol.aggregate_int_0 as carol_aggregate, alice.join_int_0 as alice_join,
             bob.join_int_0 as bob_join, carol.join_int_0 as carol_join,
             alice.groupby_int_0 + bob.groupby_int_0 as key1,
             carol.groupby_int_0 + bob.groupby_int_0 as key2
      from alice.alice_tbl_0 as alice, bob.bob_tbl_0 as bob, carol.carol_tbl_0 as carol) as tt
where alice_join = bob_join and bob_join = carol_join group by key1, key2"""


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory):
    yield from oracle_pair(gf.build(tmp_path_factory.mktemp("group_expr")))


_run = partial(run_huge, delta=1e-6)


def _check(result: veilql.Result, want: list[tuple], count: str = "n") -> None:
    """DuckDB's rows all released (check_statistics); every other released cell is public
    and empty: its count is 0."""
    check_statistics(result, want)
    groups = sum(1 for o in result.plan.outputs if o.kind == "group")
    seen = {tuple(map(str, r[:groups])) for r in want}
    i = result.columns.index(count)
    for row in result.rows:
        if tuple(map(str, row[:groups])) not in seen:
            assert row[i] == 0, row


@pytest.mark.slow
def test_two_parties_sum_of_group_columns_equals_duckdb(fed) -> None:
    """``a.g + b.g`` over 1..4 at both (NULLs at both): keys 2..8 and NULL, as integers;
    with WHERE at one party and across parties."""
    session, con = fed
    sql = (f"SELECT a.groupby_int_0 + b.groupby_int_0 AS k, COUNT(*) AS n, "
           f"SUM(b.aggregate_int_0) AS s, AVG(a.aggregate_int_0) AS m {J2} "
           "WHERE a.encrypt_int_0 < 8 AND a.aggregate_int_0 > b.encrypt_int_0 GROUP BY 1")
    result = _run(session, sql)
    assert [r[0] for r in result.rows] == [2, 3, 4, 5, 6, 7, 8, None]
    assert all(isinstance(r[0], int) for r in result.rows[:-1])
    want = plain(con, sql)
    assert any(r[0] is None for r in want)  # a NULL part: DuckDB's NULL group, released too
    _check(result, want)


@pytest.mark.slow
def test_three_parties_case_and_functions_equal_duckdb(fed) -> None:
    """A CASE over two parties' columns (NULL when neither branch holds) beside a plain key
    of a third party, and COALESCE mapping a NULL part to a value (its rows are counted)."""
    session, con = fed
    sql = (f"SELECT CASE WHEN a.groupby_int_0 > b.groupby_int_0 THEN 'a' WHEN "
           f"a.groupby_int_0 < b.groupby_int_0 THEN 'b' END AS w, c.groupby_str_0 AS t, "
           f"COALESCE(a.groupby_int_0, 0) * 10 + c.groupby_int_0 AS z, COUNT(*) AS n, "
           f"SUM(c.aggregate_int_0) AS s, MAX(b.aggregate_int_0) AS mx {J3} "
           "WHERE b.encrypt_int_0 <> 3 GROUP BY 1, 2, 3")
    result = _run(session, sql)
    assert {r[0] for r in result.rows} == {"a", "b", None}
    assert len(result.plan.merge) == 2
    _check(result, plain(con, sql))


@pytest.mark.slow
def test_peer_query_equals_duckdb(fed) -> None:
    """The peer's acceptance query: a projection-only derived table over three parties
    (comma joins, the unit equalities in the outer WHERE), grouped by two sums that share
    bob's column; COUNT(DISTINCT) of a value column, SUM, MAX, MIN, AVG."""
    session, con = fed
    result = _run(session, PEER)
    _check(result, plain(con, PEER), count="c")


@pytest.mark.slow
def test_large_count_distinct_merges_its_buckets_before_comparing(fed) -> None:
    """COUNT(DISTINCT x) over 1,501 values: its (bucket, fine cell) counts are merged before
    each is compared with 0, so a value in two fine cells of one released cell counts once
    (summing per fine cell would count 3 values up to 4 times in some cells)."""
    session, con = fed
    sql = (f"SELECT a.groupby_int_0 + b.groupby_int_0 AS k, COUNT(DISTINCT b.wide_int_0) AS "
           f"d, COUNT(*) AS n {J2} GROUP BY 1")
    result = _run(session, sql)
    assert any(a.buckets for a in result.plan.aggregates)
    want = plain(con, sql)
    assert max(r[1] for r in want) == 3
    fine = plain(con, f"SELECT a.groupby_int_0 + b.groupby_int_0 AS k, a.groupby_int_0, "
                      f"COUNT(DISTINCT b.wide_int_0) {J2} GROUP BY ALL")
    assert max(sum(r[2] for r in fine if r[0] == k) for k in range(2, 9)) > 3
    _check(result, want)


def test_peer_query_plan_merges_one_grid(fed) -> None:
    """The peer query binds and plans: three fine keys (bob's once), two merged keys."""
    plan = compile_plan(PEER, fed[0].federation, epsilon=1.0, delta=1e-6)
    assert [m.output for m in plan.merge] == ["key1", "key2"]
    assert len(plan.groups) == 3
    assert [len(g.domain) for g in plan.groups] == [5, 5, 5]
    assert plan.merge[0].domain == (2, 3, 4, 5, 6, 7, 8, None)
    assert "cells merged on shares into key1" in plan.to_s()


def test_the_peer_query_as_with_and_nested_derived_tables_plans_the_same(fed) -> None:
    """WITH, and a derived table inside a derived table, inline to the same query."""
    federation = fed[0].federation
    body = PEER[PEER.index("(select bob.") + 1:PEER.index(") as tt")]
    outer = PEER[:PEER.index("from (select")]
    rest = PEER[PEER.index(") as tt") + len(") as tt"):]
    forms = [PEER, f"with tt as ({body}) {outer} from tt {rest}",
             f"{outer} from (select * from ({body}) as t0) as tt {rest}"]
    plans = [compile_plan(sql, federation, epsilon=1.0, delta=1e-6) for sql in forms]
    texts = [p.to_s().split("\n", 1)[1].replace("tt_t0_", "tt_") for p in plans]
    assert texts[1] == texts[0] and texts[2] == texts[0]
    assert [[(m.output, m.domain, m.index) for m in p.merge] for p in plans[1:]] == [
        [(m.output, m.domain, m.index) for m in plans[0].merge]] * 2


def test_coarse_map_agrees_with_the_expression(fed) -> None:
    """Every fine cell goes to the released cell of the expression's value there."""
    session, _ = fed
    sql = (f"SELECT b.groupby_int_0 - a.groupby_int_0 AS d, a.groupby_str_0 AS t, "
           f"COUNT(*) AS n {J2} GROUP BY 1, 2")
    plan = compile_plan(sql, session.federation, epsilon=1.0, delta=1e-6)
    ordered = cells.ordered_groups(plan)
    labels = cells.release_labels(plan)
    target = cells.coarse_map(plan)
    con = duckdb.connect()
    for f, combo in enumerate(itertools.product(*(g.domain for g in ordered))):
        v = dict(zip((g.output for g in ordered), combo, strict=True))
        a, b = v["__part a.groupby_int_0"], v["__part b.groupby_int_0"]
        d = con.execute("SELECT ?::INTEGER - ?::INTEGER", [b, a]).fetchone()[0]
        assert labels[target[f]] == {"d": d, "t": v["t"]}


def test_a_sum_of_three_parties_columns(fed) -> None:
    plan = compile_plan(f"SELECT a.groupby_int_0 + b.groupby_int_0 + c.groupby_int_0 AS k, "
                        f"COUNT(*) {J3} GROUP BY k", fed[0].federation, epsilon=1.0)
    assert plan.merge[0].domain == (*range(3, 13), None)


def _lengths(path: Path, out: Path, sql: str) -> Counter:
    """``(receiver, sender, payload length)`` of every data record a compute party got
    (heartbeats left out: they follow the clock)."""
    run_recorded(path, out, sql)
    return received(out, gf.PARTIES)


def test_message_lengths_do_not_depend_on_a_persons_group_values(tmp_path: Path) -> None:
    # The attack: a compute party compares its received messages between two federations
    # that differ only in one person's group values (moved to another merged cell, and
    # another person's made NULL), hoping the merge's work (and the comparisons of a large
    # COUNT(DISTINCT)'s merged bucket counts) shows which cell they are in.
    sql = (f"SELECT a.groupby_int_0 + b.groupby_int_0 AS k, COUNT(*) AS n, "
           f"SUM(b.aggregate_int_0) AS s, COUNT(DISTINCT b.wide_int_0) AS d {J2} GROUP BY 1")
    first = gf.build(tmp_path / "a", 30)
    second = gf.build(tmp_path / "b", 30)
    con = duckdb.connect(str(tmp_path / "b" / "data" / "alice.duckdb"))
    try:
        con.execute("UPDATE alice_tbl_0 SET groupby_int_0 = 5 - COALESCE(groupby_int_0, 1) "
                    "WHERE join_int_0 = 2")
        con.execute("UPDATE alice_tbl_0 SET groupby_int_0 = NULL WHERE join_int_0 = 4")
    finally:
        con.close()
    one = _lengths(first, tmp_path / "o1", sql)
    two = _lengths(second, tmp_path / "o2", sql)
    assert one and one == two


@pytest.mark.parametrize(("sql", "error", "words"), [
    (f"SELECT a.groupby_int_0 + b.aggregate_int_0 AS k, COUNT(*) {J2} GROUP BY 1",
     UnsupportedError, "b.aggregate_int_0 is a value column"),
    (f"SELECT a.groupby_str_0 + b.groupby_int_0 AS k, COUNT(*) {J2} GROUP BY 1",
     UnsupportedError, "cannot be evaluated over its columns' declared values"),
    ("SELECT a.groupby_int_0 + b.groupby_int_0 AS k, COUNT(*) FROM alice.alice_tbl_0 a "
     "LEFT JOIN bob.bob_tbl_0 b ON a.join_int_0 = b.join_int_0 GROUP BY 1", UnsupportedError,
     "LEFT, RIGHT or FULL JOIN"),
    (f"SELECT a.groupby_int_0 + b.groupby_int_0 AS k, COUNT(DISTINCT a.join_int_0) {J2} "
     "GROUP BY 1", UnsupportedError, "a person in two merged cells would count twice"),
    (f"SELECT a.groupby_int_0 + b.groupby_int_0 AS k, COUNT(*) {J2} WHERE "
     "a.groupby_int_0 + 1 > 2 GROUP BY 1", QueryError, "groupby_int_0"),
])
def test_refusals_name_the_construct(fed, sql: str, error: type, words: str) -> None:
    with pytest.raises(error) as info:
        compile_plan(sql, fed[0].federation, epsilon=1.0, delta=1e-6)
    assert words in info.value.message


def test_refusals_of_large_grids_and_domains(fed, monkeypatch: pytest.MonkeyPatch) -> None:
    federation = fed[0].federation
    sql = f"SELECT a.groupby_int_0 * 10 + b.groupby_int_0 AS k, COUNT(*) {J2} GROUP BY 1"
    monkeypatch.setattr(groups_across, "MAX_MERGED_GRID", 24)
    with pytest.raises(UnsupportedError, match="make 25 combinations, more than 24"):
        compile_plan(sql, federation, epsilon=1.0)
    monkeypatch.setattr(groups_across, "MAX_MERGED_GRID", 10_000)
    monkeypatch.setattr(groups_across.functions, "MAX_DERIVED_DOMAIN", 10)
    with pytest.raises(UnsupportedError, match="takes 17 values"):
        compile_plan(sql, federation, epsilon=1.0)


# ---------------------------------------------------------------- projection-only derived tables


def test_a_derived_tables_where_is_kept(fed) -> None:
    """The body's WHERE joins the outer WHERE: the answer is DuckDB's (not the unfiltered);
    grouped by a sum of two parties' columns (keys 2..8 and NULL, as integers; DuckDB's NULL
    group released too; public cells without rows released as 0); a large COUNT(DISTINCT)
    beside it merges its bucket counts before comparing them (a value of two fine cells
    counts once: summing the fine cells' distinct counts would exceed DuckDB's)."""
    session, con = fed
    sql = ("SELECT k, COUNT(*) AS n, SUM(v) AS s, COUNT(DISTINCT x) AS d FROM (SELECT "
           "a.groupby_int_0 + b.groupby_int_0 AS k, b.aggregate_int_0 AS v, b.wide_int_0 AS x, "
           "a.join_int_0 AS u, b.join_int_0 AS w FROM alice.alice_tbl_0 a, bob.bob_tbl_0 b "
           "WHERE b.encrypt_int_0 >= 5) AS d WHERE u = w AND v > 10 GROUP BY k")
    plan = compile_plan(sql, session.federation, epsilon=1.0, delta=1e-6)
    assert "encrypt_int_0 >= 5" in plan.step("bob").where
    assert "aggregate_int_0 > 10" in plan.step("bob").where
    want = plain(con, sql)
    unfiltered = plain(con, sql.replace(" WHERE b.encrypt_int_0 >= 5", ""))
    assert sorted(want, key=str) != sorted(unfiltered, key=str)
    assert any(r[0] is None for r in want)
    assert any(a.buckets for a in plan.aggregates)
    fine = plain(con, sql.replace("GROUP BY k", "GROUP BY ALL").replace(
        "SELECT k,", "SELECT k, a_g,").replace("a.join_int_0 AS u", "a.groupby_int_0 AS a_g, "
                                               "a.join_int_0 AS u"))
    summed = {k: sum(r[4] for r in fine if r[0] == k) for k, *_ in want}
    assert any(summed[k] > d for k, _, _, d in want)
    result = _run(session, sql)
    assert [r[0] for r in result.rows] == [2, 3, 4, 5, 6, 7, 8, None]
    assert all(isinstance(r[0], int) for r in result.rows[:-1])
    _check(result, want)


@pytest.mark.parametrize(("sql", "words"), [
    ("SELECT COUNT(*) FROM (SELECT a.groupby_int_0 AS g FROM alice.alice_tbl_0 a) AS d "
     "GROUP BY d.h", "column d.h is not an output of the subquery d"),
    ("SELECT COUNT(*) FROM (SELECT a.groupby_int_0 AS aggregate_int_0 FROM alice.alice_tbl_0 "
     "a) AS d JOIN bob.bob_tbl_0 b ON d.join_int_0 = b.join_int_0", "not an output"),
    ("SELECT SUM(aggregate_int_0) FROM (SELECT a.aggregate_int_0, a.join_int_0 AS u FROM "
     "alice.alice_tbl_0 a) AS d JOIN bob.bob_tbl_0 b ON d.u = b.join_int_0",
     "column aggregate_int_0 is ambiguous"),
    ("SELECT COUNT(*) FROM (SELECT DISTINCT a.groupby_int_0 AS g FROM alice.alice_tbl_0 a) "
     "AS d", "SELECT DISTINCT inside the subquery d"),
    ("SELECT COUNT(*) FROM (SELECT a.groupby_int_0 AS g FROM alice.alice_tbl_0 a LIMIT 3) "
     "AS d", "LIMIT inside the subquery d"),
    ("SELECT COUNT(*) FROM (SELECT * FROM (SELECT a.join_int_0 AS u FROM alice.alice_tbl_0 a) "
     "AS d, bob.bob_tbl_0 b WHERE d.u = b.join_int_0) AS e",
     "SELECT * over the subquery d beside other tables"),
])
def test_inlining_refusals(fed, sql: str, words: str) -> None:
    with pytest.raises((UnsupportedError, PolicyError)) as info:
        compile_plan(sql, fed[0].federation, epsilon=1.0, delta=1e-6)
    assert words in info.value.message


def test_a_derived_output_keeps_its_name_in_select_having_and_order_by(fed) -> None:
    """``SELECT d.k ... HAVING k > 3 ORDER BY d.k``: the output is named ``k`` (as in
    DuckDB), and HAVING's ``k`` is that output, across parties too."""
    session, _ = fed
    for sql in ("SELECT d.k, COUNT(*) AS n FROM (SELECT a.groupby_int_0 AS k FROM "
                "alice.alice_tbl_0 a) d GROUP BY d.k HAVING k > 3 ORDER BY d.k",
                "SELECT k, COUNT(*) AS n FROM (SELECT a.groupby_int_0 + b.groupby_int_0 AS k "
                f"{J2}) d GROUP BY k HAVING k > 3 ORDER BY k"):
        plan = compile_plan(sql, session.federation, epsilon=1.0, delta=1e-6)
        assert [o.name for o in plan.outputs] == ["k", "n"]
        assert plan.having is not None and plan.having.sql() == "k > 3"


PER_PERSON = ("WITH p AS (SELECT join_int_0, SUM(aggregate_int_0) AS total, COUNT(*) AS k FROM "
              "bob.bob_tbl_0 GROUP BY join_int_0), d AS (SELECT total AS t, k, a.groupby_int_0 "
              "+ c.groupby_int_0 AS g FROM p JOIN alice.alice_tbl_0 a ON a.join_int_0 = "
              "p.join_int_0 JOIN carol.carol_tbl_0 c ON c.join_int_0 = a.join_int_0 WHERE "
              "a.encrypt_int_0 > 2) SELECT g, SUM(t) AS s, SUM(k) AS rows, COUNT(*) AS n FROM d "
              "GROUP BY g")


def test_a_projection_over_a_per_person_table_is_inlined(fed) -> None:
    """A projection-only body may read a table aggregated per person (``perunit``): that
    table stays a derived table of its owner, the projection is inlined around it, and its
    WHERE is kept."""
    plan = compile_plan(PER_PERSON, fed[0].federation, epsilon=1.0, delta=1e-6)
    assert plan.step("bob").per_unit and not plan.step("alice").per_unit
    assert "encrypt_int_0 > 2" in plan.step("alice").where
    assert [m.output for m in plan.merge] == ["g"]


@pytest.mark.slow
def test_a_projection_over_a_per_person_table_equals_duckdb(fed) -> None:
    session, con = fed
    _check(_run(session, PER_PERSON), plain(con, PER_PERSON))
