"""Run a party's local step on its own engine and pivot the result to one row per unit.

The local SQL (see ``rewrite/bound_contributions.py``) returns one row per kept row of
the party's locally joined tables. Here the rows of each unit are laid side by side in
``slots`` (at most the product of ``max_rows_per_unit`` of the party's tables), padded
with absent slots whose columns are all zero, so that every party has exactly one row
per unit and a cross-party join matches units one to one.

Memory: the engine's result arrives as Arrow (columnar, compact); ``pivot`` sorts the unit
column once and fills each column in chunks of rows, so beyond the result and the pivoted
arrays it holds about three words per row. One local query runs at a time per process
(``ENGINE_LOCK``): with every party embedded in one process, their engines' peaks do not
add up (a party in its own process waits only for its own concurrent queries), and what an
in-process engine keeps cached after the query is handed back (``release_engine_memory``).
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from veilql.connectors.base import Connector, column_to_numpy, engine_failure
from veilql.engine.dp.ring import MAX_UNITS
from veilql.engine.plan.nodes import SEED_PLACEHOLDER, LocalStep, Plan, plain_value
from veilql.errors import ProtocolError

ENGINE_LOCK = threading.Lock()  # one local query at a time in this process (see above)
PIVOT_CHUNK = 1 << 20  # rows gathered at once while filling a pivoted column
FAST_KEPT = 32  # steps whose run-time SQL (``with_engine_facts``) is kept, per process
_FAST: dict[tuple[str, tuple[tuple[str, frozenset[str]], ...], bool], str] = {}
_FAST_LOCK = threading.Lock()
# Set by ``fetch`` for the engine's one aggregate query of a light step (``light``):
# ``run_engine`` then skips the memory hand-back, and clears the mark.
_LIGHT: ContextVar[bool] = ContextVar("veilql_light_local_query", default=False)


@dataclass
class PartyRows:
    """A party's local result: unit keys, and per column an (units, slots) int64 array."""

    keys: np.ndarray
    cols: dict[str, np.ndarray]
    present: np.ndarray  # (units, slots) bool
    labels: dict[str, list[Any]] = field(default_factory=dict)  # private group keys
    # With a private group key: the party's cells that occur in its rows, as sorted dense
    # (mixed-radix) indices over its group columns; a cell's index is its place here
    # (``factors.sparsify``). None: every combination of the domains is a cell.
    cells: np.ndarray | None = None

    @property
    def units(self) -> int:
        """Number of units (rows after pivoting)."""
        return len(self.keys)


def fetch(step: LocalStep, connector: Connector, seed: str, *,
          reduce: Plan | None = None) -> Any:
    """Run ``step``'s SQL with the party's secret ``seed`` (hex) and pivot to slots.

    Private group keys (``label`` columns) keep their engine's type (an INTEGER key stays
    an integer, a date becomes ISO text): they are indexed here and stay with the party
    until the released ones are sent (``cells.cell_info``).

    With ``reduce`` (a single-party plan of this step) the engine itself reduces the rows
    to the plan's aggregates instead, and the result is ``(aggregates, labels)`` as
    ``factors.reduce_in_engine`` returns it.
    """
    step = with_engine_facts(step, connector)
    if reduce is not None:
        from veilql.engine.operators.factors import reduce_in_engine

        token = _LIGHT.set(light(step, reduce))
        try:
            return reduce_in_engine(reduce, step, connector, seed)
        finally:
            _LIGHT.reset(token)
    label_names = {c.name for c in step.columns if c.role == "label"}
    sql = bounded_sql(step, seed)
    if connector.dialect == "duckdb":
        # Rows come sorted by unit, which ``pivot`` then need not sort: DuckDB's parallel
        # sort took 0.35 s of 8.4 million loans at 10^7 people where numpy's took 0.7-1.3 s.
        sql = f'SELECT * FROM ({sql}) AS "__s" ORDER BY "__unit"'
    with ENGINE_LOCK:
        try:  # the engine's cached memory is handed back also when the query fails
            table = connector.run(sql)
            try:
                data: dict[str, Any] = {
                    name: (col.to_pylist() if name in label_names else
                           column_to_numpy(col))
                    for name, col in zip(table.column_names, table.columns, strict=True)}
            except Exception as exc:  # noqa: BLE001 - a conversion failure can quote a value
                raise engine_failure(exc, connector.spec) from None
            del table
        finally:
            release_engine_memory(connector)
    labels = {}
    for col in step.columns:
        if col.role == "label":  # private group keys: index them; the labels stay here
            data[col.name], labels[col.name] = index_labels(data[col.name])
    rows = pivot(data, [c.name for c in step.columns], step.slots)
    if rows.units > MAX_UNITS:
        # The plan's range analysis (rewrite/check_ranges.py) assumed at most MAX_UNITS
        # people per party; enforce it rather than trust it.
        raise ProtocolError(f"{step.party} holds more than {MAX_UNITS} people in the tables "
                            "of this query, beyond the range the plan was checked for")
    rows.labels = labels
    return rows


def with_engine_facts(step: LocalStep, connector: Connector) -> LocalStep:
    """``step`` with its SQL for this party's engine: a table whose engine lets no unit hold
    more rows than the bound (``Connector.row_bounds``, read from its catalog: a PRIMARY KEY
    or UNIQUE unit, one row; a unit UNIQUE with a range-checked slot, k rows) is read without
    the scan for over-full units (``bound_contributions.engine_sql``); on DuckDB a table
    still bounded finds its over-full units once (a materialized WITH); the same rows, the
    plan unchanged.

    Whether the scan runs depends on the schema only, never on the rows, so the time it
    saves tells the analyst nothing about a person (docs/SECURITY.md, "Timing"). The
    rewritten SQL is kept per step text and constraints (the last ``FAST_KEPT``).
    """
    tables = list(dict.fromkeys(step.tables))
    facts = tuple((t, tuple(sorted(connector.row_bounds(t).items()))) for t in tables)
    duckdb = connector.dialect == "duckdb"
    if not duckdb and not any(cols for _, cols in facts):
        return step
    # The kept over-full units are the connector's own: its instance is part of the key.
    key = (step.sql, facts, duckdb, connector.instance if duckdb else 0)
    with _FAST_LOCK:
        sql = _FAST.get(key)
    if sql is None:
        # Imported here: the rewrite package imports the operators (a cycle at load time).
        from veilql.engine.rewrite.bound_contributions import engine_sql

        bounds = {t.lower(): dict(b) for t, b in facts}
        least = _least_bounds(step)

        def fits(table: str, unit: str) -> bool:
            # One row per unit: kept whatever the bound m >= 1 (engine_sql checks m). More:
            # only when no source of the table may be bounded below it (``_least_bounds``).
            k = bounds.get(table.lower(), {}).get(unit.lower())
            return k is not None and (k == 1 or k <= least.get(table.lower(), 0))

        sql = engine_sql(step.sql, fits, materialize=duckdb,
                         overfull=connector.overfull_table if duckdb else None)
        with _FAST_LOCK:
            if len(_FAST) >= FAST_KEPT:
                _FAST.pop(next(iter(_FAST)))  # the oldest
            _FAST[key] = sql
    return replace(step, sql=sql)


def _least_bounds(step: LocalStep) -> dict[str, int]:
    """Per table of ``step`` (lower case): the smallest rows-per-unit bound any of its
    sources in the step's SQL is bounded with (an alias's ``max_rows``, a per-person
    source's own ``max_rows``), so that a table skipped at ``k`` rows per unit is skipped
    only where every bound is at least ``k``.

    >>> step = LocalStep("p", ("a", "b"), ("t", "t"), ("id", "id"), (3, 1), ())
    >>> _least_bounds(step)
    {'t': 1}
    """
    least: dict[str, int] = {}
    bodies = step.per_unit or (None,) * len(step.tables)
    for table, m, body in zip(step.tables, step.max_rows, bodies, strict=True):
        for bound in (m, body.max_rows if body is not None else m):
            least[table.lower()] = min(least.get(table.lower(), bound), bound)
    return least


def bounded_sql(step: LocalStep, seed: str) -> str:
    """The step's local SQL with the party's secret ``seed`` (hex) filled in."""
    if not all(ch in "0123456789abcdef" for ch in seed):
        raise ProtocolError("a party's bounding seed must be hexadecimal")
    return step.sql.replace(SEED_PLACEHOLDER, seed)


def run_engine(connector: Connector, sql: str) -> list[dict[str, Any]]:
    """A small result of ``sql`` on the party's engine, as rows (one local query at a time,
    engine memory handed back afterwards, as in ``fetch``). The aggregate of a ``light``
    step has integer columns only (cell indices, sums, row counts) and is read as such
    (``Connector.run_rows``: an int where Arrow may give a Decimal, read with ``int()``)."""
    with ENGINE_LOCK:
        try:
            if _LIGHT.get():
                rows = connector.run_rows(sql)
            else:
                table = connector.run(sql)
                try:
                    rows = table.to_pylist()
                except Exception as exc:  # noqa: BLE001 - a conversion can quote a value
                    raise engine_failure(exc, connector.spec) from None
                del table
        finally:
            if _LIGHT.get():
                _LIGHT.set(False)  # only the aggregate query itself: a recount releases
            else:
                release_engine_memory(connector)
    return rows


def light(step: LocalStep, plan: Plan) -> bool:
    """True when the engine reduces ``step`` (already ``with_engine_facts``) to ``plan``'s
    aggregates with a streaming aggregate over one table read as it is: no scan for
    over-full units (a source whose over-full units the engine kept reads that small table:
    ``Connector.overfull_table``), join, semi-join, per-person source, private group key,
    COUNT (DISTINCT) or histogram (a quantile's or a large COUNT(DISTINCT x)'s buckets). Such a
    query leaves DuckDB nothing to hand back (at 10^6 rows: the same resident memory after
    30 queries with and without ``release_engine_memory``), so the 20-30 ms that costs is
    skipped. Decided from the plan and the schema only, never the rows.
    """
    return (len(step.aliases) == 1 and not step.dimensions and not any(step.semi)
            and not any(step.per_unit) and not any(step.outer)
            and all(c.role != "label" for c in step.columns)
            and all(a.kind != "count_distinct" and not a.family and not a.buckets
                    for a in plan.aggregates)
            and "HAVING COUNT(*) >" not in step.sql.upper())


def release_engine_memory(connector: Connector) -> None:
    """Ask an in-process engine to give back what its last query left cached.

    DuckDB keeps the memory a query used (about 2.7 GB after the sample's bounding query
    over 8.4 million loans, against 60 MB it reports in use) until some DuckDB instance of
    the process is created; opening and closing an empty in-memory one (about 20 ms) hands
    it back to the system. Other engines: nothing to do.
    """
    if connector.dialect != "duckdb":
        return
    import duckdb

    duckdb.connect().close()


def labels_only(rows: PartyRows) -> PartyRows:
    """``rows`` without its arrays: only the private group labels (what the release needs).

    >>> labels_only(PartyRows(np.arange(3), {}, np.ones((3, 1), bool), {"g": ["a"]})).units
    0
    """
    slots = rows.present.shape[1] if rows.present.ndim == 2 else 1
    return PartyRows(rows.keys[:0], {}, np.zeros((0, slots), dtype=bool), rows.labels,
                     rows.cells)


Label = str | int | float | bool | None


def index_labels(values: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, list[Label]]:
    """Each value's index in the sorted list of distinct values (NULL last), and the list.

    Values keep their type (as ``functions.plain_value`` makes them JSON-ready: dates as
    ISO text, decimals as numbers), so the list sorts numerically for a numeric key. The
    order is a function of the values alone.

    >>> index_labels(np.array(["b", None, "a", "b"], dtype=object))
    (array([1, 2, 0, 1]), ['a', 'b', None])
    >>> index_labels([1000, 200, None])
    (array([1, 0, 2]), [200, 1000, None])
    """
    plain = [plain_value(v) for v in values]
    distinct = sorted({v for v in plain if v is not None}, key=_order)
    labels: list[Label] = list(distinct)
    if any(v is None for v in plain):
        labels.append(None)
    where = {(type(v), v): i for i, v in enumerate(labels)}
    return np.array([where[(type(v), v)] for v in plain], dtype=np.int64), labels


def _order(v: Label) -> tuple[int, Any]:
    """Numbers (and booleans) before text, each in its natural order."""
    if isinstance(v, bool | int | float):
        return (0, v)
    return (1, str(v))


def pivot(data: dict[str, np.ndarray], names: list[str], slots: int,
          chunk: int = PIVOT_CHUNK) -> PartyRows:
    """Lay each unit's rows side by side (``__unit`` names the unit column).

    Units come out in sorted order; a unit's rows fill its slots in an order the result
    does not depend on (every use of slots is symmetric in them). Columns are filled
    ``chunk`` rows at a time.

    >>> rows = pivot({"__unit": np.array([7, 3, 7]), "w": np.array([1, 0, 1])}, ["w"], 2)
    >>> rows.keys.tolist(), rows.cols["w"].tolist(), rows.present.tolist()
    ([3, 7], [[0, 0], [1, 1]], [[True, False], [True, True]])
    """
    units = data["__unit"]
    if units.dtype == object:
        units = units.astype(str)
    order, ordered = _sort_units(units)
    fresh = np.ones(len(ordered), dtype=bool)
    if len(ordered):
        np.not_equal(ordered[1:], ordered[:-1], out=fresh[1:])
    starts = np.flatnonzero(fresh)
    keys = ordered[starts]
    del ordered
    place = np.cumsum(fresh, dtype=np.int64)  # 1 + unit index of each sorted row
    del fresh
    place -= 1
    slot = np.arange(len(units), dtype=np.int64)
    slot -= starts[place]
    del starts
    if len(slot) and int(slot.max()) >= slots:
        raise ProtocolError(
            f"the local result has {int(slot.max()) + 1} rows for one unit, more than the "
            f"{slots} the plan allows", "this is a bug in contribution bounding; report it",
        )
    place *= slots
    place += slot  # each sorted row's place in a flat (units x slots) array
    del slot
    n = len(keys)
    present = np.zeros((n, slots), dtype=bool)
    present.reshape(-1)[place] = True
    cols = {}
    step = max(1, chunk)
    for name in names:
        col = np.zeros((n, slots), dtype=np.int64)
        flat = col.reshape(-1)
        values = np.asarray(data[name])
        if values.dtype == object:  # NULLs from the engine: count them as 0
            values = np.array([0 if v is None else v for v in values])
        if order is None:  # rows already in unit order: no gather
            flat[place] = values
        else:
            for lo in range(0, len(order), step):
                flat[place[lo:lo + step]] = values[order[lo:lo + step]]
        cols[name] = col
    return PartyRows(keys, cols, present)


def _sort_units(units: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """The order that sorts ``units`` and the sorted units.

    Units already in order (as ``fetch`` asks a DuckDB engine for them) are checked in one
    pass and kept: the order is then None (no gather needed). Integer keys whose range and
    row count fit in 64 bits together are sorted as one plain-integer sort of ``(unit -
    min) << b | row`` (several times faster than an ``argsort``, and stable); other keys by
    ``argsort``.

    >>> [x.tolist() for x in _sort_units(np.array([7, -2, 7, 3]))]
    [[1, 3, 0, 2], [-2, 3, 7, 7]]
    >>> _sort_units(np.array([-2, 3, 3, 7]))
    (None, array([-2,  3,  3,  7]))
    """
    n = len(units)
    if n < 2 or bool(np.all(units[1:] >= units[:-1])):
        return None, units
    if n and units.dtype.kind in "iu":
        lo, hi = int(units.min()), int(units.max())
        bits = max(1, (n - 1).bit_length())
        if (hi - lo).bit_length() + bits <= 64:
            packed = (units.astype(np.int64, copy=False) - np.int64(lo)).view(np.uint64) \
                if units.dtype.kind == "i" else units.astype(np.uint64) - np.uint64(lo)
            packed = packed << np.uint64(bits)
            packed |= np.arange(n, dtype=np.uint64)
            packed.sort()
            order = (packed & np.uint64((1 << bits) - 1)).view(np.int64)
            packed >>= np.uint64(bits)
            ordered = packed.view(np.int64) + np.int64(lo) if units.dtype.kind == "i" \
                else packed + np.uint64(lo)
            return order, ordered.astype(units.dtype, copy=False)
    order = np.argsort(units, kind="stable" if units.dtype.kind in "US" else None)
    return order, units[order]


def secret_file(path: Path) -> str:
    """The hex secret in ``path`` (a party's bounding seed), created (0600, atomically) on
    first use.

    The secret is written to a private temporary file and linked into place, so a
    concurrent process either creates it or reads the complete one, never a partial file.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(16))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            tmp.unlink()
    return path.read_text().strip()
