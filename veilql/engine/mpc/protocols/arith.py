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
    """Share ``values`` from compute party ``owner``: one round, two arrays sent by the owner.

    The owner ``j`` draws ``x_j`` from ``s_j`` and ``x_{j+1}`` from ``s_{j+1}`` (each known
    to one other party, who draws the same words) and sends ``x_{j+2}`` = x - x_j -
    x_{j+1} to both others; ``x_{j+2}`` is masked by ``x_j`` towards party ``j+1`` and by
    ``x_{j+1}`` towards party ``j+2``.
    """
    j = rt.party_index(owner)
    shp = _shape(shape)
    dt = np.dtype(dtype) if boolean else np.dtype(np.uint64)
    tag = rt.tag("share")
    assert rt.seeds is not None
    cls = BShare if boolean else AShare
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
        xj = rt.seeds.prev.array("share", tag, shp, dt)
        xj1 = rt.seeds.next.array("share", tag, shp, dt)
        if boolean:
            last = x.astype(dt) ^ xj ^ xj1
        else:
            last = as_ring(x) - xj - xj1
        rt.send((j + 1) % 3, tag, last)
        rt.send((j + 2) % 3, tag, last)
        rt.rounds += 1
        return cls(rt.me, xj, xj1)
    rt.rounds += 1
    last = rt.recv(j, tag, dt, shp)
    if rt.me == (j + 1) % 3:  # holds (x_{j+1}, x_{j+2}); s_{j+1} is its prev seed
        return cls(rt.me, rt.seeds.prev.array("share", tag, shp, dt), last)
    # party j+2 holds (x_{j+2}, x_j); s_j is its next seed
    return cls(rt.me, last, rt.seeds.next.array("share", tag, shp, dt))


def share_from_outside(
    transport: Transport, compute_parties: Sequence[str], values: Any, tag: str = "input",
) -> None:
    """Run at a data party that does not compute: send each compute party its pair.

    Components ``x_0, x_1`` come from a fresh ``os.urandom`` seed, ``x_2 = x - x_0 - x_1``;
    party ``i`` receives ``(x_i, x_{i+1})``, two of three uniformly random-looking
    components. Pair with ``Runtime.receive_input(sender, tag, shape)``; every input of
    one session needs its own ``tag`` (e.g. ``"input:bank.loans.amount"``).
    """
    x = as_ring(np.asarray(values))
    g = Prg(os.urandom(16))
    x0 = g.array("share", "x0", x.shape)
    x1 = g.array("share", "x1", x.shape)
    comps = (x0, x1, x - x0 - x1)
    for i, name in enumerate(compute_parties):
        pair = np.stack([comps[i], comps[(i + 1) % 3]])
        transport.send(name, tag, pair.tobytes())


def receive_input(rt: Runtime, sender: str, tag: str, shape: int | tuple[int, ...]) -> AShare:
    """Counterpart of ``share_from_outside`` at compute party ``rt.me``."""
    shp = _shape(shape)
    data = rt.transport.recv(sender, tag, rt.timeout)
    n = int(np.prod(shp, dtype=np.int64))
    if len(data) != 16 * n:
        raise ProtocolError(f"input {tag!r} from {sender!r} has {len(data)} bytes, "
                            f"expected {16 * n}", "both sides must agree on the row count")
    pair = np.frombuffer(data, dtype=np.uint64).reshape((2, *shp))
    return AShare(rt.me, pair[0], pair[1])


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
