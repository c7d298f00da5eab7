"""Bounded memory (issue 17, item 2): every chunked path gives what the unchunked one gives.

Each piece is run on the same data at several chunk sizes, including a chunk of one word or
row and prime ones, against the whole-array computation: the pivot, the factors, sharing,
the shuffle (and its permutation), the secure sum, whole queries (secure, with a fourth
data-only party, a cached repeat), the local mode's reduction in the party's engine against
the pivot-and-numpy one, and the sample generator's chunks.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import duckdb
import numpy as np
import pytest
from oracle import HUGE_EPSILON, oracle_federation

import veilql
import veilql.engine.node as node_module
from veilql.engine.dp import LargeEpsilonWarning
from veilql.engine.mpc.prg import Prg
from veilql.engine.mpc.protocols import shuffle as shuffle_module
from veilql.engine.mpc.testing import run_three
from veilql.engine.node import PartyNode
from veilql.engine.operators import factors as fac
from veilql.engine.operators.aggregate import secure_sum
from veilql.engine.operators.local import fetch, pivot
from veilql.engine.operators.local_mode import aggregate_plain, local_aggregate
from veilql.engine.rewrite import compile_plan
from veilql.policies.loader import load_federation

pytestmark = pytest.mark.filterwarnings("ignore::veilql.engine.dp.LargeEpsilonWarning")

DEMO = Path(__file__).resolve().parent.parent / "sample_data" / "demo"
RNG = np.random.default_rng(17)
U64 = np.uint64
CHUNKS = (1, 7, 13, 1 << 30)  # one word, primes, everything at once


# -- the pivot and the factors --------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1, 3, 7, 1 << 20])
def test_pivot_in_chunks_equals_the_reference(chunk: int) -> None:
    units = RNG.integers(0, 40, 200)
    values = RNG.integers(-5, 50, 200)
    units[units == 3] = 4  # a gap in the keys
    slots = int(np.bincount(units).max())
    rows = pivot({"__unit": units, "v": values}, ["v"], slots, chunk=chunk)
    assert rows.keys.tolist() == sorted(set(units.tolist()))
    for i, key in enumerate(rows.keys.tolist()):
        mine = sorted(values[units == key].tolist())
        assert sorted(rows.cols["v"][i][rows.present[i]].tolist()) == mine
        assert rows.present[i].sum() == len(mine)
        assert (rows.cols["v"][i][~rows.present[i]] == 0).all()


def test_pivot_of_text_keys_and_nulls() -> None:
    units = np.array(["b", "a", "b", "c"], dtype=object)
    vals = np.array([1, None, 3, 4], dtype=object)
    rows = pivot({"__unit": units, "v": vals}, ["v"], 2, chunk=1)
    assert rows.keys.tolist() == ["a", "b", "c"]
    assert rows.cols["v"].sum(axis=1).tolist() == [0, 4, 4]


def _demo_plan(sql: str):  # type: ignore[no-untyped-def]
    fed = load_federation(DEMO / "federation.toml")
    return fed, compile_plan(sql, fed, epsilon=HUGE_EPSILON, delta=0)


FACTOR_SQL = [
    "SELECT c.region, COUNT(*) AS n, SUM(l.amount) AS s, COUNT(DISTINCT l.customer_id) AS d "
    "FROM bank.customers c JOIN bank.loans l ON c.customer_id = l.customer_id "
    "JOIN insurer.policies p ON p.customer_id = c.customer_id GROUP BY c.region",
    "SELECT COUNT(DISTINCT l.customer_id) AS people FROM bank.loans l "
    "JOIN insurer.policies p ON l.customer_id = p.customer_id WHERE l.amount > p.claims_amount",
]


@pytest.mark.parametrize("sql", FACTOR_SQL, ids=["grouped", "cross"])
def test_factors_in_chunks_equal_all_at_once(sql: str, tmp_path: Path) -> None:
    fed, plan = _demo_plan(sql)
    node = PartyNode(fed, "bank", log=lambda line: None)
    rows = fetch(plan.step("bank"), node.connector, "ab" * 16)
    chains, _ = fac.expand_terms(plan)
    level = plan.cross is not None
    whole = fac.build_factors(plan, "bank", rows, chains, slot_level=level)
    for chunk in (1, 7, 997, rows.units):
        part = fac.build_factors(plan, "bank", rows, chains, slot_level=level, chunk_rows=chunk)
        assert np.array_equal(part, whole), chunk
    node.close()


# -- sharing, shuffle, secure sum -------------------------------------------------------
@pytest.mark.parametrize("words", CHUNKS)
def test_sharing_in_chunks_reconstructs_the_values(words: int) -> None:
    n = 23
    x = RNG.integers(-(2**40), 2**40, (n, 2, 3))
    bits = RNG.integers(0, 2, (n, 5), dtype=np.uint8)

    def prog(rt, xv, bv):  # type: ignore[no-untyped-def]
        rt.chunk_words = words
        before = rt.rounds
        a = rt.share(0, xv, x.shape)
        b = rt.share(2, bv, bits.shape, boolean=True, dtype=np.uint8)
        return rt.open(a), rt.open(b), rt.rounds - before

    (a, b, rounds), *_ = run_three(prog, [x, None, None], [None, None, bits])
    assert (a.view(np.int64) == x).all() and (b == bits).all()
    if words >= x.size:
        assert rounds == 2 + 2  # one round per sharing, as without chunks, and two opens


def _shuffle_check(words: int, consume: bool) -> None:
    n = 31
    ids = RNG.permutation(n).astype(U64) * U64(1000003) + U64(1)
    wide = RNG.integers(0, 2**64, (n, 2, 3), dtype=U64)
    flags = RNG.integers(0, 2, (n, 3), dtype=np.uint8)

    def prog(rt, iv, wv, fv):  # type: ignore[no-untyped-def]
        rt.chunk_words = words
        a = rt.share(0, iv, n)
        w = rt.share(1, wv, wide.shape)
        f = rt.share(2, fv, flags.shape, boolean=True, dtype=np.uint8)
        cols = [a, w, f, a]  # a column twice: consuming must not overwrite it in place twice
        out = rt.shuffle(cols, consume=consume)
        assert not consume or cols == []
        return [rt.open(c) for c in out]

    si, sw, sf, si2 = run_three(prog, [ids, None, None], [None, wide, None],
                                [None, None, flags])[0]
    assert (si == si2).all()
    pos = {int(k): i for i, k in enumerate(ids.tolist())}
    src = np.array([pos[int(k)] for k in si.tolist()], dtype=np.int64)
    assert sorted(src.tolist()) == list(range(n)) and src.tolist() != list(range(n))
    assert (sw == wide[src]).all() and (sf == flags[src]).all()


@pytest.mark.parametrize("words", CHUNKS)
@pytest.mark.parametrize("consume", [False, True])
def test_shuffle_in_chunks_keeps_rows_aligned(words: int, consume: bool) -> None:
    _shuffle_check(words, consume)


class _TiedKeys:
    """A stand-in PRG whose first keys tie in their top bits (to test the tie-break)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.calls: list[str] = []

    def array(self, purpose: str, label: str, shape, dtype=U64):  # type: ignore[no-untyped-def]
        self.calls.append(label)
        count = shape if isinstance(shape, int) else int(np.prod(shape))
        if label.endswith("/ties"):
            return Prg(bytes(16)).array(purpose, label, count)
        keys = np.full(count, U64(12345) << U64(40), dtype=U64)  # all top bits equal
        keys[::2] += U64(1) << U64(50)  # two runs of ties
        return keys


def test_permutation_breaks_ties_with_fresh_keys() -> None:
    prg = _TiedKeys(9)
    perm = shuffle_module.permutation(prg, "t", 9)  # type: ignore[arg-type]
    assert sorted(perm.tolist()) == list(range(9))
    assert any(label.endswith("/ties") for label in prg.calls)
    # the odd rows (smaller top bits) come first, each run in the fresh keys' order
    assert sorted(perm[:4].tolist()) == [1, 3, 5, 7] and sorted(perm[4:].tolist()) == [0, 2,
                                                                                      4, 6, 8]


def test_permutation_is_the_order_of_its_keys() -> None:
    for n in (0, 1, 2, 5, 1000):
        a = shuffle_module.permutation(Prg(bytes(16)), "x", n)
        b = shuffle_module.permutation(Prg(bytes(16)), "x", n)
        assert sorted(a.tolist()) == list(range(n)) and (a == b).all()


@pytest.mark.parametrize("words", CHUNKS)
def test_secure_sum_in_chunks_equals_the_plain_sum(words: int) -> None:
    n = 29
    f1 = RNG.integers(0, 5, (n, 2, 3, 2))
    f2 = RNG.integers(0, 2, (n, 1, 3, 4))
    crossv = RNG.integers(0, 2, (n, 2, 1))
    distinct = np.array([False, True, False])
    f1[:, :, 1] %= 2  # COUNT(DISTINCT) factors are 0/1 indicators
    f2[:, :, 1] %= 2

    def prog(rt, a, b, c):  # type: ignore[no-untyped-def]
        rt.chunk_words = words
        x = rt.share(0, a, f1.shape)
        y = rt.share(1, b, f2.shape)
        z = rt.share(2, c, crossv.shape)
        plain = secure_sum(rt, [x, y], None, distinct)
        cross = secure_sum(rt, [x, y], z, distinct)
        return rt.open(plain).view(np.int64), rt.open(cross).view(np.int64)

    plain, cross = run_three(prog, [f1, None, None], [None, f2, None], [None, None, crossv])[0]
    joint = f1[:, :, None, :, :, None] * f2[:, None, :, :, None, :]
    assert (plain == joint.sum(axis=(0, 1, 2)).reshape(3, -1)).all()
    weighted = joint * crossv[:, :, :, None, None, None]
    sums = weighted.sum(axis=(0, 1, 2)).reshape(3, -1)
    ored = (weighted > 0).any(axis=(1, 2)).sum(axis=0).reshape(3, -1)
    assert (cross[[0, 2]] == sums[[0, 2]]).all() and (cross[1] == ored[1]).all()


# -- whole queries ----------------------------------------------------------------------
QUERIES = [
    "SELECT COUNT(*) AS n, SUM(l.amount) AS total FROM bank.loans l "
    "JOIN insurer.policies p ON l.customer_id = p.customer_id WHERE p.open_claim = 1",
    "SELECT COUNT(DISTINCT l.customer_id) AS people, SUM(p.premium) AS prem FROM bank.loans l "
    "JOIN insurer.policies p ON l.customer_id = p.customer_id WHERE l.amount > p.claims_amount",
    "SELECT c.region, COUNT(*) AS n, SUM(l.amount) AS total FROM bank.customers c "
    "JOIN bank.loans l ON c.customer_id = l.customer_id "
    "JOIN payments.accounts a ON a.customer_id = c.customer_id "
    "JOIN insurer.policies p ON p.customer_id = c.customer_id "
    "WHERE a.monthly_txn_count > 10 AND p.open_claim = 1 GROUP BY c.region",
    "SELECT l.plan, COUNT(*) AS n, SUM(p.premium) AS prem FROM telco.lines l "
    "JOIN insurer.policies p ON l.customer_id = p.customer_id GROUP BY l.plan",
]
TELCO_POLICY = """\
[tables.lines]
privacy_unit = "customer_id"
max_rows_per_unit = 1

[tables.lines.columns]
customer_id = { role = "key" }
plan = { role = "group", values = ["basic", "plus", "max"] }
monthly_fee = { role = "value", bounds = [0, 200], decimals = 2 }
"""


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 400-person sample with a fourth, data-only party (telco), for chunks of one word."""
    from sample_data.generate import generate

    root = tmp_path_factory.mktemp("small")
    generate(root / "gen", people=400, seed=3)
    fed = oracle_federation(root / "gen", root / "fed")
    shutil.rmtree(root / "fed" / "ledgers", ignore_errors=True)
    con = duckdb.connect(str(root / "fed" / "data" / "telco.duckdb"))
    con.execute(f"ATTACH '{root / 'fed' / 'data' / 'bank.duckdb'}' AS bank (READ_ONLY)")
    con.execute("CREATE TABLE lines AS SELECT customer_id, CASE customer_id % 3 WHEN 0 THEN "
                "'basic' WHEN 1 THEN 'plus' ELSE 'max' END AS plan, CAST((customer_id * 7) "
                "% 60 + 9.99 AS DECIMAL(8,2)) AS monthly_fee FROM bank.customers "
                "WHERE customer_id % 4 <> 0")
    con.close()
    (root / "fed" / "policies" / "telco.toml").write_text(TELCO_POLICY)
    with fed.open("a") as fh:
        fh.write('\n[[party]]\nname = "telco"\naddress = "local"\n'
                 'connector = "duckdb:data/telco.duckdb"\n')
    return fed


def _answers(fed: Path, words: int, monkeypatch: pytest.MonkeyPatch) -> list[list]:
    monkeypatch.setattr(node_module, "chunk_words", lambda: words)
    out = []
    with veilql.connect(fed, "oracle") as session, warnings.catch_warnings():
        warnings.simplefilter("ignore", LargeEpsilonWarning)
        for sql in QUERIES:
            rows = session.sql(sql, epsilon=HUGE_EPSILON, delta=0).rows
            again = session.sql(sql, epsilon=HUGE_EPSILON, delta=0).rows  # cached join
            assert again == rows
            out.append(rows)
    return out


@pytest.mark.slow  # whole queries (30 s); the pivot, factor, sharing and shuffle chunk tests stay
def test_queries_in_chunks_equal_unchunked(small: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    want = _answers(small, 1 << 30, monkeypatch)
    assert all(want)
    for words in (1, 7):  # one word and a prime (the sharing and shuffle tests take 13 too)
        assert _answers(small, words, monkeypatch) == want, words


# -- local mode: the reduction in the party's engine ------------------------------------
LOCAL_SQL = [
    "SELECT COUNT(*) AS n FROM bank.customers",
    "SELECT region, COUNT(*) AS n, AVG(income) AS inc FROM bank.customers WHERE age > 40 "
    "GROUP BY region",
    "SELECT term_months, COUNT(DISTINCT customer_id) AS people, SUM(amount) AS s "
    "FROM bank.loans GROUP BY term_months",
    "SELECT c.region, COUNT(*) AS n, SUM(l.amount) AS total FROM bank.customers c "
    "JOIN bank.loans l ON c.customer_id = l.customer_id GROUP BY c.region",
    "SELECT branch, COUNT(*) AS n, AVG(income) AS inc FROM bank.customers GROUP BY branch",
    "SELECT segment, COUNT(*) AS n, SUM(monthly_txn_amount) AS s FROM payments.accounts "
    "WHERE monthly_txn_count > 10 GROUP BY segment",
    "SELECT product, AVG(premium) AS p, COUNT(DISTINCT customer_id) AS d "
    "FROM insurer.policies GROUP BY product",
]


@pytest.mark.parametrize("sql", LOCAL_SQL, ids=[f"l{i}" for i in range(len(LOCAL_SQL))])
def test_local_reduction_in_sql_equals_the_pivot(sql: str) -> None:
    fed = load_federation(DEMO / "federation.toml")
    plan = compile_plan(sql, fed, epsilon=1.0, delta=1e-6)
    assert plan.mode == "local"
    party = plan.parties[0]
    node = PartyNode(fed, party, log=lambda line: None)
    seed = "0123456789abcdef" * 2
    rows = fetch(plan.steps[0], node.connector, seed)
    want = aggregate_plain(plan, {party: rows})
    got, labels = local_aggregate(plan, node.connector, seed)
    assert np.array_equal(got, want)
    assert labels.labels == rows.labels  # private group keys, in the same order
    node.close()


# -- the sample generator ---------------------------------------------------------------
def test_generator_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sample_data import generate as gen
    from sample_data import storage

    whole = gen.generate(tmp_path / "whole", people=1500, seed=5)
    one = gen._write_chunked(tmp_path / "one", 1500, 5, 1500)  # the chunked path, one chunk
    assert one == whole.rows
    assert storage.table_digests(tmp_path / "one") == storage.table_digests(tmp_path / "whole")
    monkeypatch.setattr(gen, "PEOPLE_PER_CHUNK", 499)  # a prime: four chunks
    many = gen.generate(tmp_path / "many", people=1500, seed=5)
    gen.generate(tmp_path / "again", people=1500, seed=5)
    assert storage.table_digests(tmp_path / "many") == storage.table_digests(tmp_path / "again")
    assert not list((tmp_path / "many").glob(gen.SCRATCH + "*"))
    con = duckdb.connect(str(tmp_path / "many" / "data" / "bank.duckdb"), read_only=True)
    ids = con.execute("SELECT MIN(customer_id), MAX(customer_id), COUNT(DISTINCT customer_id), "
                      "COUNT(*) FROM customers").fetchone()
    loans = con.execute("SELECT MIN(loan_id), MAX(loan_id), COUNT(*), COUNT(*) FILTER (WHERE "
                        "prev > issued_on) FROM (SELECT loan_id, issued_on, LAG(issued_on) "
                        "OVER (ORDER BY loan_id) AS prev FROM loans)").fetchone()
    con.close()
    assert ids is not None and ids[2] == ids[3] == many.rows["bank.customers"] and ids[1] <= 1500
    assert loans == (1, many.rows["bank.loans"], many.rows["bank.loans"], 0)


@pytest.mark.parametrize("words", [1, 7, 1 << 30])
def test_a_collapsed_factor_sums_like_the_full_one(words: int) -> None:
    """A party whose factor is the same for every aggregate sends it once (one aggregate
    axis of length 1); the secure sum broadcasts it."""
    n = 19
    f1 = RNG.integers(0, 5, (n, 1, 3, 1))
    one = RNG.integers(0, 2, (n, 1, 1, 4))
    full = np.repeat(one, 3, axis=2)

    def prog(rt, a, b, c):  # type: ignore[no-untyped-def]
        rt.chunk_words = words
        x = rt.share(0, a, f1.shape)
        y = rt.share(1, b, one.shape)
        z = rt.share(1, c, full.shape)
        flags = np.zeros(3, dtype=bool)
        return (rt.open(secure_sum(rt, [x, y], None, flags)).view(np.int64),
                rt.open(secure_sum(rt, [x, z], None, flags)).view(np.int64))

    collapsed, expanded = run_three(prog, [f1, None, None], [None, one, None],
                                    [None, full, None])[0]
    assert collapsed.shape == (3, 4) and (collapsed == expanded).all()
    assert (expanded == fac.combine_plain([f1, full])).all()


def test_collapse_only_when_every_aggregate_takes_the_same_factor() -> None:
    _, plan = _demo_plan("SELECT a.segment, COUNT(*) AS n, AVG(l.defaulted) AS rate "
                         "FROM bank.loans l JOIN payments.accounts a "
                         "ON l.customer_id = a.customer_id GROUP BY a.segment")
    chains, _ = fac.expand_terms(plan)
    assert fac.collapsible("payments", chains) and not fac.collapsible("bank", chains)
