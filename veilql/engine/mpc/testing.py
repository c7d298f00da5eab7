"""Run the same program at three in-process parties, one thread each.

>>> import numpy as np
>>> def prog(rt, x):
...     s = rt.share(0, x, 3)
...     return rt.open(s * 2).tolist()
>>> run_three(prog, [np.array([1, 2, 3]), None, None])
[[2, 4, 6], [2, 4, 6], [2, 4, 6]]
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import threading
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from veilql.engine.mpc import prg
from veilql.engine.mpc.runtime import Runtime
from veilql.engine.transport.inprocess import InProcessNetwork

PARTIES: tuple[str, str, str] = ("p0", "p1", "p2")


@contextlib.contextmanager
def deterministic_seeds(label: str = "test") -> Iterator[None]:
    """FOR TESTS ONLY: make the runtime's seeds a fixed sequence instead of os.urandom.

    Statistical tests use it so they give the same verdict on every run. Never use it
    outside tests: the seeds become public.

    >>> with deterministic_seeds():
    ...     a = run_three(lambda rt: rt.seeds.prev.array("x", "y", 2).tolist())
    >>> with deterministic_seeds():
    ...     b = run_three(lambda rt: rt.seeds.prev.array("x", "y", 2).tolist())
    >>> a == b
    True
    """
    counters: dict[str, itertools.count[int]] = {}
    lock = threading.Lock()
    original = prg.os

    def urandom(n: int) -> bytes:
        # Keyed by thread name (run_three names threads after parties), so every party
        # gets the same seeds on every run whatever the scheduling.
        name = threading.current_thread().name
        with lock:
            i = next(counters.setdefault(name, itertools.count()))
        return hashlib.sha256(f"{label}-{name}-{i}".encode()).digest()[:n]

    prg.os = types.SimpleNamespace(urandom=urandom)  # type: ignore[assignment]
    try:
        yield
    finally:
        prg.os = original


def run_three(
    fn: Callable[..., Any], *per_party_args: Sequence[Any], timeout: float = 30.0,
    parties: tuple[str, str, str] = PARTIES, network: InProcessNetwork | None = None,
    transcript_dir: str | None = None,
) -> list[Any]:
    """Call ``fn(rt, *args_i)`` at parties 0, 1, 2 concurrently and return the results.

    Each entry of ``per_party_args`` is a sequence of three values, one per party. Each
    party gets its own ``Runtime`` (after ``setup()``) over its own endpoint. If a
    party raises, it is marked dead so the others stop with ``PartyUnavailable``, and
    the first exception raised (in time) is re-raised here.
    """
    for arg in per_party_args:
        if len(arg) != 3:
            raise ValueError("each per-party argument needs exactly three values")
    net = network or InProcessNetwork(parties, timeout=timeout, transcript_dir=transcript_dir)
    results: list[Any] = [None, None, None]
    errors: list[tuple[int, BaseException]] = []
    lock = threading.Lock()

    def body(i: int) -> None:
        try:
            rt = Runtime(net.endpoint(parties[i]), parties, timeout=timeout)
            rt.setup()
            results[i] = fn(rt, *(arg[i] for arg in per_party_args))
        except BaseException as exc:  # noqa: BLE001 - reported to the caller below
            with lock:
                errors.append((i, exc))
            net.mark_dead(parties[i], f"its program raised {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=body, args=(i,), name=f"veil-{parties[i]}")
               for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0][1]
    return results
