"""A party that fails or stalls gives a clear error within the timeout; nothing is charged."""

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


def test_a_stalled_party_times_out_and_nothing_is_charged(fed: Path, monkeypatch) -> None:
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
        _untouched(session)


def test_a_failing_party_is_named_and_reservations_are_aborted(fed: Path, monkeypatch) -> None:
    def broken(self, transport, plan, qid):
        raise ProtocolError("the insurer's engine failed", "ask the insurer")

    real = node_module.PartyNode._local_columns

    def local(self, transport, plan, qid):
        if self.party.name == "insurer":
            return broken(self, transport, plan, qid)
        return real(self, transport, plan, qid)

    monkeypatch.setattr(node_module.PartyNode, "_local_columns", local)
    with veilql.connect(fed, "alice") as session:
        with pytest.raises(ProtocolError, match="insurer's engine failed"):
            session.sql(SQL, epsilon=1.0)
        _untouched(session)
        ledger = session.ledger("bank")
        assert ledger is not None and ledger.verify().ok
        assert [c.status for c in ledger.history()] == ["aborted"]


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
