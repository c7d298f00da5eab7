"""Generate the sample federation: ``python -m sample_data.generate --people N --out DIR``.

Writes ``DIR/federation.toml``, ``DIR/policies/<party>.toml`` and each party's data in
its own connector format (see ``storage``). Same ``--people`` and ``--seed`` give the
same table contents on every run. The committed demo in ``sample_data/demo`` is
``--people 20000 --seed 7``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sample_data.federation_files import federation_toml, policy_toml
from sample_data.population import simulate
from sample_data.schema import PARTIES, PARTY_TABLES
from sample_data.storage import data_paths, to_arrow, write_party

DEFAULT_PEOPLE = 20_000
DEFAULT_SEED = 7


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
    columns = simulate(people, seed)
    rows: dict[str, int] = {}
    for party in PARTIES:
        tables = []
        for spec in PARTY_TABLES[party]:
            table = to_arrow(spec, columns[f"{party}.{spec.name}"])
            rows[f"{party}.{spec.name}"] = table.num_rows
            tables.append((spec, table))
        write_party(out, party, tables)
    (out / "policies").mkdir(parents=True, exist_ok=True)
    for party in PARTIES:
        (out / "policies" / f"{party}.toml").write_text(policy_toml(party), encoding="utf-8")
    # The federation file last: a folder with one is complete.
    (out / "federation.toml").write_text(federation_toml(), encoding="utf-8")
    return Generated(out / "federation.toml", rows, time.perf_counter() - start)


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
