"""A long-running party node (``veil serve``): answers queries from clients over mutual TLS.

Each client connection carries one query. The node takes the analyst whose budget pays from
the client's *certificate* (``identity.peer_identity``), not from the request, compiles the
SQL itself from its own federation and policy files, and runs ``PartyNode.serve`` for it in
a thread of its own on a ``MuxSession``; the nodes agree on the plan hash before any data
moves (``PartyNode._agree``). A failing query is logged, its reservation aborted (``serve``
does that on any exception), its peers and client told why, and the node keeps serving.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from veilql.engine.node import PartyNode, QueryRequest, Refused
from veilql.engine.transport.certs import PartyCredentials
from veilql.engine.transport.mux import (
    ANALYST,
    PROGRESS_TAG,
    ClientQuery,
    MuxEndpoint,
    MuxSession,
)
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
            bind=bind, log=lambda line: log(f"{party}: {line}"))

    def start(self) -> tuple[str, int]:
        """Check the ledger left by the last run, then listen; returns the bound address."""
        ledger = self.node.ledger
        if ledger.repair():
            self.log(f"{self.party}: dropped a torn last line of {ledger.path} (see its "
                     "repair entry)")
        left = ledger.open_reservations()
        if left:
            # A crash between reserve and commit leaves the charge standing (over-charging
            # at worst, docs/ledger.md); it is not given back because an answer may have
            # left before the crash.
            self.log(f"{self.party}: {len(left)} reservation(s) left open by an earlier run "
                     "stay charged: " + ", ".join(r.query_id[:12] for r in left))
        return self.endpoint.start()

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
