"""Secret shuffle: rows stay aligned, the multiset is kept, every order is equally likely."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from veilql.engine.mpc.runtime import Runtime
from veilql.engine.mpc.testing import deterministic_seeds, run_three
from veilql.errors import UsageError

U64 = np.uint64
RNG = np.random.default_rng(99)


@pytest.mark.parametrize("n", [0, 1, 2, 1000])
def test_rows_stay_aligned_across_mixed_columns(n: int) -> None:
    ids = RNG.permutation(n).astype(U64) * U64(1000003)  # distinct
    vals = RNG.integers(-(2**40), 2**40, n)
    flags = RNG.integers(0, 2, n, dtype=np.uint8)
    wide = RNG.integers(0, 2**64, (n, 3), dtype=U64)

    def prog(rt: Runtime, iv, vv, fv, wv):  # type: ignore[no-untyped-def]
        a = rt.share(0, iv, n)
        b = rt.share(1, vv, n)
        f = rt.share(2, fv, n, boolean=True, dtype=np.uint8)
        w = rt.share(0, wv, (n, 3), boolean=True)
        before = rt.rounds
        out = rt.shuffle([a, b, f, w])
        rounds = rt.rounds - before
        return [rt.open(c) for c in out], rounds, [type(c).__name__ for c in out]

    res = run_three(prog, [ids, None, None], [None, vals, None], [None, None, flags],
                    [wide, None, None])
    (si, sv, sf, sw), rounds, kinds = res[0]
    assert rounds == 2 and kinds == ["AShare", "AShare", "BShare", "BShare"]
    assert sf.dtype == np.uint8 and sw.shape == (n, 3)
    pos = {int(k): i for i, k in enumerate(ids.tolist())}
    src = np.array([pos[int(k)] for k in si.tolist()], dtype=np.int64)
    assert sorted(src.tolist()) == list(range(n))
    assert (sv.view(np.int64) == vals[src]).all()
    assert (sf == flags[src]).all() and (sw == wide[src]).all()


def test_all_orders_equally_likely() -> None:
    runs = 1200

    def prog(rt: Runtime, v):  # type: ignore[no-untyped-def]
        x = rt.share(0, v, 3)
        orders = []
        for _ in range(runs):
            orders.append(tuple(rt.open(rt.shuffle([x])[0]).tolist()))
        return orders

    with deterministic_seeds("shuffle-uniform"):  # same verdict on every run
        orders = run_three(prog, [np.array([0, 1, 2], dtype=U64), None, None])[0]
    counts: dict[tuple[int, ...], int] = {}
    for o in orders:
        counts[o] = counts.get(o, 0) + 1
    assert len(counts) == 6
    assert stats.chisquare(list(counts.values())).pvalue > 1e-4


def test_who_receives_what_and_roles_rotate(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Party ``a`` (the tag counter mod 3) receives B' from b and U - x'_c from c; c
    receives A and V - x'_b from a; b receives nothing. Two shuffles in a row rotate a."""
    from veilql.engine.transport.base import read_transcript

    n = 64

    def prog(rt: Runtime, v):  # type: ignore[no-untyped-def]
        x = rt.share(0, v, n)
        first = rt.shuffle([x])[0]
        return rt.open(first), rt.open(rt.shuffle([first])[0])

    out = run_three(prog, [np.arange(n, dtype=U64), None, None],
                    transcript_dir=str(tmp_path))[0]
    for o in out:
        assert sorted(o.tolist()) == list(range(n)) and o.tolist() != list(range(n))
    got: dict[tuple[int, str], set[tuple[int, str]]] = {}
    for c in range(3):
        for sender, t, payload in read_transcript(tmp_path / f"p{c}.bin"):
            if t.startswith("shuffle:"):
                call, _, rest = t.partition("/")
                got.setdefault((c, call), set()).add((int(sender[1]), rest[-1]))
                assert len(payload) == 8 * n
    calls = sorted({call for _, call in got}, key=lambda t: int(t.split(":")[1]))
    assert len(calls) == 2
    for call in calls:
        a = int(call.split(":")[1]) % 3
        b, c = (a + 1) % 3, (a + 2) % 3
        assert got[(a, call)] == {(b, "B"), (c, "U")}
        assert got[(c, call)] == {(a, "A"), (a, "V")}
        assert (b, call) not in got
    assert int(calls[0].split(":")[1]) % 3 != int(calls[1].split(":")[1]) % 3


@pytest.mark.parametrize("n", [0, 1, 7, 9, 63, 65])
@pytest.mark.parametrize("chunk", [1, 5, 1 << 20])
def test_chunked_and_whole_agree_on_odd_lengths(n: int, chunk: int) -> None:
    """Chunks of 1 and 5 words (every piece and row chunk a message) and one message."""
    rng = np.random.default_rng(n * 31 + chunk)
    ids = rng.permutation(n).astype(U64)
    wide = rng.integers(0, 2**64, (n, 3), dtype=U64)
    bits = rng.integers(0, 2, (n, 2), dtype=np.uint8)

    def prog(rt: Runtime, iv, wv, bv):  # type: ignore[no-untyped-def]
        rt.chunk_words = chunk
        cols = [rt.share(0, iv, n), rt.share(1, wv, (n, 3)),
                rt.share(2, bv, (n, 2), boolean=True, dtype=np.uint8)]
        out = rt.shuffle(cols, consume=True)
        assert cols == []
        return [rt.open(c) for c in out]

    res = run_three(prog, [ids, None, None], [None, wide, None], [None, None, bits])
    assert all((x == y).all() for r in res for x, y in zip(r, res[0], strict=True))
    si, sw, sb = res[0]
    assert sw.shape == (n, 3) and sb.shape == (n, 2) and sb.dtype == np.uint8
    src = si.astype(np.int64)
    assert sorted(src.tolist()) == list(range(n))
    inv = np.argsort(ids)  # ids[inv[k]] == k
    rows = inv[src]
    assert (sw == wide[rows]).all() and (sb == bits[rows]).all()


def test_unequal_lengths_refused() -> None:
    def prog(rt: Runtime):  # type: ignore[no-untyped-def]
        a = rt.share(0, np.zeros(3, U64) if rt.me == 0 else None, 3)
        return rt.shuffle([a, a[:2]])

    with pytest.raises(UsageError, match="equal length"):
        run_three(prog)
    assert run_three(lambda rt: rt.shuffle([])) == [[], [], []]
