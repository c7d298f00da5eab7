"""Central discrete Laplace sampled on shares (issue 12): law, distance, plans, privacy of views.

- The sampled law: the exact pmf of the sampled geometric (from the public thresholds, in exact
  arithmetic) is within the claimed distance of the ideal one; the coin thresholds are the
  rounded probabilities.
- The released noise of cross-party COUNT and SUM plans, drawn on shares by the real protocol
  over many cells, passes a chi-square test against ONE DLap of the plan's scale (p > 1e-6),
  and the same test rejects a scale 30% off and the distributed noise (two DLap summed).
- Plans: which mechanism ``auto`` picks, the exact delta charged, the deterministic noise
  bound, the refusals, local mode unchanged, partition selection on one draw.
- A compute party's view while the noise is sampled is independent of the noise: per message,
  the bytes it receives for cells whose noise is negative and for the others pass a two-sample
  chi-square test (and the same test rejects the clear coins).
- End to end (slow): 95% intervals of COUNT, SUM and AVG across two and three parties cover the
  truth 93-97% of the time.
"""

from __future__ import annotations

import math
import warnings
from decimal import Context, Decimal
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from oracle import HUGE_EPSILON, oracle_federation
from scipy import stats
from sql_fixtures import federation

import veilql
from veilql.engine.dp import NoisePlan, calibrate, ci95
from veilql.engine.dp.accuracy import dlap_sum_log_tail
from veilql.engine.dp.calibrate import calibrate_central_laplace
from veilql.engine.dp.central import (
    MAX_DISTANCE,
    charged_delta,
    digits,
    distance_per_cell,
    thresholds,
)
from veilql.engine.dp.ring import SAFE_RANGE, noise_bound
from veilql.engine.mpc.protocols.boolean import unpack_low
from veilql.engine.mpc.protocols.noise import dlap_on_shares
from veilql.engine.mpc.runtime import Runtime
from veilql.engine.mpc.shares import AShare
from veilql.engine.mpc.testing import deterministic_seeds, run_three
from veilql.engine.operators.noise import add_noise
from veilql.engine.rewrite import compile_plan
from veilql.engine.transport.base import read_transcript
from veilql.errors import QueryError

P_MIN = 1e-6
DEMO = Path(__file__).resolve().parent.parent / "sample_data" / "demo"
# Cross-party, private group keys: the cell bound is 2^33, so the protocol may be run on many
# cells with this very plan. COUNT, SUM and the selection count all get central noise.
GROUPED = ("SELECT c.branch, COUNT(*) AS n, SUM(c.income) AS s FROM bank.customers c "
           "JOIN insurer.policies p ON c.customer_id = p.customer_id GROUP BY c.branch")
TWO_PARTY = ("SELECT COUNT(*) AS n, SUM(l.amount) AS s FROM bank.loans l "
             "JOIN insurer.policies p ON l.customer_id = p.customer_id")


def _plan(sql: str, epsilon: float = 1.0, delta: float = 1e-6, mechanism: str = "auto"):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compile_plan(sql, federation(), epsilon=epsilon, delta=delta,
                            mechanism=mechanism)


# ---------------------------------------------------------------- exact law and distance


def _ideal_geometric(t: float, n: int) -> list[Decimal]:
    """P(G = g) = (1 - q) q^g for g < n, at 100 digits (independent of central.py's 80)."""
    ctx = Context(prec=100)
    q = ctx.exp(ctx.minus(ctx.divide(Decimal(1), Decimal(t))))
    one_q = ctx.subtract(Decimal(1), q)
    # (Decimal's operators round to the default 28 digits: use the context's methods)
    td = Decimal(t)
    return [ctx.multiply(one_q, ctx.exp(ctx.minus(ctx.divide(Decimal(g), td))))
            for g in range(n)]


def _sampled_geometric(t: float) -> list[Fraction]:
    """The exact pmf of the sampled G' = sum_k 2^k b_k, P(b_k = 1) = tau_k / 2^128."""
    probs = [Fraction(tau, 2**128) for tau in thresholds(t)]
    pmf = [Fraction(1)]
    for k, p in enumerate(probs):
        # digit k doubles the support: values with bit k clear, then with it set
        pmf = [v * (1 - p) for v in pmf] + [v * p for v in pmf]
        assert len(pmf) == 2 ** (k + 1)
    return pmf


@pytest.mark.parametrize("t", [0.5, 1.0, 3.0, 6.0])
def test_sampled_geometric_is_within_the_claimed_distance(t: float) -> None:
    """TV(G', G), computed exactly, is at most half the per-cell bound (two geometrics)."""
    sampled = _sampled_geometric(t)
    ideal = [Fraction(p) for p in _ideal_geometric(t, len(sampled))]  # exact from here on
    ctx = Context(prec=100)
    inside = sum((abs(s - i) for s, i in zip(sampled, ideal, strict=True)), Fraction(0))
    # mass of the ideal law at g >= 2^K, which the sampler never outputs: q^(2^K)
    tail = Fraction(ctx.exp(ctx.minus(ctx.divide(Decimal(2 ** digits(t)), Decimal(t)))))
    tv = (inside + tail) / 2
    bound = distance_per_cell(t)
    slack = Fraction(1, 10**90)  # the 100-digit reference itself
    assert tv <= bound / 2 + slack
    assert tv >= bound / 2 / 2**8  # and the bound is not wildly loose


def test_thresholds_are_the_rounded_coin_probabilities() -> None:
    ctx = Context(prec=100)
    for t in (0.01, 1.0, 6.0, 4e6, 6e7, 1e16):
        th = thresholds(t)
        assert len(th) == digits(t) and all(0 <= tau < 2**127 for tau in th)
        for k, tau in enumerate(th):
            e = ctx.exp(ctx.minus(ctx.divide(Decimal(2**k), Decimal(t))))
            p = ctx.divide(e, ctx.add(1, e))
            assert abs(ctx.subtract(Decimal(tau), ctx.multiply(p, Decimal(2**128)))) \
                <= Decimal("0.5000001")
        # K is the smallest with q^(2^K) <= 2^-100
        assert 2 ** digits(t) >= 100 * math.log(2) * t * (1 - 1e-12)
        assert digits(t) == 0 or 2 ** (digits(t) - 1) < 100 * math.log(2) * t * (1 + 1e-12)


def test_charged_delta_is_the_lemma_bound_rounded_up() -> None:
    eta = Fraction(3, 10**30)
    for eps in (Fraction(1, 10), Fraction(1), Fraction(20)):
        got = charged_delta(eta, eps)
        assert got is not None and got >= eta * (1 + Fraction(math.exp(float(eps))))
        assert got <= eta * (1 + Fraction(math.exp(float(eps)))) * Fraction(11, 10)
    assert charged_delta(eta, Fraction(10**12)) is None
    assert charged_delta(Fraction(0), Fraction(1)) == 0


# ---------------------------------------------------------------- plans


def test_auto_picks_central_laplace_across_parties_with_delta() -> None:
    plan = _plan(TWO_PARTY)
    assert plan.mode == "secure"
    eps_share = Fraction(1, 2)
    for agg in plan.aggregates:
        noise = agg.noise
        assert isinstance(noise, NoisePlan) and noise.central and noise.adders == ()
        assert noise.draws == 1 and noise.cells == 1
        assert noise.scale == agg.l1 / 0.5
        assert noise_bound(noise) == 2**noise.bits - 1
        assert noise.distance == distance_per_cell(noise.scale)
        assert noise.delta == charged_delta(noise.distance, Fraction(1))
        assert 0 < noise.delta < Fraction(1, 10**29) and noise.epsilon == eps_share
        assert "sampled on shares, known to no party" in noise.describe()
    assert plan.delta == sum((a.noise.delta for a in plan.aggregates), Fraction(0))
    assert "one draw per cell is sampled on shares" in plan.to_s()


def test_pure_epsilon_keeps_the_two_adder_laplace_and_forced_names_hold() -> None:
    pure = _plan(TWO_PARTY, delta=0)
    assert all(not a.noise.central and a.noise.adders == (0, 1) for a in pure.aggregates)
    assert pure.delta == 0
    forced = _plan(TWO_PARTY, mechanism="laplace")
    assert all(not a.noise.central and a.noise.delta == 0 for a in forced.aggregates)
    central = _plan(TWO_PARTY, mechanism="central_laplace")
    assert all(a.noise.central for a in central.aggregates)
    with pytest.raises(QueryError, match="needs delta > 0"):
        _plan(TWO_PARTY, delta=0, mechanism="central_laplace")


def test_local_mode_is_unchanged() -> None:
    plan = _plan("SELECT region, COUNT(*) AS n FROM bank.customers GROUP BY region")
    assert plan.mode == "local"
    assert all(not a.noise.central and a.noise.adders == (0,) for a in plan.aggregates)
    forced = _plan("SELECT COUNT(*) AS n FROM bank.customers", mechanism="central_laplace")
    assert forced.aggregates[0].noise.adders == (0,) and forced.delta == 0


def test_gaussian_still_wins_when_a_person_touches_many_cells() -> None:
    plan = calibrate(64, 8.0, 1.0, 1e-6, cells=100)
    assert plan.mechanism == "gaussian"
    central = calibrate(1, 1.0, 1.0, 1e-6, cells=100)
    assert central.central
    assert central.total_variance < calibrate(1, 1.0, 1.0, 1e-6).total_variance / 1.9


def test_huge_epsilon_falls_back_to_the_distributed_laplace() -> None:
    """The oracle tests run at 1e12: e^epsilon makes the distance charge meaningless there,
    so the two-adder Laplace (tiny noise) is used, and the ring check accepts it."""
    plan = _plan(TWO_PARTY, epsilon=HUGE_EPSILON)
    assert all(not a.noise.central for a in plan.aggregates)
    with pytest.raises(QueryError, match="more than the"):
        calibrate_central_laplace(1, 1.0, Fraction(10**12), Fraction(1, 10**6), 1)
    # where it still fits, K is tiny at a large epsilon
    assert calibrate(1, 1.0, 40.0, 1e-6, cells=10).bits <= 2


def test_refusals_name_what_to_change() -> None:
    with pytest.raises(QueryError, match=r"above 2\^-60") as too_many:
        calibrate_central_laplace(1, 1.0, Fraction(1), Fraction(1, 10**6), 2**80)
    assert "public values" in (too_many.value.hint or "")
    with pytest.raises(QueryError, match="more than the") as small:
        calibrate_central_laplace(1, 1.0, Fraction(1), Fraction(1, 10**30), 2**33)
    assert "raise delta" in (small.value.hint or "")
    # auto just falls back when it does not fit
    assert not calibrate(1, 1.0, 1.0, 1e-30, cells=2**33).central


def test_query_distance_is_below_2_to_minus_60_and_charged_within_delta() -> None:
    plan = _plan(GROUPED)
    central = [a.noise for a in plan.aggregates]
    assert all(n.central for n in central) and {a.name for a in plan.aggregates} >= {
        "n", "s", "__selection"}
    assert all(n.cells == 2**33 for n in central)
    assert sum((n.distance for n in central), Fraction(0)) <= MAX_DISTANCE
    per_aggregate = Fraction(1, 10**6) / 2 / len(central)
    assert all(n.delta <= per_aggregate for n in central)
    assert plan.delta == sum((n.delta for n in central), Fraction(0)) + Fraction(1, 2 * 10**6)
    assert plan.delta <= Fraction(1, 10**6)


def test_partition_selection_threshold_is_for_one_draw() -> None:
    central = _plan(GROUPED)
    distributed = _plan(GROUPED, mechanism="laplace")
    assert central.threshold is not None and distributed.threshold is not None
    assert central.threshold < distributed.threshold
    sel = next(a for a in central.aggregates if a.name == "__selection").noise
    t = sel.scale
    # P(DLap(t) >= T) <= (delta/2) / reach, and T is the smallest such
    alpha = 1e-6 / 2 / 1
    assert math.exp(dlap_sum_log_tail(t, 1, central.threshold)) / 2 <= alpha
    assert math.exp(dlap_sum_log_tail(t, 1, central.threshold - 1)) / 2 > alpha


def test_error_bars_are_one_draw() -> None:
    import opendp.prelude as dp

    plan = calibrate(3, 3.0, 0.5, 1e-6, cells=1)
    assert plan.central
    acc = dp.discrete_laplacian_scale_to_accuracy(plan.scale, 0.05)
    assert ci95(plan) == math.ceil(acc) - 1
    assert ci95(plan) < ci95(calibrate(3, 3.0, 0.5, 0))


def test_ring_check_uses_the_exact_central_bound() -> None:
    """A central plan is refused only when 2^K - 1 itself does not fit, and the epsilon the
    refusal names is accepted."""
    with pytest.raises(QueryError, match="sampled on shares, up to") as err:
        _plan(TWO_PARTY, epsilon=1e-9, mechanism="central_laplace")
    least = float((err.value.hint or "").split()[-1])
    again = _plan(TWO_PARTY, epsilon=least, mechanism="central_laplace")
    assert again.epsilon == Fraction(repr(least))
    s = again.aggregate("s").noise
    assert s.central and noise_bound(s) < SAFE_RANGE
    # three significant digits: 1% less no longer fits
    with pytest.raises(QueryError):
        _plan(TWO_PARTY, epsilon=least * 0.99, mechanism="central_laplace")


# ---------------------------------------------------------------- the released noise's law


def _dlap_cdf(t: float, x: np.ndarray) -> np.ndarray:
    """P(X <= x) for X ~ DLap(t), x integer: P(X >= a) = p^a / (1 + p) for a >= 1."""
    p = math.exp(-1 / t)
    x = np.asarray(x, dtype=np.float64)
    pos = 1 - np.exp(-(x + 1) / t) / (1 + p)  # x >= 0
    neg = np.exp(x / t) / (1 + p)  # x < 0: P(X <= x) = P(X >= -x)
    return np.where(x >= 0, pos, neg)


def _two_dlap_cdf(t: float, x: np.ndarray) -> np.ndarray:
    """P(Z <= x) for Z the sum of two DLap(t) (the distributed plan's released noise)."""
    def upper(a: float) -> float:  # P(Z >= a), a >= 1
        return math.exp(dlap_sum_log_tail(t, 2, int(a))) / 2

    return np.array([1 - upper(v + 1) if v >= 0 else upper(-v) for v in np.asarray(x)])


def chi2_cdf(samples: np.ndarray, cdf, bins: int = 30) -> float:  # type: ignore[no-untyped-def]
    """Chi-square over ~equal-probability integer bins of a distribution given by its cdf."""
    lo, hi = int(samples.min()) - 1, int(samples.max()) + 1
    cuts = []
    for q in np.linspace(0, 1, bins + 1)[1:-1]:
        a, b = lo, hi  # smallest integer x with cdf(x) >= q, by bisection
        while b - a > 1:
            mid = (a + b) // 2
            if cdf(np.array([mid]))[0] >= q:
                b = mid
            else:
                a = mid
        cuts.append(b)
    edges = np.unique(cuts)
    probs = np.diff(np.concatenate([[0.0], cdf(edges), [1.0]]))
    observed = np.bincount(np.searchsorted(edges, samples, side="left"),
                           minlength=len(probs))
    keep = probs > 0
    expected = probs[keep] / probs[keep].sum() * len(samples)
    return float(stats.chisquare(observed[keep], expected).pvalue)


@pytest.fixture(scope="module")
def released_noise() -> tuple[object, np.ndarray]:
    """The grouped plan's noise on 20,000 cells of zero aggregates, through add_noise."""
    plan = _plan(GROUPED)
    cells = 20_000
    zeros = np.zeros((len(plan.aggregates), cells), dtype=np.uint64)

    def prog(rt: Runtime):  # type: ignore[no-untyped-def]
        x = AShare(rt.me, zeros.copy(), zeros.copy())
        return rt.open(add_noise(rt, plan, x)).view(np.int64)

    with deterministic_seeds("central-law"):
        out = run_three(prog, timeout=300.0)
    assert (out[0] == out[1]).all() and (out[1] == out[2]).all()
    return plan, out[0]


@pytest.mark.parametrize("name", ["n", "s", "__selection"])
def test_released_noise_is_one_central_dlap(released_noise, name: str) -> None:  # type: ignore[no-untyped-def]
    plan, noise = released_noise
    i = [a.name for a in plan.aggregates].index(name)
    t = plan.aggregates[i].noise.scale
    draws = noise[i]
    assert (np.abs(draws) < 2 ** plan.aggregates[i].noise.bits).all()
    assert chi2_cdf(draws, lambda x: _dlap_cdf(t, x)) > P_MIN
    assert chi2_cdf(draws, lambda x: _dlap_cdf(1.3 * t, x)) < P_MIN
    assert chi2_cdf(draws, lambda x: _dlap_cdf(t / 1.3, x)) < P_MIN
    assert chi2_cdf(draws, lambda x: _two_dlap_cdf(t, x)) < P_MIN  # today's two shares
    # RMSE against a central curator's DLap(t): 1x
    ratio = float(np.sqrt(np.mean(draws.astype(np.float64) ** 2))) / math.sqrt(
        2 * math.exp(-1 / t) / (1 - math.exp(-1 / t)) ** 2)
    assert 0.97 < ratio < 1.03


# ---------------------------------------------------------------- what a compute party sees


def test_a_compute_partys_view_is_independent_of_the_noise(tmp_path: Path) -> None:
    """Party 1's received bytes during the sampling, per message, for the cells whose noise
    is negative and for the others: a two-sample chi-square does not tell them apart, while
    the same test on the clear coins does (so it would detect a leak)."""
    t = 2.0
    th = thresholds(t)
    k, cells = len(th), 6000

    def prog(rt: Runtime):  # type: ignore[no-untyped-def]
        d = dlap_on_shares(rt, [th], cells)
        return rt.open(d).view(np.int64)[0]

    with deterministic_seeds("central-view"):
        noise = run_three(prog, transcript_dir=str(tmp_path))[0]
    negative = noise < 0
    assert 0.3 < negative.mean() < 0.5
    n = 2 * cells * k  # coins, in (geometric, cell, digit) order
    cell_of_coin = (np.arange(n) // k) % cells
    msgs = [(tag, payload) for _frm, tag, payload in read_transcript(tmp_path / "p1.bin")
            if tag.startswith(("coin", "b2a"))]
    assert len(msgs) >= 8  # 7 AND rounds and the two B2A messages party 1 receives
    mask = negative[cell_of_coin]
    for tag, payload in msgs:
        if len(payload) < n:  # the last AND levels travel bit-packed: 4 bits or 1 per coin
            bits = 4 if len(payload) == -(-n // 2) else 1
            assert len(payload) == -(-n // (8 // bits))
            vals = unpack_low(np.frombuffer(payload, dtype=np.uint8), bits, (n,))
            levels = 1 << bits
            assert stats.chisquare(np.bincount(vals, minlength=levels)).pvalue > P_MIN
            table = np.stack([np.bincount(vals[mask], minlength=levels),
                              np.bincount(vals[~mask], minlength=levels)])
            assert stats.chi2_contingency(table).pvalue > P_MIN, tag
            continue
        per_coin = len(payload) // n
        assert per_coin * n == len(payload)
        # a message is one array over the coins, or two (the first AND round), of words
        # of ``width`` bytes
        rows = 2 if tag.endswith("/l64") else 1
        width = per_coin // rows
        raw = np.frombuffer(payload, dtype=np.uint8)
        byts = raw.reshape(rows, n, width).transpose(1, 0, 2).reshape(n, -1)
        assert stats.chisquare(np.bincount(byts.ravel(), minlength=256)).pvalue > P_MIN
        table = np.stack([np.bincount(byts[mask].ravel(), minlength=256),
                          np.bincount(byts[~mask].ravel(), minlength=256)])
        assert stats.chi2_contingency(table).pvalue > P_MIN, tag
    # control: the clear coins (what an unmasked message would carry) depend on the noise
    with deterministic_seeds("central-view-control"):
        from veilql.engine.mpc.protocols.noise import geometric_bits

        def coins(rt: Runtime):  # type: ignore[no-untyped-def]
            b = geometric_bits(rt, th, (2, cells))
            return rt.open(b)

        clear = run_three(coins)[0]
    weights = 2 ** np.arange(k)
    g = (clear * weights).sum(-1)
    neg = (g[0] - g[1]) < 0
    per_cell = clear.transpose(1, 0, 2).reshape(cells, -1)
    table = np.stack([per_cell[neg].sum(0), per_cell[~neg].sum(0)]) + 1
    assert stats.chi2_contingency(table).pvalue < P_MIN
    # and the noise values never appear in party 1's or 2's transcript as 8-byte words
    for party in ("p1", "p2"):
        blob = b"".join(p for _f, _t, p in read_transcript(tmp_path / f"{party}.bin"))
        big = [int(v) for v in np.unique(noise) if abs(int(v)) > 40]
        for v in big:
            assert int(v).to_bytes(8, "little", signed=True) not in blob


# ---------------------------------------------------------------- end to end


SECURE_QUERIES = {
    "two parties": ("SELECT a.segment, COUNT(*) AS n, SUM(a.monthly_txn_amount) AS s, "
                    "AVG(a.monthly_txn_amount) AS m FROM payments.accounts a "
                    "JOIN insurer.policies p ON a.customer_id = p.customer_id "
                    "GROUP BY a.segment"),
    "three parties": ("SELECT a.segment, COUNT(*) AS n, SUM(a.monthly_txn_amount) AS s, "
                      "AVG(a.monthly_txn_amount) AS m FROM bank.customers c "
                      "JOIN payments.accounts a ON c.customer_id = a.customer_id "
                      "JOIN insurer.policies p ON p.customer_id = c.customer_id "
                      "GROUP BY a.segment"),
}


@pytest.mark.slow
@pytest.mark.parametrize("which", sorted(SECURE_QUERIES))
def test_intervals_cover_the_truth_end_to_end(tmp_path: Path, which: str) -> None:
    sql = SECURE_QUERIES[which]
    fed = oracle_federation(DEMO, tmp_path / "fed")
    runs = 300
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with veilql.connect(fed, "oracle") as session:
            truth = session.sql(sql, epsilon=HUGE_EPSILON, delta=0).rows
            results = [session.sql(sql, epsilon=1.0, delta=1e-6) for _ in range(runs)]
    plan = results[0].plan
    assert all(a.noise.central for a in plan.aggregates)
    cols = results[0].columns
    for col in ("n", "s", "m"):
        j = cols.index(col)
        hits = []
        for res in results:
            for r, (row, want) in enumerate(zip(res.rows, truth, strict=True)):
                assert row[0] == want[0]
                if col == "m":
                    half = res.accuracy[col]["ci95_rows"][r]
                else:
                    half = res.accuracy[col]["ci95"]
                hits.append(abs(row[j] - want[j]) <= half * (1 + 1e-9))
        covered = float(np.mean(hits))
        assert 0.93 <= covered <= 0.975, (which, col, covered)
    # the released errors of the count pass the chi-square against one DLap of the plan
    errors = np.array([r.rows[i][1] - truth[i][1] for r in results for i in range(len(truth))])
    t = plan.aggregate("n").noise.scale
    assert chi2_cdf(errors, lambda x: _dlap_cdf(t, x), bins=12) > 1e-4


# ---------------------------------------------------------------- shared noisy parts (AVG)


SHARED = ("SELECT COUNT(*) AS n, SUM(l.amount) AS s, AVG(l.amount) AS m, "
          "AVG(l.amount + p.premium) AS mp, AVG(p.premium + l.amount) AS pm "
          "FROM bank.loans l JOIN insurer.policies p ON l.customer_id = p.customer_id")


def test_avg_shares_the_noisy_sum_and_count_and_the_budget_split_follows() -> None:
    plan = _plan(SHARED)
    names = [a.name for a in plan.aggregates]
    # m reuses s; m's denominator counts non-NULL amounts, so it is its own aggregate; mp
    # and pm (a sum of two parties' parts) count the rows where no part is NULL, one
    # denominator for both (the same rows whatever the order of the parts)
    assert names == ["n", "s", "m.den", "mp.num", "mp.den", "pm.num"]
    outs = {o.name: o.aggregates for o in plan.outputs}
    assert outs["m"] == ("s", "m.den") and outs["mp"] == ("mp.num", "mp.den")
    assert outs["pm"] == ("pm.num", "mp.den")
    assert all(a.noise.epsilon == Fraction(1, 6) for a in plan.aggregates)
    assert plan.epsilon == 1
    dup = _plan("SELECT COUNT(*) AS a, COUNT(*) AS b FROM bank.loans l "
                "JOIN insurer.policies p ON l.customer_id = p.customer_id")
    assert [a.name for a in dup.aggregates] == ["a"] and dup.aggregates[0].noise.epsilon == 1


def test_shared_parts_are_released_once_end_to_end(tmp_path: Path) -> None:
    sql = ("SELECT COUNT(*) AS n, SUM(a.monthly_txn_amount) AS s, "
           "AVG(a.monthly_txn_amount + p.premium) AS mp, AVG(p.premium) AS pp "
           "FROM payments.accounts a JOIN insurer.policies p ON a.customer_id = p.customer_id")
    fed = oracle_federation(DEMO, tmp_path / "fed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with veilql.connect(fed, "oracle") as session:
            res = session.sql(sql, epsilon=1.0, delta=1e-6)
            exact = session.sql(sql, epsilon=HUGE_EPSILON, delta=0)
    n, s, mp, pp = res.rows[0]
    assert [a.name for a in res.plan.aggregates] == ["n", "s", "mp.num", "mp.den", "pp.num",
                                                     "pp.den"]
    # mp's denominator counts the rows where neither part is NULL (SQL's AVG of a + p)
    assert res.plan.aggregate("mp.den").cross is not None
    assert exact.rows[0][0] > 0 and abs(n - exact.rows[0][0]) < 100
    assert res.accuracy["mp"]["ci95"] is not None and s > 0 and pp > 0
