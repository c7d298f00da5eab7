"""Runtime.parallel: independent programs at the same time on forked runtimes.

The join's two sides are shared, shuffled and opened this way (operators/join.py), so the
children must get the same tags at every party whatever the threads' timing, give the same
answers as the programs run one after the other, count rounds as the longest program, and
hand back an error as soon as one program fails.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from veilql.engine.mpc.runtime import Runtime
from veilql.engine.mpc.testing import run_three
from veilql.errors import UsageError

U64 = np.uint64
RNG = np.random.default_rng(7)


@pytest.mark.parametrize("n", [0, 1, 5, 3001])
@pytest.mark.parametrize("lead", [None, 0, 1, 2])
def test_two_shuffles_and_a_product_at_once_match_numpy(n: int, lead: int | None) -> None:
    xs = RNG.integers(0, 2**62, n, dtype=U64)
    ys = RNG.integers(0, 2**20, n, dtype=U64)
    zs = RNG.integers(0, 2**20, n, dtype=U64)

    def prog(rt: Runtime, x, y, z):  # type: ignore[no-untyped-def]
        # Different parties hold the inputs; a slow start at one party and one thread
        # must not change which message goes with which tag.
        def shuffled(r: Runtime) -> np.ndarray:
            if r.me == 1:
                time.sleep(0.05)
            a = r.share(0, x, n)
            return r.open(r.shuffle([a], lead=lead)[0])

        def other(r: Runtime) -> np.ndarray:
            b = r.share(1, y, n)
            return r.open(r.shuffle([b], lead=None if lead is None else lead + 1)[0])

        def product(r: Runtime) -> np.ndarray:
            return r.open(r.mul(r.share(2, z, n), r.share(2, z, n)))

        before = rt.rounds
        out = rt.parallel(shuffled, other, product)
        return out, rt.rounds - before, rt.tag("after")

    res = run_three(prog, [xs, None, None], [None, ys, None], [None, None, zs])
    (sx, sy, prod), rounds, after = res[0]
    assert all(r[2] == after for r in res)  # the parent's counter moved by one fork tag
    for got in res:
        assert [a.tolist() for a in got[0]] == [sx.tolist(), sy.tolist(), prod.tolist()]
    assert sorted(sx.tolist()) == sorted(xs.tolist())
    assert sorted(sy.tolist()) == sorted(ys.tolist())
    assert (prod == zs * zs).all()
    # share + shuffle (2) + open: the longest program's rounds, not the sum.
    assert rounds == _rounds_alone(n), rounds


def _rounds_alone(n: int) -> int:
    """Rounds of share + shuffle + open of one column run alone."""
    def prog(rt: Runtime, x):  # type: ignore[no-untyped-def]
        before = rt.rounds
        rt.open(rt.shuffle([rt.share(0, x, n)])[0])
        return rt.rounds - before

    return run_three(prog, [np.zeros(n, U64), None, None])[0]


def test_children_tags_are_distinct_and_prefixed() -> None:
    def prog(rt: Runtime):  # type: ignore[no-untyped-def]
        kids = rt.fork(2)
        return [k.tag("mul") for k in kids] + [kids[0].tag("mul"), rt.tag("mul")]

    res = run_three(prog)
    assert res[0] == res[1] == res[2]
    a, b, a2, parent = res[0]
    assert len({a, b, a2, parent}) == 4
    assert a.endswith("/0/mul:1") and b.endswith("/1/mul:1") and a2.endswith("/0/mul:2")


def test_a_failed_program_is_raised_at_once_while_another_still_waits() -> None:
    # At a party whose local SQL fails, one side of the join fails while the other waits
    # for peers that wait for this party: waiting for both would stall until the timeout.
    release = threading.Event()

    def prog(rt: Runtime):  # type: ignore[no-untyped-def]
        def waits(r: Runtime) -> int:
            release.wait(20)
            return 1

        def fails(r: Runtime) -> int:
            raise UsageError("second program failed", "nothing to fix: a test")

        started = time.monotonic()
        with pytest.raises(UsageError, match="second program failed"):
            rt.parallel(waits, fails)
        return time.monotonic() - started

    took = run_three(prog)
    release.set()
    assert max(took) < 5, took


def test_a_party_stalled_in_one_program_is_named_within_the_timeout() -> None:
    # A party that goes silent in the second of two concurrent programs (e.g. the second
    # side's shuffle): its peers are told who, within the timeout, not after both end.
    from veilql.errors import PartyUnavailable

    def prog(rt: Runtime, x):  # type: ignore[no-untyped-def]
        def side(r: Runtime) -> np.ndarray:
            return r.open(r.shuffle([r.share(0, x, 64)])[0])

        def stalls(r: Runtime) -> np.ndarray:
            if r.me == 2:
                time.sleep(2)  # silent: no message, no heartbeat
            return r.open(r.shuffle([r.share(0, x, 64)])[0])

        started = time.monotonic()
        try:
            rt.parallel(side, stalls)
        except PartyUnavailable as exc:
            return time.monotonic() - started, str(exc)
        return time.monotonic() - started, ""

    xs = np.arange(64, dtype=U64)
    res = run_three(prog, [xs, None, None], timeout=0.5)
    for took, message in res[:2]:
        assert took < 1.8 and "p2" in message, (took, message)
