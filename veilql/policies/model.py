"""The federation model: parties, their table policies, analysts' budgets.

Frozen dataclasses, built and validated by ``veilql.policies.loader``; nothing here
reads files. Columns absent from a policy are not in ``TablePolicy.columns`` and so
cannot be used by any query (fail closed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Role = Literal["key", "group", "value"]
ROLES: tuple[str, ...] = ("key", "group", "value")
JoinReveal = Literal["none", "intersection", "nothing"]
JOIN_REVEALS: tuple[str, ...] = ("none", "intersection", "nothing")
# The most people one table may declare in ``max_units`` (the ring's range, dp/ring.py).
MAX_DECLARED_UNITS = 2**33
# The most rows a dimension table may declare in ``max_rows``.
MAX_DIMENSION_ROWS = 10**7


@dataclass(frozen=True)
class ColumnPolicy:
    """How one column may be used.

    ``values`` is the public group domain (only for ``role == "group"``; ``None`` means
    keys are chosen privately). ``bounds`` is the clamping interval of a ``value``
    column. ``decimals`` is the fixed-point precision used when the column enters
    secret shares (0 for integers, e.g. 2 for cents). ``type`` is the column's type as
    the party's connector reports it (DuckDB spelling), when the loader could open it.
    ``nullable`` (group columns with ``values`` only) makes NULL one of the public values:
    GROUP BY then releases a NULL cell, as SQL's GROUP BY makes one group of NULL keys.
    """

    name: str
    role: Role
    values: tuple[str | int | float | bool, ...] | None = None
    bounds: tuple[float, float] | None = None
    decimals: int = 0
    type: str | None = None  # DuckDB type from the connector catalog; None if not opened
    # A key column of a table with personal data that is a foreign key to a dimension table's
    # key column: "party.table.column" (the only other column it may be joined on).
    references: str | None = None
    nullable: bool = False

    @property
    def domain(self) -> tuple[str | int | float | bool | None, ...] | None:
        """The public group domain: ``values``, then NULL when ``nullable`` (None: keys
        chosen privately).

        >>> ColumnPolicy("r", "group", values=("n", "s"), nullable=True).domain
        ('n', 's', None)
        """
        if self.values is None:
            return None
        return (*self.values, None) if self.nullable else self.values


@dataclass(frozen=True)
class TablePolicy:
    """A party's policy for one table.

    ``join_reveal``: ``none`` and ``intersection`` run the join that reveals sizes to the
    compute parties; ``nothing`` asks for the oblivious join, for which ``max_units`` (the
    most people the table may hold, public inside the federation) is required: every
    party's shared rows are padded to it.

    ``dimension``: a table without personal data (merchants, branches), with no privacy unit
    (``privacy_unit == ""``); queries join it on a fact table's declared foreign key
    (``ColumnPolicy.references``), and its owner may send its rows (the columns a query
    uses, at most ``max_rows``, which is public) to the party holding the fact table.
    """

    name: str
    privacy_unit: str
    max_rows_per_unit: int = 1
    join_reveal: JoinReveal = "none"
    max_units: int | None = None
    columns: dict[str, ColumnPolicy] = field(default_factory=dict)
    dimension: bool = False
    max_rows: int | None = None

    def column(self, name: str) -> ColumnPolicy | None:
        """The policy of ``name``, or None when the column is not usable."""
        return self.columns.get(name)


@dataclass(frozen=True)
class Party:
    """A data party: where it runs, where its data lives, and its policy."""

    name: str
    address: str  # "local" or "host:port"
    connector: str  # e.g. "duckdb:/abs/path/bank.duckdb" (paths made absolute by the loader)
    tables: dict[str, TablePolicy] = field(default_factory=dict)
    policy_file: Path | None = None
    # Table and column names of the connector's catalog when the loader read it (a local
    # party), so that a session plans without opening every party's connector again.
    catalog: dict[str, tuple[str, ...]] | None = field(default=None, compare=False)

    @property
    def is_local(self) -> bool:
        """True when the party runs inside the client process."""
        return self.address == "local"


@dataclass(frozen=True)
class Analyst:
    """An analyst's budget, which every party enforces on its own tables."""

    name: str
    epsilon: float
    delta: float = 0.0


@dataclass(frozen=True)
class Federation:
    """A loaded, validated federation file."""

    name: str
    path: Path  # the federation.toml itself
    parties: tuple[Party, ...]
    analysts: dict[str, Analyst] = field(default_factory=dict)
    default_epsilon: float = 1.0
    default_delta: float = 0.0
    ledger_dir: Path | None = None  # where each party keeps its ledger; default <dir>/ledgers
    timeout: float = 30.0  # seconds any party may stay silent before PartyUnavailable
    certs: Path | None = None  # folder of the CA and party/analyst certificates (veil serve)
    join_reveal: JoinReveal = "none"  # default of tables that do not declare join_reveal

    @property
    def root(self) -> Path:
        """The folder of the federation file; relative paths resolve against it."""
        return self.path.parent

    def party(self, name: str) -> Party | None:
        """The party called ``name``, or None."""
        for p in self.parties:
            if p.name == name:
                return p
        return None

    @property
    def party_names(self) -> tuple[str, ...]:
        """Party names in file order; the first three are the compute parties."""
        return tuple(p.name for p in self.parties)
