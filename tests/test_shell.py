"""`veil shell`: the pure core, completion, batch runs (`veil shell < file.sql`), and a real
shell driven through a pseudo-terminal."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from veilql.engine.session import Session
from veilql.errors import BudgetExceeded, ExitCode, QueryError, UsageError
from veilql.ui.completion import Vocabulary, suggest
from veilql.ui.markdown import render_markdown
from veilql.ui.shell import (
    Reply,
    Settings,
    Shell,
    is_complete,
    noisy_text,
    split_statements,
    vocabulary,
)

DEMO = Path(__file__).resolve().parent.parent / "sample_data" / "demo"
BY_REGION = "SELECT region, COUNT(*) AS n FROM bank.customers GROUP BY region"
REGIONS = ["north", "south", "east", "west", "central"]
CROSS = ("SELECT COUNT(*) AS n, SUM(l.amount) AS total FROM bank.loans l "
         "JOIN insurer.policies p ON l.customer_id = p.customer_id WHERE p.open_claim = 1")


@pytest.fixture()
def fed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the demo federation (own ledgers, own history file)."""
    root = tmp_path / "fed"
    shutil.copytree(DEMO, root, ignore=shutil.ignore_patterns("ledgers"))
    monkeypatch.delenv("VEIL_LEDGER_DIR", raising=False)
    monkeypatch.delenv("VEIL_ANALYST", raising=False)
    monkeypatch.setenv("VEIL_HISTORY", str(tmp_path / "history"))
    return root / "federation.toml"


@pytest.fixture()
def sh(fed: Path):
    session = Session(fed, "alice")
    yield Shell(session)
    session.close()


def left(shell: Shell, party: str = "bank") -> float:
    return shell.session.budget()[party]["epsilon_remaining"]


def one(replies: list[Reply]) -> Reply:
    assert len(replies) == 1, replies
    return replies[0]


# -- statement assembly ------------------------------------------------------------------------
def test_split_statements_ignores_semicolons_in_quotes_and_comments() -> None:
    text = "SELECT 'a;b' AS x; SELECT \"c;d\" /* ; */ -- ;\n FROM t; SELECT 'it''s;' AS y"
    done, rest = split_statements(text)
    assert done == ["SELECT 'a;b' AS x", "SELECT \"c;d\" /* ; */ -- ;\n FROM t"]
    assert rest == "SELECT 'it''s;' AS y"
    assert split_statements(";;  ;") == ([], "")


def test_is_complete() -> None:
    assert is_complete(".tables") and is_complete("\\dt") and is_complete("  ")
    assert is_complete("SELECT 1;") and is_complete("SELECT 1; -- done")
    assert not is_complete("SELECT 1") and not is_complete("SELECT ';'")
    assert not is_complete("SELECT 1; SELECT 2")


# -- the core ----------------------------------------------------------------------------------
def test_query_shows_value_and_interval(sh: Shell) -> None:
    reply = one(sh.handle_line(BY_REGION + ";"))
    assert reply.error is None
    lines = reply.out.splitlines()
    assert lines[0].split() == ["region", "n"]
    body = {ln.split()[0]: ln for ln in lines[2:]}
    assert sorted(body) == sorted(REGIONS)
    for line in body.values():
        assert re.fullmatch(r"\w+\s+\d+ ± \d+", line), line
    assert "5 rows; spent epsilon 1, delta 0 at bank" in reply.note
    assert left(sh) == pytest.approx(9.0)
    assert sh.prompt() == "alice ε 9> "


def test_multi_line_statement_runs_on_semicolon(sh: Shell) -> None:
    assert sh.handle_line("SELECT region,") == []
    assert sh.handle_line("  COUNT(*) AS n") == [] and sh.pending
    assert sh.prompt().endswith("...> ") and len(sh.prompt()) == len("alice ε 10> ")
    assert left(sh) == pytest.approx(10.0)  # nothing ran yet
    reply = one(sh.handle_line("FROM bank.customers GROUP BY region;"))
    assert reply.error is None and "central" in reply.out
    assert not sh.pending and sh.prompt() == "alice ε 9> "


def test_error_is_reported_and_the_shell_carries_on(sh: Shell) -> None:
    reply = one(sh.handle_line("SELECT nope FROM bank.loans;"))
    assert isinstance(reply.error, QueryError) and "nope" in reply.error.message
    assert reply.out == "" and not sh.pending
    assert "customers" in one(sh.handle_line(".tables")).out
    assert one(sh.handle_line("SELECT COUNT(*) AS n FROM bank.loans;")).error is None
    assert left(sh) == pytest.approx(9.0)


def test_a_pasted_block_mixes_dot_commands_and_sql(sh: Shell) -> None:
    replies = sh.handle_line(f".mode csv\n{BY_REGION};\n.timer on\nSELECT COUNT(*) AS n")
    assert [bool(r.out) for r in replies] == [False, True, False]
    assert replies[1].out.startswith("region,n,n_ci95\nnorth,") and replies[2].note == "timer on"
    assert sh.pending and not is_complete(".mode csv\nSELECT 1")


def test_error_drops_the_rest_of_the_same_input(sh: Shell) -> None:
    replies = sh.handle_line("SELECT nope FROM bank.loans; SELECT COUNT(*) AS n FROM bank.loans;")
    assert len(replies) == 1 and replies[0].error is not None
    replies = sh.handle_line("SELECT nope FROM bank.loans;\n.mode csv\nSELECT COUNT(*) AS n")
    assert len(replies) == 1 and sh.settings.mode == "table" and not sh.pending
    assert left(sh) == pytest.approx(10.0)


def test_parse_error_is_one_line(sh: Shell) -> None:
    reply = one(sh.handle_line("SELECT COUNT(* FROM bank.loans;"))
    assert reply.error is not None and reply.error.exit_code == ExitCode.REFUSED
    from veilql.ui.shell import _one_line

    assert "\n" not in _one_line(reply.error) and "syntax error" in _one_line(reply.error)


def test_finish_runs_a_last_statement_without_semicolon(sh: Shell) -> None:
    assert sh.handle_line(BY_REGION) == []
    reply = one(sh.finish())
    assert reply.error is None and "north" in reply.out and not sh.pending


@pytest.mark.parametrize("alias", [".quit", ".exit", "\\q", "\\quit"])
def test_quit(sh: Shell, alias: str) -> None:
    assert one(sh.handle_line(alias)).quit


def test_dot_commands_and_aliases(sh: Shell) -> None:
    parties = one(sh.handle_line(".parties")).out
    assert [ln.split()[0] for ln in parties.splitlines()[2:]] == ["bank", "payments", "insurer"]
    assert one(sh.handle_line("\\l")).out == parties
    tables = one(sh.handle_line(".tables insurer")).out
    assert "policies" in tables and "loans" not in tables
    assert one(sh.handle_line("\\dt insurer")).out == tables
    assert one(sh.handle_line("\\tables insurer;")).out == tables
    schema = one(sh.handle_line(".schema bank.loans")).out
    assert "amount" in schema and "[0, 100000]" in schema and "loan_id" not in schema
    assert one(sh.handle_line("\\d bank.loans")).out == schema
    every = one(sh.handle_line(".schema")).out
    assert "bank.customers:" in every and "insurer.policies:" in every
    assert ".budget" in one(sh.handle_line(".help")).out
    assert one(sh.handle_line("\\?")).out == one(sh.handle_line(".help")).out
    err = one(sh.handle_line(".frobnicate")).error
    assert isinstance(err, UsageError) and ".help" in (err.hint or "")
    err = one(sh.handle_line(".schema bank.nope")).error
    assert isinstance(err, UsageError) and "customers" in (err.hint or "")


def test_budget_cost_and_explain_spend_nothing(sh: Shell) -> None:
    cost = one(sh.handle_line(".cost " + CROSS + ";"))
    assert cost.error is None and cost.note.startswith("nothing was spent")
    budget_table, accuracy_table = cost.out.split("\n\n")
    head = budget_table.splitlines()[0].split()
    assert head[3:5] == ["epsilon_remaining_before", "epsilon_remaining_after"]
    rows = {ln.split()[0]: ln.split() for ln in budget_table.splitlines()[2:]}
    assert set(rows) == {"bank", "insurer"}
    assert float(rows["bank"][3]) == pytest.approx(10.0)
    assert float(rows["bank"][4]) == pytest.approx(9.0) and rows["bank"][7] == "yes"
    # the 95% interval each released column will have, known before anything is spent
    preview = {ln.split()[0]: ln for ln in accuracy_table.splitlines()[2:]}
    assert set(preview) == {"n", "total"} and re.search(r"n\s+± \d+", preview["n"])
    plan = one(sh.handle_line(".explain " + CROSS)).out
    assert plan.startswith("plan (secure)") and "secure join" in plan
    assert one(sh.handle_line("EXPLAIN " + CROSS + ";")).out == plan
    assert one(sh.handle_line(".explain")).error is not None
    budget = one(sh.handle_line(".budget")).out
    assert "epsilon_remaining" in budget and "payments" in budget
    assert left(sh) == pytest.approx(10.0) and left(sh, "insurer") == pytest.approx(10.0)


def test_modes(sh: Shell) -> None:
    sh.settings.confirm_above = 100
    assert one(sh.handle_line(".mode csv")).error is None
    out = one(sh.handle_line(BY_REGION + ";")).out.splitlines()
    assert out[0] == "region,n,n_ci95" and len(out) == 6
    assert re.fullmatch(r"north,\d+,\d+(\.\d+)?", out[1])
    one(sh.handle_line(".mode json"))
    obj = json.loads(one(sh.handle_line(BY_REGION + ";")).out)
    assert obj["columns"] == ["region", "n"] and obj["accuracy"]["n"]["ci95"] > 0
    one(sh.handle_line(".mode jsonl"))
    rows = [json.loads(x) for x in one(sh.handle_line(BY_REGION + ";")).out.splitlines()]
    assert [r["region"] for r in rows] == REGIONS
    one(sh.handle_line(".mode markdown"))
    md = one(sh.handle_line(BY_REGION + ";")).out.splitlines()
    assert md[0].split("|")[1:3] == [" region ", " n        "] or md[0].startswith("| region")
    assert md[1].endswith(": |") and re.search(r"\| \d+ ± \d+ \|$", md[2])
    assert "csv" in one(sh.handle_line(".mode")).out
    err = one(sh.handle_line(".mode xml")).error
    assert isinstance(err, UsageError) and "markdown" in (err.hint or "")
    assert sh.settings.mode == "markdown"


def test_timer_and_cost_settings(sh: Shell) -> None:
    assert one(sh.handle_line(".timer on")).note == "timer on"
    one(sh.handle_line(".epsilon 0.5"))
    reply = one(sh.handle_line(BY_REGION + ";"))
    assert re.search(r"run time: \d+\.\d{3} s", reply.note)
    assert "spent epsilon 0.5" in reply.note and left(sh) == pytest.approx(9.5)
    one(sh.handle_line(".timer off"))
    one(sh.handle_line(".epsilon default"))
    reply = one(sh.handle_line(BY_REGION + ";"))
    assert "run time" not in reply.note and left(sh) == pytest.approx(8.5)
    assert one(sh.handle_line(".epsilon -1")).error is not None
    assert one(sh.handle_line(".delta 1e-7")).note == "delta per query: 1e-07"
    assert one(sh.handle_line(".timer maybe")).error is not None
    show = one(sh.handle_line(".show")).out
    assert "1e-07" in show and "confirm_above" in show


def test_large_spend_asks_first(fed: Path) -> None:
    asked: list[str] = []
    answers = iter([False, True])
    with Session(fed, "alice") as session:
        shell = Shell(session, confirm=lambda q: asked.append(q) or next(answers))
        one(shell.handle_line(".epsilon 3"))
        reply = one(shell.handle_line(BY_REGION + ";"))
        assert reply.note == "not run; nothing was spent" and reply.out == ""
        assert "epsilon 3" in asked[0] and "threshold 2" in asked[0]
        assert shell.session.budget()["bank"]["epsilon_remaining"] == pytest.approx(10.0)
        assert "north" in one(shell.handle_line(BY_REGION + ";")).out
        assert shell.session.budget()["bank"]["epsilon_remaining"] == pytest.approx(7.0)
        one(shell.handle_line(".confirm 5"))
        one(shell.handle_line(BY_REGION + ";"))
        assert len(asked) == 2  # 3 <= 5: not asked again


def test_large_spend_without_a_terminal_is_refused(sh: Shell) -> None:
    sh.settings.epsilon = 2.5
    err = one(sh.handle_line(BY_REGION + ";")).error
    assert isinstance(err, UsageError) and "--yes" in (err.hint or "")
    assert left(sh) == pytest.approx(10.0)
    sh.yes = True
    assert one(sh.handle_line(BY_REGION + ";")).error is None
    assert left(sh) == pytest.approx(7.5)


def test_budget_exceeded(fed: Path) -> None:
    with Session(fed, "bob") as session:  # bob has epsilon 3
        shell = Shell(session, settings=Settings(epsilon=2.0))
        assert one(shell.handle_line(BY_REGION + ";")).error is None
        err = one(shell.handle_line(BY_REGION + ";")).error
        assert isinstance(err, BudgetExceeded) and err.exit_code == ExitCode.BUDGET
        assert shell.prompt() == "bob ε 1> "


def test_without_an_analyst_the_catalog_still_works(fed: Path) -> None:
    with Session(fed, None) as session:
        shell = Shell(session)
        assert shell.prompt() == "veil> "
        assert "loans" in one(shell.handle_line(".tables")).out
        err = one(shell.handle_line(BY_REGION + ";")).error
        assert isinstance(err, UsageError) and "--analyst" in (err.hint or "")


def test_noisy_text_and_markdown() -> None:
    assert noisy_text(1203, 2.9) == ("1203", "3")
    assert noisy_text(None, 1.0) == ("NULL", "")
    assert noisy_text(0.123456, 0.0004) == ("0.12346", "0.00040")
    assert noisy_text(3.5e8, 898700.0) == ("350000000", "898700")
    assert render_markdown(["a"], [[1]], right=[True]) == "| a   |\n| --: |\n| 1   |"


# -- completion ----------------------------------------------------------------------------------
def test_completion_from_the_federation(sh: Shell) -> None:
    vocab = vocabulary(sh.session)
    assert suggest("SELECT COUNT(*) FROM bank.lo", vocab) == ["bank.loans"]
    assert suggest("SELECT SUM(insurer.policies.pre", vocab) == ["insurer.policies.premium"]
    assert "bank.loans.customer_id" in suggest("SELECT bank.loans.", vocab)
    assert "bank.loans.loan_id" not in suggest("SELECT bank.loans.", vocab)  # fail closed
    assert suggest("SELECT x FROM bank.loans AS l JOIN insurer.policies p ON l.cu", vocab) == [
        "l.customer_id"]
    assert suggest("SELECT COUNT(*) FROM bank.loans WHERE am", vocab) == ["amount"]
    assert suggest("select count(*) fr", vocab) == ["from"]
    assert suggest("SELECT COUNT(*) FR", vocab) == ["FROM"]
    assert suggest("SELECT * FROM pay", vocab) == ["payments"]
    assert suggest(".sch", vocab) == [".schema"]
    assert suggest("\\ti", vocab) == ["\\timer", "\\timing"]
    assert suggest(".mode m", vocab) == ["markdown"]
    assert suggest(".schema bank.l", vocab) == ["bank.loans"]
    assert suggest(".explain SELECT COUNT(*) FROM bank.cu", vocab) == ["bank.customers"]
    assert suggest("SELECT nothing.", vocab) == []


def test_vocabulary_is_policy_only() -> None:
    vocab = Vocabulary({"a": {"t": ["x"]}})
    assert vocab.qualified_tables() == ["a.t"] and list(vocab.columns_of("a", "nope")) == []


# -- batch: `veil shell < file.sql` ------------------------------------------------------------
def run_shell(fed: Path, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VEIL_LEDGER_DIR", "VEIL_ANALYST")}
    env["NO_COLOR"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "veilql.cli", "shell", "-f", str(fed), *args],
        input=script, capture_output=True, text=True, timeout=120, env=env,
    )


def test_batch_runs_statements_and_dot_commands(fed: Path) -> None:
    script = (".mode csv\n.tables bank\nSELECT region,\n  COUNT(*) AS n\n"
              "FROM bank.customers GROUP BY region;\n.budget\n")
    res = run_shell(fed, script, "--analyst", "alice")
    assert res.returncode == 0, res.stderr
    out = res.stdout.splitlines()
    assert out[0] == "party,table,privacy_unit,max_rows_per_unit,join_reveal,columns,kind"
    assert out[3] == "region,n,n_ci95" and [ln.split(",")[0] for ln in out[4:9]] == REGIONS
    assert out[9].startswith("party,epsilon_spent") and out[10].startswith("bank,1.0,9.0")
    assert "5 rows; spent epsilon 1" in res.stderr and "error" not in res.stderr


def test_batch_stops_at_the_first_error_with_its_code(fed: Path) -> None:
    script = f".parties\nSELECT nope FROM bank.loans;\n{BY_REGION};\n"
    res = run_shell(fed, script, "--analyst", "alice")
    assert res.returncode == 1
    assert "bank" in res.stdout and "north" not in res.stdout
    err = res.stderr.splitlines()
    assert err[0] == "veil: error: unknown column nope" and err[1].startswith("hint: ")
    usage = run_shell(fed, ".mode xml\n.parties\n", "--analyst", "alice")
    assert usage.returncode == 2 and usage.stdout == ""


def test_batch_budget_and_confirmation_exit_codes(fed: Path) -> None:
    res = run_shell(fed, f".epsilon 2\n{BY_REGION};\n{BY_REGION};\n", "--analyst", "bob")
    assert res.returncode == 4 and res.stdout.count("north") == 1
    res = run_shell(fed, f".epsilon 2.5\n{BY_REGION};\n", "--analyst", "alice")
    assert res.returncode == 2 and res.stdout == "" and "--yes" in res.stderr
    res = run_shell(fed, f".epsilon 2.5\n{BY_REGION};\n", "--analyst", "alice", "--yes")
    assert res.returncode == 0 and "north" in res.stdout and "spent epsilon 2.5" in res.stderr


def test_batch_quit_stops_reading(fed: Path) -> None:
    res = run_shell(fed, f".quit\n{BY_REGION};\n", "--analyst", "alice")
    assert res.returncode == 0 and res.stdout == ""


# -- a real terminal -----------------------------------------------------------------------------
class Terminal:
    """A process on a pseudo-terminal, with a bounded ``expect`` (Python's pty, no pexpect)."""

    def __init__(self, argv: list[str], env: dict[str, str], rows: int = 40,
                 cols: int = 120) -> None:
        import fcntl
        import pty
        import struct
        import termios

        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

        def controlling_tty() -> None:  # in the child, after setsid: Ctrl-C sends SIGINT
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     start_new_session=True, close_fds=True,
                                     preexec_fn=controlling_tty)
        os.close(slave)
        self.seen = ""  # everything read and not yet matched

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def expect(self, pattern: str, timeout: float = 20.0) -> str:
        """Read until ``pattern`` (a regex) matches; fail after ``timeout`` seconds."""
        import select
        import time

        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.seen)
            if found:
                self.seen = self.seen[found.end():]
                return found.group(0)
            wait = deadline - time.monotonic()
            if wait <= 0:
                raise AssertionError(f"no {pattern!r} within {timeout} s; screen: {self.seen!r}")
            ready, _, _ = select.select([self.master], [], [], wait)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # EIO: the process closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"EOF before {pattern!r}; screen: {self.seen!r}")
                self.seen += chunk.decode("utf-8", "replace")

    def close(self, kill: bool = False) -> int:
        """Wait (bounded) for the process to exit, or kill it; return its exit code."""
        try:
            if not kill:
                try:
                    return self.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    pass
            self.proc.kill()
            self.proc.wait(timeout=5)
            return -9
        finally:
            os.close(self.master)


def test_interactive_session_through_a_pty(fed: Path, tmp_path: Path) -> None:
    pytest.importorskip("prompt_toolkit")
    env = {k: v for k, v in os.environ.items() if k not in ("VEIL_LEDGER_DIR", "VEIL_ANALYST")}
    # PROMPT_TOOLKIT_NO_CPR: nothing here answers cursor-position requests.
    env.update(NO_COLOR="1", TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1",
               VEIL_HISTORY=str(tmp_path / "hist"))
    term = Terminal([sys.executable, "-m", "veilql.cli", "shell", "-f", str(fed),
                     "--analyst", "alice"], env)
    try:
        term.expect("alice ε 10>")
        # a query
        term.send(BY_REGION + ";\r")
        term.expect(r"central\s+\d+ ± \d+")
        term.expect("alice ε 9>")
        # a dot command
        term.send(".tables insurer\r")
        term.expect(r"insurer\s+policies")
        term.expect("alice ε 9>")
        # a multi-line query: Enter on an unfinished statement opens a new line
        term.send("SELECT COUNT(*) AS n\r")
        term.expect(r"\.\.\.>")
        term.send("FROM bank.loans;\r")
        term.expect(r"\d+ ± \d+")
        term.expect("1 row; spent epsilon 1")
        term.expect("alice ε 8>")
        # an error, then the shell carries on
        term.send("SELECT nope FROM bank.loans;\r")
        term.expect("error: unknown column nope")
        term.expect("hint: usable columns")
        term.expect("alice ε 8>")
        term.send(".budget\r")
        term.expect(r"bank\s+2\.0\s+8\.0")
        term.expect("alice ε 8>")
        term.send(".quit\r")
    except BaseException:
        term.close(kill=True)
        raise
    assert term.close() == 0
    history = (tmp_path / "hist").read_text()
    assert "+SELECT COUNT(*) AS n\n+FROM bank.loans;" in history and "+.quit" in history


def test_ticker_draws_the_step_and_erases_it() -> None:
    import io
    import time

    from veilql.ui.shell import Ticker

    stream = io.StringIO()
    ticker = Ticker(stream, delay=0.0)
    try:
        ticker("running at bank")
        deadline = time.monotonic() + 5
        while "running at bank" not in stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.02)
        ticker("")
    finally:
        ticker.close()
    text = stream.getvalue()
    assert re.search(r"running at bank … \d+\.\d s", text)
    assert text.endswith("\r\x1b[2K")  # the line is erased when the step ends


def test_an_unknown_analyst_is_refused_at_start(fed: Path) -> None:
    res = run_shell(fed, ".parties\n", "--analyst", "zed")
    assert res.returncode == 2 and res.stdout == ""
    assert "zed" in res.stderr and "alice, bob" in res.stderr


# -- new in the shell: modes, display, scripts, output, purpose, pricing --------------------------
def test_box_line_expanded_and_maxrows(sh: Shell) -> None:
    sh.settings.mode = "box"
    box = one(sh.handle_line(BY_REGION + ";")).out.splitlines()
    assert box[0].startswith("┌") and box[-1].startswith("└") and "│ region" in box[1]
    assert any(re.search(r"│ north\s+│\s+\d+ ± \d+ │", ln) for ln in box)
    one(sh.handle_line(".mode line"))
    line = one(sh.handle_line(BY_REGION + ";")).out
    blocks = line.split("\n\n")
    assert len(blocks) == 5 and re.fullmatch(r"region = north\n     n = \d+ ± \d+", blocks[0])
    one(sh.handle_line(".mode table"))
    assert one(sh.handle_line("\\x")).note == "expanded display is on"
    expanded = one(sh.handle_line(BY_REGION + ";")).out.splitlines()
    assert expanded[0].startswith("-[ RECORD 1 ]-") and expanded[1] == "region | north"
    assert re.fullmatch(r"n      \| \d+ ± \d+", expanded[2])
    assert one(sh.handle_line("\\x off")).note == "expanded display is off"
    assert one(sh.handle_line(".maxrows 2")).note == "showing at most 2 rows"
    cut = one(sh.handle_line(BY_REGION + ";")).out.splitlines()
    assert len(cut) == 5 and cut[-1].startswith("… 3 more rows not shown")
    assert one(sh.handle_line(".maxrows x")).error is not None
    assert "maxrows" in one(sh.handle_line(".show")).out


def test_dot_commands_after_an_unfinished_statement(sh: Shell) -> None:
    assert sh.handle_line("SELECT region, COUNT(*) AS n") == [] and sh.pending
    assert one(sh.handle_line(".mode csv")).error is None and sh.pending  # a command, not SQL
    assert sh.settings.mode == "csv"
    reply = one(sh.handle_line("FROM bank.customers GROUP BY region;"))
    assert reply.error is None and reply.out.startswith("region,n,n_ci95\n")
    # inside an open quote the line is part of the statement
    assert sh.handle_line("SELECT COUNT(*) AS n FROM bank.customers WHERE region = '") == []
    assert sh.handle_line(".north'") == [] and sh.pending
    sh.reset()


def test_output_to_a_file_and_back(sh: Shell, tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    note = one(sh.handle_line(f"\\o {target}")).note
    assert str(target) in note
    shown: list[str] = []
    for reply in sh.handle_line(BY_REGION + ";"):
        sh.write_out(reply.out, shown.append)
    assert shown == [] and "north" in target.read_text()
    assert one(sh.handle_line(".output")).note == "output to standard output"
    for reply in sh.handle_line(".parties"):
        sh.write_out(reply.out, shown.append)
    assert shown and "bank" in shown[0] and "payments" not in target.read_text()
    err = one(sh.handle_line(f".output {tmp_path / 'no' / 'such' / 'dir.txt'}")).error
    assert isinstance(err, UsageError)


def test_read_runs_a_script(sh: Shell, tmp_path: Path) -> None:
    script = tmp_path / "q.sql"
    script.write_text(".mode csv\nSELECT region,\n  COUNT(*) AS n\nFROM bank.customers "
                      "GROUP BY region;\nSELECT COUNT(*) AS n FROM bank.loans")
    replies = sh.handle_line(f"\\i {script}")
    assert [bool(r.out) for r in replies] == [False, True, True]
    assert replies[2].out.startswith("n,n_ci95") and sh.settings.mode == "csv"
    assert left(sh) == pytest.approx(8.0)
    bad = tmp_path / "bad.sql"
    bad.write_text("SELECT nope FROM bank.loans;\nSELECT COUNT(*) AS n FROM bank.loans;\n")
    replies = sh.handle_line(f".read {bad}")
    assert len(replies) == 1 and replies[0].error is not None  # a script stops at an error
    assert left(sh) == pytest.approx(8.0)
    loop = tmp_path / "loop.sql"
    loop.write_text(f".read {loop}\n")
    replies = sh.handle_line(f".read {loop}")
    assert replies[-1].error is not None and "nested" in replies[-1].error.message
    assert one(sh.handle_line(".read /no/such/file.sql")).error is not None


def test_purpose_is_recorded_in_every_charged_ledger(sh: Shell) -> None:
    assert "no purpose" in one(sh.handle_line(".purpose")).note
    assert one(sh.handle_line(".purpose churn review 2026")).note.endswith("churn review 2026")
    assert one(sh.handle_line(CROSS + ";")).error is None
    for party in ("bank", "insurer"):
        ledger = sh.session.ledger(party)
        assert ledger is not None
        (entry,) = [e for e in ledger.entries() if e.kind == "reserve"]
        assert entry.purpose == "churn review 2026" and entry.identity == "self-asserted"
    # the SQL's own OPTIONS purpose wins over the shell's
    own = ("SELECT WITH DIFFERENTIAL_PRIVACY OPTIONS (epsilon = 0.5, purpose = 'spot check') "
           "COUNT(*) AS n FROM bank.loans;")
    assert one(sh.handle_line(own)).error is None
    ledger = sh.session.ledger("bank")
    assert ledger is not None
    assert [e.purpose for e in ledger.entries() if e.kind == "reserve"][-1] == "spot check"
    assert one(sh.handle_line(".purpose none")).note.startswith("no purpose")
    assert one(sh.handle_line(".purpose a\u200bb")).error is not None  # invisible character


def test_over_budget_is_refused_before_asking(fed: Path) -> None:
    asked: list[str] = []
    with Session(fed, "bob") as session:  # bob has epsilon 3
        shell = Shell(session, confirm=lambda q: asked.append(q) or True)
        one(shell.handle_line(".epsilon 3.5"))
        err = one(shell.handle_line(BY_REGION + ";")).error
        assert isinstance(err, BudgetExceeded) and err.exit_code == ExitCode.BUDGET
        assert "requested epsilon 3.5, remaining 3.0" in err.message
        assert asked == []  # refused before the confirmation question
        one(shell.handle_line(".epsilon 2.5"))
        assert one(shell.handle_line(BY_REGION + ";")).error is None
        question = asked[0]
        assert "epsilon remaining before: bank 3; after: bank 0.5" in question.lower()
        assert re.search(r"95% intervals: n ± \d", question)


def test_a_cancelled_query_reports_what_stays_charged(sh: Shell,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from veilql.errors import Interrupted

    def cancelled(*args: object, **kwargs: object) -> None:
        raise Interrupted("query cancelled; the charge stands at bank", "see .budget")

    monkeypatch.setattr(sh.session, "sql", cancelled)
    err = one(sh.handle_line(BY_REGION + ";")).error
    assert isinstance(err, Interrupted) and err.exit_code == 130
    assert "charge stands at bank" in err.message


def test_completion_of_group_values(sh: Shell) -> None:
    vocab = vocabulary(sh.session)
    base = "SELECT COUNT(*) AS n FROM bank.customers c WHERE "
    assert suggest(base + "c.region = 'so", vocab) == ["'south'"]
    assert suggest(base + "region = ", vocab) == [f"'{r}'" for r in REGIONS]
    assert suggest(base + "region IN ('north', 'south', ", vocab) == ["'east'", "'west'",
                                                                      "'central'"]
    loans = "SELECT COUNT(*) AS n FROM bank.loans WHERE term_months IN (12, "
    assert suggest(loans, vocab) == ["24", "36", "60"]
    # a value column has no public domain: the usual names, no values
    plain = suggest("SELECT COUNT(*) AS n FROM bank.loans WHERE amount = ", vocab)
    assert "customer_id" in plain and not any(c.startswith("'") for c in plain)


# -- a real terminal: pager, \x, \o, \i, completion of values, Ctrl-C --------------------------
SLOW_HOOK = '''
import os, time
if os.environ.get("VEIL_TEST_SLOW"):
    import veilql.engine.node as node
    _fetch = node.fetch
    def _slow(*args, **kwargs):
        with open(os.environ["VEIL_TEST_SLOW"], "a") as fh:
            fh.write("running\\n")
        time.sleep(float(os.environ.get("VEIL_TEST_SLOW_SECONDS", "2")))
        return _fetch(*args, **kwargs)
    node.fetch = _slow
'''


def terminal_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a shell on a pty: no colour, no CPR, its own history; with a
    ``sitecustomize`` on the path that can slow down each party's local SQL (tests only)."""
    hooks = tmp_path / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(SLOW_HOOK)
    env = {k: v for k, v in os.environ.items() if k not in ("VEIL_LEDGER_DIR", "VEIL_ANALYST")}
    env.update(NO_COLOR="1", TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1",
               VEIL_HISTORY=str(tmp_path / "hist"), PYTHONPATH=str(hooks), **extra)
    return env


def test_pager_expanded_output_script_and_value_completion_on_a_pty(fed: Path,
                                                                     tmp_path: Path) -> None:
    pytest.importorskip("prompt_toolkit")
    pager = f"{sys.executable} -c \"import sys; sys.stdout.write('PAGED ' + sys.stdin.read())\""
    env = terminal_env(tmp_path, PAGER=pager)
    script = tmp_path / "script.sql"
    script.write_text("SELECT COUNT(*) AS n FROM bank.loans;\n")
    saved = tmp_path / "saved.txt"
    term = Terminal([sys.executable, "-m", "veilql.cli", "shell", "-f", str(fed),
                     "--analyst", "alice"], env, rows=14)
    try:
        term.expect("alice ε 10>")
        term.send(".schema\r")  # taller than 14 rows: through $PAGER
        term.expect(r"PAGED bank\.customers: privacy unit")
        term.expect("alice ε 10>")
        term.send(".pager off\r")
        term.expect("pager off")
        term.send(".tables bank\r")
        term.expect(r"bank\s+customers")
        assert "PAGED" not in term.seen
        term.send("\\x\r")
        term.expect("expanded display is on")
        # completion of a group column's public values, then Enter runs it
        term.send("SELECT COUNT(*) AS n FROM bank.customers WHERE region = 'so\t")
        term.expect("uth'")  # Tab completed 'so to 'south'
        term.send(";\r")
        term.expect(r"-\[ RECORD 1 \]-+\s+n \| \d+ ± \d+")
        term.expect("alice ε 9>")
        term.send(f"\\o {saved}\r")
        term.expect("output to")
        term.send(f"\\i {script}\r")  # its answer goes to the file
        term.expect("1 row; spent epsilon 1")
        term.expect("alice ε 8>")
        term.send("\\o\r")
        term.expect("output to standard output")
        term.send(".quit\r")
    except BaseException:
        term.close(kill=True)
        raise
    assert term.close() == 0
    assert re.search(r"n \| \d+ ± \d+", saved.read_text())


def test_ctrl_c_cancels_a_running_query_on_a_pty(fed: Path, tmp_path: Path) -> None:
    pytest.importorskip("prompt_toolkit")
    marker = tmp_path / "running"
    env = terminal_env(tmp_path, VEIL_TEST_SLOW=str(marker), VEIL_TEST_SLOW_SECONDS="2")
    term = Terminal([sys.executable, "-m", "veilql.cli", "shell", "-f", str(fed),
                     "--analyst", "alice"], env)
    try:
        term.expect("alice ε 10>")
        term.send(BY_REGION + ";\r")
        term.expect(r"step 3 of 4 · bank: running its local SQL … \d\.\d s")  # progress
        term.send("\x03")  # Ctrl-C while the party runs its local SQL
        term.expect("error: query cancelled; the charge stands at bank")
        term.expect(r"alice ε 9>")
        # a clean prompt: no progress line drawn over it afterwards
        import time
        time.sleep(1.5)
        try:
            term.expect(r"\S", timeout=0.5)
            drawn = term.seen
        except AssertionError as exc:
            drawn = str(exc)
        assert "step" not in drawn and "running its local SQL" not in drawn
        term.send(".budget\r")
        term.expect(r"bank\s+1\.0\s+9\.0")
        term.send(".quit\r")
    except BaseException:
        term.close(kill=True)
        raise
    assert term.close() == 0


def test_batch_exits_130_when_a_query_is_cancelled(fed: Path, tmp_path: Path) -> None:
    import signal
    import time

    marker = tmp_path / "running"
    env = terminal_env(tmp_path, VEIL_TEST_SLOW=str(marker), VEIL_TEST_SLOW_SECONDS="2")
    proc = subprocess.Popen([sys.executable, "-m", "veilql.cli", "shell", "-f", str(fed),
                             "--analyst", "alice"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdin is not None
        proc.stdin.write(BY_REGION + ";\n.parties\n")
        proc.stdin.close()
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert marker.exists(), "the query never started"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        assert proc.stdout is not None and proc.stderr is not None
        out, err = proc.stdout.read(), proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    assert proc.returncode == 130, err
    assert "veil: error: query cancelled; the charge stands at bank" in err
    assert "payments" not in out  # nothing after the cancelled query ran
