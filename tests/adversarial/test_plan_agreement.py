"""Attack: read another party's table statistics from the plan-agreement messages.

Route: a compute party (possibly colluding with the analyst) records what its peers send
while they agree on the plan. Before this was fixed each party sent its raw table versions:
file size and modification time, and for PostgreSQL live-row counts and insert/update/delete
counters, i.e. exact row counts and individual changes. Now a party sends a keyed digest of
each version: equal versions give equal digests (all the join cache needs), nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import veilql
from veilql.engine.transport.inprocess import InProcessTransport

SQL = ("SELECT COUNT(*) AS n FROM shop.orders o JOIN club.members m "
       "ON o.customer_id = m.customer_id")


def _plan_messages(fed: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    sent: list[dict] = []
    real = InProcessTransport.send

    def spy(self, to, tag, payload):  # type: ignore[no-untyped-def]
        if tag.endswith("/plan"):
            sent.append(json.loads(payload))
        return real(self, to, tag, payload)

    monkeypatch.setattr(InProcessTransport, "send", spy)
    with veilql.connect(fed, "eve") as session:
        session.sql(SQL, epsilon=1.0, delta=0)
    monkeypatch.setattr(InProcessTransport, "send", real)
    return sent


def test_plan_agreement_does_not_carry_raw_table_versions(
        neighbours: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    fed = neighbours[0]
    messages = _plan_messages(fed, monkeypatch)
    assert messages
    with veilql.connect(fed, "eve") as session:
        raw = session._node("shop").connector.table_version("orders")
    size = str((fed.parent / "data" / "shop" / "orders.csv").stat().st_size)
    for message in messages:
        text = json.dumps(message)
        assert raw not in text
        # The size must not appear outside the plan text and the keyed digests (a digest is
        # random hex, which may contain any run of digits).
        rest = text.replace(message["plan"], "")
        for digest in message["versions"].values():
            rest = rest.replace(digest, "")
        assert size not in rest
        for digest in message["versions"].values():
            assert len(digest) == 32 and set(digest) <= set("0123456789abcdef")
