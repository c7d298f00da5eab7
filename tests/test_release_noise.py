"""The noise the analyst actually receives, end to end, has the claimed distribution.

The mechanism tests (test_dp_mechanisms.py) check the samplers with many draws; these
run the whole query path (local SQL, shares, noise shares from the adding parties or, with
delta > 0 across parties, one draw sampled on shares, opening at the analyst) many times and
check the released errors against the plan's claimed distribution, the 95% intervals'
coverage, and that the same test rejects a plan whose scale is 30% off.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from oracle import oracle_federation
from test_dp_mechanisms import chi2_pvalue, total_pmf

import veilql

DEMO = Path(__file__).resolve().parent.parent / "sample_data" / "demo"
LOCAL = "SELECT COUNT(*) AS n FROM payments.accounts"
SECURE = ("SELECT COUNT(*) AS n FROM payments.accounts a JOIN insurer.policies p "
          "ON a.customer_id = p.customer_id")


def _errors(tmp_path: Path, sql: str, runs: int,
            delta: float = 0) -> tuple[np.ndarray, list[float], object]:
    fed = oracle_federation(DEMO, tmp_path / "fed")
    with veilql.connect(fed, "oracle") as session:
        truth = session.sql(sql, epsilon=1e12, delta=0).rows[0][0]
        results = [session.sql(sql, epsilon=0.5, delta=delta) for _ in range(runs)]
    errors = np.array([r.rows[0][0] - truth for r in results])
    halves = [r.accuracy["n"]["ci95"] for r in results]
    return errors, halves, results[0].plan.aggregates[0].noise


@pytest.mark.slow
@pytest.mark.parametrize("sql,runs,delta", [(LOCAL, 1500, 0), (SECURE, 400, 0),
                                            (SECURE, 1500, 1e-6)],
                         ids=["local", "secure", "secure-central"])
def test_released_noise_has_claimed_distribution(tmp_path: Path, sql: str, runs: int,
                                                 delta: float) -> None:
    errors, halves, plan = _errors(tmp_path, sql, runs, delta)
    assert plan.central == (delta > 0)  # type: ignore[attr-defined]
    pmf, zero = total_pmf(plan)
    assert chi2_pvalue(errors, pmf, zero, bins=12) > 1e-4
    if runs >= 1500:  # enough draws to tell a 30% wrong scale apart
        wrong, wzero = total_pmf(replace(plan, scale=plan.scale * 1.3,
                                         party_scale=plan.party_scale * 1.3))
        assert chi2_pvalue(errors, wrong, wzero, bins=12) < 1e-4
    if delta > 0:  # and the distributed noise of before (two DLap(t) summed)
        two, tzero = total_pmf(replace(plan, central=False, adders=(0, 1)))
        assert chi2_pvalue(errors, two, tzero, bins=12) < 1e-4
    half = int(halves[0])
    assert all(h == halves[0] for h in halves)
    claimed = float(pmf[zero - half: zero + half + 1].sum())  # exact coverage of the interval
    assert 0.93 <= claimed <= 0.975
    covered = float(np.mean(np.abs(errors) <= half))
    assert abs(covered - claimed) <= 4 * np.sqrt(claimed * (1 - claimed) / runs), covered
