"""Docs that cannot rot: every command, option, config key and exit code is documented."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from veilql.cli import main
from veilql.errors import ExitCode
from veilql.policies import columns as column_rules
from veilql.policies import loader

REFERENCE = (Path(__file__).resolve().parent.parent / "docs" / "reference.md").read_text()


def _commands(group: click.Group, prefix: str = "veil") -> list[tuple[str, click.Command]]:
    out = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):  # the top group loads its commands lazily
        cmd = group.get_command(ctx, name)
        assert cmd is not None
        path = f"{prefix} {name}"
        if isinstance(cmd, click.Group):
            out += _commands(cmd, path)
        else:
            out.append((path, cmd))
    return out


def _section(path: str) -> str:
    match = re.search(rf"^### {re.escape(path)}\n(.*?)(?=^### |\Z)", REFERENCE, re.M | re.S)
    assert match, f"docs/reference.md has no section '### {path}'"
    return match.group(1)


@pytest.mark.parametrize("path,command", _commands(main), ids=[p for p, _ in _commands(main)])
def test_every_command_and_option_is_documented(path: str, command: click.Command) -> None:
    section = _section(path)
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            longest = max(param.opts, key=len)
            assert longest in section, f"{path}: option {longest} is not documented"


def test_every_exit_code_is_documented() -> None:
    for code in ExitCode:
        assert re.search(rf"^\| {int(code)} \|", REFERENCE, re.M), f"exit code {int(code)}"


def test_every_configuration_key_is_documented() -> None:
    keys = (*loader.FEDERATION_KEYS, *loader.PARTY_KEYS, *loader.ANALYST_KEYS,
            *loader.TABLE_KEYS, *column_rules.COLUMN_KEYS)
    for key in keys:
        assert re.search(rf"\b{key}\b", REFERENCE), f"configuration key {key} is not documented"
