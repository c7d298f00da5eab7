"""Node resource limits under `veil serve`: too many concurrent queries are refused clearly.

One bank node runs with ``--max-per-analyst 1 --max-sessions 2``. A first query from
analyst ``oracle`` is held open at the bank (its client told only the bank, so the bank
waits for its peers); a second one from the same analyst is refused at once with "busy,
retry" (exit 3), before anything is read or charged; another analyst still gets through.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from test_network import COUNT, PARTIES, QUERIES, TIMEOUT, Cluster

import veilql
from veilql.engine.node import QueryRequest
from veilql.engine.remote import RemoteAnalyst, analyst_credentials
from veilql.errors import VeilError

pytestmark = pytest.mark.network


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("limits") / "fed")
    try:
        done = c.veil("certs", "init", "-f", str(c.fed))
        assert done.returncode == 0, done.stderr
        c.start("bank", "--max-per-analyst", "1", "--max-sessions", "2")
        for p in PARTIES[1:]:
            c.start(p)
        yield c
    finally:
        for p in list(c.procs):
            c.kill(p, signal.SIGTERM)


def _hold_bank(cluster: Cluster, stop: threading.Event,
               sent: threading.Event) -> threading.Thread:
    """A query of ``oracle`` that only the bank hears of: the bank waits for its peers."""
    session = veilql.connect(cluster.fed, analyst="oracle")
    _, creds = analyst_credentials(session.federation, "oracle")
    request = QueryRequest(uuid.uuid4().hex, QUERIES[1], "oracle", 1.0, 0.0)

    def hold() -> None:
        try:
            with RemoteAnalyst(session.federation, ["bank"], request, creds,
                               timeout=TIMEOUT) as me:
                sent.set()
                try:
                    me.recv("bank", "never", timeout=TIMEOUT)
                except VeilError:
                    pass
                stop.wait(TIMEOUT)
        finally:
            session.close()

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    return t


def test_an_analyst_over_the_per_analyst_limit_is_told_busy(cluster: Cluster) -> None:
    bank = cluster.ledger("bank")
    before = len(bank.history())
    stop, sent = threading.Event(), threading.Event()
    holder = _hold_bank(cluster, stop, sent)
    try:
        assert sent.wait(10)
        time.sleep(0.3)  # the held query is running at the bank
        busy = cluster.veil("query", "-f", str(cluster.fed), "--analyst", "oracle",
                            "--epsilon", "0.5", COUNT)
        assert busy.returncode == 3, busy.stderr
        assert "node 'bank' is busy" in busy.stderr and "retry" in busy.stderr
        assert busy.stdout == "" and "Traceback" not in busy.stderr
        other = cluster.veil("query", "-f", str(cluster.fed), "--analyst", "alice",
                             "--epsilon", "0.5", COUNT)
        assert other.returncode == 0, other.stderr
    finally:
        stop.set()
        holder.join(TIMEOUT + 5)
    mine = [c for c in bank.history()[before:] if c.analyst == "oracle"]
    assert mine == []  # neither the held query nor the refused one charged the bank
    assert not bank.open_reservations()
    assert "refused: busy" in cluster.log("bank")
