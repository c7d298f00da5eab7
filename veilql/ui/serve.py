"""``veil serve``: run one party's node in the foreground until SIGTERM or SIGINT."""

from __future__ import annotations

import signal
import threading
import warnings
from types import FrameType

import click

from veilql.engine.dp import LargeEpsilonWarning
from veilql.engine.server import MAX_SESSIONS, MAX_SESSIONS_PER_ANALYST, NodeServer, stderr_log
from veilql.ui.clicommon import federation_option, load


@click.command("serve")
@federation_option
@click.option("--party", required=True, metavar="NAME", help="The party this node runs.")
@click.option("--bind", default=None, metavar="HOST:PORT",
              help="Listen here instead of the party's address (e.g. 0.0.0.0:7001).")
@click.option("--max-sessions", type=click.IntRange(min=1), default=MAX_SESSIONS,
              show_default=True, help="Queries this node runs at once; more are refused "
              "with 'busy, retry' (exit 3) before anything is read or charged.")
@click.option("--max-per-analyst", type=click.IntRange(min=1),
              default=MAX_SESSIONS_PER_ANALYST, show_default=True,
              help="Queries one analyst may run at once at this node.")
def serve(federation: str | None, party: str, bind: str | None, max_sessions: int,
          max_per_analyst: int) -> None:
    """Run PARTY's node at its address: answer queries from analysts and peer nodes."""
    # Each query's cost is the analyst's choice; the client is the one warned about it.
    warnings.simplefilter("ignore", LargeEpsilonWarning)
    fed = load(federation)
    server = NodeServer(fed, party, bind=bind, max_sessions=max_sessions,
                        max_per_analyst=max_per_analyst)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        host, port = server.start()
        stderr_log(f"{party}: listening on {host}:{port}")
        while not stop.wait(0.5):
            pass
        stderr_log(f"{party}: stopping ({server.endpoint.active} queries running)")
    finally:
        server.close()
        for s, handler in old.items():
            signal.signal(s, handler)
