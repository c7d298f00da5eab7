"""Completion for ``veil shell``: keywords, dot commands, ``party.table[.column]`` names,
and the public values of a group column after ``=`` and ``IN (``.

The vocabulary comes from the federation's policies only (names and group domains are
public inside a federation, DESIGN.md), so completing never opens a party's data, and only
columns a policy lists (the usable ones) are offered. A group column without a public
domain (keys chosen privately) has no values to offer. ``suggest`` is pure and tested directly;
``prompt_toolkit_completer`` wraps it for the interactive front-end, importing
prompt_toolkit lazily so the rest of the shell works without it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from veilql.policies.model import Federation

#: SQL words the shell completes; VeilQL accepts only SELECT queries (CONTRACT.md).
KEYWORDS: tuple[str, ...] = (
    "SELECT", "FROM", "WHERE", "GROUP BY", "HAVING", "ORDER BY", "LIMIT", "JOIN", "ON",
    "AS", "AND", "OR", "NOT", "IN", "BETWEEN", "IS", "NULL", "ASC", "DESC", "DISTINCT",
    "COUNT", "SUM", "AVG", "EXPLAIN", "WITH DIFFERENTIAL_PRIVACY OPTIONS", "EPSILON", "DELTA",
)

# The word being typed: identifiers with dots, or a dot/backslash command at line start.
_WORD = re.compile(r"[\w.]*$")
# A comparison with a column, up to the value being typed: `x.region = 'no`, `region IN ('a', `.
_VALUE = re.compile(
    r"(?P<col>\b[A-Za-z_]\w*(?:\.[A-Za-z_]\w*){0,2})\s*"
    r"(?:(?:=|<>|!=)\s*|\bIN\s*\((?:[^()']|'[^']*')*?)(?P<word>'[^']*|[\w.-]*)$",
    re.IGNORECASE)
# `party.table alias` or `party.table AS alias` anywhere in the text typed so far.
_ALIAS = re.compile(r"\b(\w+)\.(\w+)\s+(?:AS\s+)?(\w+)", re.IGNORECASE)
_NOT_ALIASES = {k.split()[0].lower() for k in KEYWORDS}


@dataclass(frozen=True)
class Vocabulary:
    """Names the shell can complete: tables per party, usable columns per table."""

    tables: Mapping[str, Mapping[str, Sequence[str]]]  # party -> table -> columns
    commands: Sequence[str] = ()  # dot commands and their aliases, e.g. ".help", "\\?"
    arguments: Mapping[str, Sequence[str]] = field(default_factory=dict)  # ".mode" -> modes
    # party -> table -> group column -> its public values (policy ``values``)
    values: Mapping[str, Mapping[str, Mapping[str, Sequence[Any]]]] = field(
        default_factory=dict)

    @classmethod
    def from_federation(cls, fed: Federation, commands: Sequence[str] = (),
                        arguments: Mapping[str, Sequence[str]] | None = None) -> Vocabulary:
        """The vocabulary of ``fed``: its parties, their tables and policy-listed columns,
        and the public values of its group columns."""
        tables = {p.name: {t.name: list(t.columns) for t in p.tables.values()}
                  for p in fed.parties}
        values = {p.name: {t.name: {c.name: tuple(c.values) for c in t.columns.values()
                                    if c.role == "group" and c.values is not None}
                           for t in p.tables.values()}
                  for p in fed.parties}
        return cls(tables, tuple(commands), dict(arguments or {}), values)

    def qualified_tables(self) -> list[str]:
        """Every table as ``party.table``."""
        return [f"{p}.{t}" for p, ts in self.tables.items() for t in ts]

    def columns_of(self, party: str, table: str) -> Sequence[str]:
        """Usable columns of ``party.table`` (empty when unknown)."""
        return self.tables.get(party, {}).get(table, ())


def _match(prefix: str, names: Iterable[str]) -> list[str]:
    low = prefix.lower()
    return [n for n in names if n.lower().startswith(low)]


def _keywords(prefix: str) -> list[str]:
    # Follow the user's case: `sel` completes to `select`, `SEL` and `Sel` to `SELECT`.
    lower = bool(prefix) and prefix == prefix.lower()
    return [k.lower() if lower else k for k in _match(prefix, KEYWORDS)]


def _aliases(text: str, vocab: Vocabulary) -> dict[str, tuple[str, str]]:
    """``alias -> (party, table)`` for every ``party.table [AS] alias`` in ``text``."""
    found = {}
    for party, table, alias in _ALIAS.findall(text):
        if party in vocab.tables and table in vocab.tables[party]:
            if alias.lower() not in _NOT_ALIASES:
                found[alias] = (party, table)
    return found


def literal(value: Any) -> str:
    """A public value as SQL: strings quoted (quotes doubled), booleans and numbers bare.

    >>> literal("north"), literal("o'neil"), literal(12), literal(True)
    ("'north'", "'o''neil'", '12', 'TRUE')
    """
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


def _mentioned(text: str, vocab: Vocabulary) -> list[tuple[str, str]]:
    """``(party, table)`` of every table named in ``text`` (by name or alias)."""
    found = list(_aliases(text + " ", vocab).values())
    found += [(p, t) for p, ts in vocab.tables.items() for t in ts
              if re.search(rf"\b{re.escape(p)}\.{re.escape(t)}\b", text)]
    return list(dict.fromkeys(found))


def value_word(text: str) -> str | None:
    """The partial value being typed after ``column =`` or ``column IN (`` (None when the
    cursor is not at a value).

    >>> value_word("WHERE region = 'no"), value_word("WHERE x IN ('a', "), value_word("a =b ")
    ("'no", '', None)
    """
    m = _VALUE.search(text)
    return m.group("word") if m else None


def _values(text: str, vocab: Vocabulary) -> list[str] | None:
    """Public values for the column compared at the end of ``text`` (None: not at a value)."""
    m = _VALUE.search(text)
    if m is None:
        return None
    parts = m.group("col").split(".")
    if parts[0].upper() in ("AND", "OR", "NOT", "WHERE", "ON", "IN", "SELECT"):
        return None
    targets: list[tuple[str, str]]
    if len(parts) == 3:
        targets = [(parts[0], parts[1])]
    elif len(parts) == 2:
        alias = _aliases(text, vocab).get(parts[0])
        targets = [alias] if alias else []
    else:
        targets = _mentioned(text, vocab)
    column = parts[-1]
    domain: list[Any] = []
    for party, table in targets:
        domain += vocab.values.get(party, {}).get(table, {}).get(column, ())
    if not domain:
        return None
    word = m.group("word")
    chosen = [literal(v) for v in dict.fromkeys(domain)]
    already = set(re.findall(r"'(?:[^']|'')*'|[\w.-]+", text[m.start("col"):m.start("word")]))
    return [c for c in chosen if c.lower().startswith(word.lower()) and c not in already]


def _sql(text: str, word: str, vocab: Vocabulary) -> list[str]:
    """Candidates for ``word`` at the end of SQL ``text``."""
    parts = word.split(".")
    if len(parts) == 1:
        mentioned = _mentioned(text, vocab)
        columns = dict.fromkeys(c for p, t in mentioned for c in vocab.columns_of(p, t))
        aliases = list(_aliases(text, vocab))
        return (_match(word, columns) + _match(word, aliases) + _match(word, vocab.tables)
                + _keywords(word))
    head, last = parts[:-1], parts[-1]
    if len(head) == 1 and head[0] in vocab.tables:  # party.  -> party.table (or alias.col)
        out = [f"{head[0]}.{t}" for t in _match(last, vocab.tables[head[0]])]
        if out:
            return out
    if len(head) == 1:  # alias.column
        target = _aliases(text, vocab).get(head[0])
        if target is not None:
            return [f"{head[0]}.{c}" for c in _match(last, vocab.columns_of(*target))]
        return []
    if len(head) == 2:  # party.table.column
        return [f"{head[0]}.{head[1]}.{c}" for c in _match(last, vocab.columns_of(*head))]
    return []


def suggest(text: str, vocab: Vocabulary) -> list[str]:
    """Completions for the last word of ``text`` (everything typed before the cursor).

    >>> v = Vocabulary({"bank": {"loans": ["amount", "region"]}}, [".help", ".mode"],
    ...                {".mode": ["table", "csv"]})
    >>> suggest("SELECT SUM(bank.loans.am", v)
    ['bank.loans.amount']
    >>> suggest("select count(*) from ba", v)
    ['bank']
    >>> suggest("SELECT l.r", v)  # no alias l yet
    []
    >>> suggest("SELECT * FROM bank.loans l WHERE l.r", v)
    ['l.region']
    >>> suggest(".m", v), suggest(".mode c", v), suggest("sel", v)
    (['.mode'], ['csv'], ['select'])
    >>> v = Vocabulary({"bank": {"loans": ["region"]}}, values={"bank": {"loans": {
    ...     "region": ("north", "south")}}})
    >>> suggest("SELECT 1 FROM bank.loans WHERE region = 'n", v)
    ["'north'"]
    >>> suggest("SELECT 1 FROM bank.loans l WHERE l.region IN ('north', ", v)
    ["'south'"]
    """
    stripped = text.lstrip()
    if stripped[:1] in (".", "\\") and "\n" not in stripped:
        command, space, rest = stripped.partition(" ")
        if not space:
            return _match(command, vocab.commands)
        if command in vocab.arguments:
            return _match(rest.split(" ")[-1], vocab.arguments[command])
        text = rest  # .explain / .cost take SQL
    values = _values(text, vocab)
    if values is not None:
        return values
    word = _WORD.search(text)
    return _sql(text, word.group(0) if word else "", vocab)


def prompt_toolkit_completer(vocab: Vocabulary) -> Any:
    """A prompt_toolkit ``Completer`` over ``suggest`` (imports prompt_toolkit lazily)."""
    from prompt_toolkit.completion import Completer, Completion

    class VeilCompleter(Completer):  # type: ignore[misc]
        """Completes the word before the cursor from ``vocab``."""

        def get_completions(self, document: Any, complete_event: Any) -> Iterable[Any]:
            """Yield one ``Completion`` per candidate, replacing the word being typed."""
            before = document.text_before_cursor
            stripped = before.lstrip()
            partial = value_word(before)
            if stripped[:1] in (".", "\\") and " " not in stripped:
                word = stripped
            elif partial is not None and _values(before, vocab) is not None:
                word = partial
            else:
                found = _WORD.search(before)
                word = found.group(0) if found else ""
            for cand in suggest(before, vocab):
                yield Completion(cand, start_position=-len(word))

    return VeilCompleter()
