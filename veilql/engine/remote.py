"""The client's side of a query on party nodes run with ``veil serve``.

``RemoteAnalyst`` is the analyst endpoint of one query session: it connects to every
participant node over mutual TLS with the analyst's certificate, sends each the query, and
then only receives, exactly what the in-process analyst receives (budget statuses, output
shares, released cells), so ``Session`` reconstructs the answer with the same code in both
modes. The analyst who pays is the one the certificate names: ``--analyst NAME`` picks
``<certs>/NAME.pem`` and ``NAME.key``; ``$VEIL_CERT``/``$VEIL_KEY`` (and optionally
``$VEIL_CA``) name the files directly and then win.

With ``VEIL_TRANSCRIPT_DIR``, every frame a node sends this endpoint (its HELLO or REJECT,
progress steps, heartbeats, budget statuses, released shares, its BYE) is appended to
``analyst.bin`` as it arrives, like every party endpoint records what is delivered to it.

Keep-alive: a node sends the client a heartbeat (``transport.base.HEARTBEAT_TAG``) every
third of the timeout while it works, and the client's waits bound each node's *silence*
(every frame from it restarts the clock, ``transport.mailbox``), so a long healthy query
never times out at the client, while a node that stops (crashed, frozen) is still given up
on ``GRACE`` seconds after the timeout.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from veilql.engine.node import ANALYST, Progress, QueryRequest
from veilql.engine.server import certs_dir
from veilql.engine.transport.base import TranscriptWriter, Transport, decode_array
from veilql.engine.transport.certs import PartyCredentials, client_context
from veilql.engine.transport.frames import (
    KIND_BYE,
    KIND_DATA,
    KIND_NAMES,
    encode_frame,
    parse_address,
    session_digest,
)
from veilql.engine.transport.identity import ANALYST_KIND, certificate_identity, certificate_name
from veilql.engine.transport.mailbox import Mailbox
from veilql.engine.transport.muxwire import (
    NO_SESSION,
    PROGRESS_TAG,
    QUERY_TAG,
    goodbye_error,
    handshake_client,
    read_frame,
    routing_id,
)
from veilql.engine.transport.tlsconn import (
    Closing,
    Conn,
    describe,
)
from veilql.errors import ConfigError, PartyUnavailable, ProtocolError, UsageError
from veilql.policies.model import Federation

# Extra seconds the analyst waits beyond the timeout: a node that gives up on a silent peer
# after the timeout then tells us which party it was, rather than us blaming that node.
GRACE = 1.0
# Seconds ``close`` waits for the nodes' goodbyes when transcripts are recorded.
TRANSCRIPT_LINGER = 5.0


def analyst_credentials(federation: Federation,
                        analyst: str | None) -> tuple[str, PartyCredentials]:
    """``(analyst name from the certificate, credentials)`` for talking to party nodes."""
    cert, key = os.environ.get("VEIL_CERT"), os.environ.get("VEIL_KEY")
    d = certs_dir(federation)
    ca = Path(os.environ.get("VEIL_CA") or d / "ca.pem")
    if cert or key:
        if not (cert and key):
            raise UsageError("$VEIL_CERT and $VEIL_KEY must be set together",
                             "point both at the analyst's certificate and key")
        creds = PartyCredentials(ca, Path(cert), Path(key))
    elif analyst:
        creds = PartyCredentials(ca, d / f"{analyst}.pem", d / f"{analyst}.key")
    else:
        raise UsageError("no analyst certificate", "pass --analyst NAME (uses "
                         f"{d}/NAME.pem) or set $VEIL_CERT and $VEIL_KEY")
    for path in (creds.ca_path, creds.cert_path, creds.key_path):
        if not path.is_file():
            raise ConfigError(f"missing TLS file {path}",
                              "ask the federation's operator for your certificate and key "
                              "(made by `veil certs init`), or set $VEIL_CERT/$VEIL_KEY",
                              file=str(path))
    kind, name = certificate_identity(creds.cert_path)
    if kind != ANALYST_KIND:
        raise UsageError(f"{creds.cert_path} is not an analyst certificate",
                         "use the analyst's own certificate made by `veil certs init` "
                         "(party certificates belong to nodes)")
    return name, creds


def all_remote(federation: Federation, parties: Sequence[str]) -> bool:
    """True when every one of ``parties`` runs its own node; UsageError on a mix."""
    remote = [p for p in parties if not federation.party(p).is_local]  # type: ignore[union-attr]
    if remote and len(remote) != len(parties):
        local = [p for p in parties if p not in remote]
        raise UsageError(
            f"parties {', '.join(local)} are local but {', '.join(remote)} run on their own "
            "nodes", "all parties local, or all remote: give every party an address "
            "host:port (run `veil serve` for each), or \"local\" for every party")
    return bool(remote)


@dataclass(frozen=True)
class BudgetRequest:
    """Ask one node for the analyst's budget there (its own ledger only)."""

    query_id: str

    def to_bytes(self) -> bytes:
        """The request as the node reads it."""
        return json.dumps({"kind": "budget", "query_id": self.query_id}).encode()


def remote_budget(federation: Federation, party: str, credentials: PartyCredentials, *,
                  timeout: float) -> dict[str, float]:
    """The budget of the analyst named by ``credentials`` at node ``party``.

    Each node answers only for its own ledger and only for the analyst its client
    certificate names, so this asks every party separately.
    """
    request = BudgetRequest(uuid.uuid4().hex)
    with RemoteAnalyst(federation, [party], request, credentials,  # type: ignore[arg-type]
                       timeout=timeout) as me:
        answer = json.loads(me.recv(party, "budget"))
    return {k: float(answer[k]) for k in ("epsilon_spent", "delta_spent",
                                          "epsilon_remaining", "delta_remaining")}


class RemoteAnalyst(Transport):
    """The analyst endpoint of one session with remote party nodes (receive-only)."""

    def __init__(self, federation: Federation, parties: Sequence[str], request: QueryRequest,
                 credentials: PartyCredentials, *, timeout: float,
                 connect_timeout: float | None = None, on_step: Progress | None = None) -> None:
        self.me = ANALYST
        self.session_id = request.query_id
        self.timeout = timeout
        self.parties = tuple(parties)
        self._box = Mailbox(ANALYST)
        self._conns: dict[str, Conn] = {}
        self._closed = False
        self._on_step = on_step
        self._transcript = TranscriptWriter(ANALYST)
        ctx = client_context(credentials)
        name = certificate_name(credentials.cert_path)
        self._digest = session_digest(routing_id(name, request.query_id))
        query = json.dumps({"session": request.query_id, "participants": list(parties),
                            "request": json.loads(request.to_bytes())}).encode()
        limit = min(timeout, 10.0) if connect_timeout is None else connect_timeout
        errors: dict[str, BaseException] = {}

        def connect(party: str) -> None:
            address = federation.party(party).address  # type: ignore[union-attr]
            try:
                host, port = parse_address(address)
                try:
                    raw = socket.create_connection((host, port), timeout=limit)
                except OSError as exc:
                    raise PartyUnavailable(party, f"cannot reach party {party!r} at {address}: "
                                           f"{describe(exc)}") from exc
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                raw.settimeout(limit)
                tls = handshake_client(ctx, raw, party, name, address, self._transcript)
                tls.sendall(encode_frame(KIND_DATA, self._digest, QUERY_TAG, query))
                self._conns[party] = Conn(party, tls)
            except BaseException as exc:  # noqa: BLE001 - re-raised below in party order
                errors[party] = exc

        threads = [threading.Thread(target=connect, args=(p,), daemon=True) for p in parties]
        for t in threads:
            t.start()
        for t in threads:
            t.join(limit + 15)
        failed = next((p for p in parties if p in errors or p not in self._conns), None)
        if failed is not None:
            self.close()
            raise errors.get(failed) or PartyUnavailable(failed)
        self._readers = [threading.Thread(target=self._read_loop, args=(c,), daemon=True,
                                          name=f"veil-client<-{p}")
                         for p, c in self._conns.items()]
        for t in self._readers:
            t.start()

    def _read_loop(self, conn: Conn) -> None:
        party = conn.peer
        try:
            while True:
                kind, digest, tag, payload = read_frame(conn, 1 << 33)
                self._transcript.record(party, tag, payload, KIND_NAMES[kind])
                if digest != self._digest:
                    raise ProtocolError("frame for another session (session id mismatch)")
                if kind == KIND_BYE:
                    self._box.fail(party, goodbye_error(party, ANALYST, payload))
                    return
                if kind != KIND_DATA:
                    raise ProtocolError(f"unexpected frame kind {kind}")
                if tag == PROGRESS_TAG:
                    self._box.alive(party)
                    if self._on_step is not None:
                        try:
                            self._on_step(party, bytes(payload[:200]).decode(errors="replace"))
                        except Exception:  # noqa: BLE001 - a display problem must not stop us
                            pass
                    continue
                self._box.put(party, tag, payload)
        except Closing:
            return
        except ProtocolError as exc:
            self._box.fail(party, ProtocolError(f"party {party!r} sent a bad frame: "
                                                f"{exc.message}", exc.hint))
        except EOFError:
            self._box.fail(party, PartyUnavailable(
                party, f"party {party!r} closed the connection before the query finished"))
        except (OSError, ValueError) as exc:
            self._box.fail(party, PartyUnavailable(
                party, f"connection to party {party!r} lost: {describe(exc)}"))

    def send(self, to: str, tag: str, payload: bytes) -> None:
        """The analyst sends nothing after the query itself."""
        raise ProtocolError("the analyst endpoint of a remote session only receives")

    def recv(self, frm: str, tag: str, timeout: float | None = None) -> bytes:
        """What node ``frm`` sent under ``tag``; PartyUnavailable on timeout or its death."""
        self._check(frm)
        return bytes(self._box.take(frm, tag, GRACE + (self.timeout if timeout is None
                                                       else timeout)))

    def recv_array(self, frm: str, tag: str, timeout: float | None = None) -> np.ndarray:
        """Receive an array without an extra copy."""
        self._check(frm)
        return decode_array(self._box.take(frm, tag, GRACE + (self.timeout if timeout is None
                                                              else timeout)))

    def _check(self, frm: str) -> None:
        if frm not in self._conns:
            raise ProtocolError(f"party {frm!r} is not part of this query")

    def close(self) -> None:
        """Say goodbye and close every node connection."""
        if self._closed:
            return
        self._closed = True
        if self._transcript.enabled:
            # Recording: let each node's goodbye (sent right after its last frame) arrive and
            # be recorded before ours goes out; a node that reads our goodbye first may close
            # the link before its own is written. Bounded, and only with transcripts on.
            end = time.monotonic() + TRANSCRIPT_LINGER
            for t in getattr(self, "_readers", ()):
                t.join(max(0.0, end - time.monotonic()))
        bye = encode_frame(KIND_BYE, NO_SESSION, ANALYST, b"")
        for conn in self._conns.values():
            try:
                with conn.send_lock:
                    conn.write(memoryview(bye), 1.0)
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        for conn in self._conns.values():
            conn.close()

    def __enter__(self) -> RemoteAnalyst:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
