"""`veil query`, `explain`, `budget`, `ledger verify`: formats, exit codes, charging."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from veilql.cli import main

DEMO = Path(__file__).resolve().parent.parent / "sample_data" / "demo"
COUNT_BY_REGION = "SELECT region, COUNT(*) AS n FROM bank.customers GROUP BY region"
CROSS = ("SELECT COUNT(*) AS n, SUM(l.amount) AS total FROM bank.loans l "
         "JOIN insurer.policies p ON l.customer_id = p.customer_id WHERE p.open_claim = 1")


@pytest.fixture()
def fed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the demo federation (its own ledgers); alice is the analyst."""
    root = tmp_path / "fed"
    shutil.copytree(DEMO, root, ignore=shutil.ignore_patterns("ledgers"))
    monkeypatch.delenv("VEIL_LEDGER_DIR", raising=False)
    monkeypatch.setenv("VEIL_ANALYST", "alice")
    return root / "federation.toml"


def veil(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def remaining(fed: Path, party: str = "bank") -> float:
    out = veil("budget", "-f", str(fed), "--format", "json")
    data = json.loads(out.stdout)
    return {r[0]: r[2] for r in data["rows"]}[party]


def test_json_output_follows_the_contract(fed: Path) -> None:
    res = veil("query", "-f", str(fed), "--format", "json", "--epsilon", "1", CROSS)
    assert res.exit_code == 0, res.stderr
    obj = json.loads(res.stdout)
    assert set(obj) == {"columns", "rows", "accuracy", "privacy", "budget"}
    assert obj["columns"] == ["n", "total"]
    assert len(obj["rows"]) == 1 and isinstance(obj["rows"][0][0], int)
    assert obj["accuracy"]["n"]["ci95"] > 0 and obj["accuracy"]["total"]["ci95"] > 0
    # Noise sampled on shares charges its tiny sampling distance as delta (docs/PRIVACY.md).
    assert obj["privacy"]["epsilon"] == 1.0 and 0.0 <= obj["privacy"]["delta"] < 1e-20
    assert set(obj["budget"]) == {"bank", "insurer"}
    assert obj["budget"]["bank"]["epsilon_remaining"] == pytest.approx(9.0)


@pytest.mark.parametrize("fmt", ["table", "json", "jsonl", "csv"])
def test_every_format(fed: Path, fmt: str) -> None:
    res = veil("query", "-f", str(fed), "--format", fmt, "--epsilon", "0.5", COUNT_BY_REGION)
    assert res.exit_code == 0, res.stderr
    out = res.stdout
    if fmt == "table":
        assert "±" in out and "north" in out
        assert "spent epsilon 0.5" in res.stderr
    elif fmt == "json":
        assert len(json.loads(out)["rows"]) == 5
    elif fmt == "jsonl":
        rows = [json.loads(line) for line in out.splitlines()]
        assert len(rows) == 5 and set(rows[0]) == {"region", "n"}
    else:
        rows = list(csv.reader(io.StringIO(out)))
        assert rows[0] == ["region", "n", "n_ci95"] and len(rows) == 6  # CONTRACT


def test_options_clause_beats_flags_and_default(fed: Path) -> None:
    sql = ("SELECT WITH DIFFERENTIAL_PRIVACY OPTIONS (epsilon = 0.25) COUNT(*) AS n "
           "FROM bank.loans")
    obj = json.loads(veil("query", "-f", str(fed), "--format", "json", "--epsilon", "3",
                          sql).stdout)
    assert obj["privacy"]["epsilon"] == 0.25
    obj = json.loads(veil("query", "-f", str(fed), "--format", "json",
                          "SELECT COUNT(*) AS n FROM bank.loans").stdout)
    assert obj["privacy"]["epsilon"] == 1.0  # the federation's default_epsilon


def test_refused_query_exits_1_and_charges_nothing(fed: Path) -> None:
    before = remaining(fed)
    res = veil("query", "-f", str(fed), "SELECT loan_id FROM bank.loans")
    assert res.exit_code == 1 and res.stdout == ""
    assert res.stderr.startswith("veil: error: ") and "\nhint: " in res.stderr
    assert remaining(fed) == before


def test_budget_stops_exactly_where_it_ends(fed: Path) -> None:
    """alice has epsilon 10 at every party: four queries of 2.5 fit, the fifth does not."""
    for _ in range(4):
        res = veil("query", "-f", str(fed), "--epsilon", "2.5", CROSS)
        assert res.exit_code == 0, res.stderr
    res = veil("query", "-f", str(fed), "--epsilon", "2.5", CROSS)
    assert res.exit_code == 4 and res.stdout == ""
    assert "requested epsilon 2.5, remaining 0.0, short by 2.5" in res.stderr
    assert remaining(fed, "bank") == 0.0 and remaining(fed, "insurer") == 0.0
    assert remaining(fed, "payments") == 10.0  # not read, not charged
    # a query that still fits (payments only) runs
    ok = veil("query", "-f", str(fed), "--epsilon", "1", "SELECT COUNT(*) FROM payments.accounts")
    assert ok.exit_code == 0


def test_refusal_at_one_party_charges_no_party(fed: Path) -> None:
    assert veil("query", "-f", str(fed), "--epsilon", "9.5",
                "SELECT COUNT(*) FROM bank.loans").exit_code == 0
    res = veil("query", "-f", str(fed), "--epsilon", "1", CROSS)
    assert res.exit_code == 4
    assert "bank: requested epsilon 1.0, remaining 0.5, short by 0.5" in res.stderr
    assert remaining(fed, "insurer") == 10.0


def test_dry_run_and_explain_spend_nothing(fed: Path) -> None:
    res = veil("query", "-f", str(fed), "--dry-run", "--format", "json", CROSS)
    assert res.exit_code == 0 and json.loads(res.stdout)["dry_run"] is True
    res = veil("explain", "-f", str(fed), CROSS)
    assert res.exit_code == 0
    assert "secure join bank with insurer" in res.stdout
    assert "charged at bank, insurer" in res.stdout
    assert remaining(fed) == 10.0


def test_usage_errors_exit_2(fed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VEIL_ANALYST")
    res = veil("query", "-f", str(fed), COUNT_BY_REGION)
    assert res.exit_code == 2 and res.stdout == "" and "no analyst" in res.stderr
    res = veil("query", "-f", str(fed), "--analyst", "mallory", COUNT_BY_REGION)
    assert res.exit_code == 2 and "known analysts: alice, bob" in res.stderr
    res = veil("query", "-f", str(fed / "nope.toml"), COUNT_BY_REGION)
    assert res.exit_code == 2
    res = veil("query", "-f", str(fed), "--format", "xml", COUNT_BY_REGION)
    assert res.exit_code == 2


def test_sql_from_stdin(fed: Path) -> None:
    res = CliRunner().invoke(main, ["query", "-f", str(fed), "--format", "csv", "-"],
                             input="SELECT COUNT(*) AS n FROM bank.loans")
    assert res.exit_code == 0 and res.stdout.startswith("n,n_ci95\n")


def test_large_epsilon_warns(fed: Path) -> None:
    res = veil("query", "-f", str(fed), "--epsilon", "6", "--format", "json",
               "SELECT COUNT(*) FROM bank.loans")
    assert res.exit_code == 0 and "veil: warning: epsilon 6 is above 5" in res.stderr
    json.loads(res.stdout)  # stdout stays clean


def test_ledger_verify_detects_tampering(fed: Path) -> None:
    assert veil("query", "-f", str(fed), "--epsilon", "1", CROSS).exit_code == 0
    res = veil("ledger", "verify", "-f", str(fed))
    assert res.exit_code == 0 and "bank" in res.stdout and "FAILED" not in res.stdout
    ledger = fed.parent / "ledgers" / "bank.jsonl"
    text = ledger.read_text()
    ledger.write_text(text.replace('"epsilon":"1"', '"epsilon":"0.1"', 1))
    assert text != ledger.read_text()
    res = veil("ledger", "verify", "-f", str(fed))
    assert res.exit_code == 3 and "FAILED" in res.stdout


@pytest.mark.slow
def test_concurrent_processes_never_overspend(fed: Path) -> None:
    """12 `veil query` processes at once with budget for 5: exactly 5 release."""
    env = {**os.environ, "VEIL_ANALYST": "alice"}
    cmd = [sys.executable, "-m", "veilql.cli", "query", "-f", str(fed), "--epsilon", "2",
           "--format", "json", "SELECT COUNT(*) FROM bank.loans"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(12)]
    codes = [p.wait(timeout=300) for p in procs]
    assert sorted(codes) == [0] * 5 + [4] * 7
    assert remaining(fed) == 0.0
    assert veil("ledger", "verify", "-f", str(fed)).exit_code == 0


def test_demo_runs_a_cross_party_query_and_leaves_no_state(monkeypatch) -> None:
    monkeypatch.delenv("VEIL_LEDGER_DIR", raising=False)
    res = veil("demo")
    assert res.exit_code == 0, res.stderr
    assert "default_rate" in res.stdout and "±" in res.stdout
    assert "spent epsilon 2" in res.stdout
    assert "VEIL_LEDGER_DIR" not in os.environ
    assert not (DEMO / "ledgers").exists()


def test_embedded_mode_says_once_that_it_enforces_nothing(fed: Path) -> None:
    # Every party runs in the analyst's process: say so, plainly, for a cross-party query.
    res = veil("query", "-f", str(fed), "--epsilon", "0.5", CROSS)
    assert res.exit_code == 0, res.stderr
    assert res.stderr.count("veil: warning: running embedded") == 1
    assert "only `veil serve` nodes enforce" in res.stderr
    one = veil("query", "-f", str(fed), "--epsilon", "0.5", COUNT_BY_REGION)
    assert one.exit_code == 0 and "running embedded" not in one.stderr
