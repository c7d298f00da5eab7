"""The secure runtime over the network: three real processes connected by mutual TLS.

The same protocol code as the in-process tests, checked against numpy; plus a party killed
in the middle of a protocol, which the others must report as ``PartyUnavailable`` naming it,
from the dead connection rather than after the timeout.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from veilql.engine.mpc.runtime import Runtime
from veilql.engine.transport.base import read_transcript
from veilql.engine.transport.launch import run_parties_tls, run_parties_tls_detailed
from veilql.errors import PartyUnavailable

PARTIES = ("p0", "p1", "p2")
pytestmark = pytest.mark.network


def _runtime(transport: Any) -> Runtime:
    rt = Runtime(transport, PARTIES)
    rt.setup()
    return rt


def _protocols(transport: Any, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """share/open/add/mul/lt/eq/shuffle on x (owned by p0) and y (owned by p1)."""
    rt = _runtime(transport)
    n = len(x)
    sx = rt.share(0, x if rt.me == 0 else None, n)
    sy = rt.share(1, y if rt.me == 1 else None, n)
    shuffled = rt.shuffle([sx, sy])
    return {
        "x": rt.open(sx),
        "add": rt.open(sx + sy),
        "mul": rt.open(rt.mul(sx, sy)),
        "lt": rt.open(rt.lt(sx, sy)),
        "eq": rt.open(rt.eq(sx, sy)),
        "shuffled": [rt.open(c) for c in shuffled],
        "to_p2": rt.open_to(sx, 2),
        "rounds": rt.rounds,
    }


def _inputs(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2026)
    lim = 2**62
    x = rng.integers(-lim, lim, size=n, dtype=np.int64)
    y = rng.integers(-lim, lim, size=n, dtype=np.int64)
    edges = np.array([0, -1, 1, lim - 1, -lim, 5, -7], dtype=np.int64)
    x[: len(edges)] = edges
    y[: len(edges)] = [0, 0, -1, -lim, lim - 1, 5, -7]  # includes equal pairs
    y[len(edges): len(edges) + 50] = x[len(edges): len(edges) + 50]
    return x.view(np.uint64), y.view(np.uint64)


def test_protocols_over_tls_match_numpy() -> None:
    x, y = _inputs(3000)
    res = run_parties_tls(f"{__name__}:_protocols", PARTIES, (x, y), timeout=20)
    xi, yi = x.view(np.int64), y.view(np.int64)
    for i, r in enumerate(res):
        assert np.array_equal(r["x"], x)
        assert np.array_equal(r["add"], x + y)  # wraps mod 2^64
        assert np.array_equal(r["mul"], x * y)
        assert np.array_equal(r["lt"].astype(bool), xi < yi)
        assert np.array_equal(r["eq"].astype(bool), xi == yi)
        rows = sorted(zip(r["shuffled"][0].tolist(), r["shuffled"][1].tolist(), strict=True))
        assert rows == sorted(zip(x.tolist(), y.tolist(), strict=True))
        assert (r["to_p2"] is None) == (i != 2)
        for key in ("x", "lt", "eq", "rounds"):
            assert np.array_equal(np.asarray(r[key]), np.asarray(res[0][key]))
        for a, b in zip(r["shuffled"], res[0]["shuffled"], strict=True):
            assert np.array_equal(a, b)  # every party opens the same permutation
    assert np.array_equal(res[2]["to_p2"], x)
    # The shuffle really permutes (3000 rows: the identity has negligible probability).
    assert not np.array_equal(res[0]["shuffled"][0], x)


def _mul_forever(transport: Any) -> None:
    """Multiply in a loop until a peer dies; p2 just keeps going until it is killed."""
    rt = _runtime(transport)
    n = 1000
    a = rt.share(0, np.arange(n, dtype=np.uint64) if rt.me == 0 else None, n)
    last_ok = time.monotonic()
    rounds = 0
    try:
        while True:
            a = rt.mul(a, a)
            rounds += 1
            last_ok = time.monotonic()
            time.sleep(0.005)
    except PartyUnavailable as exc:
        # Travels back with the error; the transport then aborts, naming the culprit.
        exc.stalled = time.monotonic() - last_ok  # type: ignore[attr-defined]
        exc.rounds = rounds  # type: ignore[attr-defined]
        raise


def test_killed_party_mid_protocol_gives_party_unavailable() -> None:
    timeout = 10.0
    outcomes = run_parties_tls_detailed(
        f"{__name__}:_mul_forever", PARTIES, timeout=timeout, kill={"p2": 0.5},
    )
    assert outcomes[2].killed
    for o in outcomes[:2]:
        err = o.error
        assert isinstance(err, PartyUnavailable), err
        # Whether it saw p2's socket die or heard it from the other survivor, it names p2.
        assert err.party == "p2", err
        assert err.rounds > 5  # type: ignore[attr-defined]  # p2 died mid-protocol
        # Noticed from the dead socket within a fraction of a second, not by timing out.
        assert err.stalled < 1.0 < timeout  # type: ignore[attr-defined]


def test_network_transcripts_hold_no_plaintext_input(tmp_path: Path) -> None:
    x = (np.arange(64, dtype=np.uint64) * 1_000_003 + 12345)
    run_parties_tls(f"{__name__}:_share_and_mul", PARTIES, (x,), timeout=20,
                    env={"VEIL_TRANSCRIPT_DIR": str(tmp_path)})
    for p in PARTIES:
        recs = read_transcript(tmp_path / f"{p}.bin")
        tags = [t for _, t, _ in recs]
        assert any(t.startswith("mul") for t in tags) and len(recs) >= 2, tags
        assert all(x.tobytes() not in payload for _, _, payload in recs)


def _share_and_mul(transport: Any, x: np.ndarray) -> None:
    rt = _runtime(transport)
    s = rt.share(0, x if rt.me == 0 else None, len(x))
    rt.mul(s, s)
