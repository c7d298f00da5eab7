"""Load and validate ``federation.toml`` and the parties' ``policies/<party>.toml``.

Everything is checked before any query runs, and the first problem found is raised as a
``ConfigError`` naming the file, the key (a dotted path such as
``tables.loans.columns.amount.bounds``) and how to fix it. The rules (CONTRACT.md):

- unknown keys are errors (typos), with a did-you-mean hint;
- ``role`` is one of key, group, value; ``values`` (a public group domain) only on group
  columns, ``bounds = [lo, hi]`` with lo <= hi required on value columns and only there;
- a table's ``privacy_unit`` is one of its columns, with role key;
- every party has a policy file, and every policy file belongs to a party;
- every table and column in a policy exists in the party's connector catalog, which is
  also where a column's type, and so its default fixed-point ``decimals``, comes from;
- party names are unique identifiers, addresses are "local" or "host:port", budgets are
  non-negative.

Columns not listed in a policy are absent from ``TablePolicy.columns``: unusable (fail closed).

Connectors of parties with ``address = "local"`` are always opened (read-only) to check
tables and columns. A remote party's data lives on its own node, so unless
``open_remote=True`` its policy is checked for structure only; the node checks the rest
when it starts, and the policy must then declare ``decimals`` on its value columns, since
the client cannot see their types and every party must agree on the fixed-point scale.
"""

from __future__ import annotations

import os.path
import re
from pathlib import Path
from typing import Any

from veilql.connectors import catalog_cache
from veilql.connectors.base import ColumnInfo, open_connector, resolve_spec
from veilql.errors import ConfigError
from veilql.policies.columns import parse_column
from veilql.policies.model import (
    JOIN_REVEALS,
    MAX_DECLARED_UNITS,
    MAX_DIMENSION_ROWS,
    Analyst,
    ColumnPolicy,
    Federation,
    JoinReveal,
    Party,
    TablePolicy,
)
from veilql.policies.tomlcheck import TomlFile, describe, did_you_mean, path_text, read_toml

FEDERATION_TOP_KEYS = ("federation", "party", "analyst")
FEDERATION_KEYS = (
    "name", "policies", "default_epsilon", "default_delta", "ledger_dir", "timeout", "certs",
    "join_reveal",
)
PARTY_KEYS = ("name", "address", "connector")
ANALYST_KEYS = ("epsilon", "delta")
POLICY_TOP_KEYS = ("tables",)
TABLE_KEYS = ("privacy_unit", "max_rows_per_unit", "join_reveal", "max_units", "columns",
              "dimension", "max_rows")
# Keys a dimension table (no personal data, no privacy unit) may not have.
_NOT_FOR_DIMENSIONS = ("privacy_unit", "max_rows_per_unit", "join_reveal", "max_units")


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ADDRESS = re.compile(
    r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)"
    r":(?P<port>[0-9]{1,5})$"
)


def load_federation(
    path: str | Path, *, open_remote: bool = False, cached_catalogs: bool = False,
) -> Federation:
    """Load ``path`` (a federation.toml) and every policy file, validated; see module doc.

    ``open_remote`` also opens the connectors of parties that are not ``local`` (a party's
    own node does this for itself), to check their tables and columns.
    ``cached_catalogs`` reads file connectors' catalogs from ``connectors.catalog_cache``
    when their files are unchanged (the catalog commands only; see that module).
    """
    fed_path = Path(path).expanduser().absolute()
    raw = read_toml(
        fed_path,
        "federation file",
        "pass an existing federation.toml with -f, or set $VEIL_FEDERATION",
    )
    f = TomlFile(fed_path)
    root = fed_path.parent
    f.check_keys(raw, FEDERATION_TOP_KEYS, "")

    if "federation" not in raw:
        raise f.error(
            "federation",
            "section [federation] is missing",
            'add [federation] with name = "..." at the top of the file',
        )
    sec = f.table(raw["federation"], "federation", '[federation] name = "..."')
    f.check_keys(sec, FEDERATION_KEYS, "federation")
    name = f.string(sec, "name", "federation", '"my-consortium"')
    policies_dir = _resolve(
        root, f.string(sec, "policies", "federation", '"policies"', default="policies")
    )
    default_epsilon = f.number(sec, "default_epsilon", "federation", default=1.0, strict=True)
    default_delta = f.number(sec, "default_delta", "federation", default=0.0, below=1.0)
    ledger_dir = _resolve(
        root, f.string(sec, "ledger_dir", "federation", '"ledgers"', default="ledgers")
    )
    timeout = f.number(sec, "timeout", "federation", default=30.0, strict=True)
    certs = _resolve(root, f.string(sec, "certs", "federation", '"certs"', default="certs"))
    default_reveal = _check_reveal(f, sec.get("join_reveal", "none"), "federation.join_reveal")

    party_specs = _parse_parties(f, raw.get("party"), root)
    analysts = _parse_analysts(f, raw.get("analyst", {}))

    if not policies_dir.is_dir():
        raise f.error(
            "federation.policies",
            f"policy folder {path_text(policies_dir)!r} does not exist",
            "create it with one <party>.toml per party, or point "
            "federation.policies at the right folder (relative to this file)",
        )
    _check_no_orphan_policies(policies_dir, [p[0] for p in party_specs])

    parties = []
    for pname, address, connector in party_specs:
        catalog = None
        if address == "local" or open_remote:
            catalog = _party_catalog(f, pname, connector, root, cached_catalogs)
        policy_file = policies_dir / f"{pname}.toml"
        if not policy_file.is_file():
            raise f.error(
                f"party.{pname}",
                f"party {pname!r} has no policy file {path_text(policy_file)!r}",
                f"create {path_text(policy_file)} with a [tables.<table>] section per table "
                "the party shares (an empty file shares nothing)",
            )
        tables = _parse_policy(policy_file, pname, catalog, default_reveal)
        parties.append(
            Party(
                name=pname,
                address=address,
                connector=connector,
                tables=tables,
                policy_file=policy_file,
                catalog=None if catalog is None else
                {t: tuple(c.name for c in cols) for t, cols in catalog.items()},
            )
        )

    _check_references(parties)
    return Federation(
        name=name,
        path=fed_path,
        parties=tuple(parties),
        analysts=analysts,
        default_epsilon=default_epsilon,
        default_delta=default_delta,
        ledger_dir=ledger_dir,
        timeout=timeout,
        certs=certs,
        join_reveal=default_reveal,
    )


def _check_reveal(f: TomlFile, reveal: Any, key: str) -> JoinReveal:
    """A valid ``join_reveal`` value, or a ConfigError at ``key``."""
    if reveal not in JOIN_REVEALS:
        raise f.error(
            key,
            f"must be one of {', '.join(JOIN_REVEALS)}, got {describe(reveal)}",
            f'{did_you_mean(str(reveal), JOIN_REVEALS)}write join_reveal = "none" '
            '(default), "intersection" or "nothing" (the oblivious join; needs max_units)',
        )
    return _as_reveal(reveal)


def _resolve(root: Path, rel: str) -> Path:
    p = Path(rel).expanduser()
    return Path(os.path.normpath(p if p.is_absolute() else root / p))


def _parse_parties(f: TomlFile, raw: Any, root: Path) -> list[tuple[str, str, str]]:
    """(name, address, absolute connector spec) of each [[party]], in file order."""
    example = '[[party]] name = "bank" address = "local" connector = "duckdb:data/bank.duckdb"'
    if raw is None:
        raise f.error("party", "no [[party]] defined", f"add at least one: {example}")
    if isinstance(raw, dict):
        raise f.error(
            "party",
            "must be an array of tables",
            "write each party as [[party]] (double brackets), not [party]",
        )
    out: list[tuple[str, str, str]] = []
    seen: dict[str, str] = {}
    for i, entry in enumerate(raw, start=1):
        where = f"party[{i}]"
        entry = f.table(entry, where, example)
        if _is_ident(entry.get("name")):
            where = f"party.{entry['name']}"
        f.check_keys(entry, PARTY_KEYS, where)
        pname = f.string(entry, "name", where, '"bank"')
        if not _IDENT.match(pname):
            raise f.error(
                f"{where}.name",
                f"party name {pname!r} is not an identifier",
                "use letters, digits and _ (not starting with a digit): tables are "
                "addressed as <party>.<table> in SQL",
            )
        if pname.lower() in seen:
            raise f.error(
                f"{where}.name",
                f"duplicate party {pname!r}",
                f"party names must be unique (case-insensitive); it is already "
                f"defined as {seen[pname.lower()]!r}, rename or remove one",
            )
        seen[pname.lower()] = pname
        address = f.string(entry, "address", where, '"local"')
        _check_address(f, address, f"{where}.address")
        spec = f.string(entry, "connector", where, '"duckdb:data/bank.duckdb"')
        try:
            scheme, location = resolve_spec(spec, root)
        except ConfigError as exc:
            raise f.error(f"{where}.connector", exc.message, exc.hint or "") from exc
        connector = spec if scheme == "postgresql" else f"{scheme}:{location}"
        out.append((pname, address, connector))
    if not out:
        raise f.error("party", "no [[party]] defined", f"add at least one: {example}")
    return out


def _is_ident(v: object) -> bool:
    return isinstance(v, str) and bool(_IDENT.match(v))


def _check_address(f: TomlFile, address: str, key: str) -> None:
    if address == "local":
        return
    m = _ADDRESS.match(address)
    if not m or not 1 <= int(m.group("port")) <= 65535:
        raise f.error(
            key,
            f"invalid address {address!r}",
            'use "local" (runs in the client process) or "host:port" of a '
            '`veil serve` node, e.g. "10.0.0.5:7401"',
        )


def _parse_analysts(f: TomlFile, raw: Any) -> dict[str, Analyst]:
    raw = f.table(raw, "analyst", "[analyst.alice] epsilon = 10.0")
    out: dict[str, Analyst] = {}
    for aname, entry in raw.items():
        where = f"analyst.{aname}"
        entry = f.table(entry, where, f"[analyst.{aname}] epsilon = 10.0")
        f.check_keys(entry, ANALYST_KEYS, where)
        eps = f.number(entry, "epsilon", where, default=None)
        delta = f.number(entry, "delta", where, default=0.0, below=1.0)
        out[aname] = Analyst(name=aname, epsilon=eps, delta=delta)
    return out


def _check_no_orphan_policies(policies_dir: Path, party_names: list[str]) -> None:
    for pf in sorted(policies_dir.glob("*.toml")):
        if pf.stem not in party_names:
            raise TomlFile(pf).error(
                None,
                f"policy for party {pf.stem!r}, which the federation does not define",
                f"{did_you_mean(pf.stem, party_names)}parties are: {', '.join(party_names)}; "
                "rename the file to <party>.toml, add the party, or remove the file",
            )


def _party_catalog(
    f: TomlFile, pname: str, connector: str, root: Path, cached: bool = False,
) -> dict[str, list[ColumnInfo]]:
    key = catalog_cache.data_key(connector, root) if cached else None
    if key is not None and (hit := catalog_cache.load(key)) is not None:
        return hit
    try:
        with open_connector(connector, root) as conn:
            catalog = dict(conn.catalog())
        if key is not None:
            catalog_cache.store(key, catalog)
        return catalog
    except ConfigError as exc:
        raise f.error(f"party.{pname}.connector", exc.message, exc.hint or "") from exc


def _parse_policy(
    path: Path, party: str, catalog: dict[str, list[ColumnInfo]] | None,
    default_reveal: JoinReveal = "none",
) -> dict[str, TablePolicy]:
    raw = read_toml(path, "policy file", "")
    f = TomlFile(path)
    f.check_keys(raw, POLICY_TOP_KEYS, "")
    tables_raw = f.table(raw.get("tables", {}), "tables", "[tables.<table>]")
    out: dict[str, TablePolicy] = {}
    for tname, traw in tables_raw.items():
        where = f"tables.{tname}"
        traw = f.table(traw, where, f'[tables.{tname}] privacy_unit = "id"')
        f.check_keys(traw, TABLE_KEYS, where)
        cat_cols: dict[str, ColumnInfo] | None = None
        if catalog is not None:
            if tname not in catalog:
                raise f.error(
                    where,
                    f"party {party!r} has no table {tname!r}",
                    f"{did_you_mean(tname, catalog)}its connector has: "
                    f"{', '.join(sorted(catalog)) or '(no tables)'}",
                )
            cat_cols = {c.name: c for c in catalog[tname]}
        out[tname] = _parse_table(f, tname, traw, cat_cols, party, default_reveal)
    return out


def _parse_table(
    f: TomlFile,
    tname: str,
    traw: dict[str, Any],
    cat_cols: dict[str, ColumnInfo] | None,
    party: str,
    default_reveal: JoinReveal = "none",
) -> TablePolicy:
    where = f"tables.{tname}"
    dimension: Any = traw.get("dimension", False)
    if not isinstance(dimension, bool):
        raise f.error(f"{where}.dimension", f"must be true or false, got {describe(dimension)}",
                      "write dimension = true for a table without personal data")
    if dimension:
        return _parse_dimension(f, tname, traw, cat_cols, party)
    if "max_rows" in traw:
        raise f.error(f"{where}.max_rows", "is only allowed on dimension tables",
                      "write max_rows_per_unit = N for rows per person, or set dimension = true "
                      "for a table without personal data")
    unit = f.string(traw, "privacy_unit", where, '"customer_id"')
    max_rows: Any = traw.get("max_rows_per_unit", 1)
    if not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 1:
        raise f.error(
            f"{where}.max_rows_per_unit",
            f"must be an integer >= 1, got {describe(max_rows)}",
            "write max_rows_per_unit = 1 (rows kept per person; the rest are dropped)",
        )
    reveal = _check_reveal(f, traw.get("join_reveal", default_reveal), f"{where}.join_reveal")
    max_units: Any = traw.get("max_units")
    if max_units is not None and (
            not isinstance(max_units, int) or isinstance(max_units, bool)
            or not 1 <= max_units <= MAX_DECLARED_UNITS):
        raise f.error(
            f"{where}.max_units",
            f"must be an integer from 1 to {MAX_DECLARED_UNITS}, got {describe(max_units)}",
            "write max_units = 1000000 (the most people this table may ever hold; public "
            "inside the federation, and the oblivious join pads the table to it)",
        )
    if "columns" not in traw:
        raise f.error(
            f"{where}.columns",
            "is required",
            f'add [tables.{tname}.columns] listing at least {unit} = {{ role = "key" }}',
        )
    cols_raw = f.table(traw["columns"], f"{where}.columns", f"[tables.{tname}.columns]")
    columns: dict[str, ColumnPolicy] = {}
    for cname, craw in cols_raw.items():
        columns[cname] = parse_column(
            f, f"{where}.columns.{cname}", cname, craw, cat_cols, party, tname
        )
    unit_col = columns.get(unit)
    if unit_col is None:
        raise f.error(
            f"{where}.privacy_unit",
            f"privacy unit {unit!r} is not among the table's policy columns",
            f'{did_you_mean(unit, columns)}add {unit} = {{ role = "key" }} under '
            f"[tables.{tname}.columns], or name a listed key column",
        )
    if unit_col.role != "key":
        raise f.error(
            f"{where}.columns.{unit}.role",
            f"privacy unit {unit!r} has role {unit_col.role!r}",
            'the privacy unit column must have role = "key"',
        )
    return TablePolicy(
        name=tname,
        privacy_unit=unit,
        max_rows_per_unit=max_rows,
        join_reveal=reveal,
        max_units=max_units,
        columns=columns,
    )


def _parse_dimension(
    f: TomlFile, tname: str, traw: dict[str, Any], cat_cols: dict[str, ColumnInfo] | None,
    party: str,
) -> TablePolicy:
    """A dimension table: no privacy unit, a public bound on its rows, columns as usual."""
    where = f"tables.{tname}"
    for key in _NOT_FOR_DIMENSIONS:
        if key in traw:
            raise f.error(f"{where}.{key}", "is not allowed on a dimension table",
                          "a dimension table holds no personal data, so it has no privacy unit; "
                          f"remove {key}, or remove dimension = true")
    rows: Any = traw.get("max_rows")
    if not isinstance(rows, int) or isinstance(rows, bool) or not 1 <= rows <= MAX_DIMENSION_ROWS:
        raise f.error(
            f"{where}.max_rows",
            f"must be an integer from 1 to {MAX_DIMENSION_ROWS}, got {describe(rows)}",
            "write max_rows = 10000 (the most rows the dimension table may hold; public, and "
            "its owner sends at most that many rows to a party joining it)")
    if "columns" not in traw:
        raise f.error(f"{where}.columns", "is required",
                      f'add [tables.{tname}.columns] listing its key, e.g. id = {{ role = "key" }}')
    cols_raw = f.table(traw["columns"], f"{where}.columns", f"[tables.{tname}.columns]")
    columns: dict[str, ColumnPolicy] = {}
    for cname, craw in cols_raw.items():
        col = parse_column(f, f"{where}.columns.{cname}", cname, craw, cat_cols, party, tname)
        if col.references is not None:
            raise f.error(f"{where}.columns.{cname}.references",
                          "is not allowed in a dimension table",
                          "a foreign key is declared on the table with personal data")
        columns[cname] = col
    if not any(c.role == "key" for c in columns.values()):
        raise f.error(f"{where}.columns", "a dimension table needs a key column",
                      'declare the column fact tables reference with role = "key"')
    return TablePolicy(name=tname, privacy_unit="", columns=columns, dimension=True,
                       max_rows=rows)


def _check_references(parties: list[Party]) -> None:
    """Every ``references`` names a key column of a dimension table of the federation."""
    by_name = {p.name.lower(): p for p in parties}
    for party in parties:
        f = TomlFile(party.policy_file) if party.policy_file is not None else None
        for tname, table in party.tables.items():
            for cname, col in table.columns.items():
                if col.references is None:
                    continue
                key = f"tables.{tname}.columns.{cname}.references"
                target_party, target_table, target_col = col.references.split(".")
                other = by_name.get(target_party.lower())
                problem = None
                if other is None:
                    problem = f"party {target_party!r} is not in the federation"
                elif target_table not in other.tables:
                    problem = f"{other.name} has no table {target_table!r} in its policy"
                elif not other.tables[target_table].dimension:
                    problem = (f"{other.name}.{target_table} is not a dimension table (a join on "
                               "another key between tables with personal data has no "
                               "contribution bound)")
                elif other.tables[target_table].column(target_col) is None or other.tables[
                        target_table].columns[target_col].role != "key":
                    problem = (f"{other.name}.{target_table} has no key column "
                               f"{target_col!r}")
                if problem is not None:
                    assert f is not None
                    raise f.error(key, f"references {col.references}: {problem}",
                                  'reference a key of a table declared with dimension = true, as '
                                  '"party.table.column"')


def _as_reveal(v: str) -> JoinReveal:
    return "intersection" if v == "intersection" else "nothing" if v == "nothing" else "none"
