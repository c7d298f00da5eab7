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


class NodeServer:
    """One party's node: a ``MuxEndpoint`` plus a pool of ``PartyNode`` workers."""

    def __init__(self, federation: Federation, party: str, *, bind: str | None = None,
                 log: Callable[[str], None] = stderr_log) -> None:
        if federation.party(party) is None:
            raise UsageError(f"no party named {party!r} in {federation.path}",
                             "name one of: " + ", ".join(federation.party_names))
        self.federation = federation
        self.party = party
        self.log = log
        self._idle: list[PartyNode] = [self._new_node()]
        self._all: list[PartyNode] = list(self._idle)
        self._lock = threading.Lock()
        self.endpoint = MuxEndpoint(
            party, remote_addresses(federation), party_credentials(federation, party),
            analysts=federation.analysts, on_query=self._handle, timeout=federation.timeout,
            bind=bind, log=lambda line: log(f"{party}: {line}"))

    def start(self) -> tuple[str, int]:
        """Check the ledger left by the last run, then listen; returns the bound address."""
        ledger = self._idle[0].ledger
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
        for node in self._all:
            node.close()

    # Concurrent queries each get their own PartyNode (its join cache and progress state
    # are per query); the ledger file is shared safely through its flock.
    def _acquire(self) -> PartyNode:
        with self._lock:
            if self._idle:
                return self._idle.pop()
            node = self._new_node()
            self._all.append(node)
            return node

    def _new_node(self) -> PartyNode:
        return PartyNode(self.federation, self.party, log=self.log)

    def _release(self, node: PartyNode) -> None:
        with self._lock:
            self._idle.append(node)

    def _handle(self, session: MuxSession, query: ClientQuery) -> None:
        """Run one client's query; log one line; never let an error escape the thread."""
        start = time.monotonic()
        qid = query.session_id[:12]
        try:
            fields = dict(query.request)
            claimed = fields.get("analyst")
            # The certificate wins over whatever analyst the client wrote in its request.
            fields["analyst"] = query.analyst
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
        node = self._acquire()
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
            self._release(node)
        sql = " ".join(request.sql.split())[:80]
        self.log(f"{self.party}: query {qid} analyst={query.analyst} from={query.address} "
                 f"{outcome} in {time.monotonic() - start:.2f}s: {sql}")
