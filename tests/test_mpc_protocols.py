"""Every protocol of the secure runtime against numpy, on random and edge inputs."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veilql.engine.mpc.protocols.arith import share_from_outside
from veilql.engine.mpc.runtime import Runtime
from veilql.engine.mpc.shares import AShare, BShare
from veilql.engine.mpc.testing import run_three
from veilql.engine.transport.inprocess import InProcessNetwork
from veilql.errors import UsageError

U64 = np.uint64
RNG = np.random.default_rng(2026)
EDGE = np.array([0, 1, 2**63 - 1, 2**63, 2**64 - 1, 2, 2**64 - 2, 2**32, 2**32 - 1],
                dtype=U64)
LIM = 2**62 - 1  # comparisons are exact when |x|, |y| < 2^62


def rand_u64(n: int) -> np.ndarray:
    return RNG.integers(0, 2**64, n, dtype=U64)


def in_range(n: int, lim: int = LIM) -> np.ndarray:
    return RNG.integers(-lim, lim, n, endpoint=True, dtype=np.int64)


def shared(fn, x: np.ndarray, y: np.ndarray | None = None):  # type: ignore[no-untyped-def]
    """Party 0 shares x, party 1 shares y; fn(rt, a, b) runs at all; party 0's result."""
    n = x.shape
    m = y.shape if y is not None else (0,)

    def prog(rt: Runtime, xv, yv):  # type: ignore[no-untyped-def]
        a = rt.share(0, xv, n)
        b = rt.share(1, yv, m)
        return fn(rt, a, b)

    res = run_three(prog, [x, None, None], [None, y if y is not None else np.zeros(0, U64), None])
    return res[0]


@pytest.mark.parametrize("n", [0, 1, 1000])
def test_share_and_open_from_every_owner(n: int) -> None:
    x = rand_u64(n)

    def prog(rt: Runtime, v):  # type: ignore[no-untyped-def]
        outs = []
        for owner in (0, "p1", 2):
            s = rt.share(owner, v if rt.me == rt.party_index(owner) else None, n)
            outs.append(rt.open(s))
        b = rt.share(1, v.astype(np.uint8) if rt.me == 1 else None, n, boolean=True,
                     dtype=np.uint8)
        outs.append(rt.open(b))
        return outs

    res = run_three(prog, [x, x, x])
    for party in res:
        for out in party[:3]:
            assert out.dtype == U64 and (out == x).all()
        assert party[3].dtype == np.uint8 and (party[3] == x.astype(np.uint8)).all()


def test_open_to_reveals_to_one_party_only() -> None:
    x = EDGE

    def prog(rt: Runtime, v):  # type: ignore[no-untyped-def]
        s = rt.share(0, v, len(EDGE))
        return [rt.open_to(s, j) for j in (0, 1, "p2")]

    res = run_three(prog, [x, None, None])
    for i in range(3):
        for j in range(3):
            if i == j:
                assert (res[i][j] == x).all()
            else:
                assert res[i][j] is None


def test_share_from_a_fourth_data_party() -> None:
    names = ("p0", "p1", "p2", "bank")
    net = InProcessNetwork(names, timeout=10)
    x = np.array([-5, 0, 2**40, 7], dtype=np.int64)
    out: list[np.ndarray | None] = [None] * 3

    def compute(i: int) -> None:
        rt = Runtime(net.endpoint(names[i]), names[:3])
        rt.setup()
        s = rt.receive_input("bank", "input:amount", 4)
        out[i] = rt.open(s)

    ts = [threading.Thread(target=compute, args=(i,)) for i in range(3)]
    for t in ts:
        t.start()
    share_from_outside(net.endpoint("bank"), names[:3], x, "input:amount")
    for t in ts:
        t.join()
    for o in out:
        assert o is not None and o.view(np.int64).tolist() == x.tolist()


def test_reshare_changes_components_not_value() -> None:
    x = rand_u64(50)

    def prog(rt: Runtime, v):  # type: ignore[no-untyped-def]
        s = rt.share(0, v, 50)
        r = rt.reshare(s)
        b = rt.share(0, v, 50, boolean=True)
        rb = rt.reshare(b)
        return rt.open(r), bool((r.a == s.a).any()), rt.open(rb)

    for val, same, valb in run_three(prog, [x, None, None]):
        assert (val == x).all() and not same and (valb == x).all()


@pytest.mark.parametrize("n", [0, 1, 5000])
def test_mul_random(n: int) -> None:
    x, y = rand_u64(n), rand_u64(n)
    out = shared(lambda rt, a, b: rt.open(rt.mul(a, b)), x, y)
    assert (out == x * y).all()


def test_mul_edges_all_pairs() -> None:
    x = np.repeat(EDGE, len(EDGE))
    y = np.tile(EDGE, len(EDGE))
    out = shared(lambda rt, a, b: rt.open(rt.mul(a, b)), x, y)
    assert (out == x * y).all()
    signed = shared(lambda rt, a, b: rt.open(rt.mul(a, b)),
                    np.array([-3, 4, -5], dtype=np.int64), np.array([7, -8, -9]))
    assert signed.view(np.int64).tolist() == [-21, -32, 45]


def test_mul_lists_batch_into_one_round() -> None:
    x, y = rand_u64(30), rand_u64(30)

    def fn(rt: Runtime, a: AShare, b: AShare):  # type: ignore[no-untyped-def]
        before = rt.rounds
        prods = rt.mul([a, a[:10], b.reshape(5, 6)], [b, b[:10], a.reshape(5, 6)])
        rounds = rt.rounds - before
        return [rt.open(p) for p in prods], rounds, rt.open(rt.mul(a, 3))

    outs, rounds, scaled = shared(fn, x, y)
    assert rounds == 1
    assert (outs[0] == x * y).all() and (outs[1] == (x * y)[:10]).all()
    assert (outs[2] == (x * y).reshape(5, 6)).all()
    assert (scaled == x * U64(3)).all()


def test_mul_shape_mismatch() -> None:
    with pytest.raises(UsageError):
        shared(lambda rt, a, b: rt.mul(a, b), rand_u64(3), rand_u64(4))


def test_dot_products() -> None:
    x, y = rand_u64(24), rand_u64(24)

    def fn(rt: Runtime, a: AShare, b: AShare):  # type: ignore[no-untyped-def]
        before = rt.rounds
        d2 = rt.dot(a.reshape(4, 6), b.reshape(4, 6))
        one = rt.rounds - before
        return rt.open(rt.dot(a, b)), rt.open(d2), one, rt.open(rt.dot(a[:0], b[:0]))

    d1, d2, rounds, d0 = shared(fn, x, y)
    assert int(d1) == int((x * y).sum(dtype=U64))
    assert (d2 == (x * y).reshape(4, 6).sum(axis=1, dtype=U64)).all()
    assert rounds == 1 and int(d0) == 0


@pytest.mark.parametrize("dtype", [np.uint64, np.uint8])
def test_and_xor(dtype: type) -> None:
    n = 2000
    info = np.iinfo(dtype)
    x = RNG.integers(0, info.max, n, dtype=dtype, endpoint=True)
    y = RNG.integers(0, info.max, n, dtype=dtype, endpoint=True)

    def prog(rt: Runtime, xv, yv):  # type: ignore[no-untyped-def]
        a = rt.share(0, xv, n, boolean=True, dtype=dtype)
        b = rt.share(2, yv, n, boolean=True, dtype=dtype)
        both = rt.and_([a, b], [b, b ^ 1])
        return (rt.open(rt.and_(a, b)), rt.open(a ^ b), [rt.open(c) for c in both],
                rt.open(rt.and_(a, 0x0F)))

    res = run_three(prog, [x, None, None], [None, None, y])[1]
    assert (res[0] == x & y).all() and (res[1] == x ^ y).all()
    assert (res[2][0] == x & y).all() and (res[2][1] == y & (y ^ dtype(1))).all()
    assert (res[3] == x & dtype(0x0F)).all()


def test_a2b_random_and_edges() -> None:
    x = np.concatenate([EDGE, rand_u64(3000)])

    def fn(rt: Runtime, a: AShare, _b: AShare):  # type: ignore[no-untyped-def]
        before = rt.rounds
        b = rt.a2b(a)
        rounds = rt.rounds - before
        return rt.open(b), rounds, rt.open(rt.a2b(a[:0])), rt.open(rt.a2b(a[:1]))

    out, rounds, empty, one = shared(fn, x)
    assert out.dtype == U64 and (out == x).all()
    assert rounds == 7
    assert empty.size == 0 and (one == x[:1]).all()


def test_b2a_bits() -> None:
    bits = RNG.integers(0, 2, 3000, dtype=np.uint8)
    words = rand_u64(3000)  # only bit 0 matters

    def prog(rt: Runtime, bv, wv):  # type: ignore[no-untyped-def]
        b = rt.share(1, bv, 3000, boolean=True, dtype=np.uint8)
        w = rt.share(2, wv, 3000, boolean=True)
        before = rt.rounds
        ab = rt.b2a_bit(b)
        rounds = rt.rounds - before
        return rt.open(ab), rounds, rt.open(rt.b2a_bit(w)), rt.open(rt.b2a_bit(b[:0]))

    out, rounds, outw, empty = run_three(prog, [None, bits, None], [None, None, words])[2]
    assert out.dtype == U64 and (out == bits).all() and rounds == 2
    assert (outw == (words & U64(1))).all() and empty.size == 0


def test_msb_every_edge_and_random_word() -> None:
    x = np.concatenate([EDGE, rand_u64(5000)])
    out = shared(lambda rt, a, b: rt.open(rt.msb(a)), x)
    assert out.dtype == np.uint8 and (out == (x >> U64(63))).all()


def test_compare_shares_in_range() -> None:
    n = 4000
    x, y = in_range(n), in_range(n)
    y[:500] = x[:500]  # ties
    y[500:600] = x[500:600] + 1
    x[600:610] = [0, LIM, -LIM, 1, -1, LIM, -LIM, 0, 2**40, -(2**40)]
    y[600:610] = [0, -LIM, LIM, -1, 1, LIM, -LIM, -1, -(2**40), 2**40]

    def fn(rt: Runtime, a: AShare, b: AShare):  # type: ignore[no-untyped-def]
        before = rt.rounds
        lt = rt.lt(a, b)
        rounds = rt.rounds - before
        return ([rt.open(c) for c in (lt, rt.le(a, b), rt.gt(a, b), rt.ge(a, b), rt.eq(a, b))],
                rounds)

    (lt, le, gt, ge, eq), rounds = shared(fn, x, y)
    assert (lt == (x < y)).all() and (le == (x <= y)).all()
    assert (gt == (x > y)).all() and (ge == (x >= y)).all() and (eq == (x == y)).all()
    assert rounds == 7 and lt.dtype == np.uint8


def test_compare_against_public_constants() -> None:
    x = in_range(3000, 2**61)
    x[:5] = [100, 99, 101, -100, 0]
    c_arr = in_range(3000, 2**61)

    def fn(rt: Runtime, a: AShare, _b: AShare):  # type: ignore[no-untyped-def]
        return [rt.open(v) for v in (
            rt.lt(a, 100), rt.le(a, 100), rt.gt(a, -100), rt.ge(a, 0), rt.eq(a, 100),
            rt.lt(a, c_arr), rt.lt(-5, a), rt.eq(0, a))]

    lt, le, gt, ge, eq, lta, rlt, req = shared(fn, x)
    assert (lt == (x < 100)).all() and (le == (x <= 100)).all()
    assert (gt == (x > -100)).all() and (ge == (x >= 0)).all() and (eq == (x == 100)).all()
    assert (lta == (x < c_arr)).all() and (rlt == (-5 < x)).all() and (req == (x == 0)).all()


def test_eq_is_exact_on_the_whole_ring() -> None:
    x = np.concatenate([EDGE, EDGE, rand_u64(2000)])
    y = np.concatenate([EDGE, EDGE[::-1], rand_u64(2000)])
    y[-1000:] = x[-1000:]
    y[-5:] ^= U64(1 << 63)  # differ in the top bit only
    out = shared(lambda rt, a, b: rt.open(rt.eq(a, b)), x, y)
    assert (out == (x == y)).all()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(-LIM, LIM), st.integers(-LIM, LIM)), max_size=12))
def test_compare_property(pairs: list[tuple[int, int]]) -> None:
    x = np.array([p[0] for p in pairs], dtype=np.int64)
    y = np.array([p[1] for p in pairs], dtype=np.int64)
    lt, eq = shared(lambda rt, a, b: (rt.open(rt.lt(a, b)), rt.open(rt.eq(a, b))), x, y)
    assert lt.tolist() == (x < y).astype(int).tolist()
    assert eq.tolist() == (x == y).astype(int).tolist()


def test_mux() -> None:
    n = 1000
    x, y = in_range(n), in_range(n)

    def fn(rt: Runtime, a: AShare, b: AShare):  # type: ignore[no-untyped-def]
        c = rt.lt(a, b)
        return [rt.open(v) for v in (
            rt.mux(c, a, b), rt.mux(c, 1, 0), rt.mux(c, a, 7), rt.mux(c, -1, b),
            rt.mux(rt.b2a_bit(c), b, a))]

    mn, ind, ma7, mb, mx = shared(fn, x, y)
    lt = x < y
    assert (mn.view(np.int64) == np.minimum(x, y)).all()
    assert (ind == lt).all()
    assert (ma7.view(np.int64) == np.where(lt, x, 7)).all()
    assert (mb.view(np.int64) == np.where(lt, -1, y)).all()
    assert (mx.view(np.int64) == np.maximum(x, y)).all()


def test_boolean_results_compose() -> None:
    x, y = in_range(500), in_range(500)

    def fn(rt: Runtime, a: AShare, b: AShare):  # type: ignore[no-untyped-def]
        both = rt.and_(rt.lt(a, 0), rt.lt(b, 0))
        either = rt.and_(rt.ge(a, 0), rt.ge(b, 0)) ^ 1  # NOT (a >= 0 AND b >= 0)
        count = rt.open(rt.b2a_bit(both).sum())
        return rt.open(both), rt.open(either), count

    both, either, count = shared(fn, x, y)
    assert (both == ((x < 0) & (y < 0))).all()
    assert (either == ((x < 0) | (y < 0))).all()
    assert int(count) == int(((x < 0) & (y < 0)).sum())


def test_runtime_needs_setup_and_three_parties() -> None:
    net = InProcessNetwork(["a", "b", "c"], timeout=1)
    rt = Runtime(net.endpoint("a"), ["a", "b", "c"])
    from veilql.errors import ProtocolError

    with pytest.raises(ProtocolError, match="setup"):
        rt.tag("x")
    with pytest.raises(UsageError, match="three"):
        Runtime(net.endpoint("a"), ["a", "b"])
    with pytest.raises(UsageError, match="not one of"):
        Runtime(net.endpoint("a"), ["x", "b", "c"])
    with pytest.raises(UsageError):
        rt.party_index("zz")
    assert isinstance(BShare(0, np.zeros(1, U64), np.zeros(1, U64)), BShare)


@pytest.mark.parametrize("n", [0, 1, 2, 7, 9, 63, 65])
def test_every_protocol_on_tiny_lengths(n: int) -> None:
    """Odd lengths too: the packed levels of LT and EQ pad their last byte."""
    base_x = np.array([-3, 2**61, 0], dtype=np.int64)
    base_y = np.array([5, 2**61, -1], dtype=np.int64)
    x = np.concatenate([base_x, in_range(max(0, n - 3), 2**40)])[:n]
    y = np.concatenate([base_y, in_range(max(0, n - 3), 2**40)])[:n]
    y[3::4] = x[3::4]  # some equal pairs

    def fn(rt: Runtime, a: AShare, b: AShare):  # type: ignore[no-untyped-def]
        lt = rt.lt(a, b)
        return [rt.open(v) for v in (
            lt, rt.eq(a, b), rt.msb(a), rt.a2b(a), rt.b2a_bit(lt), rt.mul(a, b),
            rt.mux(lt, a, b), rt.and_(lt, rt.eq(a, b)), rt.shuffle([a])[0])]

    lt, eq, msb, a2b, b2a, mul, mux, both, sh = shared(fn, x, y)
    assert lt.tolist() == (x < y).astype(int).tolist()
    assert eq.tolist() == (x == y).astype(int).tolist()
    assert msb.tolist() == (x < 0).astype(int).tolist()
    assert a2b.view(np.int64).tolist() == x.tolist()
    assert b2a.tolist() == (x < y).astype(int).tolist()
    assert mul.view(np.int64).tolist() == (x * y).tolist()
    assert mux.view(np.int64).tolist() == np.minimum(x, y).tolist()
    assert both.tolist() == ((x < y) & (x == y)).astype(int).tolist()
    assert sorted(sh.view(np.int64).tolist()) == sorted(x.tolist())


def lt_bytes(n: int) -> int:
    """Bytes of one LT on ``n`` elements over all parties: the cross round, then per party
    levels of 4, 2 and 1 bytes, half a byte (packed nibbles) and a bit (packed)."""
    return 28 * n + 3 * (7 * n + -(-n // 2) + -(-n // 8))


@pytest.mark.parametrize("n", [1, 7, 9, 63, 65, 1000])
def test_comparison_results_have_clean_high_bits_and_packed_bytes(n: int) -> None:
    """Every component of an LT/EQ result is 0 or 1 (the packed last level cuts the
    zero-sharing's high bits everywhere), and the bytes are the packed counts."""
    x, y = in_range(n), in_range(n)
    y[::3] = x[::3]

    def prog(rt: Runtime, xv, yv):  # type: ignore[no-untyped-def]
        a, b = rt.share(0, xv, n), rt.share(1, yv, n)
        lt, eq = rt.lt(a, b), rt.eq(a, b)
        assert lt.dtype == np.uint8 and eq.dtype == np.uint8
        assert all(int(c.max()) <= 1 for c in (lt.a, lt.b, eq.a, eq.b))
        return rt.open(lt), rt.open(eq), rt.open(rt.le(a, b)), rt.open(~eq & 1)

    lt, eq, le, ne = run_three(prog, [x, None, None], [None, y, None])[0]
    assert lt.tolist() == (x < y).astype(int).tolist()
    assert eq.tolist() == (x == y).astype(int).tolist()
    assert le.tolist() == (x <= y).astype(int).tolist()
    assert ne.tolist() == (x != y).astype(int).tolist()

    def traffic(op: str) -> int:
        net = InProcessNetwork(("p0", "p1", "p2"), timeout=10)

        def prog2(rt: Runtime, xv, yv):  # type: ignore[no-untyped-def]
            a, b = rt.share(0, xv, n), rt.share(1, yv, n)
            if op:
                getattr(rt, op)(a, b)

        run_three(prog2, [x, None, None], [None, y, None], network=net)
        return sum(net.bytes_sent.values())

    none = traffic("")
    assert traffic("lt") - none == lt_bytes(n)
    eq_bytes = 20 * n + 3 * (2 * n + n + -(-n // 2) + -(-n // 4) + -(-n // 8))
    assert traffic("eq") - none == eq_bytes


def test_lt_outside_the_range_is_the_sign_of_the_wrapped_difference() -> None:
    """Documented behaviour for |x - y| >= 2^63: lt is msb((x - y) mod 2^64)."""
    x = np.repeat(EDGE, len(EDGE))
    y = np.tile(EDGE, len(EDGE))
    out = shared(lambda rt, a, b: rt.open(rt.lt(a, b)), x, y)
    assert (out == ((x - y) >> U64(63))).all()
    xs, ys = x.view(np.int64), y.view(np.int64)
    inside = np.array([abs(int(a) - int(b)) < 2**63 for a, b in zip(xs, ys, strict=True)])
    assert inside.sum() > 20 and (out[inside] == (xs < ys)[inside]).all()


def test_sharing_floats_is_refused_with_a_hint() -> None:
    def prog(rt: Runtime):  # type: ignore[no-untyped-def]
        rt.share(0, np.array([1.5]) if rt.me == 0 else None, 1)

    err = pytest.raises(UsageError, run_three, prog, timeout=5.0).value
    assert "dtype float64" in str(err) and err.hint and "fixed.encode" in err.hint


# ---------------------------------------------------------------- noise sampled on shares
# (veilql/engine/mpc/protocols/noise.py; the statistics are in tests/test_central_noise.py)

TWO_128 = 2**128
TAU_EDGES = [0, 1, 2, 2**64 - 1, 2**64, 2**64 + 1, 2**127, TWO_128 - 2, TWO_128 - 1, TWO_128]


def _words(values: list[int]) -> np.ndarray:
    """128-bit values as the (2, n) uint64 words ``lt_public`` reads."""
    from veilql.engine.mpc.protocols.noise import layout

    out = np.zeros((2, len(values)), dtype=U64)
    for j, v in enumerate(values):
        out[0, j], out[1, j] = layout(v)
    return out


def _lt_public(values: list[int], taus: list[int], which: np.ndarray):  # type: ignore[no-untyped-def]
    from veilql.engine.mpc.protocols.noise import lt_public

    words = _words(values)

    def prog(rt: Runtime, w):  # type: ignore[no-untyped-def]
        u = rt.share(0, w, words.shape, boolean=True)
        before = rt.rounds
        out = lt_public(rt, u, taus, which)
        rounds = rt.rounds - before
        return rt.open(out), rounds

    return run_three(prog, [words, None, None])[0]


def test_layout_is_a_bijection_of_the_128_bit_positions() -> None:
    from veilql.engine.mpc.protocols.noise import layout

    seen = set()
    for s in range(128):
        w0, w1 = layout(1 << s)
        assert bin(w0).count("1") + bin(w1).count("1") == 1
        seen.add((w0, w1))
    assert len(seen) == 128
    v = int(RNG.integers(0, 2**63)) << 64 | int(RNG.integers(0, 2**63))
    w0, w1 = layout(v)
    assert bin(w0).count("1") + bin(w1).count("1") == bin(v).count("1")


def test_lt_public_against_python_on_edge_and_random_words() -> None:
    """[U < tau] for every pair of edge words (0, 2^64 - 1, tau - 1, tau, tau + 1, ...) and
    edge thresholds (0 and 2^128 - 1 included), and random 128-bit words: 7 rounds."""
    rnd = [int(RNG.integers(0, 2**64, dtype=U64)) << 64 | int(RNG.integers(0, 2**64, dtype=U64))
           for _ in range(40)]
    taus = TAU_EDGES + rnd[:10]
    values, which = [], []
    for j, tau in enumerate(taus):
        near = [tau - 1, tau, tau + 1]
        for v in [0, 1, 2**64 - 1, 2**64, TWO_128 - 1, *near, *rnd[10:]]:
            if 0 <= v < TWO_128:
                values.append(v)
                which.append(j)
    got, rounds = _lt_public(values, taus, np.array(which))
    want = np.array([v < taus[j] for v, j in zip(values, which, strict=True)], dtype=np.uint8)
    assert got.dtype == np.uint8 and (got == want).all() and rounds == 7


def test_lt_public_shapes_and_empty() -> None:
    got, _ = _lt_public([5, 6, 7, 8, 9, 10], [7, 0], np.array([[0, 0, 0], [0, 1, 1]]))
    assert got.shape == (2, 3) and got.tolist() == [[1, 1, 0], [0, 0, 0]]
    empty, _ = _lt_public([], [7], np.zeros((0,), dtype=np.int64))
    assert empty.shape == (0,)


def test_bernoulli_frequencies_and_constant_coins() -> None:
    from veilql.engine.mpc.protocols.noise import bernoulli

    taus = [0, TWO_128 - 1, TWO_128, TWO_128 // 4, TWO_128 // 2]
    which = np.repeat(np.arange(len(taus)), 20_000)

    def prog(rt: Runtime):  # type: ignore[no-untyped-def]
        before = rt.rounds
        bits = bernoulli(rt, taus, which)
        rounds = rt.rounds - before
        return rt.open(bits), rounds

    bits, rounds = run_three(prog)[0]
    assert rounds == 7 and bits.shape == which.shape
    freq = [bits[which == j].mean() for j in range(len(taus))]
    assert freq[0] == 0 and freq[1] == 1 and freq[2] == 1  # 1 - 2^-128: always, here
    assert abs(freq[3] - 0.25) < 0.015 and abs(freq[4] - 0.5) < 0.015


def test_geometric_bits_and_dlap_on_shares_shapes_rounds_and_bounds() -> None:
    from veilql.engine.dp.central import thresholds
    from veilql.engine.mpc.protocols.noise import dlap_on_shares, geometric_bits

    th1, th2 = thresholds(1.0), thresholds(50.0)

    def prog(rt: Runtime):  # type: ignore[no-untyped-def]
        g = geometric_bits(rt, th1, (3, 4))
        before = rt.rounds
        d = dlap_on_shares(rt, [th1, th2, ()], 5000)
        rounds = rt.rounds - before
        none = dlap_on_shares(rt, [th1], 0)
        return rt.open(g), rt.open(d).view(np.int64), rounds, none.shape

    g, d, rounds, none = run_three(prog)[0]
    assert g.shape == (3, 4, len(th1)) and set(np.unique(g)) <= {0, 1}
    assert d.shape == (3, 5000) and rounds == 9 and none == (1, 0)
    assert (np.abs(d[0]) < 2 ** len(th1)).all() and (np.abs(d[1]) < 2 ** len(th2)).all()
    assert (d[2] == 0).all()
    assert abs(d[0].mean()) < 0.2 and abs(d[1].mean()) < 5  # symmetric
    assert 0.8 < d[1].std() / (50 * np.sqrt(2)) < 1.2


def test_dlap_on_shares_is_fresh_each_call_and_agrees_at_all_parties() -> None:
    from veilql.engine.dp.central import thresholds
    from veilql.engine.mpc.protocols.noise import dlap_on_shares

    def prog(rt: Runtime):  # type: ignore[no-untyped-def]
        a = dlap_on_shares(rt, [thresholds(100.0)], 200)
        b = dlap_on_shares(rt, [thresholds(100.0)], 200)
        return rt.open(a).tolist(), rt.open(b).tolist()

    res = run_three(prog)
    assert res[0] == res[1] == res[2]
    assert res[0][0] != res[0][1]


def test_coin_thresholds_out_of_range_are_refused() -> None:
    def prog(rt: Runtime):  # type: ignore[no-untyped-def]
        from veilql.engine.mpc.protocols.noise import bernoulli

        bernoulli(rt, [TWO_128 + 1], np.zeros(1, dtype=np.int64))

    with pytest.raises(UsageError, match="outside"):
        run_three(prog, timeout=5.0)


@pytest.mark.parametrize("n", [0, 1, 7, 9, 63, 65])
def test_bytes_on_the_wire_share_b2a_and_outside_input(n: int) -> None:
    """share sends one array (owner to its next party only), b2a_bit three words per bit,
    and a fourth data party one array per compute party (plus 32 bytes of seeds)."""
    names = ("p0", "p1", "p2", "bank")
    net = InProcessNetwork(names, timeout=10)
    x = in_range(n)
    bits = RNG.integers(0, 2, n, dtype=np.uint8)
    sent: list[dict[str, int]] = []
    out: list[object] = [None] * 3

    def compute(i: int) -> None:
        rt = Runtime(net.endpoint(names[i]), names[:3])
        rt.setup()
        before = dict(net.bytes_sent)
        a = rt.share(0, x if i == 0 else None, n)
        b = rt.share(2, bits if i == 2 else None, n, boolean=True, dtype=np.uint8)
        if i == 0:
            sent.append(dict(net.bytes_sent))
        rt.b2a_bit(rt.reshare(b))
        got = rt.receive_input("bank", "input:x", n)
        out[i] = (rt.open(a), rt.open(b), rt.open(rt.b2a_bit(b)), rt.open(got), before)

    ts = [threading.Thread(target=compute, args=(i,)) for i in range(3)]
    for t in ts:
        t.start()
    share_from_outside(net.endpoint("bank"), names[:3], x, "input:x")
    for t in ts:
        t.join()
    for o in out:
        assert o is not None
        va, vb, vbit, vin, _ = o  # type: ignore[misc]
        assert va.view(np.int64).tolist() == x.tolist() and vb.tolist() == bits.tolist()
        assert vbit.tolist() == bits.tolist() and vin.view(np.int64).tolist() == x.tolist()
    assert net.bytes_sent["bank"] == 32 + 2 * (16 + 8 * n)


def test_share_and_b2a_byte_counts() -> None:
    """Owner-only traffic for share (8 bytes per word, to one party) and 24 bytes per
    bit for b2a_bit, from the totals of runs that differ by that one step."""
    n = 101

    def total(steps: int) -> dict[str, int]:
        net = InProcessNetwork(("p0", "p1", "p2"), timeout=10)

        def prog(rt: Runtime) -> None:
            a = rt.share(1, np.arange(n) if rt.me == 1 else None, n) if steps > 0 else None
            if steps > 1:
                rt.b2a_bit(rt.lt(a, 50))
            if steps > 2:
                rt.b2a_bit(rt.lt(a, 50))

        run_three(prog, network=net)
        return net.bytes_sent

    none, shared_, one, two = total(0), total(1), total(2), total(3)
    assert shared_["p1"] - none["p1"] == 8 * n
    assert shared_["p0"] == none["p0"] and shared_["p2"] == none["p2"]
    b2a = sum(two.values()) - sum(one.values()) - lt_bytes(n)  # minus one LT
    assert b2a == 24 * n
