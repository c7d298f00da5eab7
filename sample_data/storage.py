"""Write the sample tables through DuckDB, one connector kind per party, and hash them back.

- bank: one DuckDB database file (DuckDB's default storage format), ``data/bank.duckdb``;
- payments: a Parquet file per table in ``data/payments/``;
- insurer: a CSV file with a header per table in ``data/insurer/``.

Money arrives as int64 cents and is stored as ``DECIMAL(12,2)`` built straight from
those integers (no float round trip), so the stored values are exact and reproducible.
``table_digests`` reads every table back through DuckDB and hashes its sorted rows: file
bytes of a DuckDB database are not reproducible, its content is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from sample_data.schema import PARTY_TABLES, TableSpec

# Where each party's data lives, relative to the federation folder, and its connector.
CONNECTORS: dict[str, str] = {
    "bank": "duckdb:data/bank.duckdb",
    "payments": "parquet:data/payments",
    "insurer": "csv:data/insurer",
}


def data_paths(out: Path) -> dict[str, Path]:
    """Every data file the generator writes under ``out``, keyed ``"party.table"``."""
    paths: dict[str, Path] = {}
    for party, tables in PARTY_TABLES.items():
        kind, rel = CONNECTORS[party].split(":", 1)
        for t in tables:
            paths[f"{party}.{t.name}"] = (
                out / rel if kind == "duckdb" else out / rel / f"{t.name}.{kind}"
            )
    return paths


def _decimal(cents: np.ndarray, precision: int = 12, scale: int = 2) -> pa.Array:
    """A decimal128 Arrow array whose unscaled integers are ``cents`` (exact)."""
    words = np.empty((cents.size, 2), dtype="<i8")
    words[:, 0] = cents
    words[:, 1] = cents >> 63  # sign extension into the high 64 bits (little endian)
    buf = pa.py_buffer(words.tobytes())
    return pa.Array.from_buffers(pa.decimal128(precision, scale), cents.size, [None, buf])


def _string(values: np.ndarray) -> pa.Array:
    """A string column from an object array, via a dictionary (fast for few labels)."""
    labels, codes = np.unique(values, return_inverse=True)
    dictionary = pa.array(labels.tolist(), type=pa.string())
    return pa.DictionaryArray.from_arrays(codes.astype(np.int32), dictionary).cast(pa.string())


def to_arrow(spec: TableSpec, columns: dict[str, np.ndarray]) -> pa.Table:
    """The Arrow table of ``spec`` from numpy columns (money in cents, dates as days)."""
    arrays: list[pa.Array] = []
    for c in spec.columns:
        x = columns[c.name]
        if c.sql_type.startswith("DECIMAL"):
            arrays.append(_decimal(x))
        elif c.sql_type == "VARCHAR":
            arrays.append(_string(x))
        elif c.sql_type == "DATE":
            arrays.append(pa.array(x.astype("datetime64[D]"), type=pa.date32()))
        elif c.sql_type == "INTEGER":
            arrays.append(pa.array(x.astype(np.int32)))
        elif c.sql_type == "BIGINT":
            arrays.append(pa.array(x.astype(np.int64)))
        else:  # pragma: no cover - schema.py only uses the types above
            raise ValueError(f"no Arrow mapping for {c.sql_type} ({spec.name}.{c.name})")
    return pa.Table.from_arrays(arrays, names=list(spec.column_names))


def _create_sql(spec: TableSpec) -> str:
    cols = ", ".join(f"{c.name} {c.sql_type} NOT NULL" for c in spec.columns)
    return f"CREATE TABLE {spec.name} ({cols})"


def write_party(out: Path, party: str, tables: Iterable[tuple[TableSpec, pa.Table]]) -> None:
    """Write one party's tables under ``out`` in the format of its connector."""
    kind, rel = CONNECTORS[party].split(":", 1)
    target = out / rel
    if kind == "duckdb":
        target.parent.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(str(target))
        try:
            for spec, table in tables:
                con.register("src", table)
                con.execute(_create_sql(spec))
                con.execute(f"INSERT INTO {spec.name} SELECT * FROM src")
                con.unregister("src")
            con.execute("CHECKPOINT")
        finally:
            con.close()
        return
    target.mkdir(parents=True, exist_ok=True)
    options = "FORMAT parquet, COMPRESSION zstd" if kind == "parquet" else "FORMAT csv, HEADER"
    con = duckdb.connect()
    try:
        for spec, table in tables:
            con.register("src", table)
            path = str(target / f"{spec.name}.{kind}").replace("'", "''")
            con.execute(f"COPY (SELECT * FROM src) TO '{path}' ({options})")
            con.unregister("src")
    finally:
        con.close()


def _relation_sql(out: Path, party: str, table: str) -> tuple[str, str | None]:
    """The FROM clause that reads ``party.table`` and the database to attach, if any."""
    kind, rel = CONNECTORS[party].split(":", 1)
    path = str(out / rel).replace("'", "''")
    if kind == "duckdb":
        return f"src.{table}", path
    reader = "read_parquet" if kind == "parquet" else "read_csv"
    return f"{reader}('{path}/{table}.{kind}')", None


def table_digests(out: Path) -> dict[str, tuple[int, str]]:
    """Row count and SHA-256 of the sorted rows of every table under ``out``.

    Reads through DuckDB exactly as a connector would, so two folders with equal digests
    hold the same data whatever the bytes of their files.
    """
    digests: dict[str, tuple[int, str]] = {}
    con = duckdb.connect()
    try:
        for party, tables in PARTY_TABLES.items():
            for spec in tables:
                rel, db = _relation_sql(out, party, spec.name)
                if db is not None:
                    con.execute(f"ATTACH '{db}' AS src (READ_ONLY)")
                rows = con.execute(
                    f"SELECT CAST(t AS VARCHAR) AS r FROM {rel} AS t ORDER BY r"
                ).fetchall()
                if db is not None:
                    con.execute("DETACH src")
                h = hashlib.sha256()
                for (r,) in rows:
                    h.update(r.encode())
                    h.update(b"\n")
                digests[f"{party}.{spec.name}"] = (len(rows), h.hexdigest())
    finally:
        con.close()
    return digests
