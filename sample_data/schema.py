"""The sample federation's tables: column types and policy annotations, in one place.

The generator writes data with these SQL types and writes each party's policy file from
the same specs, so a policy can never name a column the data lacks. A column whose
``role`` is ``None`` exists in the data but is left out of the policy, so no query can
use it (fail closed); ``note`` says why, and becomes a comment in the policy file.

>>> [t.name for t in PARTY_TABLES["bank"]]
['customers', 'loans']
>>> LOANS.column("defaulted").bounds
(0, 1)
"""

from __future__ import annotations

from dataclasses import dataclass

REGIONS: tuple[str, ...] = ("north", "south", "east", "west", "central")
SEGMENTS: tuple[str, ...] = ("standard", "premium", "business", "student")
PRODUCTS: tuple[str, ...] = ("health", "life", "home", "auto", "travel")
TERMS: tuple[int, ...] = (12, 24, 36, 60)
ISSUE_YEARS: tuple[int, ...] = (2020, 2021, 2022, 2023, 2024, 2025)


@dataclass(frozen=True)
class ColumnSpec:
    """One column: its SQL type in the data and its role in the owner's policy.

    ``role`` is ``"key"``, ``"group"``, ``"value"`` or ``None`` (not in the policy).
    ``values`` is a public group domain; ``bounds`` the public clamping interval of a
    value; ``decimals`` the fixed-point digits the column needs in secret shares.
    """

    name: str
    sql_type: str
    role: str | None
    values: tuple[str | int, ...] | None = None
    bounds: tuple[int, int] | None = None
    decimals: int = 0
    note: str = ""


@dataclass(frozen=True)
class TableSpec:
    """One table of one party, with the policy settings of the whole table."""

    party: str
    name: str
    columns: tuple[ColumnSpec, ...]
    max_rows_per_unit: int = 1
    privacy_unit: str = "customer_id"
    join_reveal: str = "none"

    def column(self, name: str) -> ColumnSpec:
        """The spec of column ``name``; KeyError when the table has no such column."""
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.party}.{self.name} has no column {name!r}")

    @property
    def column_names(self) -> tuple[str, ...]:
        """Column names in storage order."""
        return tuple(c.name for c in self.columns)


_KEY = ColumnSpec("customer_id", "BIGINT", "key", note="the person: privacy unit and join key")
_MONEY = "DECIMAL(12,2)"

CUSTOMERS = TableSpec(
    "bank",
    "customers",
    (
        _KEY,
        ColumnSpec("age", "INTEGER", "value", bounds=(18, 100)),
        ColumnSpec("region", "VARCHAR", "group", values=REGIONS),
        ColumnSpec("branch", "VARCHAR", "group",
                   note="no public domain: which branches appear is chosen privately"),
        ColumnSpec("income", _MONEY, "value", bounds=(0, 500_000), decimals=2,
                   note="yearly income"),
    ),
)

LOANS = TableSpec(
    "bank",
    "loans",
    (
        ColumnSpec("loan_id", "BIGINT", None,
                   note="loan_id is left out on purpose (fail closed): an identifier is never "
                        "released"),
        _KEY,
        ColumnSpec("amount", _MONEY, "value", bounds=(0, 100_000), decimals=2),
        ColumnSpec("term_months", "INTEGER", "group", values=TERMS),
        ColumnSpec("defaulted", "INTEGER", "value", bounds=(0, 1),
                   note="0/1 as a value, so AVG(defaulted) is the default rate"),
        ColumnSpec("issued_on", "DATE", None,
                   note="issued_on is left out (fail closed): group by issued_year instead"),
        ColumnSpec("issued_year", "INTEGER", "group", values=ISSUE_YEARS),
    ),
    max_rows_per_unit=3,
)

ACCOUNTS = TableSpec(
    "payments",
    "accounts",
    (
        _KEY,
        ColumnSpec("segment", "VARCHAR", "group", values=SEGMENTS),
        ColumnSpec("monthly_txn_count", "INTEGER", "value", bounds=(0, 200)),
        ColumnSpec("monthly_txn_amount", _MONEY, "value", bounds=(0, 20_000), decimals=2),
    ),
)

POLICIES = TableSpec(
    "insurer",
    "policies",
    (
        _KEY,
        ColumnSpec("product", "VARCHAR", "group", values=PRODUCTS),
        ColumnSpec("premium", _MONEY, "value", bounds=(0, 5_000), decimals=2,
                   note="yearly premium"),
        ColumnSpec("open_claim", "INTEGER", "value", bounds=(0, 1),
                   note="0/1 as a value, so AVG(open_claim) is the claim rate"),
        ColumnSpec("claims_amount", _MONEY, "value", bounds=(0, 100_000), decimals=2,
                   note="0 unless open_claim = 1"),
    ),
)

TABLES: tuple[TableSpec, ...] = (CUSTOMERS, LOANS, ACCOUNTS, POLICIES)
PARTIES: tuple[str, ...] = ("bank", "payments", "insurer")
PARTY_TABLES: dict[str, tuple[TableSpec, ...]] = {
    p: tuple(t for t in TABLES if t.party == p) for p in PARTIES
}
