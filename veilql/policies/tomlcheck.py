"""Typed access to parsed TOML, where every problem becomes a ``ConfigError`` naming the file
and the dotted key (``tables.loans.columns.amount.bounds``), with a hint saying how to fix it.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from veilql.errors import ConfigError


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``did you mean 'x'? `` when a choice is close to ``word``, else ``''``.

    >>> did_you_mean("bound", ["role", "bounds"])
    "did you mean 'bounds'? "
    """
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {match[0]!r}? " if match else ""


def path_text(path: Path) -> str:
    """A path as shown in messages: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def is_number(v: object) -> bool:
    """True for TOML integers and floats (booleans are not numbers here)."""
    return isinstance(v, int | float) and not isinstance(v, bool)


class TomlFile:
    """Error helpers bound to one file, so every error names it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.text = path_text(path)

    def error(self, key: str | None, message: str, hint: str) -> ConfigError:
        """A ``ConfigError`` located at ``key`` of this file."""
        return ConfigError(message, hint, file=self.text, key=key)

    def check_keys(self, table: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
        """Unknown keys (typos) are errors; ``where`` is the dotted path of ``table``."""
        for key in table:
            if key not in allowed:
                full = f"{where}.{key}" if where else key
                raise self.error(
                    full,
                    f"unknown key {key!r}",
                    f"{did_you_mean(key, allowed)}allowed here: {', '.join(allowed)}",
                )

    def table(self, value: Any, key: str, example: str) -> dict[str, Any]:
        """``value`` if it is a TOML table, else an error showing ``example``."""
        if not isinstance(value, dict):
            raise self.error(
                key, f"must be a table, got {describe(value)}", f"write it as {example}"
            )
        return value

    def string(
        self,
        table: Mapping[str, Any],
        name: str,
        where: str,
        example: str,
        default: str | None = None,
    ) -> str:
        """The non-empty string ``table[name]``; ``default`` when absent, or an error."""
        key = f"{where}.{name}" if where else name
        if name not in table:
            if default is not None:
                return default
            raise self.error(key, "is required", f"add {name} = {example}")
        v = table[name]
        if not isinstance(v, str) or not v.strip():
            raise self.error(
                key, f"must be a non-empty string, got {describe(v)}", f"write {name} = {example}"
            )
        return v.strip()

    def number(
        self,
        table: Mapping[str, Any],
        name: str,
        where: str,
        *,
        default: float | None,
        minimum: float = 0.0,
        strict: bool = False,
        below: float | None = None,
    ) -> float:
        """The finite number ``table[name]`` checked against ``minimum`` (excluded when
        ``strict``) and ``below``; ``default`` when absent (None: required)."""
        key = f"{where}.{name}" if where else name
        if name not in table:
            if default is None:
                raise self.error(key, "is required", f"add {name} = <number>")
            return default
        v = table[name]
        if not is_number(v) or not math.isfinite(v):
            raise self.error(key, f"must be a number, got {describe(v)}", f"write {name} = 1.0")
        too_small = v <= minimum if strict else v < minimum
        if too_small:
            bound = f"greater than {minimum:g}" if strict else f"at least {minimum:g}"
            raise self.error(
                key, f"must be {bound}, got {v!r}", "budgets, costs and timeouts cannot be negative"
            )
        if below is not None and v >= below:
            raise self.error(
                key,
                f"must be less than {below:g}, got {v!r}",
                "delta is a probability; typical values are 1e-6 or smaller",
            )
        return float(v)


def describe(v: object) -> str:
    """A TOML-flavoured description of ``v`` for error messages.

    >>> describe(True), describe(3), describe("x"), describe([1])
    ('boolean true', 'number 3', "string 'x'", 'an array')
    """
    if isinstance(v, bool):
        return f"boolean {str(v).lower()}"
    if isinstance(v, int | float):
        return f"number {v!r}"
    if isinstance(v, str):
        return f"string {v!r}"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "a table"
    return type(v).__name__


def read_toml(path: Path, what: str, hint: str) -> dict[str, Any]:
    """Parse the TOML file ``path``; a missing file or bad syntax is a ``ConfigError``."""
    f = TomlFile(path)
    if not path.is_file():
        raise f.error(None, f"{what} not found", hint)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise f.error(None, f"invalid TOML: {exc}", "fix the TOML syntax at that line") from exc
    except OSError as exc:
        raise f.error(
            None, f"cannot read {what}: {exc.strerror}", "check the file's permissions"
        ) from exc
