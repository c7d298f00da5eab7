"""Catalog commands: ``veil parties``, ``veil tables [PARTY]``, ``veil schema PARTY.TABLE``,
and ``veil demo`` (for now: the sample federation's parties, tables and policies).

Schemas and policies are public inside a federation (DESIGN.md), so these commands read only
the federation and policy files, never rows.
"""

from __future__ import annotations

from typing import Any

import click

from veilql.errors import UsageError
from veilql.policies.model import Federation, Party, TablePolicy
from veilql.policies.tomlcheck import did_you_mean
from veilql.ui.clicommon import emit, federation_option, format_option, load
from veilql.ui.formats import render, render_table

COMPUTE_PARTIES = 3  # the first three parties in file order run the secure computation

PARTY_COLUMNS = ["party", "address", "connector", "tables", "compute"]
TABLE_COLUMNS = ["party", "table", "privacy_unit", "max_rows_per_unit", "join_reveal", "columns",
                 "kind"]
SCHEMA_COLUMNS = ["column", "type", "role", "decimals", "bounds", "values"]


def party_rows(fed: Federation) -> list[list[Any]]:
    """One row per party, in file order (``PARTY_COLUMNS``)."""
    return [
        [p.name, p.address, p.connector, len(p.tables), i < COMPUTE_PARTIES]
        for i, p in enumerate(fed.parties)
    ]


def table_rows(parties: list[Party]) -> list[list[Any]]:
    """One row per shared table of ``parties`` (``TABLE_COLUMNS``).

    ``kind`` is ``personal`` for a table about people (it has a privacy unit) and
    ``dimension`` for one without personal data, whose unit, rows per unit and join rule
    do not apply (null) and whose public row cap is its ``max_rows``.
    """
    rows = []
    for p in parties:
        for t in p.tables.values():
            if t.dimension:
                rows.append([p.name, t.name, None, None, None, len(t.columns),
                             f"dimension (at most {t.max_rows} rows)"])
            else:
                rows.append([p.name, t.name, t.privacy_unit, t.max_rows_per_unit,
                             t.join_reveal, len(t.columns), "personal"])
    return rows


def schema_rows(table: TablePolicy) -> list[list[Any]]:
    """One row per usable column of ``table`` (``SCHEMA_COLUMNS``)."""
    return [
        [
            c.name,
            c.type,
            c.role,
            c.decimals,
            list(c.bounds) if c.bounds is not None else None,
            # a nullable column's NULL is one of its public values (JSON null, NULL)
            list(c.domain) if c.domain is not None else None,
        ]
        for c in table.columns.values()
    ]


def lookup_party(fed: Federation, name: str) -> Party:
    """The party called ``name``, or a ``UsageError`` suggesting the closest name."""
    party = fed.party(name)
    if party is None:
        raise UsageError(
            f"no party {name!r} in federation {fed.name!r}",
            f"{did_you_mean(name, fed.party_names)}parties are: {', '.join(fed.party_names)}",
        )
    return party


def lookup_table(fed: Federation, qualified: str) -> tuple[Party, TablePolicy]:
    """Resolve ``party.table`` to the party and its table policy."""
    pname, dot, tname = qualified.partition(".")
    if not dot or not pname or not tname or "." in tname:
        raise UsageError(
            f"expected PARTY.TABLE, got {qualified!r}",
            "name a table as <party>.<table>, e.g. bank.loans; see `veil tables`",
        )
    party = lookup_party(fed, pname)
    table = party.tables.get(tname)
    if table is None:
        raise UsageError(
            f"party {pname!r} shares no table {tname!r}",
            f"{did_you_mean(tname, party.tables)}its tables are: "
            f"{', '.join(party.tables) or '(none)'}; a table without a policy cannot be used",
        )
    return party, table


@click.command()
@federation_option
@format_option()
def parties(federation: str | None, fmt: str) -> None:
    """List the federation's parties (the first three are the compute parties)."""
    fed = load(federation, cached_catalogs=True)
    emit(render(PARTY_COLUMNS, party_rows(fed), fmt))


@click.command()
@click.argument("party", required=False)
@federation_option
@format_option()
def tables(party: str | None, federation: str | None, fmt: str) -> None:
    """List the tables every party shares, or only PARTY's."""
    fed = load(federation, cached_catalogs=True)
    chosen = [lookup_party(fed, party)] if party else list(fed.parties)
    emit(render(TABLE_COLUMNS, table_rows(chosen), fmt))


@click.command()
@click.argument("table", metavar="PARTY.TABLE")
@federation_option
@format_option()
def schema(table: str, federation: str | None, fmt: str) -> None:
    """Show the usable columns of PARTY.TABLE: type, role, decimals, bounds, group domain.

    Columns the policy does not list cannot be used by any query and are not shown.
    """
    fed = load(federation, cached_catalogs=True)
    party, policy = lookup_table(fed, table)
    meta: dict[str, Any] = {
        "party": party.name,
        "table": policy.name,
        "privacy_unit": policy.privacy_unit,
        "max_rows_per_unit": policy.max_rows_per_unit,
        "join_reveal": policy.join_reveal,
    }
    if policy.dimension:  # no personal data: unit, rows per unit and join rule do not apply
        meta = {"party": party.name, "table": policy.name, "dimension": True,
                "max_rows": policy.max_rows}
    emit(render(SCHEMA_COLUMNS, schema_rows(policy), fmt, meta=meta))


def describe_federation(fed: Federation) -> str:
    """A readable overview: every party, its tables and their column policies."""
    out = [
        f"Federation {fed.name!r}: {len(fed.parties)} parties, "
        f"analysts: {', '.join(fed.analysts) or '(none)'}"
    ]
    for i, p in enumerate(fed.parties):
        role = "compute + data party" if i < COMPUTE_PARTIES else "data party"
        out += ["", f"{p.name} ({role}, {p.address}, {p.connector})"]
        for t in p.tables.values():
            out += [
                f"  {p.name}.{t.name}: dimension table (no personal data), at most "
                f"{t.max_rows} rows" if t.dimension else
                f"  {p.name}.{t.name}: privacy unit {t.privacy_unit}, at most "
                f"{t.max_rows_per_unit} row(s) per unit, join_reveal = {t.join_reveal}"
            ]
            body = render_table(SCHEMA_COLUMNS, schema_rows(t))
            out += ["    " + line for line in body.splitlines()]
    return "\n".join(out)
