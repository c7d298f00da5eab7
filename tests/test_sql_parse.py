"""Parsing: the DP clause, round trips through the Veil dialect, and positioned parse errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlglot
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlglot import exp

from veilql.engine.sql.dialect import DifferentialPrivacy, Veil
from veilql.engine.sql.parse import ParsedQuery, parse
from veilql.errors import ParseError, UnsupportedError

BASE = "COUNT(*) FROM bank.loans"


@pytest.mark.parametrize(
    ("clause", "epsilon", "delta"),
    [
        ("OPTIONS (epsilon = 1.0, delta = 1e-6)", 1.0, 1e-6),
        ("OPTIONS(epsilon=1)", 1.0, None),
        ("options (EPSILON = 0.5, Delta = 0)", 0.5, 0.0),
        ("OPTIONS (delta = 1E-9, epsilon = 2.5e-1)", 0.25, 1e-9),
        ("OPTIONS (epsilon = .5)", 0.5, None),
        ("OPTIONS (epsilon = 3)", 3.0, None),
        ("OPTIONS (epsilon = 1_000)", 1000.0, None),
        ("OPTIONS ()", None, None),
        ("", None, None),
    ],
)
def test_dp_clause_variants(clause: str, epsilon: float | None, delta: float | None) -> None:
    q = parse(f"SELECT WITH DIFFERENTIAL_PRIVACY {clause} {BASE}")
    assert (q.epsilon, q.delta) == (epsilon, delta)
    assert isinstance(q.tree.args["hint"], DifferentialPrivacy)
    assert q.without_dp().sql(dialect="duckdb") == f"SELECT {BASE}"


def test_dp_clause_is_case_insensitive_and_multiline() -> None:
    q = parse("select\n  with differential_privacy\n  options (\n epsilon = 2,\n delta = 1e-7\n)\n"
              "  count(*)\nfrom bank.loans")
    assert (q.epsilon, q.delta) == (2.0, 1e-7)


def test_no_clause() -> None:
    q = parse(f"SELECT {BASE}")
    assert (q.epsilon, q.delta) == (None, None)
    assert q.tree.args.get("hint") is None


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT WITH DIFFERENTIAL_PRIVACY OPTIONS (epsilon = 1.0, delta = 1e-6) COUNT(*) FROM "
        "bank.loans",
        "SELECT WITH DIFFERENTIAL_PRIVACY OPTIONS (epsilon = 1) c.region, SUM(l.amount) AS s "
        "FROM bank.customers AS c JOIN bank.loans AS l ON c.customer_id = l.customer_id "
        "WHERE l.amount > 10 GROUP BY c.region HAVING s > 3 ORDER BY s DESC LIMIT 5",
        "SELECT WITH DIFFERENTIAL_PRIVACY COUNT(*) FROM bank.loans",
        "SELECT COUNT(*) FROM bank.loans",
    ],
)
def test_round_trip(sql: str) -> None:
    tree = parse(sql).tree
    printed = tree.sql(dialect=Veil)
    assert printed == sql
    again = parse(printed)
    assert again.tree == tree


def test_round_trip_normalises_spelling() -> None:
    q = parse("select with differential_privacy options(Epsilon=1.5,DELTA=1e-6) count(*) from t")
    assert q.tree.sql(dialect=Veil) == (
        "SELECT WITH DIFFERENTIAL_PRIVACY OPTIONS (epsilon = 1.5, delta = 1e-6) COUNT(*) FROM t"
    )


def test_dialect_is_registered_by_name() -> None:
    tree = sqlglot.parse_one("SELECT WITH DIFFERENTIAL_PRIVACY OPTIONS (epsilon = 1) 1",
                             dialect="veil")
    assert isinstance(tree.args["hint"], DifferentialPrivacy)


def test_other_dialects_refuse_to_print_the_clause() -> None:
    # Printing a tree with the clause in plain DuckDB would silently drop the privacy cost.
    q = parse(f"SELECT WITH DIFFERENTIAL_PRIVACY OPTIONS (epsilon = 1) {BASE}")
    with pytest.raises(ValueError, match="DifferentialPrivacy"):
        q.tree.sql(dialect="duckdb")


def test_clause_only_after_select() -> None:
    # A CTE's WITH is still a CTE, not the DP clause.
    tree = parse("WITH x AS (SELECT 1 AS a) SELECT a FROM x").tree
    assert isinstance(tree, exp.Select) and tree.args.get("with_") is not None


@settings(max_examples=60, deadline=None)
@given(
    epsilon=st.floats(min_value=1e-6, max_value=1e6, allow_nan=False),
    delta=st.floats(min_value=0, max_value=0.999, allow_nan=False),
)
def test_option_values_are_read_exactly(epsilon: float, delta: float) -> None:
    q = parse(f"SELECT WITH DIFFERENTIAL_PRIVACY OPTIONS (epsilon = {epsilon!r}, "
              f"delta = {delta!r}) {BASE}")
    assert q.epsilon == epsilon and q.delta == delta


@pytest.mark.parametrize(
    ("options", "fragment", "underlined"),
    [
        ("(epsilon = 1, foo = 2)", "unknown option 'foo' (known: epsilon, delta)", "foo"),
        ("(epsilon = 1, privacy_unit_column = id)", "unknown option 'privacy_unit_column'",
         "privacy_unit_column"),
        ("(epsilon = 1, epsilon = 2)", "option 'epsilon' given twice", "epsilon"),
        ("(epsilon = 0)", "epsilon must be > 0", "0"),
        ("(epsilon = -1)", "epsilon must be > 0", "-"),
        ("(delta = 1)", "delta must be in [0, 1)", "1"),
        ("(epsilon = 'one')", "epsilon must be a finite number", "'one'"),
        ("(epsilon = x)", "epsilon must be a finite number", "x"),
        ("(epsilon = 1 delta = 2)", "expected ',' or ')'", "delta"),
        ("(epsilon = 1,)", "expected an option name", ")"),
        ("epsilon = 1", "OPTIONS must be followed by '('", "epsilon"),
        ("(epsilon 1)", "expected '=' after 'epsilon'", "1"),
    ],
)
def test_dp_clause_errors(options: str, fragment: str, underlined: str) -> None:
    sql = f"SELECT WITH DIFFERENTIAL_PRIVACY OPTIONS {options} {BASE}"
    with pytest.raises(ParseError) as info:
        parse(sql)
    e = info.value
    assert fragment in e.message
    assert e.span is not None and sql[e.span[0]:e.span[1]] == underlined
    assert e.line == 1 and e.col == e.span[0] + 1
    assert "epsilon" in (e.hint or "")


def _caret_line(message: str) -> str:
    return message.splitlines()[-1]


def test_parse_error_position_and_underline() -> None:
    sql = "SELECT COUNT(*)\nFROM bank.loans\nWHERE amount = = 3"
    with pytest.raises(ParseError) as info:
        parse(sql)
    e = info.value
    assert (e.line, e.col) == (3, 16)
    assert e.span == (47, 48) and sql[47] == "="
    lines = e.message.splitlines()
    assert lines[0].startswith("syntax error at line 3, col 16:")
    assert lines[1] == "  WHERE amount = = 3"
    assert lines[2] == "  " + " " * 15 + "^"
    assert e.hint and e.exit_code == 1


def test_parse_error_underlines_whole_token() -> None:
    with pytest.raises(ParseError) as info:
        parse("SELECT COUNT(* FROM bank.loans")
    e = info.value
    assert (e.line, e.col) == (1, 16)
    assert _caret_line(e.message) == "  " + " " * 15 + "^^^^"


def test_parse_error_keeps_tabs_aligned() -> None:
    with pytest.raises(ParseError) as info:
        parse("SELECT\tCOUNT(* FROM t")
    assert _caret_line(info.value.message) == "  " + " " * 6 + "\t" + " " * 8 + "^^^^"


def test_unclosed_string_is_positioned() -> None:
    sql = "SELECT COUNT(*) FROM bank.customers\nWHERE region = 'north"
    with pytest.raises(ParseError) as info:
        parse(sql)
    e = info.value
    assert (e.line, e.col) == (2, 16)
    assert _caret_line(e.message) == "  " + " " * 15 + "^" * 6


@pytest.mark.parametrize("sql", ["", "   ", ";", "-- just a comment"])
def test_empty_query(sql: str) -> None:
    with pytest.raises(ParseError, match="empty query"):
        parse(sql)


def test_multiple_statements_refused() -> None:
    with pytest.raises(UnsupportedError, match="multiple statements"):
        parse("SELECT 1; SELECT 2")


def test_trailing_semicolon_is_fine() -> None:
    assert isinstance(parse("SELECT COUNT(*) FROM bank.loans;").tree, exp.Select)


def test_parsed_query_is_frozen() -> None:
    q = parse(f"SELECT {BASE}")
    assert isinstance(q, ParsedQuery)
    with pytest.raises(AttributeError):
        q.epsilon = 2.0  # type: ignore[misc]


# ---------------------------------------------------------------- limits (engine/sql/limits.py)


def test_limits_are_the_documented_ones() -> None:
    from veilql.engine.sql import limits

    assert (limits.MAX_SQL_CHARS, limits.MAX_TOKENS, limits.MAX_NESTING, limits.MAX_NODES,
            limits.MAX_DEPTH) == (100_000, 10_000, 64, 2_000, 256)
    reference = (Path(__file__).resolve().parent.parent / "docs" / "reference.md").read_text()
    for text in ("100,000", "10,000", "64", "2,000", "256"):
        assert text in reference.split("### Limits", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize(
    ("sql", "fragment"),
    [
        ("SELECT 1" + " + 1" * 2500, "too large: more than 2,000 terms"),
        ("SELECT " + ", ".join(["a"] * 5001), "too large: 10,002 tokens"),
        ("SELECT " + "(" * 65 + "1" + ")" * 65, "more than 64 levels"),
        ("SELECT " + "- " * 65 + "1", "more than 64 levels"),
        ("SELECT " + "CASE WHEN " * 65 + "1", "more than 64 levels"),
        ("SELECT " + " OR ".join(["TRUE"] * 300), "301 levels deep"),
        ("SELECT 1" + " " * 100_000, "too long: 100,008 characters"),
    ],
)
def test_limits_are_checked_before_anything_recurses(sql: str, fragment: str) -> None:
    with pytest.raises(UnsupportedError) as info:
        parse(sql)
    assert fragment in info.value.message and info.value.hint


def test_control_characters_are_positioned_not_echoed() -> None:
    with pytest.raises(ParseError) as info:
        parse("SELECT\n  COUNT(*)\u200b FROM t")
    e = info.value
    assert (e.line, e.col, e.span) == (2, 11, (17, 18))
    assert e.message == ("SQL contains an invisible character U+200B (ZERO WIDTH SPACE) at "
                         "line 2, column 11")
    assert "\u200b" not in e.message + (e.hint or "")
    # Tabs, newlines and CRLF line ends are not refused.
    assert parse("SELECT COUNT(*)\r\n\tFROM bank.loans\r\n").tree.sql() == \
        "SELECT COUNT(*) FROM bank.loans"


def test_quoted_line_escapes_what_a_terminal_would_not_print() -> None:
    # A no-break space is allowed (it is no control character) but is shown escaped, and
    # the caret still points at the bad token.
    sql = "SELECT COUNT(*) FROM\xa0bank.loans WHERE = 1"
    with pytest.raises(ParseError) as info:
        parse(sql)
    quoted, carets = info.value.message.splitlines()[1:]
    assert "\xa0" not in quoted and "\\xa0" in quoted
    assert info.value.col is not None and info.value.col > 21
    assert quoted[carets.index("^")] == sql[info.value.col - 1]
