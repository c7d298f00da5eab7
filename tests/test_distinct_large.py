"""COUNT(DISTINCT x) over a large public domain (issue #14): one noisy count per cell.

A value column whose bounds hold more than 1,000 values (up to ``MAX_DISTINCT``) is one
local column, the bucket index, and one aggregate: per group cell the number of distinct
values, counted before any noise (``rewrite/histogram.py``, ``operators/histogram.py``):
in the party's engine as ``COUNT(DISTINCT index)`` over the rows WHERE keeps, across
parties from the (cell, bucket) counts on shares (two one-hot digits, one matrix product),
each compared with 0 on shares and the bits summed per cell. Only that count is noised and
released, as a COUNT. Checked here: answers equal plain DuckDB at a huge epsilon (integers
of 10,001 values, decimals, FILTER, WHERE, GROUP BY, NULLs, values clamped into the
bounds, more cells than the old per-bucket release allowed), locally and across two and
three parties; the engine's distinct counts equal those of the per-bucket plan and of the
pivoted rows; the count has COUNT(*)'s sensitivity and noise plan, and the released noise
has its distribution (a wrong scale is rejected); the comparison on shares equals numpy
at every batch size; what the analyst receives holds no per-bucket value and has the same
lengths for neighbouring data sets; every party's messages have the same lengths when one
person's value moves to a bucket no one else occupies; shapes the digits cannot serve and
too many counts across parties are refused before any charge.
"""

from __future__ import annotations

import sys
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from adversarial.test_transcript_scan import records_of
from lengths import data_records, run_recorded
from oracle import HUGE_EPSILON, plain, union_connection

import veilql
from veilql.connectors.base import open_connector
from veilql.engine.dp import ci95
from veilql.engine.operators import histogram as hist
from veilql.engine.operators.local import fetch
from veilql.engine.operators.local_mode import aggregate_plain
from veilql.engine.rewrite import compile_plan
from veilql.engine.rewrite.histogram import MAX_SECURE_COUNTS
from veilql.engine.sql.distinct import MAX_DISTINCT, MAX_SECURE_DISTINCT
from veilql.errors import UnsupportedError
from veilql.policies.loader import load_federation
from veilql.ui.preview import accuracy_text, round_half

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


@pytest.mark.parametrize("name", [n if n != "two_histograms" else pytest.param(
    n, marks=pytest.mark.slow) for n in QUERIES])  # three at once: -m slow
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


def test_plan_is_one_bucket_column_and_one_count_per_cell(fed: Path) -> None:
    federation = load_federation(fed)
    plan = compile_plan("SELECT kind, COUNT(DISTINCT item) AS k, COUNT(*) AS n "
                        "FROM shop.orders GROUP BY kind", federation, epsilon=1.0,
                        delta=1e-6)
    assert plan.mode == "local"
    index = [c for c in plan.step("shop").columns if c.name.startswith(hist.PREFIX)]
    assert len(index) == 1 and "b1" not in {c.name for c in plan.step("shop").columns}
    k, n = plan.aggregates  # one aggregate, not one per bucket
    assert (k.name, k.buckets, k.family, plan.outputs[1].kind) == ("k", 10001, "", "count")
    # COUNT(*)'s sensitivity (two rows per person, each in one cell and bucket) and noise
    assert (k.l1, k.l2) == (n.l1, n.l2) == (2, 2.0)
    assert k.noise == n.noise and k.noise.epsilon == Fraction(1, 2)  # type: ignore[attr-defined]
    text = plan.to_s()
    half = round_half(float(ci95(n.noise)))  # the preview (--dry-run) gives a count's bar
    assert "k = COUNT(DISTINCT shop.h0) over 10,001 buckets: per cell the buckets whose " \
        "exact count is > 0 (across parties compared with 0 on shares), one noisy count " \
        "per cell; no bucket count is released; sensitivity L1 2" in text
    assert accuracy_text(plan) == f"95% intervals: k ± {half}, n ± {half}" and int(half) > 0
    assert "bucket counts of this histogram" not in text and "noise band" not in text
    across = compile_plan(ACROSS["count_sum_where"][0], federation, epsilon=1.0, delta=1e-6)
    k, n, _ = across.aggregates
    assert across.mode == "secure" and k.buckets == 10001
    assert (k.l1, k.l2, k.noise) == (n.l1, n.l2, n.noise)
    assert "over 10,001 buckets: per cell" in across.to_s()


def _exact(federation: object, sql: str) -> tuple[object, np.ndarray]:
    plan = compile_plan(sql, federation, epsilon=1.0, delta=1e-6)  # type: ignore[arg-type]
    connector = open_connector(federation.party("shop").connector,  # type: ignore[attr-defined]
                               federation.root)  # type: ignore[attr-defined]
    values, _ = fetch(plan.steps[0], connector, "ab" * 16, reduce=plan)
    return plan, values


@pytest.mark.parametrize("sql", [  # 13-34 s each on a loaded machine: three with -m slow
    pytest.param("SELECT COUNT(DISTINCT small) AS k FROM shop.orders",
                 marks=pytest.mark.slow),
    "SELECT kind, COUNT(DISTINCT small) FILTER (WHERE item > 5000) AS k, COUNT(*) AS n "
    "FROM shop.orders GROUP BY kind",
    pytest.param("SELECT COUNT(DISTINCT rate) AS k FROM shop.orders WHERE kind = 'b'",
                 marks=pytest.mark.slow),
    pytest.param("SELECT kind, COUNT(DISTINCT rate + 1) AS k FROM shop.orders "
                 "WHERE small > 30 GROUP BY kind", marks=pytest.mark.slow),
])
def test_engine_counts_equal_the_per_bucket_plan(fed: Path, sql: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Bucket edges, digits, clamping, NULLs, WHERE and FILTER as the one-column-per-bucket
    plan, whose buckets with a positive count are the distinct values."""
    federation = load_federation(fed)
    buckets, want = _exact(federation, sql)
    names = [a.name for a in buckets.aggregates]  # type: ignore[attr-defined]
    spec = next(o for o in buckets.outputs if o.name == "k")  # type: ignore[attr-defined]
    family = [names.index(a) for a in spec.aggregates]
    monkeypatch.setattr(sys.modules["veilql.engine.rewrite.histogram"],
                        "MAX_SECURE_DISTINCT", 0)
    dense, got = _exact(federation, sql)
    assert [c for c in dense.step("shop").columns  # type: ignore[attr-defined]
            if c.name.startswith(hist.PREFIX)]
    assert [a.name for a in dense.aggregates] == [  # type: ignore[attr-defined]
        "k" if n == spec.aggregates[0] else n for n in names if n not in spec.aggregates[1:]]
    distinct = hist.plain_distinct(want[family])
    at = family[0]  # the count takes the place of the first bucket
    assert np.array_equal(got[at], distinct) and distinct.min() > 5
    rest = [i for i in range(len(names)) if i not in family]
    assert np.array_equal(np.delete(got, at, axis=0), want[rest])  # the others unchanged


def test_chunked_counts_equal_unchunked(fed: Path) -> None:
    federation = load_federation(fed)
    sql = ("SELECT kind, COUNT(DISTINCT item) AS k FROM shop.orders WHERE small > 100 "
           "GROUP BY kind")
    plan = compile_plan(sql, federation, epsilon=1.0, delta=1e-6)
    connector = open_connector(federation.party("shop").connector, federation.root)
    rows = fetch(plan.steps[0], connector, "ab" * 16)
    (column, fam), = hist.families(plan, "shop").items()
    (agg,), buckets = fam.aggs, fam.buckets
    whole = hist.plain_counts(plan, "shop", rows, column, buckets, chunk=buckets)
    for chunk in (1, 7, 97, 1000, buckets - 1, None):  # None: from the memory budget
        assert np.array_equal(hist.plain_counts(plan, "shop", rows, column, buckets, chunk),
                              whole), chunk
    engine, _ = fetch(plan.steps[0], connector, "ab" * 16, reduce=plan)
    distinct = hist.plain_distinct(whole)
    assert np.array_equal(engine[agg], distinct) and distinct.sum() > 300
    assert np.array_equal(aggregate_plain(plan, {"shop": rows})[agg], distinct)
    assert whole.sum() > distinct.sum()  # repeats and rows WHERE drops (w = 0) not counted


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
    many = ("SELECT o.kind, FLOOR(o.small / 1) AS s, FLOOR(o.price) AS p, "
            "COUNT(DISTINCT o.item) FROM shop.orders o{} GROUP BY 1, 2, 3")
    # over one party's tables the engine counts per cell: one noisy count each
    local = compile_plan(many.format(""), federation, epsilon=1.0, delta=1e-6)
    assert local.mode == "local" and [a.buckets for a in local.aggregates] == [10001]
    assert MAX_SECURE_COUNTS == 10_000_000
    with pytest.raises(UnsupportedError) as error:  # 3 x 301 x 51 cells x 10,001 buckets
        compile_plan(many.format(" JOIN club.members m ON o.customer_id = m.customer_id"),
                     federation, epsilon=1.0, delta=1e-6)
    assert "across parties in 46,053 group cells" in error.value.message
    assert "460,576,053 bucket counts" in error.value.message and error.value.hint
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
    assert base and all(n < 1000 for _, _, n in base)  # one count per cell, no bucket
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
    run_recorded(fed, out, sql)
    return {path.name: sorted(data_records(path)) for path in sorted(out.glob("*.bin"))}


def test_across_parties_lengths_do_not_depend_on_a_value(tmp_path: Path) -> None:
    # The attack: a compute party (or the analyst) compares every message's length with
    # and without one person's items moved to a bucket no one else occupies; the digits'
    # shapes are units x slots x digits, whichever buckets occur.
    sql = ("SELECT o.kind, COUNT(DISTINCT o.item) AS k, COUNT(*) AS n FROM shop.orders o "
           "JOIN club.members m ON o.customer_id = m.customer_id GROUP BY o.kind")
    base = _lengths(build(tmp_path / "a"), tmp_path / "ta", sql)
    assert {"shop.bin", "club.bin", "gym.bin", "analyst.bin"} <= set(base)
    # the analyst gets two counts per cell (no bucket); the compute parties' messages
    # include the (bucket, cell) counts and their comparisons on shares
    assert base["analyst.bin"] and all(n < 1000 for _, _, n in base["analyst.bin"])
    assert sum(n for _, _, n in base["shop.bin"]) > 3 * 10001 * 8
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
