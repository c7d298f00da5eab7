"""Golden plans: SQL in ``tests/golden/plans/*.sql``, ``veil explain`` text in ``*.plan``.

Regenerate after an intended change with ``VEIL_UPDATE_GOLDEN=1 pytest tests/test_plans.py``
and read the diff.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from veilql.engine.rewrite import compile_plan
from veilql.policies.loader import load_federation

GOLDEN = Path(__file__).parent / "golden" / "plans"
DEMO = Path(__file__).resolve().parent.parent / "sample_data" / "demo" / "federation.toml"
CASES = sorted(GOLDEN.glob("*.sql"))


@pytest.fixture(scope="module")
def federation():
    return load_federation(DEMO)


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_plan_matches_golden(federation, case: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = compile_plan(case.read_text(), federation).to_s() + "\n"
    expected = case.with_suffix(".plan")
    if os.environ.get("VEIL_UPDATE_GOLDEN") or not expected.exists():
        expected.write_text(text)
    assert text == expected.read_text()
