"""Validate one column's policy: ``col = { role, values?, nullable?, bounds?, decimals? }``.

Roles (CONTRACT.md): ``key`` (join key / privacy unit, never released), ``group`` (GROUP BY;
``values`` is the public domain, absent when keys are chosen privately) and ``value``
(WHERE and aggregates; ``bounds = [lo, hi]`` is the public clamping interval and is
required). ``nullable = true`` on a group column with ``values`` adds NULL to its public
domain (GROUP BY then releases a NULL cell, as SQL groups NULL keys). ``decimals`` is the
fixed-point precision; its default follows the column type from the connector catalog
(``coltypes.default_decimals``).
"""

from __future__ import annotations

import math
import re
from typing import Any

from veilql.connectors.base import ColumnInfo
from veilql.policies.coltypes import MAX_DECIMALS, default_decimals, type_kind
from veilql.policies.model import ROLES, ColumnPolicy, Role
from veilql.policies.tomlcheck import TomlFile, describe, did_you_mean, is_number

COLUMN_KEYS = ("role", "values", "nullable", "bounds", "decimals", "references")
_REFERENCE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$")

# A fixed-point value |bound| * 10**decimals must leave headroom in the 64-bit share ring
# for sums over many rows; 2**53 also keeps it exactly representable as a float.
MAX_SCALED_BOUND = 2**53


def _as_role(v: str) -> Role:
    return "key" if v == "key" else "group" if v == "group" else "value"


def parse_column(
    f: TomlFile,
    where: str,
    cname: str,
    craw: Any,
    cat_cols: dict[str, ColumnInfo] | None,
    party: str,
    tname: str,
) -> ColumnPolicy:
    """Validate the policy ``craw`` of column ``cname`` (dotted key ``where`` in ``f``).

    ``cat_cols`` is the table's catalog from the party's connector, or None when the
    connector was not opened (a remote party): then types are unknown and value columns
    must declare ``decimals``.
    """
    craw = f.table(craw, where, f'{cname} = {{ role = "value", bounds = [0, 100] }}')
    f.check_keys(craw, COLUMN_KEYS, where)
    if "role" not in craw:
        raise f.error(f"{where}.role", "is required", f"give the column a role: {', '.join(ROLES)}")
    role = craw["role"]
    if role not in ROLES:
        raise f.error(
            f"{where}.role",
            f"unknown role {describe(role)}",
            f"{did_you_mean(str(role), ROLES)}roles are key (join/unit only), group "
            "(GROUP BY) and value (WHERE and aggregates, needs bounds)",
        )
    ctype: str | None = None
    if cat_cols is not None:
        info = cat_cols.get(cname)
        if info is None:
            raise f.error(
                where,
                f"table {party}.{tname} has no column {cname!r}",
                f"{did_you_mean(cname, cat_cols)}its columns are: {', '.join(cat_cols)}",
            )
        ctype = info.type
    kind = type_kind(ctype)

    values = None
    if "values" in craw:
        if role != "group":
            raise f.error(
                f"{where}.values",
                f"values (a public group domain) is only allowed "
                f"on group columns, this one has role {role!r}",
                'remove values, or set role = "group"',
            )
        values = _parse_values(f, f"{where}.values", craw["values"], kind, ctype)
    nullable = _parse_nullable(f, where, craw, role, values)

    bounds = None
    if role == "value":
        if "bounds" not in craw:
            raise f.error(
                f"{where}.bounds",
                "a value column needs bounds",
                "add bounds = [lo, hi]: values are clamped to them and the noise "
                "scales with them; choose them from public knowledge, not the data",
            )
        if ctype is not None and kind not in ("int", "float", "bool"):
            raise f.error(
                f"{where}.role",
                f"a value column must be numeric, {party}.{tname}.{cname} has type {ctype}",
                'use role = "group" for categories, or "key" for identifiers',
            )
        bounds = _parse_bounds(f, f"{where}.bounds", craw["bounds"])
    elif "bounds" in craw:
        raise f.error(
            f"{where}.bounds",
            f"bounds are only allowed on value columns, this one has role {role!r}",
            'remove bounds, or set role = "value"',
        )

    if "decimals" in craw:
        decimals = craw["decimals"]
        if (
            not isinstance(decimals, int)
            or isinstance(decimals, bool)
            or not 0 <= decimals <= MAX_DECIMALS
        ):
            raise f.error(
                f"{where}.decimals",
                f"must be an integer from 0 to {MAX_DECIMALS}, got {describe(decimals)}",
                "decimals is the number of fixed-point digits, e.g. 2 for cents",
            )
    elif ctype is None and role == "value":
        raise f.error(
            f"{where}.decimals",
            "is required for value columns of a party whose data this client cannot open",
            "add decimals = N (fixed-point digits, 0 for integers) so every party "
            "agrees on the scale",
        )
    else:
        decimals = default_decimals(ctype) if ctype is not None else 0
    if bounds is not None and max(abs(bounds[0]), abs(bounds[1])) * 10**decimals > MAX_SCALED_BOUND:
        raise f.error(
            f"{where}.bounds",
            f"bounds {list(bounds)} with {decimals} decimals do not fit the fixed-point range",
            "keep |bound| * 10**decimals below 2**53: narrow the bounds or lower decimals",
        )
    references = craw.get("references")
    if references is not None:
        if role != "key":
            raise f.error(f"{where}.references",
                          f"references is only allowed on key columns, this one has role {role!r}",
                          'a foreign key to a dimension table has role = "key"')
        if not isinstance(references, str) or not _REFERENCE.match(references):
            raise f.error(f"{where}.references",
                          f"must be \"party.table.column\", got {describe(references)}",
                          'write references = "payments.merchants.merchant_id"')
    return ColumnPolicy(
        name=cname, role=_as_role(role), values=values, bounds=bounds, decimals=decimals,
        type=ctype, references=references, nullable=nullable,
    )


def _parse_nullable(f: TomlFile, where: str, craw: dict, role: str,
                    values: tuple | None) -> bool:
    """``nullable``: a boolean, only on a group column that declares ``values`` (NULL then
    joins its public domain; a column without values has no public domain to join)."""
    if "nullable" not in craw:
        return False
    raw = craw["nullable"]
    if role != "group":
        raise f.error(f"{where}.nullable",
                      f"nullable (NULL as a public group value) is only allowed on group "
                      f"columns, this one has role {role!r}",
                      'remove nullable, or set role = "group" with values = [...]')
    if not isinstance(raw, bool):
        raise f.error(f"{where}.nullable", f"must be true or false, got {describe(raw)}",
                      "write nullable = true (unquoted)")
    if raw and values is None:
        raise f.error(f"{where}.nullable",
                      "nullable needs values: only a declared group domain can include NULL",
                      'add values = [...] (a column without values has its keys chosen '
                      'privately, NULL among them), or remove nullable')
    return raw


def _parse_values(
    f: TomlFile, key: str, raw: Any, kind: str | None, ctype: str | None
) -> tuple[str | int | float | bool, ...]:
    example = 'values = ["north", "south"]'
    if not isinstance(raw, list) or not raw:
        raise f.error(key, f"must be a non-empty array, got {describe(raw)}", f"write {example}")
    seen: set[object] = set()
    for v in raw:
        if not isinstance(v, str | int | float | bool):
            raise f.error(
                key,
                f"values must be strings, numbers or booleans, got {describe(v)}",
                f"write {example}",
            )
        expected = {"int": int, "float": int | float, "bool": bool, "str": str}.get(kind or "")
        wrong = expected is not None and (
            not isinstance(v, expected) or (kind in ("int", "float") and isinstance(v, bool))
        )
        if wrong:
            raise f.error(
                key,
                f"value {v!r} does not match the column type {ctype}",
                "list the group domain in the column's own type",
            )
        if (type(v), v) in seen:
            raise f.error(key, f"value {v!r} is listed twice", "list each group value once")
        seen.add((type(v), v))
    return tuple(raw)


def _parse_bounds(f: TomlFile, key: str, raw: Any) -> tuple[float, float]:
    if (
        not isinstance(raw, list)
        or len(raw) != 2
        or not all(is_number(v) for v in raw)
        or not all(math.isfinite(v) for v in raw)
    ):
        raise f.error(
            key,
            f"must be two numbers [lo, hi], got {describe(raw)}"
            + (f" {raw!r}" if isinstance(raw, list) else ""),
            "write bounds = [0, 100000]",
        )
    lo, hi = raw
    if lo > hi:
        raise f.error(
            key, f"bounds are reversed: lo {lo!r} > hi {hi!r}", f"write bounds = [{hi!r}, {lo!r}]"
        )
    return (lo, hi)
