"""Parse one VeilQL statement: sqlglot with the ``Veil`` dialect, errors with positions.

>>> q = parse("SELECT WITH DIFFERENTIAL_PRIVACY OPTIONS (epsilon = 0.5) COUNT(*) FROM bank.loans")
>>> (q.epsilon, q.delta)
(0.5, None)
>>> q.without_dp().sql(dialect="duckdb")
'SELECT COUNT(*) FROM bank.loans'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlglot import exp
from sqlglot.errors import ErrorLevel, TokenError
from sqlglot.errors import ParseError as SqlglotParseError

from veilql.engine.sql import limits
from veilql.engine.sql.dialect import DP_ERROR_PREFIX, Veil, dp_options, dp_purpose
from veilql.errors import ParseError, UnsupportedError

GENERIC_HINT = (
    "check the SQL near the marked text; VeilQL reads DuckDB SQL, optionally with "
    "SELECT WITH DIFFERENTIAL_PRIVACY OPTIONS (epsilon = ..., delta = ...)"
)
DP_HINT = (
    "write OPTIONS (epsilon = <number > 0>, delta = <number in [0, 1)>); the privacy unit and "
    "contribution bounds come from the parties' policies, not from the query"
)


@dataclass(frozen=True)
class ParsedQuery:
    """One parsed statement: the sqlglot tree and the DP options written in it.

    ``tree`` keeps the DP clause (a ``DifferentialPrivacy`` node in the Select's ``hint``
    argument); treat it as read-only and copy before rewriting.
    """

    sql: str
    tree: exp.Expression
    epsilon: float | None = None
    delta: float | None = None
    purpose: str | None = None  # OPTIONS (purpose = '...'): why the analyst asks

    def without_dp(self) -> exp.Expression:
        """A copy of the tree without the DP clause, printable in any sqlglot dialect."""
        tree = self.tree.copy()
        if isinstance(tree, exp.Select):
            tree.set("hint", None)
        return tree


def parse(sql: str) -> ParsedQuery:
    """Parse exactly one statement of ``sql`` with the ``Veil`` dialect.

    Raises ``ParseError`` (with ``line``, ``col``, ``span``) when the text does not parse
    or holds a control or invisible character, and ``UnsupportedError`` when it holds more
    than one statement or exceeds a limit of ``veilql.engine.sql.limits`` (length, tokens,
    nesting, nodes, depth). No input ends in a ``RecursionError``.
    """
    if not isinstance(sql, str):
        raise ParseError("the query must be text", "pass the SQL as a string")
    limits.check_text(sql)
    dialect = Veil()
    tokenizer = dialect.tokenizer()
    try:
        with limits.recursion_guard("reading"):
            tokens = tokenizer.tokenize(sql)
    except TokenError:
        # The tokenizer keeps where the failing token started (e.g. an unclosed quote).
        core = getattr(tokenizer, "_core", tokenizer)
        start = min(int(getattr(core, "_start", 0)), max(len(sql) - 1, 0))
        raise _positioned_error(sql, "cannot read the text (unclosed quote or bad character?)",
                                start, len(sql), GENERIC_HINT) from None
    limits.check_tokens(tokens, sql)
    limits.ensure_recursion_limit()
    try:
        with limits.recursion_guard("parsing"):
            trees = dialect.parser(error_level=ErrorLevel.IMMEDIATE).parse(tokens, sql)
    except SqlglotParseError as e:
        raise _from_sqlglot(sql, e) from None

    statements = [t for t in trees if t is not None]
    if not statements:
        raise ParseError("empty query: no SQL statement found",
                         "write one SELECT statement", sql=sql)
    if len(statements) > 1:
        raise UnsupportedError(
            f"multiple statements ({len(statements)}) are not supported",
            "send one SELECT statement at a time",
        )
    tree = statements[0]
    assert isinstance(tree, exp.Expression)
    limits.check_tree(tree)
    options = dp_options(tree)
    return ParsedQuery(sql=sql, tree=tree, epsilon=options.get("epsilon"),
                       delta=options.get("delta"), purpose=dp_purpose(tree))


def _clean(description: str) -> str:
    """sqlglot's description, with ``<class 'sqlglot....EQ'>`` shortened to ``EQ``."""
    return re.sub(r"<class '(?:[\w]+\.)*(\w+)'>", r"\1", description)


def _from_sqlglot(sql: str, error: SqlglotParseError) -> ParseError:
    """Translate sqlglot's first error into a positioned VeilQL ``ParseError``."""
    info = error.errors[0] if error.errors else {}
    description = limits.printable(_clean(str(info.get("description") or error)))
    hint = DP_HINT if description.startswith(DP_ERROR_PREFIX) else GENERIC_HINT
    line, col = info.get("line"), info.get("col")
    highlight = str(info.get("highlight") or "")
    if not isinstance(line, int) or not isinstance(col, int):
        return ParseError(description, hint, sql=sql)
    # sqlglot reports the 1-based line and column of the *last* character of the token.
    line_start = _line_offsets(sql)[min(max(line, 1), len(_line_offsets(sql))) - 1]
    end = min(line_start + max(col, 1), len(sql))
    start = end - len(highlight)
    if not highlight or sql[start:end] != highlight:
        start = max(end - 1, 0)
    return _positioned_error(sql, description, start, end, hint)


def _line_offsets(sql: str) -> list[int]:
    """Offset of the first character of every line."""
    return [0] + [m.end() for m in re.finditer("\n", sql)]


def _positioned_error(sql: str, description: str, start: int, end: int, hint: str) -> ParseError:
    """A ``ParseError`` quoting the bad line with ``^^^`` under ``sql[start:end]``.

    >>> e = _positioned_error("SELECT a\\nFROM t WHERE = 1", "unexpected =", 22, 23, "h")
    >>> (e.line, e.col, e.span)
    (2, 14, (22, 23))
    >>> print(e.message)
    syntax error at line 2, col 14: unexpected =
      FROM t WHERE = 1
                   ^
    """
    offsets = _line_offsets(sql)
    line_index = max(i for i, off in enumerate(offsets) if off <= start)
    line_start = offsets[line_index]
    line_end = sql.find("\n", line_start)
    line_end = len(sql) if line_end < 0 else line_end
    # check_text refused every control character but tab, newline and CR before CRLF.
    raw = sql[line_start:line_end].rstrip("\r")
    col = start - line_start
    width = max(1, min(end, line_start + len(raw)) - start)
    # Anything a terminal would not print is shown escaped (e.g. a no-break space as \xa0).
    shown = [c if c == "\t" else limits.printable(c) for c in raw]
    # Keep tabs so the carets line up under the same characters in a terminal.
    pad = "".join(c if c == "\t" else " " * len(c) for c in shown[:col])
    carets = sum(len(c) for c in shown[col:col + width]) or 1
    message = (
        f"syntax error at line {line_index + 1}, col {col + 1}: {description}\n"
        f"  {''.join(shown)}\n  {pad}{'^' * carets}"
    )
    return ParseError(message, hint, line=line_index + 1, col=col + 1, sql=sql,
                      span=(start, end))
