"""Sharing, opening and products of arithmetic shares over Z_2^64.

Replicated three-party sharing with one-round multiplication from a PRG-derived
zero-sharing follows Araki, Furukawa, Lindell, Nof and Ohara, "High-throughput
semi-honest secure three-party computation with an honest majority", CCS 2016.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from veilql.engine.mpc.prg import Prg
from veilql.engine.mpc.shares import AShare, BShare, as_ring
from veilql.engine.transport.base import Transport
from veilql.errors import ProtocolError, UsageError

if TYPE_CHECKING:
    from veilql.engine.mpc.runtime import Runtime


def _shape(shape: int | tuple[int, ...]) -> tuple[int, ...]:
    return (shape,) if isinstance(shape, int) else tuple(shape)


def share(
    rt: Runtime, owner: int | str, values: Any | None, shape: int | tuple[int, ...],
    *, boolean: bool = False, dtype: Any = np.uint64,
) -> AShare | BShare:
    """Share ``values`` from compute party ``owner``: one round, one array sent.

    Owner ``j`` holds ``(x_j, x_{j+1})``, party ``j+1`` holds ``(x_{j+1}, x_{j+2})`` and
    party ``j+2`` holds ``(x_{j+2}, x_j)``. ``x_{j+2}`` is drawn from the seed common to
    the three compute parties and ``x_j`` from ``s_j`` (known to ``j`` and ``j+2``), so
    only ``x_{j+1} = x - x_j - x_{j+2}`` travels, from the owner to party ``j+1``, masked
    by ``x_j``, which ``j+1`` lacks. Every party ends up knowing exactly what it knew
    when the owner sent ``x_{j+2}`` to both others (the owner knows all three components
    of its own input; each other party two of them, uniformly random and independent
    of ``x``), and any two components are uniform and independent, as before; only half
    the bytes travel.
    """
    j = rt.party_index(owner)
    shp = _shape(shape)
    dt = np.dtype(dtype) if boolean else np.dtype(np.uint64)
    tag = rt.tag("share")
    seeds = rt.seeds
    assert seeds is not None and seeds.common is not None
    cls = BShare if boolean else AShare
    rt.rounds += 1
    if rt.me == j:
        if values is None:
            raise UsageError(f"party {rt.parties[j]!r} shares but passed no values",
                             "the owner passes its array; the others pass None")
        x = np.asarray(values)
        if x.dtype.kind not in "iub":
            raise UsageError(
                f"only integer arrays can be secret-shared, got dtype {x.dtype}",
                "scale decimal columns to integers with veilql.engine.mpc.fixed.encode",
            )
        if x.shape != shp:
            raise UsageError(f"values have shape {x.shape}, declared shape is {shp}",
                             "pass the same shape at all three parties")
        xj = seeds.prev.array("share", tag, shp, dt)  # s_j: the owner's prev seed
        if boolean:  # x_{j+1} = x ^ x_j ^ x_{j+2}: the keystream XOR is one pass
            xj1 = seeds.common.xor("share", tag, x.astype(dt) ^ xj)
        else:
            xj1 = as_ring(x) - xj
            xj1 -= seeds.common.array("share", tag, shp, dt)
        rt.send((j + 1) % 3, tag, xj1)
        return cls(rt.me, xj, xj1)
    if rt.me == (j + 1) % 3:  # holds (x_{j+1}, x_{j+2})
        return cls(rt.me, rt.recv(j, tag, dt, shp), seeds.common.array("share", tag, shp, dt))
    # party j+2 holds (x_{j+2}, x_j); s_j is its next seed
    return cls(rt.me, seeds.common.array("share", tag, shp, dt),
               seeds.next.array("share", tag, shp, dt))


def share_from_outside(
    transport: Transport, compute_parties: Sequence[str], values: Any, tag: str = "input",
) -> None:
    """Run at a data party that does not compute: give each compute party its pair.

    Components ``x_0`` and ``x_1`` are keystream of two fresh ``os.urandom`` seeds
    ``k_0``, ``k_1``; ``x_2 = x - x_0 - x_1``. Party ``i`` must hold ``(x_i, x_{i+1})``:
    party 0 receives the two seeds (32 bytes, whatever the length), party 1 ``k_1`` and
    ``x_2``, party 2 ``x_2`` and ``k_0``. Each learns exactly the two components it
    learnt before, two of three uniformly random-looking words; a third of the bytes
    travel. Pair with ``Runtime.receive_input(sender, tag, shape)``; every input of one
    session needs its own ``tag`` (e.g. ``"input:bank.loans.amount"``).
    """
    x = as_ring(np.asarray(values))
    k0, k1 = os.urandom(16), os.urandom(16)
    x2 = x - Prg(k0).array("share", "x0", x.shape)
    x2 -= Prg(k1).array("share", "x1", x.shape)
    body = memoryview(np.ascontiguousarray(x2).reshape(-1).view(np.uint8))
    names = list(compute_parties)
    transport.send(names[0], tag, k0 + k1)
    transport.send(names[1], tag, k1 + bytes(body))
    transport.send(names[2], tag, bytes(body) + k0)


def receive_input(rt: Runtime, sender: str, tag: str, shape: int | tuple[int, ...]) -> AShare:
    """Counterpart of ``share_from_outside`` at compute party ``rt.me``."""
    shp = _shape(shape)
    data = rt.transport.recv(sender, tag, rt.timeout)
    n = int(np.prod(shp, dtype=np.int64))
    want = 32 if rt.me == 0 else 16 + 8 * n
    if len(data) != want:
        raise ProtocolError(f"input {tag!r} from {sender!r} has {len(data)} bytes, "
                            f"expected {want}", "both sides must agree on the row count")

    def comp(key: bytes, name: str) -> np.ndarray:
        return Prg(key).array("share", name, shp)

    if rt.me == 0:
        return AShare(0, comp(data[:16], "x0"), comp(data[16:], "x1"))
    if rt.me == 1:
        x2 = np.frombuffer(data, dtype=np.uint64, count=n, offset=16).reshape(shp)
        return AShare(1, comp(data[:16], "x1"), x2)
    x2 = np.frombuffer(data, dtype=np.uint64, count=n).reshape(shp)
    return AShare(2, x2, comp(data[8 * n:], "x0"))


def reshare(rt: Runtime, x: AShare | BShare) -> AShare | BShare:
    """Fresh components for the same value: z_i = x_i + zero-share, then reshare."""
    tag = rt.tag("reshare")
    if isinstance(x, AShare):
        z = x.a + rt.zero_a(tag, x.shape)
        return AShare(rt.me, z, rt.reshare_raw(tag, z))
    z = x.a ^ rt.zero_b(tag, x.shape, x.dtype)
    return BShare(rt.me, z, rt.reshare_raw(tag, z))


def _combine3(x: AShare | BShare, missing: np.ndarray) -> np.ndarray:
    # ufuncs (unlike numpy scalar arithmetic) wrap around silently for 0-d shares
    if isinstance(x, AShare):
        return np.add(np.add(x.a, x.b), missing)
    return np.bitwise_xor(np.bitwise_xor(x.a, x.b), missing)


def open_all(rt: Runtime, x: AShare | BShare) -> np.ndarray:
    """Each party sends its ``x_i`` to party ``i+1``, which lacked it."""
    tag = rt.tag("open")
    rt.send(rt.next, tag, x.a)
    rt.rounds += 1
    missing = rt.recv(rt.prev, tag, x.dtype, x.shape)
    return _combine3(x, missing)


def open_to(rt: Runtime, x: AShare | BShare, party: int | str) -> np.ndarray | None:
    """Party ``j+1`` sends ``x_{j+2}`` (its second component) to ``j``; others learn nothing."""
    j = rt.party_index(party)
    tag = rt.tag("open_to")
    rt.rounds += 1
    if rt.me == (j + 1) % 3:
        rt.send(j, tag, x.b)
        return None
    if rt.me != j:
        return None
    missing = rt.recv((j + 1) % 3, tag, x.dtype, x.shape)
    return _combine3(x, missing)


def _flatten(xs: Sequence[AShare]) -> tuple[np.ndarray, np.ndarray, list[tuple[int, ...]]]:
    shapes = [x.shape for x in xs]
    a = np.concatenate([x.a.ravel() for x in xs]) if xs else np.empty(0, np.uint64)
    b = np.concatenate([x.b.ravel() for x in xs]) if xs else np.empty(0, np.uint64)
    return a, b, shapes


def _unflatten(party: int, a: np.ndarray, b: np.ndarray,
               shapes: list[tuple[int, ...]]) -> list[AShare]:
    out, off = [], 0
    for shp in shapes:
        n = int(np.prod(shp, dtype=np.int64))
        out.append(AShare(party, a[off:off + n].reshape(shp), b[off:off + n].reshape(shp)))
        off += n
    return out


def mul(rt: Runtime, x: Any, y: Any) -> Any:
    """Araki et al. multiplication: z_i = x_i y_i + x_i y_{i+1} + x_{i+1} y_i + alpha_i.

    ``(z_0, z_1, z_2)`` is a 3-out-of-3 sharing of xy masked by the zero-sharing alpha;
    sending ``z_i`` to party ``i-1`` turns it back into a replicated sharing.
    """
    if isinstance(x, list | tuple):
        if len(x) != len(y):
            raise UsageError("mul of lists needs lists of equal length", "pair every factor")
        xa, xb, shapes = _flatten(x)
        ya, yb, yshapes = _flatten(y)
        if shapes != yshapes:
            raise UsageError("mul of lists needs equal shapes pairwise", "pair equal shapes")
        za, zb = _mul_raw(rt, xa, xb, ya, yb)
        return _unflatten(rt.me, za, zb, shapes)
    if not isinstance(y, AShare):
        return x * y  # public factor: local
    if x.shape != y.shape:
        raise UsageError(f"mul of shapes {x.shape} and {y.shape}", "multiply equal shapes")
    za, zb = _mul_raw(rt, x.a, x.b, y.a, y.b)
    return AShare(rt.me, za, zb)


def _mul_raw(rt: Runtime, xa: np.ndarray, xb: np.ndarray, ya: np.ndarray,
             yb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tag = rt.tag("mul")
    z = xa * (ya + yb)
    z += xb * ya
    z += rt.zero_a(tag, z.shape)
    return z, rt.reshare_raw(tag, z)


def dot(rt: Runtime, x: AShare, y: AShare) -> AShare:
    """Inner products along the last axis: the local cross terms are summed before the
    one resharing round, so a batch of k inner products costs k words per party."""
    if x.shape != y.shape:
        raise UsageError(f"dot of shapes {x.shape} and {y.shape}", "use equal shapes")
    tag = rt.tag("dot")
    terms = x.a * (y.a + y.b)
    terms += x.b * y.a
    # keepdims avoids numpy scalars, whose wrap-around would raise overflow warnings
    z = terms.sum(axis=-1, dtype=np.uint64, keepdims=True)
    z += rt.zero_a(tag, z.shape)
    out = x.shape[:-1]
    return AShare(rt.me, z.reshape(out), rt.reshare_raw(tag, z).reshape(out))
