"""Clamping released values (veilql.engine.clamp): counts at 0, averages to their bounds.

Off by default; on per query and per session; counts never negative and averages inside their
bounds; the intervals flagged and still covering what the unclamped interval intersected with
the range covers; nothing charged differently; every output format says so.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from sql_fixtures import federation

import veilql
from veilql.cli import main
from veilql.engine.clamp import clamp_result, note, output_range, range_text
from veilql.engine.result import Result
from veilql.engine.rewrite import compile_plan
from veilql.engine.session import Session
from veilql.ui.magic.args import parse_query
from veilql.ui.shell.core import Shell

DEMO = Path(__file__).resolve().parent.parent / "sample_data" / "demo"
# No customer is older than 88 (bounds [18, 100]): every count's truth is 0, so at a small
# epsilon about half of the released counts are negative and the averages land anywhere.
EMPTY = ("SELECT region, COUNT(*) AS n, AVG(age) AS a, SUM(age) AS s, COUNT(*) * 2 AS n2 "
         "FROM bank.customers WHERE age > 95 GROUP BY region")
CROSS = ("SELECT COUNT(*) AS n, AVG(a.monthly_txn_amount + p.premium) AS mp, "
         "AVG(p.premium) AS pp FROM payments.accounts a JOIN insurer.policies p "
         "ON a.customer_id = p.customer_id WHERE p.premium > 4999")


def oracle_federation(src: Path, dst: Path) -> Path:
    """``oracle.oracle_federation`` without any ledgers left in ``src`` (another run's
    ledger or key, caught mid-write, would make a node refuse): an analyst with a budget
    that never runs out."""
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("ledgers"))
    fed = dst / "federation.toml"
    with fed.open("a") as fh:
        fh.write("\n[analyst.oracle]\nepsilon = 1e15\ndelta = 0.5\n")
    return fed


def _plan(sql: str):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compile_plan(sql, federation(), epsilon=1.0)


@pytest.fixture()
def oracle(tmp_path: Path) -> Path:
    return oracle_federation(DEMO, tmp_path / "fed")


# ---------------------------------------------------------------- ranges and the interval


def test_ranges_come_from_the_plan() -> None:
    plan = _plan("SELECT COUNT(*) AS n, COUNT(DISTINCT customer_id) AS u, "
                 "COUNT(*) FILTER (WHERE age < 30) AS young, SUM(income) AS s, "
                 "AVG(age) AS a, AVG(age + 1) AS a1, SUM(income) / COUNT(*) AS r "
                 "FROM bank.customers")
    got = {o.name: output_range(plan, o) for o in plan.outputs}
    assert got == {"n": (0.0, None), "u": (0.0, None), "young": (0.0, None),
                   "s": (0.0, None), "a": (18.0, 100.0), "a1": (19.0, 101.0), "r": None}


def test_cross_party_avg_over_the_row_count_includes_zero() -> None:
    """An AVG whose argument spans parties divides by the row count, and a NULL part adds 0."""
    plan = _plan(CROSS)
    ranges = {o.name: output_range(plan, o) for o in plan.outputs}
    assert plan.aggregate(plan.outputs[1].aggregates[1]).kind == "count"
    assert ranges["mp"] == (0.0, 25000.0)
    assert ranges["pp"] == (0.0, 5000.0)


def test_a_sum_of_values_of_both_signs_has_no_range() -> None:
    plan = _plan("SELECT SUM(income) AS s, AVG(income) AS a FROM bank.customers")
    step = plan.steps[0]
    cols = tuple(replace(c, bounds=(-5.0, 5.0)) if c.bounds is not None else c
                 for c in step.columns)
    plan = replace(plan, steps=(replace(step, columns=cols),))
    assert output_range(plan, plan.outputs[0]) is None
    assert output_range(plan, plan.outputs[1]) == (-5.0, 5.0)


def test_clamped_interval_covers_the_interval_within_the_range() -> None:
    """For any released v, half-width h and range R: the clamped value v' and its reported
    half-width h' satisfy [v - h, v + h] ∩ R ⊆ [v' - h', v' + h'] and h' <= h."""
    plan = _plan("SELECT COUNT(*) AS n, AVG(age) AS a FROM bank.customers")
    rng = random.Random(7)
    for _ in range(2000):
        n, hn = rng.randint(-50, 50), float(rng.randint(1, 40))
        a, ha = rng.uniform(-100, 250), rng.choice([rng.uniform(0.5, 200), math.inf])
        res = Result(["n", "a"], [[n, a]], {"n": {"ci95": hn}, "a": {"ci95": ha,
                                                                     "ci95_rows": [ha]}},
                     {"epsilon": 1.0, "delta": 0.0}, {}, plan)
        out = clamp_result(res)
        for (v, h, lo, hi), v2, h2 in (
                ((n, hn, 0.0, math.inf), out.rows[0][0], out.accuracy["n"]["ci95"]),
                ((a, ha, 18.0, 100.0), out.rows[0][1], out.accuracy["a"]["ci95_rows"][0])):
            assert lo <= v2 <= hi and h2 <= h
            left, right = max(v - h, lo), min(v + h, hi)
            if left <= right:  # the truth, in R, is in [v - h, v + h] ∩ R
                assert v2 - h2 <= left + 1e-9 and right <= v2 + h2 + 1e-9
        assert math.isfinite(out.accuracy["a"]["ci95_rows"][0])  # an AVG: within [18, 100]


def test_nothing_moves_inside_the_range_and_ints_stay_ints() -> None:
    plan = _plan("SELECT COUNT(*) AS n, AVG(age) AS a FROM bank.customers")
    res = Result(["n", "a"], [[12, 40.5], [-2, None]],
                 {"n": {"ci95": 3.0}, "a": {"ci95": 2.0, "ci95_rows": [2.0, None]}},
                 {"epsilon": 1.0, "delta": 0.0}, {}, plan)
    out = clamp_result(res)
    assert out.rows == [[12, 40.5], [0, None]] and isinstance(out.rows[1][0], int)
    assert out.accuracy["n"] == {"ci95": 3.0, "clamped": True, "range": [0.0, None],
                                 "rows_clamped": 1}
    assert out.accuracy["a"]["rows_clamped"] == 0 and out.accuracy["a"]["ci95_rows"] == [
        2.0, None]
    assert res.rows == [[12, 40.5], [-2, None]]  # the released result is left as it was
    assert note(out) == ("clamped (post-processing, biased, interval within the range): "
                         "n ≥ 0, a in [18, 100]")
    assert range_text([0.0, None]) == "[0, inf)"


# ---------------------------------------------------------------- end to end


def test_off_by_default_and_on_per_query_and_per_session(oracle: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with veilql.connect(oracle, "oracle") as session:
            assert session.clamp is False
            plain = [session.sql(EMPTY, epsilon=0.01, delta=0) for _ in range(4)]
            clamped = [session.sql(EMPTY, epsilon=0.01, delta=0, clamp=True)
                       for _ in range(4)]
        with veilql.connect(oracle, "oracle", clamp=True) as session:
            by_session = session.sql(EMPTY, epsilon=0.01, delta=0)
            overridden = session.sql(EMPTY, epsilon=0.01, delta=0, clamp=False)
    assert all("clamped" not in acc for r in plain + [overridden] for acc in r.accuracy.values())
    # about half of the 20 released counts of truth 0 are negative without clamping
    assert any(row[1] < 0 for r in plain for row in r.rows)
    for r in [*clamped, by_session]:
        assert r.accuracy["n"]["clamped"] and r.accuracy["a"]["clamped"]
        assert r.accuracy["s"]["clamped"] and r.accuracy["n2"]["clamped"] is False
        for _, n, a, s, _n2 in r.rows:
            assert n >= 0 and s >= 0 and (a is None or 18 <= a <= 100)
    assert sum(r.accuracy["n"]["rows_clamped"] for r in clamped) > 0


def test_nothing_is_charged_differently(oracle: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with veilql.connect(oracle, "oracle") as session:
            before = session.ledger("payments")
            a = session.sql(CROSS, epsilon=0.3, delta=1e-6)
            mid = session.ledger("payments").spent("oracle")  # type: ignore[union-attr]
            b = session.sql(CROSS, epsilon=0.3, delta=1e-6, clamp=True)
            after = session.ledger("payments").spent("oracle")  # type: ignore[union-attr]
    assert before is None
    assert a.privacy == b.privacy and a.plan.epsilon == b.plan.epsilon  # type: ignore[union-attr]
    assert after[0] - mid[0] == mid[0] and after[1] - mid[1] == mid[1]
    assert b.accuracy["mp"]["clamped"] and b.accuracy["mp"]["range"] == [0.0, 25000.0]


# ---------------------------------------------------------------- every output format


@pytest.fixture()
def fed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "fed"
    shutil.copytree(DEMO, root, ignore=shutil.ignore_patterns("ledgers"))
    monkeypatch.delenv("VEIL_LEDGER_DIR", raising=False)
    monkeypatch.setenv("VEIL_ANALYST", "alice")
    monkeypatch.setenv("VEIL_HISTORY", str(tmp_path / "history"))
    return root / "federation.toml"


def _veil(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


SMALL = "SELECT region, COUNT(*) AS n, AVG(age) AS a FROM bank.customers WHERE age > 95 " \
        "GROUP BY region"


def test_veil_query_formats_say_it(fed: Path) -> None:
    table = _veil("query", "-f", str(fed), "--epsilon", "0.1", "--clamp", SMALL)
    assert table.exit_code == 0, table.stderr
    assert "clamped (post-processing, biased, interval within the range): n ≥ 0, " \
           "a in [18, 100]" in table.stderr
    plain = _veil("query", "-f", str(fed), "--epsilon", "0.1", SMALL)
    assert "clamped" not in plain.stderr
    js = json.loads(_veil("query", "-f", str(fed), "--epsilon", "0.1", "--clamp",
                          "--format", "json", SMALL).stdout)
    assert js["accuracy"]["n"]["clamped"] is True and js["accuracy"]["n"]["range"] == [0, None]
    assert js["accuracy"]["a"]["range"] == [18, 100]
    assert all(row[1] >= 0 for row in js["rows"])
    rows = list(csv.reader(io.StringIO(_veil("query", "-f", str(fed), "--epsilon", "0.1",
                                             "--clamp", "--format", "csv", SMALL).stdout)))
    assert rows[0] == ["region", "n", "n_ci95", "n_clamped_to", "a", "a_ci95", "a_clamped_to"]
    assert {r[3] for r in rows[1:]} == {"[0, inf)"} and {r[6] for r in rows[1:]} == {
        "[18, 100]"}
    plain_csv = _veil("query", "-f", str(fed), "--epsilon", "0.1", "--format", "csv", SMALL)
    assert "clamped_to" not in plain_csv.stdout
    lines = _veil("query", "-f", str(fed), "--epsilon", "0.1", "--clamp", "--format", "jsonl",
                  SMALL).stdout.splitlines()
    assert all(json.loads(ln)["n"] >= 0 for ln in lines)


def test_print_html_shell_and_magic_say_it(fed: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Session(fed, "alice") as session:
            res = session.sql(SMALL, epsilon=0.1, clamp=True)
            plain = session.sql(SMALL, epsilon=0.1)
            shell = Shell(session)
            on = shell.handle_line(".clamp on")[0]
            reply = shell.handle_line(SMALL.replace("SELECT", "SELECT WITH DIFFERENTIAL_PRIVACY "
                                                    "OPTIONS (epsilon = 0.1)") + ";")[0]
            shown = shell.handle_line(".show")[0]
            off = shell.handle_line(".clamp off")[0]
            reply_off = shell.handle_line(SMALL.replace(
                "SELECT", "SELECT WITH DIFFERENTIAL_PRIVACY OPTIONS (epsilon = 0.1)") + ";")[0]
    text = "clamped (post-processing, biased, interval within the range): n ≥ 0"
    assert text in str(res) and text in res._repr_html_()
    assert "clamped" not in str(plain) and "clamped" not in plain._repr_html_()
    assert Result.INTERVAL_NOTE == "± is the half-width of a 95% interval of the noise"
    assert "clamping released counts at 0" in on.note and "clamping off" in off.note
    assert reply.error is None and text in reply.note
    assert "clamp" in shown.out and "clamped" not in reply_off.note
    assert parse_query("--clamp --epsilon 0.5", "SELECT 1").clamp is True
    assert parse_query("--epsilon 0.5", "SELECT 1").clamp is False


def test_magic_clamp_flag(fed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.setenv("VEIL_LEDGER_DIR", str(tmp_path / "ledgers"))
    InteractiveShell.clear_instance()
    ip = InteractiveShell.instance()
    try:
        ip.run_line_magic("load_ext", "veilql")
        ip.run_line_magic("veil", f"connect {fed} --analyst bob")
        out = ip.run_cell_magic("veil", "--epsilon 0.1 --clamp", SMALL)
        plain = ip.run_cell_magic("veil", "--epsilon 0.1", SMALL)
        ip.run_line_magic("unload_ext", "veilql")
    finally:
        InteractiveShell.clear_instance()
    assert out.accuracy["n"]["clamped"] is True and all(r[1] >= 0 for r in out.rows)
    assert "n ≥ 0" in repr(out) and "n ≥ 0" in out._repr_html_()
    assert "clamped" not in repr(plain) and "clamped" not in plain.accuracy["n"]
