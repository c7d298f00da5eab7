"""The join cache: joined shares kept by a compute party for repeated queries.

A repeated query over unchanged tables (the cache key covers the plan without its noise
and keyed digests of every table's version, ``PartyNode._agree``) skips the join, and once
its exact aggregates are known (``SharedTable.memo``) even the aggregation: it pays only its
fresh noise. The compute parties agree on reuse (one flag each way, told to the
non-computing data parties too), so all of them skip or all of them join.

Leakage: whether an earlier query over the same structure and versions ran (a function of
the query history, which every party sees anyway), nothing about the data.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import replace

from veilql.engine.mpc.runtime import Runtime
from veilql.engine.operators.join import SharedTable
from veilql.engine.operators.local import PartyRows
from veilql.engine.plan.nodes import Plan
from veilql.engine.transport.base import Transport

JOIN_CACHE_ENTRIES = 4  # joined share tables a compute party keeps for repeated queries
Entry = tuple[SharedTable, PartyRows | None]


def structure_hash(plan: Plan) -> str:
    """A digest of what the join and the shared columns depend on: the plan minus noise."""
    bare = replace(plan, aggregates=tuple(replace(a, noise=None, l1=0, l2=0.0)
                                          for a in plan.aggregates), epsilon=0.0, delta=0.0,
                   sql="", having=None, order_by=(), limit=None)
    return hashlib.sha256(bare.to_s().encode()).hexdigest()


class JoinCache:
    """A few joined share tables with the party's private group keys, which index into
    them (concurrent queries of a node share it; shares are never mutated)."""

    def __init__(self, entries: int = JOIN_CACHE_ENTRIES) -> None:
        self._entries: dict[str, Entry] = {}
        self._size = entries
        self._lock = threading.Lock()

    def get(self, key: str) -> Entry | None:
        """The entry under ``key``, if any."""
        with self._lock:
            return self._entries.get(key)

    def remember(self, key: str, joined: SharedTable, rows: PartyRows | None) -> None:
        """Keep the joined shares for reuse (the oldest entries leave first)."""
        with self._lock:
            self._entries[key] = (joined, rows)
            while len(self._entries) > self._size:
                self._entries.pop(next(iter(self._entries)))

    def keep_aggregates(self, key: str, joined: SharedTable, structure: str) -> None:
        """Once the exact aggregates of ``structure`` are known, the entry keeps them (and
        the private group keys) instead of the joined columns: a repeated query needs only
        them (its cache key covers the same structure), and the columns are the bulk of the
        memory. A query still using the old entry keeps its own reference."""
        if structure not in joined.memo:
            return
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] is joined:
                self._entries[key] = (SharedTable(joined.n, {}, joined.memo), entry[1])

    def drop(self, key: str) -> None:
        """Forget the entry under ``key`` (a failed query's partial state)."""
        with self._lock:
            self._entries.pop(key, None)


def cache_level(cached: Entry | None, structure: str) -> int:
    """What a cache entry holds: bit 0 the joined columns, bit 1 the exact aggregates of
    ``structure`` (0: no entry)."""
    if cached is None:
        return 0
    table = cached[0]
    return (1 if table.cols or table.n == 0 else 0) | (2 if structure in table.memo else 0)


def reuse(levels: list[int]) -> bool:
    """Whether the compute parties' cache levels let them skip the join: all hold the exact
    aggregates, or all hold the joined columns.

    >>> reuse([3, 2, 2]), reuse([1, 1, 3]), reuse([1, 2, 3])
    (True, True, False)
    """
    return all(lv & 2 for lv in levels) or all(lv & 1 for lv in levels)


def agree_cached(rt: Runtime, plan: Plan, qid: str, level: int) -> bool:
    """All compute parties can reuse the cached join (``cache_level``)? Tell the
    non-computing parties too, who decide the same way (``all_cached``)."""
    flag = str(level).encode()
    for p in rt.parties:
        if p != rt.parties[rt.me]:
            rt.transport.send(p, f"{qid}/cached", flag)
    for p in plan.parties:
        if p not in rt.parties:
            rt.transport.send(p, f"{qid}/cached", flag)
    flags = [rt.transport.recv(p, f"{qid}/cached", rt.timeout)
             for p in rt.parties if p != rt.parties[rt.me]]
    return reuse([level, *(_level(f) for f in flags)])


def _level(flag: bytes) -> int:
    """A peer's cache level; anything malformed counts as nothing cached."""
    return int(flag) if flag in (b"0", b"1", b"2", b"3") else 0


def all_cached(transport: Transport, plan: Plan, qid: str) -> bool:
    """At a non-computing data party: whether every compute party reuses a cached join."""
    return reuse([_level(transport.recv(p, f"{qid}/cached")) for p in plan.compute])
