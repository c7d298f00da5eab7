"""The plan cache: a repeated query is answered like the first (regression: the second run
of a query with delta failed with 'delta 1.6e-37 is below 1e-30', the cache re-checking the
charged delta of the kept plan as if it were a request)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from oracle import oracle_federation

import veilql
from veilql.engine.dp import LargeEpsilonWarning

DEMO = Path(__file__).resolve().parent.parent / "sample_data" / "demo"
JOIN = ("SELECT COUNT(*) AS n FROM bank.customers c JOIN insurer.policies p "
        "ON c.customer_id = p.customer_id")


@pytest.mark.parametrize("delta", [1e-6, 0.0])
def test_a_repeated_query_with_delta_runs_again(tmp_path: Path, delta: float) -> None:
    fed = oracle_federation(DEMO, tmp_path / "fed")
    with veilql.connect(fed, analyst="oracle") as session:
        first = session.sql(JOIN, epsilon=1.0, delta=delta)
        second = session.sql(JOIN, epsilon=1.0, delta=delta)
    assert first.columns == second.columns and len(second.rows) == 1


def test_a_kept_plan_repeats_the_large_epsilon_warning(tmp_path: Path) -> None:
    fed = oracle_federation(DEMO, tmp_path / "fed")
    with veilql.connect(fed, analyst="oracle") as session:
        for _ in range(2):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                session.sql("SELECT COUNT(*) AS n FROM bank.customers", epsilon=50.0,
                            delta=0)
            assert any(issubclass(w.category, LargeEpsilonWarning) for w in caught)
