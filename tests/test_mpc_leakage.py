"""What a party receives does not depend on the secrets.

(a) For two very different secret inputs, the bytes party 1 receives during LT, mul
    and shuffle are uniform (chi-square on byte values) and indistinguishable from
    each other (chi-square two-sample test on the byte histograms).
(b) With ``VEIL_TRANSCRIPT_DIR`` set, the transcripts of parties 1 and 2 never contain
    party 0's input values as 8-byte little-endian words.

Seeds are made deterministic here (a counter instead of ``os.urandom``) so the
statistical tests give the same answer on every run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from veilql.engine.mpc.runtime import Runtime
from veilql.engine.mpc.testing import deterministic_seeds, run_three
from veilql.engine.transport.base import read_transcript

U64 = np.uint64
N = 20000
P_MIN = 1e-6


@pytest.fixture
def fixed_seeds() -> Iterator[None]:
    with deterministic_seeds("leakage"):
        yield


def received(tmp: Path, party: str, prefixes: tuple[str, ...]) -> dict[str, bytes]:
    """Payload bytes ``party`` received, per tag, for tags starting with ``prefixes``."""
    out: dict[str, bytes] = {}
    for _sender, tag, payload in read_transcript(tmp / f"{party}.bin"):
        if tag.startswith(prefixes):
            out[tag] = out.get(tag, b"") + payload
    return out


def run_ops(tmp: Path, x: np.ndarray, y: np.ndarray) -> None:
    def prog(rt: Runtime, xv, yv):  # type: ignore[no-untyped-def]
        a = rt.share(0, xv, N)
        b = rt.share(2, yv, N)
        rt.lt(a, b)
        rt.mul(a, b)
        rt.shuffle([a, b])

    run_three(prog, [x, None, None], [None, None, y], transcript_dir=str(tmp))


def byte_hist(data: bytes) -> np.ndarray:
    return np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)


def test_chi_square_detects_structure() -> None:
    """The statistic used below rejects non-uniform bytes (so the tests can fail)."""
    plain = np.arange(N, dtype=U64).tobytes()
    assert stats.chisquare(byte_hist(plain)).pvalue < P_MIN
    rnd = np.random.default_rng(0).integers(0, 256, 200000, dtype=np.uint8).tobytes()
    table = np.stack([byte_hist(plain), byte_hist(rnd)])
    assert stats.chi2_contingency(table).pvalue < P_MIN


def test_received_bytes_do_not_depend_on_inputs(tmp_path: Path, fixed_seeds: None) -> None:
    zeros = np.zeros(N, dtype=U64)
    rng = np.random.default_rng(5)
    x2 = rng.integers(-(2**61), 2**61, N).view(U64)
    y2 = rng.integers(-(2**61), 2**61, N).view(U64)
    run_ops(tmp_path / "a", zeros, zeros)
    run_ops(tmp_path / "b", x2, y2)
    prefixes = ("msb", "mul", "shuffle")
    got_a = received(tmp_path / "a", "p1", prefixes)
    got_b = received(tmp_path / "b", "p1", prefixes)
    assert got_a.keys() == got_b.keys()
    assert {t.split(":")[0] for t in got_a} == {"msb", "mul", "shuffle"}
    for tag in got_a:
        ha, hb = byte_hist(got_a[tag]), byte_hist(got_b[tag])
        assert len(got_a[tag]) == len(got_b[tag])
        if ha.sum() < 5 * 256:
            continue
        assert stats.chisquare(ha).pvalue > P_MIN, tag
        assert stats.chisquare(hb).pvalue > P_MIN, tag
        assert stats.chi2_contingency(np.stack([ha, hb])).pvalue > P_MIN, tag
    # And all of it together, per protocol.
    for p in prefixes:
        ha = byte_hist(b"".join(v for k, v in got_a.items() if k.startswith(p)))
        hb = byte_hist(b"".join(v for k, v in got_b.items() if k.startswith(p)))
        assert stats.chi2_contingency(np.stack([ha, hb])).pvalue > P_MIN, p


def words_present(blob: bytes, values: np.ndarray) -> int:
    return sum(blob.find(int(v).to_bytes(8, "little")) >= 0 for v in values.tolist())


def test_transcripts_never_contain_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VEIL_TRANSCRIPT_DIR", str(tmp_path))
    n = 2000
    rng = np.random.default_rng(11)
    x = rng.integers(-(2**61), 2**61, n).view(U64)  # distinctive 64-bit words
    y = rng.integers(-(2**61), 2**61, n).view(U64)

    def prog(rt: Runtime, xv, yv):  # type: ignore[no-untyped-def]
        a = rt.share(0, xv, n)
        b = rt.share(1, yv, n)
        rt.lt(a, b)
        rt.eq(a, b)
        rt.mul(a, b)
        rt.a2b(a)
        rt.b2a_bit(rt.lt(a, 0))
        rt.mux(rt.lt(a, b), a, b)
        rt.shuffle([a, b])
        rt.reshare(a)
        rt.dot(a, b)
        if rt.me == 0:  # control: a plaintext leak must be detected
            rt.transport.send("p2", "control", xv[:10].tobytes())
        if rt.me == 2:
            rt.transport.recv("p0", "control")

    run_three(prog, [x, None, None], [None, y, None])
    blob1 = b"".join(p for _, _, p in read_transcript(tmp_path / "p1.bin"))
    blob2 = b"".join(p for s, t, p in read_transcript(tmp_path / "p2.bin") if t != "control")
    control = b"".join(p for s, t, p in read_transcript(tmp_path / "p2.bin") if t == "control")
    assert len(blob1) > 100 * n and len(blob2) > 100 * n
    assert words_present(blob1, x) == 0
    assert words_present(blob2, x) == 0 and words_present(blob2, y) == 0
    assert words_present(blob1 + blob2, x[:50] + y[:50]) == 0
    assert words_present(control, x[:10]) == 10
