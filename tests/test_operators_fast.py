"""The operators' fast paths (issue 17, item 1) against plain references written here.

Each test computes the same thing the slow, obvious way: the viewer's match by sorting
each side and looking tags up (with many tags sharing their top bits, so the exact
fallback runs), the order of joined pairs by ``argsort``, the join tags as one AES block
per key, the factors as value times a one-hot row of cells summed over slots (OR-ed for
COUNT(DISTINCT)), and the chains of equal aggregates.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from veilql.engine.operators import factors as fac
from veilql.engine.operators.join import _match_sorted, by_first, match
from veilql.engine.operators.local import PartyRows, pivot
from veilql.engine.operators.tags import tags
from veilql.engine.plan.nodes import AggregateSpec, GroupKey, Term

RNG = np.random.default_rng(20261201)


def _reference_match(left: np.ndarray, right: np.ndarray) -> tuple[list[int], list[int]]:
    """Pairs of equal tags by a dictionary, in increasing order of the tag."""
    where = {int(t): j for j, t in enumerate(right)}
    pairs = sorted((int(t), i, where[int(t)]) for i, t in enumerate(left) if int(t) in where)
    return [p[1] for p in pairs], [p[2] for p in pairs]


@pytest.mark.parametrize("top", [0, 1, 3, 64])
def test_match_equals_a_dictionary_lookup(top: int) -> None:
    """``top`` random high bits over unique low ones: 0 puts every tag in one run of equal
    top bits (everything goes to the exact fallback), 64 makes them all random."""
    for trial in range(60):
        nl, nr = (int(x) for x in RNG.integers(0, 80, 2))
        low = RNG.permutation(4096).astype(np.uint64)[:300]
        high = RNG.integers(0, 2 ** min(top, 63) if top else 1, 300, dtype=np.uint64)
        pool = (high << np.uint64(64 - max(top, 1))) | low if top < 64 else \
            RNG.integers(0, 2**64, 300, dtype=np.uint64, endpoint=False)
        pool = np.unique(pool)
        left = RNG.permutation(pool)[:nl]
        right = RNG.permutation(pool)[:nr]
        il, ir = match(left, right)
        assert (il.tolist(), ir.tolist()) == _reference_match(left, right), trial
        assert il.dtype == ir.dtype == np.int64
        fl, fr = _match_sorted(left, right)
        assert (fl.tolist(), fr.tolist()) == (il.tolist(), ir.tolist())


def test_match_of_large_sides_equals_the_sorted_lookup() -> None:
    universe = RNG.integers(0, 2**64, 300_000, dtype=np.uint64, endpoint=False)
    left = universe[RNG.permutation(len(universe))[:170_000]]
    right = universe[RNG.permutation(len(universe))[:150_000]]
    got, want = match(left, right), _match_sorted(left, right)
    assert len(got[0]) > 50_000
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_by_first_equals_a_stable_argsort() -> None:
    for n in (0, 1, 2, 17, 5000):
        first = RNG.permutation(3 * n + 1)[:n].astype(np.int64)
        second = RNG.permutation(2 * n + 1)[:n].astype(np.int64)
        order = np.argsort(first, kind="stable")
        a, b = by_first(first, second)
        assert np.array_equal(a, first[order]) and np.array_equal(b, second[order])
    big = np.array([2**33 + 1, 5, 2**40], dtype=np.int64)  # beyond the packed range
    a, b = by_first(big, np.array([0, 1, 2], dtype=np.int64))
    assert a.tolist() == [5, 2**33 + 1, 2**40] and b.tolist() == [1, 0, 2]


def _reference_tag(key: bytes, unit: object) -> int:
    if isinstance(unit, int | np.integer):
        block = int(unit).to_bytes(8, "little", signed=True) + (1).to_bytes(8, "little")
    else:
        digest = bytearray(hashlib.sha256(str(unit).encode()).digest()[:16])
        digest[15] ^= 2  # the type byte: the top byte of the second word
        block = bytes(digest)
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return int.from_bytes((enc.update(block) + enc.finalize())[:8], "little")


@pytest.mark.parametrize("units", [
    np.arange(0), np.array([-3, 0, 7, 2**62], dtype=np.int64), np.arange(5, dtype=np.int32),
    np.array(["a", "bb", "é"], dtype=object), np.array(["x", "y"]),
], ids=["empty", "int64", "int32", "object", "str"])
def test_tags_are_one_aes_block_per_key(units: np.ndarray) -> None:
    key = bytes(range(16))
    got = tags(key, units)
    assert got.dtype == np.uint64 and got.shape == (len(units),)
    assert got.tolist() == [_reference_tag(key, u) for u in units.tolist()]


def test_tags_across_chunks_equal_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    import veilql.engine.operators.tags as tag_module

    key = bytes(16)
    units = RNG.integers(-(2**40), 2**40, 1001)
    whole = tags(key, units)
    monkeypatch.setattr(tag_module, "TAG_CHUNK", 7)
    assert np.array_equal(tags(key, units), whole)


class _Plan:
    groups: tuple[GroupKey, ...] = ()


AGGS = (AggregateSpec("a", "a", "count", (Term(None, None),)),
        AggregateSpec("b", "b", "sum", (Term("bank", "v0"),)),
        AggregateSpec("c", "c", "count_distinct", (Term(None, None),)),
        AggregateSpec("d", "d", "count_distinct", (Term("bank", "v0"),)))


def _reference_factors(rows: PartyRows, groups: tuple[GroupKey, ...],
                       aggs: tuple[AggregateSpec, ...], slot_level: bool) -> np.ndarray:
    """Value times a one-hot row of cells; summed (OR-ed for COUNT(DISTINCT)) over slots."""
    cells = fac.cell_index(rows, groups)
    ncell = fac.cell_count(groups, rows)
    onehot = (cells[..., None] == np.arange(ncell)).astype(np.int64)
    w = rows.cols["w"] * rows.present
    out = np.stack([(w if fac.factor_kind(a, "bank") == "w" else w * rows.cols["v0"])[..., None]
                    * onehot for a in aggs], axis=2)
    if slot_level:
        return out
    summed = out.sum(axis=1, keepdims=True)
    for k, a in enumerate(aggs):
        if a.kind == "count_distinct":
            summed[:, :, k] = (out[:, :, k] > 0).any(axis=1, keepdims=True)
    return summed


@pytest.mark.parametrize("slot_level", [False, True])
def test_factors_equal_the_one_hot_reference(slot_level: bool) -> None:
    for trial in range(80):
        n, slots = int(RNG.integers(0, 40)), int(RNG.integers(1, 4))
        sizes = [int(s) for s in RNG.integers(1, 5, int(RNG.integers(0, 3)))]
        groups = tuple(GroupKey(f"g{i}", "bank", f"g{i}", tuple(range(s)))
                       for i, s in enumerate(sizes))
        present = RNG.random((n, slots)) < 0.7
        cols = {"w": RNG.integers(0, 2, (n, slots)), "v0": RNG.integers(-5, 50, (n, slots))}
        for g, s in zip(groups, sizes, strict=True):
            cols[g.column] = RNG.integers(-1, s, (n, slots)) * present  # -1: outside
        rows = PartyRows(np.arange(n), cols, present)
        plan = _Plan()
        plan.groups = groups
        aggs = tuple(AGGS[i] for i in sorted(RNG.choice(4, int(RNG.integers(1, 5)),
                                                        replace=False)))
        want = _reference_factors(rows, groups, aggs, slot_level)
        for chunk in (None, 1, 7):
            got = fac.build_factors(plan, "bank", rows, aggs,  # type: ignore[arg-type]
                                    slot_level=slot_level, chunk_rows=chunk)
            assert got.shape == want.shape and np.array_equal(got, want), (trial, chunk)


def test_equal_chains_are_built_once() -> None:
    count = AggregateSpec("n", "n", "count", (Term(None, None),))
    plan = _Plan()
    plan.aggregates = (  # type: ignore[attr-defined]
        AggregateSpec("rate.num", "rate", "sum", (Term("bank", "v0"),)),
        AggregateSpec("rate.den", "rate", "count", (Term(None, None),)), count,
        AggregateSpec("s", "s", "sum", (Term("bank", "v0"), Term("bank", "v0"))))
    chains, owner = fac.expand_terms(plan)  # type: ignore[arg-type]
    assert len(chains) == 2
    assert owner == [(0, 0), (1, 1), (1, 2), (0, 3), (0, 3)]


def test_pivot_of_unsorted_units_keeps_every_row() -> None:
    units = RNG.permutation(np.repeat(RNG.permutation(1000)[:300], RNG.integers(1, 4, 300)))
    values = RNG.integers(1, 100, len(units))
    rows = pivot({"__unit": units, "v": values}, ["v"], 3)
    assert rows.keys.tolist() == sorted(set(units.tolist()))
    for i, key in enumerate(rows.keys.tolist()):
        assert sorted(rows.cols["v"][i][rows.present[i]].tolist()) == \
            sorted(values[units == key].tolist())


@pytest.mark.parametrize("kind", ["int", "text"])
def test_pivot_of_units_in_order_equals_the_pivot_of_shuffled_ones(kind: str) -> None:
    """Rows that arrive sorted by unit (what ``fetch`` asks DuckDB for) skip the sort and
    the gather: the same units, slots (as multisets) and presence as the same rows shuffled,
    unit keys negative, repeated up to the slots, text too."""
    units = np.sort(np.repeat(RNG.permutation(4000)[:900] - 2000, RNG.integers(1, 4, 900)))
    if kind == "text":
        units = np.array([f"u{u:+05d}" for u in units], dtype=object)
        units = units[np.argsort(units.astype(str), kind="stable")]
    values = RNG.integers(-50, 100, len(units))
    flags = RNG.integers(0, 2, len(units)).astype(bool)
    mix = RNG.permutation(len(units))
    ordered = pivot({"__unit": units, "v": values, "f": flags}, ["v", "f"], 3)
    shuffled = pivot({"__unit": units[mix], "v": values[mix], "f": flags[mix]}, ["v", "f"], 3)
    assert np.array_equal(ordered.keys, shuffled.keys)
    assert np.array_equal(ordered.present.sum(1), shuffled.present.sum(1))
    for name in ("v", "f"):
        assert np.array_equal(np.sort(ordered.cols[name], 1), np.sort(shuffled.cols[name], 1))


SEPARABLE_SQL = {
    "customers' region": ("SELECT c.region, AVG(l.defaulted) AS rate, COUNT(*) AS n "
                          "FROM bank.customers c JOIN bank.loans l "
                          "ON c.customer_id = l.customer_id JOIN insurer.policies p "
                          "ON p.customer_id = c.customer_id GROUP BY c.region", True),
    "loans' term": ("SELECT l.term_months, AVG(l.amount) AS a, COUNT(*) AS n "
                    "FROM bank.customers c JOIN bank.loans l ON c.customer_id = l.customer_id "
                    "JOIN insurer.policies p ON p.customer_id = c.customer_id "
                    "GROUP BY l.term_months", False),
    "cross predicate": ("SELECT c.region, SUM(l.amount) AS s, COUNT(*) AS n "
                        "FROM bank.customers c JOIN bank.loans l "
                        "ON c.customer_id = l.customer_id JOIN insurer.policies p "
                        "ON p.customer_id = c.customer_id WHERE l.amount > p.claims_amount "
                        "GROUP BY c.region", False),
}


@pytest.mark.parametrize("name", list(SEPARABLE_SQL))
def test_separable_factors_multiply_to_the_factor(name: str) -> None:
    """Values times cells equals the factor whenever ``separable`` says so; a group column
    of a table with several rows per person (loans' term) or a cross-party predicate keeps
    the whole factor."""
    from pathlib import Path

    from oracle import HUGE_EPSILON

    from veilql.engine.node import PartyNode
    from veilql.engine.rewrite import compile_plan
    from veilql.policies.loader import load_federation

    sql, expected = SEPARABLE_SQL[name]
    fed = load_federation(Path(__file__).resolve().parent.parent / "sample_data" / "demo"
                          / "federation.toml")
    plan = compile_plan(sql, fed, epsilon=HUGE_EPSILON, delta=0)
    assert fac.separable(plan, "bank") is expected
    assert not fac.separable(plan, "insurer")  # no group column there
    node = PartyNode(fed, "bank", log=lambda line: None)
    try:
        from veilql.engine.operators.local import fetch

        rows = fetch(plan.step("bank"), node.connector, "ab" * 16)
    finally:
        node.close()
    chains, _ = fac.expand_terms(plan)
    whole = fac.build_factors(plan, "bank", rows, chains, slot_level=plan.cross is not None)
    values = fac.build_factors(plan, "bank", rows, chains, slot_level=False, cells=False)
    cells = fac.cell_indicator(plan, "bank", rows)
    assert values.shape[2:] == (len(chains), 1) and cells.shape[2] == 1
    if expected:
        assert np.array_equal(values * cells, whole)
