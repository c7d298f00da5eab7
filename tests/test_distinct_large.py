"""COUNT(DISTINCT x) over a large public domain (issue #14 item 2).

A value column whose bounds hold more than 1,000 values (up to ``MAX_DISTINCT``) is counted
in a query over one party's tables as a histogram with one local column, the bucket index,
reduced by the party's engine in one GROUP BY (``rewrite/histogram.py``,
``operators/histogram.py``). Checked here: answers equal plain DuckDB at a huge epsilon
(integers of 10,001 values, decimals, FILTER, GROUP BY a public and a private column,
NULLs, values clamped into the bounds); the dense plan's exact counts equal those of the
per-bucket plan wherever both apply; the pivoted-rows counts equal at every chunk of
buckets; one histogram costs one aggregate's budget with the usual sensitivity; what the
analyst receives has the same lengths for neighbouring data sets; across parties the
limit is the same, and across parties (two one-hot digits of the bucket index, one matrix
product on shares: ``operators/histogram.py``) the answers equal DuckDB's over a join
(``test_distinct_across.py`` has the BI fixture's), shapes the digits cannot serve are
refused before any charge, and every party's messages have the same lengths when one
person's value moves to a bucket no one else occupies.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from adversarial.test_transcript_scan import records_of
from oracle import HUGE_EPSILON, plain, union_connection

import veilql
from veilql.connectors.base import open_connector
from veilql.engine.operators import histogram as hist
from veilql.engine.operators.local import fetch
from veilql.engine.rewrite import compile_plan
from veilql.engine.sql.distinct import MAX_DISTINCT, MAX_SECURE_DISTINCT
from veilql.errors import UnsupportedError
from veilql.policies.loader import load_federation

pytestmark = pytest.mark.filterwarnings("ignore::veilql.engine.dp.LargeEpsilonWarning")

FEDERATION = """\
[federation]
name = "large-distinct"
policies = "policies"

[[party]]
name = "shop"
address = "local"
connector = "csv:data/shop"

[[party]]
name = "club"
address = "local"
connector = "csv:data/club"

[[party]]
name = "gym"
address = "local"
connector = "csv:data/gym"

[analyst.oracle]
epsilon = 1e15
delta = 0.5
"""
POLICIES = {
    "shop": """\
[tables.orders]
privacy_unit = "customer_id"
max_rows_per_unit = 2

[tables.orders.columns]
customer_id = { role = "key" }
kind = { role = "group", values = ["a", "b", "c"] }
tag = { role = "group" }
item = { role = "value", bounds = [0, 10000] }
price = { role = "value", bounds = [-10, 40], decimals = 2 }
small = { role = "value", bounds = [0, 300] }
rate = { role = "value", bounds = [0, 5], decimals = 2 }
""",
    "club": """\
[tables.members]
privacy_unit = "customer_id"

[tables.members.columns]
customer_id = { role = "key" }
level = { role = "value", bounds = [1, 5] }
""",
    "gym": """\
[tables.visits]
privacy_unit = "customer_id"

[tables.visits.columns]
customer_id = { role = "key" }
hours = { role = "value", bounds = [0, 100] }
""",
}
ORDERS = "shop.orders"


def build(root: Path, people: int = 400, drop: int | None = None,
          move: int | None = None) -> Path:
    """The federation: at the shop two rows per person (some NULL items, a few prices
    outside the bounds), at the club every other person. ``drop`` leaves that person out;
    ``move`` gives that person's items a value no one else has."""
    orders = ["customer_id,kind,tag,item,price,small,rate"]
    for i in range(1, people + 1):
        if i == drop:
            continue
        for j in range(2):
            item = "" if (i + j) % 17 == 0 else str((i * 7919 + j * 104729) % 10001)
            if i == move:
                item = "10000"
            price = f"{((i * 37 + j * 11) % 5200) / 100 - 11:.2f}"  # -11.00 .. 40.99
            rate = "" if (i + j) % 23 == 0 else f"{((i * 7 + j) % 560) / 100:.2f}"
            orders.append(f"{i},{'abc'[(i + j) % 3]},t{i % 6},{item},{price},"
                          f"{(i * 13) % 301},{rate}")
    members = ["customer_id,level"] + [f"{i},{1 + i % 5}" for i in range(1, people + 1, 2)]
    visits = ["customer_id,hours"] + [f"{i},{i % 100}" for i in range(1, people + 1, 3)]
    for party, table, lines in (("shop", "orders", orders), ("club", "members", members),
                                ("gym", "visits", visits)):
        folder = root / "data" / party
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{table}.csv").write_text("\n".join(lines) + "\n")
    (root / "policies").mkdir(parents=True, exist_ok=True)
    for party, text in POLICIES.items():
        (root / "policies" / f"{party}.toml").write_text(text)
    (root / "federation.toml").write_text(FEDERATION)
    return root / "federation.toml"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("distinct") / "fed")


def _clamped(column: str, lo: float, hi: float) -> str:
    return f"LEAST(GREATEST({column}, {lo}), {hi})"


# (secure SQL, DuckDB reference on the union of the parties' rows)
QUERIES = {
    "integers": ("SELECT COUNT(DISTINCT item) AS k FROM shop.orders", None),
    "decimals_clamped": (
        "SELECT COUNT(DISTINCT price) AS k FROM shop.orders",
        f"SELECT COUNT(DISTINCT {_clamped('price', -10, 40)}) AS k FROM shop.orders"),
    "filter_and_count": (
        "SELECT COUNT(DISTINCT item) FILTER (WHERE kind <> 'a') AS k, COUNT(*) AS n "
        "FROM shop.orders", None),
    "where_grouped": ("SELECT kind, COUNT(DISTINCT item) AS k FROM shop.orders "
                      "WHERE small > 30 GROUP BY kind", None),
    "expression": ("SELECT COUNT(DISTINCT item + small) AS k FROM shop.orders", None),
    "two_histograms": ("SELECT COUNT(DISTINCT item) AS i, COUNT(DISTINCT price) AS p, "
                       "COUNT(DISTINCT small) AS s FROM shop.orders",
                       f"SELECT COUNT(DISTINCT item) AS i, COUNT(DISTINCT "
                       f"{_clamped('price', -10, 40)}) AS p, COUNT(DISTINCT small) AS s "
                       "FROM shop.orders"),
}


@pytest.mark.parametrize("name", list(QUERIES))
def test_large_distinct_equals_plain_duckdb(fed: Path, name: str) -> None:
    sql, reference = QUERIES[name]
    with veilql.connect(fed, "oracle") as session, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = sorted(session.sql(sql, epsilon=HUGE_EPSILON, delta=1e-6).rows)
        want = sorted(plain(union_connection(session.federation), reference or sql))
    assert [list(r) for r in got] == [list(r) for r in want]
    assert all(v > 50 for r in got for v in r if isinstance(v, int))  # not a trivial count


def test_grouped_by_a_private_key_equals_plain_duckdb(fed: Path) -> None:
    # Partition selection at a huge epsilon keeps the tags with at least two people;
    # beside a private key only up to 1,000 values (refused above: test_limits_and_refusals)
    sql = "SELECT tag, COUNT(DISTINCT small) AS k FROM shop.orders GROUP BY tag"
    with veilql.connect(fed, "oracle") as session, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = sorted(session.sql(sql, epsilon=HUGE_EPSILON, delta=1e-6).rows)
        want = sorted(plain(union_connection(session.federation), sql))
    assert len(got) == 6 and [list(r) for r in got] == [list(r) for r in want]


def test_plan_is_one_bucket_column_and_one_noise_plan(fed: Path) -> None:
    federation = load_federation(fed)
    plan = compile_plan("SELECT COUNT(DISTINCT item) AS k FROM shop.orders", federation,
                        epsilon=1.0, delta=1e-6)
    assert plan.mode == "local"
    index = [c for c in plan.step("shop").columns if c.name.startswith(hist.PREFIX)]
    assert len(index) == 1 and "b1" not in {c.name for c in plan.step("shop").columns}
    assert len(plan.aggregates) == 10001 == plan.outputs[0].buckets.count
    assert len({a.family for a in plan.aggregates}) == 1
    assert len({a.noise for a in plan.aggregates}) == 1
    # the same cost and sensitivity as a histogram of the old kind (301 one-value buckets)
    small = compile_plan("SELECT COUNT(DISTINCT small) AS k FROM shop.orders", federation,
                         epsilon=1.0, delta=1e-6)
    assert not [c for c in small.step("shop").columns if c.name.startswith(hist.PREFIX)]
    for a, b in ((plan.aggregates[0], small.aggregates[0]),
                 (plan.aggregates[-1], small.aggregates[-1])):
        assert (a.l1, a.l2) == (b.l1, b.l2) == (2, 2.0)  # two rows per person, one bucket each
        assert a.noise.epsilon == b.noise.epsilon == 1  # type: ignore[attr-defined]
        assert a.noise.scale == b.noise.scale  # type: ignore[attr-defined]
    assert plan.to_s().count("one noisy count per bucket") == 1
    assert plan.aggregates[7].to_s().startswith("k.b7 = COUNT(rows WHERE shop.h0 = 7)")


def _exact(federation: object, sql: str) -> np.ndarray:
    plan = compile_plan(sql, federation, epsilon=1.0, delta=1e-6)  # type: ignore[arg-type]
    connector = open_connector(federation.party("shop").connector,  # type: ignore[attr-defined]
                               federation.root)  # type: ignore[attr-defined]
    values, _ = fetch(plan.steps[0], connector, "ab" * 16, reduce=plan)
    return values


@pytest.mark.parametrize("sql", [
    "SELECT COUNT(DISTINCT small) AS k FROM shop.orders",
    "SELECT kind, COUNT(DISTINCT small) FILTER (WHERE item > 5000) AS k, COUNT(*) AS n "
    "FROM shop.orders GROUP BY kind",
    "SELECT COUNT(DISTINCT rate) AS k FROM shop.orders WHERE kind = 'b'",
    "SELECT kind, COUNT(DISTINCT rate * 2) AS k FROM shop.orders GROUP BY kind",
])
def test_dense_counts_equal_the_per_bucket_plan(fed: Path, sql: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Bucket edges, digits, clamping, NULLs and FILTER as the one-column-per-bucket plan."""
    federation = load_federation(fed)
    want = _exact(federation, sql)
    monkeypatch.setattr(sys.modules["veilql.engine.rewrite.histogram"],
                        "MAX_SECURE_DISTINCT", 0)
    dense = compile_plan(sql, federation, epsilon=1.0, delta=1e-6)
    assert [c for c in dense.step("shop").columns if c.name.startswith(hist.PREFIX)]
    got = _exact(federation, sql)
    assert got.shape == want.shape and np.array_equal(got, want)


def test_chunked_counts_equal_unchunked(fed: Path) -> None:
    federation = load_federation(fed)
    sql = "SELECT kind, COUNT(DISTINCT item) AS k FROM shop.orders GROUP BY kind"
    plan = compile_plan(sql, federation, epsilon=1.0, delta=1e-6)
    connector = open_connector(federation.party("shop").connector, federation.root)
    rows = fetch(plan.steps[0], connector, "ab" * 16)
    (column, idx), = hist.families(plan, "shop").items()
    whole = hist.plain_counts(plan, "shop", rows, column, len(idx), chunk=len(idx))
    for chunk in (1, 7, 97, 1000, len(idx) - 1, None):  # None: from the memory budget
        assert np.array_equal(hist.plain_counts(plan, "shop", rows, column, len(idx), chunk),
                              whole), chunk
    engine, _ = fetch(plan.steps[0], connector, "ab" * 16, reduce=plan)
    assert np.array_equal(engine[idx], whole) and whole.sum() > 500


def test_limits_and_refusals(fed: Path) -> None:
    assert MAX_DISTINCT == 100_000 and MAX_SECURE_DISTINCT == 1_000
    federation = load_federation(fed)
    with pytest.raises(UnsupportedError) as error:  # 5,000,001 values
        compile_plan("SELECT COUNT(DISTINCT item * 500) FROM shop.orders", federation,
                     epsilon=1.0, delta=1e-6)
    assert "100,000 buckets" in error.value.message and error.value.hint
    across = ("SELECT COUNT(DISTINCT o.item) AS k FROM shop.orders o JOIN club.members m "
              "ON o.customer_id = m.customer_id")
    with pytest.raises(UnsupportedError) as error:  # 5,000,001 values across parties too
        compile_plan(across.replace("o.item", "o.item * 500"), federation, epsilon=1.0,
                     delta=1e-6)
    assert "100,000 buckets" in error.value.message and error.value.hint
    assert compile_plan(across, federation, epsilon=1.0, delta=1e-6).mode == "secure"
    with pytest.raises(UnsupportedError) as error:  # cells chosen privately
        compile_plan("SELECT tag, COUNT(DISTINCT item) FROM shop.orders GROUP BY tag",
                     federation, epsilon=1.0, delta=1e-6)
    assert "GROUP BY tag" in error.value.message and "privately" in error.value.message
    with pytest.raises(UnsupportedError) as error:  # 3 x 301 x 51 cells x 10,001 buckets
        compile_plan("SELECT kind, FLOOR(small / 1) AS s, FLOOR(price) AS p, "
                     "COUNT(DISTINCT item) FROM shop.orders GROUP BY 1, 2, 3",
                     federation, epsilon=1.0, delta=1e-6)
    assert "46,053 group cells" in error.value.message and error.value.hint
    # up to 1,000 values across parties one column per bucket, as before
    small = compile_plan(across.replace("o.item", "o.small"), federation, epsilon=1.0,
                         delta=1e-6)
    assert not [c for c in small.step("shop").columns if c.name.startswith(hist.PREFIX)]


def _received(fed: Path, out: Path, sql: str) -> list[tuple[str, str, int]]:
    """``(sender, kind, payload length)`` of every non-heartbeat record the analyst got."""
    mp = pytest.MonkeyPatch()
    mp.setenv("VEIL_TRANSCRIPT_DIR", str(out))
    try:
        with veilql.connect(fed, analyst="oracle") as session, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            session.sql(sql, epsilon=1.0, delta=1e-6)
    finally:
        mp.undo()
    return [(f, k, len(p)) for f, k, _, p in records_of(out / "analyst.bin") if k == "data"]


def test_analyst_sees_the_same_lengths_for_neighbouring_data(tmp_path: Path) -> None:
    # The attack: compare what arrives with and without one person, and with one person's
    # values moved to a bucket no one else occupies (sparse cells would show it).
    sql = "SELECT kind, COUNT(DISTINCT item) AS k FROM shop.orders GROUP BY kind"
    base = _received(build(tmp_path / "a"), tmp_path / "ta", sql)
    assert any(n > 10001 * 8 for _, _, n in base)  # the dense release of every bucket
    assert _received(build(tmp_path / "b", drop=5), tmp_path / "tb", sql) == base
    assert _received(build(tmp_path / "c", move=7), tmp_path / "tc", sql) == base


ACROSS = {
    "count_sum_where": (
        "SELECT COUNT(DISTINCT o.item) AS k, COUNT(*) AS n, SUM(m.level) AS s "
        "FROM shop.orders o JOIN club.members m ON o.customer_id = m.customer_id "
        "WHERE m.level > 1", None),
    "owner_grouped_filter": (
        "SELECT o.kind, COUNT(DISTINCT o.item) FILTER (WHERE o.small > 40) AS k, "
        "COUNT(*) AS n FROM shop.orders o JOIN club.members m "
        "ON o.customer_id = m.customer_id GROUP BY o.kind", None),
    "other_grouped_three_parties": (
        "SELECT FLOOR(m.level / 2) AS band, COUNT(DISTINCT o.price) AS k, SUM(g.hours) AS h "
        "FROM club.members m JOIN shop.orders o ON m.customer_id = o.customer_id "
        "JOIN gym.visits g ON o.customer_id = g.customer_id GROUP BY 1",
        f"SELECT FLOOR(m.level / 2) AS band, COUNT(DISTINCT {_clamped('o.price', -10, 40)}) "
        "AS k, SUM(g.hours) AS h FROM club.members m JOIN shop.orders o "
        "ON m.customer_id = o.customer_id JOIN gym.visits g "
        "ON o.customer_id = g.customer_id GROUP BY 1"),
}


@pytest.mark.parametrize("name", [n if n == "other_grouped_three_parties" else pytest.param(
    n, marks=pytest.mark.slow) for n in ACROSS])  # the others with -m slow
def test_across_parties_equals_plain_duckdb(fed: Path, name: str) -> None:
    sql, reference = ACROSS[name]
    with veilql.connect(fed, "oracle") as session, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = sorted(session.sql(sql, epsilon=HUGE_EPSILON, delta=1e-6).rows)
        want = sorted(plain(union_connection(session.federation), reference or sql))
    assert [list(r) for r in got] == [list(r) for r in want]
    assert all(r[-2 if name != "count_sum_where" else 0] > 10 for r in got)


def test_across_parties_digits_are_shared_not_buckets(fed: Path) -> None:
    federation = load_federation(fed)
    plan = compile_plan(ACROSS["count_sum_where"][0], federation, epsilon=1.0, delta=1e-6)
    connector = open_connector(federation.party("shop").connector, federation.root)
    rows = fetch(plan.step("shop"), connector, "ab" * 16)
    cols = hist.digit_columns(plan, "shop", rows)
    assert sorted(cols) == ["h0:hi", "h0:lo"]
    assert hist.digit_size(10001) == (100, 101)  # 101 words per row, not 10,001
    assert cols["h0:hi"].shape == (rows.units, 2, 100) and cols["h0:lo"].shape[2] == 101
    # each present, non-NULL row is one (high, low) pair: its bucket
    index = rows.cols["h0"]
    keep = rows.present & (index >= 0)
    hi = cols["h0:hi"].argmax(axis=2) * 101 + cols["h0:lo"].argmax(axis=2)
    assert np.array_equal(hi[keep], index[keep])
    assert cols["h0:lo"].sum() == keep.sum() == cols["h0:hi"].sum()  # weights are 1 here


@pytest.mark.parametrize("sql, words", [
    ("SELECT COUNT(DISTINCT o.item) FROM shop.orders o JOIN club.members m "
     "ON o.customer_id = m.customer_id WHERE o.small > m.level", "condition"),
    ("SELECT COUNT(DISTINCT o.item) FROM shop.orders o LEFT JOIN club.members m "
     "ON o.customer_id = m.customer_id", "outer join"),
    ("SELECT COUNT(DISTINCT o.item), SUM(o.small + m.level) FROM shop.orders o "
     "JOIN club.members m ON o.customer_id = m.customer_id", "several parties"),
    ("SELECT COUNT(DISTINCT o.item) FILTER (WHERE m.level > 2) FROM shop.orders o "
     "JOIN club.members m ON o.customer_id = m.customer_id", "FILTER over club's"),
    ("SELECT COUNT(DISTINCT o.item), COUNT(*) FILTER (WHERE m.level > o.small) "
     "FROM shop.orders o JOIN club.members m ON o.customer_id = m.customer_id",
     "several parties"),
])
def test_across_parties_refuses_what_the_digits_cannot_count(fed: Path, sql: str,
                                                             words: str) -> None:
    federation = load_federation(fed)
    with pytest.raises(UnsupportedError) as error:
        compile_plan(sql, federation, epsilon=1.0, delta=1e-6)
    assert "COUNT(DISTINCT o.item) over 10,001 values" in error.value.message
    assert words in error.value.message and error.value.hint


def _lengths(fed: Path, out: Path, sql: str) -> dict[str, list[tuple[str, str, int]]]:
    """Per transcript (every party and the analyst), the sorted ``(sender, kind, payload
    length)`` of its records other than heartbeats."""
    mp = pytest.MonkeyPatch()
    mp.setenv("VEIL_TRANSCRIPT_DIR", str(out))
    try:
        with veilql.connect(fed, analyst="oracle") as session, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            session.sql(sql, epsilon=1.0, delta=1e-6)
    finally:
        mp.undo()
    return {path.name: sorted((f, k, len(p)) for f, k, _, p in records_of(path)
                              if k == "data")
            for path in sorted(out.glob("*.bin"))}


def test_across_parties_lengths_do_not_depend_on_a_value(tmp_path: Path) -> None:
    # The attack: a compute party (or the analyst) compares every message's length with
    # and without one person's items moved to a bucket no one else occupies; the digits'
    # shapes are units x slots x digits, whichever buckets occur.
    sql = ("SELECT o.kind, COUNT(DISTINCT o.item) AS k, COUNT(*) AS n FROM shop.orders o "
           "JOIN club.members m ON o.customer_id = m.customer_id GROUP BY o.kind")
    base = _lengths(build(tmp_path / "a"), tmp_path / "ta", sql)
    assert {"shop.bin", "club.bin", "gym.bin", "analyst.bin"} <= set(base)
    assert any(n > 3 * 10001 * 8 for _, _, n in base["analyst.bin"])  # every bucket released
    assert _lengths(build(tmp_path / "c", move=7), tmp_path / "tc", sql) == base


@pytest.mark.parametrize("n, k, m", [pytest.param(317, 9000, 316, marks=pytest.mark.slow),
                                     (200, 3000, 200), (64, 300, 600)])
def test_ring_matmul_equals_numpy(n: int, k: int, m: int) -> None:
    """The digits' matrix product through float limbs wraps exactly as uint64 does, at the
    ring's edges too (all ones, the top bit)."""
    from veilql.engine.operators.aggregate import FLOAT_MATMUL_CELLS, FLOAT_MATMUL_WORK, matmul

    assert n * k * m >= FLOAT_MATMUL_WORK and n * m >= FLOAT_MATMUL_CELLS  # the limb path
    rng = np.random.default_rng(n + k + m)
    x = rng.integers(0, 2**64, (n, k), dtype=np.uint64)
    y = rng.integers(0, 2**64, (k, m), dtype=np.uint64)
    x[0], y[:, 0], x[-1] = 2**64 - 1, 2**63, 1
    assert np.array_equal(matmul(x, y), x @ y)
