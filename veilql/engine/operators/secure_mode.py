"""Secure mode: share, join, aggregate and noise on shares, then release output shares.

At a compute party (``compute_secure``): agree with the others whether a cached join can
be reused (``cache.py``); if not, run the local SQL, share each party's table just before
the join stage that needs it (``inputs.py``), and join stage by stage (``join.py`` or, for
``join_reveal = "nothing"``, ``oblivious_join.py``). Then the aggregates per cell
(``secure_aggregate``: products of the parties' factors, cross-party predicates on shares,
one inner product per chunk), the noise on shares (``noise.py``), and under partition
selection the comparison of each cell's noisy unit count with the threshold, opened to the
compute parties. The node waits for every charged party's commit before it calls
``release_secure``, which sends this party's output shares (and, at the owner of private
group keys, the labels of the released cells) to the analyst.

Leakage: what ``join.py`` / ``oblivious_join.py`` and ``inputs.py`` reveal (sizes), and
under partition selection the pass/fail bit of every cell; every other value is a share.
See docs/SECURITY.md.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from veilql.engine.mpc.runtime import Runtime
from veilql.engine.mpc.shares import AShare
from veilql.engine.operators import ANALYST, histogram, outer
from veilql.engine.operators import factors as fac
from veilql.engine.operators.aggregate import expand, grid_width, secure_sum
from veilql.engine.operators.cache import JoinCache, agree_cached, cache_level, structure_hash
from veilql.engine.operators.cells import cell_info, merge_cells, selection_index
from veilql.engine.operators.inputs import receive_table
from veilql.engine.operators.join import SharedTable, agree_all, join_stage
from veilql.engine.operators.local import PartyRows
from veilql.engine.operators.memory import spans
from veilql.engine.operators.noise import add_noise
from veilql.engine.operators.oblivious_join import oblivious_join_stage
from veilql.engine.operators.predicate import evaluate, per_chain_predicate
from veilql.engine.plan.nodes import JoinStage, Plan
from veilql.engine.transport.base import Transport

T = TypeVar("T")

CROSS_WORDS = 16  # words per slot combination a cross-party comparison holds at once
COMPARE_WORDS = 64  # words per element a comparison with the threshold holds at once
Columns = Callable[[], tuple[dict[str, np.ndarray] | None, PartyRows | None]]


@dataclass
class SecureOutput:
    """A compute party's part of the answer, before release: its shares of the noisy
    aggregates (released cells only), the released cells' indices under partition
    selection, and its private group keys (``None`` when it holds none)."""

    total: AShare
    cells: np.ndarray | None
    rows: PartyRows | None


def compute_secure(rt: Runtime, plan: Plan, qid: str, join_key: str, cache: JoinCache,
                   columns: Columns, step: Callable[[str], None],
                   own: Callable[[], np.ndarray | None] | None = None) -> SecureOutput:
    """Everything up to the release at a compute party (see the module docstring).

    ``columns()`` runs this party's local SQL and returns its columns to share and its
    private group keys (``None, None`` at a compute party without data); ``step`` is told
    each step's name. Memory: columns are shared and shuffled one at a time in chunks of
    the agreed ``Runtime.chunk_words``, each table is released as soon as the next step
    holds its successor, and the aggregation runs over chunks of joined rows; a cached join
    keeps only its exact aggregates once they are known. A LEFT/RIGHT JOIN across parties
    (``plan.own_total``) adds the preserved party's own total (``own()`` there, after
    ``columns()``) on shares before the noise (``outer.py``); its join is not cached (the
    own total comes from the local SQL).
    """
    me = rt.parties[rt.me]
    structure = structure_hash(plan)
    cached = None if plan.own_total else cache.get(join_key)
    if agree_cached(rt, plan, qid, cache_level(cached, structure)):
        assert cached is not None
        joined, rows = cached
    else:
        step("running its local SQL")
        # The local SQL runs beside the secure steps that need nothing of it (sharing and
        # shuffling another party's table), so its time overlaps their transfers.
        local = Background(columns) if me in plan.parties else None
        step("secret-sharing its columns")
        try:
            joined = join_all(rt, plan, qid, (lambda: local.result()[0]) if local else None,
                              step)
        finally:
            if local is not None:  # a failed query's local memory goes back with it
                local.wait(rt.timeout)
        rows = local.result()[1] if local is not None else None
        del local
        if not plan.own_total:
            cache.remember(join_key, joined, rows)
    step("aggregating on shares")
    result = secure_aggregate(rt, plan, joined)
    if plan.own_total:
        result = outer.add_own_total(rt, plan, qid, result, own() if own else None, joined)
    else:
        cache.keep_aggregates(join_key, joined, structure)
    del joined
    step("adding noise")
    total = add_noise(rt, plan, result)
    cells = None
    if plan.threshold is not None:
        # Only cells whose noisy unit count passes the threshold are released; the
        # compute parties learn which (the released key set), nothing else.
        cells = selected(rt, total[selection_index(plan)], plan.threshold)
        total = total[:, cells]
    return SecureOutput(total, cells, rows)


class Background(Generic[T]):
    """``fn()`` run in a thread of its own from now on; ``result()`` waits for it."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True,
                                        name="veil-local-sql")
        self._thread.start()

    def _run(self, fn: Callable[[], T]) -> None:
        try:
            self._value = fn()
        except BaseException as exc:  # raised in the thread that asks for the result
            self._error = exc

    def wait(self, timeout: float | None = None) -> None:
        """Wait (at most ``timeout`` seconds) for ``fn`` to end, whatever its outcome."""
        self._thread.join(timeout)

    def result(self) -> T:
        """``fn()``'s value, or its exception raised here."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


def selected(rt: Runtime, counts: AShare, threshold: int) -> np.ndarray:
    """The cells whose noisy unit count exceeds ``threshold``, opened to the compute
    parties; compared in batches of ``chunk_words / COMPARE_WORDS`` cells, so that the
    comparison's temporaries (some ``COMPARE_WORDS`` words per cell) stay within about a
    chunk (one batch, as before, for fewer cells)."""
    n = counts.shape[0]
    batch = max(1, rt.chunk_words // COMPARE_WORDS)
    out = []
    for lo, hi in spans(n, batch):
        passed = rt.gt(counts[lo:hi], threshold)
        out.append(lo + np.flatnonzero(np.asarray(rt.open(passed)) & 1))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def join_all(rt: Runtime, plan: Plan, qid: str,
             columns: Callable[[], dict[str, np.ndarray]] | None,
             step: Callable[[str], None]) -> SharedTable:
    """Shares of every party's table, joined stage by stage in FROM order.

    Each party's table is shared just before the stage that needs it, so the later
    parties' shares do not wait in memory beside the earlier stages, and at the same time
    as the other side of its stage (``join_stage``); ``columns()`` gives this party's plain
    columns (waiting for its local SQL), consumed as they are shared.
    """
    me = rt.parties[rt.me]

    def shared(party: str, r: Runtime) -> SharedTable:
        mine = columns() if party == me and columns is not None else None
        return receive_table(r, plan, party, mine, qid)

    def right_of(j: int, stage: JoinStage) -> Callable[[Runtime], SharedTable]:
        def make(r: Runtime) -> SharedTable:
            right = shared(stage.right, r)
            renamed = dict(right.cols)  # its tag column under the left side's name
            renamed[f"{stage.key_parties[0]}.tag{j}"] = renamed.pop(f"{stage.right}.tag{j}")
            return SharedTable(right.n, renamed)
        return make

    def first(r: Runtime) -> SharedTable:
        return shared(plan.parties[0], r)

    joined: SharedTable | Callable[[Runtime], SharedTable] = first
    for j, stage in enumerate(plan.joins):
        left_tag = f"{stage.key_parties[0]}.tag{j}"
        step(f"joining with {stage.right} on shares")
        if stage.mode == "oblivious":
            left = joined(rt) if callable(joined) else joined
            joined = oblivious_join_stage(rt, stage, left, right_of(j, stage)(rt), left_tag)
            del left
        else:  # both sides are shared (the first stage's), shuffled and opened at once
            joined = join_stage(rt, stage, joined, right_of(j, stage), left_tag, consume=True)
        joined.cols.pop(left_tag, None)
    return joined if not callable(joined) else joined(rt)


def secure_aggregate(rt: Runtime, plan: Plan, joined: SharedTable) -> AShare:
    """Shares of every aggregate and cell: shape (aggregates, cells in party order).

    Kept with a cached join (``SharedTable.memo``): a repeated query adds fresh noise to
    the same exact aggregates, when every compute party still holds them. The joined rows
    are taken in chunks of ``rt.chunk_words`` words of the joint grid (cross-party
    predicates included), two chunks at a time on forked runtimes; sums over rows add up
    over the chunks.
    """
    key = structure_hash(plan)
    if agree_all(rt, key in joined.memo):
        return joined.memo[key]
    chains, owner = fac.expand_terms(plan)
    distinct = np.array([c.kind == "count_distinct" for c in chains])
    n = joined.n
    slots = [plan.step(p).slots for p in plan.parties]
    factors = []  # a party's factor, or its values and cells apart (fac.separable)
    for p in plan.parties:
        parts = ("F",) if f"{p}.F" in joined.cols else ("V", "H")
        factors += [joined.cols[f"{p}.{name}"] for name in parts]
    width = grid_width([f.shape for f in factors], len(chains))
    own = [c.cross for c in chains]  # each chain's own predicate (SUM(a.x > b.y)) or None
    if plan.on_shares:
        tests = 1 + len({c.sql() for c in own if c is not None})
        width += CROSS_WORDS * tests * int(np.prod(slots, dtype=np.int64))
        width += len(chains) * int(np.prod(slots, dtype=np.int64))

    def chunk(r: Runtime, lo: int, hi: int) -> AShare:
        cross = None
        if plan.on_shares:

            def column(party: str, name: str) -> AShare:
                i = plan.parties.index(party)
                axes = [1] * len(slots)
                axes[i] = slots[i]
                return expand(joined.cols[f"{party}.{name}"][lo:hi], (hi - lo, *axes),
                              (hi - lo, *slots))

            where = evaluate(r, plan.cross, column) if plan.cross is not None else None
            cross = where if not any(c is not None for c in own) else per_chain_predicate(
                r, own, where, column, (hi - lo, *slots))
        return secure_sum(r, [f[lo:hi] for f in factors], cross, distinct)

    def stream(r: Runtime, ranges: list[tuple[int, int]]) -> AShare:
        total = chunk(r, *ranges[0])
        for lo, hi in ranges[1:]:
            total = total + chunk(r, lo, hi)
        return total

    ranges = spans(n, rt.chunk_rows(width))
    if len(ranges) > 1:
        # Two streams of chunks at once, so one's rounds wait while the other's messages
        # travel (a chunk's comparison is a chain of small rounds); two chunks' temporaries.
        first, second = rt.parallel(lambda r: stream(r, ranges[0::2]),
                                    lambda r: stream(r, ranges[1::2]))
        per_chain = first + second
    else:
        per_chain = stream(rt, ranges)
    cells = per_chain.shape[1]
    a = np.zeros((len(plan.aggregates), cells), dtype=np.uint64)
    b = np.zeros_like(a)
    for i, agg in owner:  # a chain may feed several aggregates (fac.expand_terms)
        a[agg] += per_chain.a[i]
        b[agg] += per_chain.b[i]
    # GROUP BY an expression across parties: fine cells added into its cells (cells.py)
    merged = merge_cells(plan, AShare(rt.me, a, b))
    # A large COUNT(DISTINCT): its chain above counted no bucket; the two digits' matrix
    # product does, and its counts (merged first) compared with 0 give the distinct values
    # per cell (operators/histogram.py), noised below as any COUNT
    for agg, counts in histogram.secure_counts(rt, plan, joined.cols, chains, cells).items():
        merged.a[agg], merged.b[agg] = counts.a, counts.b
    joined.memo[key] = merged
    return joined.memo[key]


def release_secure(transport: Transport, plan: Plan, me: str, out: SecureOutput) -> None:
    """Send this party's output shares to the analyst (after every charged party
    committed); under partition selection the owner of the private group keys first sends
    the released cells' labels (``cells.cell_info``)."""
    if plan.threshold is not None:
        owner = next(g.party for g in plan.groups if g.private)
        if me == owner:
            assert out.rows is not None and out.cells is not None
            info = cell_info(plan, out.rows, out.cells)
            transport.send(ANALYST, "cells", json.dumps(info).encode())
    transport.send_array(ANALYST, "release", np.stack([out.total.a, out.total.b]))
