"""Attack: crash the compiler, or make it echo characters a terminal acts on.

Route: the hostile analyst sends SQL built to exhaust the recursive parser, binder or
planner (thousands of ORs, hundreds of nested parentheses, a huge sum), or to smuggle
control and invisible characters back through error messages. Every node compiles the
analyst's SQL itself, so a crash there is a denial of service at every party, and a Python
traceback tells the attacker about the code. What must hold: every such input ends in
``veil: error:`` with exit 1, nothing on stdout, no traceback, no raw control character in
anything printed, and no budget charged anywhere.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from veilql.cli import main
from veilql.engine.sql.bind import bind
from veilql.engine.sql.parse import parse
from veilql.errors import QueryError

DEMO = Path(__file__).resolve().parents[2] / "sample_data" / "demo"
COUNT = "SELECT COUNT(*) AS n FROM bank.loans WHERE "
# The public limits of docs/reference.md ("Limits").
MAX_SQL_CHARS, MAX_NESTING, MAX_NODES, MAX_DEPTH = 100_000, 64, 2_000, 256


@pytest.fixture()
def fed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the demo federation with its ledgers in a temporary folder."""
    root = tmp_path / "fed"
    shutil.copytree(DEMO, root, ignore=shutil.ignore_patterns("ledgers"))
    ledgers = tmp_path / "ledgers"
    ledgers.mkdir()
    monkeypatch.setenv("VEIL_LEDGER_DIR", str(ledgers))
    monkeypatch.setenv("VEIL_ANALYST", "alice")
    return root / "federation.toml"


def _ledgers(fed: Path) -> dict[str, bytes]:
    folder = fed.parent.parent / "ledgers"
    return {p.name: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(fed: Path, sql: str, *, command: str = "query") -> Result:
    """Run ``veil <command>`` on ``sql`` (through stdin) and check it is a clean refusal."""
    before = _ledgers(fed)
    args = [command, "-f", str(fed)] + (["--epsilon", "1"] if command == "query" else [])
    res = CliRunner().invoke(main, [*args, "-"], input=sql, catch_exceptions=True)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code == 1, (res.exit_code, res.stderr)
    assert res.stdout == ""
    assert res.stderr.startswith("veil: error: ")
    assert "Traceback" not in res.stderr
    # Nothing printed may carry a control character but the line breaks.
    assert all(ch == "\n" or ch.isprintable() for ch in res.stderr), repr(res.stderr)
    assert _ledgers(fed) == before  # nothing charged at any party
    return res


def test_thousand_ors_is_refused_cleanly(fed: Path) -> None:
    # Route: a 1,000-term OR chain is a 1,000-level tree; the binder's checks recursed once
    # per level and died with RecursionError.
    res = refused(fed, COUNT + " OR ".join(["amount > 1"] * 1000))
    assert "too large" in res.stderr and f"{MAX_NODES:,}" in res.stderr


def test_deep_parentheses_do_not_traceback(fed: Path) -> None:
    # Route: 500 nested parentheses; sqlglot's parser recurses ~25 frames per level.
    res = refused(fed, COUNT + "(" * 500 + "amount > 1" + ")" * 500, command="explain")
    column = len(COUNT) + MAX_NESTING + 1  # the first parenthesis too many
    assert "nests too deeply" in res.stderr and f"line 1, column {column}" in res.stderr


def test_three_thousand_term_sum_is_refused_cleanly(fed: Path) -> None:
    # Route: SUM(amount + amount + ...) with 3,000 terms, recursing in interval arithmetic.
    res = refused(fed, "SELECT SUM(" + " + ".join(["amount"] * 3000) + ") FROM bank.loans")
    assert "too large" in res.stderr


def test_long_not_chain_does_not_traceback(fed: Path) -> None:
    # Route: NOT NOT NOT ... is nesting without a single parenthesis.
    res = refused(fed, COUNT + "NOT " * 2000 + "amount > 1")
    assert "nests too deeply" in res.stderr


def test_deep_chain_within_the_node_limit_is_refused_by_depth(fed: Path) -> None:
    # Route: TRUE OR TRUE OR ... costs two nodes a term, so 900 terms stay under the node
    # limit while the tree is 900 levels deep.
    res = refused(fed, COUNT + " OR ".join(["TRUE"] * 900))
    assert "levels deep" in res.stderr and str(MAX_DEPTH) in res.stderr


def test_query_over_the_length_limit_is_refused(fed: Path) -> None:
    # Route: megabytes of padding to make every party's tokenizer and parser work.
    res = refused(fed, COUNT + "amount > 1" + " " * MAX_SQL_CHARS)
    assert "too long" in res.stderr


def test_subscript_chain_cannot_stall_the_parser() -> None:
    # Route: a[1][1][1]... costs sqlglot time quadratic in its length (1,500 took ~10 s
    # per party); the token check refuses it before parsing.
    start = time.perf_counter()
    with pytest.raises(QueryError, match="subscripts"):
        parse(COUNT + "amount" + "[1]" * 1500 + " > 1")
    assert time.perf_counter() - start < 3


def test_nul_byte_is_not_echoed(fed: Path) -> None:
    # Route: a NUL in the SQL was echoed back inside the error; it can truncate logs and
    # confuse terminals. It must be pointed out by position instead.
    res = refused(fed, "SELECT COUNT(*)\x00 FROM bank.loans")
    assert "SQL contains a NUL character at line 1, column 16" in res.stderr
    assert "hint: delete the character" in res.stderr


@pytest.mark.parametrize(
    ("char", "named"),
    [
        ("\u200b", "U+200B (ZERO WIDTH SPACE)"),
        ("\ufeff", "byte order mark"),
        ("\u202e", "U+202E"),  # right-to-left override: reorders what the terminal shows
        ("\x1b", "U+001B"),  # escape: starts terminal control sequences
        ("\x07", "U+0007"),
        ("\x85", "U+0085"),
    ],
)
def test_invisible_characters_are_pointed_out_not_echoed(fed: Path, char: str,
                                                         named: str) -> None:
    # Route: an invisible character inside a name or string makes the refusal quote text
    # the analyst cannot see, or that the terminal executes.
    sql = f"SELECT COUNT(*) FROM bank.customers WHERE region = 'no{char}rth'"
    res = refused(fed, sql)
    assert named in res.stderr and f"line 1, column {sql.index(char) + 1}" in res.stderr
    assert char not in res.stderr


@pytest.mark.parametrize("char", ["\x0c", "\r"])  # a lone CR rewrites the line on screen
def test_control_character_in_a_later_line_is_positioned(char: str) -> None:
    # (stdin is read as text, which turns a lone CR into a newline; the API is not.)
    with pytest.raises(QueryError) as info:
        parse(f"SELECT COUNT(*)\r\n  FROM bank.loans\n WHERE amount{char} > 1")
    message = f"{info.value.message} {info.value.hint}"
    assert f"U+{ord(char):04X} at line 3, column 14" in message and char not in message


def test_constant_sum_does_not_crash_the_planner(fed: Path) -> None:
    # Route: SUM(3) bound fine, then the planner died on StopIteration (a traceback).
    res = refused(fed, "SELECT SUM(3) AS s FROM bank.loans")
    assert "reads no column" in res.stderr


def test_queries_just_inside_the_limits_compile(fed: Path) -> None:
    # The limits must not refuse what they promise to accept: 63 levels of parentheses
    # (over 40 used to exhaust Python's stack) and a 250-term OR chain.
    for sql in (COUNT + "(" * 63 + "amount > 1" + ")" * 63,
                COUNT + " OR ".join(["amount > 1"] * 250)):
        res = CliRunner().invoke(main, ["explain", "-f", str(fed), "-"], input=sql,
                                 catch_exceptions=True)
        assert res.exit_code == 0, (repr(res.exception), res.stderr)


def test_recursion_anywhere_in_binding_is_a_query_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Backstop: should some construct still recurse too deeply, it is a refusal, not a crash.
    from sql_fixtures import federation

    import veilql.engine.sql.bind as bind_module

    def boom(*_args: object) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(bind_module.checks, "check_constructs", boom)
    with pytest.raises(QueryError, match="nests too deeply"):
        bind(parse("SELECT COUNT(*) FROM bank.loans"), federation())
