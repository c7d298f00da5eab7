"""The sample federation: generator determinism, realism of the data, policy files, demo."""

from __future__ import annotations

import doctest
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import duckdb
import pytest

import sample_data
from sample_data import federation_files, generate, population, schema, storage
from sample_data.generate import generate as run_generate
from sample_data.schema import PARTY_TABLES, TABLES

DEMO = sample_data.DEMO_DIR
DEMO_PEOPLE = 20_000


@pytest.fixture(scope="module")
def con() -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the committed demo's four tables as views."""
    c = duckdb.connect()
    c.execute(f"ATTACH '{DEMO / 'data' / 'bank.duckdb'}' AS bank (READ_ONLY)")
    c.execute("CREATE VIEW customers AS SELECT * FROM bank.customers")
    c.execute("CREATE VIEW loans AS SELECT * FROM bank.loans")
    c.execute(f"CREATE VIEW accounts AS SELECT * FROM "
              f"read_parquet('{DEMO / 'data' / 'payments' / 'accounts.parquet'}')")
    c.execute(f"CREATE VIEW policies AS SELECT * FROM "
              f"read_csv('{DEMO / 'data' / 'insurer' / 'policies.csv'}')")
    yield c
    c.close()


def _one(con: duckdb.DuckDBPyConnection, sql: str) -> tuple:
    row = con.execute(sql).fetchone()
    assert row is not None
    return row


# --- determinism ---------------------------------------------------------------------


def test_same_seed_same_tables(tmp_path: Path) -> None:
    a = run_generate(tmp_path / "a", people=3000, seed=11)
    b = run_generate(tmp_path / "b", people=3000, seed=11)
    assert a.rows == b.rows
    da, db = storage.table_digests(tmp_path / "a"), storage.table_digests(tmp_path / "b")
    assert da == db
    assert da["bank.customers"][0] == a.rows["bank.customers"]
    assert (tmp_path / "a" / "federation.toml").read_bytes() == (
        tmp_path / "b" / "federation.toml").read_bytes()


def test_other_seed_other_tables(tmp_path: Path) -> None:
    run_generate(tmp_path / "a", people=3000, seed=11)
    run_generate(tmp_path / "b", people=3000, seed=12)
    da, db = storage.table_digests(tmp_path / "a"), storage.table_digests(tmp_path / "b")
    assert all(da[t][1] != db[t][1] for t in da)


def test_committed_demo_equals_fresh_generation(tmp_path: Path) -> None:
    run_generate(tmp_path, people=DEMO_PEOPLE, seed=generate.DEFAULT_SEED)
    fresh = storage.table_digests(tmp_path)
    assert storage.table_digests(DEMO) == fresh
    assert fresh["bank.customers"][0] > 10_000
    for rel in ["federation.toml", "policies/bank.toml", "policies/payments.toml",
                "policies/insurer.toml"]:
        assert (DEMO / rel).read_text() == (tmp_path / rel).read_text(), rel


def test_committed_demo_is_small() -> None:
    total = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert total < 5_000_000


# --- the CLI ---------------------------------------------------------------------------


def test_cli_refuses_to_overwrite_without_force(tmp_path: Path, capsys) -> None:
    assert generate.main(["--people", "200", "--out", str(tmp_path)]) == 0
    before = storage.table_digests(tmp_path)
    with pytest.raises(SystemExit) as e:
        generate.main(["--people", "300", "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err
    assert storage.table_digests(tmp_path) == before
    (tmp_path / "keep.txt").write_text("mine")
    assert generate.main(["--people", "300", "--out", str(tmp_path), "--force"]) == 0
    assert storage.table_digests(tmp_path) != before
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_cli_rejects_bad_people(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        generate.main(["--people", "0", "--out", str(tmp_path)])
    assert e.value.code == 2
    assert not (tmp_path / "federation.toml").exists()


def test_module_entry_point(tmp_path: Path) -> None:
    out = tmp_path / "fed"
    proc = subprocess.run(
        [sys.executable, "-m", "sample_data.generate", "--people", "500", "--out", str(out),
         "--seed", "3"],
        capture_output=True, text=True, check=False, cwd=Path(__file__).parents[1],
    )
    assert proc.returncode == 0, proc.stderr
    assert "bank.loans:" in proc.stdout
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "data/bank.duckdb", "data/insurer/policies.csv", "data/payments/accounts.parquet",
        "federation.toml", "policies/bank.toml", "policies/insurer.toml",
        "policies/payments.toml",
    ]


# --- realism of the demo data -------------------------------------------------------------


def test_party_shares_and_overlap(con: duckdb.DuckDBPyConnection) -> None:
    bank, pay, ins, all3 = _one(con, """
        SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM accounts),
               (SELECT count(*) FROM policies),
               (SELECT count(*) FROM customers JOIN accounts USING (customer_id)
                                              JOIN policies USING (customer_id))""")
    assert abs(bank / DEMO_PEOPLE - 0.70) < 0.015
    assert abs(pay / DEMO_PEOPLE - 0.60) < 0.015
    assert abs(ins / DEMO_PEOPLE - 0.50) < 0.015
    # Correlated membership: well above the 21% of independent membership, below 30%.
    assert 0.23 < all3 / DEMO_PEOPLE < 0.30


def test_keys_unique_and_loans_bounded(con: duckdb.DuckDBPyConnection) -> None:
    for t in ["customers", "accounts", "policies"]:
        n, distinct = _one(con, f"SELECT count(*), count(DISTINCT customer_id) FROM {t}")
        assert n == distinct, t
    max_loans, orphans, loan_ids = _one(con, """
        SELECT max(k), (SELECT count(*) FROM loans ANTI JOIN customers USING (customer_id)),
               (SELECT count(DISTINCT loan_id) = count(*) FROM loans)
        FROM (SELECT count(*) AS k FROM loans GROUP BY customer_id)""")
    assert max_loans == 3
    assert orphans == 0
    assert loan_ids


def test_default_rate_decreases_with_income(con: duckdb.DuckDBPyConnection) -> None:
    rates = [r for (r,) in con.execute("""
        SELECT avg(defaulted) FROM (
            SELECT l.defaulted, ntile(5) OVER (ORDER BY c.income) AS q
            FROM loans l JOIN customers c USING (customer_id))
        GROUP BY q ORDER BY q""").fetchall()]
    assert len(rates) == 5
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False)), rates
    assert rates[0] > 3 * rates[-1]
    overall = _one(con, "SELECT avg(defaulted) FROM loans")[0]
    assert 0.04 < overall < 0.12


def test_default_rate_decreases_with_payment_activity(con: duckdb.DuckDBPyConnection) -> None:
    low, high = _one(con, """
        SELECT avg(defaulted) FILTER (WHERE a.monthly_txn_count < 10),
               avg(defaulted) FILTER (WHERE a.monthly_txn_count > 40)
        FROM loans l JOIN accounts a USING (customer_id)""")
    assert low > 2 * high


def test_claims_follow_age_and_open_claim(con: duckdb.DuckDBPyConnection) -> None:
    young, old = _one(con, """
        SELECT avg(open_claim) FILTER (WHERE c.age < 35), avg(open_claim) FILTER (WHERE c.age >= 60)
        FROM policies p JOIN customers c USING (customer_id)""")
    assert old > 1.5 * young
    bad = _one(con, """SELECT count(*) FROM policies
                       WHERE (open_claim = 0) <> (claims_amount = 0)""")[0]
    assert bad == 0


def test_amounts_are_skewed(con: duckdb.DuckDBPyConnection) -> None:
    for table, col in [("loans", "amount"), ("customers", "income"),
                       ("policies", "claims_amount"), ("accounts", "monthly_txn_amount")]:
        mean, median = _one(con, f"SELECT avg({col}), median({col}) FROM {table} "
                                 f"WHERE {col} > 0")
        assert mean > 1.1 * float(median), (table, col)


def test_income_depends_on_region(con: duckdb.DuckDBPyConnection) -> None:
    med = dict(con.execute(
        "SELECT region, median(income)::DOUBLE FROM customers GROUP BY region").fetchall())
    assert med["central"] > 1.3 * med["south"]


def test_private_group_has_small_groups(con: duckdb.DuckDBPyConnection) -> None:
    smallest, largest, n = _one(con, """SELECT min(k), max(k), count(*) FROM
        (SELECT count(*) AS k FROM customers GROUP BY branch)""")
    assert n == sum(population._BRANCHES_PER_REGION)
    assert smallest < 50 < 500 < largest


# --- policies against the data --------------------------------------------------------------


def _policy(party: str) -> dict:
    return tomllib.loads((DEMO / "policies" / f"{party}.toml").read_text())


def _demo_columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    return {r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()}


def test_policies_name_only_existing_columns(con: duckdb.DuckDBPyConnection) -> None:
    for party, specs in PARTY_TABLES.items():
        tables = _policy(party)["tables"]
        assert set(tables) == {t.name for t in specs}
        for name, t in tables.items():
            cols = _demo_columns(con, name)
            assert set(t["columns"]) <= cols, (party, name)
            assert t["privacy_unit"] in t["columns"]
            assert t["columns"][t["privacy_unit"]] == {"role": "key"}
            assert t["join_reveal"] in {"none", "intersection"}
            for c in t["columns"].values():
                assert c["role"] in {"key", "group", "value"}
                assert ("bounds" in c) == (c["role"] == "value")
                assert ("decimals" in c) == (c["role"] == "value")
                assert "values" not in c or c["role"] == "group"


def test_policy_settings() -> None:
    bank = _policy("bank")["tables"]
    assert bank["loans"]["max_rows_per_unit"] == 3
    assert bank["customers"]["max_rows_per_unit"] == 1
    assert "loan_id" not in bank["loans"]["columns"]  # fail closed
    assert "issued_on" not in bank["loans"]["columns"]
    assert bank["loans"]["columns"]["defaulted"] == {"role": "value", "bounds": [0, 1],
                                                    "decimals": 0}
    assert bank["customers"]["columns"]["branch"] == {"role": "group"}
    assert bank["loans"]["columns"]["amount"]["decimals"] == 2
    assert _policy("insurer")["tables"]["policies"]["columns"]["open_claim"]["bounds"] == [0, 1]


def test_data_within_public_bounds_and_domains(con: duckdb.DuckDBPyConnection) -> None:
    for spec in TABLES:
        for c in spec.columns:
            if c.bounds is not None:
                lo, hi = _one(con, f"SELECT min({c.name}), max({c.name}) FROM {spec.name}")
                assert c.bounds[0] <= lo and hi <= c.bounds[1], (spec.name, c.name)
            if c.values is not None:
                seen = {v for (v,) in con.execute(
                    f"SELECT DISTINCT {c.name} FROM {spec.name}").fetchall()}
                assert seen == set(c.values), (spec.name, c.name)


def test_federation_file() -> None:
    fed = tomllib.loads(sample_data.DEMO_FEDERATION.read_text())
    assert fed["federation"] == {"name": "demo-consortium", "policies": "policies",
                                 "default_epsilon": 1.0, "default_delta": 1e-6}
    assert [p["name"] for p in fed["party"]] == ["bank", "payments", "insurer"]
    assert all(p["address"] == "local" for p in fed["party"])
    for p in fed["party"]:
        kind, rel = p["connector"].split(":", 1)
        assert kind in {"duckdb", "parquet", "csv"}
        assert (DEMO / rel).exists(), p["connector"]
    assert fed["analyst"] == {"alice": {"epsilon": 10.0, "delta": 1e-5},
                              "bob": {"epsilon": 3.0, "delta": 1e-6}}


def test_money_columns_are_exact_decimals(con: duckdb.DuckDBPyConnection) -> None:
    types = dict(con.execute("SELECT column_name, data_type FROM duckdb_columns() "
                             "WHERE database_name = 'bank'").fetchall())
    assert types["income"] == types["amount"] == "DECIMAL(12,2)"
    # A value stored from cents reads back exactly (no binary float residue).
    assert _one(con, "SELECT count(*) FROM customers WHERE income * 100 <> round(income * 100)"
                )[0] == 0


# --- doctests of the package (the suite's --doctest-modules covers veilql/ only) ---------


@pytest.mark.parametrize("module", [sample_data, generate, population, schema, storage,
                                    federation_files])
def test_doctests(module) -> None:
    result = doctest.testmod(module)
    assert result.failed == 0


@pytest.mark.slow
def test_million_people_well_under_a_minute(tmp_path: Path) -> None:
    start = time.perf_counter()
    result = run_generate(tmp_path, people=1_000_000)
    assert time.perf_counter() - start < 30
    assert 650_000 < result.rows["bank.customers"] < 750_000
