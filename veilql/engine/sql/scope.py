"""Names: the FROM entries of a query and the columns they hold (``Scope``).

``bind_tables`` resolves each ``party.table [AS alias]`` of FROM against the federation;
``Scope.resolve`` resolves a column reference to its table and policy, refusing unknown,
ambiguous and unusable columns with a hint (a close name, the quoting of a group value, the
policy line to add). Identifiers compare case-insensitively, as DuckDB's do.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

from sqlglot import exp

from veilql.engine.sql import checks, normalize
from veilql.engine.sql.bound import (
    BoundColumn,
    BoundTable,
)
from veilql.errors import PolicyError, UnsupportedError
from veilql.policies.model import Federation

# IMPORTS


Catalog = Mapping[str, Mapping[str, Sequence[str]]]


def columns_of(federation: Federation):  # noqa: ANN202 - a normalize.ColumnsOf
    """The columns of ``party.table`` by the policies (for inlining ``SELECT *``)."""
    def columns_of(party: str, table: str) -> Sequence[str] | None:
        p = federation.party(lookup_name(party, federation.party_names) or party)
        if p is None:
            return None
        name = lookup_name(table, list(p.tables))
        return list(p.tables[name].columns) if name is not None else None

    return columns_of


def lookup_name(name: str, names: Sequence[str]) -> str | None:
    """``name`` as spelled in ``names``, case-insensitively (DuckDB identifiers are)."""
    lowered = name.lower()
    return next((n for n in names if n.lower() == lowered), None)


def _suggest(name: str, names: Sequence[str]) -> str | None:
    close = difflib.get_close_matches(name.lower(), [n.lower() for n in names], n=1, cutoff=0.6)
    return lookup_name(close[0], names) if close else None


def bind_tables(
    select: exp.Select, federation: Federation, catalog: Catalog | None
) -> tuple[BoundTable, ...]:
    """FROM entries in order, each ``party.table [AS alias]``."""
    from_ = select.args.get("from_")
    if from_ is None:
        raise UnsupportedError("a query needs FROM party.table", checks.SUPPORTED_SQL)
    refs = [from_.this] + [j.this for j in select.args.get("joins") or []]
    tables: list[BoundTable] = []
    for ref in refs:
        if normalize.is_per_unit(ref):  # a WITH aggregating per person
            from veilql.engine.sql.perunit import bind_per_unit

            tables.append(bind_per_unit(ref, federation, catalog))  # type: ignore[arg-type]
            _check_distinct(tables)
            continue
        if not isinstance(ref, exp.Table) or not isinstance(ref.this, exp.Identifier):
            raise UnsupportedError(
                f"{ref.sql(dialect='duckdb')} is not supported in FROM",
                "FROM takes tables written party.table",
            )
        tables.append(bind_table(ref, federation, catalog))
        _check_distinct(tables)
    return tuple(tables)


def _check_distinct(tables: list[BoundTable]) -> None:
    """The last table of FROM is neither another table again nor another alias again."""
    bound = tables[-1]
    for other in tables[:-1]:
        if (other.party, other.table) == (bound.party, bound.table):
            raise UnsupportedError(
                f"self-join of {bound.party}.{bound.table} is not supported",
                "each table may appear once in FROM",
            )
        if other.alias.lower() == bound.alias.lower():
            raise UnsupportedError(
                f"alias {bound.alias!r} is used for two tables",
                "give each table its own alias, e.g. FROM a.t AS x JOIN b.t AS y",
            )


def bind_table(ref: exp.Table, federation: Federation, catalog: Catalog | None) -> BoundTable:
    """Resolve one ``party.table`` reference."""
    name = ref.name
    parties = federation.party_names
    if ref.args.get("catalog"):
        raise UnsupportedError(
            f"table {ref.sql(dialect='duckdb')} has too many parts",
            "write tables as party.table, e.g. bank.loans",
        )
    if not ref.db:
        owners = [
            f"{p.name}.{t}" for p in federation.parties for t in p.tables
            if t.lower() == name.lower()
        ]
        hint = f"did you mean {' or '.join(owners)}?" if owners else (
            "known tables: " + ", ".join(
                f"{p.name}.{t}" for p in federation.parties for t in p.tables))
        raise UnsupportedError(f"table {name!r} must be written party.table", hint)
    party_name = lookup_name(ref.db, parties)
    if party_name is None:
        raise PolicyError(f"unknown party {ref.db!r} in {ref.db}.{name}",
                          "known parties: " + ", ".join(parties))
    party = federation.party(party_name)
    assert party is not None
    table_name = lookup_name(name, list(party.tables))
    if table_name is None:
        known = ", ".join(f"{party.name}.{t}" for t in party.tables) or "none"
        hidden = catalog is not None and lookup_name(name, list(catalog.get(party.name, {})))
        if hidden:
            raise PolicyError(
                f"table {party.name}.{name} is not usable: it is not in {party.name}'s policy",
                f"add [tables.{name}] to policies/{party.name}.toml; usable tables: {known}",
            )
        raise PolicyError(f"unknown table {party.name}.{name}", f"known tables of "
                          f"{party.name}: {known}")
    table_alias = ref.args.get("alias")
    if table_alias is not None and table_alias.columns:
        raise UnsupportedError(
            f"column aliases on table {party.name}.{table_name} are not supported",
            "alias the table only, e.g. FROM bank.loans AS l",
        )
    alias = ref.alias or table_name
    return BoundTable(alias=alias, party=party.name, table=table_name,
                      policy=party.tables[table_name])


class Scope:
    """The FROM entries of a query, resolving column references against their policies."""

    def __init__(self, tables: tuple[BoundTable, ...], catalog: Catalog | None) -> None:
        self.tables = tables
        self.catalog = catalog
        self.units = {t.alias: t.unit for t in tables}

    def table(self, alias: str) -> BoundTable:
        """The FROM entry called ``alias`` (KeyError when there is none)."""
        for t in self.tables:
            if t.alias == alias:
                return t
        raise KeyError(alias)

    def party_of(self, alias: str) -> str:
        """The party owning FROM entry ``alias``."""
        return self.table(alias).party

    def resolve(self, ref: exp.Column) -> BoundColumn:
        """The column ``ref`` names; refuse unknown, ambiguous and unusable columns."""
        text = ref.sql(dialect="duckdb")
        if ref.args.get("catalog"):
            raise UnsupportedError(f"column {text} has too many parts",
                                   "write alias.column or party.table.column")
        candidates = self._candidates(ref)
        matches = [
            (t, found) for t in candidates
            if (found := lookup_name(ref.name, list(t.policy.columns))) is not None
        ]
        if len(matches) > 1:
            options = " or ".join(f"{t.alias}.{c}" for t, c in matches)
            raise PolicyError(f"column {text} is ambiguous", f"qualify it: {options}")
        if matches:
            table, column = matches[0]
            return BoundColumn(alias=table.alias, party=table.party, table=table.table,
                               column=column, policy=table.policy.columns[column])
        raise self._missing(ref, candidates)

    def _candidates(self, ref: exp.Column) -> list[BoundTable]:
        """FROM entries a (possibly qualified) column reference may belong to."""
        if ref.db:
            found = [t for t in self.tables
                     if t.party.lower() == ref.db.lower() and t.table.lower() == ref.table.lower()]
            if not found:
                raise PolicyError(f"table {ref.db}.{ref.table} of column "
                                  f"{ref.sql(dialect='duckdb')} is not in FROM",
                                  "add the table to FROM (joined on its privacy unit)")
            return found
        if ref.table:
            found = [t for t in self.tables if t.alias.lower() == ref.table.lower()]
            if found:
                return found
            named = [t for t in self.tables if t.table.lower() == ref.table.lower()]
            if named:
                raise PolicyError(
                    f"table {named[0].party}.{named[0].table} is aliased {named[0].alias!r}; "
                    f"{ref.sql(dialect='duckdb')} does not name it",
                    f"write {named[0].alias}.{ref.name}",
                )
            raise PolicyError(f"unknown table or alias {ref.table!r} in "
                              f"{ref.sql(dialect='duckdb')}",
                              "aliases in FROM: " + ", ".join(t.alias for t in self.tables))
        return list(self.tables)

    def _missing(self, ref: exp.Column, candidates: list[BoundTable]) -> PolicyError:
        """The error for a column no candidate table's policy lists."""
        text = ref.sql(dialect="duckdb")
        if self.catalog is not None:
            for t in candidates:
                real = self.catalog.get(t.party, {}).get(t.table, ())
                if lookup_name(ref.name, list(real)):
                    return PolicyError(
                        f"column {t.alias}.{ref.name} ({t.party}.{t.table}) is not usable: it is "
                        f"not in {t.party}'s policy",
                        f"add it to policies/{t.party}.toml under [tables.{t.table}.columns] "
                        "with a role (key, group or value)",
                    )
        usable = [f"{t.alias}.{c}" for t in candidates for c in t.policy.columns]
        for t in candidates:
            for col in t.policy.columns.values():
                if col.values and any(str(v).lower() == ref.name.lower() for v in col.values):
                    return PolicyError(
                        f"unknown column {text}",
                        f"to compare with the value {ref.name!r}, quote it: "
                        f"{t.alias}.{col.name} = '{ref.name}'",
                    )
        suggestion = _suggest(ref.name, [c for t in candidates for c in t.policy.columns])
        hint = f"did you mean {suggestion}?" if suggestion else "usable columns: " + ", ".join(
            usable)
        where = "" if self.catalog is not None else " (or not in its party's policy)"
        return PolicyError(f"unknown column {text}{where}", hint)

    def qualify(self, node: exp.Expression) -> exp.Expression:
        """A copy of ``node`` with every column rewritten to ``alias.column``."""

        def rewrite(n: exp.Expr) -> exp.Expr:
            return self.resolve(n).expr() if isinstance(n, exp.Column) else n

        return node.copy().transform(rewrite)
