"""Generate the sample federation: ``python -m sample_data.generate --people N --out DIR``.

Writes ``DIR/federation.toml``, ``DIR/policies/<party>.toml`` and each party's data in
its own connector format (see ``storage``). Same ``--people`` and ``--seed`` give the
same table contents on every run. The committed demo in ``sample_data/demo`` is
``--people 20000 --seed 7``.

Memory is bounded whatever ``--people``: the population is simulated ``PEOPLE_PER_CHUNK``
people at a time (chunk ``k`` with its own seed derived from ``--seed`` and ``k``; chunk 0
is exactly the single-shot simulation, so any population of at most one chunk, the demo
included, is what it always was) and each chunk is appended to DuckDB tables in a scratch
database on disk, whose DuckDB runs with ``SCRATCH_MEMORY``; each party's files are then
written from there (loan ids numbered in issue order across chunks, as in one chunk). The
chunk size is a constant, not a memory setting, since the data depends on it.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np

from sample_data.federation_files import federation_toml, policy_toml
from sample_data.population import simulate
from sample_data.schema import PARTIES, PARTY_TABLES, TableSpec
from sample_data.storage import CONNECTORS, _create_sql, data_paths, to_arrow, write_party

DEFAULT_PEOPLE = 20_000
DEFAULT_SEED = 7
PEOPLE_PER_CHUNK = 1_000_000  # people simulated at once (about 250 MB of numpy columns)
SCRATCH_MEMORY = "1GB"  # DuckDB's memory limit while it collects and writes the chunks
SCRATCH = ".generate-scratch.duckdb"  # under the output folder while generating


@dataclass(frozen=True)
class Generated:
    """What ``generate`` wrote: the federation file, rows per table, and seconds taken."""

    federation: Path
    rows: dict[str, int]
    seconds: float


def output_paths(out: Path) -> list[Path]:
    """Every file ``generate`` writes under ``out``."""
    files = [out / "federation.toml"]
    files += [out / "policies" / f"{p}.toml" for p in PARTIES]
    files += sorted(set(data_paths(out).values()))
    return files


def generate(out: Path, people: int = DEFAULT_PEOPLE, seed: int = DEFAULT_SEED,
             force: bool = False) -> Generated:
    """Write the sample federation for ``people`` persons under ``out``.

    Raises FileExistsError when one of the output files exists and ``force`` is false;
    with ``force`` only those files are replaced, nothing else in ``out`` is touched.
    """
    start = time.perf_counter()
    targets = output_paths(out)
    existing = [p for p in targets if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{existing[0]} already exists")
    for p in existing:
        p.unlink()
    for p in targets:  # a stale DuckDB write-ahead log would replay into the new file
        wal = p.with_name(p.name + ".wal")
        if p.suffix == ".duckdb" and wal.exists():
            wal.unlink()
    if people <= PEOPLE_PER_CHUNK:
        rows = _write_whole(out, people, seed)
    else:
        rows = _write_chunked(out, people, seed, PEOPLE_PER_CHUNK)
    (out / "policies").mkdir(parents=True, exist_ok=True)
    for party in PARTIES:
        (out / "policies" / f"{party}.toml").write_text(policy_toml(party), encoding="utf-8")
    # The federation file last: a folder with one is complete.
    (out / "federation.toml").write_text(federation_toml(), encoding="utf-8")
    return Generated(out / "federation.toml", rows, time.perf_counter() - start)


def _write_whole(out: Path, people: int, seed: int) -> dict[str, int]:
    """Simulate everyone at once and write each party's tables (one chunk)."""
    columns = simulate(people, seed)
    rows: dict[str, int] = {}
    for party in PARTIES:
        tables = []
        for spec in PARTY_TABLES[party]:
            table = to_arrow(spec, columns[f"{party}.{spec.name}"])
            rows[f"{party}.{spec.name}"] = table.num_rows
            tables.append((spec, table))
        write_party(out, party, tables)
    return rows


def chunk_seed(seed: int, index: int) -> int:
    """The seed of chunk ``index``: ``seed`` itself for chunk 0, else derived from both.

    >>> chunk_seed(7, 0), chunk_seed(7, 1) == chunk_seed(7, 1) != chunk_seed(8, 1)
    (7, True)
    """
    if index == 0:
        return seed
    return int(np.random.SeedSequence([seed, index]).generate_state(2, np.uint64)[0] >> 1)


def simulate_chunk(first_id: int, count: int, seed: int, index: int) -> dict[str, dict]:
    """The columns of chunk ``index``: ``count`` people with ids from ``first_id``."""
    columns = simulate(count, chunk_seed(seed, index))
    for table in columns.values():
        table["customer_id"] = table["customer_id"] + np.int64(first_id - 1)
    return columns


def _write_chunked(out: Path, people: int, seed: int, per_chunk: int) -> dict[str, int]:
    """Simulate ``per_chunk`` people at a time into a scratch DuckDB on disk, then write
    each party's files from it; the loans are numbered in issue order over all chunks
    (ties in chunk order, then in simulation order, as one chunk's stable sort does)."""
    scratch = out / SCRATCH
    for p in (scratch, scratch.with_name(scratch.name + ".wal")):
        p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(scratch))
    rows: dict[str, int] = {}
    try:
        con.execute(f"SET memory_limit = '{SCRATCH_MEMORY}'")
        con.execute("SET preserve_insertion_order = true")
        specs = {f"{p}.{t.name}": t for p in PARTIES for t in PARTY_TABLES[p]}
        for key, spec in specs.items():
            con.execute(_create_sql(_scratch_spec(spec, key)).replace(
                f"CREATE TABLE {spec.name}", f'CREATE TABLE "{key}"'))
        for index, first in enumerate(range(1, people + 1, per_chunk)):
            count = min(per_chunk, people + 1 - first)
            columns = simulate_chunk(first, count, seed, index)
            for key, spec in specs.items():
                table = to_arrow(spec, columns[key])
                if key == "bank.loans":
                    table = table.append_column("__chunk", _constant(index, table.num_rows))
                    table = table.append_column("__pos", _positions(table.num_rows))
                con.register("src", table)
                con.execute(f'INSERT INTO "{key}" SELECT * FROM src')
                con.unregister("src")
                rows[key] = rows.get(key, 0) + table.num_rows
            del columns
        for party in PARTIES:
            _export_party(con, out, party, specs)
    finally:
        con.close()
        for p in (scratch, scratch.with_name(scratch.name + ".wal")):
            p.unlink(missing_ok=True)
    return rows


def _scratch_spec(spec: TableSpec, key: str) -> TableSpec:
    """The scratch table of ``spec``: the loans carry their chunk and position."""
    if key != "bank.loans":
        return spec
    from sample_data.schema import ColumnSpec

    extra = (ColumnSpec("__chunk", "BIGINT", None), ColumnSpec("__pos", "BIGINT", None))
    return TableSpec(spec.party, spec.name, (*spec.columns, *extra), spec.max_rows_per_unit)


def _constant(value: int, n: int):  # noqa: ANN202 - a pyarrow array
    import pyarrow as pa

    return pa.array(np.full(n, value, dtype=np.int64))


def _positions(n: int):  # noqa: ANN202 - a pyarrow array
    import pyarrow as pa

    return pa.array(np.arange(n, dtype=np.int64))


def _export_party(con: duckdb.DuckDBPyConnection, out: Path, party: str,
                  specs: dict[str, TableSpec]) -> None:
    """Write ``party``'s tables from the scratch database in its connector's format."""
    kind, rel = CONNECTORS[party].split(":", 1)
    target = out / rel
    tables = [(key, spec) for key, spec in specs.items() if spec.party == party]
    if kind == "duckdb":
        target.parent.mkdir(parents=True, exist_ok=True)
        path = str(target).replace("'", "''")
        con.execute(f"ATTACH '{path}' AS party_db")
        try:
            for key, spec in tables:
                con.execute(_create_sql(spec).replace(f"CREATE TABLE {spec.name}",
                                                      f"CREATE TABLE party_db.{spec.name}"))
                names = ", ".join(c.name for c in spec.columns)
                if key == "bank.loans":
                    order = "issued_on, __chunk, __pos"
                    rest = ", ".join(c.name for c in spec.columns if c.name != "loan_id")
                    con.execute(f"INSERT INTO party_db.{spec.name} ({names}) SELECT "
                                f"ROW_NUMBER() OVER (ORDER BY {order}) AS loan_id, {rest} "
                                f'FROM "{key}" ORDER BY {order}')
                else:
                    con.execute(f'INSERT INTO party_db.{spec.name} SELECT {names} FROM "{key}"')
            con.execute("CHECKPOINT party_db")
        finally:
            con.execute("DETACH party_db")
        return
    target.mkdir(parents=True, exist_ok=True)
    options = "FORMAT parquet, COMPRESSION zstd" if kind == "parquet" else "FORMAT csv, HEADER"
    for key, spec in tables:
        path = str(target / f"{spec.name}.{kind}").replace("'", "''")
        names = ", ".join(c.name for c in spec.columns)
        con.execute(f"COPY (SELECT {names} FROM \"{key}\") TO '{path}' ({options})")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sample_data.generate",
        description="Write the sample federation (bank, payments, insurer) for N people.",
    )
    parser.add_argument("--people", type=_positive, default=DEFAULT_PEOPLE,
                        help=f"number of people in the population (default {DEFAULT_PEOPLE})")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder to write federation.toml, policies/ and data/ into")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"random seed; same seed and N give the same data "
                             f"(default {DEFAULT_SEED})")
    parser.add_argument("--force", action="store_true",
                        help="replace the generator's files if they already exist")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (2 for usage errors)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result = generate(args.out, args.people, args.seed, args.force)
    except FileExistsError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n"
                       f"hint: pass --force to replace it, or choose another --out\n")
    for name, n in result.rows.items():
        print(f"{name}: {n} rows")
    print(f"wrote {result.federation} for {args.people} people in {result.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
