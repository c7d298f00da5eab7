"""Attack: a compute party colluding with the analyst watches the messages of a sum of two
parties' parts (``SUM(a.x + p.premium)``), with and without one person's premium NULL.

Since this session such a sum runs over the rows where every part is NOT NULL, each party
sharing a 0/1 atom per row for its part: the atom's value depends on the person, so its
messages must not. Two federations that differ only in that one premium must give every
compute party the same multiset of (receiver, sender, payload length).
"""

from __future__ import annotations

from pathlib import Path

from oracle import oracle_federation
from test_outer_join import DEMO, _lengths

SQL = ("SELECT SUM(a.monthly_txn_amount + p.premium) AS s, AVG(a.monthly_txn_amount + "
       "p.premium) AS m FROM payments.accounts a JOIN insurer.policies p "
       "ON a.customer_id = p.customer_id")


def _blank_one_premium(root: Path, blank: bool) -> Path:
    fed = oracle_federation(DEMO, root)
    csv = root / "data" / "insurer" / "policies.csv"
    lines = csv.read_text().splitlines()
    col = lines[0].split(",").index("premium")
    if blank:
        cells = lines[1].split(",")
        cells[col] = ""
        lines[1] = ",".join(cells)
    csv.write_text("\n".join(lines) + "\n")
    return fed


def test_a_null_part_does_not_change_message_lengths(tmp_path: Path) -> None:
    a = _lengths(_blank_one_premium(tmp_path / "a", False), tmp_path / "ta", SQL)
    b = _lengths(_blank_one_premium(tmp_path / "b", True), tmp_path / "tb", SQL)
    assert a and a == b
