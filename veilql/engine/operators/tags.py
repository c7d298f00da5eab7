"""Join tags: a keyed pseudorandom function of the privacy-unit key.

Two parties that share a random key compute the same 64-bit tag for the same unit, and
nobody without the key can tell which unit a tag belongs to, or test a guess: AES-128 is
used as the PRF (one block per key, so integer keys are tagged by whole-array AES-ECB
calls, a chunk of blocks at a time into reused buffers: no per-row work and no copies of
the whole column), with string keys first compressed by SHA-256. A tag collision between
different units has probability about n^2 / 2^65 (1e-7 for two million units); it would
add a wrong row to one join, never reveal anything.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_INT, _STR = 1, 2
TAG_CHUNK = 1 << 20  # blocks encrypted at once (16 MiB of input)


def new_key() -> bytes:
    """A fresh random 128-bit tag key."""
    return os.urandom(16)


def tags(key: bytes, units: np.ndarray) -> np.ndarray:
    """The uint64 tag of each unit key under ``key``.

    Integer keys and strings of the same digits tag differently: join keys must have one
    type across parties (the federation's policies name the same column type).

    >>> k = bytes(16)
    >>> a = tags(k, np.array([1, 2, 3])); b = tags(k, np.array([3, 2]))
    >>> bool(a[2] == b[0] and a[1] == b[1] and a[0] != a[1])
    True
    """
    n = len(units)
    out = np.empty(n, dtype=np.uint64)
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    step = TAG_CHUNK
    blocks = np.empty((min(n, step), 2), dtype=np.uint64)
    # update_into needs room for one more block than it is given
    sealed = np.empty((min(n, step) + 1, 2), dtype=np.uint64)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        part, done = blocks[:hi - lo], sealed[:hi - lo + 1]
        if units.dtype.kind in "iu":
            part[:, 0] = units[lo:hi].astype(np.int64, copy=False).view(np.uint64)
            part[:, 1] = _INT
        else:
            for i, u in enumerate(units[lo:hi]):
                digest = hashlib.sha256(str(u).encode()).digest()
                part[i] = np.frombuffer(digest[:16], dtype=np.uint64)
            part[:, 1] ^= np.uint64(_STR) << np.uint64(56)
        enc.update_into(memoryview(part).cast("B"), memoryview(done).cast("B"))
        out[lo:hi] = done[:hi - lo, 0]
    enc.finalize()
    return out
