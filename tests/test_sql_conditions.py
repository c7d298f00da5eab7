"""Conditions and group columns inside aggregates (issue #14, task A).

Oracle: at a huge epsilon the answer equals plain DuckDB on the union of the parties'
tables (counts exactly, sums to fixed point) over the BI federation (tests/bi_fixtures.py,
NULLs in ``ta.score``, ``ta.spend`` and ``tb.fills``), for two and three parties:

- SUM/AVG of a condition across parties, ``SUM(CASE WHEN <across> THEN x ELSE 0 END)`` and
  ``FILTER (WHERE <across>)``: one predicate per aggregate, evaluated on shares;
- aggregates of conditions over a UNION ALL (SUM/AVG: counts of a CASE in each branch;
  MIN/MAX: a BOOLEAN read off a noisy histogram over {0, 1}), and MIN/MAX of a condition in
  one party's query as a BOOLEAN too;
- a group column inside an aggregate of its own GROUP BY (``MAX(g)``, ``MIN``,
  ``ANY_VALUE``, ``AVG``: the released label; ``SUM(g)``: the label times the noisy count),
  in local, secure and union mode;
- refusals name the construct.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import bi_fixtures
import pytest
from lengths import data_records, run_recorded
from oracle import (
    HUGE_EPSILON,
    oblivious_federation,
    oracle_federation,
    plain,
    union_connection,
)
from test_oracle import check_statistics

import veilql
from veilql.engine.dp import LargeEpsilonWarning
from veilql.engine.rewrite import compile_plan
from veilql.errors import QueryError

DEMO = Path(__file__).resolve().parent.parent / "sample_data" / "demo"
J2 = "FROM alpha.ta JOIN beta.tb ON ta.uid = tb.uid"
J3 = f"{J2} JOIN gamma.tc ON tc.person = ta.uid"

# (SQL, DuckDB reference when it differs: DuckDB has no AVG(BOOLEAN); VeilQL answers it as
# the share of TRUE rows among the rows where the condition is not NULL)
CROSS: list[tuple[str, str | None]] = [
    (f"SELECT SUM(ta.visits > tb.fills) AS s, COUNT(*) AS n {J2}", None),
    (f"SELECT AVG(ta.visits > tb.fills) AS a, SUM(ta.visits) AS v {J2}",
     f"SELECT AVG(CAST(ta.visits > tb.fills AS INTEGER)) AS a, SUM(ta.visits) AS v {J2}"),
    # NULLs: tb.fills and ta.score are NULL on some rows; NOT and OR in three-valued logic
    (f"SELECT SUM(NOT (ta.score > tb.fills)) AS s, SUM(ta.score > tb.fills OR ta.visits > 40)"
     f" AS o, SUM(NOT (ta.score > tb.fills AND ta.visits < 20)) AS na {J2}", None),
    (f"SELECT AVG(ta.score * 2 <= tb.fills) AS a, SUM(ta.score * 2 <= tb.fills) AS s {J2}",
     f"SELECT AVG(CAST(ta.score * 2 <= tb.fills AS INTEGER)) AS a, "
     f"SUM(ta.score * 2 <= tb.fills) AS s {J2}"),
    (f"SELECT SUM(CASE WHEN ta.visits > tb.fills THEN 1 ELSE 0 END) AS c, "
     f"SUM(CASE WHEN ta.visits > tb.fills THEN tb.fills ELSE 0 END) AS f, "
     f"SUM(CASE WHEN ta.spend > tb.fills * 10 AND tb.rate < 0.5 THEN ta.spend END) AS sp "
     f"{J2}", None),
    # beside GROUP BY of either party's column
    (f"SELECT ta.groupby_string_0, SUM(ta.visits > tb.fills) AS s, COUNT(*) AS n, "
     f"AVG(tb.fills) FILTER (WHERE ta.visits > tb.fills) AS f {J2} GROUP BY 1", None),
    (f"SELECT tb.groupby_string_0, COUNT(*) FILTER (WHERE ta.visits BETWEEN tb.fills AND "
     f"tb.fills + 10) AS c, SUM(ta.visits) FILTER (WHERE ta.visits > tb.fills AND "
     f"ta.groupby_string_0 = 'x') AS v {J2} GROUP BY 1", None),
    # private group keys (partition selection), a condition across parties in FILTER
    (f"SELECT ta.groupby_int_0, SUM(ta.visits > tb.fills) AS s, COUNT(*) AS n {J2} "
     f"GROUP BY 1", None),
    (f"SELECT tb.city, AVG(ta.visits > tb.fills) AS a, SUM(tb.fills) FILTER (WHERE "
     f"ta.score > tb.rate * 5) AS f {J2} GROUP BY 1",
     f"SELECT tb.city, AVG(CAST(ta.visits > tb.fills AS INTEGER)) AS a, SUM(tb.fills) FILTER "
     f"(WHERE ta.score > tb.rate * 5) AS f {J2} GROUP BY 1"),
    # a WHERE across parties beside the aggregates' own predicates
    (f"SELECT COUNT(*) AS n, SUM(ta.visits > tb.fills * 2) AS s, SUM(tb.fills) FILTER "
     f"(WHERE ta.score < tb.fills) AS f {J2} WHERE ta.visits + tb.fills > 10", None),
    # three parties
    (f"SELECT COUNT(*) FILTER (WHERE ta.visits > tb.fills AND tc.level >= 3) AS c, "
     f"AVG(tc.level) FILTER (WHERE ta.visits > tb.fills + tc.level) AS l, "
     f"SUM(tc.level * 10 > ta.visits) AS s, COUNT(DISTINCT ta.uid) FILTER (WHERE "
     f"tb.fills > tc.level) AS people {J3}", None),
]


# aggregates of conditions over a UNION ALL (and MIN/MAX of a condition at one party)
U2 = "FROM (SELECT visits AS x FROM alpha.ta UNION ALL SELECT fills FROM beta.tb) AS u"
U3 = ("FROM (SELECT groupby_string_0 AS g, visits AS x FROM alpha.ta UNION ALL SELECT "
      "groupby_string_0, fills FROM beta.tb UNION ALL SELECT CASE WHEN level > 3 THEN 'x' ELSE "
      "'q' END, level * 10 FROM gamma.tc WHERE level > 1) AS u")
BOOLEANS: list[tuple[str, str | None]] = [
    (f"SELECT COUNT(*) AS n, MAX(x > 10) AS mx, MIN(x > 10) AS mn, SUM(x > 10) AS s, "
     f"AVG(x > 10) AS a, MAX(x > 100) AS never, MIN(x >= 0) AS always {U2}",
     f"SELECT COUNT(*) AS n, MAX(x > 10) AS mx, MIN(x > 10) AS mn, SUM(x > 10) AS s, "
     f"AVG(CAST(x > 10 AS INTEGER)) AS a, MAX(x > 100) AS never, MIN(x >= 0) AS always {U2}"),
    (f"SELECT g, COUNT(*) AS n, MAX(x > 45) AS mx, MIN(x > 2) AS mn, SUM(x > 20) AS s, "
     f"MAX(x > 30) FILTER (WHERE x < 40) AS f {U3} GROUP BY g", None),
    ("SELECT groupby_string_0, MAX(visits > 48) AS mx, MIN(score > 1.5) AS mn, COUNT(*) AS n "
     "FROM alpha.ta GROUP BY groupby_string_0", None),
]


@pytest.mark.parametrize("sql, reference", [
    b if i == 0 else pytest.param(*b, marks=pytest.mark.slow) for i, b in enumerate(BOOLEANS)],
                         ids=[f"b{i}" for i in range(len(BOOLEANS))])  # b1..: -m slow
def test_boolean_aggregates_equal_plain_duckdb(bi, sql: str, reference: str | None) -> None:
    session, con = bi
    result = _run(session, sql)
    want = plain(con, reference or sql)
    check_statistics(result, want)
    booleans = [i for i, w in enumerate(want[0]) if isinstance(w, bool)]
    assert booleans and all(isinstance(r[i], bool) for r in result.rows for i in booleans)


# a group column as a value inside an aggregate of its own GROUP BY
GROUP_VALUES: list[str] = [
    "SELECT groupby_int_0, COUNT(*) AS n, MAX(groupby_int_0) AS mx, MIN(groupby_int_0) AS mn, "
    "SUM(groupby_int_0) AS s, AVG(groupby_int_0) AS a, ANY_VALUE(groupby_int_0) AS av "
    "FROM alpha.ta GROUP BY groupby_int_0",
    # an expression over it, HAVING on it
    "SELECT groupby_string_0, groupby_int_0, COUNT(*) AS n, MAX(groupby_string_0) AS g, "
    "SUM(groupby_int_0) + 1 AS s FROM alpha.ta GROUP BY groupby_string_0, groupby_int_0 "
    "HAVING MIN(groupby_int_0) > 100",
    f"SELECT tb.groupby_string_0 AS b, ta.groupby_string_0 AS a0, COUNT(*) AS n, "
    f"MAX(tb.groupby_string_0) AS m, "
    f"ANY_VALUE(ta.groupby_string_0) AS a {J2} GROUP BY tb.groupby_string_0, "
    f"ta.groupby_string_0",
    f"SELECT ta.groupby_int_0, COUNT(*) AS n, SUM(ta.groupby_int_0) AS s, "
    f"AVG(ta.groupby_int_0) AS a {J2} GROUP BY ta.groupby_int_0",
    "SELECT g, COUNT(*) AS cc, MAX(g) AS mm, MIN(u.g) AS mn, ANY_VALUE(g) AS av FROM (SELECT "
    "groupby_string_0 AS g FROM alpha.ta UNION ALL SELECT groupby_string_0 FROM beta.tb) AS u "
    "GROUP BY u.g",
]


@pytest.mark.parametrize("sql", GROUP_VALUES, ids=[f"g{i}" for i in range(len(GROUP_VALUES))])
def test_group_column_in_its_own_aggregate_equals_plain_duckdb(bi, sql: str) -> None:
    session, con = bi
    check_statistics(_run(session, sql), plain(con, sql))


def test_group_label_not_selected_is_released_hidden(bi) -> None:
    # MAX(g) without g in SELECT: g's label is a hidden output, shown through MAX(g)
    session, con = bi
    sql = (f"SELECT MAX(ta.groupby_int_0) AS g, COUNT(*) AS n, SUM(ta.groupby_int_0) AS s "
           f"{J2} GROUP BY ta.groupby_int_0")
    result = _run(session, sql)
    assert [o.kind for o in result.plan.hidden] == ["group"]
    assert sorted(map(tuple, result.rows)) == sorted(plain(con, sql))


def test_union_group_column_in_its_own_aggregate(tmp_path: Path) -> None:
    # a numeric group key of a UNION ALL (public domains): SUM(t) = t * COUNT(*)
    sql = ("SELECT t, COUNT(*) AS cc, MAX(t) AS mm, SUM(t) AS s, AVG(t) AS a FROM (SELECT "
           "term_months AS t FROM bank.loans UNION ALL SELECT CASE WHEN monthly_txn_count > 50 "
           "THEN 24 ELSE 12 END FROM payments.accounts) AS u GROUP BY u.t")
    with veilql.connect(oracle_federation(DEMO, tmp_path / "fed"), analyst="oracle") as session:
        con = union_connection(session.federation)
        result = _run(session, sql)
        assert result.plan.mode == "union"
        check_statistics(result, plain(con, sql))
        con.close()


@pytest.fixture(scope="module")
def bi(tmp_path_factory: pytest.TempPathFactory):
    fed = bi_fixtures.build(tmp_path_factory.mktemp("conditions"))
    session = veilql.connect(fed, analyst="oracle")
    con = union_connection(session.federation)
    yield session, con
    session.close()
    con.close()


def _run(session, sql: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LargeEpsilonWarning)
        return session.sql(sql, epsilon=HUGE_EPSILON, delta=1e-6)


@pytest.mark.parametrize("sql, reference", [c if i % 2 == 0 else pytest.param(
    *c, marks=pytest.mark.slow) for i, c in enumerate(CROSS)],
    ids=[f"x{i}" for i in range(len(CROSS))])  # odd ones with -m slow (suite time)
def test_conditions_across_parties_equal_plain_duckdb(bi, sql: str,
                                                      reference: str | None) -> None:
    session, con = bi
    check_statistics(_run(session, sql), plain(con, reference or sql))


# over the demo federation (20,000 people): the revealing join, and the oblivious join
DEMO_SQL = ("SELECT p.product, COUNT(*) FILTER (WHERE l.amount > p.premium * 20) AS c, "
            "SUM(l.amount > p.claims_amount) AS s, COUNT(*) AS n FROM bank.loans l JOIN "
            "insurer.policies p ON l.customer_id = p.customer_id GROUP BY p.product")


@pytest.mark.parametrize("oblivious", [False, True], ids=["reveal", "oblivious"])
def test_demo_conditions_equal_plain_duckdb(tmp_path: Path, oblivious: bool) -> None:
    make = oblivious_federation if oblivious else oracle_federation
    fed = make(DEMO, tmp_path / "fed")
    with veilql.connect(fed, analyst="oracle") as session:
        con = union_connection(session.federation)
        result = _run(session, DEMO_SQL)
        assert all((j.mode == "oblivious") == oblivious for j in result.plan.joins)
        check_statistics(result, plain(con, DEMO_SQL))
        con.close()


def _lengths(fed: Path, out: Path, sql: str) -> list[tuple[str, str, int]]:
    """``(sender, kind, payload length)`` of every data record ``payments`` (a compute
    party holding no table of the query) received running ``sql``."""
    run_recorded(fed, out, sql)
    return data_records(out / "payments.bin")


def test_predicate_outcome_does_not_change_message_lengths(tmp_path: Path) -> None:
    # The attack: a compute party compares what it receives when one person's comparisons
    # are TRUE with when they are FALSE or NULL (the insurer's customer 2, whose loan is
    # 7,900: premium emptied and claims raised above it, then both NULL); every comparison
    # runs on shares over all rows and slots, so nothing it receives may differ in length.
    sql = ("SELECT COUNT(*) FILTER (WHERE l.amount > p.premium * 20) AS c, "
           "AVG(l.amount > p.claims_amount) AS a FROM bank.loans l JOIN insurer.policies p "
           "ON l.customer_id = p.customer_id")
    feds = [oracle_federation(DEMO, tmp_path / name) for name in ("a", "b", "c")]
    for fed, row in ((feds[1], "2,auto,0.00,0,99999.00"), (feds[2], "2,auto,,0,")):
        csv = fed.parent / "data" / "insurer" / "policies.csv"
        lines = csv.read_text().splitlines()
        assert lines[1].startswith("2,")
        csv.write_text("\n".join([lines[0], row, *lines[2:]]) + "\n")
    seen = [sorted(_lengths(f, tmp_path / f"t{i}", sql)) for i, f in enumerate(feds)]
    assert seen[0] and seen[0] == seen[1] == seen[2]
    assert any(f == "insurer" and n > 0 for f, _, n in seen[0])


def test_aggregate_predicate_in_the_plan(bi) -> None:
    # each aggregate carries its own predicate on shares, with the not-NULL atoms
    session, _ = bi
    plan = compile_plan(f"SELECT COUNT(*) AS n, SUM(ta.visits > tb.fills) AS s {J2}",
                        session.federation)
    assert plan.cross is None
    own = [a for a in plan.aggregates if a.cross is not None]
    assert len(own) == 1 and own[0].kind == "count"
    text = own[0].cross.sql()
    assert "alpha.o0 + beta.o0 > 0" in text and "beta.a" in text and "alpha.a" in text
    assert "over rows where" in plan.to_s()
    # SUM(c) beside AVG(c): one noisy count of TRUE rows; the denominator (c not NULL) is
    # the parts' not-NULL atoms, no comparison; a part in two comparisons is one column
    plan = compile_plan(f"SELECT SUM(ta.score > tb.fills) AS s, AVG(ta.score > tb.fills) AS "
                        f"a, SUM(ta.score > tb.fills) FILTER (WHERE tb.rate < 0.5) AS f {J2}",
                        session.federation)
    own = {a.name: a.cross.sql() for a in plan.aggregates if a.cross is not None}
    assert sorted(own) == ["a.den", "f", "s"], own
    assert ">" not in own["a.den"] and own["s"] in own["f"]
    assert [c.name for c in plan.step("alpha").columns if c.role == "operand"] == ["o0"]


REFUSED = [
    (f"SELECT AVG(CASE WHEN ta.visits > tb.fills THEN tb.fills ELSE 0 END) {J2}",
     "AVG of a CASE with ELSE 0"),
    (f"SELECT SUM(CASE WHEN ta.visits > tb.fills THEN 1 WHEN ta.visits < tb.fills THEN 2 "
     f"END) {J2}", "must have one WHEN"),
    (f"SELECT SUM(CASE WHEN ta.visits > tb.fills THEN 2 ELSE 0 END) {J2}", "THEN 2"),
    (f"SELECT MEDIAN(ta.visits) FILTER (WHERE ta.visits > tb.fills) {J2}",
     "a condition across parties inside this aggregate"),
    (f"SELECT COUNT(DISTINCT tb.groupby_string_0) FILTER (WHERE ta.visits > tb.fills) "
     f"{J2}",
     "a condition across parties inside this aggregate"),
    ("SELECT SUM(ta.visits > tb.fills) FROM alpha.ta LEFT JOIN beta.tb ON ta.uid = tb.uid",
     "outer join"),
    # a group column inside an aggregate: only of its own GROUP BY
    ("SELECT groupby_string_0, MAX(groupby_int_0) FROM alpha.ta GROUP BY groupby_string_0",
     "cannot be used as a value"),
    ("SELECT COUNT(*), ANY_VALUE(visits) FROM alpha.ta GROUP BY groupby_string_0",
     "only of a GROUP BY key"),
    ("SELECT COUNT(*), SUM(groupby_string_0) FROM alpha.ta GROUP BY groupby_string_0",
     "is not a number"),
    ("SELECT COUNT(*), MAX(groupby_int_0) FILTER (WHERE visits > 3) FROM alpha.ta "
     "GROUP BY groupby_int_0", "cannot be used as a value"),
]


@pytest.mark.parametrize("sql, words", REFUSED, ids=[f"r{i}" for i in range(len(REFUSED))])
def test_refusals_name_the_construct(bi, sql: str, words: str) -> None:
    session, _ = bi
    with pytest.raises(QueryError) as info:
        compile_plan(sql, session.federation)
    assert words in info.value.message, info.value.message
    assert info.value.hint
