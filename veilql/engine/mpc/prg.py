"""Cryptographic pseudo-random streams and the pairwise seeds of a three-party session.

Every random value the runtime uses (share components, zero-sharings, masks,
permutations) comes from an AES-128-CTR keystream keyed by a seed drawn with
``os.urandom``; numpy's and ``random``'s generators are never used for them.

Streams are separated twice. The *purpose* (``"zero"``, ``"mask"``, ``"share"``,
``"perm"``, ...) selects the AES key, derived from the seed with HMAC-SHA256; the
*label* of one draw (the protocol's round tag plus a sub-name, identical at every party
holding the seed) selects the 96-bit CTR nonce, derived with SHA-256. The remaining 32
bits of the counter block count AES blocks inside one draw (at most 64 GiB per draw). A
(purpose, label) pair must be used once per ``Prg``: a reused nonce would give the same
"random" words twice. Uniqueness comes from the runtime's round counter, which is part
of every label; as a guard against programming mistakes, reusing any of the last
``RECENT_LABELS`` pairs raises ``ProtocolError`` (a bounded window, so long sessions do
not accumulate memory).

Two parties holding the same seed obtain the same words for the same (purpose, label)
whatever order they draw in, so a protocol may consume a seed at one holder only.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections import deque

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from veilql.engine.transport.base import Transport
from veilql.errors import ProtocolError

SEED_BYTES = 16
RECENT_LABELS = 1 << 16

_zeros_lock = threading.Lock()
_zeros = b""


def _zero_bytes(n: int) -> bytes:
    """A shared read-only buffer of at least ``n`` zero bytes (the CTR plaintext)."""
    global _zeros
    if len(_zeros) < n:
        with _zeros_lock:
            if len(_zeros) < n:
                _zeros = bytes(max(n, 2 * len(_zeros), 1 << 16))
    return _zeros


def _nonce(label: str) -> bytes:
    """The initial CTR block of a draw: 96 bits of SHA-256(label), a 32-bit block counter."""
    return hashlib.sha256(label.encode()).digest()[:12] + bytes(4)


class Prg:
    """An AES-128-CTR keystream generator keyed by a 16-byte seed.

    >>> g = Prg(bytes(16))
    >>> a = g.array("mask", "t:0", 4)
    >>> a.dtype, a.shape
    (dtype('uint64'), (4,))
    >>> bool((Prg(bytes(16)).array("mask", "t:0", 4) == a).all())
    True
    >>> bool((g.array("mask", "t:1", 4) == a).all())
    False
    """

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_BYTES:
            raise ProtocolError(
                f"PRG seed must be {SEED_BYTES} bytes, got {len(seed)}",
                "seeds come from os.urandom(16) during Runtime.setup()",
            )
        self._seed = bytes(seed)
        self._keys: dict[str, bytes] = {}
        self._used: set[tuple[str, str]] = set()
        self._order: deque[tuple[str, str]] = deque()
        self._lock = threading.Lock()

    def _key(self, purpose: str) -> bytes:
        with self._lock:
            key = self._keys.get(purpose)
            if key is None:
                mac = hmac.new(self._seed, b"veilql/prg/" + purpose.encode(), hashlib.sha256)
                key = self._keys[purpose] = mac.digest()[:16]
            return key

    def bytes(self, purpose: str, label: str, nbytes: int) -> np.ndarray:
        """``nbytes`` keystream bytes for (purpose, label), as a writable uint8 array."""
        self._claim(purpose, label)
        # update_into needs up to one block of slack in the output buffer.
        out = np.empty(nbytes + 16, dtype=np.uint8)
        if nbytes:
            enc = Cipher(algorithms.AES(self._key(purpose)), modes.CTR(_nonce(label))).encryptor()
            enc.update_into(memoryview(_zero_bytes(nbytes))[:nbytes], out)
        return out[:nbytes]

    def _claim(self, purpose: str, label: str) -> None:
        """Refuse a (purpose, label) drawn recently: it would repeat a keystream."""
        with self._lock:
            if (purpose, label) in self._used:
                raise ProtocolError(
                    f"PRG stream {purpose!r}/{label!r} drawn twice",
                    "each protocol call must use a fresh round tag",
                )
            self._used.add((purpose, label))
            self._order.append((purpose, label))
            if len(self._order) > RECENT_LABELS:
                self._used.discard(self._order.popleft())

    def xor(self, purpose: str, label: str, data: np.ndarray) -> np.ndarray:
        """``data`` XOR the keystream of (purpose, label), as a new array like ``data``.

        Equal to ``data ^ self.array(purpose, label, data.shape, data.dtype)`` but in one
        pass: AES-CTR encryption of ``data`` is exactly that XOR.

        >>> d = np.arange(5, dtype=np.uint16)
        >>> bool((Prg(bytes(16)).xor("m", "l", d) ==
        ...       (d ^ Prg(bytes(16)).array("m", "l", 5, np.uint16))).all())
        True
        """
        src = np.ascontiguousarray(data)
        nbytes = src.size * src.dtype.itemsize
        self._claim(purpose, label)
        out = np.empty(nbytes + 16, dtype=np.uint8)
        if nbytes:
            enc = Cipher(algorithms.AES(self._key(purpose)), modes.CTR(_nonce(label))).encryptor()
            enc.update_into(memoryview(src.reshape(-1).view(np.uint8)), out)
        return out[:nbytes].view(src.dtype).reshape(src.shape)

    def array(
        self, purpose: str, label: str, shape: int | tuple[int, ...],
        dtype: np.dtype | type = np.uint64,
    ) -> np.ndarray:
        """A uniformly random array of unsigned integers of the given shape and dtype."""
        dt = np.dtype(dtype)
        shp = (shape,) if isinstance(shape, int) else tuple(shape)
        n = int(np.prod(shp, dtype=np.int64))
        return self.bytes(purpose, label, n * dt.itemsize).view(dt).reshape(shp)

    def permutation(self, purpose: str, label: str, n: int) -> np.ndarray:
        """A uniformly random permutation of ``range(n)`` (int64 indices).

        Sorts ``n`` random 64-bit keys; given distinct keys every order is equally
        likely, so redrawing on a tie (probability below n^2 / 2^65) makes the result
        exactly uniform rather than merely close to it.

        >>> p = Prg(bytes(16)).permutation("perm", "x", 10)
        >>> sorted(p.tolist()) == list(range(10))
        True
        """
        attempt = 0
        while True:
            keys = self.array(purpose, f"{label}#{attempt}", n)
            order = np.argsort(keys, kind="stable")
            if n < 2:
                return order
            sk = keys[order]
            if not np.any(sk[1:] == sk[:-1]):
                return order
            attempt += 1


class PairwiseSeeds:
    """The two seeds a party shares with its neighbours on the ring of three parties, and
    one seed common to all three.

    Party ``i`` draws ``s_i = os.urandom(16)`` and sends it to party ``i-1``, so seed
    ``s_i`` is known exactly to parties ``i-1`` and ``i``. Party ``i`` therefore holds
    ``prev = Prg(s_i)`` (shared with ``i-1``) and ``next = Prg(s_{i+1})`` (shared with
    ``i+1``). This matches replicated sharing: component ``x_i`` is held by parties
    ``i-1`` and ``i``, so it can be drawn from ``s_i`` without communication.

    In the same round every party sends a fresh 16-byte contribution ``c_i`` to both
    others; ``common = Prg(SHA-256(c_0 | c_1 | c_2))`` is known to the three compute
    parties and to nobody else. It draws words that all three are meant to know anyway
    (the component of an input that both non-owners hold, ``arith.share``), never a mask.
    """

    def __init__(self, prev: Prg, next: Prg, common: Prg | None = None) -> None:
        self.prev = prev
        self.next = next
        self.common = common

    @classmethod
    def agree(
        cls, transport: Transport, parties: tuple[str, str, str], me: int, tag: str = "seeds",
    ) -> PairwiseSeeds:
        """Run the one-round seed agreement at party ``me`` (see the class docstring)."""
        mine = os.urandom(SEED_BYTES)
        part = os.urandom(SEED_BYTES)
        prev, nxt = parties[(me - 1) % 3], parties[(me + 1) % 3]
        transport.send(prev, tag, mine)
        for p in (prev, nxt):
            transport.send(p, tag + "/common", part)
        theirs = transport.recv(nxt, tag)
        parts = {me: part}
        for i, p in (((me - 1) % 3, prev), ((me + 1) % 3, nxt)):
            parts[i] = transport.recv(p, tag + "/common")
        for who, got in ((nxt, theirs), (prev, parts[(me - 1) % 3]),
                         (nxt, parts[(me + 1) % 3])):
            if len(got) != SEED_BYTES:
                raise ProtocolError(
                    f"seed from {who!r} has {len(got)} bytes, expected {SEED_BYTES}",
                    "all parties must run the same VeilQL version",
                )
        common = hashlib.sha256(b"".join(parts[i] for i in range(3))).digest()[:SEED_BYTES]
        return cls(Prg(mine), Prg(theirs), Prg(common))
