"""A party's node: compiles the query itself, charges its own ledger, runs its own part.

The same code runs in a thread of the client process (``address = "local"``) and, later,
behind ``veil serve``: everything a node knows comes from its own federation files, its
own connector, its own ledger and the messages on its own transport.

The life of a query at a node (DESIGN.md, "The life of a query"):

1. compile the SQL into a plan; agree with the other participants on the plan's hash;
2. if the plan reads this party's tables: reserve the cost in its own ledger and tell
   the others and the analyst; if any party refuses, abort and stop;
3. run the local SQL (bounded contributions), compute its factors;
4. secure mode: share, join, evaluate cross-party predicates, aggregate, add this
   party's noise share, send its output shares to the analyst;
   local mode: aggregate and add the noise itself, send the noisy values to the analyst;
5. commit the reservation (abort it on any failure before release).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from veilql.connectors.base import Connector, open_connector
from veilql.engine.dp import sample_share
from veilql.engine.ledger.errors import BudgetRefused
from veilql.engine.ledger.ledger import Ledger
from veilql.engine.ledger.multi import ledger_path
from veilql.engine.mpc.protocols.arith import share_from_outside
from veilql.engine.mpc.runtime import DEFAULT_CHUNK_WORDS, Runtime
from veilql.engine.mpc.shares import AShare
from veilql.engine.operators import factors as fac
from veilql.engine.operators.aggregate import expand, grid_width, secure_sum
from veilql.engine.operators.join import SharedTable, agree_all, join_stage
from veilql.engine.operators.local import PartyRows, fetch, labels_only
from veilql.engine.operators.oblivious_join import is_oblivious, oblivious_join_stage
from veilql.engine.operators.oblivious_join import local_columns as oblivious_columns
from veilql.engine.operators.predicate import evaluate
from veilql.engine.operators.tags import new_key, tags
from veilql.engine.plan.nodes import GroupKey, Plan
from veilql.engine.rewrite import compile_plan
from veilql.engine.rewrite.push_local import SELECTION
from veilql.engine.transport.base import HEARTBEAT_SHARE, Heartbeat, Transport
from veilql.engine.transport.mailbox import without_rounds
from veilql.errors import PartyUnavailable, ProtocolError, QueryFailed, UsageError
from veilql.policies.model import Federation

ANALYST = "analyst"  # the client's endpoint name on the query's network
Progress = Callable[[str, str], None]  # (party, step) -> None
JOIN_CACHE_ENTRIES = 4  # joined share tables a compute party keeps for repeated queries
MEMORY_ENV = "VEIL_MEMORY_MB"  # a party's memory budget for one query's chunks, in MiB
DEFAULT_MEMORY_MB = 2048
CHUNK_SHARE = 64  # chunk-sized arrays one step may hold at once (chunk = budget / this)
MAX_CHUNK_WORDS = 1 << 20  # 8 MiB per chunk-sized array (see chunk_words)
CROSS_WORDS = 16  # words per slot combination a cross-party comparison holds at once
CHUNK_KEY = "__chunk_words"  # in a non-computing party's shapes message: its chunk size


@dataclass(frozen=True)
class QueryRequest:
    """What the analyst asks every node: the SQL and the requested cost."""

    query_id: str
    sql: str
    analyst: str
    epsilon: float | None = None
    delta: float | None = None
    mechanism: str = "auto"
    purpose: str = ""  # the analyst's stated purpose, recorded in each charged ledger entry
    identity: str = "self-asserted"  # "certificate" when a `veil serve` node checked it

    def to_bytes(self) -> bytes:
        """JSON encoding, for the network."""
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> QueryRequest:
        """Inverse of ``to_bytes``."""
        return cls(**json.loads(data))


def _quiet(party: str, step: str) -> None:
    """The default progress sink: nothing."""


def participants(plan: Plan) -> tuple[str, ...]:
    """Parties that take part in running ``plan`` (its data parties and compute parties, and
    the owners of dimension tables sent to them)."""
    owners = tuple(owner for owner, _, _ in plan.shipments)
    if plan.mode == "local":
        return tuple(dict.fromkeys((*plan.parties, *owners)))
    return tuple(dict.fromkeys((*plan.compute, *plan.parties, *owners)))


def structure_hash(plan: Plan) -> str:
    """A digest of what the join and the shared columns depend on: the plan minus noise."""
    bare = replace(plan, aggregates=tuple(replace(a, noise=None, l1=0, l2=0.0)
                                          for a in plan.aggregates), epsilon=0.0, delta=0.0,
                   sql="", having=None, order_by=(), limit=None)
    return hashlib.sha256(bare.to_s().encode()).hexdigest()


def plan_hash(plan: Plan) -> str:
    """A digest of the plan every participant compiles; they must all agree on it."""
    return hashlib.sha256(plan.to_s().encode()).hexdigest()


def memory_budget() -> int:
    """Bytes one party may use for the chunks of a query: ``$VEIL_MEMORY_MB`` MiB, default
    ``DEFAULT_MEMORY_MB`` (a node's own resource, so a setting of its process).

    It bounds what scales with the chunk size (local factors, shares being made, shuffle
    and aggregation temporaries); the shared tables themselves take about 16 bytes per word
    of every row they hold (two components), whatever the setting.
    """
    env = os.environ.get(MEMORY_ENV, "").strip()
    if env:
        try:
            mb = float(env)
        except ValueError:
            mb = -1.0
        if not mb > 0:
            raise UsageError(f"${MEMORY_ENV} must be a positive number of MiB, got {env!r}",
                             f"unset it or write e.g. {MEMORY_ENV}=2048")
    else:
        mb = float(DEFAULT_MEMORY_MB)
    return int(mb * (1 << 20))


def chunk_words() -> int:
    """Words (8 bytes) in one chunk: the memory budget over ``CHUNK_SHARE`` arrays, at most
    ``MAX_CHUNK_WORDS``.

    Larger chunks save nothing measurable (a chunk of 8 MiB already amortises the per-chunk
    work), and chunk-sized arrays well below glibc's largest mmap threshold (32 MiB) are
    reused by the allocator instead of being mapped and faulted in afresh each time: at
    10^7 people the join query spent 9.3 s of system time with 32 MiB chunks, 5.0 s with
    8 MiB ones.
    """
    return max(1024, min(MAX_CHUNK_WORDS, memory_budget() // (8 * CHUNK_SHARE)))


def ledger_dir_override(federation: Federation) -> Path | None:
    """``$VEIL_LEDGER_DIR``, when set, replaces the federation's ledger folder."""
    env = os.environ.get("VEIL_LEDGER_DIR")
    return Path(env) if env else None


class PartyNode:
    """One data party: its federation view, connector, ledger and bounding seed."""

    def __init__(self, federation: Federation, party: str, *,
                 log: Callable[[str], None] | None = None) -> None:
        p = federation.party(party)
        if p is None:
            raise UsageError(f"no party named {party!r} in {federation.path}",
                             "name one of: " + ", ".join(federation.party_names))
        self.federation = federation
        self.party = p
        self._connector: Connector | None = None
        self._ledger: Ledger | None = None
        self._log = log  # where failure details go; default: <state dir>/<party>.log
        self._join_cache: dict[str, tuple[SharedTable, PartyRows | None]] = {}
        self._cache_lock = threading.Lock()  # concurrent queries share the cache
        self._open_lock = threading.Lock()  # ... and the connector, ledger and seed
        self._seed: str | None = None
        # Per-query state lives per thread: a node serves concurrent queries, one thread each.
        self._query = threading.local()

    # -- resources ---------------------------------------------------------------------
    @property
    def connector(self) -> Connector:
        """The party's own engine, opened read-only on first use (once per node)."""
        with self._open_lock:
            if self._connector is None:
                self._connector = open_connector(self.party.connector, self.federation.root)
            return self._connector

    def state_dir(self) -> Path:
        """Where this party keeps its ledger and its secret bounding seed."""
        override = ledger_dir_override(self.federation)
        if override is not None:
            return override
        return ledger_path(self.federation, self.party.name).parent

    @property
    def ledger(self) -> Ledger:
        """The party's own ledger."""
        with self._open_lock:
            if self._ledger is None:
                d = self.state_dir()
                d.mkdir(parents=True, exist_ok=True)
                self._ledger = Ledger(d / f"{self.party.name}.jsonl", self.party.name)
            return self._ledger

    def seed(self) -> str:
        """The party's secret seed for choosing rows per unit (created once, kept private)."""
        with self._open_lock:
            if self._seed is None:
                self._seed = _secret_file(self.state_dir() / f"{self.party.name}.seed")
            return self._seed

    def close(self) -> None:
        """Close the connector."""
        if self._connector is not None:
            self._connector.close()
            self._connector = None

    # -- one query -----------------------------------------------------------------------
    def serve(self, transport: Transport, request: QueryRequest,
              progress: Progress | None = None) -> None:
        """Run this party's part of ``request``; returns when its part is done.

        The query's lifecycle, with every failure settled in one place:

        1. **agree** on the plan (and the join cache key) with every participant;
        2. **reserve** the cost in this party's ledger and exchange the outcome; a refusal
           anywhere aborts every reservation (``Refused``);
        3. **commit**: once every charged party admitted the query, some party may read its
           data, so from here on the charge stands whatever happens (CONTRACT: "a failure
           after a party has read data keeps that charge"); each charged party commits
           and tells the others, and no output share leaves a compute party before every
           charged party said it committed, so no release is ever uncharged anywhere;
        4. **run** the local or secure part and **release** to the analyst.

        A failure before step 3 aborts this party's reservation. A failure after it keeps
        the charge, and what reaches the analyst is a generic error naming this party and
        the query: the details (which may depend on data) go to this party's log only.

        ``progress(party, step)`` is told each step as it starts (names only, no data).
        While the node works on the query it sends heartbeats to every other participant and
        the analyst (``transport.base.Heartbeat``), so long local work or a large secure step
        never looks like silence to them.
        """
        self._query.progress = progress or _quiet
        self._query.rows = None
        self._query.step = None
        plan = compile_plan(request.sql, self.federation, epsilon=request.epsilon,
                            delta=request.delta, mechanism=request.mechanism)
        who = participants(plan)
        if self.party.name not in who:
            return
        qid = request.query_id
        reservation = None
        begun = False
        # Peers and the analyst hear from this node at least every third of the timeout
        # while it works, so only a dead or stopped node trips their timeouts.
        with Heartbeat(transport, (*who, ANALYST), self._beat_interval(transport)):
            try:
                self._step("agreeing on the plan")
                join_key = self._agree(transport, plan, who, qid)
                self._step("reserving budget")
                reservation = self._reserve(transport, plan, request)
                begun = True  # every charged party admitted the query: the charge now stands
                if reservation is not None:
                    self.ledger.commit(reservation)
                    self._announce_commit(transport, plan, qid)
                plan = self._dimensions(transport, plan, qid)
                if self.party.name not in (*plan.parties, *plan.compute):
                    pass  # only the owner of a dimension table: it has sent it
                elif plan.mode == "local":
                    self._run_local(transport, plan)
                else:
                    self._run_secure(transport, plan, qid, join_key)
            except Refused:
                raise
            except BaseException as exc:
                if isinstance(exc, PartyUnavailable):
                    exc = self._silent_peer(exc)
                if not begun:
                    if reservation is not None:
                        self.ledger.abort(reservation, "query failed before any party read data")
                    raise exc from None
                raise self._failed(exc, qid) from None
        self._step("done")

    def _beat_interval(self, transport: Transport) -> float:
        """Seconds between heartbeats: a third of the shortest timeout the peers wait with."""
        limit = min(self.federation.timeout, getattr(transport, "timeout", math.inf))
        return limit / HEARTBEAT_SHARE

    def _failed(self, exc: BaseException, qid: str) -> BaseException:
        """The error the analyst may see for a failure after the charge stands.

        A peer that stopped answering is named as such (which party is unavailable does not
        depend on a person's data); anything else becomes a generic error naming this party
        and the query, and its details go to this party's own log.
        """
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            return exc
        me = self.party.name
        detail = getattr(exc, "detail", None) or f"{type(exc).__name__}: {exc}"
        self.log(f"query {qid[:12]} failed after its charge was committed: {detail}")
        if isinstance(exc, PartyUnavailable) and exc.party != me:
            return exc
        return QueryFailed(me, qid)

    def log(self, line: str) -> None:
        """Append one line to this party's own log (its state folder, never the analyst)."""
        if self._log is not None:
            self._log(f"{self.party.name}: {line}")
            return
        path = self.state_dir() / f"{self.party.name}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{stamp} {line}\n")

    def _step(self, name: str) -> None:
        self._query.step = name
        getattr(self._query, "progress", _quiet)(self.party.name, name)

    def _silent_peer(self, exc: PartyUnavailable) -> PartyUnavailable:
        """Say which peer went silent and what this party was doing, in an analyst's words
        (never the protocol's internal round names)."""
        doing = getattr(self._query, "step", None) or "starting the query"
        if exc.party != self.party.name and "sent nothing" in exc.message:
            return PartyUnavailable(
                exc.party, f"party {exc.party!r} did not answer within "
                f"{self.federation.timeout:g} s while {self.party.name} was {doing}", exc.hint)
        plain = without_rounds(exc.message)
        if plain == exc.message:
            return exc
        return PartyUnavailable(exc.party, f"{plain} (while {self.party.name} was {doing})",
                                exc.hint)

    def _dimensions(self, transport: Transport, plan: Plan, qid: str) -> Plan:
        """Send the dimension tables this party holds to the parties that join them; return
        the plan with this party's local SQL reading the ones it receives
        (``engine/dimensions.py``)."""
        from veilql.engine.dimensions import read_dimension, with_dimensions

        me = self.party.name
        received = {}
        for owner, to, d in plan.shipments:
            if owner == me:
                self._step(f"sending its dimension table {d.table} to {to}")
                transport.send(to, f"{qid}/dimension/{d.alias}", read_dimension(
                    self.connector, d))
        for owner, to, d in plan.shipments:
            if to == me:
                received[d.alias] = transport.recv(owner, f"{qid}/dimension/{d.alias}")
        return with_dimensions(plan, me, received) if received else plan

    def _version_digest(self, table: str) -> str:
        """A keyed digest of ``table``'s version: equal versions give equal digests, and a
        peer learns nothing else (not the row count, size or time a raw version carries)."""
        key = hmac.new(self.seed().encode(), b"veilql/table-version", hashlib.sha256).digest()
        version = self.connector.table_version(table)
        return hmac.new(key, f"{table}\0{version}".encode(), hashlib.sha256).hexdigest()[:32]

    def _agree(self, transport: Transport, plan: Plan, who: tuple[str, ...], qid: str) -> str:
        """Check that every participant compiled the same plan; return the join cache key.

        The key covers the plan without its noise and every party's table versions (as
        keyed digests), so a repeated query (at any epsilon) over unchanged tables can
        reuse its join.
        """
        me = self.party.name
        versions = {}
        if me in plan.parties:
            for table in plan.step(me).tables:
                versions[f"{me}.{table}"] = self._version_digest(table)
        for step in plan.steps:  # dimension tables this party holds, sent or its own
            for d in step.dimensions:
                if d.owner == me:
                    versions[f"{me}.{d.table}"] = self._version_digest(d.table)
        mine = {"plan": plan_hash(plan), "versions": versions}
        for p in who:
            if p != me:
                transport.send(p, f"{qid}/plan", json.dumps(mine).encode())
        everything = dict(versions)
        for p in who:
            if p == me:
                continue
            theirs = json.loads(transport.recv(p, f"{qid}/plan"))
            if theirs["plan"] != mine["plan"]:
                raise ProtocolError(
                    f"{me} and {p} compiled different plans for this query",
                    "every party must use the same federation and policy files",
                )
            everything.update(theirs["versions"])
        structure = structure_hash(plan)
        return hashlib.sha256(json.dumps([structure, sorted(everything.items())]).encode()
                              ).hexdigest()

    def _reserve(self, transport: Transport, plan: Plan, request: QueryRequest):
        """Reserve at this party's ledger if the plan reads its tables, and exchange the
        outcome with every participant and the analyst; stop everywhere if any refused.

        Admission is a chain in ``plan.charged`` order: a party reserves only after every
        earlier one admitted the query (a later one is not asked once one refused). So
        the parties admit concurrent queries of one analyst in the same order, and a
        party that waits for its open reservations to settle (``Ledger.reserve(wait=)``)
        waits only on queries that every earlier party already admitted: no cycle, and a
        budget for k queries releases exactly k however many race for it.

        The reservation is aborted here on any failure of the exchange (a peer that died,
        a refusal elsewhere), so no reservation is ever left open by a live node.
        """
        me = self.party.name
        tag = f"{request.query_id}/budget"
        reservation = None
        refused = False
        try:
            for p in plan.charged:
                if p != me:
                    theirs = json.loads(transport.recv(p, f"{tag}/{p}"))
                    refused = refused or not theirs["ok"]
                    continue
                if refused:
                    status = {"party": me, "ok": False, "skipped": True,
                              "message": f"{me}: not asked (another party refused first)"}
                else:
                    status = self._try_reserve(plan, request)
                    reservation = status.pop("reservation")
                payload = json.dumps(status).encode()
                for other in participants(plan):
                    if other != me:
                        transport.send(other, f"{tag}/{me}", payload)
                transport.send(ANALYST, f"{tag}/{me}", payload)
                refused = refused or not status["ok"]
        except BaseException:
            if reservation is not None:
                self.ledger.abort(reservation, "the budget exchange failed")
            raise
        if refused:
            if reservation is not None:
                self.ledger.abort(reservation, "another party refused the query")
            raise Refused()
        return reservation

    def _try_reserve(self, plan: Plan, request: QueryRequest) -> dict:
        """Reserve the plan's cost for the analyst; the outcome as a status message."""
        me = self.party.name
        analyst = self.federation.analysts.get(request.analyst)
        if analyst is None:
            return {"party": me, "ok": False, "reservation": None,
                    "message": f"{me}: analyst {request.analyst!r} has no budget here"}
        tables = [t for step in plan.steps if step.party == me for t in step.tables]
        # Waiting for open reservations to settle is silence to the peers down the chain:
        # keep the chain's total wait inside their timeout.
        wait = self.federation.timeout / (len(plan.charged) + 1)
        try:
            reservation = self.ledger.reserve(
                analyst, plan.epsilon, plan.delta, query_id=request.query_id,
                sql=request.sql, tables=tables, wait=wait, purpose=request.purpose,
                identity=request.identity, record_refusal=True)
        except BudgetRefused as refusal:
            return {"party": me, "ok": False, "reservation": None, "message": refusal.detail()}
        eps, delta = self.ledger.remaining(analyst)
        return {"party": me, "ok": True, "reservation": reservation,
                "epsilon_remaining": float(eps), "delta_remaining": float(delta)}

    def _announce_commit(self, transport: Transport, plan: Plan, qid: str) -> None:
        """Tell every participant and the analyst that this party committed its charge,
        with its ledger's head (which the others keep as an anchor)."""
        me = self.party.name
        seq, digest = self.ledger.head()
        payload = json.dumps({"party": me, "seq": seq, "hash": digest}).encode()
        for p in participants(plan):
            if p != me:
                transport.send(p, f"{qid}/committed/{me}", payload)
        transport.send(ANALYST, f"{qid}/committed/{me}", payload)

    def _await_commits(self, transport: Transport, plan: Plan, qid: str) -> None:
        """Before any output share leaves: every other charged party has committed.

        Each commit carries that party's ledger head; this party keeps it as an anchor.
        """
        me = self.party.name
        for p in plan.charged:
            if p == me:
                continue
            theirs = json.loads(transport.recv(p, f"{qid}/committed/{p}"))
            if theirs.get("party") != p:
                raise ProtocolError(f"party {p!r} sent a malformed commit notice")
            self.ledger.record_anchor(p, int(theirs["seq"]), str(theirs["hash"]), qid)

    # -- local mode --------------------------------------------------------------------
    def _run_local(self, transport: Transport, plan: Plan) -> None:
        """One party: aggregate its own rows in the clear and add the full noise itself.

        The reduction runs in the party's engine: its bounded local SQL (rows per unit
        chosen with its secret seed, values clamped, exactly as in secure mode) wrapped in
        one GROUP BY over its group columns (``factors.aggregate_sql``), so nothing is
        pivoted or copied into numpy but the aggregates.
        """
        self._step("running its local SQL")
        values, rows = fetch(plan.steps[0], self.connector, self.seed(), reduce=plan)
        self._step("aggregating and adding noise")
        noisy = values + noise_vector(plan, 0, values.shape[1])
        if plan.threshold is not None:
            cells = np.flatnonzero(noisy[_selection_index(plan)] > plan.threshold)
            noisy = noisy[:, cells]
            transport.send(ANALYST, "cells", json.dumps(cell_info(plan, rows, cells)).encode())
        transport.send_array(ANALYST, "release", noisy)

    # -- secure mode -------------------------------------------------------------------
    def _run_secure(self, transport: Transport, plan: Plan, qid: str, join_key: str) -> None:
        """Share, join, aggregate and noise on shares; release this party's output shares.

        Memory (``memory_budget``): columns are shared and shuffled one at a time in chunks
        of the agreed ``Runtime.chunk_words``, each table is released as soon as the next
        step holds its successor, and the aggregation runs over chunks of joined rows. A
        cached join keeps only its exact aggregates once they are known.
        """
        me = self.party.name
        words = chunk_words()
        if me not in plan.compute:  # a data party that does not compute: send shares, done
            if not _all_cached(transport, plan, qid):
                _announce_and_send(transport, plan, me, self._local_columns(transport, plan, qid),
                                   qid, words)
            return
        rt = Runtime(transport, plan.compute, timeout=self.federation.timeout, chunk_words=words)
        rt.setup()
        rt.agree_chunk_words()  # chunking decides the messages: all three use the same
        structure = structure_hash(plan)
        with self._cache_lock:
            cached = self._join_cache.get(join_key)
        if _agree_cached(rt, plan, qid, _cache_level(cached, structure)):
            assert cached is not None
            joined, self._query.rows = cached
        else:
            self._step("running its local SQL")
            columns = self._local_columns(transport, plan, qid) if me in plan.parties else None
            self._step("secret-sharing its columns")

            def shared(party: str) -> SharedTable:
                # Each party's table is shared just before the stage that needs it, so the
                # later parties' shares do not wait in memory beside the earlier stages.
                return _receive_table(rt, plan, party, columns if party == me else None, qid)

            joined = shared(plan.parties[0])
            for j, stage in enumerate(plan.joins):
                right = shared(stage.right)
                left_tag = f"{stage.key_parties[0]}.tag{j}"
                right_tag = f"{stage.right}.tag{j}"
                renamed = dict(right.cols)  # its tag column under the left side's name
                renamed[left_tag] = renamed.pop(right_tag)
                right = SharedTable(right.n, renamed)
                del renamed
                self._step(f"joining with {stage.right} on shares")
                if stage.mode == "oblivious":
                    joined = oblivious_join_stage(rt, stage, joined, right, left_tag)
                else:  # both inputs are this function's own: released as they are shuffled
                    joined = join_stage(rt, stage, joined, right, left_tag, consume=True)
                del right
                joined.cols.pop(left_tag, None)
            del columns
            if me not in plan.parties:
                self._query.rows = None
            self._remember(join_key, joined)
        self._step("aggregating on shares")
        result = secure_aggregate(rt, plan, joined)
        self._keep_aggregates(join_key, joined, structure)
        del joined
        self._step("adding noise")
        total = _add_noise(rt, plan, result)
        if plan.threshold is not None:
            # Only cells whose noisy unit count passes the threshold are released; the
            # compute parties learn which (the released key set), nothing else.
            passed = rt.gt(total[_selection_index(plan)], plan.threshold)
            cells = np.flatnonzero(np.asarray(rt.open(passed)) & 1)
            total = total[:, cells]
        self._await_commits(transport, plan, qid)  # no output share before every charge
        if plan.threshold is not None:
            owner = next(g.party for g in plan.groups if g.private)
            if me == owner:
                assert self._query.rows is not None
                info = cell_info(plan, self._query.rows, cells)
                transport.send(ANALYST, "cells", json.dumps(info).encode())
        transport.send_array(ANALYST, "release", np.stack([total.a, total.b]))

    def _remember(self, key: str, joined: SharedTable) -> None:
        """Keep the joined shares for reuse (a few entries; shares are never mutated),
        with this party's private group keys, which index into them."""
        with self._cache_lock:
            self._join_cache[key] = (joined, self._query.rows)
            while len(self._join_cache) > JOIN_CACHE_ENTRIES:
                self._join_cache.pop(next(iter(self._join_cache)))

    def _keep_aggregates(self, key: str, joined: SharedTable, structure: str) -> None:
        """Once the exact aggregates of ``structure`` are known, the cache entry keeps them
        (and the private group keys) instead of the joined columns: a repeated query needs
        only them (its cache key covers the same structure), and the columns are the bulk
        of the memory. A query still using the old entry keeps its own reference."""
        if structure not in joined.memo:
            return
        with self._cache_lock:
            entry = self._join_cache.get(key)
            if entry is not None and entry[0] is joined:
                self._join_cache[key] = (SharedTable(joined.n, {}, joined.memo), entry[1])

    def _local_columns(self, transport: Transport, plan: Plan, qid: str) -> dict[str, np.ndarray]:
        """This party's columns to share: join tags, factors, predicate atoms and operands.

        The factors are built in chunks of units of at most ``chunk_words()`` words; the
        local rows are dropped once the columns exist, but for the private group labels,
        which stay until the release.
        """
        me = self.party.name
        step = plan.step(me)
        rows = fetch(step, self.connector, self.seed())
        self._query.rows = labels_only(rows)  # private group keys stay until the release
        if is_oblivious(plan):  # padded or in cuckoo bins (operators/oblivious_join.py)
            return oblivious_columns(plan, me, rows, transport, qid)
        out: dict[str, np.ndarray] = {}
        for j, stage in enumerate(plan.joins):
            if me not in stage.key_parties:
                continue
            other = stage.key_parties[1] if stage.key_parties[0] == me else stage.key_parties[0]
            key_tag = f"{qid}/tagkey{j}"
            if me == stage.key_parties[0]:
                key = new_key()
                transport.send(other, key_tag, key)
            else:
                key = transport.recv(other, key_tag)
            out[f"tag{j}"] = tags(key, rows.keys)
        chains, _ = fac.expand_terms(plan)
        slot_level = plan.cross is not None
        width = fac.factor_width(plan, me, rows, chains, slot_level=slot_level)
        out["F"] = fac.build_factors(plan, me, rows, chains, slot_level=slot_level,
                                     chunk_rows=max(1, chunk_words() // width), collapse=True)
        for col in step.columns:
            if col.role in ("atom", "operand"):
                out[col.name] = rows.cols.pop(col.name) * rows.present
        return out


def _secret_file(path: Path) -> str:
    """The hex secret in ``path``, created (0600, atomically) on first use.

    The secret is written to a private temporary file and linked into place, so a
    concurrent process either creates it or reads the complete one, never a partial file.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(16))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            tmp.unlink()
    return path.read_text().strip()


class Refused(Exception):
    """This node stopped because some party refused the budget (the analyst reports it)."""


def local_aggregate(plan: Plan, connector: Connector, seed: str) -> tuple[np.ndarray, PartyRows]:
    """Aggregates of a single-party plan computed by the party's own engine: shape
    (aggregates, cells), equal to ``aggregate_plain`` over the fetched rows; and the rows'
    private group labels (``PartyRows`` without arrays). See ``factors.reduce_in_engine``."""
    return fetch(plan.steps[0], connector, seed, reduce=plan)


def aggregate_plain(plan: Plan, rows: dict[str, PartyRows]) -> np.ndarray:
    """Aggregates in the clear for a single-party plan: shape (aggregates, cells)."""
    chains, owner = fac.expand_terms(plan)
    party = plan.parties[0]
    f = fac.build_factors(plan, party, rows[party], chains, slot_level=False)
    per_chain = fac.combine_plain([f])
    out = np.zeros((len(plan.aggregates), per_chain.shape[1]), dtype=np.int64)
    for i, agg in enumerate(owner):
        out[agg] += per_chain[i]
    return out


def _selection_index(plan: Plan) -> int:
    return next(i for i, a in enumerate(plan.aggregates) if a.name == SELECTION)


def ordered_groups(plan: Plan) -> list[GroupKey]:
    """Group keys in the order of the cell axes: by party, then GROUP BY order."""
    return [g for p in plan.parties for g in plan.groups if g.party == p]


def cell_info(plan: Plan, rows: PartyRows, cells: np.ndarray) -> dict:
    """At the owner of private group keys: the group values of the released cells only.

    One list of values (in the order of ``ordered_groups``) per released cell, in release
    order. Nothing else leaves: not the number of candidate keys, not a cell's index (a
    key's rank among all keys), so adding a person with a new key changes this message
    only if that key is released. Cells are in index order, and private keys are indexed
    in sorted order (``index_labels``), so the order is a function of the released labels.
    """
    ordered = ordered_groups(plan)
    sizes = [fac.group_size(g, rows if g.private else None) for g in ordered]
    out = []
    for cell in cells.tolist():
        values = []
        for g, i in zip(ordered, decompose(cell, sizes), strict=True):
            values.append(rows.labels[g.column][i] if g.private else g.domain[i])  # type: ignore[index]
        out.append(values)
    return {"cells": out}


def decompose(cell: int, sizes: list[int]) -> list[int]:
    """Mixed-radix digits of a cell index (last group varies fastest).

    >>> decompose(7, [2, 4])
    [1, 3]
    """
    digits = []
    for size in reversed(sizes):
        digits.append(cell % size)
        cell //= size
    return digits[::-1]


def noise_vector(plan: Plan, party_index: int, cells: int) -> np.ndarray:
    """This party's noise shares for every aggregate and cell (zeros where it adds none)."""
    return np.stack([sample_share(a.noise, party_index, cells) for a in plan.aggregates])


def _cache_level(cached: tuple[SharedTable, PartyRows | None] | None, structure: str) -> int:
    """What a cache entry holds: bit 0 the joined columns, bit 1 the exact aggregates of
    ``structure`` (0: no entry)."""
    if cached is None:
        return 0
    table = cached[0]
    return (1 if table.cols or table.n == 0 else 0) | (2 if structure in table.memo else 0)


def _reuse(levels: list[int]) -> bool:
    """Whether the compute parties' cache levels let them skip the join: all hold the exact
    aggregates, or all hold the joined columns."""
    return all(lv & 2 for lv in levels) or all(lv & 1 for lv in levels)


def _agree_cached(rt: Runtime, plan: Plan, qid: str, level: int) -> bool:
    """All compute parties can reuse the cached join (``_cache_level``)? Tell the
    non-computing parties too, who decide the same way (``_all_cached``)."""
    flag = str(level).encode()
    for p in rt.parties:
        if p != rt.parties[rt.me]:
            rt.transport.send(p, f"{qid}/cached", flag)
    for p in plan.parties:
        if p not in rt.parties:
            rt.transport.send(p, f"{qid}/cached", flag)
    flags = [rt.transport.recv(p, f"{qid}/cached", rt.timeout)
             for p in rt.parties if p != rt.parties[rt.me]]
    return _reuse([level, *(_level(f) for f in flags)])


def _level(flag: bytes) -> int:
    """A peer's cache level; anything malformed counts as nothing cached."""
    return int(flag) if flag in (b"0", b"1", b"2", b"3") else 0


def _all_cached(transport: Transport, plan: Plan, qid: str) -> bool:
    """At a non-computing data party: whether every compute party reuses a cached join."""
    return _reuse([_level(transport.recv(p, f"{qid}/cached")) for p in plan.compute])


def _spans(n: int, rows: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` ranges of at most ``rows`` rows covering ``range(n)`` (one when empty).

    >>> _spans(5, 2), _spans(0, 3)
    ([(0, 2), (2, 4), (4, 5)], [(0, 0)])
    """
    rows = max(1, rows)
    return [(lo, min(n, lo + rows)) for lo in range(0, n, rows)] or [(0, 0)]


def _row_words(shape: tuple[int, ...] | list[int]) -> int:
    return max(1, int(np.prod(shape[1:], dtype=np.int64)))


def _announce_and_send(transport: Transport, plan: Plan, me: str,
                       columns: dict[str, np.ndarray], qid: str,
                       words: int = DEFAULT_CHUNK_WORDS) -> None:
    """A non-computing data party: tell the compute parties its shapes (and its chunk size),
    then send shares, a column at a time in chunks of at most ``words`` words."""
    shapes: dict[str, object] = {k: list(v.shape) for k, v in columns.items()}
    shapes[CHUNK_KEY] = int(words)
    for p in plan.compute:
        transport.send(p, f"{qid}/shape/{me}", json.dumps(shapes).encode())
    for name in list(columns):
        values = columns.pop(name)
        spans = _spans(len(values), words // _row_words(values.shape))
        for c, (lo, hi) in enumerate(spans):
            tag = f"{qid}/input/{me}/{name}" + (f"/{c}" if len(spans) > 1 else "")
            share_from_outside(transport, plan.compute, values[lo:hi], tag)
        del values


def _receive_table(rt: Runtime, plan: Plan, party: str,
                   columns: dict[str, np.ndarray] | None, qid: str) -> SharedTable:
    """Shares of ``party``'s columns at this compute party.

    The owner's plain columns are shared one at a time and dropped from ``columns`` once
    shared (``Runtime.share`` chunks each); a non-computing party's shares arrive in the
    chunks it announced with its shapes.
    """
    if party in plan.compute:
        owner = rt.party_index(party)
        if rt.me == owner:
            assert columns is not None
            shapes = {k: list(v.shape) for k, v in columns.items()}
            msg = json.dumps(shapes).encode()
            for i in range(3):
                if i != owner:
                    rt.transport.send(rt.parties[i], f"{qid}/shape/{party}", msg)
        else:
            shapes = json.loads(rt.transport.recv(party, f"{qid}/shape/{party}", rt.timeout))
        cols = {}
        for name in sorted(shapes):
            values = columns.pop(name) if columns is not None and rt.me == owner else None
            cols[f"{party}.{name}"] = rt.share(owner, values, tuple(shapes[name]))
            del values
    else:
        shapes = json.loads(rt.transport.recv(party, f"{qid}/shape/{party}", rt.timeout))
        words = int(shapes.pop(CHUNK_KEY, 0)) or None
        cols = {f"{party}.{name}": _receive_input(rt, party, f"{qid}/input/{party}/{name}",
                                                  tuple(shape), words)
                for name, shape in shapes.items()}
    n = {v.shape[0] for v in cols.values()}
    if len(n) != 1:
        raise ProtocolError(f"columns of {party} have different lengths {sorted(n)}")
    return SharedTable(n.pop(), cols)


def _receive_input(rt: Runtime, party: str, tag: str, shape: tuple[int, ...],
                   words: int | None) -> AShare:
    """One column from a non-computing party, in the chunks of ``words`` words it sent."""
    if words is None or not shape:
        return rt.receive_input(party, tag, shape)
    spans = _spans(shape[0], words // _row_words(shape))
    if len(spans) == 1:
        return rt.receive_input(party, tag, shape)
    first = np.empty(shape, np.uint64)
    second = np.empty(shape, np.uint64)
    for c, (lo, hi) in enumerate(spans):
        part = rt.receive_input(party, f"{tag}/{c}", (hi - lo, *shape[1:]))
        first[lo:hi], second[lo:hi] = part.a, part.b
    return AShare(rt.me, first, second)


def secure_aggregate(rt: Runtime, plan: Plan, joined: SharedTable) -> AShare:
    """Shares of every aggregate and cell: shape (aggregates, cells in party order).

    Kept with a cached join (``SharedTable.memo``): a repeated query adds fresh noise to
    the same exact aggregates, when every compute party still holds them. The joined rows
    are taken in chunks of ``rt.chunk_words`` words of the joint grid (cross-party
    predicates included); sums over rows add up over the chunks.
    """
    key = structure_hash(plan)
    if agree_all(rt, key in joined.memo):
        return joined.memo[key]
    chains, owner = fac.expand_terms(plan)
    distinct = np.array([c.kind == "count_distinct" for c in chains])
    n = joined.n
    slots = [plan.step(p).slots for p in plan.parties]
    factors = [joined.cols[f"{p}.F"] for p in plan.parties]
    width = grid_width([f.shape for f in factors], len(chains))
    if plan.cross is not None:
        width += CROSS_WORDS * int(np.prod(slots, dtype=np.int64))
    per_chain: AShare | None = None
    for lo, hi in _spans(n, rt.chunk_rows(width)):
        cross = None
        if plan.cross is not None:

            def column(party: str, name: str, lo: int = lo, hi: int = hi) -> AShare:
                i = plan.parties.index(party)
                axes = [1] * len(slots)
                axes[i] = slots[i]
                return expand(joined.cols[f"{party}.{name}"][lo:hi], (hi - lo, *axes),
                              (hi - lo, *slots))

            cross = evaluate(rt, plan.cross, column)
        part = secure_sum(rt, [f[lo:hi] for f in factors], cross, distinct)
        per_chain = part if per_chain is None else per_chain + part
    assert per_chain is not None
    cells = per_chain.shape[1]
    a = np.zeros((len(plan.aggregates), cells), dtype=np.uint64)
    b = np.zeros_like(a)
    for i, agg in enumerate(owner):
        a[agg] += per_chain.a[i]
        b[agg] += per_chain.b[i]
    joined.memo[key] = AShare(rt.me, a, b)
    return joined.memo[key]


def _add_noise(rt: Runtime, plan: Plan, x: AShare) -> AShare:
    """Every aggregate's noise on shares: sampled in the MPC where the plan says central,
    else each adding compute party's own share (``operators/noise.py``)."""
    from veilql.engine.operators.noise import add_noise

    return add_noise(rt, plan, x)
