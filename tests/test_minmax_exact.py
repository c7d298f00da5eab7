"""MIN/MAX compared after release, with one bucket per value (issue #14).

The peer's federation: ``alice.t`` and ``bob.t`` joined on the unit ``u``, ints ``i`` in
[0, 10000] (10,001 values) and floats ``f``/``f1`` in [-100, 100] at 2 decimals (20,001
values), some NULL, some outside the bounds (clamped), a group column ``g`` at alice. A MIN
or MAX that a comparison reads is planned as a histogram of one bucket per value (one
bucket-index column at its owner, one noisy count per bucket and cell in one family,
``rewrite/histogram.plan_exact``), so at a huge epsilon the MIN/MAX are DuckDB's and the
comparisons too; a MIN/MAX nothing compares keeps its 64 buckets.
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import duckdb
import pytest
from lengths import received, run_recorded
from oracle import HUGE_EPSILON, plain, union_connection

import veilql
from veilql.engine.plan.nodes import BUCKET_INDEX_PREFIX
from veilql.engine.rewrite import compile_plan
from veilql.errors import UnsupportedError
from veilql.policies.loader import load_federation

pytestmark = pytest.mark.filterwarnings("ignore::veilql.engine.dp.LargeEpsilonWarning")

PEOPLE = 120
FEDERATION = """\
[federation]
name = "peer"
policies = "policies"

[[party]]
name = "alice"
address = "local"
connector = "duckdb:data/alice.duckdb"

[[party]]
name = "bob"
address = "local"
connector = "duckdb:data/bob.duckdb"

[[party]]
name = "carol"
address = "local"
connector = "duckdb:data/carol.duckdb"

[analyst.oracle]
epsilon = 1e15
delta = 0.5
"""
POLICY = """\
[tables.t]
privacy_unit = "u"
max_rows_per_unit = 2

[tables.t.columns]
u = {{ role = "key" }}
i = {{ role = "value", bounds = [0, 10000] }}
f = {{ role = "value", bounds = [-100, 100], decimals = 2 }}
{extra}
"""
EXTRA = {"alice": 'g = { role = "group", values = ["p", "q"] }\n'
                  'w = { role = "value", bounds = [0, 1000000] }',
         "bob": 'f1 = { role = "value", bounds = [-100, 100], decimals = 2 }'}


def build(root: Path, move: int | None = None) -> Path:
    """The two parties' tables under ``root``; ``move``: that person's values at alice are
    moved to the top of the bounds (a neighbouring federation's other values)."""
    (root / "policies").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "federation.toml").write_text(FEDERATION)
    for party, salt in (("alice", 7), ("bob", 13)):
        (root / "policies" / f"{party}.toml").write_text(POLICY.format(extra=EXTRA[party]))
        con = duckdb.connect(str(root / "data" / f"{party}.duckdb"))
        try:
            more = ", g VARCHAR, w BIGINT" if party == "alice" else ", f1 DOUBLE"
            con.execute(f"CREATE TABLE t (u BIGINT, i INTEGER, f DOUBLE{more})")
            # two rows per person at alice, one at bob; NULLs, repeats, f past its bounds
            rows = [(u, r) for u in range(1, PEOPLE + 1)
                    for r in range(2 if party == "alice" else 1)]
            for u, r in rows:
                i = None if (u + r) % 9 == 0 else (u * 7919 * salt + r * 104729) % 10001
                f = None if (u * salt + r) % 11 == 0 else round(
                    ((u * 37 * salt + r * 3) % 20401) / 100.0 - 102, 2)
                if party == "alice":
                    con.execute("INSERT INTO t VALUES (?, ?, ?, ?, ?)",
                                [u, i, f, "pq"[u % 2], u * 1000])
                else:
                    f1 = round(((u * 53 + 11) % 19001) / 100.0 - 95, 2)
                    con.execute("INSERT INTO t VALUES (?, ?, ?, ?)", [u, i, f, f1])
            if move is not None and party == "alice":
                con.execute("UPDATE t SET i = 10000, f = 100 WHERE u = ?", [move])
        finally:
            con.close()
    # the third compute party (holds a table the queries do not read)
    (root / "policies" / "carol.toml").write_text(
        '[tables.c]\nprivacy_unit = "u"\nmax_rows_per_unit = 1\n\n[tables.c.columns]\n'
        'u = { role = "key" }\n')
    con = duckdb.connect(str(root / "data" / "carol.duckdb"))
    try:
        con.execute("CREATE TABLE c AS SELECT range AS u FROM range(1, 10)")
    finally:
        con.close()
    return root / "federation.toml"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("minmax_exact"))


J = "FROM alice.t AS alice JOIN bob.t AS bob ON alice.u = bob.u"


def _clamped(column: str) -> str:
    # DuckDB's GREATEST skips NULLs, so a NULL stays NULL by the CASE
    return (f"CASE WHEN {column} IS NULL THEN NULL ELSE LEAST(GREATEST({column}, -100), 100) "
            "END" if ".f" in column else column)


def _peer(agg: str, *, plainly: bool = False) -> str:
    """The peer's query with ``agg`` (MAX or MIN); ``plainly``: DuckDB's, floats clamped."""
    c = _clamped if plainly else (lambda x: x)
    return (f"SELECT {agg}({c('alice.i')}) > {agg}({c('bob.i')}) AS r0, "
            f"{agg}({c('alice.f')}) < {agg}({c('bob.f1')}) AS r1, "
            f"{agg}({c('alice.i')}) >= {agg}({c('bob.f')}) AS r2, "
            f"{agg}({c('alice.f')}) <= {agg}({c('bob.f')}) AS r3, "
            f"{agg}({c('alice.i')}) AS ai, {agg}({c('bob.f')}) AS bf, "
            f"{agg}({c('alice.f')}) AS af, {agg}({c('bob.f1')}) AS bf1 {J}")


def _run(fed: Path, sql: str, reference: str) -> tuple[list, list]:
    with veilql.connect(fed, "oracle") as session, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = session.sql(sql, epsilon=HUGE_EPSILON, delta=0.0).rows  # pure: fast calibration
        want = plain(union_connection(session.federation), reference)
    return [list(r) for r in got], [list(r) for r in want]


def _same(got: list, want: list) -> None:
    assert len(got) == len(want)
    for g, w in zip(sorted(got, key=str), sorted(want, key=str), strict=True):
        assert len(g) == len(w)
        for a, b in zip(g, w, strict=True):
            if isinstance(b, float) and a is not None:
                assert a == pytest.approx(b, abs=1e-9), (g, w)
            else:
                assert a == b, (g, w)


def test_local_grouped_with_nulls_equals_plain_duckdb(fed: Path) -> None:
    # one party: its engine reduces the (cell, bucket) counts in one GROUP BY; i has NULLs
    sql = ("SELECT alice.g, MAX(alice.i) > 9950 AS big, MIN(alice.i) <= 30 AS low, "
           "MAX(alice.i) AS m, MIN(alice.i) AS n FROM alice.t AS alice GROUP BY alice.g")
    got, want = _run(fed, sql, sql)
    _same(got, want)
    assert {r[3] for r in got} != {10000} and {r[4] for r in got} != {0}  # not the bounds


@pytest.mark.slow
def test_local_floats_and_filter_equal_plain_duckdb(fed: Path) -> None:
    sql = ("SELECT alice.g, MIN(alice.f) <= -99.5 AS low, MIN(alice.f) AS n, "
           "MAX(alice.i) FILTER (WHERE alice.f > 0) < 9990 AS fm, "
           "MAX(alice.i) FILTER (WHERE alice.f > 0) AS fmv FROM alice.t AS alice "
           "GROUP BY alice.g")
    reference = sql.replace("MIN(alice.f)", f"MIN({_clamped('alice.f')})").replace(
        "alice.f > 0", f"{_clamped('alice.f')} > 0")
    got, want = _run(fed, sql, reference)
    _same(got, want)


def test_across_parties_equals_plain_duckdb(fed: Path) -> None:
    # two owners' histograms, each shared as two one-hot digits of its bucket index
    sql = (f"SELECT MAX(alice.i) > MAX(bob.i) AS r0, MIN(alice.i) <= MIN(bob.i) AS r1, "
           f"MAX(alice.i) AS a, MAX(bob.i) AS b, MIN(bob.i) AS c {J}")
    got, want = _run(fed, sql, sql)
    _same(got, want)


@pytest.mark.slow
def test_peer_max_query_across_parties_equals_plain_duckdb(fed: Path) -> None:
    got, want = _run(fed, _peer("MAX"), _peer("MAX", plainly=True))
    _same(got, want)


@pytest.mark.slow
def test_peer_min_query_across_parties_equals_plain_duckdb(fed: Path) -> None:
    got, want = _run(fed, _peer("MIN"), _peer("MIN", plainly=True))
    _same(got, want)


def test_plan_has_one_bucket_per_value_only_where_compared(fed: Path) -> None:
    federation = load_federation(fed)
    sql = f"SELECT MAX(alice.i) > MAX(bob.f) AS r, MAX(alice.f) AS shown {J}"
    plan = compile_plan(sql, federation, epsilon=1.0, delta=1e-6)
    index = [c for c in plan.step("alice").columns if c.role == "group"
             and c.name.startswith(BUCKET_INDEX_PREFIX)]
    assert len(index) == 1 and "10000" in index[0].sql
    assert len([c for c in plan.step("bob").columns if c.role == "group"
                and c.name.startswith(BUCKET_INDEX_PREFIX)]) == 1
    families = Counter(a.family for a in plan.aggregates if a.family)
    # alice.i: 10,001 values, bob.f: 20,001 values, one bucket each; the MAX nothing
    # compares keeps its 64 buckets (as before)
    assert sorted(families.values()) == [64, 10001, 20001]
    hidden = {o.name: o for o in plan.hidden}
    assert {o.buckets.count for o in hidden.values()} == {10001, 20001}
    assert all(o.buckets.per == 1 for o in hidden.values())
    text = plan.to_s()
    assert "COUNT(rows WHERE alice.h0 = " in text and "COUNT(rows WHERE bob.h0 = " in text


@pytest.mark.parametrize(("sql", "words"), [
    ("SELECT MAX(alice.w) > 5 AS r FROM alice.t AS alice", "exact up to 100,000 values"),
    (f"SELECT MAX(alice.i + bob.i) > 5 AS r {J}", "MIN or MAX of one party's expression"),
    ("SELECT MEDIAN(alice.i) > 5 AS r FROM alice.t AS alice", "exact up to 100,000"),
    ("SELECT alice.g, MAX(alice.i) AS m FROM alice.t AS alice GROUP BY alice.g "
     "HAVING m > 10", None),  # accepted: HAVING by its alias
])
def test_refusals_name_the_limit(fed: Path, sql: str, words: str | None) -> None:
    federation = load_federation(fed)
    if words is None:
        plan = compile_plan(sql, federation, epsilon=1.0, delta=1e-6)
        assert any(o.buckets and o.buckets.count == 10001 for o in plan.outputs)
        return
    with pytest.raises(UnsupportedError, match=words):
        compile_plan(sql, federation, epsilon=1.0, delta=1e-6)


def test_bucket_counts_above_the_cap_are_refused(fed: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from veilql.engine.rewrite import histogram

    monkeypatch.setattr(histogram, "MAX_EXACT_COUNTS", 15_000)
    sql = ("SELECT alice.g, MAX(alice.i) > 5 AS r FROM alice.t AS alice GROUP BY alice.g")
    with pytest.raises(UnsupportedError, match="20,002 noisy bucket counts, more than 15,000"):
        compile_plan(sql, load_federation(fed), epsilon=1.0, delta=1e-6)
    monkeypatch.setattr(histogram, "MAX_SECURE_EXACT_COUNTS", 15_000)
    sql = f"SELECT alice.g, MAX(alice.i) > 5 AS r {J} GROUP BY alice.g"
    with pytest.raises(UnsupportedError, match="across parties in 2 group cells: 20,002"):
        compile_plan(sql, load_federation(fed), epsilon=1.0, delta=1e-6)


def _lengths(fed: Path, out: Path, sql: str) -> Counter:
    """``(receiver, sender, payload length)`` of every data record a compute party got
    (heartbeats left out: they follow the clock)."""
    run_recorded(fed, out, sql, delta=0.0)
    return received(out, ("alice", "bob", "carol"))


def test_message_lengths_do_not_depend_on_a_persons_values(tmp_path: Path) -> None:
    # The attack: a compute party compares its received messages between two federations
    # that differ only in one person's values (moved to the highest bucket), hoping the
    # shared digits or the counts show which buckets hold rows.
    sql = f"SELECT MAX(alice.i) > 5000 AS r, COUNT(*) AS n {J}"
    one = _lengths(build(tmp_path / "a"), tmp_path / "o1", sql)
    two = _lengths(build(tmp_path / "b", move=5), tmp_path / "o2", sql)
    assert one and one == two
