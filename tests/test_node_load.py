"""Party nodes under load and faults: exact budgets, settled reservations, bounded resources.

Three real `veil serve` processes on 127.0.0.1 (the bank's with tight session limits).
- Budget race: twelve concurrent queries of one analyst against a budget for seven release
  exactly seven, with equal commits at every charged party and no reservation left open.
- A query refused at one party leaves no reservation anywhere.
- Clients killed mid-query: every node settles its reservation.
- After a burst, each node's threads and descriptors return to their idle level.
- Session limits: over ``--max-per-analyst`` a query is refused "busy, retry" (exit 3).
Every process is killed in a ``finally``; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from test_network import COUNT, PARTIES, QUERIES, TIMEOUT, VEIL, Cluster

import veilql
from veilql.engine.node import QueryRequest
from veilql.engine.remote import RemoteAnalyst, analyst_credentials
from veilql.errors import BudgetExceeded, VeilError

pytestmark = pytest.mark.network

RACERS = 12  # analysts racer0..racer11, each with a budget for exactly seven queries
CROSS = ("SELECT COUNT(*) AS n FROM bank.loans l JOIN insurer.policies p "
         "ON l.customer_id = p.customer_id")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("load") / "fed")
    extra = "".join(f"\n[analyst.racer{i}]\nepsilon = 7.0\ndelta = 1e-6\n"
                    for i in range(RACERS))
    for path in (c.fed, c.local):
        path.write_text(path.read_text() + extra)
    try:
        done = c.veil("certs", "init", "-f", str(c.fed))
        assert done.returncode == 0, done.stderr
        c.start("bank", "--max-per-analyst", "12", "--max-sessions", "24")
        for p in PARTIES[1:]:
            c.start(p)
        yield c
    finally:
        for p in list(c.procs):
            c.kill(p, signal.SIGTERM)


def _settled(cluster: Cluster, parties: tuple[str, ...] = PARTIES) -> None:
    for party in parties:
        ledger = cluster.ledger(party)
        deadline = time.monotonic() + TIMEOUT + 5
        while ledger.open_reservations() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not ledger.open_reservations(), party
        assert ledger.verify().ok, party


def _race(cluster: Cluster, analyst: str) -> tuple[int, list[str]]:
    released, errors = [], []

    def one() -> None:
        with veilql.connect(cluster.fed, analyst=analyst) as session:
            try:
                session.sql(CROSS, epsilon=1.0, delta=0)
                released.append(1)
            except VeilError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(4 * TIMEOUT)
    return len(released), errors


@pytest.mark.parametrize("run", [0, pytest.param(1, marks=pytest.mark.slow)]
                         + [pytest.param(i, marks=pytest.mark.slow) for i in range(2, 10)])
def test_twelve_queries_against_a_budget_for_seven_release_exactly_seven(
        cluster: Cluster, run: int) -> None:
    analyst = f"racer{run}"
    released, errors = _race(cluster, analyst)
    assert released == 7, errors
    assert all(e.startswith(BudgetExceeded.__name__) for e in errors), errors
    _settled(cluster)
    for party in ("bank", "insurer"):
        mine = cluster.ledger(party).history(analyst=analyst)
        assert sum(c.status == "committed" for c in mine) == 7, (party, mine)
        assert float(sum(c.epsilon for c in mine if c.status == "committed")) == 7.0


def test_a_query_refused_at_one_party_leaves_no_reservation_anywhere(cluster: Cluster) -> None:
    analyst = f"racer{RACERS - 1}"
    with veilql.connect(cluster.fed, analyst=analyst) as session:
        with pytest.raises(BudgetExceeded):
            session.sql(CROSS, epsilon=8.0, delta=0)  # more than the budget of 7
    _settled(cluster)
    for party in PARTIES:
        mine = cluster.ledger(party).history(analyst=analyst)
        assert all(c.status == "aborted" for c in mine), (party, mine)


def _counts(pid: int) -> tuple[int, int]:
    threads = len(os.listdir(f"/proc/{pid}/task"))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return threads, fds


def test_threads_and_descriptors_return_to_idle_after_a_burst(cluster: Cluster) -> None:
    # Warm up: the first query opens each node's connector and peer links once.
    done = cluster.veil("query", "-f", str(cluster.fed), "--analyst", "oracle", "--epsilon",
                        "1", "--delta", "0", QUERIES[1])
    assert done.returncode == 0, done.stderr
    time.sleep(1.0)
    idle = {p: _counts(cluster.procs[p].pid) for p in PARTIES}

    def one() -> None:
        with veilql.connect(cluster.fed, analyst="oracle") as session:
            session.sql(QUERIES[1], epsilon=1.0, delta=0)

    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(4 * TIMEOUT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = {p: _counts(cluster.procs[p].pid) for p in PARTIES}
        if all(now[p][0] <= idle[p][0] + 2 and now[p][1] <= idle[p][1] + 2 for p in PARTIES):
            break
        time.sleep(0.2)
    assert all(now[p][0] <= idle[p][0] + 2 for p in PARTIES), (idle, now)
    assert all(now[p][1] <= idle[p][1] + 2 for p in PARTIES), (idle, now)


def test_clients_killed_mid_query_leave_no_open_reservation(cluster: Cluster) -> None:
    procs = [subprocess.Popen([*VEIL, "query", "-f", str(cluster.fed), "--analyst", "oracle",
                               "--epsilon", "1", "--delta", "0", QUERIES[3]],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=cluster.env, cwd=cluster.root) for _ in range(4)]
    try:
        bank = cluster.ledger("bank")
        before = len(bank.history())
        deadline = time.monotonic() + 30
        while len(bank.history()) < before + 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        for p in procs:
            p.send_signal(signal.SIGKILL)
    finally:
        for p in procs:
            p.wait(10)
    _settled(cluster)


def test_a_node_killed_under_load_settles_everything_after_a_restart(cluster: Cluster) -> None:
    insurer = cluster.ledger("insurer")
    seen = len(insurer.history())
    errors: list[str] = []

    def one(i: int) -> None:
        with veilql.connect(cluster.fed, analyst="oracle") as session:
            sql = QUERIES[3].replace("+ 100", f"+ {100 + i}")  # no join cache between them
            try:
                session.sql(sql, epsilon=1.0, delta=0)
            except VeilError as exc:
                errors.append(str(exc))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 30
        while len(insurer.history()) == seen and time.monotonic() < deadline:
            time.sleep(0.005)
        cluster.kill("insurer")  # SIGKILL, mid-query
        for t in threads:
            t.join(3 * TIMEOUT)
    finally:
        cluster.start("insurer")
    assert errors  # at least the query it was serving failed, naming a party
    assert all("round '" not in e for e in errors), errors  # no internal round names
    # The restarted node asks its peers what became of what it left open and settles it.
    deadline = time.monotonic() + 3 * TIMEOUT
    while insurer.open_reservations() and time.monotonic() < deadline:
        time.sleep(0.1)
    _settled(cluster)
    done = cluster.veil("query", "-f", str(cluster.fed), "--analyst", "oracle", "--epsilon",
                        "1", "--delta", "0", QUERIES[1])
    assert done.returncode == 0, done.stderr


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
    stops, holders = [], []
    try:
        for _ in range(12):  # the bank's --max-per-analyst
            stop, sent = threading.Event(), threading.Event()
            holders.append(_hold_bank(cluster, stop, sent))
            stops.append(stop)
            assert sent.wait(10)
        time.sleep(0.3)  # the held queries are running at the bank
        before = len(bank.history())
        busy = cluster.veil("query", "-f", str(cluster.fed), "--analyst", "oracle",
                            "--epsilon", "0.5", COUNT)
        assert busy.returncode == 3, busy.stderr
        assert "node 'bank' is busy" in busy.stderr and "retry" in busy.stderr
        assert busy.stdout == "" and "Traceback" not in busy.stderr
        assert len(bank.history()) == before  # refused before anything was charged
        other = cluster.veil("query", "-f", str(cluster.fed), "--analyst", "alice",
                             "--epsilon", "0.5", COUNT)
        assert other.returncode == 0, other.stderr
    finally:
        for stop in stops:
            stop.set()
        for t in holders:
            t.join(TIMEOUT + 5)
    assert "refused: busy" in cluster.log("bank")
    _settled(cluster)


def test_veil_budget_reads_every_node_for_the_certificates_analyst(cluster: Cluster) -> None:
    done = cluster.veil("query", "-f", str(cluster.fed), "--analyst", "racer10", "--epsilon",
                        "0.25", "--delta", "0", CROSS)
    assert done.returncode == 0, done.stderr
    out = cluster.veil("budget", "-f", str(cluster.fed), "--analyst", "racer10",
                       "--format", "json")
    assert out.returncode == 0, out.stderr
    rows = {r[0]: r for r in json.loads(out.stdout)["rows"]}
    assert set(rows) == set(PARTIES)
    with veilql.connect(cluster.fed, analyst="racer10") as session:
        budget = session.budget()
    assert budget["bank"]["epsilon_spent"] == budget["insurer"]["epsilon_spent"] > 0
    assert budget["payments"]["epsilon_spent"] == 0.0
