"""A long-running party node (``veil serve``): answers queries from clients over mutual TLS.

Each client connection carries one query. The node takes the analyst whose budget pays from
the client's *certificate* (``identity.peer_identity``), not from the request, compiles the
SQL itself from its own federation and policy files, and runs ``PartyNode.serve`` for it in
a thread of its own on a ``MuxSession``; the nodes agree on the plan hash before any data
moves (``PartyNode._agree``). A failing query is logged, its reservation aborted (``serve``
does that on any exception), its peers and client told why, and the node keeps serving.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from veilql.engine.ledger.ledger import Reservation
from veilql.engine.node import PartyNode, QueryRequest, Refused
from veilql.engine.transport.certs import PartyCredentials
from veilql.engine.transport.mux import MuxEndpoint
from veilql.engine.transport.mux_session import MuxSession
from veilql.engine.transport.muxwire import ANALYST, PROGRESS_TAG, ClientQuery
from veilql.errors import ConfigError, ProtocolError, UsageError, VeilError
from veilql.policies.model import Federation


def certs_dir(federation: Federation) -> Path:
    """The folder holding the federation's CA and certificates (``[federation] certs``)."""
    return federation.certs if federation.certs is not None else federation.root / "certs"


def party_credentials(federation: Federation, party: str) -> PartyCredentials:
    """The CA, certificate and key of node ``party`` from the federation's certs folder."""
    d = certs_dir(federation)
    creds = PartyCredentials(d / "ca.pem", d / f"{party}.pem", d / f"{party}.key")
    for path in (creds.ca_path, creds.cert_path, creds.key_path):
        if not path.is_file():
            raise ConfigError(f"missing TLS file {path}",
                              "run `veil certs init -f FEDERATION` once and copy each party "
                              "its certificate and key (see docs/deploy.md)", file=str(path))
    return creds


def remote_addresses(federation: Federation) -> dict[str, str]:
    """Every party's ``host:port``; a ConfigError when any party is ``local``."""
    local = [p.name for p in federation.parties if p.is_local]
    if local:
        raise ConfigError(
            f"parties {', '.join(local)} have address \"local\"; a node needs every party's "
            "host:port", "give every [[party]] an address = \"host:port\"",
            file=str(federation.path))
    return {p.name: p.address for p in federation.parties}


def stderr_log(line: str) -> None:
    """Timestamped log line on stderr (flushed: logs are read while the node runs)."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"{stamp} {line}", file=sys.stderr, flush=True)


SETTLE_ROUNDS = 10  # tries to settle a reservation left open by a crash, as peers come up
MAX_SESSIONS = 32  # concurrent queries a node runs before it answers "busy, retry"
MAX_SESSIONS_PER_ANALYST = 16  # of which one analyst may hold at most this many


class NodeBusy(ProtocolError):
    """The node runs as many queries as its limits allow (exit 3): retry shortly."""


class NodeServer:
    """One party's node: a ``MuxEndpoint`` plus one ``PartyNode`` shared by its queries.

    Every query runs in a thread of its own, on the same ``PartyNode``: one connector (its
    engine's own thread pool, opened once), one ledger, one join cache; per-query state is
    thread-local in the node. Concurrent queries are capped (``max_sessions`` in all,
    ``max_per_analyst`` per analyst); a query over a cap is refused before it reads or
    reserves anything, with a "busy, retry" error.
    """

    def __init__(self, federation: Federation, party: str, *, bind: str | None = None,
                 log: Callable[[str], None] = stderr_log, max_sessions: int = MAX_SESSIONS,
                 max_per_analyst: int = MAX_SESSIONS_PER_ANALYST) -> None:
        if federation.party(party) is None:
            raise UsageError(f"no party named {party!r} in {federation.path}",
                             "name one of: " + ", ".join(federation.party_names))
        if max_sessions < 1 or max_per_analyst < 1:
            raise UsageError("session limits must be at least 1",
                             "pass --max-sessions and --max-per-analyst of 1 or more")
        self.federation = federation
        self.party = party
        self.log = log
        self.max_sessions = max_sessions
        self.max_per_analyst = max_per_analyst
        self.node = PartyNode(federation, party, log=log)
        self._running: dict[str, int] = {}  # analyst -> queries running now
        self._lock = threading.Lock()
        self.endpoint = MuxEndpoint(
            party, remote_addresses(federation), party_credentials(federation, party),
            analysts=federation.analysts, on_query=self._handle, timeout=federation.timeout,
            bind=bind, log=lambda line: log(f"{party}: {line}"), on_control=self._on_control)

    def start(self) -> tuple[str, int]:
        """Check the ledger left by the last run, listen, then settle what it left open.

        Returns the bound address. Reservations an earlier run left open (it crashed
        between reserving and committing) are settled in the background by asking the
        peers (``settle_left_open``).
        """
        ledger = self.node.ledger
        if ledger.repair():
            self.log(f"{self.party}: dropped a torn last line of {ledger.path} (see its "
                     "repair entry)")
        left = ledger.open_reservations()
        address = self.endpoint.start()
        if left:
            self.log(f"{self.party}: {len(left)} reservation(s) left open by an earlier run: "
                     + ", ".join(r.query_id[:12] for r in left) + "; asking the peers")
            threading.Thread(target=self.settle_left_open, args=(left,), daemon=True,
                             name=f"veil-settle-{self.party}").start()
        return address

    def settle_left_open(self, left: list[Reservation], rounds: int = SETTLE_ROUNDS) -> None:
        """Commit or abort each reservation an earlier run left open, from the peers' word.

        A peer that committed the query means every charged party had admitted it (so
        some party may have read data): the charge stands, commit. Every other party
        answering that it aborted the query or never heard of it means no party committed,
        so nothing was read or released (no output share leaves before every commit):
        abort. A peer that is unreachable, or itself still open, leaves it open for now;
        after ``rounds`` tries it stays open (charged) and is logged, and `veil ledger
        verify` reports it.
        """
        ledger = self.node.ledger
        peers = [p for p in self.federation.party_names if p != self.party]
        pending = list(left)
        for attempt in range(rounds):
            still = []
            for r in pending:
                verdict = self._verdict(r.query_id, peers)
                if verdict == "commit":
                    ledger.commit(r)
                    self.log(f"{self.party}: settled {r.query_id[:12]}: committed (a peer had "
                             "committed it)")
                elif verdict == "abort":
                    ledger.abort(r, "settled after a restart: no party had committed it")
                    self.log(f"{self.party}: settled {r.query_id[:12]}: aborted (no party had "
                             "committed it)")
                else:
                    still.append(r)
            pending = still
            if not pending or self.endpoint.closing:
                return
            time.sleep(min(self.federation.timeout, 2.0 * (attempt + 1)))
        self.log(f"{self.party}: {len(pending)} reservation(s) stay open (charged): "
                 + ", ".join(r.query_id[:12] for r in pending) + "; a peer did not answer")

    def _verdict(self, query_id: str, peers: list[str]) -> str | None:
        """"commit", "abort", or None (undecided) from the peers' answers about a query."""
        answers = []
        for peer in peers:
            try:
                reply = self.endpoint.ask(peer, "settle", query_id.encode())
                answers.append(json.loads(reply).get("status"))
            except (VeilError, OSError, ValueError):
                answers.append(None)
        if "committed" in answers:
            return "commit"
        if all(a in ("aborted", "unknown") for a in answers):
            return "abort"
        return None

    def _answer_budget(self, session: MuxSession, query: ClientQuery) -> None:
        """Tell the analyst named by the client certificate its budget at this node only."""
        analyst = self.federation.analysts.get(query.analyst)
        try:
            if analyst is None:
                raise ProtocolError(f"analyst {query.analyst!r} has no budget at {self.party}")
            ledger = self.node.ledger
            spent = ledger.spent(analyst.name)
            left = ledger.remaining(analyst)
            answer = {"party": self.party, "analyst": analyst.name,
                      "epsilon_spent": float(spent[0]), "delta_spent": float(spent[1]),
                      "epsilon_remaining": float(left[0]), "delta_remaining": float(left[1])}
            session.send(ANALYST, "budget", json.dumps(answer).encode())
            session.close()
        except Exception as exc:  # noqa: BLE001 - one client's failure must not stop the node
            self.log(f"{self.party}: budget request of {query.analyst} failed: {exc}")
            session.abort(exc if isinstance(exc, VeilError) else ProtocolError(
                f"node {self.party!r} could not read its ledger"))

    def _on_control(self, peer: str, kind: str, question: bytes) -> bytes:
        """Answer a peer node: what became of a query here (``settle``)."""
        if kind != "settle":
            raise ProtocolError(f"unknown control question {kind!r}")
        query_id = question.decode()
        mine = [c for c in self.node.ledger.history() if c.query_id == query_id]
        if not mine:
            status = "unknown"
        elif any(c.status == "committed" for c in mine):
            status = "committed"
        elif any(c.status == "reserved" for c in mine):
            status = "open"
        else:
            status = "aborted"
        return json.dumps({"party": self.party, "status": status}).encode()

    def close(self, wait: float = 5.0) -> None:
        """Stop accepting, fail running sessions, let them abort their reservations (up to
        ``wait`` seconds), close connectors."""
        self.endpoint.close()
        end = time.monotonic() + wait
        while self.endpoint.active and time.monotonic() < end:
            time.sleep(0.05)
        self.node.close()

    @property
    def running(self) -> int:
        """Queries this node runs now."""
        with self._lock:
            return sum(self._running.values())

    def _admit(self, analyst: str) -> str | None:
        """Count a new query in; the reason it is refused instead, if over a limit."""
        with self._lock:
            total = sum(self._running.values())
            mine = self._running.get(analyst, 0)
            if total >= self.max_sessions:
                return f"{total} queries running, the node's limit (--max-sessions)"
            if mine >= self.max_per_analyst:
                return (f"{mine} queries of analyst {analyst!r} running, the limit per "
                        "analyst (--max-per-analyst)")
            self._running[analyst] = mine + 1
            return None

    def _leave(self, analyst: str) -> None:
        with self._lock:
            left = self._running.get(analyst, 0) - 1
            if left > 0:
                self._running[analyst] = left
            else:
                self._running.pop(analyst, None)

    def _handle(self, session: MuxSession, query: ClientQuery) -> None:
        """Run one client's query; log one line; never let an error escape the thread."""
        start = time.monotonic()
        qid = query.session_id[:12]
        if query.request.get("kind") == "budget":
            self._answer_budget(session, query)
            return
        try:
            fields = dict(query.request)
            claimed = fields.get("analyst")
            # The certificate wins over whatever analyst the client wrote in its request.
            fields["analyst"] = query.analyst
            fields["identity"] = "certificate"  # recorded in the ledger as how it was known
            request = QueryRequest(**fields)
            if not isinstance(request.sql, str) or request.query_id != query.session_id:
                raise ProtocolError("malformed query request")
        except (TypeError, ValueError, ProtocolError) as exc:
            self.log(f"{self.party}: query {qid} from {query.address} refused: malformed "
                     f"request ({exc})")
            session.abort(ProtocolError(f"node {self.party!r} got a malformed query request"))
            return
        if claimed != query.analyst:
            self.log(f"{self.party}: query {qid}: client asked for analyst {claimed!r}; "
                     f"charging {query.analyst!r}, named by its certificate")
        busy = self._admit(query.analyst)
        if busy is not None:
            self.log(f"{self.party}: query {qid} analyst={query.analyst} refused: busy ({busy})")
            session.abort(NodeBusy(f"node {self.party!r} is busy: {busy}",
                                   "nothing was read or charged; retry in a moment"))
            return
        node = self.node
        outcome = "ok"

        def progress(party: str, step: str) -> None:
            # Step names only, as in the embedded mode; a lost client shows at the next recv.
            try:
                session.send(ANALYST, PROGRESS_TAG, step.encode())
            except ProtocolError:
                pass

        try:
            node.serve(session, request, progress)
            session.close()
        except Refused:
            outcome = "refused (budget)"
            session.close()
        except Exception as exc:  # noqa: BLE001 - one query's failure must not stop the node
            if isinstance(exc, VeilError):
                outcome = f"failed: {exc.message}"
            else:
                # The text stays in this node's log: it may carry the party's data.
                outcome = f"failed: internal error {type(exc).__name__}: {exc}"
                exc = ProtocolError(f"internal error at {self.party} (query {qid})",
                                    f"the details are in {self.party}'s node log")
            session.abort(exc)
        finally:
            self._leave(query.analyst)
        sql = " ".join(request.sql.split())[:80]
        self.log(f"{self.party}: query {qid} analyst={query.analyst} from={query.address} "
                 f"{outcome} in {time.monotonic() - start:.2f}s: {sql}")
