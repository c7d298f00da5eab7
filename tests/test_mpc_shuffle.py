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
    assert rounds == 3 and kinds == ["AShare", "AShare", "BShare", "BShare"]
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


def test_outsider_of_each_pass_receives_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Pass k is run by parties k and k+1 alone: party k+2 gets no message in it, so it
    never sees anything permuted by that pass's permutation."""
    from veilql.engine.transport.base import read_transcript

    n = 64

    def prog(rt: Runtime, v):  # type: ignore[no-untyped-def]
        x = rt.share(0, v, n)
        return rt.open(rt.shuffle([x])[0])

    out = run_three(prog, [np.arange(n, dtype=U64), None, None],
                    transcript_dir=str(tmp_path))[0]
    assert sorted(out.tolist()) == list(range(n)) and out.tolist() != list(range(n))
    for c in range(3):
        k = (c - 2) % 3
        tags = [t for _, t, _ in read_transcript(tmp_path / f"p{c}.bin")]
        assert not any(t.endswith(f"/p{k}") for t in tags)
        assert sum(t.startswith("shuffle") for t in tags) == 2  # one per other pass


def test_unequal_lengths_refused() -> None:
    def prog(rt: Runtime):  # type: ignore[no-untyped-def]
        a = rt.share(0, np.zeros(3, U64) if rt.me == 0 else None, 3)
        return rt.shuffle([a, a[:2]])

    with pytest.raises(UsageError, match="equal length"):
        run_three(prog)
    assert run_three(lambda rt: rt.shuffle([])) == [[], [], []]
