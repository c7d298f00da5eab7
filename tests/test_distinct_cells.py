"""A large COUNT(DISTINCT x) is one noisy count per cell (issue #14): more cells, a count's noise.

The distinct values per cell are counted before any noise (``operators/histogram.py``), so
the query releases one count per cell with COUNT(*)'s sensitivity and noise plan, and no
longer one noisy count per (bucket, cell). Checked here: the comparison with 0 on shares
equals numpy at every batch size and at the ring's edge values; a query over one party's
tables in 4,743 and 153 cells (refused before: 47 M and 1.5 M bucket counts) equals
DuckDB at a huge epsilon; the released distinct counts' errors at epsilon 1 have exactly
the distribution of the plan's noise, which is COUNT(*)'s, and the same test rejects a
scale 30% off; across parties the noise on shares added to the distinct count is the
count's central discrete Laplace (a wrong scale rejected too); two parties grouped at
both sides with NULLs, WHERE and FILTER equal DuckDB.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from oracle import HUGE_EPSILON, plain, union_connection
from test_distinct_large import build
from test_dp_mechanisms import chi2_pvalue, total_pmf

import veilql
from veilql.engine.mpc.shares import AShare
from veilql.engine.mpc.testing import deterministic_seeds, run_three
from veilql.engine.operators.histogram import count_positive
from veilql.engine.operators.noise import add_noise
from veilql.engine.rewrite import compile_plan
from veilql.engine.session import Session
from veilql.policies.loader import load_federation

pytestmark = pytest.mark.filterwarnings("ignore::veilql.engine.dp.LargeEpsilonWarning")


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("distinct_cells") / "fed")


@pytest.mark.parametrize("chunk", [64, 64 * 7, 10**6])  # 1, 2 (of 7 cells) or all buckets
def test_count_positive_equals_numpy(chunk: int) -> None:
    rng = np.random.default_rng(chunk)
    counts = rng.integers(0, 3, (41, 7)).astype(np.uint64)
    counts[:, 0] = 0  # a cell with no value
    counts[0, 1], counts[1, 1], counts[2, 2] = 2**62 - 1, 1, 2**61  # the range's edges
    want = (counts > 0).sum(axis=0)

    def prog(rt):  # type: ignore[no-untyped-def]
        rt.chunk_words = chunk  # every party the same, as agree_chunk_words makes it
        x = rt.share(0, counts if rt.me == 0 else None, counts.shape)
        return rt.open(count_positive(rt, x)).view(np.int64)

    out = run_three(prog, timeout=120.0)
    assert all(np.array_equal(o, want) for o in out) and want[0] == 0


_CELLS = ("SELECT kind, FLOOR(price) AS p, COUNT(DISTINCT item) AS k, COUNT(*) AS n "
          "FROM shop.orders WHERE small > 10 GROUP BY 1, 2")


def _rows(session: Session, sql: str, epsilon: float) -> dict[tuple, list]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = session.sql(sql, epsilon=epsilon, delta=1e-6)
    groups = sum(1 for c in result.columns if c not in ("k", "n"))
    return {tuple(r[:groups]): list(r[groups:]) for r in result.rows}


@pytest.mark.slow  # the next test checks 4,743 cells against DuckDB in the default suite
def test_many_cells_over_one_party_equal_plain_duckdb(fed: Path) -> None:
    with veilql.connect(fed, "oracle") as session:
        got = _rows(session, _CELLS, HUGE_EPSILON)
        want = plain(union_connection(session.federation), _CELLS)
    assert len(got) == 3 * 51  # every public cell is released, 10,001 buckets each
    held = {k: v for k, v in got.items() if v[1] != 0}
    # a price below -10 is in no cell of FLOOR(price)'s domain, as GROUP BY's
    assert held == {(r[0], float(r[1])): [r[2], r[3]] for r in want if r[1] >= -10}
    assert len(held) > 100 and all(v == [0, 0] for k, v in got.items() if k not in held)


def test_released_distinct_counts_have_the_counts_noise(fed: Path) -> None:
    # 4,743 cells of one query: each cell's error is one draw of the released noise
    sql = ("SELECT kind, FLOOR(small / 10) AS s, FLOOR(price) AS p, COUNT(DISTINCT item) AS k, "
           "COUNT(*) AS n FROM shop.orders GROUP BY 1, 2, 3")
    plan = compile_plan(sql, load_federation(fed), epsilon=1.0, delta=1e-6)
    k, n = plan.aggregates
    assert k.buckets == 10001 and (k.l1, k.l2, k.noise) == (n.l1, n.l2, n.noise)
    with veilql.connect(fed, "oracle") as session:
        exact = _rows(session, sql, HUGE_EPSILON)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = session.sql(sql, epsilon=1.0, delta=1e-6)
        want = plain(union_connection(session.federation), sql)
    assert len(result.rows) == len(exact) == 3 * 31 * 51
    # exact at a huge epsilon (a price below -10 is in no cell of FLOOR(price)'s domain)
    held = {key: v for key, v in exact.items() if v[1] != 0}
    assert held == {(r[0], float(r[1]), float(r[2])): [r[3], r[4]] for r in want
                    if r[2] >= -10} and len(held) > 500
    assert result.accuracy["k"] == result.accuracy["n"]  # a count's error bar
    noise = result.plan.aggregates[0].noise
    pmf, zero = total_pmf(noise)
    wrong, wzero = total_pmf(replace(noise, scale=noise.scale * 1.3,
                                     party_scale=noise.party_scale * 1.3))
    for i in (0, 1):  # k, then n: the same law
        errors = np.array([r[3 + i] - exact[tuple(r[:3])][i] for r in result.rows])
        assert chi2_pvalue(errors, pmf, zero, bins=12) > 1e-4
        assert chi2_pvalue(errors, wrong, wzero, bins=12) < 1e-4


def test_across_parties_the_count_gets_the_counts_central_noise(fed: Path) -> None:
    """add_noise on shares, as secure mode calls it, over the 903 cells of zeros of a plan
    across parties, six times: the distinct count's row is one central DLap(t) per cell,
    t the COUNT(*)'s."""
    sql = ("SELECT o.kind, FLOOR(o.small / 1) AS s, COUNT(DISTINCT o.item) AS k, "
           "COUNT(*) AS n FROM shop.orders o JOIN club.members m "
           "ON o.customer_id = m.customer_id GROUP BY 1, 2")
    plan = compile_plan(sql, load_federation(fed), epsilon=1.0, delta=1e-6)
    k, n = plan.aggregates
    assert k.buckets and k.noise == n.noise and k.noise.central  # type: ignore[attr-defined]
    zeros = np.zeros((len(plan.aggregates), 3 * 301), dtype=np.uint64)

    def prog(rt):  # type: ignore[no-untyped-def]
        x = AShare(rt.me, zeros.copy(), zeros.copy())
        return np.concatenate([rt.open(add_noise(rt, plan, x)).view(np.int64)[0]
                               for _ in range(6)])

    with deterministic_seeds("distinct-cells"):
        out = run_three(prog, timeout=300.0)
    assert all(np.array_equal(o, out[0]) for o in out)
    noise = k.noise
    pmf, zero = total_pmf(noise)  # type: ignore[arg-type]
    wrong, wzero = total_pmf(replace(noise, scale=noise.scale * 1.3,  # type: ignore[type-var]
                                     party_scale=noise.party_scale * 1.3))  # type: ignore[union-attr]
    assert chi2_pvalue(out[0], pmf, zero, bins=12) > 1e-4
    assert chi2_pvalue(out[0], wrong, wzero, bins=12) < 1e-4


@pytest.mark.slow
def test_across_two_parties_grouped_at_both_equals_plain_duckdb(fed: Path) -> None:
    sql = ("SELECT o.kind, FLOOR(m.level) AS lv, COUNT(DISTINCT o.item) FILTER "
           "(WHERE o.small > 40) AS k, COUNT(*) AS n FROM shop.orders o JOIN club.members m "
           "ON o.customer_id = m.customer_id WHERE o.price > 0 GROUP BY 1, 2")
    with veilql.connect(fed, "oracle") as session:
        got = _rows(session, sql, HUGE_EPSILON)
        want = plain(union_connection(session.federation), sql)
    held = {k: v for k, v in got.items() if v[1] != 0}
    assert held == {(r[0], float(r[1])): [r[2], r[3]] for r in want} and len(held) == 15
