"""Comparisons of two parties' group columns on shares, as codes: ``a.status = b.status``.

Neither party may see the other's value, and a text (or a boolean, or a timestamp) is not a
number the secure runtime can subtract. Each party maps its own value to an integer code in
its SQL, and the codes are compared as ``code_a - code_b <op> 0`` on shares, like any
comparison across parties:

- **dates** (DATE on both sides): days since 1970-01-01, so every comparison ``= <> < <= >
  >=`` keeps its meaning;
- **text, booleans, numbers, timestamps** whose columns both declare ``values = [...]``:
  the index of the value in the sorted union of the two columns' declared values
  (timestamps by their instant), ``=`` and ``<>`` only, but numbers by any comparison (the
  index in their sorted union keeps their order; group columns have no bounds, so they are
  not compared as a fixed-point difference). A value outside its column's declared values
  has no code (NULL) and matches nothing, as for GROUP BY, where it is not counted.

A code is NULL where its column is (or where the value is undeclared): each comparison is
ANDed with one 0/1 atom per party saying its code is not NULL, so the comparison is TRUE
exactly where SQL's is (a NULL side: neither TRUE nor FALSE; under NOT the comparison is
first negated, ``=`` to ``<>``, ``place_secure._negation_inside``). Used by an outer join's
ON (``outer_on``), WHERE and the aggregates' own conditions (``place_secure``). Leakage
and cost: those of any comparison across parties, one operand and one atom per party.

>>> code_values([("b", "a"), ("c", "a")], False)
['a', 'b', 'c']
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from sqlglot import exp

from veilql.engine.plan.nodes import LocalColumn
from veilql.engine.rewrite.context import Context
from veilql.engine.sql.compare_across import coded_pair
from veilql.engine.sql.typecheck import TypeChecker
from veilql.errors import UnsupportedError

#: ``place_secure._add``: (columns, prefix, role, sql, digits) -> the column's name
Add = Callable[[list[LocalColumn], str, str, str, int], str]

_EPOCH = "DATE '1970-01-01'"


def is_coded(node: exp.Expression, checker: TypeChecker) -> bool:
    """Whether ``node`` compares two bare columns (the caller knows they are of two
    parties) as codes: not both numbers, or both group columns with declared values."""
    return coded_pair(node, checker)


def coded(node: exp.Expression, ctx: Context, checker: TypeChecker,
          cols: dict[str, list[LocalColumn]], add: Add, where: str) -> exp.Expression:
    """``node`` (two columns of two parties, ``is_coded``) over local columns: each party's
    code as an operand added to ``cols`` by ``add``, the comparison ANDed with each code's
    not-NULL atom (see the module docstring). ``where`` names the clause in messages
    (``WHERE``, ``LEFT JOIN ... ON``). Refused, naming the types, when neither kind of code
    fits."""
    while isinstance(node, exp.Paren):
        node = node.this
    left, right = node.this, node.expression
    assert isinstance(left, exp.Column) and isinstance(right, exp.Column)
    types = [checker.column(c) for c in (left, right)]
    policies = [ctx.bound.table(c.table).policy.column(c.name) for c in (left, right)]
    text = node.sql(dialect="duckdb")
    names = [t.name.upper() for t in types]
    if names == ["DATE", "DATE"]:
        codes = [f"DATE_DIFF('day', {_EPOCH}, {c.sql(dialect='duckdb')})" for c in (left, right)]
    elif (types[0].kind == types[1].kind and types[0].kind in ("str", "bool", "num")
          or all(n.startswith("TIMESTAMP") for n in names)) and all(
            p is not None and p.values for p in policies):
        if not isinstance(node, exp.EQ | exp.NEQ) and types[0].kind != "num":
            raise UnsupportedError(
                f"{where} {text}: {types[0].name} columns of two parties are compared "
                "with = and <> only", "write an equality, or compare dates or numbers")
        stamps = names[0].startswith("TIMESTAMP")
        values = code_values([p.values for p in policies], stamps)  # type: ignore[union-attr]
        codes = []
        for c in (left, right):
            whens = " ".join(f"WHEN {c.sql(dialect='duckdb')} = {_literal(v, stamps)} THEN {i}"
                             for i, v in enumerate(values))
            codes.append(f"CASE {whens} END")  # NULL outside the declared values
    else:
        described = " and ".join(checker.describe(c, t) for c, t in zip((left, right), types,
                                                                         strict=True))
        raise UnsupportedError(
            f"{where} {text}: {described} cannot be compared across parties",
            "compare DATE with DATE, numbers with numbers, or text (booleans) whose columns "
            "both declare values = [...] in the parties' policies")
    owners = [ctx.party_of(c.table) for c in (left, right)]
    guards = [_atom(p, add(cols[p], "a", "atom",
                           f"CASE WHEN ({code}) IS NOT NULL THEN 1 ELSE 0 END", 0))
              for p, code in zip(owners, codes, strict=True)]
    first = add(cols[owners[0]], "o", "operand", codes[0], 0)
    second = add(cols[owners[1]], "o", "operand", f"-({codes[1]})", 0)
    total = exp.Add(this=exp.column(first, table=owners[0]),
                    expression=exp.column(second, table=owners[1]))
    out: exp.Expression = type(node)(this=total, expression=exp.Literal.number(0))
    for g in guards:
        out = exp.And(this=g, expression=out)
    return out


def code_values(domains: Sequence[Sequence[object]], stamps: bool) -> list[object]:
    """The sorted union of two columns' declared values: a value's code is its index."""
    distinct = {_key(v, stamps): v for values in domains for v in values}
    return [distinct[k] for k in sorted(distinct)]


def _atom(party: str, name: str) -> exp.Expression:
    return exp.EQ(this=exp.column(name, table=party), expression=exp.Literal.number(1))


def _key(v: object, stamp: bool = False) -> tuple[int, object]:
    """A declared value's place in the union of two domains (booleans, numbers, text;
    timestamps by their instant, so '2024-01-01T06:00' and '2024-01-01 06:00:00' are one)."""
    if stamp:
        return (3, dt.datetime.fromisoformat(str(v)).isoformat(sep=" "))
    if isinstance(v, bool):
        return (0, int(v))
    if isinstance(v, int | float):
        return (1, v)
    return (2, str(v))


def _literal(v: object, stamp: bool = False) -> str:
    """A SQL literal for a declared value (a typed TIMESTAMP literal for timestamps)."""
    if stamp:
        return f"TIMESTAMP '{dt.datetime.fromisoformat(str(v)).isoformat(sep=' ')}'"
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, int | float):
        return repr(v)
    return "'" + str(v).replace("'", "''") + "'"
