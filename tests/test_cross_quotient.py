"""MIN, MAX and quantiles of a quotient across parties (issue #14): ``MAX(a.f / (b.g * b.g +
1))``.

Each bucket test ``N / D >= e`` is ``s (N - e D) >= 0`` on shares, ``s`` the sign of ``D``'s
declared bounds, as an exact integer: ``N`` and ``D`` shared in their own digits and
multiplied by public integers (``rewrite/cross_quotient.py``). Oracle: at a huge epsilon,
DuckDB's answer on the union of the parties' tables lies in the bucket the secure histogram
reports (so within one bucket width), for a positive and a negative divisor, a numerator
of two parties' parts, three parties, NULL parts (a row with a NULL part is in no bucket),
beside sums and products of the peer's query (whose one-value buckets give DuckDB's answer
exactly). Refusals: a divisor whose bounds hold 0 (naming them), a divisor of several
parties, a sum of a quotient and another party's column, tests beyond the ring's range. An
attack check: a compute party's message lengths do not change with one person's values.
"""

from __future__ import annotations

import decimal
import random
import warnings
from collections import Counter
from fractions import Fraction
from functools import partial
from pathlib import Path

import pytest
from adversarial.test_transcript_scan import records_of
from click.testing import CliRunner
from oracle import (
    local_federation,
    oracle_pair,
    plain,
    run_huge,
    union_connection,
    write_unit_table,
)
from test_oracle import check_statistics

import veilql
from veilql.cli import main
from veilql.engine.plan.nodes import Buckets
from veilql.engine.rewrite import compile_plan
from veilql.engine.rewrite.cross_quotient import scaled_coefficients
from veilql.engine.transport.base import HEARTBEAT_TAG
from veilql.errors import QueryError, UnsupportedError
from veilql.policies.loader import load_federation

PEOPLE = 40
PARTIES = ("alice", "bob", "carol")
FEDERATION = local_federation("quotients", PARTIES)
POLICIES = {
    "alice": """
f = { role = "value", bounds = [0, 100], decimals = 2 }
i = { role = "value", bounds = [0, 20] }
big = { role = "value", bounds = [0, 1000000000000], decimals = 2 }
""",
    "bob": """
g = { role = "value", bounds = [0, 3], decimals = 1 }
i = { role = "value", bounds = [0, 20] }
f = { role = "value", bounds = [0, 10], decimals = 1 }
f2 = { role = "value", bounds = [0, 50], decimals = 2 }
n = { role = "value", bounds = [-4, -1] }
z = { role = "value", bounds = [0, 5] }
wide = { role = "value", bounds = [1, 1000000], decimals = 2 }
""",
    "carol": """
h = { role = "value", bounds = [1, 4] }
c = { role = "value", bounds = [0, 9] }
""",
}
J2 = "FROM alice.t AS alice JOIN bob.t AS bob ON alice.unit = bob.unit"
J3 = f"{J2} JOIN carol.t AS carol ON carol.unit = alice.unit"
#: the peer's acceptance query: two quotients' MIN and MAX beside a sum, a difference and
#: a product, in one SELECT
PEER = (f"SELECT MAX(alice.f / (bob.g * bob.g + 1)) AS qmax, MIN(alice.f / (bob.g * bob.g + "
        f"1)) AS qmin, MAX(alice.i + bob.i) AS s, MAX(alice.f - bob.f2) AS d, "
        f"MAX(alice.f * bob.f) AS p {J2}")
QUERIES = [
    # a negative divisor (the test flips), a numerator of two parties, three parties
    f"SELECT MIN(alice.f / bob.n) AS lo, MEDIAN((alice.i - carol.c) / (bob.g + 1)) AS md, "
    f"QUANTILE_CONT(bob.f / carol.h, 0.75) AS q {J3}",
    f"SELECT MAX((alice.i + bob.i) / carol.h) AS mx, QUANTILE_DISC(alice.f / (bob.n - 1), "
    f"0.2) AS qd {J3}",
    f"SELECT MAX(alice.f / (bob.g + 0.5)) FILTER (WHERE alice.i > 5) AS mx, "
    f"MEDIAN(-alice.f / (carol.h * carol.h)) AS md {J3} WHERE bob.i < 15",
]


def _rand(i: int, k: int) -> int:
    return (i * 2654435761 + 31) % 1000003 % k


def build(root: Path, change: bool = False) -> Path:
    """The three parties' tables under ``root`` (one row per person, some NULL parts);
    with ``change``, person 3's values moved and person 5's divisors NULL."""
    (root / "data").mkdir(parents=True)
    (root / "policies").mkdir()
    (root / "federation.toml").write_text(FEDERATION)
    types = {"alice": "f DECIMAL(6,2), i INTEGER, big DECIMAL(18,2)",
             "bob": "g DECIMAL(3,1), i INTEGER, f DECIMAL(4,1), f2 DECIMAL(5,2), n INTEGER, "
                    "z INTEGER, wide DECIMAL(10,2)",
             "carol": "h INTEGER, c INTEGER"}
    for party in PARTIES:
        (root / "policies" / f"{party}.toml").write_text(
            f'[tables.t]\nprivacy_unit = "unit"\nmax_rows_per_unit = 1\n\n[tables.t.columns]\n'
            f'unit = {{ role = "key" }}{POLICIES[party]}')
        rows = []
        for u in range(1, PEOPLE + 1):
            r = u * 7 + len(party)
            if party == "alice":
                row = (None if _rand(r, 9) == 0 else _rand(r, 10001) / 100, _rand(r, 21),
                       _rand(r, 10**6) * 1000.5)
            elif party == "bob":
                row = (None if _rand(r, 7) == 0 else _rand(r, 31) / 10, _rand(r * 3, 21),
                       _rand(r * 5, 101) / 10, _rand(r * 11, 5001) / 100,
                       -1 - _rand(r * 13, 4), _rand(r, 6), 1 + _rand(r, 999))
            else:
                row = (1 + _rand(r, 4), _rand(r * 3, 10))
            if change and party == "alice" and u == 3:
                row = (100.0, 20, 0.0)
            if change and party == "bob" and u == 5:
                row = (None, *row[1:4], None, *row[5:])
            if _rand(u * 5 + len(party), 10) != 0 or u in (3, 5):  # not everyone everywhere
                rows.append((u, *row))
        write_unit_table(root / "data" / f"{party}.duckdb", types[party], rows)
    return root / "federation.toml"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory):
    yield from oracle_pair(build(tmp_path_factory.mktemp("cross_quotient")))


_run = partial(run_huge, delta=1e-6)


def _bucket(buckets: Buckets, value: float) -> int:
    """The bucket holding ``value``: the number of inner edges at or below it."""
    return sum(decimal.Decimal(e) <= decimal.Decimal(repr(float(value)))
               for e in buckets.edges())


def _check(result: veilql.Result, want: list[tuple]) -> None:
    """DuckDB's answer within one bucket width, and each MIN and MAX in the very bucket
    the secure histogram reported (the bucket tests are exact)."""
    check_statistics(result, want)
    for spec, got, w in zip(result.plan.outputs, result.rows[0], want[0], strict=True):
        if spec.stat in ("min", "max") and w is not None:
            assert _bucket(spec.buckets, got) == _bucket(spec.buckets, w), (spec.name, got, w)


def test_peer_query_equals_duckdb(fed) -> None:
    """Every output within one bucket of DuckDB's, each MIN and MAX in its bucket, the
    sum (one value per bucket) exactly; the quotient's MIN and MAX share one histogram.
    Rows with a NULL part are in no bucket: counted with ``bob.g`` as 0 (what an operand
    reads a NULL as), the rows where only ``bob.g`` is NULL would raise the quotient's MAX
    to ``alice.f`` itself, beyond DuckDB's bucket."""
    session, con = fed
    result = _run(session, PEER)
    want = plain(con, PEER)
    _check(result, want)
    specs = {o.name: o for o in result.plan.outputs}
    assert specs["qmax"].aggregates == specs["qmin"].aggregates
    (as_zero,), = plain(con, f"SELECT MAX(alice.f) {J2} WHERE bob.g IS NULL")
    assert _bucket(specs["qmax"].buckets, as_zero) > _bucket(specs["qmax"].buckets, want[0][0])
    exact = [n for n in ("s", "d", "p") if specs[n].buckets.per == 1]
    assert "s" in exact  # alice.i + bob.i: 41 values
    for name in exact:
        i = result.columns.index(name)
        assert float(result.rows[0][i]) == float(want[0][i]), name


@pytest.mark.slow  # the default suite has the peer's query and the neighbours' test's
@pytest.mark.parametrize("sql", QUERIES, ids=[f"q{i}" for i in range(len(QUERIES))])
def test_quotients_equal_plain_duckdb(fed, sql: str) -> None:
    session, con = fed
    _check(_run(session, sql), plain(con, sql))


def test_scaled_comparison_is_exact() -> None:
    """``c_N N' + c_D D'`` has the sign of ``N - e D`` for every edge and digits: checked
    with exact fractions on random and borderline values (``N = e D`` gives 0)."""
    rng = random.Random(14)
    for _ in range(2000):
        a, b, c = rng.randrange(7), rng.randrange(7), rng.randrange(7)
        edge = decimal.Decimal(rng.randrange(-10**6, 10**6)).scaleb(-c)
        n_int, d_int = rng.randrange(-10**7, 10**7), rng.randrange(1, 10**7)
        if rng.random() < 0.2:  # N = e D exactly, when representable in a digits
            exact = Fraction(edge) * Fraction(d_int, 10**b) * 10**a
            if exact.denominator == 1:
                n_int = int(exact)
        c_n, c_d, k = scaled_coefficients(str(edge), a, b)
        truth = Fraction(n_int, 10**a) - Fraction(edge) * Fraction(d_int, 10**b)
        assert c_n * n_int + c_d * d_int == truth * 10**k


def test_bucket_tests_are_scaled_integers(fed) -> None:
    """``veil explain`` shows each party's operand in its own digits and the scaled test
    (alice.f in 2 digits, bob's divisor g * g + 1 in 2, the first edge 1.562505:
    10^8 (N - 1.562505 D) = 10^6 N' - 1562505 D')."""
    session, _ = fed
    plan = compile_plan(f"SELECT MAX(alice.f / (bob.g * bob.g + 1)) AS m {J2}",
                        session.federation, epsilon=1.0, delta=1e-6)
    first = next(a for a in plan.aggregates if a.name == "m.b0")
    assert first.cross.sql().startswith("1000000 * alice.o0 + -1562505 * bob.o0 < 0")
    res = CliRunner().invoke(main, ["explain", "-f", str(session.federation.root /
                                                         "federation.toml"),
                                    f"SELECT MAX(alice.f / (bob.g * bob.g + 1)) AS m {J2}"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    # each operand clamped to its declared interval at its owner: exact, inside the ring
    assert ("o0 (operand) = CASE WHEN (alice.f) < 0 THEN 0 WHEN (alice.f) > 100 THEN 100 "
            "ELSE (alice.f) END x10^2") in res.stdout
    assert "1000000 * alice.o0 + -1562505 * bob.o0 < 0" in res.stdout
    assert "64 buckets" in res.stdout


@pytest.mark.parametrize(("sql", "error", "words"), [
    (f"SELECT MAX(alice.f / bob.z) AS m {J2}", UnsupportedError, "bounds [0, 5] include 0"),
    (f"SELECT MAX(alice.f / (bob.g + carol.h)) AS m {J3}", UnsupportedError,
     "a quotient by several parties' columns"),
    (f"SELECT MIN(alice.f / bob.n + carol.h) AS m {J3}", UnsupportedError,
     "a quotient by several parties' columns"),
    (f"SELECT MAX(alice.big / bob.wide) AS m {J2}", QueryError,
     "beyond the ring's safe range"),
])
def test_refusals_name_the_construct(fed, sql: str, error: type, words: str) -> None:
    session, _ = fed
    with pytest.raises(error) as info:
        compile_plan(sql, session.federation, epsilon=1.0, delta=1e-6)
    assert words in info.value.message


def _lengths(fed: Path, out: Path, sql: str) -> tuple[Counter, veilql.Result, list]:
    """``(receiver, sender, payload length)`` of every data record a compute party got,
    the result (at a huge epsilon) and DuckDB's on the union."""
    mp = pytest.MonkeyPatch()
    mp.setenv("VEIL_TRANSCRIPT_DIR", str(out))
    try:
        with veilql.connect(fed, analyst="oracle") as session:
            result = _run(session, sql)
            con = union_connection(session.federation)
            want = plain(con, sql)
            con.close()
    finally:
        mp.undo()
    # heartbeats (empty, one per third of the timeout) follow the clock, not the data
    return Counter((to, f, len(p)) for to in PARTIES for f, k, tag, p in records_of(
        out / f"{to}.bin") if k == "data" and tag != HEARTBEAT_TAG), result, want


def test_message_lengths_do_not_depend_on_a_persons_values(tmp_path: Path) -> None:
    """Three parties, a negative divisor (each test flipped), a numerator of two parties'
    parts: both federations' answers are DuckDB's (within a bucket, the MIN in its own),
    and every compute party receives messages of the same lengths."""
    # The attack: a compute party compares its received messages between two federations
    # that differ only in one person's values (moved to the lowest bucket) and another's
    # divisor (made NULL), hoping a bucket's work shows where the row fell.
    sql = f"SELECT MIN((alice.i - carol.c) / bob.n) AS lo {J3}"
    one, result, want = _lengths(build(tmp_path / "a"), tmp_path / "o1", sql)
    _check(result, want)
    two, result, other = _lengths(build(tmp_path / "b", change=True), tmp_path / "o2", sql)
    _check(result, other)
    assert want != other  # the person moved the MIN
    assert one and one == two


def test_plan_depends_on_policies_only(tmp_path: Path) -> None:
    """The buckets' digits and the coefficients come from declared bounds: other rows give
    the same plan, word for word."""
    sql = f"SELECT MIN(alice.f / bob.n) AS n {J2}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = compile_plan(sql, load_federation(build(tmp_path / "a")), epsilon=1.0,
                         delta=1e-6)
        b = compile_plan(sql, load_federation(build(tmp_path / "b", change=True)),
                         epsilon=1.0, delta=1e-6)
    assert a.to_s() == b.to_s()
