"""One party's secure runtime: its transport, its pairwise seeds, and the protocols.

Each of the three compute parties creates its own ``Runtime`` over its own
``Transport`` and runs the same program; the parties share nothing but messages.
Round tags come from a per-runtime counter (``f"{op}:{n}"``), so the same sequence of
protocol calls produces the same tags at every party. Protocols take and return whole
arrays: every round sends at most one message to each peer, whatever the array length.

The protocol bodies live in small modules under ``protocols/`` (arithmetic, boolean,
comparison, shuffle, gather); the methods here are thin entry points that document the API.

Memory: ``chunk_words`` bounds the words of one message and of the temporaries of one step
of the chunked protocols (sharing, the shuffle, the aggregation's products). A party's
memory setting gives its value (``engine/node.py``); the three parties agree on the
smallest (``agree_chunk_words``), since chunking decides the sequence of messages. Arrays
that fit in one chunk take exactly the rounds they took before chunking existed.

Conventions (see ``shares.py``): party ``i`` holds components ``(x_i, x_{i+1})``; seed
``s_i`` is known to parties ``i-1`` and ``i`` (``PairwiseSeeds``). In a *reshare*, each
party sends its 3-out-of-3 share ``z_i`` to party ``i-1`` and receives ``z_{i+1}`` from
party ``i+1``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from veilql.engine.mpc.prg import PairwiseSeeds
from veilql.engine.mpc.protocols import arith, boolean, compare, convert, gather
from veilql.engine.mpc.protocols import shuffle as shuffle_mod
from veilql.engine.mpc.shares import AShare, BShare
from veilql.engine.transport.base import Transport
from veilql.errors import ProtocolError, UsageError

Public = int | np.ndarray
T = TypeVar("T")
DEFAULT_CHUNK_WORDS = 1 << 20  # 8 MiB per chunk-sized array when nothing else is set


class Runtime:
    """Party ``transport.me``'s view of a three-party replicated-sharing session.

    ``parties`` names the three compute parties in ring order; this party's index in it
    is ``me``. Call ``setup()`` once (one round) before any protocol.
    """

    def __init__(
        self, transport: Transport, parties: Sequence[str], *, timeout: float | None = None,
        chunk_words: int | None = None,
    ) -> None:
        parties = tuple(parties)
        if len(parties) != 3 or len(set(parties)) != 3:
            raise UsageError(
                f"the secure runtime needs exactly three distinct compute parties, got {parties}",
                "add a helper party to the federation when only two data parties exist",
            )
        if transport.me not in parties:
            raise UsageError(
                f"transport belongs to {transport.me!r}, which is not one of {parties}",
                "create each party's Runtime over that party's own endpoint",
            )
        self.transport = transport
        self.parties: tuple[str, str, str] = parties  # type: ignore[assignment]
        self.me = parties.index(transport.me)
        self.timeout = timeout
        self.seeds: PairwiseSeeds | None = None
        self._counter = 0
        self._prefix = ""  # a forked runtime's tags start with its fork's tag
        self.rounds = 0  # communication rounds run so far (for benchmarks)
        self.chunk_words = max(1, int(chunk_words or DEFAULT_CHUNK_WORDS))

    # -- session -----------------------------------------------------------------
    def setup(self) -> None:
        """Agree the pairwise PRG seeds (one round); idempotent."""
        if self.seeds is None:
            self.seeds = PairwiseSeeds.agree(self.transport, self.parties, self.me)
            self.rounds += 1

    def agree_chunk_words(self) -> int:
        """Adopt the smallest ``chunk_words`` of the three parties (one round); returns it.

        Chunk sizes decide how many messages a protocol sends, so all three must use the
        same; each party's own memory setting is only an upper bound on it.
        """
        tag = self.tag("chunk")
        mine = np.array([self.chunk_words], dtype=np.uint64)
        for i in (self.prev, self.next):
            self.send(i, tag, mine)
        theirs = [int(self.recv(i, tag, np.uint64, 1)[0]) for i in (self.prev, self.next)]
        self.rounds += 1
        self.chunk_words = max(1, min(self.chunk_words, *theirs))
        return self.chunk_words

    def chunk_rows(self, width: int) -> int:
        """Rows of ``width`` words each that fit in one chunk (at least one).

        >>> class _T:
        ...     me = "a"
        >>> rt = Runtime(_T(), ["a", "b", "c"], chunk_words=10)  # type: ignore[arg-type]
        >>> rt.chunk_rows(3), rt.chunk_rows(20)
        (3, 1)
        """
        return max(1, self.chunk_words // max(1, int(width)))

    def tag(self, op: str) -> str:
        """A fresh round tag for one protocol call, identical at all three parties."""
        if self.seeds is None:
            raise ProtocolError(
                "the secure runtime was used before setup()",
                "call Runtime.setup() once at session start",
            )
        self._counter += 1
        return f"{self._prefix}{op}:{self._counter}"

    def fork(self, n: int) -> list[Runtime]:
        """``n`` runtimes over this one's transport and seeds, each with tags of its own.

        Programs that do not depend on each other run at the same time on the children
        (``parallel``), so their messages use the links together instead of in turn. Each
        child's tags start with this fork's tag and its index, so they are the same at every
        party whatever the threads' timing.
        """
        base = self.tag("fork")
        children = []
        for i in range(n):
            child = Runtime.__new__(Runtime)
            child.__dict__.update(self.__dict__)
            child._prefix, child._counter, child.rounds = f"{base}/{i}/", 0, 0
            children.append(child)
        return children

    def parallel(self, *programs: Callable[[Runtime], T]) -> list[T]:
        """Run each program on its own forked runtime, each in a thread; their results.

        Returns once all have ended; raises as soon as one fails (the first failed in
        program order among those ended): the others may be waiting for messages that
        will never come, and the caller's failure is what tells the peers (their own
        programs then fail and end). Rounds add up as the longest program's: they overlap.
        """
        children = self.fork(len(programs))
        results: list[Any] = [None] * len(programs)
        errors: list[BaseException | None] = [None] * len(programs)
        ended = threading.Condition()
        count = [0]

        def run(i: int) -> None:
            try:
                results[i] = programs[i](children[i])
            except BaseException as exc:  # handed to the caller's thread below
                errors[i] = exc
            with ended:
                count[0] += 1
                ended.notify_all()

        for i in range(len(programs)):
            threading.Thread(target=run, args=(i,), daemon=True,
                             name=f"veil-mpc-{self.parties[self.me]}-{i}").start()
        with ended:
            while count[0] < len(programs) and not any(e is not None for e in errors):
                ended.wait()
        for exc in errors:
            if exc is not None:
                raise exc
        self.rounds += max((c.rounds for c in children), default=0)
        return results

    @property
    def prev(self) -> int:
        """Index of party ``me - 1``."""
        return (self.me - 1) % 3

    @property
    def next(self) -> int:
        """Index of party ``me + 1``."""
        return (self.me + 1) % 3

    # -- messaging ---------------------------------------------------------------
    def send(self, to: int, tag: str, arr: np.ndarray) -> None:
        """Send an array's raw bytes to party index ``to`` (receiver knows dtype and shape).

        The bytes go as a view of the array: every transport consumes a payload before
        ``send`` returns (the in-process one copies it, a socket writes it), so the array may
        be reused afterwards and a network send makes no copy.
        """
        data = np.ascontiguousarray(arr)
        self.transport.send(self.parties[to], tag, memoryview(data.reshape(-1).view(np.uint8)))

    def recv(self, frm: int, tag: str, dtype: Any, shape: int | tuple[int, ...]) -> np.ndarray:
        """Receive an array of known dtype and shape from party index ``frm`` (read-only)."""
        data = self.transport.recv(self.parties[frm], tag, self.timeout)
        dt = np.dtype(dtype)
        shp = (shape,) if isinstance(shape, int) else tuple(shape)
        want = int(np.prod(shp, dtype=np.int64)) * dt.itemsize
        if len(data) != want:
            raise ProtocolError(
                f"message {tag!r} from {self.parties[frm]!r} has {len(data)} bytes, "
                f"expected {want}",
                "all parties must run the same program on arrays of the same shape",
            )
        return np.frombuffer(data, dtype=dt).reshape(shp)

    def reshare_raw(self, tag: str, z: np.ndarray) -> np.ndarray:
        """Send ``z`` to party ``me-1`` and return ``z_{me+1}`` from party ``me+1``."""
        self.send(self.prev, tag, z)
        self.rounds += 1
        return self.recv(self.next, tag, z.dtype, z.shape)

    # -- correlated randomness -----------------------------------------------------
    def zero_a(self, label: str, shape: int | tuple[int, ...]) -> np.ndarray:
        """This party's term of an additive zero-sharing: F(s_i) - F(s_{i+1}) sums to 0."""
        assert self.seeds is not None
        return (self.seeds.prev.array("zero", label, shape)
                - self.seeds.next.array("zero", label, shape))

    def mask_zero_b(self, label: str, z: np.ndarray) -> np.ndarray:
        """``z ^ zero_b(label, ...)`` computed as two keystream encryptions of ``z``."""
        assert self.seeds is not None
        return self.seeds.next.xor("zero", label, self.seeds.prev.xor("zero", label, z))

    def zero_b(self, label: str, shape: int | tuple[int, ...], dtype: Any) -> np.ndarray:
        """This party's term of an XOR zero-sharing: F(s_i) ^ F(s_{i+1}) XORs to 0."""
        assert self.seeds is not None
        return (self.seeds.prev.array("zero", label, shape, dtype)
                ^ self.seeds.next.array("zero", label, shape, dtype))

    # -- protocols: sharing and opening (protocols/arith.py) --------------------------
    def share(
        self, owner: int | str, values: Any | None, shape: int | tuple[int, ...],
        *, boolean: bool = False, dtype: Any = np.uint64,
    ) -> AShare | BShare:
        """Secret-share ``values`` held by compute party ``owner`` (others pass None).

        An array larger than ``chunk_words`` is shared in chunks of rows (one round each),
        so the owner's temporaries stay within a chunk; the result is the same sharing.
        """
        shp = (shape,) if isinstance(shape, int) else tuple(shape)
        width = int(np.prod(shp[1:], dtype=np.int64)) if len(shp) > 1 else 1
        n = shp[0] if shp else 1
        rows = self.chunk_rows(width)
        if not shp or n <= rows:
            return arith.share(self, owner, values, shape, boolean=boolean, dtype=dtype)
        x = np.asarray(values) if values is not None else None
        if x is not None and x.shape != shp:
            raise UsageError(f"values have shape {x.shape}, declared shape is {shp}",
                             "pass the same shape at all three parties")
        dt = np.dtype(dtype) if boolean else np.dtype(np.uint64)
        first, second = np.empty(shp, dt), np.empty(shp, dt)
        for lo in range(0, n, rows):
            hi = min(n, lo + rows)
            part = arith.share(self, owner, None if x is None else x[lo:hi], (hi - lo, *shp[1:]),
                               boolean=boolean, dtype=dtype)
            first[lo:hi], second[lo:hi] = part.a, part.b
        return (BShare if boolean else AShare)(self.me, first, second)

    def receive_input(
        self, sender: str, tag: str, shape: int | tuple[int, ...],
    ) -> AShare:
        """Receive the shares a non-computing data party sent with ``share_from_outside``
        under ``tag``."""
        return arith.receive_input(self, sender, tag, shape)

    def reshare(self, x: AShare | BShare) -> AShare | BShare:
        """Re-randomise a sharing of the same value (one round)."""
        return arith.reshare(self, x)

    def open(self, x: AShare | BShare) -> np.ndarray:
        """Reveal ``x`` to all three parties (one round, one array per party)."""
        return arith.open_all(self, x)

    def open_to(self, x: AShare | BShare, party: int | str) -> np.ndarray | None:
        """Reveal ``x`` to ``party`` only; the others get None (one message)."""
        return arith.open_to(self, x, party)

    # -- protocols: products -------------------------------------------------------
    def mul(self, x: Any, y: Any) -> Any:
        """Products of arithmetic shares, one round (Araki et al. CCS'16).

        ``x`` and ``y`` are AShares or equal-length lists of AShares (batched into one
        message).
        """
        return arith.mul(self, x, y)

    def dot(self, x: AShare, y: AShare) -> AShare:
        """Inner products along the last axis, one round for the whole batch."""
        return arith.dot(self, x, y)

    def and_(self, x: Any, y: Any) -> Any:
        """Bitwise AND of boolean shares (or lists of them), one round."""
        return boolean.and_(self, x, y)

    # -- protocols: conversions ------------------------------------------------------
    def a2b(self, x: AShare) -> BShare:
        """Boolean sharing of the 64-bit words of ``x`` (7 rounds)."""
        return convert.a2b(self, x)

    def b2a_bit(self, b: BShare) -> AShare:
        """Arithmetic sharing of bits (bit 0 of each word of ``b``), 2 rounds."""
        return convert.b2a_bit(self, b)

    # -- protocols: comparisons (protocols/compare.py) -----------------------------------
    def msb(self, x: AShare) -> BShare:
        """The top bit of each shared 64-bit word, as uint8 bit shares (7 rounds)."""
        return compare.msb(self, x)

    def lt(self, x: AShare | Public, y: AShare | Public) -> BShare:
        """``x < y`` as signed 64-bit integers (needs |x - y| < 2^63, e.g. |x|, |y| < 2^62)."""
        return compare.lt(self, x, y)

    def le(self, x: AShare | Public, y: AShare | Public) -> BShare:
        """``x <= y`` (same range as ``lt``)."""
        return compare.lt(self, y, x) ^ 1

    def gt(self, x: AShare | Public, y: AShare | Public) -> BShare:
        """``x > y`` (same range as ``lt``)."""
        return compare.lt(self, y, x)

    def ge(self, x: AShare | Public, y: AShare | Public) -> BShare:
        """``x >= y`` (same range as ``lt``)."""
        return compare.lt(self, x, y) ^ 1

    def eq(self, x: AShare | Public, y: AShare | Public) -> BShare:
        """``x == y`` over the whole ring (7 rounds)."""
        return compare.eq(self, x, y)

    def mux(self, bit: BShare | AShare, a: AShare | Public, b: AShare | Public) -> AShare:
        """``a`` where ``bit`` is 1, else ``b`` (bit as BShare: 3 rounds; AShare: 1)."""
        return compare.mux(self, bit, a, b)

    # -- protocols: shuffle -----------------------------------------------------------
    def shuffle(self, columns: Sequence[AShare | BShare], *, consume: bool = False,
                lead: int | None = None) -> list[AShare | BShare]:
        """Permute the rows of all columns by one secret permutation (2 rounds per chunk,
        four messages of the table's size; ``consume``: empty the given list and drop each
        column once shuffled; ``lead``: the party that takes the busiest role)."""
        return shuffle_mod.shuffle(self, columns, consume=consume, lead=lead)

    def gather(
        self, columns: Sequence[AShare | BShare], idx: np.ndarray | None,
        pair: tuple[int | str, int | str], count: int,
    ) -> list[AShare | BShare]:
        """Rows ``idx`` of all columns, with ``idx`` known to the two parties of ``pair``
        only (the third passes None and learns nothing); one round (``protocols/gather.py``)."""
        p = (self.party_index(pair[0]), self.party_index(pair[1]))
        return gather.gather(self, columns, idx, p, count)

    def party_index(self, party: int | str) -> int:
        """Index of a party given by name or index."""
        if isinstance(party, str):
            if party not in self.parties:
                raise UsageError(
                    f"{party!r} is not a compute party of this session {self.parties}",
                    "name one of the three compute parties",
                )
            return self.parties.index(party)
        if party not in (0, 1, 2):
            raise UsageError(f"party index {party} out of range", "use 0, 1 or 2")
        return int(party)
