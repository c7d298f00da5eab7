"""The AES-CTR PRG, stream separation, permutations and pairwise seed agreement."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from veilql.engine.mpc.prg import PairwiseSeeds, Prg
from veilql.engine.transport.inprocess import InProcessNetwork
from veilql.errors import ProtocolError


def test_same_seed_same_words_in_any_draw_order() -> None:
    g1, g2 = Prg(b"k" * 16), Prg(b"k" * 16)
    a1 = g1.array("zero", "t:1", 100)
    b1 = g1.array("mask", "t:1", 100)
    b2 = g2.array("mask", "t:1", 100)
    a2 = g2.array("zero", "t:1", 100)
    assert (a1 == a2).all() and (b1 == b2).all()
    assert not (a1 == b1).all()  # purposes use different keys


def test_known_answer_is_aes_ctr() -> None:
    """First keystream block equals AES_k(nonce || 0), checked against raw AES-ECB."""
    import hashlib
    import hmac

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    seed = bytes(range(16))
    key = hmac.new(seed, b"veilql/prg/zero", hashlib.sha256).digest()[:16]
    block = hashlib.sha256(b"lbl").digest()[:12] + bytes(4)
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    expect = enc.update(block) + enc.finalize()
    assert Prg(seed).bytes("zero", "lbl", 16).tobytes() == expect


def test_reusing_a_label_is_refused() -> None:
    g = Prg(bytes(16))
    g.array("mask", "x", 4)
    with pytest.raises(ProtocolError, match="drawn twice"):
        g.array("mask", "x", 4)


def test_bad_seed_length() -> None:
    with pytest.raises(ProtocolError):
        Prg(b"short")


def test_bytes_look_uniform() -> None:
    data = Prg(bytes(16)).bytes("mask", "u", 1 << 18)
    counts = np.bincount(data, minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-4
    assert data.dtype == np.uint8 and data.flags.writeable


def test_dtypes_and_shapes() -> None:
    g = Prg(bytes(16))
    assert g.array("m", "a", (2, 3), np.uint8).shape == (2, 3)
    assert g.array("m", "b", 0).shape == (0,)
    assert g.array("m", "c", (), np.uint16).shape == ()


def test_permutation_is_a_permutation_and_uniform() -> None:
    g = Prg(bytes(16))
    assert g.permutation("perm", "empty", 0).tolist() == []
    assert g.permutation("perm", "one", 1).tolist() == [0]
    p = g.permutation("perm", "big", 1000)
    assert sorted(p.tolist()) == list(range(1000))
    # All 6 orders of 3 elements appear about equally often.
    counts: dict[tuple[int, ...], int] = {}
    for i in range(3000):
        key = tuple(g.permutation("perm", f"s{i}", 3).tolist())
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 6
    assert stats.chisquare(list(counts.values())).pvalue > 1e-4


def test_pairwise_seeds_ring() -> None:
    names = ("a", "b", "c")
    net = InProcessNetwork(names, timeout=5)
    for i, n in enumerate(names):  # sends never block, so run sequentially
        net.endpoint(n).send(names[(i - 1) % 3], "seeds", bytes([i]) * 16)
    got = []
    for i, n in enumerate(names):
        ep = net.endpoint(n)
        theirs = ep.recv(names[(i + 1) % 3], "seeds")
        got.append(theirs)
    assert got == [bytes([1]) * 16, bytes([2]) * 16, bytes([0]) * 16]


def test_agree_matches_neighbours() -> None:
    import threading

    names = ("a", "b", "c")
    net = InProcessNetwork(names, timeout=5)
    seeds: list[PairwiseSeeds | None] = [None] * 3

    def run(i: int) -> None:
        seeds[i] = PairwiseSeeds.agree(net.endpoint(names[i]), names, i)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for i in range(3):
        mine, nxt = seeds[i], seeds[(i + 1) % 3]
        assert mine is not None and nxt is not None
        # party i's next seed is party i+1's prev seed
        assert (mine.next.array("z", f"l{i}", 4) == nxt.prev.array("z", f"l{i}", 4)).all()
        assert not (mine.prev.array("y", "l", 4) == mine.next.array("y", "l", 4)).all()
        # the common seed is the same at all three and differs from the pairwise ones
        assert mine.common is not None and nxt.common is not None
        assert (mine.common.array("c", f"k{i}", 4) == nxt.common.array("c", f"k{i}", 4)).all()
        assert not (mine.common.array("w", "l", 4) == mine.prev.array("w", "l", 4)).all()


def test_reuse_guard_is_a_bounded_window(monkeypatch: pytest.MonkeyPatch) -> None:
    from veilql.engine.mpc import prg

    monkeypatch.setattr(prg, "RECENT_LABELS", 8)
    g = Prg(bytes(16))
    for i in range(20):
        g.array("mask", f"l{i}", 1)
    assert len(g._used) == 8
    with pytest.raises(ProtocolError):
        g.array("mask", "l19", 1)
