"""Discrete Laplace noise sampled on shares: one central draw that no party knows.

Route (Dwork, Kenthapadi, McSherry, Mironov and Naor 2006, "Our data, ourselves: privacy via
distributed noise generation", EUROCRYPT, Sec. 4-5: noise from jointly generated biased coins;
Champion, shelat and Ullman 2019, "Securely sampling biased coins with applications to
differential privacy", CCS: a biased coin is a comparison of shared uniform bits with a public
threshold). A geometric ``G`` with ``P(G = g) = (1 - q) q^g`` has independent binary digits,
``P(bit k = 1) = q^(2^k) / (1 + q^(2^k))``, and ``DLap(t) = G1 - G2`` for ``q = exp(-1/t)``
(the thresholds and the distance to the exact law are computed in ``engine/dp/central.py``).
Per cell this module draws ``2 K`` coins, coin ``j`` being ``[U_j < tau_j]`` for a fresh
uniform 128-bit ``U_j`` and a public ``tau_j`` in ``[0, 2^128]``, turns them into arithmetic
bits (``convert.b2a_bit``) and forms ``sum_k 2^k (b1_k - b2_k)`` locally.

Randomness. ``U`` is a boolean sharing whose component ``u_i`` is a keystream of seed
``s_i`` (known to parties ``i-1`` and ``i``), drawn under a fresh label: each party holds two
components and misses the third, so ``U`` is uniform and unknown to every single party, and
making it costs no message.

Comparison with a public constant. ``U < tau`` iff ``U + c`` does not carry out of 128 bits,
``c = 2^128 - tau`` (for ``0 < tau <= 2^128``; ``tau = 0`` gives the constant 0 by a public
mask). Generate ``u & c`` and propagate ``u ^ c`` are local. The 128 significances are laid
out in two words: significance ``s`` sits in word ``s & 1`` at bit ``rev6(s >> 1)``
(``split.index_bitrev``). Since ``U`` is uniform its bits can be *named* in that order at no
cost; only the public ``c`` is permuted. One AND round combines the two words bitwise into
64 groups of two significances (in the layout ``compare.carry_tree`` expects), and
``carry_tree`` reduces them in 6 more rounds (the same carry tree as ``compare.msb``).

Cost, for a batch of any size (all cells, all bits, both geometrics, all aggregates):
7 AND rounds + 2 rounds of B2A = **9 rounds**. Bytes sent, all parties together, per coin:
3 x (16 + 8 + 4 + 2 + 1 + 1/2 + 1/8) = 94.875 for the comparison (its last two levels
bit-packed) and 24 for B2A, so 118.875; per cell ``237.75 K`` (``K`` = 7 at ``t = 1``, 32 at
``t = 6e7``).

What each party receives: only the messages of ``boolean.finish`` (7 times, party ``i`` gets
``z_{i+1}``, masked by the XOR zero-sharing ``F(s_{i+1}) ^ F(s_{i+2})``, and lacks
``s_{i+2}``) and of ``b2a_bit`` (``docs/SECURITY.md``): every message is masked by a keystream
of a seed the receiver does not hold. Nothing is opened; the noise leaves as shares, added to
the aggregate, and only the analyst reconstructs ``aggregate + noise``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from veilql.engine.mpc.protocols import boolean, compare, convert, split
from veilql.engine.mpc.shares import AShare, BShare
from veilql.errors import UsageError

if TYPE_CHECKING:
    from veilql.engine.mpc.runtime import Runtime

_U64 = np.dtype(np.uint64)
_MASK64 = (1 << 64) - 1
TWO_128 = 1 << 128


@lru_cache(maxsize=4096)
def _layout(c: int) -> tuple[int, int]:
    """The 128-bit constant ``c`` in the two-word order of the module doc: (word 0, word 1).

    >>> _layout(1)   # significance 0: word 0, bit rev6(0) = 0
    (1, 0)
    >>> _layout(2)   # significance 1: word 1, bit 0
    (0, 1)
    >>> _layout(4) == (1 << 32, 0)   # significance 2: word 0, bit rev6(1) = 32
    True
    """
    even = odd = 0
    for j in range(64):
        even |= ((c >> (2 * j)) & 1) << j
        odd |= ((c >> (2 * j + 1)) & 1) << j
    words = split.index_bitrev(np.array([even, odd], dtype=np.uint64))
    return int(words[0]), int(words[1])


def _constants(thresholds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per threshold: the laid-out words of ``c = 2^128 - tau`` (2, m) and ``tau != 0`` (m,)."""
    words = np.zeros((2, len(thresholds)), dtype=np.uint64)
    nonzero = np.zeros(len(thresholds), dtype=np.uint8)
    for j, tau in enumerate(thresholds):
        tau = int(tau)
        if not 0 <= tau <= TWO_128:
            raise UsageError(f"coin threshold {tau} outside [0, 2^128]",
                             "thresholds are probabilities times 2^128, rounded")
        words[0, j], words[1, j] = _layout((TWO_128 - tau) % TWO_128)
        nonzero[j] = tau != 0
    return words, nonzero


def random_bits(rt: Runtime, label: str, shape: tuple[int, ...]) -> BShare:
    """A uniform boolean sharing no single party knows: component i is a keystream of s_i.

    No communication: party ``i`` draws ``u_i`` from ``s_i`` (its ``prev`` seed) and
    ``u_{i+1}`` from ``s_{i+1}`` (its ``next`` seed); ``label`` must be fresh (a round tag).
    """
    assert rt.seeds is not None
    return BShare(rt.me, rt.seeds.prev.array("mask", label, shape),
                  rt.seeds.next.array("mask", label, shape))


def bernoulli(rt: Runtime, thresholds: Sequence[int], which: np.ndarray) -> BShare:
    """Bit shares of independent coins ``[U < thresholds[which[j]]]`` for uniform 128-bit U.

    ``thresholds`` are integers in ``[0, 2^128]`` (a coin is 1 with probability
    ``tau / 2^128`` exactly); ``which`` (integer array, any shape) picks one per coin.
    Returns uint8 bit shares (bit 0) shaped like ``which``; 7 rounds for the whole array.
    """
    which = np.asarray(which)
    tag = rt.tag("coin")
    u = random_bits(rt, tag + "/u", (2, int(which.size)))
    return lt_public(rt, u, thresholds, which, tag=tag)


def lt_public(rt: Runtime, u: BShare, thresholds: Sequence[int], which: np.ndarray,
              *, tag: str | None = None) -> BShare:
    """Bit shares of ``U_j < thresholds[which[j]]`` for 128-bit ``U_j`` shared as two words.

    ``u`` (uint64 boolean shares, shape ``(2, which.size)``) holds each ``U_j`` in the
    two-word order of the module doc (``layout``). Unsigned and exact for every
    ``U`` in ``[0, 2^128)`` and every threshold in ``[0, 2^128]``. 7 rounds.
    """
    which = np.asarray(which)
    if which.dtype.kind not in "iu":
        raise UsageError("coin indices must be integers", "pass an integer numpy array")
    shape = which.shape
    n = int(which.size)
    if u.shape != (2, n) or u.dtype != _U64:
        raise UsageError(f"128-bit words must be uint64 shares of shape (2, {n}), got "
                         f"{u.shape}/{u.dtype}", "lay each value out with noise.layout")
    words, nonzero = _constants(thresholds)
    tag = tag if tag is not None else rt.tag("coin")
    if n == 0:
        return BShare(rt.me, np.zeros(shape, np.uint8), np.zeros(shape, np.uint8))
    flat = which.reshape(-1)
    c = words[:, flat]  # (2, n): word 0 and word 1 of c per coin
    g = u & c
    p = u ^ c
    # One AND round: G = g_1 ^ p_1 & g_0 and P = p_1 & p_0, bitwise across the two words.
    left = BShare.stack([p[1], p[1]])
    right = BShare.stack([g[0], p[0]])
    z = boolean.and_local(left, right)
    z[0] ^= g.a[1]
    gp = boolean.finish(rt, tag + "/l64", z)
    carry = compare.carry_tree(rt, tag, gp[0], gp[1])  # 1 iff U + c >= 2^128 iff U >= tau
    return ((carry ^ 1) & nonzero[flat]).reshape(shape)


def layout(value: int) -> tuple[int, int]:
    """A 128-bit integer as the two uint64 words ``lt_public`` reads (module doc).

    >>> layout(2**128 - 1) == (2**64 - 1, 2**64 - 1)
    True
    """
    if not 0 <= value < TWO_128:
        raise UsageError(f"{value} is not a 128-bit unsigned integer", "reduce it mod 2^128")
    return _layout(value)


def geometric_bits(rt: Runtime, thresholds: Sequence[int], shape: tuple[int, ...]) -> BShare:
    """The K binary digits of independent truncated geometrics, one per entry of ``shape``.

    ``thresholds[k]`` is the public threshold of digit ``k`` (``K = len(thresholds)``).
    Returns uint8 bit shares of shape ``(*shape, K)``; 7 rounds.
    """
    k = len(thresholds)
    which = np.broadcast_to(np.arange(k, dtype=np.int64), (*shape, k))
    return bernoulli(rt, thresholds, which)


def dlap_on_shares(rt: Runtime, thresholds: Sequence[Sequence[int]], cells: int) -> AShare:
    """Arithmetic shares of ``G1 - G2`` per row and cell: row ``r`` uses ``thresholds[r]``.

    With the thresholds of ``DLap(t)`` (``engine/dp/central.py``) each entry is one draw of
    (a distribution within a stated distance of) the discrete Laplace, known to no party.
    Every row, cell, digit and both geometrics run in one batch: 9 rounds in all.
    Returns shape ``(len(thresholds), cells)``.
    """
    rows = len(thresholds)
    table: list[int] = []
    which_parts = []
    for thr in thresholds:
        k = len(thr)
        which_parts.append((len(table) + np.broadcast_to(np.arange(k, dtype=np.int64),
                                                         (2, cells, k))).reshape(-1))
        table.extend(int(x) for x in thr)
    which = np.concatenate(which_parts) if which_parts else np.zeros(0, np.int64)
    a = np.zeros((rows, cells), dtype=np.uint64)
    b = np.zeros_like(a)
    if which.size == 0:
        return AShare(rt.me, a, b)
    bits = convert.b2a_bit(rt, bernoulli(rt, table, which))
    off = 0
    for r, thr in enumerate(thresholds):
        k = len(thr)
        size = 2 * cells * k
        if k:
            part = bits[off:off + size].reshape(2, cells, k)
            weights = np.left_shift(np.uint64(1), np.arange(k, dtype=np.uint64))
            g = (part * weights).sum(axis=-1)  # (2, cells): the two geometrics
            d = g[0] - g[1]
            a[r], b[r] = d.a, d.b
        off += size
    return AShare(rt.me, a, b)
