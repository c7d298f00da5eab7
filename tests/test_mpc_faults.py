"""A dead or silent party becomes PartyUnavailable at the others, within the timeout."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from veilql.engine.mpc.runtime import Runtime
from veilql.engine.mpc.testing import run_three
from veilql.engine.transport.inprocess import InProcessNetwork
from veilql.errors import PartyUnavailable, ProtocolError

U64 = np.uint64


def test_party_raising_mid_protocol_stops_the_others() -> None:
    seen: dict[int, BaseException] = {}

    def prog(rt: Runtime) -> None:
        x = rt.share(0, np.arange(100, dtype=U64) if rt.me == 0 else None, 100)
        if rt.me == 2:
            raise RuntimeError("party 2 crashed")
        try:
            rt.lt(x, 50)
        except PartyUnavailable as exc:
            seen[rt.me] = exc
            raise

    start = time.monotonic()
    with pytest.raises(RuntimeError, match="crashed"):
        run_three(prog, timeout=20.0)
    assert time.monotonic() - start < 5.0  # marked dead: no need to wait the timeout
    assert set(seen) == {0, 1}
    # The first to notice names p2; a party waiting on that one may name it instead.
    assert any(e.party == "p2" for e in seen.values())


def test_silent_party_times_out() -> None:
    names = ("p0", "p1", "p2")
    net = InProcessNetwork(names, timeout=0.5)
    errors: list[BaseException] = []

    def party(i: int) -> None:
        rt = Runtime(net.endpoint(names[i]), names)
        try:
            rt.setup()  # p2 never runs, so this (or the next round) waits on it
            rt.mul(rt.share(0, np.ones(5, U64) if i == 0 else None, 5),
                   rt.share(1, np.ones(5, U64) if i == 1 else None, 5))
        except PartyUnavailable as exc:
            errors.append(exc)

    start = time.monotonic()
    ts = [threading.Thread(target=party, args=(i,)) for i in (0, 1)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.monotonic() - start
    assert len(errors) == 2 and 0.4 < elapsed < 3.0
    assert any(e.party == "p2" for e in errors)
    assert errors[0].exit_code == 3 and errors[0].hint


def test_wrong_message_size_is_a_protocol_error() -> None:
    def prog(rt: Runtime) -> None:
        n = 10 if rt.me == 0 else 11  # parties disagree on the shape
        rt.share(0, np.zeros(n, U64) if rt.me == 0 else None, n)

    with pytest.raises(ProtocolError, match="expected"):
        run_three(prog, timeout=5.0)
