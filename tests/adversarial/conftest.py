"""Fixtures for the attack tests: small federations that differ in exactly one person.

``neighbours(tmp_path)`` builds two copies of a three-party CSV federation (``shop``,
``club``, ``gym``) that are identical except that the second holds one more person, with a
group key no one else has. An attack succeeds when anything the analyst receives, other
than the released noisy values, tells the two apart.
"""

from __future__ import annotations

from pathlib import Path

import pytest

FEDERATION = """\
[federation]
name = "neighbours"
policies = "policies"
default_epsilon = 1.0
default_delta = 1e-06

[[party]]
name = "shop"
address = "local"
connector = "csv:data/shop"

[[party]]
name = "club"
address = "local"
connector = "csv:data/club"

[[party]]
name = "gym"
address = "local"
connector = "csv:data/gym"

[analyst.eve]
epsilon = 1000.0
delta = 1e-03
"""

POLICIES = {
    "shop": """\
[tables.orders]
privacy_unit = "customer_id"
max_rows_per_unit = 2

[tables.orders.columns]
customer_id = { role = "key" }
city = { role = "group" }
amount = { role = "value", bounds = [0, 500] }
""",
    "club": """\
[tables.members]
privacy_unit = "customer_id"

[tables.members.columns]
customer_id = { role = "key" }
level = { role = "value", bounds = [1, 5] }
""",
    "gym": """\
[tables.visits]
privacy_unit = "customer_id"

[tables.visits.columns]
customer_id = { role = "key" }
hours = { role = "value", bounds = [0, 100] }
""",
}

CITIES = ("oslo", "rome", "lima", "kyiv")


def build(root: Path, people: int = 60, extra: bool = False) -> Path:
    """Write the federation under ``root``; ``extra`` adds one person with a new city."""
    rows = {"shop": ["customer_id,city,amount"], "club": ["customer_id,level"],
            "gym": ["customer_id,hours"]}
    for i in range(1, people + 1):
        rows["shop"].append(f"{i},{CITIES[i % len(CITIES)]},{(i * 37) % 500}")
        rows["club"].append(f"{i},{1 + i % 5}")
        rows["gym"].append(f"{i},{(i * 11) % 100}")
    if extra:
        n = people + 1
        rows["shop"].append(f"{n},zz-only-one,499")
        rows["club"].append(f"{n},5")
        rows["gym"].append(f"{n},99")
    tables = {"shop": "orders", "club": "members", "gym": "visits"}
    for party, lines in rows.items():
        folder = root / "data" / party
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{tables[party]}.csv").write_text("\n".join(lines) + "\n")
    (root / "policies").mkdir(parents=True, exist_ok=True)
    for party, text in POLICIES.items():
        (root / "policies" / f"{party}.toml").write_text(text)
    (root / "federation.toml").write_text(FEDERATION)
    return root / "federation.toml"


@pytest.fixture
def neighbours(tmp_path: Path) -> tuple[Path, Path]:
    """Two federation files: without and with the one extra person."""
    return build(tmp_path / "d0"), build(tmp_path / "d1", extra=True)
