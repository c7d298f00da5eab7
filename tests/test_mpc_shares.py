"""Local operations on replicated shares, checked by reconstructing from the components."""

from __future__ import annotations

import numpy as np
import pytest

from veilql.engine.mpc.shares import AShare, BShare, as_ring

RNG = np.random.default_rng(7)
U64 = np.uint64


def split_a(x: np.ndarray) -> list[AShare]:
    c0 = RNG.integers(0, 2**64, x.shape, dtype=U64)
    c1 = RNG.integers(0, 2**64, x.shape, dtype=U64)
    c = [c0, c1, x - c0 - c1]
    return [AShare(i, c[i], c[(i + 1) % 3]) for i in range(3)]


def split_b(x: np.ndarray) -> list[BShare]:
    c0 = RNG.integers(0, np.iinfo(x.dtype).max, x.shape, dtype=x.dtype, endpoint=True)
    c1 = RNG.integers(0, np.iinfo(x.dtype).max, x.shape, dtype=x.dtype, endpoint=True)
    c = [c0, c1, x ^ c0 ^ c1]
    return [BShare(i, c[i], c[(i + 1) % 3]) for i in range(3)]


def rec_a(sh: list[AShare]) -> np.ndarray:
    # consistency of the replication: party i's b is party i+1's a
    for i in range(3):
        assert (sh[i].b == sh[(i + 1) % 3].a).all()
    return np.stack([s.a for s in sh]).sum(axis=0, dtype=U64)


def rec_b(sh: list[BShare]) -> np.ndarray:
    for i in range(3):
        assert (sh[i].b == sh[(i + 1) % 3].a).all()
    return sh[0].a ^ sh[1].a ^ sh[2].a


EDGE = np.array([0, 1, 2**63 - 1, 2**63, 2**64 - 1, 12345], dtype=U64)


def test_arithmetic_local_ops() -> None:
    x, y = EDGE, EDGE[::-1].copy()
    sx, sy = split_a(x), split_a(y)
    assert (rec_a([a + b for a, b in zip(sx, sy, strict=True)]) == x + y).all()
    assert (rec_a([a - b for a, b in zip(sx, sy, strict=True)]) == x - y).all()
    assert (rec_a([-a for a in sx]) == -x).all()
    assert (rec_a([a * 3 for a in sx]) == x * U64(3)).all()
    assert (rec_a([a * -1 for a in sx]) == -x).all()
    assert (rec_a([a + 5 for a in sx]) == x + U64(5)).all()
    assert (rec_a([7 - a for a in sx]) == U64(7) - x).all()
    assert (rec_a([a - np.arange(6) for a in sx]) == x - np.arange(6, dtype=U64)).all()
    assert (rec_a([a * np.arange(6) for a in sx]) == x * np.arange(6, dtype=U64)).all()
    assert int(rec_a([a.sum() for a in sx])) == int(x.sum(dtype=U64))


def test_constant_touches_one_component() -> None:
    sx = split_a(EDGE)
    moved = [a + 9 for a in sx]
    assert (moved[1].a == sx[1].a).all() and (moved[1].b == sx[1].b).all()
    assert (moved[0].b == sx[0].b).all() and (moved[2].a == sx[2].a).all()


def test_boolean_local_ops() -> None:
    x = EDGE
    y = RNG.integers(0, 2**64, x.shape, dtype=U64)
    sx, sy = split_b(x), split_b(y)
    assert (rec_b([a ^ b for a, b in zip(sx, sy, strict=True)]) == x ^ y).all()
    assert (rec_b([a ^ 0xFF for a in sx]) == x ^ U64(0xFF)).all()
    assert (rec_b([~a for a in sx]) == ~x).all()
    assert (rec_b([a & 0xF0F0 for a in sx]) == x & U64(0xF0F0)).all()
    assert (rec_b([a | 0x3 for a in sx]) == x | U64(3)).all()
    assert (rec_b([a << 5 for a in sx]) == x << U64(5)).all()
    assert (rec_b([a >> 63 for a in sx]) == x >> U64(63)).all()
    assert (rec_b([a ^ -1 for a in sx]) == ~x).all()


def test_small_dtype_bits() -> None:
    bits = np.array([0, 1, 1, 0], dtype=np.uint8)
    sb = split_b(bits)
    assert (rec_b([b ^ 1 for b in sb]) == bits ^ 1).all()
    assert sb[0].dtype == np.uint8


def test_indexing_concat_stack_reshape() -> None:
    x = np.arange(10, dtype=U64) * U64(3)
    sx = split_a(x)
    idx = np.array([9, 0, 0, 4])
    assert (rec_a([a[idx] for a in sx]) == x[idx]).all()
    assert (rec_a([a[2:5] for a in sx]) == x[2:5]).all()
    assert (rec_a([a[x > 10] for a in sx]) == x[x > 10]).all()
    cat = [AShare.concat([a, a[:2]]) for a in sx]
    assert (rec_a(cat) == np.concatenate([x, x[:2]])).all()
    st = [AShare.stack([a, a]) for a in sx]
    assert rec_a(st).shape == (2, 10)
    assert rec_a([a.reshape(2, 5) for a in sx]).tolist() == x.reshape(2, 5).tolist()
    assert len(sx[0]) == 10 and sx[0].shape == (10,)
    assert "AShare" in repr(sx[0])


def test_share_products_need_a_protocol() -> None:
    sx = split_a(EDGE)
    with pytest.raises(TypeError, match="Runtime.mul"):
        sx[0] * sx[0]
    sb = split_b(EDGE)
    with pytest.raises(TypeError, match="Runtime.and_"):
        sb[0] & sb[0]
    with pytest.raises(TypeError):
        as_ring(1.5)
    with pytest.raises(ValueError):
        AShare.concat([])
