"""The dry-run preview: a ± for each count and sum, a sum and count for an AVG, and no
made-up ± for variances and quantiles (built from several noisy parts)."""

from __future__ import annotations

import veilql
from veilql.ui.preview import accuracy_preview


def test_statistics_say_their_interval_comes_after_release() -> None:
    session = veilql.connect(analyst="alice")
    try:
        result = session.sql(
            "SELECT region, VAR_SAMP(income) AS v, MEDIAN(income) AS m, COUNT(*) AS n, "
            "AVG(income) AS a FROM bank.customers GROUP BY region", epsilon=1.0, dry_run=True)
    finally:
        session.close()
    preview = dict(accuracy_preview(result.plan))
    assert preview["v"] == "known after release (from 3 noisy moments)"
    assert preview["m"].startswith("known after release (from ")
    assert preview["m"].endswith(" noisy histogram buckets)")
    assert preview["n"].startswith("± ")
    assert preview["a"].startswith("sum ± ") and " over a count ± " in preview["a"]
    assert "region" not in preview
