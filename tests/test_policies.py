"""The federation/policy loader: every validation error, through the API and the CLI.

Each error case breaks one thing in a valid federation (``mini_fed`` in conftest) and checks
that the error names the file and the key, says what is wrong, carries a hint, exits 2 with
``veil: error:`` on stderr, and leaves stdout empty.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from click.testing import CliRunner

from veilql.cli import main
from veilql.errors import ConfigError, ExitCode
from veilql.policies import load_federation
from veilql.policies.coltypes import default_decimals

if TYPE_CHECKING:
    from conftest import MiniFed


@dataclass(frozen=True)
class Case:
    """One broken configuration and what its error must say."""

    id: str
    mutate: Callable[[MiniFed], None]
    file: str  # file name the message must contain
    key: str | None  # dotted key the message must contain
    message: str  # fragment of the message
    hint: str = ""  # fragment of the hint


def _fed(old: str, new: str) -> Callable[[MiniFed], None]:
    return lambda fed: fed.edit_federation(old, new)


def _shop(old: str, new: str) -> Callable[[MiniFed], None]:
    return lambda fed: fed.edit_policy("shop", old, new)


AMOUNT = 'amount = { role = "value", bounds = [0, 500] }'
CITY = 'city = { role = "group", values = ["oslo", "rome"] }'
SHOP_PARTY = 'name = "shop"\naddress = "local"\nconnector = "csv:data/shop"'

SHOPP_POLICY = (
    '[tables.orders]\nprivacy_unit = "customer_id"\n'
    '[tables.orders.columns]\ncustomer_id = { role = "key" }\n'
)

CASES = [
    # roles, bounds, domains
    Case(
        "unknown-role",
        _shop(AMOUNT, 'amount = { role = "vaule", bounds = [0, 500] }'),
        "shop.toml",
        "tables.orders.columns.amount.role",
        "unknown role",
        "did you mean 'value'",
    ),
    Case(
        "role-missing",
        _shop(AMOUNT, "amount = { bounds = [0, 500] }"),
        "shop.toml",
        "tables.orders.columns.amount.role",
        "is required",
        "key, group, value",
    ),
    Case(
        "value-without-bounds",
        _shop(AMOUNT, 'amount = { role = "value" }'),
        "shop.toml",
        "tables.orders.columns.amount.bounds",
        "needs bounds",
        "bounds = [lo, hi]",
    ),
    Case(
        "bounds-reversed",
        _shop(AMOUNT, 'amount = { role = "value", bounds = [500, 0] }'),
        "shop.toml",
        "tables.orders.columns.amount.bounds",
        "reversed",
        "[0, 500]",
    ),
    Case(
        "bounds-not-numbers",
        _shop(AMOUNT, 'amount = { role = "value", bounds = ["0", 500] }'),
        "shop.toml",
        "tables.orders.columns.amount.bounds",
        "two numbers",
        "bounds = [0",
    ),
    Case(
        "bounds-three-items",
        _shop(AMOUNT, 'amount = { role = "value", bounds = [0, 1, 2] }'),
        "shop.toml",
        "tables.orders.columns.amount.bounds",
        "two numbers",
        "bounds =",
    ),
    Case(
        "bounds-on-group",
        _shop(CITY, 'city = { role = "group", bounds = [0, 1] }'),
        "shop.toml",
        "tables.orders.columns.city.bounds",
        "only allowed on value",
        "remove",
    ),
    Case(
        "values-on-value",
        _shop(AMOUNT, 'amount = { role = "value", bounds = [0, 500], values = [1, 2] }'),
        "shop.toml",
        "tables.orders.columns.amount.values",
        "only allowed on group",
        "remove",
    ),
    Case(
        "values-empty",
        _shop(CITY, 'city = { role = "group", values = [] }'),
        "shop.toml",
        "tables.orders.columns.city.values",
        "non-empty array",
        "values =",
    ),
    Case(
        "values-duplicate",
        _shop(CITY, 'city = { role = "group", values = ["oslo", "oslo"] }'),
        "shop.toml",
        "tables.orders.columns.city.values",
        "listed twice",
        "once",
    ),
    Case(
        "values-wrong-type",
        _shop(CITY, 'city = { role = "group", values = [1, 2] }'),
        "shop.toml",
        "tables.orders.columns.city.values",
        "does not match the column type",
        "own type",
    ),
    Case(
        "value-not-numeric",
        _shop(CITY, 'city = { role = "value", bounds = [0, 1] }'),
        "shop.toml",
        "tables.orders.columns.city.role",
        "must be numeric",
        "group",
    ),
    Case(
        "decimals-out-of-range",
        _shop(AMOUNT, 'amount = { role = "value", bounds = [0, 500], decimals = 9 }'),
        "shop.toml",
        "tables.orders.columns.amount.decimals",
        "from 0 to 6",
        "cents",
    ),
    Case(
        "bounds-too-wide",
        _shop(AMOUNT, 'amount = { role = "value", bounds = [0, 1e15], decimals = 6 }'),
        "shop.toml",
        "tables.orders.columns.amount.bounds",
        "fixed-point range",
        "2**53",
    ),
    Case(
        "column-not-inline-table",
        _shop(AMOUNT, 'amount = "value"'),
        "shop.toml",
        "tables.orders.columns.amount",
        "must be a table",
        "role",
    ),
    # tables and privacy units
    Case(
        "table-missing-in-catalog",
        _shop("[tables.orders]", "[tables.order]"),
        "shop.toml",
        "tables.order",
        "has no table 'order'",
        "did you mean 'orders'",
    ),
    Case(
        "column-missing-in-table",
        _shop(AMOUNT, 'amont = { role = "value", bounds = [0, 500] }'),
        "shop.toml",
        "tables.orders.columns.amont",
        "has no column 'amont'",
        "did you mean 'amount'",
    ),
    Case(
        "privacy-unit-not-listed",
        _shop('privacy_unit = "customer_id"', 'privacy_unit = "city_id"'),
        "shop.toml",
        "tables.orders.privacy_unit",
        "not among",
        'role = "key"',
    ),
    Case(
        "privacy-unit-not-key",
        _shop('privacy_unit = "customer_id"', 'privacy_unit = "city"'),
        "shop.toml",
        "tables.orders.columns.city.role",
        "has role 'group'",
        'role = "key"',
    ),
    Case(
        "privacy-unit-missing",
        _shop('privacy_unit = "customer_id"\n', ""),
        "shop.toml",
        "tables.orders.privacy_unit",
        "is required",
        "privacy_unit =",
    ),
    Case(
        "max-rows-zero",
        _shop("max_rows_per_unit = 2", "max_rows_per_unit = 0"),
        "shop.toml",
        "tables.orders.max_rows_per_unit",
        "integer >= 1",
        "max_rows_per_unit =",
    ),
    Case(
        "max-rows-bool",
        _shop("max_rows_per_unit = 2", "max_rows_per_unit = true"),
        "shop.toml",
        "tables.orders.max_rows_per_unit",
        "integer >= 1",
        "max_rows_per_unit =",
    ),
    Case(
        "join-reveal-unknown",
        _shop("max_rows_per_unit = 2", 'max_rows_per_unit = 2\njoin_reveal = "intersect"'),
        "shop.toml",
        "tables.orders.join_reveal",
        "must be one of",
        "did you mean 'intersection'",
    ),
    Case(
        "columns-missing",
        lambda fed: fed.write_policy("shop", '[tables.orders]\nprivacy_unit = "customer_id"\n'),
        "shop.toml",
        "tables.orders.columns",
        "is required",
        'role = "key"',
    ),
    # typos (unknown keys)
    Case(
        "typo-column-key",
        _shop(AMOUNT, 'amount = { role = "value", bound = [0, 500] }'),
        "shop.toml",
        "tables.orders.columns.amount.bound",
        "unknown key 'bound'",
        "did you mean 'bounds'",
    ),
    Case(
        "typo-table-key",
        _shop("max_rows_per_unit = 2", "max_row_per_unit = 2"),
        "shop.toml",
        "tables.orders.max_row_per_unit",
        "unknown key",
        "max_rows_per_unit",
    ),
    Case(
        "typo-policy-top",
        _shop("[tables.orders]", "[table.orders]"),
        "shop.toml",
        "table",
        "unknown key 'table'",
        "did you mean 'tables'",
    ),
    Case(
        "typo-federation-key",
        _fed('policies = "policies"', 'polices = "policies"'),
        "federation.toml",
        "federation.polices",
        "unknown key",
        "did you mean 'policies'",
    ),
    Case(
        "typo-party-key",
        _fed(
            'address = "local"\nconnector = "csv:data/shop"',
            'adress = "local"\nconnector = "csv:data/shop"',
        ),
        "federation.toml",
        "party.shop.adress",
        "unknown key",
        "did you mean 'address'",
    ),
    Case(
        "typo-top-level",
        _fed("[analyst.alice]", "[analysts.alice]"),
        "federation.toml",
        "analysts",
        "unknown key",
        "did you mean 'analyst'",
    ),
    Case(
        "typo-analyst-key",
        _fed("epsilon = 2.0", "epsilom = 2.0"),
        "federation.toml",
        "analyst.alice.epsilom",
        "unknown key",
        "did you mean 'epsilon'",
    ),
    # parties, connectors, policy files
    Case(
        "policy-for-unknown-party",
        lambda fed: fed.write_policy("shopp", SHOPP_POLICY),
        "shopp.toml",
        None,
        "policy for party 'shopp', which the federation does not define",
        "did you mean 'shop'",
    ),
    Case(
        "party-without-policy",
        lambda fed: fed.policy_path("club").unlink(),
        "federation.toml",
        "party.club",
        "has no policy file",
        "policies/club.toml",
    ),
    Case(
        "connector-path-missing",
        _fed("csv:data/shop", "csv:data/nowhere"),
        "federation.toml",
        "party.shop.connector",
        "does not exist",
        "relative to the ",
    ),
    Case(
        "connector-duckdb-missing",
        _fed("csv:data/shop", "duckdb:data/shop.duckdb"),
        "federation.toml",
        "party.shop.connector",
        "does not exist",
        "duckdb:",
    ),
    Case(
        "connector-scheme-unknown",
        _fed("csv:data/shop", "sqlite:shop.db"),
        "federation.toml",
        "party.shop.connector",
        "unknown connector scheme 'sqlite'",
        "postgresql:",
    ),
    Case(
        "connector-postgres-bad-url",
        _fed("csv:data/shop", "postgresql://db.example/shop?colour=blue"),
        "federation.toml",
        "party.shop.connector",
        "invalid PostgreSQL URL",
        "?schema=NAME",
    ),
    Case(
        "duplicate-party",
        _fed('name = "club"', 'name = "shop"'),
        "federation.toml",
        "party.shop.name",
        "duplicate party 'shop'",
        "unique",
    ),
    Case(
        "duplicate-party-case",
        _fed('name = "club"', 'name = "Shop"'),
        "federation.toml",
        "party.Shop.name",
        "duplicate party 'Shop'",
        "case-insensitive",
    ),
    Case(
        "party-name-not-identifier",
        _fed('name = "club"', 'name = "the club"'),
        "federation.toml",
        "party[2].name",
        "not an identifier",
        "<party>.<table>",
    ),
    Case(
        "party-single-brackets",
        lambda fed: fed.write_federation('[federation]\nname = "m"\n[party]\n' + SHOP_PARTY + "\n"),
        "federation.toml",
        "party",
        "array of tables",
        "[[party]]",
    ),
    Case(
        "no-parties",
        lambda fed: fed.write_federation('[federation]\nname = "m"\n'),
        "federation.toml",
        "party",
        "no [[party]]",
        "[[party]]",
    ),
    Case(
        "address-no-port",
        _fed('address = "local"', 'address = "localhost"'),
        "federation.toml",
        "party.shop.address",
        "invalid address 'localhost'",
        "host:port",
    ),
    Case(
        "address-port-range",
        _fed('address = "local"', 'address = "10.0.0.5:99999"'),
        "federation.toml",
        "party.shop.address",
        "invalid address",
        "host:port",
    ),
    Case(
        "policies-folder-missing",
        _fed('policies = "policies"', 'policies = "rules"'),
        "federation.toml",
        "federation.policies",
        "rules' does not exist",
        "relative",
    ),
    # budgets and federation settings
    Case(
        "negative-epsilon",
        _fed("epsilon = 2.0", "epsilon = -1.0"),
        "federation.toml",
        "analyst.alice.epsilon",
        "at least 0",
        "negative",
    ),
    Case(
        "negative-delta",
        _fed("delta = 1e-6", "delta = -1e-6"),
        "federation.toml",
        "analyst.alice.delta",
        "at least 0",
        "negative",
    ),
    Case(
        "delta-too-large",
        _fed("delta = 1e-6", "delta = 1.5"),
        "federation.toml",
        "analyst.alice.delta",
        "less than 1",
        "probability",
    ),
    Case(
        "epsilon-missing",
        _fed("epsilon = 2.0\n", ""),
        "federation.toml",
        "analyst.alice.epsilon",
        "is required",
        "epsilon =",
    ),
    Case(
        "epsilon-string",
        _fed("epsilon = 2.0", 'epsilon = "2"'),
        "federation.toml",
        "analyst.alice.epsilon",
        "must be a number",
        "epsilon = 1.0",
    ),
    Case(
        "default-epsilon-zero",
        _fed('name = "mini"', 'name = "mini"\ndefault_epsilon = 0'),
        "federation.toml",
        "federation.default_epsilon",
        "greater than 0",
        "negative",
    ),
    Case(
        "timeout-negative",
        _fed('name = "mini"', 'name = "mini"\ntimeout = -5'),
        "federation.toml",
        "federation.timeout",
        "greater than 0",
        "timeouts",
    ),
    Case(
        "federation-name-missing",
        _fed('name = "mini"\n', ""),
        "federation.toml",
        "federation.name",
        "is required",
        "name =",
    ),
    Case(
        "federation-section-missing",
        lambda fed: fed.write_federation("[[party]]\n" + SHOP_PARTY + "\n"),
        "federation.toml",
        "federation",
        "[federation] is missing",
        "[federation]",
    ),
    # files
    Case(
        "federation-invalid-toml",
        _fed('name = "mini"', "name = mini"),
        "federation.toml",
        None,
        "invalid TOML",
        "syntax",
    ),
    Case(
        "policy-invalid-toml",
        _shop("[tables.orders]", "[tables.orders"),
        "shop.toml",
        None,
        "invalid TOML",
        "syntax",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_validation_error_api(mini_fed: MiniFed, case: Case) -> None:
    """load_federation raises a ConfigError naming file, key, problem and fix."""
    case.mutate(mini_fed)
    with pytest.raises(ConfigError) as info:
        load_federation(mini_fed.path)
    err = info.value
    assert err.exit_code == ExitCode.USAGE
    assert err.file is not None and Path(err.file).name == case.file
    assert case.file in err.message
    if case.key is not None:
        assert err.key == case.key
        assert f": {case.key}: " in err.message
    assert case.message in err.message, err.message
    assert err.hint and case.hint in err.hint, err.hint


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_validation_error_cli(mini_fed: MiniFed, case: Case) -> None:
    """The CLI prints `veil: error:` and a hint on stderr, nothing on stdout, and exits 2."""
    case.mutate(mini_fed)
    result = CliRunner().invoke(main, ["tables", "-f", str(mini_fed.path)])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith("veil: error: ")
    assert case.file in lines[0] and case.message in lines[0]
    if case.key is not None:
        assert case.key in lines[0]
    assert lines[1].startswith("hint: ") and case.hint in lines[1]
    assert len(lines) == 2


def test_missing_federation_file(tmp_path: Path) -> None:
    """-f naming no file is a usage error, not a fall-through to another federation."""
    result = CliRunner().invoke(main, ["parties", "-f", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2 and result.stdout == ""
    assert "nope.toml" in result.stderr and "does not exist" in result.stderr


def test_valid_mini_federation(mini_fed: MiniFed) -> None:
    """A valid file loads into the model with defaults filled in and paths made absolute."""
    fed = load_federation(mini_fed.path)
    assert fed.name == "mini" and fed.party_names == ("shop", "club")
    assert (fed.default_epsilon, fed.default_delta, fed.timeout) == (1.0, 0.0, 30.0)
    assert fed.ledger_dir == mini_fed.root / "ledgers"
    assert fed.analysts["alice"].epsilon == 2.0 and fed.analysts["alice"].delta == 1e-6
    shop = fed.party("shop")
    assert shop is not None and shop.is_local
    assert shop.connector == f"csv:{mini_fed.root / 'data' / 'shop'}"
    assert shop.policy_file == mini_fed.policy_path("shop")
    orders = shop.tables["orders"]
    assert (orders.privacy_unit, orders.max_rows_per_unit, orders.join_reveal) == (
        "customer_id",
        2,
        "none",
    )
    # note is in the CSV but not in the policy: unusable (fail closed)
    assert list(orders.columns) == ["customer_id", "city", "amount"]
    assert orders.column("note") is None
    amount = orders.columns["amount"]
    assert (amount.role, amount.bounds, amount.type, amount.decimals) == (
        "value",
        (0, 500),
        "DOUBLE",
        2,
    )
    city = orders.columns["city"]
    assert (city.values, city.type, city.decimals) == (("oslo", "rome"), "VARCHAR", 0)
    club = fed.party("club")
    assert club is not None
    assert club.tables["members"].max_rows_per_unit == 1  # the default
    assert club.tables["members"].columns["level"].decimals == 0  # BIGINT


def test_model_is_frozen(mini_fed: MiniFed) -> None:
    """The loaded federation cannot be modified by accident."""
    fed = load_federation(mini_fed.path)
    with pytest.raises(AttributeError):
        fed.name = "other"  # type: ignore[misc]


def test_remote_party_checked_structurally(mini_fed: MiniFed) -> None:
    """A remote party's data is not opened; its value columns must declare decimals."""
    mini_fed.edit_federation(
        'address = "local"\nconnector = "csv:data/club"',
        'address = "club.example.org:7401"\nconnector = "csv:data/elsewhere"',
    )
    with pytest.raises(ConfigError) as info:
        load_federation(mini_fed.path)
    assert info.value.key == "tables.members.columns.level.decimals"
    assert "club.toml" in info.value.message
    mini_fed.edit_policy("club", "bounds = [1, 5]", "bounds = [1, 5], decimals = 0")
    fed = load_federation(mini_fed.path)
    club = fed.party("club")
    assert club is not None and not club.is_local
    assert club.tables["members"].columns["level"].type is None
    # The party's own node opens its data, and then the missing folder is an error.
    with pytest.raises(ConfigError, match="does not exist"):
        load_federation(mini_fed.path, open_remote=True)


def test_empty_policy_shares_nothing(mini_fed: MiniFed) -> None:
    """An empty policy file is valid: the party shares no table."""
    mini_fed.write_policy("club", "# nothing shared yet\n")
    club = load_federation(mini_fed.path).party("club")
    assert club is not None and club.tables == {}


@pytest.mark.parametrize(
    ("ctype", "expected"),
    [
        ("INTEGER", 0),
        ("BIGINT", 0),
        ("BOOLEAN", 0),
        ("HUGEINT", 0),
        ("DOUBLE", 2),
        ("FLOAT", 2),
        ("DECIMAL(10,2)", 2),
        ("DECIMAL(18,4)", 4),
        ("DECIMAL(38,10)", 6),
        ("DECIMAL(5,0)", 0),
        ("VARCHAR", 0),
        ("DATE", 0),
    ],
)
def test_default_decimals(ctype: str, expected: int) -> None:
    """Fixed-point digits follow the column type."""
    assert default_decimals(ctype) == expected
