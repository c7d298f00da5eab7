"""Assembling statements from typed lines: where SQL ends (``;``) and where a dot command is.

Semicolons inside quotes and comments do not end a statement; a line starting with ``.``
or ``\\`` is a dot command, also after an unfinished statement (which stays pending, as in
psql), unless that line is inside an open quote or block comment of the statement.
"""

from __future__ import annotations


def _scan(text: str) -> tuple[list[str], str, bool]:
    """(complete statements, what follows the last ``;``, whether the text ends inside a
    quote or block comment)."""
    done: list[str] = []
    start = i = 0
    meaningful = False  # anything but blanks and comments since the last ;
    open_literal = False
    n = len(text)
    while i < n:
        c = text[i]
        if c in ("'", '"'):
            meaningful = True
            end = text.find(c, i + 1)
            while end != -1 and text[end + 1:end + 2] == c:  # '' escapes a quote
                end = text.find(c, end + 2)
            if end == -1:
                open_literal = True
                i = n
            else:
                i = end + 1
            continue
        if text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end == -1 else end + 1
            continue
        if text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end == -1:
                open_literal = True
                i = n
            else:
                i = end + 2
            continue
        if c == ";":
            if meaningful:
                done.append(text[start:i].strip())
            start, meaningful = i + 1, False
        elif not c.isspace():
            meaningful = True
        i += 1
    return done, text[start:].strip() if meaningful else "", open_literal


def split_statements(text: str) -> tuple[list[str], str]:
    """Split ``text`` at top-level ``;``: the complete statements, and what follows the last.

    Semicolons inside quotes and comments do not count; a piece that is only comments is
    dropped, so a trailing ``-- note`` does not leave a statement pending.

    >>> split_statements("SELECT 1; SELECT ';' -- x;\\n; SELECT")
    (['SELECT 1', "SELECT ';' -- x;"], 'SELECT')
    >>> split_statements("SELECT 1; -- done")
    (['SELECT 1'], '')
    """
    done, rest, _ = _scan(text)
    return done, rest


def in_literal(text: str) -> bool:
    """Whether ``text`` ends inside a quoted string or a block comment.

    >>> in_literal("SELECT 'a"), in_literal("SELECT 'a'"), in_literal("SELECT /* x")
    (True, False, True)
    """
    return _scan(text)[2]


def is_command(line: str, pending: str = "") -> bool:
    """Whether ``line`` is a dot command, given the unfinished statement ``pending``.

    >>> is_command(".tables"), is_command("\\\\x", "SELECT 1"), is_command(".5", "SELECT '")
    (True, True, False)
    """
    return line.lstrip()[:1] in (".", "\\") and not (pending and in_literal(pending))


def is_complete(text: str) -> bool:
    """Whether ``text`` is ready to run: blank, SQL ended by ``;``, or ending with a dot
    command line (what Enter checks before it runs the input rather than opening a new
    line). A dot command after an unfinished statement runs; the statement stays pending.

    >>> is_complete(".tables"), is_complete("SELECT 1"), is_complete("SELECT 1;\\n")
    (True, False, True)
    >>> is_complete(".mode csv\\nSELECT 1"), is_complete(".mode csv\\nSELECT 1;\\n.timer on")
    (False, True)
    >>> is_complete("SELECT COUNT(*) AS n\\n\\\\x"), is_complete("SELECT '\\n.5")
    (True, False)
    """
    pending = ""
    last_was_command = False
    for line in text.split("\n"):
        if not line.strip():
            if pending:
                pending += "\n"
            continue
        if is_command(line, pending):
            last_was_command = True
            continue
        last_was_command = False
        _, pending = split_statements(pending + "\n" + line if pending else line)
    return last_was_command or not pending
