"""The sample federation: a bank, a payments platform and an insurer over synthetic people.

``DEMO_FEDERATION`` is the committed demo (20,000 people); ``python -m
sample_data.generate --people N --out DIR`` writes a fresh one of any size.
"""

from __future__ import annotations

from pathlib import Path

DEMO_DIR: Path = Path(__file__).resolve().parent / "demo"
DEMO_FEDERATION: Path = DEMO_DIR / "federation.toml"

__all__ = ["DEMO_DIR", "DEMO_FEDERATION"]
