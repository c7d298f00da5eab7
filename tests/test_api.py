"""The Python API: ``veilql.connect()`` sessions, how a ``Result`` prints and converts, and
the purpose recorded with a query."""

from __future__ import annotations

import json
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

import veilql
from veilql.engine.result import Result
from veilql.errors import UsageError

DEMO = Path(__file__).resolve().parent.parent / "sample_data" / "demo"
BY_REGION = "SELECT region, COUNT(*) AS n, AVG(age) AS mean_age FROM bank.customers GROUP BY region"
REGIONS = ["north", "south", "east", "west", "central"]


@pytest.fixture()
def fed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the demo federation with its ledgers in a temporary folder."""
    root = tmp_path / "fed"
    shutil.copytree(DEMO, root, ignore=shutil.ignore_patterns("ledgers"))
    monkeypatch.setenv("VEIL_LEDGER_DIR", str(tmp_path / "ledgers"))
    monkeypatch.delenv("VEIL_ANALYST", raising=False)
    return root / "federation.toml"


@pytest.fixture()
def result(fed: Path) -> Result:
    with veilql.connect(fed, "alice") as session:
        return session.sql(BY_REGION, epsilon=1.0)


def test_result_prints_as_a_table_with_intervals(result: Result) -> None:
    lines = str(result).splitlines()
    assert lines[0].split() == ["region", "n", "mean_age"]
    assert set(lines[1]) <= {"-", " "}
    body = lines[2:7]
    assert [ln.split()[0] for ln in body] == REGIONS
    for line in body:  # counts as whole numbers, the AVG to the precision of its interval
        assert re.fullmatch(r"\w+\s+\d+ ± \d+\s+\d+\.\d+ ± \d+\.\d+", line), line
    assert lines[7].startswith("(5 rows; spent epsilon 1, delta 0; epsilon remaining after: "
                               "bank 9; ± is the half-width")
    assert repr(result) == "Result(columns=['region', 'n', 'mean_age'], rows=5)"


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cells: list[tuple[str, str]] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("td", "th"):
            self._in = dict(attrs).get("class") or tag

    def handle_data(self, data: str) -> None:
        if self._in is not None:
            self.cells.append((self._in, data))
            self._in = None


def test_result_html_in_a_notebook(result: Result) -> None:
    page = _Cells()
    page.feed(result._repr_html_())
    heads = [d for c, d in page.cells if c == "th"]
    assert heads == ["region", "n", "mean_age"]
    noisy = [d for c, d in page.cells if c == "veil-num"]
    assert len(noisy) == 10 and all(re.fullmatch(r"[\d.]+ ± [\d.]+", d) for d in noisy)
    text = str(result)
    assert all(d in text for d in noisy)  # one number format for HTML and text
    html = result._repr_html_()
    assert "spent ε 1, δ 0; remaining: bank (ε 9, δ 1e-05)" in html


def test_to_pandas_keeps_the_error_bars(result: Result) -> None:
    pd = pytest.importorskip("pandas")
    frame = result.to_pandas()
    assert list(frame.columns) == ["region", "n", "n_ci95", "mean_age", "mean_age_ci95"]
    assert list(frame["region"]) == REGIONS
    assert (frame["n_ci95"] == result.accuracy["n"]["ci95"]).all()
    assert list(frame["mean_age_ci95"]) == result.accuracy["mean_age"]["ci95_rows"]
    assert frame["n_ci95"].dtype == "float64"
    assert frame.attrs["privacy"] == {"epsilon": 1.0, "delta": 0.0}
    assert frame.attrs["ci95_columns"] == {"n": "n_ci95", "mean_age": "mean_age_ci95"}
    assert isinstance(frame, pd.DataFrame)


def test_to_pandas_without_pandas_says_what_to_install(result: Result,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now fails
    with pytest.raises(ImportError, match=r"needs pandas.*pip install pandas"):
        result.to_pandas()


def test_plot_draws_values_with_error_bars(result: Result) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    assert result.plot("n", ax=ax) is ax
    assert [t.get_text() for t in ax.get_xticklabels()] == REGIONS
    assert [b.get_height() for b in ax.containers[0]] == [float(r[1]) for r in result.rows]
    with pytest.raises(ValueError, match="not a released column"):
        result.plot("region", ax=ax)


def test_dry_run_prints_its_cost(fed: Path) -> None:
    with veilql.connect(fed, "alice") as session:
        dry = session.sql(BY_REGION, epsilon=0.5, dry_run=True)
    assert str(dry) == ("dry run, nothing released: would spend epsilon 0.5, delta 0; "
                        "epsilon remaining before: bank 10")
    assert "<b>dry run</b>" in dry._repr_html_()


def test_closed_session_refuses_every_call(fed: Path) -> None:
    session = veilql.connect(fed, "alice")
    assert not session.closed
    session.close()
    session.close()  # twice is harmless
    for call in (lambda: session.sql(BY_REGION), lambda: session.plan(BY_REGION),
                 lambda: session.explain(BY_REGION), session.budget, session.catalog,
                 lambda: session.ledger("bank")):
        with pytest.raises(UsageError, match=r"this session is closed; open a new one with "
                                             r"veilql\.connect\(\.\.\.\)"):
            call()
    with pytest.raises(UsageError, match="closed"), session:
        pass


def test_session_is_a_context_manager(fed: Path) -> None:
    with veilql.connect(fed, "alice") as session:
        assert session.budget()["bank"]["epsilon_remaining"] == 10.0
    assert session.closed
    with pytest.raises(UsageError, match="closed"):
        session.budget()


def test_purpose_is_recorded(fed: Path, tmp_path: Path) -> None:
    options = ("SELECT WITH DIFFERENTIAL_PRIVACY OPTIONS (epsilon = 0.5, purpose = 'churn "
               "model, Q3') COUNT(*) AS n FROM bank.loans")
    with veilql.connect(fed, "alice") as session:
        session.sql("SELECT COUNT(*) AS n FROM bank.loans", epsilon=0.5, purpose="fraud audit")
        session.sql(options)
        with pytest.raises(UsageError, match="two purposes"):
            session.sql(options, purpose="something else")
        with pytest.raises(UsageError, match="control or invisible"):
            session.sql("SELECT COUNT(*) AS n FROM bank.loans", purpose="a\x1bb")
        assert session.budget()["bank"]["epsilon_spent"] == 1.0  # the refusals spent nothing
    entries = [json.loads(line) for line in
               (tmp_path / "ledgers" / "bank.jsonl").read_text().splitlines()]
    reserves: list[dict[str, Any]] = [e for e in entries if e["kind"] == "reserve"]
    assert [e["purpose"] for e in reserves] == ["fraud audit", "churn model, Q3"]
    assert {e["identity"] for e in reserves} == {"self-asserted"}
