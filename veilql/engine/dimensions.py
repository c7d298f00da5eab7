"""Dimension tables sent to the party that joins them: what the owner sends, how it is read.

A dimension table holds no personal data (``dimension = true`` in its owner's policy: merchants,
branches). A query joins it on a fact table's declared foreign key; when the fact table is at
another party, the owner sends the columns the query reads (``DimensionJoin.columns``, at most
the declared ``max_rows`` rows, a public bound) to that party once the query is admitted, and the
fact party joins it in its own local SQL. The owner learns nothing of which rows are used (it
sends the whole table, whatever the query's other tables hold); the fact party learns the
table, which the owner's policy allows by declaring it a dimension (``docs/SECURITY.md``).

The rows travel as JSON with their types (DuckDB spelling, from the owner's catalog) and
become a ``VALUES`` table in the fact party's SQL, every value written as a typed literal of
an allow-listed type (so the owner cannot inject SQL into another party's engine).

>>> payload = encode(["id", "name"], ["BIGINT", "VARCHAR"], [[1, "a'b"], [2, None]])
>>> print(values_sql(payload, "__dim_m"))  # doctest: +NORMALIZE_WHITESPACE
(SELECT * FROM (VALUES (CAST(1 AS BIGINT), CAST('a''b' AS VARCHAR)),
  (CAST(2 AS BIGINT), CAST(NULL AS VARCHAR))) AS __v(id, name)) AS __dim_m
"""

from __future__ import annotations

import datetime
import decimal
import json
import math
import re
from collections.abc import Callable
from typing import Any

from veilql.connectors.base import Connector
from veilql.engine.plan.nodes import DIMENSION_TABLE, DimensionJoin, Plan
from veilql.engine.transport.base import Transport
from veilql.errors import ProtocolError

_INTEGER = re.compile(r"^(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT|UTINYINT|USMALLINT|UINTEGER|"
                      r"UBIGINT|INT|INT2|INT4|INT8)$")
_FLOAT = re.compile(r"^(FLOAT|DOUBLE|REAL)$")
_DECIMAL = re.compile(r"^DECIMAL\(\d{1,2},\s*\d{1,2}\)$")
_TEXT = re.compile(r"^(VARCHAR|TEXT|STRING)$")
_TEMPORAL = re.compile(r"^(DATE|TIMESTAMP|TIMESTAMP WITH TIME ZONE|TIMESTAMPTZ)$")
_BOOLEAN = re.compile(r"^BOOLEAN$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _kind(type_name: str) -> str:
    t = " ".join(type_name.upper().split())
    for kind, pattern in (("int", _INTEGER), ("float", _FLOAT), ("decimal", _DECIMAL),
                          ("text", _TEXT), ("temporal", _TEMPORAL), ("bool", _BOOLEAN)):
        if pattern.match(t):
            return kind
    raise ProtocolError(f"a dimension column of type {type_name!r} cannot be sent",
                        "dimension columns must be numbers, text, booleans, dates or timestamps")


def _plain(v: Any) -> Any:
    """A value as JSON holds it: decimals as exact text, dates and times as ISO text."""
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, datetime.date | datetime.datetime):
        return v.isoformat(sep=" ") if isinstance(v, datetime.datetime) else v.isoformat()
    if hasattr(v, "item") and not isinstance(v, str | bytes):
        return _plain(v.item())
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    return v


def encode(columns: list[str], types: list[str], rows: list[list[Any]]) -> bytes:
    """The message an owner sends: column names, their types, the rows."""
    return json.dumps({"columns": columns, "types": types,
                       "rows": [[_plain(v) for v in row] for row in rows]}).encode()


def read_dimension(connector: Connector, d: DimensionJoin) -> bytes:
    """At the owner: the columns of ``d`` for every row of its table (refused when the table
    holds more rows than its declared ``max_rows``)."""
    catalog = {c.name.lower(): c.type for c in connector.catalog().get(d.table, [])}
    types = []
    for c in d.columns:
        if c.lower() not in catalog:
            raise ProtocolError(f"dimension table {d.table} has no column {c}")
        types.append(catalog[c.lower()])
        _kind(types[-1])
    listed = ", ".join(d.columns)
    table = connector.run(f"SELECT {listed} FROM {d.table} LIMIT {d.max_rows + 1}")
    rows = [list(r) for r in zip(*(col.to_pylist() for col in table.columns), strict=True)]
    if len(rows) > d.max_rows:
        raise ProtocolError(f"dimension table {d.table} holds more than its declared "
                            f"max_rows = {d.max_rows} rows", "raise max_rows in its policy")
    return encode(list(d.columns), types, rows)


def _literal(v: Any, type_name: str, kind: str) -> str:
    t = " ".join(type_name.upper().split())
    if v is None:
        return f"CAST(NULL AS {t})"
    if kind == "int":
        if isinstance(v, bool) or not isinstance(v, int):
            raise ProtocolError("a dimension value is not an integer")
        return f"CAST({int(v)} AS {t})"
    if kind == "bool":
        if not isinstance(v, bool):
            raise ProtocolError("a dimension value is not a boolean")
        return "TRUE" if v else "FALSE"
    if kind == "float":
        if isinstance(v, str) and v in ("inf", "-inf", "nan"):
            return f"CAST('{v}' AS {t})"
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ProtocolError("a dimension value is not a number")
        return f"CAST({float(v)!r} AS {t})"
    if kind == "decimal":
        try:
            text = str(decimal.Decimal(str(v)))
        except decimal.InvalidOperation:
            raise ProtocolError("a dimension value is not a decimal") from None
        if not re.fullmatch(r"-?\d+(\.\d+)?(E[+-]?\d+)?", text):
            raise ProtocolError("a dimension value is not a decimal")
        return f"CAST('{text}' AS {t})"
    if not isinstance(v, str):
        raise ProtocolError("a dimension value is not text")
    if kind == "temporal" and not re.fullmatch(r"[0-9:+. T-]+", v):
        raise ProtocolError("a dimension value is not a date or timestamp")
    return "CAST('" + v.replace("'", "''") + f"' AS {t})"


def values_sql(payload: bytes, name: str) -> str:
    """The received rows as a table expression called ``name`` (a typed ``VALUES`` list)."""
    data = json.loads(payload)
    columns, types, rows = data["columns"], data["types"], data["rows"]
    if not all(isinstance(c, str) and _NAME.match(c) for c in columns) or len(types) != len(
            columns):
        raise ProtocolError("a dimension table arrived with malformed columns")
    kinds = [_kind(t) for t in types]
    listed = ", ".join(columns)
    if not rows:
        nulls = ", ".join(f"CAST(NULL AS {' '.join(t.upper().split())}) AS {c}"
                          for c, t in zip(columns, types, strict=True))
        return f"(SELECT {nulls} WHERE 1 = 0) AS {name}"
    items = []
    for row in rows:
        if len(row) != len(columns):
            raise ProtocolError("a dimension table arrived with malformed rows")
        items.append("(" + ", ".join(_literal(v, t, k) for v, t, k in
                                     zip(row, types, kinds, strict=True)) + ")")
    return f"(SELECT * FROM (VALUES {', '.join(items)}) AS __v({listed})) AS {name}"


def with_dimensions(plan: Plan, party: str, received: dict[str, bytes]) -> Plan:
    """``plan`` with ``party``'s local SQL reading the dimension tables it received (by
    alias) in place of ``__dim_<alias>``."""
    from dataclasses import replace

    tables = {f"{DIMENSION_TABLE}{alias}": values_sql(payload, f"{DIMENSION_TABLE}{alias}")
              for alias, payload in received.items()}
    # one pass over the planner's SQL, so that no received text is ever searched again
    pattern = re.compile(r"\b(" + "|".join(re.escape(n) for n in tables) + r")\b")
    steps = []
    for step in plan.steps:
        if step.party == party and tables:
            step = replace(step, sql=pattern.sub(lambda m: tables[m.group(1)], step.sql))
        steps.append(step)
    return replace(plan, steps=tuple(steps))


def exchange(transport: Transport, plan: Plan, me: str, connector: Callable[[], Connector],
             qid: str, step: Callable[[str], None]) -> Plan:
    """Send the dimension tables ``me`` holds to the parties that join them (read through
    ``connector()``, opened only when needed); return the plan with ``me``'s local SQL
    reading the ones it receives (``with_dimensions``)."""
    received = {}
    for owner, to, d in plan.shipments:
        if owner == me:
            step(f"sending its dimension table {d.table} to {to}")
            transport.send(to, f"{qid}/dimension/{d.alias}", read_dimension(connector(), d))
    for owner, to, d in plan.shipments:
        if to == me:
            received[d.alias] = transport.recv(owner, f"{qid}/dimension/{d.alias}")
    return with_dimensions(plan, me, received) if received else plan
