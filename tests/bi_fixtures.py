"""A three-party federation shaped like the SQL analysts write against: the BI fixture.

Unlike the bundled sample it has group columns of the same name at every party
(``groupby_string_0``), a private INTEGER group key, DATE group columns (with and without
declared values), nullable value columns, a second table at one party joined on the unit,
a table with a different unit name, and dimension tables (no personal data) joined on
declared foreign keys: ``beta.merchants`` (another party's, sent to the fact party) and
``alpha.branches`` (the fact party's own). ``build(root)`` writes the data and the policies
under ``root`` and returns the federation file; the data is deterministic.

Parties: ``alpha`` (DuckDB: ``ta``, ``ta2``, ``branches``), ``beta`` (CSV: ``tb``,
``merchants``), ``gamma`` (Parquet: ``tc``). People are ``uid`` 1..N; each party holds most
of them. ``ta.merchant_id`` references ``beta.merchants.merchant_id`` (some rows NULL, some
without a merchant), ``ta2.branch_id`` references ``alpha.branches.branch_id``.
"""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

PEOPLE = 400
MERCHANTS = 24
STRINGS = ("x", "y", "z")
DATES = tuple(dt.date(2024, m, d).isoformat() for m in (1, 2, 3, 6) for d in (1, 15))

FEDERATION = """\
[federation]
name = "bi"
policies = "policies"
default_epsilon = 1.0
default_delta = 1e-6

[[party]]
name = "alpha"
address = "local"
connector = "duckdb:data/alpha.duckdb"

[[party]]
name = "beta"
address = "local"
connector = "csv:data/beta"

[[party]]
name = "gamma"
address = "local"
connector = "parquet:data/gamma"

[analyst.oracle]
epsilon = 1e15
delta = 0.5
"""

ALPHA = f"""\
[tables.ta]
privacy_unit = "uid"
max_rows_per_unit = 2

[tables.ta.columns]
uid = {{ role = "key" }}
groupby_string_0 = {{ role = "group", values = {list(STRINGS)!r} }}
groupby_int_0 = {{ role = "group" }}
day = {{ role = "group", values = {list(DATES)!r} }}
visits = {{ role = "value", bounds = [0, 50] }}
score = {{ role = "value", bounds = [1, 10], decimals = 2 }}
spend = {{ role = "value", bounds = [-100, 1000], decimals = 2 }}
merchant_id = {{ role = "key", references = "beta.merchants.merchant_id" }}

[tables.ta2]
privacy_unit = "uid"
max_rows_per_unit = 1

[tables.ta2.columns]
uid = {{ role = "key" }}
groupby_string_0 = {{ role = "group", values = ["x", "y"] }}
tenure = {{ role = "value", bounds = [0, 40] }}
branch_id = {{ role = "key", references = "alpha.branches.branch_id" }}

[tables.branches]
dimension = true
max_rows = 100

[tables.branches.columns]
branch_id = {{ role = "key" }}
kind = {{ role = "group", values = ["city", "rural"] }}
staff = {{ role = "value", bounds = [1, 50] }}
"""

BETA = """\
[tables.tb]
privacy_unit = "uid"
max_rows_per_unit = 1

[tables.tb.columns]
uid = { role = "key" }
groupby_string_0 = { role = "group", values = ["x", "y", "w"] }
city = { role = "group" }
fills = { role = "value", bounds = [0, 20] }
rate = { role = "value", bounds = [0, 1], decimals = 3 }

[tables.merchants]
dimension = true
max_rows = 1000

[tables.merchants.columns]
merchant_id = { role = "key" }
category = { role = "group", values = ["food", "travel", "fuel", "retail"] }
mcity = { role = "group" }
fee = { role = "value", bounds = [0, 5], decimals = 2 }
"""

GAMMA = """\
[tables.tc]
privacy_unit = "person"
max_rows_per_unit = 1

[tables.tc.columns]
person = { role = "key" }
groupby_string_0 = { role = "group" }
joined = { role = "group" }
level = { role = "value", bounds = [1, 5] }
"""


def _rand(i: int, k: int) -> int:
    """A deterministic pseudo-random number in [0, k)."""
    return (i * 2654435761 + 97) % 1000003 % k


def build(root: Path) -> Path:
    """Write the BI federation under ``root``; return its federation.toml."""
    (root / "data" / "beta").mkdir(parents=True, exist_ok=True)
    (root / "data" / "gamma").mkdir(parents=True, exist_ok=True)
    (root / "policies").mkdir(exist_ok=True)
    (root / "federation.toml").write_text(FEDERATION)
    (root / "policies" / "alpha.toml").write_text(ALPHA)
    (root / "policies" / "beta.toml").write_text(BETA)
    (root / "policies" / "gamma.toml").write_text(GAMMA)
    _alpha(root / "data" / "alpha.duckdb")
    _beta(root / "data" / "beta" / "tb.csv")
    _merchants(root / "data" / "beta" / "merchants.csv")
    _gamma(root / "data" / "gamma" / "tc.parquet")
    return root / "federation.toml"


def _alpha(path: Path) -> None:
    path.unlink(missing_ok=True)
    con = duckdb.connect(str(path))
    try:
        con.execute("CREATE TABLE ta (uid BIGINT, groupby_string_0 VARCHAR, groupby_int_0 "
                    "INTEGER, day DATE, visits INTEGER, score DECIMAL(6,2), spend DOUBLE, "
                    "merchant_id BIGINT)")
        rows = []
        for i in range(1, PEOPLE + 1):
            if _rand(i, 10) == 0:
                continue  # not every person is at alpha
            for j in range(1 + (i % 2)):  # one or two rows, never more than the bound
                r = i * 7 + j
                rows.append((
                    i, STRINGS[_rand(r, 3)], (1000, 200, 30)[_rand(r, 3)],
                    DATES[_rand(r + 1, len(DATES))], _rand(r, 51),
                    None if _rand(r, 13) == 0 else round(1 + _rand(r, 900) / 100, 2),
                    None if _rand(r, 11) == 0 else round(-100 + _rand(r, 110000) / 100, 2),
                    None if _rand(r, 19) == 0 else 1 + _rand(r * 3, MERCHANTS + 2)))
        con.executemany("INSERT INTO ta VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        con.execute("CREATE TABLE ta2 (uid BIGINT, groupby_string_0 VARCHAR, tenure INTEGER, "
                    "branch_id INTEGER)")
        con.executemany("INSERT INTO ta2 VALUES (?, ?, ?, ?)", [
            (i, ("x", "y")[_rand(i * 3, 2)], _rand(i, 41), 1 + _rand(i * 5, 6))
            for i in range(1, PEOPLE + 1) if _rand(i, 7) != 0])
        con.execute("CREATE TABLE branches (branch_id INTEGER, kind VARCHAR, staff INTEGER)")
        con.executemany("INSERT INTO branches VALUES (?, ?, ?)", [
            (b, ("city", "rural")[b % 2], 3 + 7 * b) for b in range(1, 6)])
    finally:
        con.close()


def _beta(path: Path) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["uid", "groupby_string_0", "city", "fills", "rate"])
        for i in range(1, PEOPLE + 1):
            if _rand(i * 5, 8) == 0:
                continue
            w.writerow([i, ("x", "y", "w")[_rand(i * 11, 3)],
                        ("oslo", "rome", "lima", "kyiv")[_rand(i * 13, 4)],
                        "" if _rand(i, 17) == 0 else _rand(i * 3, 21),
                        f"{_rand(i * 19, 1001) / 1000:.3f}"])


def _merchants(path: Path) -> None:
    """Merchants 1..MERCHANTS (ids MERCHANTS + 1 and + 2 appear in ta without a merchant)."""
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["merchant_id", "category", "mcity", "fee"])
        for m in range(1, MERCHANTS + 1):
            w.writerow([m, ("food", "travel", "fuel", "retail")[_rand(m, 4)],
                        ("oslo", "rome", "lima")[_rand(m * 11, 3)],
                        f"{_rand(m * 13, 501) / 100:.2f}"])


def _gamma(path: Path) -> None:
    people = [i for i in range(1, PEOPLE + 1) if _rand(i * 7, 9) != 0]
    pq.write_table(pa.table({
        "person": pa.array(people, pa.int64()),
        "groupby_string_0": [("x", "y", "q", "r")[_rand(i * 17, 4)] for i in people],
        "joined": pa.array([dt.date(2020 + _rand(i, 4), 1 + _rand(i * 3, 12), 1)
                            for i in people], pa.date32()),
        "level": pa.array([1 + _rand(i * 23, 5) for i in people], pa.int32()),
    }), path)


if __name__ == "__main__":
    import sys

    print(build(Path(sys.argv[1] if len(sys.argv) > 1 else "bi_federation")))
