"""Shared pytest fixtures. Other test modules may add theirs here.

- ``heldout``: the hand-written federation of ``tests/fixtures/heldout`` (hospital, pharmacy,
  lab), copied to a temporary folder with its data generated; yields its federation.toml.
- ``mini_fed``: a small, valid, writable federation (parties ``shop`` and ``club`` over CSV
  folders) whose files tests rewrite to provoke one validation error at a time.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

# The catalog commands' cache (veilql.connectors.catalog_cache) goes to a folder of this
# process, not to the user's ~/.cache, so runs never see each other's entries. Under
# pytest-xdist every worker inherits the controller's environment, so a folder this
# conftest made (marked by _OWN_CACHE) is replaced by one per worker; a folder the user set
# is kept.
_OWN_CACHE = "VEIL_TEST_OWN_CACHE_DIR"
if "VEIL_CACHE_DIR" not in os.environ or (
        os.environ.get(_OWN_CACHE) == os.environ["VEIL_CACHE_DIR"]):
    _cache = tempfile.mkdtemp(prefix="veil-cache-")
    os.environ["VEIL_CACHE_DIR"] = os.environ[_OWN_CACHE] = _cache
    atexit.register(shutil.rmtree, _cache, True)

FIXTURES = Path(__file__).parent / "fixtures"
HELDOUT = FIXTURES / "heldout"


def _load_make_data() -> Callable[[Path], Path]:
    spec = importlib.util.spec_from_file_location("heldout_make_data", HELDOUT / "make_data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build


@pytest.fixture(scope="session")
def heldout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """federation.toml of a fresh copy of the held-out federation, data generated."""
    root = tmp_path_factory.mktemp("heldout")
    shutil.copy(HELDOUT / "federation.toml", root / "federation.toml")
    shutil.copytree(HELDOUT / "rules", root / "rules")
    _load_make_data()(root / "data")
    return root / "federation.toml"


MINI_FEDERATION = """\
[federation]
name = "mini"
policies = "policies"

[[party]]
name = "shop"
address = "local"
connector = "csv:data/shop"

[[party]]
name = "club"
address = "local"
connector = "csv:data/club"

[analyst.alice]
epsilon = 2.0
delta = 1e-6
"""

MINI_SHOP_POLICY = """\
[tables.orders]
privacy_unit = "customer_id"
max_rows_per_unit = 2

[tables.orders.columns]
customer_id = { role = "key" }
city = { role = "group", values = ["oslo", "rome"] }
amount = { role = "value", bounds = [0, 500] }
"""

MINI_CLUB_POLICY = """\
[tables.members]
privacy_unit = "customer_id"

[tables.members.columns]
customer_id = { role = "key" }
level = { role = "value", bounds = [1, 5] }
"""


@dataclass
class MiniFed:
    """A writable federation folder; ``path`` is its federation.toml."""

    root: Path

    @property
    def path(self) -> Path:
        """The federation file."""
        return self.root / "federation.toml"

    def write_federation(self, text: str) -> Path:
        """Replace federation.toml."""
        self.path.write_text(text)
        return self.path

    def policy_path(self, party: str) -> Path:
        """Where ``party``'s policy lives."""
        return self.root / "policies" / f"{party}.toml"

    def write_policy(self, party: str, text: str) -> Path:
        """Replace (or create) ``policies/<party>.toml``."""
        self.policy_path(party).write_text(text)
        return self.policy_path(party)

    def edit_federation(self, old: str, new: str) -> None:
        """Replace ``old`` (which must occur) by ``new`` in federation.toml."""
        text = self.path.read_text()
        assert old in text, old
        self.path.write_text(text.replace(old, new, 1))

    def edit_policy(self, party: str, old: str, new: str) -> None:
        """Replace ``old`` (which must occur) by ``new`` in ``party``'s policy."""
        text = self.policy_path(party).read_text()
        assert old in text, old
        self.policy_path(party).write_text(text.replace(old, new, 1))


@pytest.fixture
def mini_fed(tmp_path: Path) -> MiniFed:
    """A valid two-party federation over CSV folders, ready to be broken by a test."""
    (tmp_path / "data" / "shop").mkdir(parents=True)
    (tmp_path / "data" / "club").mkdir(parents=True)
    (tmp_path / "data" / "shop" / "orders.csv").write_text(
        "customer_id,city,amount,note\n1,oslo,12.5,a\n2,rome,40.25,b\n1,rome,7.0,c\n"
    )
    (tmp_path / "data" / "club" / "members.csv").write_text(
        "customer_id,level,nickname\n1,3,x\n2,5,y\n"
    )
    (tmp_path / "policies").mkdir()
    fed = MiniFed(tmp_path)
    fed.write_federation(MINI_FEDERATION)
    fed.write_policy("shop", MINI_SHOP_POLICY)
    fed.write_policy("club", MINI_CLUB_POLICY)
    return fed
