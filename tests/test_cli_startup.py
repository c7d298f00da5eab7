"""`veil --version` and `--help` start without the heavy modules; every lazy command loads."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from veilql.cli import COMMANDS, main

HEAVY = ("numpy", "duckdb", "pyarrow", "opendp", "sqlglot", "cryptography")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_listed_command_loads_under_its_name(name: str) -> None:
    command = main.get_command(click.Context(main), name)
    assert isinstance(command, click.Command) and command.name == name
    assert COMMANDS[name][2].endswith(".")


@pytest.mark.parametrize("args", [["--version"], ["--help"]])
def test_version_and_help_import_no_heavy_module(args: list[str]) -> None:
    code = ("import sys\nfrom veilql.cli import main\n"
            f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{HEAVY!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_a_one_party_query_opens_only_that_partys_connector_after_loading(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The session plans from the catalogs the federation's loader read (names only), so a
    query of the bank opens no other party's connector again; the names are the
    connectors' own."""
    import warnings
    from pathlib import Path

    import veilql
    from veilql.connectors import base
    from veilql.engine import node as node_module
    from veilql.policies.loader import load_federation

    demo = Path(__file__).resolve().parent.parent / "sample_data" / "demo"
    monkeypatch.setenv("VEIL_LEDGER_DIR", str(tmp_path))
    fed = load_federation(demo / "federation.toml")
    opened: list[str] = []
    real = base.open_connector
    monkeypatch.setattr(node_module, "open_connector",
                        lambda spec, root: (opened.append(spec), real(spec, root))[1])
    with veilql.connect(fed, "alice") as session, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        session.sql("SELECT region, COUNT(*) AS n FROM bank.customers GROUP BY region",
                    epsilon=0.1)
        catalog = session.catalog()
    assert opened == [fed.party("bank").connector]
    for party in fed.parties:
        with real(party.connector, fed.root) as conn:
            assert catalog[party.name] == {t: [c.name for c in cols]
                                           for t, cols in conn.catalog().items()}
