"""Run one query many times in smartnoise-sql; run by ``bench.accuracy`` in its own venv.

    bench/.venv-smartnoise/bin/python bench/smartnoise_worker.py < job.json

smartnoise-sql 1.0.10 pins OpenDP 0.14, which VeilQL's OpenDP 0.16 excludes, so it lives
in its own virtual environment and this script imports nothing from VeilQL. The job (on
stdin, JSON) names a CSV file, the table's metadata, the query, the per-measurement
epsilon and delta, and the number of runs. One JSON object goes to stdout: the rows of
every run (group, then aggregates), the privacy smartnoise says the query costs
(``get_privacy_cost``, the exact total spend of one run), seconds per query and versions.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> int:
    """Read the job from stdin, run it, print the result."""
    import pandas as pd
    import snsql
    from snsql import Privacy

    job = json.load(sys.stdin)
    df = pd.read_csv(job["csv"])
    privacy = Privacy(epsilon=job["epsilon"], delta=job["delta"])
    reader = snsql.from_df(df, privacy=privacy, metadata=job["metadata"])
    cost = reader.get_privacy_cost(job["sql"])
    runs = []
    t0 = time.perf_counter()
    for _ in range(job["runs"]):
        res = reader.execute(job["sql"])
        runs.append([list(r) for r in res[1:]])  # row 0 is the header
    seconds = (time.perf_counter() - t0) / max(1, job["runs"])
    from importlib.metadata import version

    json.dump({"runs": runs, "privacy_cost": list(cost), "seconds_per_query": seconds,
               "smartnoise_sql": version("smartnoise-sql"), "opendp": version("opendp")},
              sys.stdout, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
