"""Golden plans: SQL in ``tests/golden/plans/*.sql``, ``veil explain`` text in ``*.plan``.

Regenerate after an intended change with ``VEIL_UPDATE_GOLDEN=1 pytest tests/test_plans.py``
and read the diff.
"""

from __future__ import annotations

import os
import warnings
from fractions import Fraction
from pathlib import Path

import pytest

from veilql.engine.rewrite import RULES, compile_plan
from veilql.engine.rewrite.attach_noise import attach_noise
from veilql.engine.rewrite.check_ranges import check_ranges
from veilql.errors import QueryError
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


def test_ring_check_runs_last() -> None:
    assert RULES[-1] is check_ranges and RULES[-2] is attach_noise


def test_plan_cost_is_exact_and_prints_as_before(federation) -> None:
    sql = "SELECT branch, COUNT(*) AS n, SUM(income) AS s FROM bank.customers GROUP BY branch"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = compile_plan(sql, federation, epsilon=0.3, delta=1e-6, mechanism="gaussian")
    # two Gaussian aggregates of delta 1e-6/2/3 each and the threshold's 1e-6/2
    assert plan.epsilon == Fraction(3, 10) and plan.delta == Fraction(1, 1_200_000)
    assert plan.delta == sum((a.noise.delta for a in plan.aggregates), Fraction(0)) \
        + Fraction(1, 2_000_000)
    assert "total cost epsilon=0.3 delta=8.333333333333333e-07" in plan.to_s()


@pytest.mark.parametrize(
    ("sql", "epsilon", "needle"),
    [("SELECT SUM(l.amount * 1e9) AS s FROM bank.loans l JOIN insurer.policies p "
      "ON l.customer_id = p.customer_id", 1.0, "narrow the bounds of column bank.loans.amount"),
     ("SELECT SUM(income) AS s FROM bank.customers", 1e-10, "raise epsilon to at least 5.39e-10"),
     ("SELECT COUNT(*) AS n FROM bank.loans", 1e-18, "raise epsilon to at least 1e-17")],
)
def test_out_of_range_plans_are_refused(federation, sql: str, epsilon: float,
                                        needle: str) -> None:
    with pytest.raises(QueryError) as err:
        compile_plan(sql, federation, epsilon=epsilon, delta=0)
    assert needle in (err.value.hint or "")


def test_suggested_epsilon_is_accepted_and_the_one_below_is_not(federation) -> None:
    sql = ("SELECT COUNT(*) AS n, AVG(l.amount) AS a FROM bank.loans l JOIN insurer.policies p "
           "ON l.customer_id = p.customer_id GROUP BY p.product")
    for delta in (0.0, 1e-20):
        with pytest.raises(QueryError) as err:
            compile_plan(sql, federation, epsilon=1e-12, delta=delta)
        least = float((err.value.hint or "").rsplit(" ", 1)[1])
        compile_plan(sql, federation, epsilon=least, delta=delta)
        if delta == 0:  # tight for Laplace; sufficient (Bun-Steinke) for the Gaussian
            with pytest.raises(QueryError):
                compile_plan(sql, federation, epsilon=least * 0.99, delta=delta)
