"""Attack: tell neighbouring federations apart through partition-selection metadata.

For a GROUP BY over keys without a public domain, the owner of the keys tells the analyst
which cells were released. Before this was fixed it also sent the number of distinct keys
and each released key's rank among all keys: adding one person with a new key changed both,
so the analyst told the neighbours apart with certainty, whatever epsilon said.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import veilql
import veilql.engine.session as session_module

CROSS = ("SELECT o.city, COUNT(*) AS n FROM shop.orders o JOIN club.members m "
         "ON o.customer_id = m.customer_id GROUP BY o.city")
LOCAL = "SELECT city, COUNT(*) AS n FROM shop.orders GROUP BY city"


def _cells_message(fed: Path, sql: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """What the owner of the keys sent the analyst about the released cells."""
    seen: list[Any] = []
    real = session_module.build_result

    def spy(plan, noisy, budget, info=None):  # type: ignore[no-untyped-def]
        seen.append(info)
        return real(plan, noisy, budget, info)

    monkeypatch.setattr(session_module, "build_result", spy)
    with veilql.connect(fed, "eve") as session:
        session.sql(sql, epsilon=50.0, delta=1e-4)
    assert len(seen) == 1
    return seen[0]


@pytest.mark.parametrize("sql", [CROSS, LOCAL], ids=["cross-party", "one-party"])
def test_new_key_of_one_person_does_not_change_the_cells_message(
        neighbours: tuple[Path, Path], sql: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Route: the extra person's key is never released (one person is far below the
    # threshold), so a message that differs between the neighbours leaks that person.
    without, with_extra = (_cells_message(fed, sql, monkeypatch) for fed in neighbours)
    assert without == with_extra
    assert "zz-only-one" not in repr(with_extra)


def test_cells_message_carries_only_released_labels(
        neighbours: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    # Route: any field beyond the released labels (counts, ranks, sizes) is metadata a
    # person can move; the message must be exactly one label list per released cell.
    info = _cells_message(neighbours[1], CROSS, monkeypatch)
    assert set(info) == {"cells"}
    assert all(isinstance(cell, list) and len(cell) == 1 for cell in info["cells"])
    assert sorted(c[0] for c in info["cells"]) == ["kyiv", "lima", "oslo", "rome"]
