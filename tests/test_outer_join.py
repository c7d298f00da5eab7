"""LEFT, RIGHT and FULL JOIN of two parties' tables on the privacy unit (issue #14 item 1).

Oracle: at a huge epsilon the answer equals plain DuckDB on the parties' tables (counts
exactly, sums to fixed point): LEFT and RIGHT, NULL values on the optional side, units held
by one side only (either way), a predicate on the preserved side, GROUP BY the preserved
side's public column, a product across the sides, and a fourth data party preserved; FULL
JOIN with both sides' unmatched people, several rows per person, FILTER, a fourth data
party. Refusals name the construct. An attack check: what an outer join adds to a compute
party's received messages (the own-total sharings) has the same lengths for neighbouring
federations. Further ON conditions: ``test_outer_join_on.py``.
"""

from __future__ import annotations

import shutil
import warnings
from collections import Counter
from pathlib import Path

import pytest
from lengths import received, run_recorded
from oracle import HUGE_EPSILON, oracle_federation, plain, same, union_connection

import veilql
from veilql.engine.rewrite import compile_plan
from veilql.errors import QueryError
from veilql.policies.loader import load_federation

DEMO = Path(__file__).resolve().parent.parent / "sample_data" / "demo"
J = "ON c.customer_id = p.customer_id"

QUERIES = [
    # LEFT, grouped by the preserved side's public column; COUNT(*), COUNT(col), SUM, AVG of
    # both sides (bank's unmatched customers count with NULL premiums)
    "SELECT c.region, COUNT(*) AS n, COUNT(p.premium) AS k, SUM(p.premium) AS s, "
    f"AVG(p.premium) AS a, SUM(c.income) AS si FROM bank.customers c LEFT JOIN "
    f"insurer.policies p {J} GROUP BY c.region ORDER BY c.region",
    # LEFT the other way round (insurer preserved: its policy holders the bank lacks), a
    # predicate on the preserved side, AVG of the optional side
    "SELECT p.product, COUNT(*) AS n, COUNT(c.age) AS k, AVG(c.age) AS a FROM "
    f"insurer.policies p LEFT JOIN bank.customers c {J} WHERE p.premium > 800 "
    "GROUP BY p.product ORDER BY p.product",
    # RIGHT: the bank preserved, a predicate on it, a product across the sides (NULL: 0)
    "SELECT c.region, COUNT(*) AS n, SUM(p.premium) AS s, SUM(c.age * p.open_claim) AS x "
    f"FROM insurer.policies p RIGHT JOIN bank.customers c {J} WHERE c.age > 40 "
    "GROUP BY c.region ORDER BY c.region",
    # ungrouped, several rows per unit on the preserved side (loans: up to 3)
    "SELECT COUNT(*) AS n, COUNT(p.premium) AS k, SUM(l.amount) AS s FROM bank.loans l "
    "LEFT JOIN insurer.policies p ON l.customer_id = p.customer_id",
]

FULL = [
    # both sides' unmatched people: COUNT(*), COUNT(col) and SUM/AVG of either side, a
    # product across the sides (NULL: 0)
    "SELECT COUNT(*) AS n, COUNT(c.age) AS ka, COUNT(p.premium) AS k, SUM(c.income) AS si, "
    "SUM(p.premium) AS s, AVG(p.premium) AS a, AVG(c.age) AS g, SUM(c.age * p.open_claim) "
    f"AS x FROM bank.customers c FULL JOIN insurer.policies p {J}",
    # several rows per person on one side (loans: up to 3), FILTER on either side
    "SELECT COUNT(*) AS n, COUNT(l.amount) AS k, SUM(l.amount) AS s, COUNT(p.premium) AS kp, "
    "COUNT(*) FILTER (WHERE p.premium > 800) AS f, SUM(l.amount) FILTER (WHERE l.amount > "
    "5000) AS big FROM bank.loans l FULL OUTER JOIN insurer.policies p ON l.customer_id = "
    "p.customer_id",
    # grouped by one side: the other side's unmatched people form the NULL group
    "SELECT c.region, COUNT(*) AS n, COUNT(p.premium) AS k, AVG(p.premium) AS a, COUNT(c.age) "
    f"AS ka FROM bank.customers c FULL JOIN insurer.policies p {J} GROUP BY c.region "
    "ORDER BY c.region",
    # grouped by the second table's side, three rows per person on the other
    "SELECT p.product, COUNT(*) AS n, COUNT(l.amount) AS k, SUM(l.amount) AS s FROM "
    "bank.loans l FULL JOIN insurer.policies p ON l.customer_id = p.customer_id "
    "GROUP BY p.product ORDER BY p.product",
    # a key whose value on NULLs is a declared one (CASE ... ELSE): no NULL group
    "SELECT CASE WHEN c.age > 40 THEN 'old' ELSE 'young' END AS band, COUNT(*) AS n, "
    f"COUNT(p.premium) AS k FROM bank.customers c FULL JOIN insurer.policies p {J} "
    "GROUP BY 1 ORDER BY 1",
]


def _check(session, con, sql: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = session.sql(sql, epsilon=HUGE_EPSILON, delta=1e-6)
    want = plain(con, sql)
    keys = {w[0] for w in want}
    # a public domain's empty cells are released (about 0); DuckDB has no row for them
    rows = [g for g in got.rows if g[0] in keys or "GROUP BY" not in sql]
    assert all(abs(v or 0) < 1e-6 for g in got.rows if g not in rows for v in g[1:])
    assert len(rows) == len(want), (got.rows, want)
    for g, w in zip(rows, want, strict=True):
        for a, b in zip(g, w, strict=True):
            assert same(a, b, 0.02), (sql, got.rows, want)


def _with_nulls(root: Path) -> Path:
    """The demo federation with some premiums blank (NULL) at the insurer."""
    fed = oracle_federation(DEMO, root)
    csv = root / "data" / "insurer" / "policies.csv"
    lines = csv.read_text().splitlines()
    head = lines[0].split(",")
    col = head.index("premium")
    out = [lines[0]]
    for i, line in enumerate(lines[1:]):
        cells = line.split(",")
        if i % 7 == 0:
            cells[col] = ""
        out.append(",".join(cells))
    csv.write_text("\n".join(out) + "\n")
    return fed


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory):
    fed = _with_nulls(tmp_path_factory.mktemp("outer") / "fed")
    session = veilql.connect(fed, analyst="oracle")
    con = union_connection(session.federation)
    yield session, con
    session.close()
    con.close()


def test_the_data_has_nulls_and_units_on_one_side_only(oracle) -> None:
    _, con = oracle
    nulls, = plain(con, "SELECT COUNT(*) - COUNT(premium) FROM insurer.policies")[0]
    only_bank, = plain(con, "SELECT COUNT(*) FROM bank.customers c WHERE NOT EXISTS "
                            "(SELECT 1 FROM insurer.policies p WHERE p.customer_id = "
                            "c.customer_id)")[0]
    only_insurer, = plain(con, "SELECT COUNT(*) FROM insurer.policies p WHERE NOT EXISTS "
                               "(SELECT 1 FROM bank.customers c WHERE p.customer_id = "
                               "c.customer_id)")[0]
    assert nulls > 0 and only_bank > 0 and only_insurer > 0


@pytest.mark.parametrize("sql", [q if i % 2 == 0 else pytest.param(q, marks=pytest.mark.slow)
                                 for i, q in enumerate(QUERIES)],
                         ids=[f"o{i}" for i in range(len(QUERIES))])  # odd: -m slow
def test_outer_join_equals_plain_duckdb(oracle, sql: str) -> None:
    session, con = oracle
    _check(session, con, sql)


@pytest.mark.parametrize("sql", FULL, ids=[f"full{i}" for i in range(len(FULL))])
def test_full_join_equals_plain_duckdb(oracle, sql: str) -> None:
    session, con = oracle
    _check(session, con, sql)


def test_outer_join_differs_from_the_inner_join(oracle) -> None:
    # the oracle above would not notice an outer join answered as an inner one otherwise
    _, con = oracle
    inner = QUERIES[0].replace("LEFT JOIN", "JOIN")
    assert plain(con, inner) != plain(con, QUERIES[0])
    for sql in FULL:  # nor a FULL JOIN answered as a LEFT or RIGHT one
        full = plain(con, sql)
        assert all(full != plain(con, sql.replace(" FULL", f" {side}"))
                   for side in ("LEFT", "RIGHT"))


def _four_parties(root: Path) -> Path:
    """The demo with a fourth data party (a second insurer over the same file), which only
    inputs shares."""
    fed = oracle_federation(DEMO, root)
    text = fed.read_text().replace(
        "[analyst.alice]", '[[party]]\nname = "reinsurer"\naddress = "local"\n'
        'connector = "csv:data/insurer"\n\n[analyst.alice]')
    fed.write_text(text)
    shutil.copy(root / "policies" / "insurer.toml", root / "policies" / "reinsurer.toml")
    return fed


def test_preserved_side_at_a_fourth_data_party(tmp_path: Path) -> None:
    fed = _four_parties(tmp_path / "fed")
    sql = ("SELECT p.product, COUNT(*) AS n, COUNT(c.age) AS k, SUM(c.income) AS s FROM "
           f"reinsurer.policies p LEFT JOIN bank.customers c {J} GROUP BY p.product "
           "ORDER BY p.product")
    with veilql.connect(fed, analyst="oracle") as session:
        plan = compile_plan(sql, session.federation, epsilon=1.0)
        assert plan.own_total == "reinsurer" and "reinsurer" not in plan.compute
        con = union_connection(session.federation)
        _check(session, con, sql)
        con.close()


def test_full_join_at_a_fourth_data_party(tmp_path: Path) -> None:
    fed = _four_parties(tmp_path / "fed")
    sql = ("SELECT COUNT(*) AS n, COUNT(c.age) AS k, SUM(c.income) AS s, AVG(p.premium) AS a "
           f"FROM reinsurer.policies p FULL JOIN bank.customers c {J}")
    with veilql.connect(fed, analyst="oracle") as session:
        plan = compile_plan(sql, session.federation, epsilon=1.0)
        assert (plan.own_total, plan.optional) == ("reinsurer", "bank")
        con = union_connection(session.federation)
        _check(session, con, sql)
        con.close()


def test_full_join_plan() -> None:
    fed = load_federation(DEMO / "federation.toml")
    sql = ("SELECT COUNT(*) AS n, COUNT(p.premium) AS k, SUM(c.age) AS s FROM bank.customers "
           f"c FULL JOIN insurer.policies p {J}")
    plan = compile_plan(sql, fed, epsilon=1.0)
    inner = compile_plan(sql.replace("FULL JOIN", "JOIN"), fed, epsilon=1.0)
    assert (plan.outer, plan.own_total, plan.optional) == ("FULL", "bank", "insurer")
    assert plan.shift == (1, 0, 1) and plan.shift_own == (1, 1, 0)
    assert [a.l1 for a in plan.aggregates] == [a.l1 for a in inner.aggregates]
    assert "FULL JOIN: insurer shifts its factors" in plan.to_s()
    grouped = compile_plan("SELECT p.product, COUNT(*) AS n FROM bank.customers c FULL JOIN "
                           f"insurer.policies p {J} GROUP BY p.product", fed, epsilon=1.0)
    assert grouped.groups[0].domain[-1] is None and grouped.null_cell == 5


def test_plan_shift_and_sensitivity() -> None:
    fed = load_federation(DEMO / "federation.toml")
    sql = ("SELECT COUNT(*) AS n, COUNT(p.premium) AS k, SUM(c.age) AS s FROM bank.customers c "
           f"LEFT JOIN insurer.policies p {J}")
    plan = compile_plan(sql, fed, epsilon=1.0)
    inner = compile_plan(sql.replace("LEFT JOIN", "JOIN"), fed, epsilon=1.0)
    assert (plan.outer, plan.own_total, plan.optional) == ("LEFT", "bank", "insurer")
    assert plan.shift == (1, 0, 1)  # COUNT(*): a NULL row counts; COUNT(premium): not
    assert [a.l1 for a in plan.aggregates] == [a.l1 for a in inner.aggregates]
    assert "LEFT JOIN: insurer shifts its factors" in plan.to_s()


@pytest.mark.parametrize("sql, words", [
    (f"SELECT p.product, COUNT(*) FROM bank.customers c LEFT JOIN insurer.policies p {J} "
     "GROUP BY p.product", "reads the optional side"),
    (f"SELECT COUNT(*) FROM bank.customers c LEFT JOIN insurer.policies p {J} "
     "WHERE p.premium > 100", "reads the optional side"),
    (f"SELECT COUNT(*) FROM bank.customers c LEFT JOIN insurer.policies p {J} "
     "WHERE c.age > p.premium", "reads the optional side"),
    (f"SELECT SUM(c.age + p.premium) FROM bank.customers c LEFT JOIN insurer.policies p {J}",
     "adds columns of both sides"),
    (f"SELECT COUNT(DISTINCT c.customer_id) FROM bank.customers c LEFT JOIN "
     f"insurer.policies p {J}", "DISTINCT"),
    (f"SELECT MAX(c.age) FROM bank.customers c LEFT JOIN insurer.policies p {J}",
     "not supported"),
    (f"SELECT c.branch, COUNT(*) FROM bank.customers c LEFT JOIN insurer.policies p {J} "
     "GROUP BY c.branch", "partition selection"),
    (f"SELECT c.region, p.product, COUNT(*) FROM bank.customers c FULL JOIN "
     f"insurer.policies p {J} GROUP BY c.region, p.product", "reads both sides"),
    (f"SELECT COUNT(*) FROM bank.customers c FULL JOIN insurer.policies p {J} "
     "WHERE c.age > 40", "reads a side of a FULL JOIN"),
    (f"SELECT SUM(c.age + p.premium) FROM bank.customers c FULL JOIN insurer.policies p {J}",
     "adds columns of both sides"),
    (f"SELECT MEDIAN(p.premium) FROM bank.customers c FULL JOIN insurer.policies p {J}",
     "not supported"),
    ("SELECT COUNT(*) FROM bank.customers c LEFT JOIN insurer.policies p ON c.customer_id "
     "= p.customer_id JOIN payments.accounts a ON a.customer_id = c.customer_id",
     "LEFT JOIN"),
])
def test_outer_join_refusals_name_the_construct(sql: str, words: str) -> None:
    fed = load_federation(DEMO / "federation.toml")
    with warnings.catch_warnings(), pytest.raises(QueryError) as info:
        warnings.simplefilter("ignore")
        compile_plan(sql, fed, epsilon=1.0, delta=1e-6)
    assert words in info.value.message


def _lengths(fed: Path, out: Path, sql: str) -> Counter:
    """The multiset of ``(receiver, sender, payload length)`` of every data record a compute
    party received running ``sql``."""
    run_recorded(fed, out, sql)
    return received(out, ("bank", "payments", "insurer"))


@pytest.mark.parametrize("sql", [
    f"SELECT p.product, COUNT(*) AS n, SUM(c.income) AS s FROM insurer.policies p "
    f"LEFT JOIN bank.customers c {J} GROUP BY p.product",
    f"SELECT COUNT(*) AS n, SUM(c.income) AS s, COUNT(p.premium) AS k FROM insurer.policies "
    f"p FULL JOIN bank.customers c {J}",
], ids=["left", "full"])
def test_outer_join_adds_the_same_lengths_for_neighbouring_federations(
        tmp_path: Path, sql: str) -> None:
    # The attack: a compute party compares what the outer join adds to the inner join's
    # messages with and without one person the bank lacks (an unmatched policy holder).
    inner = sql.replace("LEFT JOIN", "JOIN").replace("FULL JOIN", "JOIN")
    first = oracle_federation(DEMO, tmp_path / "a")
    second = oracle_federation(DEMO, tmp_path / "b")
    con = union_connection(load_federation(first))
    lone, = plain(con, "SELECT MIN(customer_id) FROM insurer.policies p WHERE NOT EXISTS "
                       "(SELECT 1 FROM bank.customers c WHERE p.customer_id = "
                       "c.customer_id)")[0]
    con.close()
    csv = tmp_path / "b" / "data" / "insurer" / "policies.csv"
    lines = csv.read_text().splitlines()
    kept = [lines[0]] + [ln for ln in lines[1:] if not ln.startswith(f"{lone},")]
    assert len(kept) == len(lines) - 1
    csv.write_text("\n".join(kept) + "\n")
    added = []
    for i, fed in enumerate((first, second)):
        outer = _lengths(fed, tmp_path / f"o{i}", sql)
        plain_join = _lengths(fed, tmp_path / f"i{i}", inner)
        assert not plain_join - outer  # the outer join sends everything the inner one does
        added.append(outer - plain_join)
    assert added[0] and added[0] == added[1]
    assert any(f == "insurer" for _, f, _ in added[0])  # the insurer's own-total shares
