"""Golden refusals: each tests/golden/refusals/<case>.sql must fail as <case>.txt says.

The .txt holds the error class, the message and the hint. Regenerate with
``VEIL_UPDATE_GOLDEN=1 pytest tests/test_sql_refusals.py`` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sql_fixtures import catalog, federation

from veilql.engine.sql.bind import bind
from veilql.engine.sql.parse import parse
from veilql.errors import PolicyError, QueryError, UnsupportedError

GOLDEN = Path(__file__).parent / "golden" / "refusals"
CASES = sorted(p.stem for p in GOLDEN.glob("*.sql"))


def _refusal(sql: str) -> QueryError:
    """The error binding ``sql`` raises (the test fails when it binds)."""
    with pytest.raises(QueryError) as info:
        bind(parse(sql), federation(), catalog())
    return info.value


def _render(error: QueryError) -> str:
    return f"{type(error).__name__}\n{error.message}\nhint: {error.hint}\n"


def test_enough_cases() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES)
def test_refusal(case: str) -> None:
    sql = (GOLDEN / f"{case}.sql").read_text()
    got = _render(_refusal(sql))
    expected_file = GOLDEN / f"{case}.txt"
    if os.environ.get("VEIL_UPDATE_GOLDEN") == "1":
        expected_file.write_text(got)
    assert got == expected_file.read_text()


@pytest.mark.parametrize("case", CASES)
def test_refusal_is_a_query_error_with_hint(case: str) -> None:
    error = _refusal((GOLDEN / f"{case}.sql").read_text())
    assert error.hint
    assert error.exit_code == 1
    if not type(error).__name__ == "ParseError":
        assert isinstance(error, PolicyError | UnsupportedError)
