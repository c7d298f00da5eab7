"""Three `veil serve` nodes on loopback: answers, analyst identity, refusals, a killed node.

The module starts one node per demo party (a tmp copy of the demo federation with free
loopback ports, certificates from `veil certs init`) and compares their answers with the
embedded mode over the same data folder (so the same bounding seeds) at a huge epsilon.
Every process is killed in a ``finally``; every wait is bounded.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from oracle import HUGE_EPSILON, oracle_federation, same

import veilql
import veilql.errors
from veilql.engine.dp import LargeEpsilonWarning
from veilql.engine.ledger.ledger import Ledger
from veilql.engine.transport.certs import make_ca
from veilql.engine.transport.frames import KIND_HELLO, encode_frame
from veilql.engine.transport.identity import make_analyst_cert
from veilql.engine.transport.muxwire import NO_SESSION

pytestmark = pytest.mark.network

DEMO = Path(__file__).resolve().parent.parent / "sample_data" / "demo"
PARTIES = ("bank", "payments", "insurer")
TIMEOUT = 8  # the federation's timeout in seconds: every silent wait ends within it
VEIL = [sys.executable, "-m", "veilql.cli"]

QUERIES = [
    "SELECT region, COUNT(*) AS n, AVG(income) AS inc FROM bank.customers WHERE age > 40 "
    "GROUP BY region",
    "SELECT COUNT(*) AS n, SUM(l.amount) AS total FROM bank.loans l "
    "JOIN insurer.policies p ON l.customer_id = p.customer_id WHERE p.open_claim = 1",
    "SELECT a.segment, COUNT(*) AS n, AVG(l.defaulted) AS rate FROM bank.loans l "
    "JOIN payments.accounts a ON l.customer_id = a.customer_id GROUP BY a.segment",
    "SELECT COUNT(*) AS n, SUM(p.premium) AS prem FROM bank.loans l JOIN insurer.policies p "
    "ON l.customer_id = p.customer_id WHERE l.amount > 2 * p.claims_amount + 100 "
    "OR p.premium < 500",
    "SELECT c.branch, p.product, COUNT(*) AS n FROM bank.customers c "
    "JOIN insurer.policies p ON c.customer_id = p.customer_id WHERE p.open_claim = 1 "
    "GROUP BY c.branch, p.product",
]
# The kill test's query: three parties, run nowhere else, so no node has its join cached.
SLOW = ("SELECT c.region, AVG(l.defaulted) AS rate, COUNT(*) AS n FROM bank.customers c "
        "JOIN bank.loans l ON c.customer_id = l.customer_id "
        "JOIN payments.accounts a ON a.customer_id = c.customer_id "
        "JOIN insurer.policies p ON p.customer_id = c.customer_id "
        "WHERE a.monthly_txn_count > 10 AND p.open_claim = 1 GROUP BY c.region")
COUNT = "SELECT COUNT(*) AS n FROM bank.customers"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Cluster:
    """Three node processes plus the files they use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        fed = oracle_federation(DEMO, root)
        shutil.rmtree(root / "ledgers", ignore_errors=True)
        text = fed.read_text().replace("default_delta = 1e-06",
                                       f"default_delta = 1e-06\ntimeout = {TIMEOUT}")
        self.local = root / "federation-local.toml"
        self.local.write_text(text)
        ports = iter(_free_ports(3))
        self.ports = {}

        def address(match: re.Match[str]) -> str:
            port = next(ports)
            self.ports[len(self.ports)] = port
            return f'address = "127.0.0.1:{port}"'

        fed.write_text(re.sub(r'address = "local"', address, text))
        self.fed = fed
        self.certs = root / "certs"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("VEIL_CERT", "VEIL_KEY", "VEIL_CA", "VEIL_LEDGER_DIR",
                                 "VEIL_ANALYST", "VEIL_FEDERATION")}

    def log(self, party: str) -> str:
        return (self.root / f"{party}.log").read_text()

    def start(self, party: str, *extra: str) -> None:
        log = open(self.root / f"{party}.log", "ab")  # noqa: SIM115 - closed with the process
        before = len(self.log(party)) if (self.root / f"{party}.log").exists() else 0
        self.procs[party] = subprocess.Popen(
            [*VEIL, "serve", "-f", str(self.fed), "--party", party, *extra],
            stdout=subprocess.DEVNULL,
            stderr=log, env=self.env, cwd=self.root)
        log.close()
        deadline = time.monotonic() + 30
        while "listening on" not in self.log(party)[before:]:
            assert self.procs[party].poll() is None, self.log(party)
            assert time.monotonic() < deadline, f"{party} did not start: {self.log(party)}"
            time.sleep(0.05)

    def kill(self, party: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[party]
        if proc.poll() is None:
            proc.send_signal(sig)
        proc.wait(10)

    def veil(self, *args: str, env: dict[str, str] | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*VEIL, *args], capture_output=True, text=True, timeout=timeout,
                              env={**self.env, **(env or {})}, cwd=self.root)

    def ledger(self, party: str) -> Ledger:
        return Ledger(self.root / "ledgers" / f"{party}.jsonl", party)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("network") / "fed")
    try:
        done = c.veil("certs", "init", "-f", str(c.fed))
        assert done.returncode == 0, done.stderr
        for p in PARTIES:
            c.start(p)
        yield c
    finally:
        for p in list(c.procs):
            c.kill(p, signal.SIGTERM)
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert str(c.fed) not in ps, "a node process was left behind"


def _rows(result: veilql.Result) -> dict[tuple[str, ...], tuple]:
    groups = sum(1 for o in result.plan.outputs if o.kind == "group")
    return {tuple(str(v) for v in row[:groups]): row for row in result.rows}


@pytest.fixture(scope="module")
def sessions(cluster: Cluster) -> Iterator[tuple[veilql.Session, veilql.Session]]:
    remote = veilql.connect(cluster.fed, analyst="oracle")
    local = veilql.connect(cluster.local, analyst="oracle")
    try:
        yield remote, local
    finally:
        remote.close()
        local.close()


@pytest.mark.parametrize("sql", QUERIES, ids=[f"q{i}" for i in range(len(QUERIES))])
def test_nodes_answer_like_the_embedded_mode(sessions, sql: str) -> None:
    remote, local = sessions
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LargeEpsilonWarning)
        delta = 1e-6 if "branch" in sql else 0
        got = remote.sql(sql, epsilon=HUGE_EPSILON, delta=delta)
        want = local.sql(sql, epsilon=HUGE_EPSILON, delta=delta)
    assert got.columns == want.columns
    got_rows, want_rows = _rows(got), _rows(want)
    assert got_rows.keys() == want_rows.keys() and got_rows
    for key, row in want_rows.items():
        assert all(same(a, b, tol=0.011) for a, b in zip(got_rows[key], row, strict=True)), (
            got_rows[key], row)
    assert set(got.budget) == set(got.plan.charged)


def test_the_certificate_names_the_analyst_who_pays(cluster: Cluster) -> None:
    certs = cluster.certs
    env = {"VEIL_CERT": str(certs / "bob.pem"), "VEIL_KEY": str(certs / "bob.key")}
    before = {a: len(cluster.ledger("bank").history(analyst=a)) for a in ("alice", "bob")}
    done = cluster.veil("query", "-f", str(cluster.fed), "--analyst", "alice",
                        "--epsilon", "0.25", "--format", "json", COUNT, env=env)
    assert done.returncode == 0, done.stderr
    bob = cluster.ledger("bank").history(analyst="bob")
    assert len(bob) == before["bob"] + 1 and bob[-1].status == "committed"
    assert float(bob[-1].epsilon) == 0.25
    assert len(cluster.ledger("bank").history(analyst="alice")) == before["alice"]
    assert "charging 'bob', named by its certificate" in cluster.log("bank")


def test_a_certificate_of_another_ca_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    cert, key = make_analyst_cert(ca, "oracle", tmp_path)
    done = cluster.veil("query", "-f", str(cluster.fed), "--epsilon", "1", COUNT,
                        env={"VEIL_CERT": str(cert), "VEIL_KEY": str(key)})
    assert done.returncode == 3, done.stderr
    assert "party 'bank' refused our certificate" in done.stderr
    assert "refused connection" in cluster.log("bank")
    assert cluster.procs["bank"].poll() is None


def test_party_certificates_and_missing_files_are_usage_errors(cluster: Cluster) -> None:
    certs = cluster.certs
    done = cluster.veil("query", "-f", str(cluster.fed), "--analyst", "alice", "--epsilon",
                        "1", COUNT, env={"VEIL_CERT": str(certs / "bank.pem"),
                             "VEIL_KEY": str(certs / "bank.key")})
    assert done.returncode == 2 and "not an analyst certificate" in done.stderr
    done = cluster.veil("query", "-f", str(cluster.fed), "--analyst", "carol", "--epsilon",
                        "1", COUNT)
    assert done.returncode == 2 and "carol" in done.stderr


def _bank_address(cluster: Cluster) -> tuple[str, int]:
    return "127.0.0.1", cluster.ports[0]


def test_clients_without_a_certificate_and_garbage_are_refused(cluster: Cluster) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cluster.certs / "ca.pem")
    with pytest.raises(OSError):  # refused: an alert, a reset or an EOF (ssl errors too)
        with socket.create_connection(_bank_address(cluster), timeout=5) as raw, \
                ctx.wrap_socket(raw) as tls:
            tls.sendall(encode_frame(KIND_HELLO, NO_SESSION, "oracle", b""))
            assert tls.recv(100) == b""
            raise ConnectionError("closed")
    with socket.create_connection(_bank_address(cluster), timeout=5) as raw:
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n" * 10)
        raw.settimeout(5)
        try:
            raw.recv(100)
        except OSError:
            pass
    # A real analyst whose HELLO claims another name is refused too.
    ctx.load_cert_chain(cluster.certs / "alice.pem", cluster.certs / "alice.key")
    with socket.create_connection(_bank_address(cluster), timeout=5) as raw, \
            ctx.wrap_socket(raw) as tls:
        tls.sendall(encode_frame(KIND_HELLO, NO_SESSION, "oracle", b""))
        assert b"certificate names 'alice'" in tls.recv(1000)
    time.sleep(0.2)
    log = cluster.log("bank")
    assert log.count("refused connection") >= 3
    assert cluster.procs["bank"].poll() is None
    done = cluster.veil("query", "-f", str(cluster.fed), "--analyst", "alice", "--epsilon",
                        "0.1", COUNT)
    assert done.returncode == 0, done.stderr


def test_a_node_killed_mid_query_is_named_and_nothing_is_released(cluster: Cluster) -> None:
    insurer = cluster.ledger("insurer")
    seen = len(insurer.history())
    start = time.monotonic()
    query = subprocess.Popen(
        [*VEIL, "query", "-f", str(cluster.fed), "--analyst", "oracle", "--epsilon", "1e12",
         "--delta", "0", SLOW], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=cluster.env, cwd=cluster.root)
    try:
        deadline = time.monotonic() + 30
        while len(insurer.history()) == seen:  # insurer has reserved: the query is running
            assert query.poll() is None, query.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        cluster.kill("insurer")
        out, err = query.communicate(timeout=TIMEOUT + 10)
    finally:
        if query.poll() is None:
            query.kill()
            query.wait(5)
    assert time.monotonic() - start < TIMEOUT + 10
    assert query.returncode == 3, err
    assert "insurer" in err and out == ""
    qid = insurer.history()[-1].query_id
    # Killed before it could settle, or just after its commit (once every party admitted
    # the query the charge stands: CONTRACT, a failure after a party read data keeps it).
    left_open = insurer.history()[-1].status == "reserved"
    assert insurer.history()[-1].status in ("reserved", "committed")
    for party in ("bank", "payments"):
        ledger = cluster.ledger(party)
        # The client returns as soon as insurer's link drops; the others settle right after.
        settle = time.monotonic() + TIMEOUT + 5
        while ledger.open_reservations() and time.monotonic() < settle:
            time.sleep(0.05)
        assert ledger.verify().ok
        mine = [c for c in ledger.history() if c.query_id == qid]
        assert mine and all(c.status in ("aborted", "committed") for c in mine), mine
        assert not ledger.open_reservations()
    # Restart: the ledger is intact, a leftover reservation stays charged, queries work.
    cluster.start("insurer")
    assert insurer.verify().ok
    if left_open:
        assert "left open by an earlier run" in cluster.log("insurer")
        settle = time.monotonic() + 2 * TIMEOUT
        while insurer.open_reservations() and time.monotonic() < settle:
            time.sleep(0.1)
        assert not insurer.open_reservations()  # settled by asking bank and payments
    done = cluster.veil("query", "-f", str(cluster.fed), "--analyst", "oracle", "--epsilon",
                        "1e12", "--delta", "0", "--format", "json",
                        QUERIES[1])
    assert done.returncode == 0, done.stderr
    assert insurer.history()[-1].status == "committed"


def test_a_peer_sending_garbage_fails_only_its_link(cluster: Cluster) -> None:
    """A malformed frame on a peer link is logged and that link closed; the node serves on."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cluster.certs / "ca.pem")
    ctx.load_cert_chain(cluster.certs / "insurer.pem", cluster.certs / "insurer.key")
    with socket.create_connection(_bank_address(cluster), timeout=5) as raw, \
            ctx.wrap_socket(raw) as tls:
        tls.sendall(encode_frame(KIND_HELLO, NO_SESSION, "insurer", b""))
        assert tls.recv(1000)  # the node's HELLO
        tls.sendall(b"XYZ" + bytes(40))
        time.sleep(0.3)
    assert "bad frame from insurer" in cluster.log("bank")
    done = cluster.veil("query", "-f", str(cluster.fed), "--analyst", "oracle", "--epsilon",
                        "1e12", "--delta", "0", QUERIES[1])
    assert done.returncode == 0, done.stderr


def test_mixed_local_and_remote_parties_are_refused(cluster: Cluster, tmp_path: Path) -> None:
    text = cluster.fed.read_text().replace(f'address = "127.0.0.1:{cluster.ports[2]}"',
                                           'address = "local"')
    mixed = cluster.root / "federation-mixed.toml"
    mixed.write_text(text)
    try:
        with veilql.connect(mixed, analyst="oracle") as s, \
                pytest.raises(veilql.errors.UsageError, match="insurer are local but") as err:
            s.sql("SELECT COUNT(*) AS n FROM bank.loans l JOIN insurer.policies p "
                  "ON l.customer_id = p.customer_id", epsilon=1.0)
        assert "all parties local, or all remote" in (err.value.hint or "")
    finally:
        mixed.unlink()


def test_certs_init_keeps_an_existing_ca(cluster: Cluster) -> None:
    ca = (cluster.certs / "ca.pem").read_bytes()
    done = cluster.veil("certs", "init", "-f", str(cluster.fed))
    assert done.returncode == 2 and "--force" in done.stderr
    assert (cluster.certs / "ca.pem").read_bytes() == ca
    assert oct((cluster.certs / "bank.key").stat().st_mode & 0o777) == "0o600"


def test_a_node_with_other_policies_refuses(tmp_path: Path) -> None:
    """Nodes compile the plan themselves: the insurer, whose policy file differs, makes every
    node refuse before any data moves (in-process nodes, real TLS on loopback)."""
    from veilql.engine.server import NodeServer
    from veilql.policies.loader import load_federation
    from veilql.ui.certs import init_certs

    a = oracle_federation(DEMO, tmp_path / "a")
    shutil.rmtree(tmp_path / "a" / "ledgers", ignore_errors=True)
    ports = iter(_free_ports(3))
    a.write_text(re.sub(r'address = "local"',
                        lambda m: f'address = "127.0.0.1:{next(ports)}"', a.read_text()))
    init_certs(load_federation(a))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    policy = tmp_path / "b" / "policies" / "insurer.toml"
    policy.write_text(policy.read_text().replace("bounds = [0, 5000]", "bounds = [0, 6000]"))
    logs: list[str] = []
    servers = [NodeServer(load_federation(a), "bank", log=logs.append),
               NodeServer(load_federation(a), "payments", log=logs.append),
               NodeServer(load_federation(tmp_path / "b" / "federation.toml"), "insurer",
                          log=logs.append)]
    try:
        for s in servers:
            s.start()
        with veilql.connect(a, analyst="oracle") as session, \
                pytest.raises(veilql.errors.ProtocolError, match="compiled different plans") as err:
            session.sql("SELECT SUM(p.premium) AS s FROM bank.loans l JOIN insurer.policies p "
                        "ON l.customer_id = p.customer_id", epsilon=1.0)
    finally:
        for s in servers:
            s.close()
    assert not list((tmp_path / "a" / "ledgers").glob("*.jsonl")) or all(
        not Ledger(f, f.stem).history() for f in (tmp_path / "a" / "ledgers").glob("*.jsonl"))
    assert any("compiled different plans" in line for line in logs)
    assert "same federation and policy files" in (err.value.hint or "")


def _wait_for_reservation(ledger: Ledger, seen: int, query: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while len(ledger.history()) == seen:
        assert query.poll() is None, query.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.slow  # waits out the federation's timeout (8 s) by design
def test_a_frozen_node_is_named_within_the_timeout(cluster: Cluster) -> None:
    """SIGSTOP: the node keeps its connections open but says nothing (unreachable)."""
    payments = cluster.ledger("payments")
    seen = len(payments.history())
    sql = SLOW.replace("a.monthly_txn_count > 10", "a.monthly_txn_count > 12")  # not cached
    start = time.monotonic()
    query = subprocess.Popen(
        [*VEIL, "query", "-f", str(cluster.fed), "--analyst", "oracle", "--epsilon", "1e12",
         "--delta", "0", sql], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=cluster.env, cwd=cluster.root)
    proc = cluster.procs["payments"]
    try:
        _wait_for_reservation(payments, seen, query)
        proc.send_signal(signal.SIGSTOP)
        out, err = query.communicate(timeout=TIMEOUT + 15)
    finally:
        proc.send_signal(signal.SIGCONT)
        if query.poll() is None:
            query.kill()
            query.wait(5)
    assert time.monotonic() - start < TIMEOUT + 10
    assert query.returncode == 3, err
    assert "'payments'" in err.splitlines()[-2] and out == ""
    qid = payments.history()[-1].query_id
    for party in PARTIES:  # everyone, the frozen node too once resumed, settles its charge
        ledger = cluster.ledger(party)
        settle = time.monotonic() + TIMEOUT + 5
        while ledger.open_reservations() and time.monotonic() < settle:
            time.sleep(0.05)
        # Given back if the freeze came before every party admitted the query; kept after.
        statuses = [c.status for c in ledger.history() if c.query_id == qid]
        assert statuses in ([], ["aborted"], ["committed"]), statuses
        assert not ledger.open_reservations()
    done = cluster.veil("query", "-f", str(cluster.fed), "--analyst", "oracle", "--epsilon",
                        "1e12", "--delta", "0", QUERIES[2])
    assert done.returncode == 0, done.stderr


def test_concurrent_queries_share_the_nodes(sessions) -> None:
    import threading

    remote, _ = sessions
    other = veilql.connect(remote.federation, analyst="oracle")
    results: dict[int, veilql.Result] = {}

    def run(i: int, session: veilql.Session) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LargeEpsilonWarning)
            results[i] = session.sql(QUERIES[1], epsilon=HUGE_EPSILON, delta=0)

    threads = [threading.Thread(target=run, args=(i, s)) for i, s in enumerate((remote, other))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    other.close()
    assert len(results) == 2 and results[0].rows == results[1].rows
