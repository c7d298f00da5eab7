"""Public limits on the SQL a query may be, checked before and while parsing.

The analyst is assumed hostile, so the text is checked before anything recursive sees it:
its length and characters first, its tokens (count, nesting) before the parser (which
recurses once per nesting level), the parsed tree (nodes, depth) before the binder and
the planner (which recurse once per level of the tree). Every refusal is a
``QueryError`` (exit 1) raised before any data is read or any budget is charged, and its
message never echoes a control or invisible character.

=====================  =======  ========================================================
limit                  value    what counts
=====================  =======  ========================================================
``MAX_SQL_CHARS``      100,000  characters of SQL text
``MAX_TOKENS``          10,000  tokens (words, numbers, strings, operators, punctuation)
``MAX_NESTING``             64  parentheses, brackets, CASE and prefix operators (NOT, -)
                                open at one point of the text
``MAX_NODES``            2,000  nodes of the parsed statement (each column, literal,
                                operator, function, ... counts one)
``MAX_DEPTH``              256  levels of the parsed tree: ``a OR b OR c`` is three
                                levels deep, ``a + (b + c)`` too
=====================  =======  ========================================================

>>> check_text("SELECT 1")
>>> printable("a\\x00b\\u200bc")
'a\\\\x00b\\\\u200bc'
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from sqlglot import exp
from sqlglot.tokens import Token, TokenType

from veilql.errors import ParseError, QueryError, UnsupportedError

MAX_SQL_CHARS = 100_000
MAX_TOKENS = 10_000
MAX_NESTING = 64
MAX_NODES = 2_000
MAX_DEPTH = 256

# sqlglot's parser recurses 20 to 30 Python frames per nesting level (about 1,950 frames
# at MAX_NESTING for the worst construct measured), the binder and planner one to three
# per tree level. Python's default limit (1,000) is too low for that, so parsing makes
# sure of at least this many, with room to spare (never lowering a higher limit). Kept
# well below what an 8 MB thread stack holds should C code recurse as deep.
RECURSION_LIMIT = 4_000

TOO_DEEP_HINT = (
    "split the query or simplify the expression: write long lists of alternatives as "
    "IN (...), and drop redundant parentheses"
)

_OPENERS = frozenset({TokenType.L_PAREN, TokenType.L_BRACKET, TokenType.L_BRACE,
                      TokenType.CASE})
_CLOSERS = frozenset({TokenType.R_PAREN, TokenType.R_BRACKET, TokenType.R_BRACE,
                      TokenType.END})
_PREFIXES = frozenset({TokenType.NOT, TokenType.DASH, TokenType.PLUS, TokenType.TILDE})

# C0 controls but tab, newline and carriage return; DEL; C1 controls.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# A carriage return not followed by a newline moves a terminal's cursor back.
_LONE_CR = re.compile(r"\r(?!\n)")
# Unicode categories refused anywhere in the text: format characters (zero-width spaces
# and joiners, bidirectional overrides, the byte order mark, soft hyphen), surrogates
# (undecodable bytes), private use, line and paragraph separators.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})
_NAMES = {0x00: "a NUL character", 0x7F: "a DEL character", 0xFEFF: "a byte order mark"}

CHARACTER_HINT = (
    "delete the character (it is often pasted in by accident): SQL may contain tabs and "
    "newlines, but no other control or invisible characters, not even inside strings"
)


def _bad_character(sql: str) -> int | None:
    """Offset of the first refused character of ``sql``, or None."""
    found = [m.start() for m in (_CONTROL.search(sql), _LONE_CR.search(sql)) if m]
    if not sql.isascii():
        found += [next((i for i, ch in enumerate(sql) if ord(ch) > 0x9F
                        and unicodedata.category(ch) in _INVISIBLE_CATEGORIES), len(sql))]
    first = min(found, default=len(sql))
    return first if first < len(sql) else None


def describe_character(ch: str) -> str:
    """How an error names a refused character, without printing it.

    >>> describe_character("\\x00"), describe_character("\\u200b")
    ('a NUL character', 'an invisible character U+200B (ZERO WIDTH SPACE)')
    """
    code = ord(ch)
    if code in _NAMES:
        return _NAMES[code]
    if code < 0x20 or 0x7F <= code <= 0x9F or ch == "\r":
        return f"a control character U+{code:04X}"
    name = unicodedata.name(ch, "")
    return f"an invisible character U+{code:04X}" + (f" ({name})" if name else "")


def line_col(sql: str, offset: int) -> tuple[int, int]:
    """1-based line and column of ``sql[offset]``.

    >>> line_col("SELECT\\n  x", 9)
    (2, 3)
    """
    line = sql.count("\n", 0, offset) + 1
    return line, offset - (sql.rfind("\n", 0, offset) + 1) + 1


def check_text(sql: str) -> None:
    """Refuse text that is too long or holds a control or invisible character.

    The error gives the character's position and code point, never the character itself.
    """
    if len(sql) > MAX_SQL_CHARS:
        raise UnsupportedError(
            f"the query is too long: {len(sql):,} characters (at most {MAX_SQL_CHARS:,})",
            "send a shorter query; long IN lists and repeated conditions can usually be "
            "written more compactly",
        )
    offset = _bad_character(sql)
    if offset is not None:
        line, col = line_col(sql, offset)
        raise ParseError(
            f"SQL contains {describe_character(sql[offset])} at line {line}, column {col}",
            CHARACTER_HINT, line=line, col=col, span=(offset, offset + 1),
        )


def check_tokens(tokens: Sequence[Token], sql: str) -> None:
    """Refuse too many tokens or too deep nesting, before the parser recurses into it."""
    if len(tokens) > MAX_TOKENS:
        raise UnsupportedError(
            f"the query is too large: {len(tokens):,} tokens (at most {MAX_TOKENS:,})",
            TOO_DEEP_HINT,
        )
    depth = run = postfix = 0
    previous = None
    for token in tokens:
        kind = token.token_type
        # Subscripts and method calls (a[1][2], a.f().g()) cost the parser time quadratic
        # in their number; VeilQL supports neither, so a few are enough to refuse them.
        if kind == TokenType.L_BRACKET or (kind == TokenType.DOT and previous in _CLOSERS):
            postfix += 1
            if postfix > MAX_NESTING:
                raise UnsupportedError(
                    f"the query has more than {MAX_NESTING} subscripts or method calls "
                    "([...], .name(...))",
                    "VeilQL supports neither subscripts nor method calls; " + TOO_DEEP_HINT,
                )
        previous = kind
        if kind in _OPENERS:
            depth += 1
        elif kind in _CLOSERS:
            depth = max(depth - 1, 0)
        if kind in _PREFIXES:
            run += 1
        elif kind not in _OPENERS:
            run = 0
        if depth + run > MAX_NESTING:
            line, col = line_col(sql, min(max(token.start, 0), max(len(sql) - 1, 0)))
            raise UnsupportedError(
                f"the query nests too deeply: more than {MAX_NESTING} levels of parentheses, "
                f"CASE or prefix operators at line {line}, column {col}",
                TOO_DEEP_HINT,
            )


#: After WITH and derived tables are inlined (each reference to a subquery's column
#: becomes a copy of its expression), the statement may hold at most this many nodes.
MAX_INLINED_NODES = 4 * MAX_NODES


def check_tree(tree: exp.Expr, *, max_nodes: int = MAX_NODES, inlined: bool = False) -> None:
    """Refuse a parsed statement with too many nodes or too many levels (no recursion).

    ``inlined``: the statement after its subqueries were inlined (``normalize``), checked
    against ``MAX_INLINED_NODES`` so that copies of a large subquery expression cannot
    multiply the work of every party.
    """
    if inlined:
        max_nodes = MAX_INLINED_NODES
    nodes = 0
    deepest = 0
    stack: list[tuple[exp.Expr, int]] = [(tree, 1)]
    while stack and nodes <= max_nodes:
        node, depth = stack.pop()
        nodes += 1
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in node.iter_expressions())
    if nodes > max_nodes:
        once = " once its WITH and subqueries are inlined" if inlined else ""
        raise UnsupportedError(
            f"the query is too large{once}: more than {max_nodes:,} terms (columns, "
            "literals, operators)",
            TOO_DEEP_HINT + ("; refer to a subquery's long expressions fewer times"
                             if inlined else ""),
        )
    if deepest > MAX_DEPTH:
        raise UnsupportedError(
            f"the query nests too deeply: its expression is {deepest} levels deep (at most "
            f"{MAX_DEPTH}; each AND, OR, + or - of a chain is one level)",
            TOO_DEEP_HINT,
        )


def ensure_recursion_limit() -> None:
    """Raise the interpreter's recursion limit to ``RECURSION_LIMIT`` if it is lower."""
    if sys.getrecursionlimit() < RECURSION_LIMIT:
        sys.setrecursionlimit(RECURSION_LIMIT)


@contextmanager
def recursion_guard(stage: str) -> Iterator[None]:
    """Turn a ``RecursionError`` inside the block into a clear ``QueryError``.

    The limits above keep parsing, binding and planning far from the recursion limit;
    this is the backstop, so that no input ends in a Python traceback.

    >>> with recursion_guard("planning"):
    ...     raise RecursionError
    Traceback (most recent call last):
    ...
    veilql.errors.UnsupportedError: the query nests too deeply for planning
    """
    try:
        yield
    except RecursionError:
        raise UnsupportedError(f"the query nests too deeply for {stage}",
                               TOO_DEEP_HINT) from None


_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def printable(text: str) -> str:
    """``text`` with every control or invisible character written as an escape.

    Messages quote parts of the analyst's SQL; this makes sure none of them can carry a
    character that a terminal would act on or hide.

    >>> printable("tab\\there")
    'tab\\\\there'
    """
    if text.isprintable():
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if ch.isprintable():  # False for every control, format and separator character
            out.append(ch)
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
    return "".join(out)


def printable_error(error: QueryError) -> QueryError:
    """``error`` with a message and hint safe to print (see ``printable``), line breaks kept."""
    message = "\n".join(printable(line) for line in error.message.split("\n"))
    hint = None if error.hint is None else printable(error.hint)
    if message != error.message or hint != error.hint:
        error.message = message
        error.hint = hint
        error.args = (message,)
    return error
