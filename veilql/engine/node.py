"""A party's node: the query's lifecycle at one party (agree, reserve, commit, run, release).

The same code runs in a thread of the client process (``address = "local"``) and behind
``veil serve``: everything a node knows comes from its own federation files, its own
connector, its own ledger and the messages on its own transport.

The life of a query at a node (DESIGN.md, "The life of a query"), each step a call into
the module that owns it:

1. compile the SQL into a plan; agree with the other participants on the plan's hash and
   the join cache key (``_agree``);
2. if the plan reads this party's tables: reserve the cost in its own ledger and tell
   the others and the analyst; if any party refuses, abort and stop
   (``engine/admission.py``);
3. once every charged party admitted the query: commit, and tell everyone;
4. run: local mode (``operators/local_mode.py``) or secure mode
   (``operators/secure_mode.py``: inputs, join, aggregate, noise, partition selection);
5. release: in secure mode only after every charged party said it committed.

Every failure is settled in ``PartyNode.serve``: before step 3 the reservation is aborted;
after it the charge stands and the analyst sees a generic error (details in the log).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from veilql.connectors.base import Connector, open_connector
from veilql.engine import admission
from veilql.engine.admission import Refused
from veilql.engine.dimensions import exchange
from veilql.engine.ledger.ledger import Ledger
from veilql.engine.ledger.multi import ledger_path
from veilql.engine.mpc.runtime import Runtime
from veilql.engine.operators import ANALYST, outer, union_mode
from veilql.engine.operators.cache import JoinCache, all_cached, structure_hash
from veilql.engine.operators.inputs import announce_and_send, local_columns
from veilql.engine.operators.join import join_stage
from veilql.engine.operators.local import PartyRows, fetch, labels_only, secret_file
from veilql.engine.operators.local_mode import release_local
from veilql.engine.operators.memory import chunk_words, forget_frames, release_memory
from veilql.engine.operators.oblivious_join import oblivious_join_stage
from veilql.engine.operators.secure_mode import compute_secure, release_secure
from veilql.engine.plan.nodes import Plan
from veilql.engine.plan_cache import PlanCache
from veilql.engine.request import (
    Progress,
    QueryRequest,
    ledger_dir_override,
    participants,
    plan_hash,
)
from veilql.engine.transport.base import HEARTBEAT_SHARE, Heartbeat, Transport
from veilql.engine.transport.mailbox import without_rounds
from veilql.errors import PartyUnavailable, ProtocolError, QueryFailed, UsageError
from veilql.policies.model import Federation

__all__ = ["ANALYST", "PartyNode", "Progress", "QueryRequest", "Refused", "chunk_words",
           "join_stage", "ledger_dir_override", "oblivious_join_stage", "participants",
           "plan_hash", "structure_hash"]


def _quiet(party: str, step: str) -> None:
    """The default progress sink: nothing."""


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
        self._cache = JoinCache()  # joined shares for repeated queries (compute parties)
        self._plans = PlanCache(federation)  # its own recent plans (engine/plan_cache.py)
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
                self._seed = secret_file(self.state_dir() / f"{self.party.name}.seed")
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
        Either way the failed query's memory is handed back before the error leaves: its
        frames are cleared, its join cache entry and private labels dropped, and the
        allocator trimmed (``memory.release_memory``).

        ``progress(party, step)`` is told each step as it starts (names only, no data).
        While the node works on the query it sends heartbeats to every other participant and
        the analyst (``transport.base.Heartbeat``), so long local work or a large secure step
        never looks like silence to them.
        """
        self._query.progress = progress or _quiet
        self._query.step = None
        # The analyst waits on this node from the moment it sent the query, and compiling can
        # take seconds (longer when the embedded mode's parties all compile at once): it hears
        # from the node meanwhile. Peers start waiting on it only once they have compiled.
        with Heartbeat(transport, (ANALYST,), self._beat_interval(transport)):
            plan = self._plans.compile(request.sql, epsilon=request.epsilon,
                                       delta=request.delta, mechanism=request.mechanism,
                                       analyst=request.analyst)
        who = participants(plan)
        if self.party.name not in who:
            return
        qid = request.query_id
        reservation = None
        begun = False
        join_key = ""
        failure: BaseException | None = None
        # Peers and the analyst hear from this node at least every third of the timeout
        # while it works, so only a dead or stopped node trips their timeouts.
        with Heartbeat(transport, (*who, ANALYST), self._beat_interval(transport)):
            try:
                self._step("agreeing on the plan")
                join_key = self._agree(transport, plan, who, qid)
                self._step("reserving budget")
                reservation = admission.reserve(self, transport, plan, request)
                begun = True  # every charged party admitted the query: the charge now stands
                if reservation is not None:
                    if not reservation.committed:
                        self.ledger.commit(reservation)
                    admission.announce_commit(self, transport, plan, qid)
                plan = exchange(transport, plan, self.party.name, lambda: self.connector, qid,
                                self._step)  # dimension tables (engine/dimensions.py)
                if self.party.name not in (*plan.parties, *plan.compute):
                    pass  # only the owner of a dimension table: it has sent it
                elif plan.mode == "local":
                    self._run_local(transport, plan)
                elif plan.mode == "union":
                    self._run_union(transport, plan, qid)
                else:
                    self._run_secure(transport, plan, qid, join_key)
            except Refused:
                raise
            except BaseException as exc:
                settled = self._silent_peer(exc) if isinstance(exc, PartyUnavailable) else exc
                if not begun:
                    if reservation is not None:
                        self.ledger.abort(reservation, "query failed before any party read data")
                    failure = settled
                else:
                    failure = self._failed(settled, qid)
                forget_frames(exc)  # the failed steps' arrays are not kept by the error
                del exc, settled
            if failure is not None:
                # Raised outside the handler, so the analyst's error does not carry the
                # original one (and its frames) as context; memory goes back at once.
                if begun and join_key:  # its join may be cached half-used: not kept
                    self._cache.drop(join_key)
                release_memory()
                raise failure from None
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

    # -- run -------------------------------------------------------------------------
    def _run_local(self, transport: Transport, plan: Plan) -> None:
        """One party: aggregate its own rows and add the full noise itself
        (``operators/local_mode.py``); the reduction runs in the party's engine."""
        self._step("running its local SQL")
        values, rows = fetch(plan.steps[0], self.connector, self.seed(), reduce=plan)
        self._step("aggregating and adding noise")
        release_local(transport, plan, values, rows)

    def _run_secure(self, transport: Transport, plan: Plan, qid: str, join_key: str) -> None:
        """Secure mode (``operators/secure_mode.py``): a data party that does not compute
        sends its shares; a compute party computes its shares of the noisy answer, waits for
        every charged party's commit, then releases them to the analyst."""
        me = self.party.name
        words = chunk_words()
        if me not in plan.compute:  # a data party that does not compute: send shares, done
            if not all_cached(transport, plan, qid):
                cols, _, own = self._local_columns(transport, plan, qid)
                announce_and_send(transport, plan, me, cols, qid, words)
                if plan.own_total:  # an outer join: its own total too (operators/outer.py)
                    outer.send_own_total(transport, plan, me, own, qid)
            return
        rt = Runtime(transport, plan.compute, timeout=self.federation.timeout, chunk_words=words)
        rt.setup()
        rt.agree_chunk_words()  # chunking decides the messages: all three use the same

        kept: dict[str, np.ndarray | None] = {}  # an outer join's own total, once known

        def columns() -> tuple[dict[str, np.ndarray], PartyRows | None]:
            # Runs in a thread of its own beside the secure steps (compute_secure): what
            # it makes is returned, not left in this handler thread's state.
            cols, rows, kept["own"] = self._local_columns(transport, plan, qid)
            return cols, rows

        out = compute_secure(rt, plan, qid, join_key, self._cache, columns, self._step,
                             own=lambda: kept.get("own"))
        admission.await_commits(self, transport, plan, qid)  # no output share before every charge
        release_secure(transport, plan, me, out)

    def _run_union(self, transport: Transport, plan: Plan, qid: str) -> None:
        """A UNION ALL (``operators/union_mode.py``): sum this party's branches in its engine
        and share the vector; a compute party adds the shares and noise, waits for every
        charged party's commit, then releases its output shares."""
        me = self.party.name
        vector = None
        if me in plan.charged:
            self._step("running its local SQL")
            vector = union_mode.party_vector(plan, me, self.connector, self.seed())
        if me not in plan.compute:
            union_mode.send_vector(transport, plan, me, vector, qid)
            return
        rt = Runtime(transport, plan.compute, timeout=self.federation.timeout,
                     chunk_words=chunk_words())
        rt.setup()
        rt.agree_chunk_words()
        self._step("adding shares and noise")
        out = union_mode.compute_union(rt, plan, qid, vector)
        admission.await_commits(self, transport, plan, qid)  # no output share before every charge
        release_secure(transport, plan, me, out)

    def _local_columns(self, transport: Transport, plan: Plan, qid: str
                       ) -> tuple[dict[str, np.ndarray], PartyRows, np.ndarray | None]:
        """Run this party's local SQL and build its columns to share
        (``operators/inputs.py``), the private group labels of its rows (all that stays
        of them, until the release), and an outer join's own total (else None)."""
        me = self.party.name
        rows = fetch(plan.step(me), self.connector, self.seed())
        columns = local_columns(plan, me, rows, transport, qid, chunk_words())
        own = None
        if plan.own_total:  # a LEFT/RIGHT JOIN across parties (operators/outer.py)
            outer.shift_factors(plan, me, columns)
            own = outer.own_total(plan, me, rows, chunk_words())
        return columns, labels_only(rows), own
