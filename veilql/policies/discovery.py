"""Which federation file a command uses (CONTRACT.md, `veil query`).

In order: the ``-f/--federation`` option, else ``$VEIL_FEDERATION``, else
``./federation.toml``, else the bundled sample federation (``sample_data/demo``). A file
named explicitly (option or variable) must exist: a typo never silently falls through to
the next candidate.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from veilql.errors import ConfigError

ENV_VAR = "VEIL_FEDERATION"
DEFAULT_NAME = "federation.toml"
SAMPLE_RELATIVE = Path("demo") / DEFAULT_NAME

_ORDER_HINT = (
    "pass -f FEDERATION, set $VEIL_FEDERATION, or run from a folder holding federation.toml"
)


def bundled_sample() -> Path | None:
    """The bundled ``sample_data/demo/federation.toml``, or None when it is not installed."""
    candidates: list[Path] = []
    spec = importlib.util.find_spec("sample_data")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) for p in spec.submodule_search_locations]
    # A source checkout without the package installed: sample_data sits beside veilql/.
    candidates.append(Path(__file__).resolve().parents[2] / "sample_data")
    for folder in candidates:
        path = folder / SAMPLE_RELATIVE
        if path.is_file():
            return path
    return None


def _explicit(value: str, origin: str) -> Path:
    path = Path(value).expanduser()
    if path.is_dir():
        path = path / DEFAULT_NAME
    if not path.is_file():
        raise ConfigError(
            f"federation file {str(path)!r} (from {origin}) does not exist",
            "check the path; a folder may be given if it holds federation.toml",
        )
    return path.absolute()


def find_federation(explicit: str | None) -> Path:
    """The federation file to use, following the discovery order of the module docstring.

    Raises ``ConfigError`` (exit 2) when the named file is missing or nothing is found.
    """
    if explicit:
        return _explicit(explicit, "-f/--federation")
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return _explicit(env, f"${ENV_VAR}")
    local = Path.cwd() / DEFAULT_NAME
    if local.is_file():
        return local
    sample = bundled_sample()
    if sample is not None:
        return sample
    raise ConfigError(
        "no federation file found, and the bundled sample is not installed", _ORDER_HINT
    )
