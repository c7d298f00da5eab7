"""The TOML text of the demo federation file and of each party's policy (CONTRACT.md format).

Policies are written from ``schema``, the same specs the data is written from, so every
column a policy names exists. Columns without a role are written as comments only. Every
value column declares its fixed-point ``decimals`` (0 for integers), so the policy stays
valid when a party is moved to its own node and the client can no longer see the types.

>>> import tomllib
>>> tomllib.loads(federation_toml())["analyst"]["bob"]
{'epsilon': 3.0, 'delta': 1e-06}
>>> tomllib.loads(policy_toml("bank"))["tables"]["loans"]["columns"]["term_months"]
{'role': 'group', 'values': [12, 24, 36, 60]}
"""

from __future__ import annotations

import json

from sample_data.schema import PARTIES, PARTY_TABLES, ColumnSpec
from sample_data.storage import CONNECTORS

FEDERATION_NAME = "demo-consortium"
# Analyst budgets (epsilon, delta), which every party enforces on its own tables.
ANALYSTS: dict[str, tuple[float, float]] = {"alice": (10.0, 1e-5), "bob": (3.0, 1e-6)}
DEFAULT_EPSILON = 1.0
DEFAULT_DELTA = 1e-6


def _toml_value(v: str | int | float | tuple[str | int, ...]) -> str:
    """A TOML literal for the simple values the policies use."""
    if isinstance(v, tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string of ASCII text is a valid TOML basic string
    return repr(v)


def _column_line(c: ColumnSpec) -> str:
    if c.role is None:
        return f"# {c.note}"
    fields = [f'role = "{c.role}"']
    if c.values is not None:
        fields.append(f"values = {_toml_value(c.values)}")
    if c.bounds is not None:
        fields.append(f"bounds = {_toml_value(c.bounds)}")
    if c.role == "value":
        # Always explicit, even 0: a remote party's types are invisible to the client,
        # and every party must agree on the fixed-point scale.
        fields.append(f"decimals = {c.decimals}")
    line = f"{c.name} = {{ {', '.join(fields)} }}"
    return f"{line}  # {c.note}" if c.note else line


def policy_toml(party: str) -> str:
    """The policy file of ``party``: one ``[tables.<name>]`` section per table."""
    out = [
        f"# Policy of {party}: how its tables may be used in federated queries.",
        "# Columns not listed here cannot be used by any query (fail closed).",
        "# Bounds are public clamping intervals, never derived from the data.",
    ]
    for t in PARTY_TABLES[party]:
        out += [
            "",
            f"[tables.{t.name}]",
            f'privacy_unit = "{t.privacy_unit}"',
            f"max_rows_per_unit = {t.max_rows_per_unit}",
            f'join_reveal = "{t.join_reveal}"',
            "",
            f"[tables.{t.name}.columns]",
        ]
        out += [_column_line(c) for c in t.columns]
    return "\n".join(out) + "\n"


def federation_toml() -> str:
    """The federation file: three local parties over the sample data, two analysts."""
    out = [
        "# The demo consortium: a bank, a payments platform and an insurer over the same",
        "# (synthetic) people. Regenerate with: python -m sample_data.generate --out DIR",
        "",
        "[federation]",
        f'name = "{FEDERATION_NAME}"',
        'policies = "policies"',
        f"default_epsilon = {DEFAULT_EPSILON!r}",
        f"default_delta = {DEFAULT_DELTA!r}",
    ]
    for party in PARTIES:
        out += [
            "",
            "[[party]]",
            f'name = "{party}"',
            'address = "local"',
            f'connector = "{CONNECTORS[party]}"',
        ]
    for name, (eps, delta) in ANALYSTS.items():
        out += ["", f"[analyst.{name}]", f"epsilon = {eps!r}", f"delta = {delta!r}"]
    return "\n".join(out) + "\n"
