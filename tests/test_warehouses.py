"""Parties in their warehouses: a federation with one party on each of PostgreSQL (the
bank), MySQL (payments), Spark (the insurer) and DuckDB (a fourth, data-only party, the
telco) answers every oracle query as plain DuckDB does on the union of the tables.

The warehouses are loaded from the demo's files (bank and payments with their DECIMAL
money, the insurer's CSV DOUBLEs kept as DOUBLE in Spark); the union is built from the
same files by DuckDB, so a difference in any engine's local SQL (rounding, hashing,
division, types) shows as a different answer. Skipped, with the reason, when the
PostgreSQL or MariaDB server, pyspark or Java is not there.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
import test_oracle
from mysql_fixtures import database_url, fresh_database
from mysql_fixtures import load_party as load_mysql
from mysql_fixtures import server_url as mysql_url
from oracle import oracle_federation, union_connection
from pg_fixtures import fresh_schema
from pg_fixtures import load_party as load_postgres
from pg_fixtures import server_url as postgres_url
from spark_fixtures import fresh_database as fresh_spark_database
from spark_fixtures import load_party as load_spark
from spark_fixtures import spark_session, spec, why_not

import veilql
from veilql.engine.dp import LargeEpsilonWarning

pytestmark = pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas")

PG_URL, PG_WHY = postgres_url()
MY_URL, MY_WHY = mysql_url()
SPARK_WHY = why_not()
for _why in (PG_WHY, MY_WHY, SPARK_WHY):
    if _why:
        pytest.skip(_why, allow_module_level=True)
assert PG_URL is not None and MY_URL is not None

DEMO = test_oracle.DEMO

TELCO_POLICY = """\
[tables.lines]
privacy_unit = "customer_id"
max_rows_per_unit = 1

[tables.lines.columns]
customer_id = { role = "key" }
plan = { role = "group", values = ["basic", "plus", "max"] }
monthly_fee = { role = "value", bounds = [0, 200], decimals = 2 }
"""

TELCO_PARTY = """
[[party]]
name = "telco"
address = "local"
connector = "duckdb:data/telco.duckdb"
"""

# Queries over the fourth party (the oracle list covers the other three).
TELCO_QUERIES = [
    "SELECT plan, COUNT(*) AS n, AVG(monthly_fee) AS fee FROM telco.lines GROUP BY plan",
    "SELECT l.plan, COUNT(*) AS n, SUM(p.premium) AS prem FROM telco.lines l "
    "JOIN insurer.policies p ON l.customer_id = p.customer_id GROUP BY l.plan",
    "SELECT a.segment, COUNT(*) AS n, AVG(l.monthly_fee) AS fee FROM payments.accounts a "
    "JOIN telco.lines l ON a.customer_id = l.customer_id WHERE l.monthly_fee > 20 "
    "GROUP BY a.segment",
    "SELECT c.region, COUNT(*) AS n, SUM(l.monthly_fee) AS fees FROM bank.customers c "
    "JOIN payments.accounts a ON a.customer_id = c.customer_id "
    "JOIN insurer.policies p ON p.customer_id = c.customer_id "
    "JOIN telco.lines l ON l.customer_id = c.customer_id "
    "WHERE a.monthly_txn_count > 5 AND p.premium < 2000 GROUP BY c.region",
]


def _add_telco(fed: Path) -> None:
    """Add the telco party: one line per customer for three in four of the bank's."""
    root = fed.parent
    con = duckdb.connect(str(root / "data" / "telco.duckdb"))
    con.execute(f"ATTACH '{root / 'data' / 'bank.duckdb'}' AS bank (READ_ONLY)")
    con.execute(
        "CREATE TABLE lines AS SELECT customer_id, CASE customer_id % 3 WHEN 0 THEN 'basic' "
        "WHEN 1 THEN 'plus' ELSE 'max' END AS plan, CAST((customer_id * 7) % 60 + 9.99 AS "
        "DECIMAL(8,2)) AS monthly_fee FROM bank.customers WHERE customer_id % 4 <> 0")
    con.close()
    (root / "policies" / "telco.toml").write_text(TELCO_POLICY)
    with fed.open("a") as fh:
        fh.write(TELCO_PARTY)


def _set_connector(fed: Path, party: str, connector: str) -> None:
    """Point ``party``'s connector in the federation file at ``connector``."""
    lines = fed.read_text().splitlines()
    at = lines.index(f'name = "{party}"')
    for i in range(at, len(lines)):
        if lines[i].startswith("connector = "):
            lines[i] = f'connector = "{connector}"'
            break
    fed.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def federations(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The warehouse federation's session and the plain DuckDB union of the same data."""
    assert PG_URL is not None and MY_URL is not None
    base = tmp_path_factory.mktemp("warehouses")
    plain = oracle_federation(DEMO, base / "duckdb")
    _add_telco(plain)
    mixed = oracle_federation(DEMO, base / "mixed")
    _add_telco(mixed)
    with pytest.MonkeyPatch.context() as mp, spark_session() as spark, \
            fresh_schema(PG_URL) as (pg, bank), fresh_database(MY_URL) as (my, payments), \
            fresh_spark_database(spark, base / "spark") as insurer:
        mp.delenv("VEIL_LEDGER_DIR", raising=False)
        load_postgres(pg, bank, plain, "bank")
        load_mysql(my, payments, plain, "payments")
        load_spark(spark, insurer, plain, "insurer", base / "spark")
        sep = "&" if "?" in PG_URL else "?"
        _set_connector(mixed, "bank", f"{PG_URL}{sep}schema={bank}")
        _set_connector(mixed, "payments", database_url(MY_URL, payments))
        _set_connector(mixed, "insurer", spec(insurer))
        session = veilql.connect(mixed, analyst="oracle")
        reference = veilql.connect(plain, analyst="oracle")
        union = union_connection(reference.federation)
        try:
            yield {"session": session, "union": union}
        finally:
            session.close()
            reference.close()
            union.close()


def test_each_party_is_in_its_engine(federations: dict[str, Any]) -> None:
    """The catalog the policies were checked against comes from each party's own engine."""
    fed = federations["session"].federation
    connectors = {p.name: p.connector.split(":")[0] for p in fed.parties}
    assert connectors == {"bank": "postgresql", "payments": "mysql", "insurer": "spark",
                          "telco": "duckdb"}
    assert fed.party("bank").tables["loans"].columns["amount"].type == "DECIMAL(12,2)"
    payments = fed.party("payments").tables["accounts"].columns
    assert payments["monthly_txn_amount"].type == "DECIMAL(12,2)"
    assert payments["monthly_txn_count"].type == "INTEGER"
    insurer = fed.party("insurer").tables["policies"].columns
    assert insurer["premium"].type == "DOUBLE" and insurer["customer_id"].type == "BIGINT"


QUERIES = test_oracle.QUERIES + TELCO_QUERIES


@pytest.mark.parametrize("sql", QUERIES, ids=[f"q{i}" for i in range(len(QUERIES))])
def test_answers_equal_plain_duckdb(federations: dict[str, Any], sql: str) -> None:
    """The oracle's own check (tests/test_oracle.py), on the four-engine federation."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LargeEpsilonWarning)
        test_oracle.test_secure_answer_equals_plain_duckdb(
            (federations["session"], federations["union"]), sql)
