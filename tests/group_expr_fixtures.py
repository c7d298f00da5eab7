"""A small three-party federation shaped like a peer's benchmark tables: ``alice.alice_tbl_0``,
``bob.bob_tbl_0``, ``carol.carol_tbl_0``, joined on the privacy unit ``join_int_0``, each with
a group column ``groupby_int_0`` of four declared values (some rows NULL), ``groupby_str_0``
of two, a value column ``aggregate_int_0``, a value column ``encrypt_int_0`` with few values
(for COUNT(DISTINCT)) and ``wide_int_0`` declared over 1,501 values holding three (a large
COUNT(DISTINCT) whose values repeat across cells). ``build(root, people)`` writes the data
and policies under ``root`` and returns the federation file; the data is deterministic. Bob
keeps up to two rows per person.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

PARTIES = ("alice", "bob", "carol")
VALUES = (1, 2, 3, 4)

FEDERATION = """\
[federation]
name = "groupexpr"
policies = "policies"
default_epsilon = 1.0
default_delta = 1e-6
""" + "".join(f"""
[[party]]
name = "{p}"
address = "local"
connector = "duckdb:data/{p}.duckdb"
""" for p in PARTIES) + """
[analyst.oracle]
epsilon = 1e15
delta = 0.5
"""


def _policy(party: str, rows: int) -> str:
    return f"""\
[tables.{party}_tbl_0]
privacy_unit = "join_int_0"
max_rows_per_unit = {rows}

[tables.{party}_tbl_0.columns]
join_int_0 = {{ role = "key" }}
groupby_int_0 = {{ role = "group", values = {list(VALUES)!r} }}
groupby_str_0 = {{ role = "group", values = ["u", "v"] }}
encrypt_int_0 = {{ role = "value", bounds = [0, 9] }}
aggregate_int_0 = {{ role = "value", bounds = [0, 100] }}
wide_int_0 = {{ role = "value", bounds = [0, 1500] }}
"""


def _rand(i: int, k: int) -> int:
    """A deterministic pseudo-random number in [0, k)."""
    return (i * 2654435761 + 97) % 1000003 % k


def build(root: Path, people: int = 60, *, drop: int | None = None) -> Path:
    """Write the federation under ``root`` (without person ``drop`` at bob if given)."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "policies").mkdir(exist_ok=True)
    (root / "federation.toml").write_text(FEDERATION)
    for k, party in enumerate(PARTIES):
        rows_per = 2 if party == "bob" else 1
        (root / "policies" / f"{party}.toml").write_text(_policy(party, rows_per))
        rows = []
        for i in range(1, people + 1):
            if _rand(i * (k + 3), 9) == 0 or (party == "bob" and i == drop):
                continue  # not every person is at every party
            for j in range(1 + (i % 2 if party == "bob" else 0)):
                r = i * 31 + j * 7 + k * 101
                g = None if _rand(r, 11) == 0 else VALUES[_rand(r * 3, len(VALUES))]
                rows.append((i, g, ("u", "v")[_rand(r * 5, 2)], _rand(r * 7, 10),
                             None if _rand(r, 13) == 0 else _rand(r * 11, 101),
                             700 * _rand(r * 17, 3)))
        path = root / "data" / f"{party}.duckdb"
        path.unlink(missing_ok=True)
        con = duckdb.connect(str(path))
        try:
            con.execute(f"CREATE TABLE {party}_tbl_0 (join_int_0 BIGINT, groupby_int_0 INTEGER, "
                        "groupby_str_0 VARCHAR, encrypt_int_0 INTEGER, aggregate_int_0 INTEGER, "
                        "wide_int_0 INTEGER)")
            con.executemany(f"INSERT INTO {party}_tbl_0 VALUES (?, ?, ?, ?, ?, ?)", rows)
        finally:
            con.close()
    return root / "federation.toml"
