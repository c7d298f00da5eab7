"""Attack: get an answer that some party never charged.

Routes:
- network: any two compute parties' output shares reconstruct the answer. Before this was
  fixed, a node that failed to deliver its own output shares aborted its reservation, so a
  client that hung up on one node right after admission still got the answer from the
  other two, with that party uncharged. Now every charged party commits before any output
  share leaves any node.
- embedded, deterministic: the bank's delivery of its own output shares fails (the analyst
  stopped reading that link) while the other two compute parties deliver theirs.
- cancel: Ctrl-C once the parties may have computed keeps the charge, says so, exits 130.
"""

from __future__ import annotations

import _thread
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_network import DEMO, TIMEOUT, Cluster

import veilql
import veilql.engine.node as node_module
from veilql.cli import main
from veilql.engine.node import ANALYST, QueryRequest, participants
from veilql.engine.remote import RemoteAnalyst, analyst_credentials
from veilql.engine.transport.inprocess import InProcessTransport
from veilql.errors import Interrupted, PartyUnavailable, VeilError

CROSS = ("SELECT COUNT(*) AS n FROM bank.loans l JOIN insurer.policies p "
         "ON l.customer_id = p.customer_id WHERE p.open_claim = 1")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    c = Cluster(tmp_path_factory.mktemp("evasion") / "fed")
    try:
        done = c.veil("certs", "init", "-f", str(c.fed))
        assert done.returncode == 0, done.stderr
        for p in ("bank", "payments", "insurer"):
            c.start(p)
        yield c
    finally:
        for p in list(c.procs):
            c.kill(p)


@pytest.mark.network
def test_hanging_up_on_one_node_does_not_give_an_uncharged_answer(cluster: Cluster) -> None:
    session = veilql.connect(cluster.fed, analyst="oracle")
    plan = session.plan(CROSS, epsilon=1.0, delta=0)
    request = QueryRequest(uuid.uuid4().hex, CROSS, "oracle", 1.0, 0.0)
    _, creds = analyst_credentials(session.federation, "oracle")
    victim = "bank"
    pairs = {}
    with RemoteAnalyst(session.federation, participants(plan), request, creds,
                       timeout=TIMEOUT) as me:
        for p in plan.charged:
            me.recv(p, f"{request.query_id}/budget/{p}")
        me._conns[victim].close()  # hang up on the bank once every party admitted the query
        for p in plan.compute:
            if p == victim:
                continue
            try:
                pairs[p] = me.recv_array(p, "release")
            except VeilError:
                pass
    ledger = cluster.ledger(victim)
    settle = time.monotonic() + TIMEOUT + 5
    while ledger.open_reservations() and time.monotonic() < settle:
        time.sleep(0.05)
    mine = [c.status for c in ledger.history() if c.query_id == request.query_id]
    if len(pairs) == 2:
        # The two other nodes released: their shares give the whole answer...
        a, b = (np.asarray(pairs[p]) for p in plan.compute if p != victim)
        assert a.shape == b.shape
        # ...so the bank must have kept its charge.
        assert mine == ["committed"], mine
    else:
        assert mine in (["aborted"], ["committed"]), mine
    assert not ledger.open_reservations()
    session.close()


# Every mode that releases output shares of the compute parties: the join, the sum of the
# parties' own vectors of a UNION ALL, and a LEFT JOIN (the preserved party's own totals).
RELEASING = {
    "join": CROSS,
    "union": ("SELECT COUNT(*) AS n, SUM(v) AS s FROM (SELECT income AS v FROM bank.customers "
              "UNION ALL SELECT premium AS v FROM insurer.policies) AS u"),
    "left_join": ("SELECT COUNT(*) AS n, SUM(c.income) AS s FROM insurer.policies p LEFT JOIN "
                  "bank.customers c ON p.customer_id = c.customer_id"),
}


@pytest.mark.parametrize("sql", list(RELEASING.values()), ids=list(RELEASING))
def test_a_failed_delivery_of_one_partys_shares_does_not_uncharge_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sql: str) -> None:
    fed = _copy_demo(tmp_path)
    delivered: dict[str, bytes] = {}
    real = InProcessTransport.send

    def send(self, to, tag, payload):  # type: ignore[no-untyped-def]
        if to == ANALYST and tag == "release":
            if self.me == "bank":
                raise PartyUnavailable(ANALYST, "the analyst stopped reading")
            delivered[self.me] = payload
        return real(self, to, tag, payload)

    monkeypatch.setattr(InProcessTransport, "send", send)
    with veilql.connect(fed, "alice") as session:
        with pytest.raises(VeilError):
            session.sql(sql, epsilon=0.5, delta=0)
        plan = session.plan(sql, epsilon=0.5, delta=0)
        others = [p for p in plan.compute if p != "bank"]
        # The two other compute parties' shares reached the analyst: the whole answer...
        assert sorted(delivered) == sorted(others)
        # ...so every party the query read must have kept its charge.
        assert sorted(plan.charged) == ["bank", "insurer"]
        for party in plan.charged:
            ledger = session.ledger(party)
            assert ledger is not None and not ledger.open_reservations()
            assert [c.status for c in ledger.history()] == ["committed"], party


def _stall_insurer(monkeypatch: pytest.MonkeyPatch, seconds: float,
                   interrupt: bool = False) -> None:
    """The insurer sleeps ``seconds`` before its secure step, that is after admission;
    with ``interrupt``, Ctrl-C reaches the analyst's main thread as that sleep begins (a
    fixed timer from the start raced the CLI's start-up on a loaded machine)."""
    real = node_module.PartyNode._run_secure

    def slow(self, transport, plan, qid, key):  # type: ignore[no-untyped-def]
        if self.party.name == "insurer":
            if interrupt:
                threading.Timer(0.1, _thread.interrupt_main).start()
            time.sleep(seconds)
        return real(self, transport, plan, qid, key)

    monkeypatch.setattr(node_module.PartyNode, "_run_secure", slow)


def _copy_demo(tmp_path: Path) -> Path:
    import shutil

    root = tmp_path / "fed"
    shutil.copytree(DEMO, root, ignore=shutil.ignore_patterns("ledgers"))
    return root / "federation.toml"


def test_ctrl_c_after_admission_keeps_the_charge_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fed = _copy_demo(tmp_path)
    _stall_insurer(monkeypatch, 1.5, interrupt=True)
    with veilql.connect(fed, "alice") as session:
        with pytest.raises(Interrupted) as err:
            session.sql(CROSS, epsilon=0.5, delta=0)
        assert err.value.exit_code == 130
        assert "charge stands at bank, insurer" in str(err.value)
        for party in ("bank", "insurer"):
            ledger = session.ledger(party)
            assert ledger is not None and not ledger.open_reservations()
            assert [c.status for c in ledger.history()] == ["committed"]


def test_veil_query_exits_130_on_ctrl_c(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fed = _copy_demo(tmp_path)
    _stall_insurer(monkeypatch, 1.5, interrupt=True)
    result = CliRunner().invoke(main, ["query", "-f", str(fed), "--analyst", "alice",
                                       "--epsilon", "0.5", "--delta", "0", CROSS])
    assert result.exit_code == 130, result.output
    assert "veil: error: query cancelled; the charge stands at bank, insurer" in result.output
    assert "Traceback" not in result.output
