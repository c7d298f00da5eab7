"""A party that fails or stalls gives a clear error within the timeout.

CONTRACT: a failure after a party has read data keeps that charge (so that no outcome
can depend on the data for free); a failure before any party read data charges nothing.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

import veilql
import veilql.engine.node as node_module
from veilql.errors import PartyUnavailable, ProtocolError

DEMO = Path(__file__).resolve().parent.parent / "sample_data" / "demo"
SQL = ("SELECT COUNT(*) AS n FROM bank.loans l JOIN insurer.policies p "
       "ON l.customer_id = p.customer_id WHERE l.amount > p.claims_amount")


@pytest.fixture()
def fed(tmp_path: Path) -> Path:
    root = tmp_path / "fed"
    shutil.copytree(DEMO, root, ignore=shutil.ignore_patterns("ledgers"))
    text = (root / "federation.toml").read_text()
    (root / "federation.toml").write_text(
        text.replace('default_delta = 1e-06\n', 'default_delta = 1e-06\ntimeout = 2\n'))
    return root / "federation.toml"


def _untouched(session) -> None:
    for party, b in session.budget().items():
        assert b["epsilon_spent"] == 0.0, party


def _charged(session, parties: tuple[str, ...], epsilon: float) -> None:
    budget = session.budget()
    for party in parties:
        assert budget[party]["epsilon_spent"] == epsilon, party
        ledger = session.ledger(party)
        assert ledger is not None and ledger.verify().ok
        assert [c.status for c in ledger.history()] == ["committed"], party
        assert not ledger.open_reservations(), party


def test_a_stalled_party_times_out_and_the_charge_stands(fed: Path, monkeypatch) -> None:
    real = node_module.PartyNode._run_secure

    def stall(self, transport, plan, qid, key):
        if self.party.name == "insurer":
            time.sleep(6)  # silent for longer than the 2 s timeout
            raise RuntimeError("woke up too late")
        return real(self, transport, plan, qid, key)

    monkeypatch.setattr(node_module.PartyNode, "_run_secure", stall)
    with veilql.connect(fed, "alice") as session:
        start = time.monotonic()
        with pytest.raises(ProtocolError) as err:
            session.sql(SQL, epsilon=1.0)
        assert time.monotonic() - start < 15
        assert "insurer" in str(err.value)
        assert "charge stands" in (err.value.hint or "")
        _charged(session, ("bank", "insurer"), 1.0)


def test_a_failing_party_is_named_its_text_kept_and_the_charge_stands(
        fed: Path, monkeypatch) -> None:
    def broken(self, transport, plan, qid):
        raise ProtocolError("the insurer's engine failed", "ask the insurer")

    real = node_module.PartyNode._local_columns

    def local(self, transport, plan, qid):
        if self.party.name == "insurer":
            return broken(self, transport, plan, qid)
        return real(self, transport, plan, qid)

    monkeypatch.setattr(node_module.PartyNode, "_local_columns", local)
    with veilql.connect(fed, "alice") as session:
        with pytest.raises(ProtocolError, match="failed at party 'insurer'") as err:
            session.sql(SQL, epsilon=1.0)
        # The party's own text stays in its log; the analyst sees a generic error.
        assert "engine failed" not in str(err.value) + str(err.value.hint)
        _charged(session, ("bank", "insurer"), 1.0)
        log = session._node("insurer").state_dir() / "insurer.log"
        assert "the insurer's engine failed" in log.read_text()


def test_unavailable_party_error_names_it(fed: Path, monkeypatch) -> None:
    def vanish(self, transport, request, progress=None):
        if self.party.name == "payments":
            raise PartyUnavailable("payments", "party 'payments' is unavailable: crashed")
        return real(self, transport, request, progress)

    real = node_module.PartyNode.serve
    monkeypatch.setattr(node_module.PartyNode, "serve", vanish)
    sql = ("SELECT COUNT(*) FROM bank.loans l JOIN payments.accounts a "
           "ON l.customer_id = a.customer_id")
    with veilql.connect(fed, "alice") as session:
        with pytest.raises(PartyUnavailable, match="payments"):
            session.sql(sql, epsilon=1.0)
        _untouched(session)
