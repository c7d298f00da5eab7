"""The Jupyter magic: parsing, HTML, the magic in an IPython shell, and notebooks in a kernel.

The kernel tests run ``docs/example.ipynb`` and a small notebook built here with nbclient,
on a kernel spec written to a temporary folder (the venv's Python running ipykernel), so the
user's Jupyter configuration and the repo's ledgers are never touched.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("IPython")
pd = pytest.importorskip("pandas")

from IPython.core.error import UsageError as IPythonUsageError  # noqa: E402
from IPython.core.interactiveshell import InteractiveShell  # noqa: E402
from traitlets import TraitError  # noqa: E402

from veilql.engine.result import Result  # noqa: E402
from veilql.errors import PolicyError, UsageError  # noqa: E402
from veilql.ui.html import cost_caption, result_html  # noqa: E402
from veilql.ui.magic import (  # noqa: E402
    BudgetTable,
    ConnectArgs,
    NotebookResult,
    PlanText,
    QueryArgs,
    VeilMagic,
    parse_connect,
    parse_query,
    to_ipython_error,
)

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "sample_data" / "demo"
EXAMPLE = ROOT / "docs" / "example.ipynb"
COUNT_BY_REGION = "SELECT region, COUNT(*) AS n FROM bank.customers GROUP BY region"
REGIONS = ["north", "south", "east", "west", "central"]
NOISY_CELL = re.compile(r'<td class="veil-num">-?[0-9.e+-]+ ± [0-9.e+]+</td>')


# -- argument parsing ----------------------------------------------------------------------
def test_parse_cell_options_and_body() -> None:
    args = parse_query("--epsilon 0.5 --delta=1e-7 --dry-run --explain --yes",
                       "\nSELECT 1\n")
    assert args == QueryArgs(sql="SELECT 1", epsilon=0.5, delta=1e-7, dry_run=True,
                             explain=True, yes=True)


def test_parse_keeps_sql_verbatim() -> None:
    sql = "SELECT COUNT(*) AS n FROM bank.customers -- all of them\nWHERE region = 'a  --b'"
    assert parse_query("", sql).sql == sql
    assert parse_query(f"--epsilon=2 {sql}").sql == sql  # one-line form


@pytest.mark.parametrize(
    ("line", "cell", "target", "sql"),
    [
        ("res <<", "SELECT 1", "res", "SELECT 1"),
        ("--epsilon 1 res<<", "SELECT 1", "res", "SELECT 1"),
        ("", "res << SELECT 1", "res", "SELECT 1"),
        ("", "  res <<\nSELECT 1", "res", "SELECT 1"),
        ("res << SELECT 1", None, "res", "SELECT 1"),
        ("", "SELECT a << 2 FROM t", None, "SELECT a << 2 FROM t"),
    ],
)
def test_parse_target(line: str, cell: str | None, target: str | None, sql: str) -> None:
    args = parse_query(line, cell)
    assert (args.target, args.sql) == (target, sql)


@pytest.mark.parametrize(
    ("line", "cell", "fragment"),
    [
        ("--epsilon", "SELECT 1", "--epsilon needs a value"),
        ("--epsilon abc", "SELECT 1", "needs a number, got 'abc'"),
        ("--epsilon nan", "SELECT 1", "needs a number"),
        ("--epsilonn 1", "SELECT 1", "unknown option '--epsilonn'"),
        ("--dry-run=yes", "SELECT 1", "unknown option '--dry-run=yes'"),
        ("--epsilon 1", "   \n", "no SQL given"),
        ("", None, "no SQL given"),
        ("a <<", "b << SELECT 1", "two variables"),
        ("stray words", "SELECT 1", "unexpected 'stray words'"),
        ("class <<", "SELECT 1", "Python keyword"),
    ],
)
def test_parse_errors(line: str, cell: str | None, fragment: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_query(line, cell)
    assert fragment in info.value.message
    assert info.value.hint


def test_parse_connect() -> None:
    assert parse_connect("") == ConnectArgs()
    assert parse_connect('"a b/f.toml" --analyst alice --timeout=2.5') == ConnectArgs(
        "a b/f.toml", "alice", 2.5)
    for bad, fragment in [("--analyst", "needs a value"), ("--user x", "unknown option"),
                          ("a.toml b.toml", "more than one"), ("'open", "cannot parse")]:
        with pytest.raises(UsageError, match=fragment):
            parse_connect(bad)


def test_veil_error_becomes_ipython_usage_error() -> None:
    err = PolicyError("key column customers.customer_id cannot be used", "use COUNT")
    exc = to_ipython_error(err)
    assert type(exc) is IPythonUsageError  # IPython hides the traceback only for this class
    assert str(exc) == ("key column customers.customer_id cannot be used (PolicyError)\n"
                        "hint: use COUNT")
    assert exc.veil_error is err


# -- HTML ----------------------------------------------------------------------------------
def _result(**kw: Any) -> Result:
    base: dict[str, Any] = dict(
        columns=["region", "n", "mean"],
        rows=[["<script>", 12, 2.5], ["a&b", 7, None]],
        accuracy={"n": {"ci95": 2.9}, "mean": {"ci95": 0.5, "ci95_rows": [0.5, None]}},
        privacy={"epsilon": 0.5, "delta": 1e-7},
        budget={"bank": {"epsilon_remaining": 9.5, "delta_remaining": 9e-06},
                "insurer": {"epsilon_remaining": 3.0, "delta_remaining": 1e-06}},
    )
    base.update(kw)
    return Result(**base)


def test_html_values_intervals_and_caption() -> None:
    text = result_html(_result())
    assert "<th>region</th><th>n</th><th>mean</th>" in text
    # one number format with the text table: two significant digits of the interval
    assert '<td class="veil-num">12 ± 3</td>' in text
    assert '<td class="veil-num">2.50 ± 0.50</td>' in text  # AVG: the row's own interval
    assert '<td class="veil-num">NULL</td>' in text
    assert ('<div class="veil-caption">spent ε 0.5, δ 1e-07; remaining: '
            "bank (ε 9.5, δ 9e-06), insurer (ε 3, δ 1e-06) (± is") in text


def test_html_large_sums_without_exponent() -> None:
    res = Result(["total"], [[14992882.44]], {"total": {"ci95": 4936000.0}},
                 {"epsilon": 1.0, "delta": 0.0}, {})
    assert '<td class="veil-num">14992882 ± 4936000</td>' in result_html(res)
    assert '<div class="veil-caption">spent ε 1, δ 0 (± is' in result_html(res)


def test_html_escapes_everything() -> None:
    text = result_html(_result(columns=["<b>", "n", "mean"],
                               accuracy={}, budget={"<i>": {"epsilon_remaining": 1.0,
                                                            "delta_remaining": 0.0}}))
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "a&amp;b" in text and "<th>&lt;b&gt;</th>" in text
    assert "<i>" not in text and "&lt;i&gt; (ε 1" in text


def test_html_dry_run() -> None:
    dry = _result(rows=[], accuracy={}, dry_run=True)
    text = result_html(dry)
    assert "<b>dry run</b>, nothing released: would spend ε 0.5" in text
    assert "<tbody></tbody>" in text
    assert cost_caption(dry).startswith("would spend")


def test_notebook_result_delegates() -> None:
    res = NotebookResult(_result())
    assert res.columns == ["region", "n", "mean"] and len(res) == 2
    assert list(res)[1] == ["a&b", 7, None]
    assert res._repr_html_() == result_html(res.result)
    assert "12 ± 3" in repr(res) and "spent epsilon 0.5" in repr(res)
    frame = res.to_pandas()
    assert list(frame.columns) == ["region", "n", "n_ci95", "mean", "mean_ci95"]
    assert list(frame["n"]) == [12, 7] and list(frame["n_ci95"]) == [2.9, 2.9]
    assert frame["mean_ci95"].iloc[0] == 0.5 and pd.isna(frame["mean_ci95"].iloc[1])
    assert frame.attrs["accuracy"]["n"] == {"ci95": 2.9}
    assert frame.attrs["privacy"] == {"epsilon": 0.5, "delta": 1e-7}
    assert frame.attrs["ci95_columns"] == {"n": "n_ci95", "mean": "mean_ci95"}


def test_html_and_text_share_one_number_format() -> None:
    res = Result(["total", "mean"], [[14992882.44, 0.08341]],
                 {"total": {"ci95": 4936000.0}, "mean": {"ci95": 0.01234}},
                 {"epsilon": 1.0, "delta": 0.0}, {})
    text, page = str(res), result_html(res)
    for cell in ("14992882 ± 4936000", "0.083 ± 0.012"):
        assert cell in text and f'<td class="veil-num">{cell}</td>' in page


def test_parse_variables_and_purpose() -> None:
    from veilql.ui.magic import expand_variables, parse_plot

    args = parse_query("--purpose 'churn review' --epsilon 1", "SELECT {{x}}")
    assert args.purpose == "churn review" and args.sql == "SELECT {{x}}"
    assert parse_query("--purpose=audit", "SELECT 1").purpose == "audit"
    sql = "SELECT COUNT(*) AS n FROM t WHERE region = '{{region}}' AND age > {{ age }}"
    assert expand_variables(sql, {"region": "north", "age": 30}) == (
        "SELECT COUNT(*) AS n FROM t WHERE region = 'north' AND age > 30")
    with pytest.raises(UsageError, match="undefined variable in the query: region"):
        expand_variables(sql, {"age": 1})
    with pytest.raises(UsageError, match="only numbers, text and booleans"):
        expand_variables("SELECT {{x}}", {"x": [1, 2]})
    assert expand_variables("SELECT '{x}' AS y", {}) == "SELECT '{x}' AS y"  # single braces
    assert parse_plot("total --x region").y == "total"
    with pytest.raises(UsageError, match="unknown option"):
        parse_plot("--colour red")


def test_plan_and_budget_tables() -> None:
    assert PlanText("a < b")._repr_html_() == '<pre class="veil-plan">a &lt; b</pre>'
    table = BudgetTable({"bank": {"epsilon_spent": 1.0, "epsilon_remaining": 9.0,
                                  "delta_spent": 0.0, "delta_remaining": 1e-5}}, "alice")
    assert table.rows == [["bank", 1.0, 9.0, 0.0, 1e-5]]
    assert table.to_pandas().loc["bank", "epsilon_remaining"] == 9.0
    assert "<td>bank</td>" in table._repr_html_()


# -- the magic in an in-process IPython shell (no kernel) -------------------------------
@pytest.fixture()
def fed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the demo federation with its ledgers in a temporary folder."""
    root = tmp_path / "fed"
    shutil.copytree(DEMO, root, ignore=shutil.ignore_patterns("ledgers"))
    monkeypatch.setenv("VEIL_LEDGER_DIR", str(tmp_path / "ledgers"))
    monkeypatch.delenv("VEIL_ANALYST", raising=False)
    monkeypatch.delenv("VEIL_FEDERATION", raising=False)
    return root / "federation.toml"


@pytest.fixture()
def shell(fed: Path) -> Any:
    """An IPython shell with the extension loaded and connected as bob (epsilon 3)."""
    # A fresh shell per test: %config values live in the shell's config and would leak.
    InteractiveShell.clear_instance()
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "veilql")
    ip.run_line_magic("veil", f"connect {fed} --analyst bob")
    yield ip
    ip.run_line_magic("unload_ext", "veilql")
    InteractiveShell.clear_instance()


def _magic(ip: Any) -> VeilMagic:
    return ip.magics_manager.registry["VeilMagic"]


def test_magic_runs_and_stores(shell: Any, capsys: pytest.CaptureFixture[str]) -> None:
    out = shell.run_cell_magic("veil", "--epsilon 0.5", COUNT_BY_REGION)
    assert isinstance(out, NotebookResult)
    assert [r[0] for r in out.rows] == REGIONS
    assert out.privacy["epsilon"] == 0.5
    assert out.budget["bank"]["epsilon_remaining"] == pytest.approx(2.5)
    assert shell.run_cell_magic("veil", "--epsilon 0.5 res <<", COUNT_BY_REGION) is None
    assert isinstance(shell.user_ns["res"], NotebookResult)
    assert "res: 5 rows; spent epsilon 0.5" in capsys.readouterr().out
    budget = shell.run_line_magic("veil", "budget")
    assert budget.budget["bank"]["epsilon_spent"] == pytest.approx(1.0)
    assert budget.budget["insurer"]["epsilon_spent"] == 0.0


def test_magic_dry_run_and_explain_spend_nothing(shell: Any) -> None:
    dry = shell.run_cell_magic("veil", "--epsilon 2 --dry-run", COUNT_BY_REGION)
    assert dry.dry_run and dry.rows == [] and dry.privacy["epsilon"] == 2.0
    plan = shell.run_line_magic("veil", f"--explain {COUNT_BY_REGION}")
    assert isinstance(plan, PlanText) and "at bank:" in plan.text
    shell.user_ns["x"] = "EXPANDED"  # SQL is never expanded as IPython would ($x, {x})
    plan = shell.run_line_magic("veil", "--explain SELECT COUNT(*) AS n FROM bank.customers "
                                        "WHERE region = '$x{x}'")
    assert "region = '$x{x}'" in plan.text
    assert shell.run_line_magic("veil", "budget").budget["bank"]["epsilon_spent"] == 0.0


def test_magic_config(shell: Any) -> None:
    shell.run_line_magic("config", "VeilMagic.default_epsilon = 0.25")
    shell.run_line_magic("config", "VeilMagic.autopandas = True")
    frame = shell.run_cell_magic("veil", "", COUNT_BY_REGION)
    assert isinstance(frame, pd.DataFrame) and list(frame["region"]) == REGIONS
    assert frame.attrs["privacy"]["epsilon"] == 0.25
    with pytest.raises(TraitError, match="must be > 0"):
        _magic(shell).default_epsilon = -1
    with pytest.raises(TraitError, match=r"in \[0, 1\)"):
        _magic(shell).default_delta = 1.0


def test_magic_confirm_above(shell: Any) -> None:
    shell.run_line_magic("config", "VeilMagic.confirm_above = 1.0")
    with pytest.raises(IPythonUsageError, match="above VeilMagic.confirm_above = 1"):
        shell.run_cell_magic("veil", "--epsilon 1.5", COUNT_BY_REGION)
    assert shell.run_line_magic("veil", "budget").budget["bank"]["epsilon_spent"] == 0.0
    out = shell.run_cell_magic("veil", "--epsilon 1.5 --yes", COUNT_BY_REGION)
    assert out.privacy["epsilon"] == 1.5


def test_magic_errors_are_usage_errors(shell: Any) -> None:
    with pytest.raises(IPythonUsageError) as info:
        shell.run_cell_magic("veil", "--epsilon 4", COUNT_BY_REGION)  # bob has 3
    assert info.value.error_type == "BudgetExceeded"
    assert "nothing was charged" in str(info.value) and "\nhint: " in str(info.value)
    with pytest.raises(IPythonUsageError, match=r"\(PolicyError\)"):
        shell.run_cell_magic("veil", "", "SELECT customer_id, COUNT(*) AS n "
                                         "FROM bank.customers GROUP BY customer_id")
    with pytest.raises(IPythonUsageError, match="unknown option"):
        shell.run_cell_magic("veil", "--bogus", COUNT_BY_REGION)
    with pytest.raises(IPythonUsageError, match="has no budget"):
        shell.run_line_magic("veil", "connect --analyst mallory")
    assert _magic(shell).session is not None  # the failed connect kept the old session
    shell.run_line_magic("config", "VeilMagic.short_errors = False")
    with pytest.raises(UsageError, match="unknown option"):
        shell.run_cell_magic("veil", "--bogus", COUNT_BY_REGION)


def test_magic_variables_purpose_and_dataframe(shell: Any, fed: Path) -> None:
    shell.user_ns["wanted"] = "north"
    out = shell.run_cell_magic(
        "veil", "--epsilon 0.5 --purpose 'regional review'",
        "SELECT COUNT(*) AS n FROM bank.customers WHERE region = '{{wanted}}'")
    assert len(out.rows) == 1 and out.privacy["epsilon"] == 0.5
    entries = [json.loads(line) for line in
               (fed.parent.parent / "ledgers" / "bank.jsonl").read_text().splitlines()]
    reserve = [e for e in entries if e["kind"] == "reserve"][-1]
    assert "region = 'north'" in reserve["sql"] and reserve["purpose"] == "regional review"
    with pytest.raises(IPythonUsageError, match="undefined variable.*nowhere"):
        shell.run_cell_magic("veil", "--epsilon 0.5",
                             "SELECT COUNT(*) AS n FROM bank.customers WHERE region = "
                             "'{{nowhere}}'")
    assert shell.run_line_magic("veil", "budget").budget["bank"]["epsilon_spent"] == 0.5
    shell.run_line_magic("config", "VeilMagic.autopandas = True")
    frame = shell.run_cell_magic("veil", "--epsilon 0.5", COUNT_BY_REGION)
    assert list(frame.columns) == ["region", "n", "n_ci95"] and frame["n_ci95"].gt(0).all()


def test_magic_confirm_above_defaults_to_the_shells(shell: Any) -> None:
    from veilql.ui.shell import DEFAULT_CONFIRM_ABOVE

    assert _magic(shell).confirm_above == DEFAULT_CONFIRM_ABOVE == 2.0
    with pytest.raises(IPythonUsageError, match=r"confirm_above = 2; nothing was spent "
                                                r"\(95% intervals: n ± \d"):
        shell.run_cell_magic("veil", "--epsilon 2.5", COUNT_BY_REGION)
    assert shell.run_line_magic("veil", "budget").budget["bank"]["epsilon_spent"] == 0.0


def test_magic_plot_draws_error_bars(shell: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    with pytest.raises(IPythonUsageError, match="no released answer"):
        shell.run_line_magic("veil", "plot")
    shell.run_cell_magic("veil", "--epsilon 0.5 res <<", COUNT_BY_REGION)
    ax = shell.run_line_magic("veil", "plot n")
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == REGIONS and ax.get_xlabel() == "region" and ax.get_ylabel() == "n"
    (bars,) = ax.containers[:1]
    heights = [b.get_height() for b in bars]
    assert heights == [float(r[1]) for r in shell.user_ns["res"].rows]
    caps = [c for c in ax.containers if type(c).__name__ == "ErrorbarContainer"]
    assert caps, "no error bars drawn"
    segments = caps[0].lines[2][0].get_segments()
    half = shell.user_ns["res"].accuracy["n"]["ci95"]
    assert [round(seg[1][1] - seg[0][1], 6) for seg in segments] == [round(2 * half, 6)] * 5
    with pytest.raises(IPythonUsageError, match="not a released column"):
        shell.run_line_magic("veil", "plot region --result res")
    import matplotlib.pyplot as plt

    plt.close("all")


def test_magic_needs_connect(shell: Any) -> None:
    shell.run_line_magic("veil", "close")
    with pytest.raises(IPythonUsageError, match="not connected"):
        shell.run_cell_magic("veil", "", COUNT_BY_REGION)


# -- notebooks in a real kernel ------------------------------------------------------------
def _run_notebook(nb: Any, tmp: Path, cwd: Path) -> None:
    """Execute ``nb`` in place with the venv's Python kernel; ledgers under ``tmp``."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    spec = tmp / "kernels" / "veilql-test"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "VeilQL test", "language": "python",
        # Ledgers in tmp; no user IPython profile; discovery falls through to the sample.
        "env": {"VEIL_LEDGER_DIR": str(tmp / "ledgers"), "IPYTHONDIR": str(tmp / "ipython"),
                "VEIL_FEDERATION": "", "VEIL_ANALYST": ""},
    }))
    km = KernelManager(kernel_name="veilql-test", transport="ipc",
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp / "kernels")]),
                       connection_file=str(tmp / "kernel-connection.json"))
    # The client does not own a kernel manager it is given, so it would leave the kernel
    # running until pytest exits (several idle kernels per worker); stop it here.
    client = NotebookClient(nb, km=km, timeout=120, shutdown_kernel="immediate",
                            resources={"metadata": {"path": str(cwd)}})
    client.execute(cleanup_kc=True)


def _html(cell: Any) -> str:
    return "".join(o.get("data", {}).get("text/html", "") for o in cell.outputs)


def _stream(cell: Any, name: str) -> str:
    return "".join(o.get("text", "") for o in cell.outputs
                   if o.output_type == "stream" and o.name == name)


def test_example_notebook_runs(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(EXAMPLE, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        "docs/example.ipynb must be committed without outputs"
    _run_notebook(nb, tmp_path, EXAMPLE.parent)
    code = [c for c in nb.cells if c.cell_type == "code"]
    by_source = {c.source.split("\n")[0] + "|" + c.source.split("\n")[-1]: c for c in code}

    def cell(first: str) -> Any:
        found = [c for k, c in by_source.items() if k.startswith(first)]
        assert len(found) == 1, first
        return found[0]

    assert "Connected to demo-consortium" in _stream(cell("%veil connect"), "stdout")
    single = _html(cell("%%veil --epsilon 0.5|SELECT region"))
    assert len(NOISY_CELL.findall(single)) == 5 and "<td>north</td>" in single
    assert "spent ε 0.5, δ 0; remaining: bank (ε 9.5, δ 1e-05)" in single
    cross = _html(cell("%%veil --epsilon 1|WHERE"))
    assert len(NOISY_CELL.findall(cross)) == 3  # n, total and the AVG
    assert "remaining: bank (ε 8.5, δ 1e-05), insurer (ε 9, δ 1e-05)" in cross
    assert "<b>dry run</b>" in _html(cell("%%veil --epsilon 1 --dry-run"))
    assert '<pre class="veil-plan">' in _html(cell("%%veil --explain"))
    stored = cell("%%veil --epsilon 1|FROM bank.loans")
    assert not _html(stored) and "result: 4 rows" in _stream(stored, "stdout")
    frame = _html(cell("df = result.to_pandas()"))
    assert 'class="dataframe"' in frame and "<th>default_rate_ci95</th>" in frame
    wanted = _html(cell("%%veil --epsilon 0.5 --purpose"))
    assert len(NOISY_CELL.findall(wanted)) == 1  # {{wanted}} was filled in
    plotted = cell("%veil plot")
    assert any("image/png" in o.get("data", {}) for o in plotted.outputs)
    assert "95% intervals: default_rate" in _html(cell("%%veil --epsilon 1 --dry-run"))
    budget = _html(cell("%veil budget"))
    assert "<td>bank</td>" in budget and "<td>payments</td>" in budget
    refused = code[-1]
    assert "raises-exception" in refused.metadata.get("tags", [])
    err = _stream(refused, "stderr")
    assert err.startswith("UsageError: key column") and "(PolicyError)" in err
    assert "hint:" in err and "Traceback" not in err
    assert not any(o.output_type == "error" and o.get("traceback") for o in refused.outputs)


def test_refused_query_fails_its_cell(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    from nbclient.exceptions import CellExecutionError

    v4 = nbformat.v4
    nb = v4.new_notebook(cells=[
        v4.new_code_cell("%load_ext veilql\n%veil connect --analyst bob"),
        v4.new_code_cell(f"%%veil --epsilon 2\n{COUNT_BY_REGION}"),
        v4.new_code_cell(f"%%veil --epsilon 2\n{COUNT_BY_REGION}"),  # bob has 1 left
        v4.new_code_cell("after = 1"),
    ])
    with pytest.raises(CellExecutionError) as info:
        _run_notebook(nb, tmp_path, tmp_path)
    assert info.value.ename == "UsageError"
    assert "(BudgetExceeded)" in info.value.evalue
    assert "<td>north</td>" in _html(nb.cells[1])
    err = _stream(nb.cells[2], "stderr")
    assert err.startswith("UsageError: privacy budget of analyst 'bob' would be exceeded")
    assert "nothing was charged" in err and "Traceback" not in err
    assert not any(o.output_type == "error" and o.get("traceback") for o in nb.cells[2].outputs)
    assert nb.cells[3].get("execution_count") is None  # the run stopped at the failed cell
    ledger = (tmp_path / "ledgers" / "bank.jsonl").read_text().splitlines()
    kinds = [json.loads(line)["kind"] for line in ledger]
    assert kinds.count("commit") == 1  # only the first query was charged


def test_notebook_variables_plot_and_error_cell(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    v4 = nbformat.v4
    failing = v4.new_code_cell("%%veil --epsilon 0.5\nSELECT COUNT(*) AS n FROM bank.customers "
                               "WHERE region = '{{nowhere}}'")
    failing.metadata["tags"] = ["raises-exception"]
    nb = v4.new_notebook(cells=[
        v4.new_code_cell("%load_ext veilql\n%veil connect --analyst alice"),
        v4.new_code_cell('wanted = "south"'),
        v4.new_code_cell("%%veil --epsilon 0.5 --purpose 'notebook check'\n"
                         "SELECT COUNT(*) AS n FROM bank.customers WHERE region = '{{wanted}}'"),
        v4.new_code_cell(f"%%veil --epsilon 0.5\nby_region << {COUNT_BY_REGION}"),
        v4.new_code_cell("%veil plot n --result by_region"),
        v4.new_code_cell("by_region.to_pandas()"),
        failing,
        v4.new_code_cell("%veil budget"),
    ])
    _run_notebook(nb, tmp_path, tmp_path)
    assert len(NOISY_CELL.findall(_html(nb.cells[2]))) == 1
    images = [o for o in nb.cells[4].outputs if "image/png" in o.get("data", {})]
    assert images, "the plot cell shows no figure"
    frame = _html(nb.cells[5])
    assert "<th>n_ci95</th>" in frame and "<th>region</th>" in frame
    err = _stream(failing, "stderr")
    assert err.startswith("UsageError: undefined variable in the query: nowhere")
    assert "nothing was run or charged" in err and "Traceback" not in err
    assert "<td>bank</td>" in _html(nb.cells[7])  # the run went on after the tagged error
    ledger = [json.loads(line) for line in
              (tmp_path / "ledgers" / "bank.jsonl").read_text().splitlines()]
    reserves = [e for e in ledger if e["kind"] == "reserve"]
    assert len(reserves) == 2 and reserves[0]["purpose"] == "notebook check"
    assert "region = 'south'" in reserves[0]["sql"]
