"""Attack: use a party's failure as a free oracle on its data.

Route: the analyst crafts a query that makes a party's engine fail only when some person's
row holds a certain value. Before this was fixed the engine's own text (with the row's
value) reached the analyst word for word, and a failure after reading data gave the charge
back: a free, exact answer. Now a failure after the parties admitted the query keeps the
charge at every party, and the analyst gets a generic error naming the party and the query.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import veilql
import veilql.engine.node as node_module
from veilql.errors import VeilError

SQL = ("SELECT COUNT(*) AS n FROM shop.orders o JOIN club.members m "
       "ON o.customer_id = m.customer_id")
SECRET = "zz-only-one"


def _arm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make shop's engine fail, quoting a row, whenever the extra person is in its data."""
    real = node_module.fetch

    def fetch(step, connector, seed):  # type: ignore[no-untyped-def]
        rows = real(step, connector, seed)
        if step.party != "shop":
            return rows
        table = connector.run("SELECT city FROM orders")
        if SECRET in table.column("city").to_pylist():
            raise RuntimeError(f"Could not convert string '{SECRET}' to INT32")
        return rows

    monkeypatch.setattr(node_module, "fetch", fetch)


def _spent(session: veilql.Session) -> dict[str, float]:
    return {p: b["epsilon_spent"] for p, b in session.budget().items()}


def test_engine_text_of_a_failing_party_never_reaches_the_analyst(
        neighbours: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    _arm(monkeypatch)
    with veilql.connect(neighbours[1], "eve") as session, \
            pytest.raises(VeilError) as err:
        session.sql(SQL, epsilon=1.0, delta=0)
    said = f"{err.value} {err.value.hint}"
    assert SECRET not in said and "INT32" not in said
    assert "shop" in said


def test_a_failure_after_reading_costs_what_a_release_costs(
        neighbours: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    # The oracle "does it fail?" must not be free: on the neighbour where it fails, every
    # charged party keeps exactly the charge the other neighbour's release cost.
    _arm(monkeypatch)
    spent = []
    for fed in neighbours:
        with veilql.connect(fed, "eve") as session:
            try:
                session.sql(SQL, epsilon=1.0, delta=0)
            except VeilError:
                pass
            spent.append(_spent(session))
            for party in ("shop", "club"):
                ledger = session.ledger(party)
                assert ledger is not None and not ledger.open_reservations()
    assert spent[0] == spent[1]
    assert spent[0]["shop"] == spent[0]["club"] == 1.0
