"""LEFT, RIGHT and FULL JOIN across parties with further ON conditions (issue #14 item 1).

``a LEFT JOIN b ON a.u = b.u AND c``: a row of ``a`` matches the rows of ``b`` where ``c``
holds, and gets NULLs when there is none (``c`` is not a WHERE). Oracle at a huge epsilon
against DuckDB on the union: conditions on the optional side, on the preserved side, across
parties (numbers, OR, BETWEEN), with several rows per person on the optional side (the OR
over its rows), FULL (either side's unmatched rows; grouped: the NULL group), equality of
text (declared values) and of dates across parties, the BI peer query, a fourth data party
on the optional side; rows that match on the unit but fail the condition exist and change
the answer. Refusals name the construct. Attack: the message lengths of the whole query do
not depend on whether a person's rows pass the ON.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import bi_fixtures
import pytest
from oracle import oracle_federation, plain, union_connection
from test_outer_join import DEMO, _check, _four_parties, _lengths, _with_nulls

import veilql
from veilql.engine.rewrite import compile_plan
from veilql.errors import QueryError
from veilql.policies.loader import load_federation

J = "ON c.customer_id = p.customer_id"
JL = "ON l.customer_id = p.customer_id"

QUERIES = [
    # a condition on the optional side only, grouped by the preserved side
    "SELECT c.region, COUNT(*) AS n, COUNT(p.premium) AS k, SUM(p.premium) AS s, "
    f"AVG(p.premium) AS a FROM bank.customers c LEFT JOIN insurer.policies p {J} "
    "AND p.premium > 800 GROUP BY c.region ORDER BY c.region",
    # a condition on the preserved side only: its failing rows count with NULLs
    "SELECT COUNT(*) AS n, COUNT(p.premium) AS k, SUM(p.premium) AS s, SUM(c.age) AS g "
    f"FROM bank.customers c LEFT JOIN insurer.policies p {J} AND c.age > 40",
    # across parties, numbers: a comparison, OR and BETWEEN, a product across the sides
    "SELECT COUNT(*) AS n, COUNT(c.age) AS k, SUM(c.income) AS s, SUM(c.age * p.open_claim) "
    f"AS x FROM bank.customers c LEFT JOIN insurer.policies p {J} AND (c.age * 20 < "
    "p.premium OR p.open_claim = 1) AND p.premium BETWEEN c.age AND 1500",
    # RIGHT, the optional side with up to three rows per person (OR over its rows), grouped
    "SELECT p.product, COUNT(*) AS n, COUNT(l.amount) AS k, SUM(l.amount) AS s, "
    f"SUM(p.premium) AS q FROM bank.loans l RIGHT JOIN insurer.policies p {JL} AND "
    "l.amount > p.premium * 10 GROUP BY p.product ORDER BY p.product",
    # LEFT with the preserved side of three rows per person, condition across parties
    "SELECT COUNT(*) AS n, COUNT(p.premium) AS k, AVG(p.premium) AS a, SUM(l.amount) AS s "
    f"FROM bank.loans l LEFT JOIN insurer.policies p {JL} AND l.amount < p.premium * 40",
    # FULL: the rows of either side that match nothing get NULLs
    "SELECT COUNT(*) AS n, COUNT(c.age) AS ka, COUNT(p.premium) AS k, SUM(c.income) AS si, "
    f"SUM(p.premium) AS s FROM bank.customers c FULL JOIN insurer.policies p {J} AND "
    "p.premium > c.age * 20",
    # FULL grouped by one side, three rows per person on the other (the NULL group)
    "SELECT p.product, COUNT(*) AS n, COUNT(l.amount) AS k, SUM(l.amount) AS s, "
    f"COUNT(p.premium) AS kp FROM bank.loans l FULL JOIN insurer.policies p {JL} AND "
    "l.amount > p.premium * 10 GROUP BY p.product ORDER BY p.product",
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    fed = _with_nulls(tmp_path_factory.mktemp("outer_on") / "fed")
    session = veilql.connect(fed, analyst="oracle")
    con = union_connection(session.federation)
    yield session, con
    session.close()
    con.close()


@pytest.mark.parametrize("sql", [q if i % 2 == 1 else pytest.param(q, marks=pytest.mark.slow)
                                 for i, q in enumerate(QUERIES)],
                         ids=[f"on{i}" for i in range(len(QUERIES))])  # even: -m slow
def test_on_conditions_equal_plain_duckdb(demo, sql: str) -> None:
    session, con = demo
    _check(session, con, sql)


@pytest.mark.parametrize("sql", [q if i % 2 == 0 else pytest.param(q, marks=pytest.mark.slow)
                                 for i, q in enumerate(QUERIES)],
                         ids=[f"on{i}" for i in range(len(QUERIES))])  # odd: -m slow
def test_the_condition_rejects_rows_that_match_on_the_unit(demo, sql: str) -> None:
    # Without this the oracle would not see an ON answered as the bare unit join, or as
    # a WHERE (which drops the preserved rows instead of giving them NULLs).
    _, con = demo
    on = sql[sql.index(" AND ", sql.index(" ON ")):]
    on = on[:min(i for i in (on.find(" GROUP BY"), len(on)) if i >= 0)]
    bare = sql.replace(on, "")
    where = bare.replace(" GROUP BY", f" WHERE {on[5:]} GROUP BY") if "GROUP BY" in bare \
        else f"{bare} WHERE {on[5:]}"
    assert plain(con, sql) != plain(con, bare)
    assert plain(con, sql) != plain(con, where)


def _bi_with_day(root: Path) -> Path:
    """The BI federation with a DATE column ``day`` at beta (some NULL), as at alpha."""
    fed = bi_fixtures.build(root)
    path = root / "data" / "beta" / "tb.csv"
    rows = list(csv.reader(path.open()))
    rows[0].append("day")
    for i, r in enumerate(rows[1:]):
        r.append(bi_fixtures.DATES[bi_fixtures._rand(i * 3 + 1, 3)] if i % 11 else "")
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    policy = root / "policies" / "beta.toml"
    policy.write_text(policy.read_text().replace(
        "[tables.merchants]", 'day = { role = "group" }\n\n[tables.merchants]', 1))
    return fed


BI = [
    # the peer query: RIGHT, text and date equality across parties, two rows per person on
    # the optional side
    "SELECT COUNT(ta.visits) AS t1 FROM alpha.ta RIGHT JOIN beta.tb ON ta.uid = tb.uid AND "
    "ta.groupby_string_0 = tb.groupby_string_0 AND ta.day = tb.day",
    # LEFT, text equality, grouped by the preserved side, sums and AVG of the optional side
    "SELECT ta.groupby_string_0, COUNT(*) AS n, COUNT(tb.fills) AS k, SUM(tb.fills) AS s, "
    "AVG(tb.rate) AS r FROM alpha.ta LEFT JOIN beta.tb ON ta.uid = tb.uid AND "
    "ta.groupby_string_0 = tb.groupby_string_0 WHERE ta.groupby_string_0 <> 'z' "
    "GROUP BY ta.groupby_string_0 ORDER BY ta.groupby_string_0",
    # dates compared by order, and <> of text
    "SELECT COUNT(*) AS n, COUNT(ta.score) AS k, SUM(ta.spend) AS s, SUM(tb.fills) AS f "
    "FROM beta.tb LEFT JOIN alpha.ta ON tb.uid = ta.uid AND ta.day < tb.day AND "
    "ta.groupby_string_0 <> tb.groupby_string_0",
]


@pytest.fixture(scope="module")
def bi(tmp_path_factory: pytest.TempPathFactory):
    fed = _bi_with_day(tmp_path_factory.mktemp("outer_bi"))
    session = veilql.connect(fed, analyst="oracle")
    con = union_connection(session.federation)
    yield session, con
    session.close()
    con.close()


@pytest.mark.parametrize("sql", BI, ids=["peer", "text", "dates"])
def test_text_and_date_equality_across_parties(bi, sql: str) -> None:
    session, con = bi
    _check(session, con, sql)
    rest = min(i for i in (sql.find(" WHERE"), sql.find(" GROUP BY"), len(sql)) if i >= 0)
    bare = sql[:sql.index(" AND ")] + sql[rest:]
    assert plain(con, sql) != plain(con, bare)  # some rows match the unit, not the rest


def test_optional_side_at_a_fourth_data_party(tmp_path: Path) -> None:
    fed = _four_parties(tmp_path / "fed")
    sql = ("SELECT c.region, COUNT(*) AS n, COUNT(p.premium) AS k, SUM(p.premium) AS s FROM "
           f"bank.customers c LEFT JOIN reinsurer.policies p {J} AND p.premium > c.age * 15 "
           "GROUP BY c.region ORDER BY c.region")
    with veilql.connect(fed, analyst="oracle") as session:
        plan = compile_plan(sql, session.federation, epsilon=1.0)
        assert plan.optional == "reinsurer" and plan.cross is not None
        con = union_connection(session.federation)
        _check(session, con, sql)
        con.close()


def test_plan_of_an_on_condition() -> None:
    fed = load_federation(DEMO / "federation.toml")
    sql = (f"SELECT COUNT(*) AS n FROM bank.customers c LEFT JOIN insurer.policies p {J} "
           "AND p.premium > c.age")
    plan = compile_plan(sql, fed, epsilon=1.0)
    inner = compile_plan(sql.replace("LEFT JOIN", "JOIN"), fed, epsilon=1.0)
    assert plan.cross is not None and plan.shift == (1,)
    assert [a.l1 for a in plan.aggregates] == [a.l1 for a in inner.aggregates]
    assert "LEFT JOIN ... ON with further conditions" in plan.to_s()


@pytest.mark.parametrize("sql, words", [
    ("SELECT COUNT(*) FROM alpha.ta LEFT JOIN beta.tb ON ta.uid = tb.uid AND NOT "
     "ta.visits > tb.fills", "NOT over a comparison across parties"),
    ("SELECT COUNT(*) FROM alpha.ta LEFT JOIN gamma.tc ON ta.uid = tc.person AND "
     "ta.groupby_string_0 = tc.groupby_string_0", "cannot be compared across parties"),
    ("SELECT COUNT(*) FROM alpha.ta LEFT JOIN beta.tb ON ta.uid = tb.uid AND "
     "ta.groupby_string_0 < tb.groupby_string_0", "= and <> only"),
    ("SELECT COUNT(*) FROM alpha.ta LEFT JOIN beta.tb ON ta.uid = tb.uid AND "
     "ta.day = tb.groupby_string_0", "(type DATE) cannot be compared with"),
    ("SELECT COUNT(*) FROM alpha.ta LEFT JOIN beta.tb ON ta.uid = tb.uid AND "
     "ta.groupby_string_0 = tb.fills", "compared with"),
    ("SELECT COUNT(*) FROM alpha.ta LEFT JOIN alpha.ta2 ON ta.uid = ta2.uid AND "
     "ta2.tenure > 3", "takes only the privacy-unit equality"),
    ("SELECT COUNT(*) FROM alpha.ta LEFT JOIN beta.tb ON ta.uid = tb.uid AND "
     "ta.merchant_id = tb.uid", "key"),
])
def test_on_refusals_name_the_construct(bi, sql: str, words: str) -> None:
    fed = bi[0].federation
    with warnings.catch_warnings(), pytest.raises(QueryError) as info:
        warnings.simplefilter("ignore")
        compile_plan(sql, fed, epsilon=1.0, delta=1e-6)
    assert words in info.value.message, info.value.message


@pytest.mark.parametrize("side", ["LEFT", "FULL"])
def test_lengths_do_not_depend_on_whether_a_person_passes_the_on(tmp_path: Path,
                                                                  side: str) -> None:
    # The attack: a compute party compares the lengths of everything it receives for two
    # federations that differ only in whether one person's policy passes the ON condition
    # (its premium above or below 800): the matching rows are found on shares only.
    sql = (f"SELECT COUNT(*) AS n, SUM(p.premium) AS s FROM bank.customers c {side} JOIN "
           f"insurer.policies p {J} AND p.premium > 800")
    first = oracle_federation(DEMO, tmp_path / "a")
    second = oracle_federation(DEMO, tmp_path / "b")
    csv_path = tmp_path / "b" / "data" / "insurer" / "policies.csv"
    lines = csv_path.read_text().splitlines()
    col = lines[0].split(",").index("premium")
    for i, line in enumerate(lines[1:], start=1):
        cells = line.split(",")
        if cells[col] and float(cells[col]) > 800:
            cells[col] = "100"  # now it fails the ON; the person is still at the insurer
            lines[i] = ",".join(cells)
            break
    else:
        pytest.fail("no premium above 800")
    csv_path.write_text("\n".join(lines) + "\n")
    got = [_lengths(fed, tmp_path / f"t{i}", sql) for i, fed in enumerate((first, second))]
    assert got[0] and got[0] == got[1]


STAMPS = ("2024-01-01 00:00:00", "2024-01-01 06:00:00", "2024-03-01 12:30:00")


def _bi_with_stamps(root: Path) -> Path:
    """The BI federation with a TIMESTAMP column ``at`` at beta (CSV, some empty) and at
    gamma (Parquet), both declaring their values (gamma's in another ISO spelling)."""
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq

    fed = bi_fixtures.build(root)
    path = root / "data" / "beta" / "tb.csv"
    rows = list(csv.reader(path.open()))
    rows[0].append("at")
    for i, r in enumerate(rows[1:]):
        r.append(STAMPS[bi_fixtures._rand(i * 5 + 2, 3)] if i % 7 else "")
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    gamma = root / "data" / "gamma" / "tc.parquet"
    table = pq.read_table(gamma)
    at = [dt.datetime.fromisoformat(STAMPS[bi_fixtures._rand(int(p) * 3, 3)])
          for p in table.column("person").to_pylist()]
    pq.write_table(table.append_column("at", pa.array(at, pa.timestamp("us"))), gamma)
    for party, anchor, values in (
            ("beta", "[tables.merchants]", list(STAMPS)),
            ("gamma", None, [s.replace(" ", "T") for s in STAMPS])):
        policy = root / "policies" / f"{party}.toml"
        line = f'at = {{ role = "group", values = {values!r} }}\n'
        text = policy.read_text()
        text = text.replace(anchor, line + "\n" + anchor, 1) if anchor else text + line
        policy.write_text(text)
    return fed


def test_timestamp_equality_across_parties(tmp_path: Path) -> None:
    fed = _bi_with_stamps(tmp_path)
    session = veilql.connect(fed, analyst="oracle")
    con = union_connection(session.federation)
    try:
        for sql in ("SELECT COUNT(*) AS n, COUNT(tc.level) AS k, SUM(tc.level) AS s FROM "
                    "beta.tb LEFT JOIN gamma.tc ON tb.uid = tc.person AND tb.at = tc.at",
                    "SELECT COUNT(tb.fills) AS k FROM beta.tb RIGHT JOIN gamma.tc ON "
                    "tb.uid = tc.person AND tb.at <> tc.at"):
            _check(session, con, sql)
            bare = sql[:sql.index(" AND ")]
            assert plain(con, sql) != plain(con, bare)
        with pytest.raises(QueryError, match="compared with = and <> only"):
            session.sql("SELECT COUNT(*) FROM beta.tb LEFT JOIN gamma.tc ON tb.uid = "
                        "tc.person AND tb.at < tc.at", epsilon=1.0, delta=0)
    finally:
        session.close()
        con.close()
