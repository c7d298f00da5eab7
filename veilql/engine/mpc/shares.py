"""Replicated secret shares among three parties: arithmetic (mod 2^64) and boolean (XOR).

A secret array ``x`` is split as ``x = x_0 + x_1 + x_2`` (mod 2^64, ``AShare``) or
``x = x_0 ^ x_1 ^ x_2`` (``BShare``); party ``i`` holds the pair ``(x_i, x_{i+1})``
(indices mod 3), stored as ``.a`` and ``.b``. Any two parties can reconstruct, any
single party sees two uniformly random components (Araki et al., CCS'16).

Shares are immutable by convention: no operation modifies a component in place, so
components may be shared between share objects. Everything here is local: linear
operations, operations with public constants, indexing by public indices. Products of
two shares need a round of communication and live in ``Runtime`` (``mul``, ``and_``).
A public constant ``c`` is added to component ``x_0`` only, which party 0 holds as
``.a`` and party 2 as ``.b``.

>>> import numpy as np
>>> parts = [np.array([5, 7], dtype=np.uint64), np.array([1, 2], dtype=np.uint64),
...          np.array([9, 9], dtype=np.uint64)]
>>> sh = [AShare(i, parts[i], parts[(i + 1) % 3]) for i in range(3)]
>>> s = [x * 3 + 1 for x in sh]
>>> (s[0].a + s[1].a + s[2].a).tolist()      # 3 * (15, 18) + 1
[46, 55]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

RING = 1 << 64
_U64 = np.dtype(np.uint64)


def as_ring(c: Any) -> np.ndarray | np.uint64:
    """A public constant (int, numpy integer or integer array, maybe negative) mod 2^64.

    >>> int(as_ring(-1))
    18446744073709551615
    >>> as_ring(np.array([-2, 3])).tolist()
    [18446744073709551614, 3]
    """
    if isinstance(c, np.ndarray):
        if c.dtype == _U64:
            return c
        if c.dtype.kind not in "iub":
            raise TypeError(f"public constants must be integers, got dtype {c.dtype}")
        return c.astype(np.int64).view(np.uint64) if c.dtype.kind == "i" else c.astype(_U64)
    if isinstance(c, bool | int | np.integer):
        return np.uint64(int(c) % RING)
    raise TypeError(f"public constants must be integers, got {type(c).__name__}")


def ring_neg(c: Any) -> np.ndarray | np.uint64:
    """``-c mod 2^64`` for a public constant (numpy scalars would warn on wrap-around)."""
    r = as_ring(c)
    if isinstance(r, np.ndarray):
        return -r
    return np.uint64((-int(r)) % RING)


def ring_sub(a: Any, b: Any) -> np.ndarray | np.uint64:
    """``a - b mod 2^64`` for public constants.

    >>> int(ring_sub(0, 1))
    18446744073709551615
    """
    ra, rb = as_ring(a), as_ring(b)
    if isinstance(ra, np.ndarray) or isinstance(rb, np.ndarray):
        return np.subtract(ra, rb, dtype=np.uint64)
    return np.uint64((int(ra) - int(rb)) % RING)


def _as_bits(c: Any, dtype: np.dtype) -> np.ndarray | np.generic:
    """A public boolean constant in the component dtype (two's complement for negatives)."""
    if isinstance(c, np.ndarray):
        if c.dtype == dtype:
            return c
        if c.dtype.kind == "i":
            return c.astype(np.int64).view(np.uint64).astype(dtype)
        return c.astype(dtype)
    bits = dtype.itemsize * 8
    return dtype.type(int(c) % (1 << bits))


def _widen(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``x`` itself when it already has ``shape`` (shares are never mutated), else a copy."""
    return x if x.shape == shape else np.broadcast_to(x, shape).copy()


class _Share:
    """Common container: the party index and its two components ``a = x_i``, ``b = x_{i+1}``."""

    __slots__ = ("party", "a", "b")

    def __init__(self, party: int, a: np.ndarray, b: np.ndarray) -> None:
        self.party = party
        self.a = a
        self.b = b

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the shared array."""
        return self.a.shape

    @property
    def dtype(self) -> np.dtype:
        """dtype of the components."""
        return self.a.dtype

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, idx: Any) -> Any:
        """Gather by public indices, slices or boolean masks (a local operation)."""
        return type(self)(self.party, self.a[idx], self.b[idx])

    def reshape(self, *shape: Any) -> Any:
        """The same shares with another shape."""
        return type(self)(self.party, self.a.reshape(*shape), self.b.reshape(*shape))

    def copy(self) -> Any:
        """An independent copy of the components."""
        return type(self)(self.party, self.a.copy(), self.b.copy())

    @classmethod
    def concat(cls, shares: Sequence[Any], axis: int = 0) -> Any:
        """Concatenate shares of the same party and kind along ``axis``."""
        if not shares:
            raise ValueError("concat needs at least one share")
        party = shares[0].party
        return cls(
            party,
            np.concatenate([s.a for s in shares], axis=axis),
            np.concatenate([s.b for s in shares], axis=axis),
        )

    @classmethod
    def stack(cls, shares: Sequence[Any]) -> Any:
        """Stack equal-shape shares along a new first axis."""
        if not shares:
            raise ValueError("stack needs at least one share")
        return cls(
            shares[0].party,
            np.stack([s.a for s in shares]),
            np.stack([s.b for s in shares]),
        )

    def _holds_x0(self) -> tuple[bool, bool]:
        """Whether this party's ``a`` resp. ``b`` component is ``x_0``."""
        return self.party == 0, self.party == 2

    def __repr__(self) -> str:
        return f"{type(self).__name__}(party={self.party}, shape={self.shape}, dtype={self.dtype})"


class AShare(_Share):
    """Party ``party``'s replicated arithmetic share ``(x_i, x_{i+1})`` over Z_2^64."""

    __slots__ = ()

    def __add__(self, other: Any) -> AShare:
        if isinstance(other, AShare):
            return AShare(self.party, self.a + other.a, self.b + other.b)
        if isinstance(other, BShare):
            return NotImplemented
        c = as_ring(other)
        in_a, in_b = self._holds_x0()
        shape = np.broadcast_shapes(self.a.shape, np.shape(c))
        a = self.a + c if in_a else _widen(self.a, shape)
        b = self.b + c if in_b else _widen(self.b, shape)
        return AShare(self.party, a, b)

    __radd__ = __add__

    def __neg__(self) -> AShare:
        return AShare(self.party, -self.a, -self.b)

    def __sub__(self, other: Any) -> AShare:
        if isinstance(other, AShare):
            return AShare(self.party, self.a - other.a, self.b - other.b)
        if isinstance(other, BShare):
            return NotImplemented
        return self + ring_neg(other)

    def __rsub__(self, other: Any) -> AShare:
        return (-self) + other

    def __mul__(self, other: Any) -> AShare:
        """Multiply by a public constant (local); share-by-share products need ``rt.mul``."""
        if isinstance(other, _Share):
            raise TypeError("multiplying two shares needs a protocol: use Runtime.mul")
        c = as_ring(other)
        return AShare(self.party, self.a * c, self.b * c)

    __rmul__ = __mul__

    def sum(self, axis: int | None = None) -> AShare:
        """Sum of the shared values along ``axis`` (local)."""
        return AShare(self.party, np.asarray(self.a.sum(axis=axis, dtype=np.uint64)),
                      np.asarray(self.b.sum(axis=axis, dtype=np.uint64)))


class BShare(_Share):
    """Party ``party``'s replicated boolean share ``(x_i, x_{i+1})``, XOR over packed words.

    Components are unsigned integer arrays (uint64 for full words; comparison results
    are uint8 arrays holding one bit each in bit 0).
    """

    __slots__ = ()

    def _public(self, c: Any) -> Any:
        return _as_bits(c, self.a.dtype)

    def __xor__(self, other: Any) -> BShare:
        if isinstance(other, BShare):
            return BShare(self.party, self.a ^ other.a, self.b ^ other.b)
        if isinstance(other, AShare):
            return NotImplemented
        c = self._public(other)
        in_a, in_b = self._holds_x0()
        shape = np.broadcast_shapes(self.a.shape, np.shape(c))
        a = self.a ^ c if in_a else _widen(self.a, shape)
        b = self.b ^ c if in_b else _widen(self.b, shape)
        return BShare(self.party, a, b)

    __rxor__ = __xor__

    def __invert__(self) -> BShare:
        """Bitwise NOT of the shared words (XOR with all ones)."""
        return self ^ self.a.dtype.type(np.iinfo(self.a.dtype).max)

    def __and__(self, other: Any) -> BShare:
        """AND with a public constant (local); AND of two shares needs ``rt.and_``."""
        if isinstance(other, _Share):
            raise TypeError("AND of two shares needs a protocol: use Runtime.and_")
        c = self._public(other)
        return BShare(self.party, self.a & c, self.b & c)

    __rand__ = __and__

    def __or__(self, other: Any) -> BShare:
        """OR with a public constant: x | c = (x & ~c) ^ c."""
        if isinstance(other, _Share):
            raise TypeError("OR of two shares needs a protocol: use Runtime.and_")
        c = self._public(other)
        return (self & ~c) ^ c

    __ror__ = __or__

    def __lshift__(self, k: int) -> BShare:
        return BShare(self.party, self.a << self.a.dtype.type(k), self.b << self.b.dtype.type(k))

    def __rshift__(self, k: int) -> BShare:
        return BShare(self.party, self.a >> self.a.dtype.type(k), self.b >> self.b.dtype.type(k))

    def astype(self, dtype: np.dtype | type) -> BShare:
        """Change the word type (truncating or zero-extending each component)."""
        return BShare(self.party, self.a.astype(dtype), self.b.astype(dtype))
