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
