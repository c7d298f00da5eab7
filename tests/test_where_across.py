"""Conditions across parties that analysts write in WHERE and FILTER (issue #14).

Three shapes, each compared on shares exactly: two parties' group columns compared directly
(``a.s = b.s``, ``a.d < b.d``: codes, ``rewrite/coded.py``), a bare product of one factor
per party compared with a number in WHERE (``a.v * b.f > 100``), and a quotient ``N / D``
compared with a number (``a.v / (b.f + 1) > 2``, ``rewrite/cross_quotient.py``). Oracle at
a huge epsilon against DuckDB on the union (COUNT and SUM exact): NULLs on either side
(SQL's three-valued logic: a comparison with a NULL side is neither TRUE nor FALSE), under
AND, OR and NOT, inside FILTER and a CASE of an aggregate, two and three parties; each
condition keeps some joined rows and drops others. Refusals that remain name the construct.
Attack: the message lengths every compute party receives do not change with one person's
values (which side of each comparison the person's row falls).
"""

from __future__ import annotations

import datetime as dt
import random
import warnings
from collections import Counter
from pathlib import Path

import pytest
from lengths import received, run_recorded
from oracle import (
    HUGE_EPSILON,
    local_federation,
    oblivious_federation,
    plain,
    same,
    union_connection,
    write_unit_table,
)

import veilql
from veilql.engine.rewrite import compile_plan
from veilql.engine.session import Session
from veilql.errors import PolicyError, QueryError, UnsupportedError

PEOPLE = 48
PARTIES = ("alice", "bob", "carol")
FEDERATION = local_federation("where_across", PARTIES)
DATES = [dt.date(2024, 1, 1) + dt.timedelta(days=9 * i) for i in range(6)]
POLICIES = {
    "alice": ("2", """
s = { role = "group", values = ["x", "y", "z"] }
d = { role = "group" }
b = { role = "group", values = [true, false] }
k = { role = "group", values = [1, 2, 3] }
v = { role = "value", bounds = [0, 50] }
q = { role = "value", bounds = [1, 10], decimals = 2 }
"""),
    "bob": ("1", """
s = { role = "group", values = ["w", "x", "y"] }
d = { role = "group" }
b = { role = "group", values = [false, true] }
k = { role = "group", values = [2, 3, 4] }
f = { role = "value", bounds = [0, 20] }
"""),
    "carol": ("1", """
s = { role = "group" }
d = { role = "group" }
c = { role = "value", bounds = [1, 5] }
"""),
}
TYPES = {"alice": "s VARCHAR, d DATE, b BOOLEAN, k INTEGER, v INTEGER, q DECIMAL(4,2)",
         "bob": "s VARCHAR, d DATE, b BOOLEAN, k INTEGER, f INTEGER",
         "carol": "s VARCHAR, d DATE, c INTEGER"}
#: The person whose values the neighbouring federation changes (present at every party):
#: in it, the person's row falls on the other side of each comparison, or reads a NULL.
MOVED = 4
MOVES = {"alice": (("x", DATES[0], True, 2, 40, 2.0), ("x", DATES[3], None, 3, 2, 5.0)),
         "bob": (("x", DATES[1], True, 3, 10), ("y", None, False, None, None)),
         "carol": (("q", DATES[2], 3), ("q", DATES[0], 5))}


def _row(party: str, u: int, j: int) -> tuple:
    """One row of ``party`` for person ``u`` (its ``j``-th), from a seeded generator."""
    rnd = random.Random(f"{party}-{u}-{j}")

    def maybe(value: object, p: float) -> object:
        return None if rnd.random() < p else value

    date = maybe(rnd.choice(DATES), 0.12)
    if party == "alice":
        return (maybe(rnd.choice("xyz"), 0.1), date, maybe(rnd.random() < 0.5, 0.1),
                maybe(rnd.randint(1, 3), 0.1), maybe(rnd.randint(0, 50), 0.1),
                maybe(rnd.randint(100, 1000) / 100, 0.1))
    if party == "bob":
        return (maybe(rnd.choice("wxy"), 0.12), date, maybe(rnd.random() < 0.5, 0.1),
                maybe(rnd.randint(2, 4), 0.1), maybe(rnd.randint(0, 20), 0.15))
    return (rnd.choice("xyq"), date, maybe(rnd.randint(1, 5), 0.1))


def build(root: Path, change: bool = False) -> Path:
    """The three parties' tables under ``root`` (alice up to two rows per person, some
    NULLs everywhere); with ``change``, person ``MOVED``'s values are others."""
    (root / "data").mkdir(parents=True)
    (root / "policies").mkdir()
    (root / "federation.toml").write_text(FEDERATION)
    for party in PARTIES:
        rows_per, columns = POLICIES[party]
        (root / "policies" / f"{party}.toml").write_text(
            f'[tables.t]\nprivacy_unit = "unit"\nmax_rows_per_unit = {rows_per}\n\n'
            f'[tables.t.columns]\nunit = {{ role = "key" }}{columns}')
        rows = []
        for u in range(1, PEOPLE + 1):
            if random.Random(f"{party}-{u}").random() < 0.1 and u != MOVED:
                continue  # not everyone everywhere
            for j in range(1 + (party == "alice" and u % 3 == 0)):
                row = (MOVES[party][change] if u == MOVED else _row(party, u, j))
                rows.append((u, *row))
        write_unit_table(root / "data" / f"{party}.duckdb", TYPES[party], rows)
    return root / "federation.toml"


J2 = "FROM alice.t a JOIN bob.t b ON a.unit = b.unit"
J3 = f"{J2} JOIN carol.t c ON b.unit = c.unit"
# The conditions, each of which keeps some joined rows and drops others.
CODES = ["a.s = b.s", "a.s <> b.s", "a.d = b.d", "a.d < b.d", "a.b = b.b", "a.k = b.k",
         "a.k < b.k"]
PRODUCTS = ["a.v * b.f > 100", "a.v * b.f <= 60"]
QUOTIENTS = ["a.v / (b.f + 1) > 2", "b.f / a.q >= 1.5", "(a.v + b.f) / a.q < 6"]

QUERIES = [
    # codes: bare in WHERE (text, dates by order), NULLs on either side drop the row
    f"SELECT COUNT(*) AS n, SUM(a.v) AS s, SUM(b.f) AS t {J2} WHERE a.s = b.s AND a.d <= b.d",
    # codes under OR and NOT (three-valued logic: NOT of a NULL comparison is not TRUE)
    f"SELECT COUNT(*) AS n, SUM(b.f) AS t {J2} WHERE NOT (a.s = b.s) OR a.v > 45 OR "
    "NOT (a.d > b.d OR a.b <> b.b)",
    # FILTER and a CASE of an aggregate: codes, a product, a quotient, each with NULLs
    f"SELECT COUNT(*) FILTER (WHERE a.s <> b.s) AS n1, COUNT(*) FILTER (WHERE a.d = b.d) "
    "AS n2, SUM(a.v) FILTER (WHERE a.b = b.b) AS s1, SUM(CASE WHEN a.s = b.s THEN 1 ELSE 0 "
    "END) AS n3, COUNT(*) FILTER (WHERE b.f / a.q < 2) AS n4, SUM(b.f) FILTER (WHERE "
    f"NOT (a.v / (b.f + 1) > 2)) AS s2, COUNT(*) FILTER (WHERE a.v * b.f >= 80) AS n5, "
    f"COUNT(*) FILTER (WHERE a.k < b.k) AS n6 {J2}",
    # a bare product in WHERE (NULL factors drop the row), and a quotient beside it
    f"SELECT COUNT(*) AS n, SUM(a.v) AS s {J2} WHERE a.v * b.f > 100 AND b.f / a.q >= 1.5",
    # quotients under OR and NOT, numerator of two parties' parts
    f"SELECT COUNT(*) AS n, SUM(b.f) AS t {J2} WHERE (a.v + b.f) / a.q < 6 OR NOT "
    "(a.v / (b.f + 1) <= 2)",
    # three parties: dates of carol against alice's, a product and a quotient reaching carol
    f"SELECT COUNT(*) AS n, SUM(c.c) AS s {J3} WHERE a.d < c.d AND a.v * c.c > 40 AND "
    "(a.v + c.c) / (b.f + 1) > 3",
    # three parties under OR, grouped by a public column (whose NULL rows are not a cell)
    f"SELECT a.s, COUNT(*) AS n, SUM(b.f) AS t {J3} WHERE (b.d = c.d OR a.v * c.c <= 30 "
    "OR a.v / (b.f + 1) > 4) AND a.s IS NOT NULL GROUP BY a.s ORDER BY a.s",
]


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory):
    path = build(tmp_path_factory.mktemp("where_across"))
    session = veilql.connect(path, analyst="oracle")
    con = union_connection(session.federation)
    yield session, con
    session.close()
    con.close()


def _run(session: Session, sql: str) -> veilql.Result:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return session.sql(sql, epsilon=HUGE_EPSILON, delta=0.0)  # pure: fast calibration


def _check(result: veilql.Result, want: list[tuple], sql: str) -> None:
    """The secure answer is DuckDB's: counts and sums exact (a public domain's empty
    cells, which DuckDB has no row for, about 0)."""
    keys = {w[0] for w in want}
    rows = [g for g in result.rows if "GROUP BY" not in sql or g[0] in keys]
    assert all(abs(v or 0) < 0.5 for g in result.rows if g not in rows for v in g[1:])
    assert len(rows) == len(want), (sql, result.rows, want)
    for got, expected in zip(rows, want, strict=True):
        for a, b in zip(got, expected, strict=True):
            assert same(a, b, 0.01), (sql, result.rows, want)


def test_the_data_has_nulls_on_either_side(fed) -> None:
    _, con = fed
    nulls = plain(con, "SELECT COUNT(*) - COUNT(s), COUNT(*) - COUNT(d), COUNT(*) - COUNT(b), "
                       "COUNT(*) - COUNT(k), COUNT(*) - COUNT(v), COUNT(*) - COUNT(q) FROM "
                       "alice.t")[0]
    assert min(nulls) > 0
    nulls = plain(con, "SELECT COUNT(*) - COUNT(s), COUNT(*) - COUNT(d), COUNT(*) - COUNT(b), "
                       "COUNT(*) - COUNT(k), COUNT(*) - COUNT(f) FROM bob.t")[0]
    assert min(nulls) > 0


@pytest.mark.parametrize("cond", CODES + PRODUCTS + QUOTIENTS)
def test_each_condition_keeps_some_rows_and_drops_others(fed, cond: str) -> None:
    # Without this the oracle would not tell a condition answered as TRUE (or FALSE)
    # everywhere, or one that reads a NULL side as a value, from the right one.
    _, con = fed
    total, kept, negated = plain(con, f"SELECT COUNT(*), COUNT(*) FILTER (WHERE {cond}), "
                                      f"COUNT(*) FILTER (WHERE NOT ({cond})) {J2}")[0]
    assert 0 < kept < total and 0 < negated < total and kept + negated < total


@pytest.mark.parametrize("sql", [q if i in (2, 3) else pytest.param(
    q, marks=pytest.mark.slow) for i, q in enumerate(QUERIES)],
    ids=[f"q{i}" for i in range(len(QUERIES))])
def test_conditions_across_parties_equal_plain_duckdb(fed, sql: str) -> None:
    session, con = fed
    _check(_run(session, sql), plain(con, sql), sql)


@pytest.mark.slow
@pytest.mark.parametrize("cond", CODES + PRODUCTS + QUOTIENTS)
@pytest.mark.parametrize("form", ["{c}", "NOT ({c})", "{c} OR a.v < 10"])
def test_each_condition_alone_equals_plain_duckdb(fed, cond: str, form: str) -> None:
    session, con = fed
    sql = f"SELECT COUNT(*) AS n, SUM(b.f) AS t {J2} WHERE {form.format(c=cond)}"
    _check(_run(session, sql), plain(con, sql), sql)


@pytest.mark.slow
def test_the_oblivious_join_answers_them_too(tmp_path: Path) -> None:
    """With ``join_reveal = "nothing"`` (every party padded to its bound) the same
    predicate on shares runs over the padded rows: DuckDB's answer still."""
    fed = oblivious_federation(build(tmp_path / "src").parent, tmp_path / "obl", 100)
    text = fed.read_text()
    fed.write_text(text[:text.rindex("[analyst.oracle]")])  # build() declared the analyst
    with veilql.connect(fed, analyst="oracle") as session:
        con = union_connection(session.federation)
        for sql in (QUERIES[2], QUERIES[3]):
            _check(_run(session, sql), plain(con, sql), sql)
        con.close()


def test_codes_are_compared_on_shares(fed) -> None:
    """Each party shares its own code (an index in the union of the declared values, or
    days since 1970); neither party's SQL reads the other's column."""
    session, _ = fed
    plan = compile_plan(f"SELECT COUNT(*) {J2} WHERE a.s = b.s AND a.d < b.d",
                        session.federation, epsilon=1.0, delta=1e-6)
    sql = {s.party: " ".join(c.sql for c in s.columns) for s in plan.steps}
    assert "WHEN a.s = 'w' THEN 0" in sql["alice"] and "WHEN b.s = 'w' THEN 0" in sql["bob"]
    assert "DATE_DIFF('day'" in sql["alice"] and "b." not in sql["alice"]
    assert "a." not in sql["bob"]
    assert plan.cross is not None and "alice.o" in plan.cross.sql()


REFUSALS = [
    # no declared values at carol: no code
    (f"SELECT COUNT(*) {J3} WHERE a.s = c.s", UnsupportedError,
     "cannot be compared across parties"),
    # declared values give = and <> only
    (f"SELECT COUNT(*) {J2} WHERE a.s < b.s", UnsupportedError, "compared with = and <> only"),
    (f"SELECT COUNT(*) {J2} WHERE a.s = b.k", UnsupportedError, "cannot be compared with"),
    # a group column against another party's value column, or inside arithmetic
    (f"SELECT COUNT(*) {J2} WHERE a.s = b.f", PolicyError,
     "group column a.s is compared with b.f"),
    (f"SELECT COUNT(*) {J2} WHERE a.d + 1 = b.d", PolicyError, "cannot be used as a value"),
    # a product compared by = or with a column
    (f"SELECT COUNT(*) {J2} WHERE a.v * b.f = 10", UnsupportedError, "by <, <=, > or >="),
    (f"SELECT COUNT(*) {J2} WHERE a.v * b.f > a.q", UnsupportedError, "only with a number"),
    # a quotient compared with a column, on the right, or over a divisor that holds 0
    (f"SELECT COUNT(*) {J2} WHERE a.v / (b.f + 1) > a.q", UnsupportedError,
     "only with a number written in the query"),
    (f"SELECT COUNT(*) {J2} WHERE 2 < a.v / (b.f + 1)", UnsupportedError,
     "write the quotient"),
    (f"SELECT COUNT(*) {J2} WHERE a.v / b.f > 2", UnsupportedError, "include 0"),
    (f"SELECT COUNT(*) {J3} WHERE a.v / (b.f + c.c) > 2", UnsupportedError,
     "supported only as N / D"),
    (f"SELECT COUNT(*) {J2} WHERE a.v / (b.f + 1) BETWEEN 1 AND 2", UnsupportedError,
     "supported only as N / D"),
]


@pytest.mark.parametrize("sql,error,words", REFUSALS, ids=[f"r{i}" for i in range(len(REFUSALS))])
def test_refusals_name_the_construct(fed, sql: str, error: type[QueryError],
                                     words: str) -> None:
    session, _ = fed
    with pytest.raises(error) as info:
        compile_plan(sql, session.federation, epsilon=1.0, delta=1e-6)
    assert words in info.value.message, info.value.message
    assert info.value.hint


def _lengths(fed: Path, out: Path, sql: str) -> tuple[Counter, veilql.Result, list]:
    result = run_recorded(fed, out, sql, epsilon=HUGE_EPSILON, delta=0.0)
    con = union_connection(veilql.connect(fed, analyst="oracle").federation)
    want = plain(con, sql)
    con.close()
    return received(out, PARTIES), result, want


LENGTHS = [
    # all three, three parties: codes in WHERE (bare, under NOT and OR), a product under
    # OR, a quotient in FILTER
    f"SELECT COUNT(*) AS n, SUM(b.f) AS t, COUNT(*) FILTER (WHERE (a.v + c.c) / (b.f + 1) > "
    f"2) AS k {J3} WHERE a.s = b.s AND (NOT (a.d >= c.d) OR a.v * b.f > 100)",
    pytest.param(f"SELECT COUNT(*) AS n {J2} WHERE a.s <> b.s OR a.d = b.d",
                 marks=pytest.mark.slow),
    pytest.param(f"SELECT COUNT(*) AS n, SUM(a.v) AS s {J2} WHERE a.v * b.f > 100",
                 marks=pytest.mark.slow),
    pytest.param(f"SELECT COUNT(*) AS n {J3} WHERE (a.v + c.c) / (b.f + 1) > 3",
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize("sql", LENGTHS, ids=["all", "codes", "product", "quotient"])
def test_message_lengths_do_not_depend_on_a_persons_values(tmp_path: Path, sql: str) -> None:
    # The attack: a compute party compares the messages it receives between two
    # federations that differ only in one person's values (on the other side of each
    # comparison, or NULL), hoping a comparison's work shows which side the row fell on.
    one, result, want = _lengths(build(tmp_path / "a"), tmp_path / "o1", sql)
    _check(result, want, sql)
    two, result, other = _lengths(build(tmp_path / "b", change=True), tmp_path / "o2", sql)
    _check(result, other, sql)
    assert want != other  # the person's row is on the other side
    assert one and one == two
