"""A Federation mirroring the sample one (bank, payments, insurer), built directly from the model.

Independent of the TOML loader and of ``sample_data/`` so the SQL tests stand alone.
"""

from __future__ import annotations

from pathlib import Path

from veilql.policies.model import Analyst, ColumnPolicy, Federation, Party, TablePolicy


def _key(name: str = "customer_id") -> ColumnPolicy:
    return ColumnPolicy(name=name, role="key")


def _group(name: str, values: tuple[str | int, ...] | None = None) -> ColumnPolicy:
    return ColumnPolicy(name=name, role="group", values=values)


def _value(name: str, lo: float, hi: float, decimals: int = 0) -> ColumnPolicy:
    return ColumnPolicy(name=name, role="value", bounds=(lo, hi), decimals=decimals)


def _table(name: str, *columns: ColumnPolicy, max_rows: int = 1) -> TablePolicy:
    return TablePolicy(
        name=name, privacy_unit="customer_id", max_rows_per_unit=max_rows,
        columns={c.name: c for c in columns},
    )


CUSTOMERS = _table(
    "customers",
    _key(),
    _value("age", 18, 100),
    _group("region", ("north", "south", "east", "west", "central")),
    _value("income", 0, 500000, 2),
    _group("branch"),
)
LOANS = _table(
    "loans",
    _key(),
    _value("amount", 0, 100000, 2),
    _group("term_months", (12, 24, 36, 60)),
    _value("defaulted", 0, 1),
    max_rows=3,
)
ACCOUNTS = _table(
    "accounts",
    _key(),
    _group("segment", ("basic", "plus", "premium")),
    _value("monthly_txn_count", 0, 200),
    _value("monthly_txn_amount", 0, 20000, 2),
)
POLICIES = _table(
    "policies",
    _key(),
    _group("product", ("auto", "home", "health", "life")),
    _value("premium", 0, 5000, 2),
    _value("open_claim", 0, 1),
    _value("claims_amount", 0, 100000, 2),
)


def federation() -> Federation:
    """The demo consortium: bank (customers, loans), payments (accounts), insurer (policies)."""
    return Federation(
        name="demo-consortium",
        path=Path("/nonexistent/federation.toml"),
        parties=(
            Party("bank", "local", "duckdb:bank.duckdb",
                  {"customers": CUSTOMERS, "loans": LOANS}),
            Party("payments", "local", "duckdb:payments.duckdb", {"accounts": ACCOUNTS}),
            Party("insurer", "local", "duckdb:insurer.duckdb", {"policies": POLICIES}),
        ),
        analysts={"alice": Analyst("alice", 10.0, 1e-6)},
    )


def catalog() -> dict[str, dict[str, tuple[str, ...]]]:
    """Columns each party's tables really have (what connectors report), incl. hidden ones."""
    return {
        "bank": {
            "customers": ("customer_id", "age", "region", "income", "branch"),
            "audit_log": ("event_id", "customer_id", "action"),
            "loans": ("loan_id", "customer_id", "amount", "term_months", "defaulted"),
        },
        "payments": {
            "accounts": ("customer_id", "segment", "monthly_txn_count", "monthly_txn_amount"),
        },
        "insurer": {
            "policies": ("customer_id", "product", "premium", "open_claim", "claims_amount"),
        },
    }
