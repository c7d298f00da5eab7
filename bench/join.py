"""The revealing join beside the oblivious one (``join_reveal = "nothing"``), same data.

    python -m bench.join --people 1000000 [--reps 1] [--only join_filter_sum] [--network]
                         [--json]

The sample federation at N people comes from ``bench.e2e.federation`` (cached under
``--cache``); its oblivious twin ``<cache>/<N>-nothing/`` symlinks the same data and
rewrites the policies so that every table asks for ``join_reveal = "nothing"`` with
``max_units = N`` (the most people the generator can put in one table).

For each query of ``bench.e2e.QUERIES`` that joins parties, and each mode:

- **embedded** (every party a thread of one process): ``bench.e2e.bench_query`` in a child
  process of its own (one at a time), so each figure has its own peak resident memory
  (``VmHWM`` of that process: all three parties together);
- **network** (``--network``, only ``bench.nodes.NODE_QUERIES``): three ``veil serve``
  nodes on loopback TLS per repetition (``bench.nodes.network_query``), with each node's
  peak resident memory.

Prints JSON: per query and mode the first and repeated seconds, bytes, rounds, memory,
and the ratios nothing / reveal.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

from bench.e2e import CACHE, QUERIES, Meter, bench_query, federation, peak_rss_mb
from bench.e2e import union_connection as e2e_union
from veilql.engine.dp import LargeEpsilonWarning
from veilql.policies.loader import load_federation

JOIN_QUERIES = tuple(k for k in QUERIES if k != "single_party_group_by")
CHILD_TIMEOUT = 3600  # seconds one child (one query, one mode) may take


def oblivious_copy(fed_path: Path, people: int) -> Path:
    """The federation at ``fed_path`` with every table oblivious, bounded by ``people``."""
    src = fed_path.parent
    out = src.parent / f"{src.name}-nothing"
    fed = out / "federation.toml"
    if fed.exists():
        return fed
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=src.parent))
    (tmp / "data").symlink_to(src / "data", target_is_directory=True)
    (tmp / "policies").mkdir()
    for policy in sorted((src / "policies").glob("*.toml")):
        text = re.sub(r'^join_reveal = "[a-z]+"\n', "", policy.read_text(), flags=re.M)
        text = re.sub(r"^(privacy_unit = .*)$",
                      rf'\1\njoin_reveal = "nothing"\nmax_units = {people}', text, flags=re.M)
        (tmp / "policies" / policy.name).write_text(text)
    (tmp / "federation.toml").write_text(fed_path.read_text())
    try:
        tmp.rename(out)
    except OSError:  # made meanwhile by another run
        shutil.rmtree(tmp, ignore_errors=True)
    return fed


def embedded(fed_path: Path, name: str, reps: int) -> dict[str, Any]:
    """``bench_query`` for one query in this process (run it in a fresh child)."""
    with tempfile.TemporaryDirectory(prefix="veil-bench-join-") as ledgers, \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.environ["VEIL_LEDGER_DIR"] = ledgers
        con = e2e_union(load_federation(fed_path))
        with Meter().installed() as meter:
            out = bench_query(fed_path, con, QUERIES[name], reps, meter)
        con.close()
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return out


def _child(fed_path: Path, name: str, reps: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.join", "--child", str(fed_path), "--only", name,
         "--reps", str(reps)], capture_output=True, text=True, timeout=CHILD_TIMEOUT,
        cwd=Path(__file__).resolve().parent.parent)
    if done.returncode != 0:
        raise RuntimeError(f"bench.join child failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _network(fed_path: Path, name: str, reps: int) -> dict[str, Any]:
    from bench import nodes

    saved = {k: os.environ.pop(k) for k in nodes._ENV_DROP if k in os.environ}
    root = Path(tempfile.mkdtemp(prefix="veil-bench-join-nodes-"))
    try:
        net, _ = nodes.layout(fed_path, root)
        env = dict(os.environ)
        done = subprocess.run([*nodes.VEIL, "certs", "init", "-f", str(net)],
                              capture_output=True, text=True, timeout=120, env=env, cwd=root)
        if done.returncode != 0:
            raise RuntimeError(f"veil certs init failed: {done.stderr[-2000:]}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LargeEpsilonWarning)
            return nodes.network_query(net, env, QUERIES[name], reps)
    finally:
        os.environ.update(saved)
        shutil.rmtree(root, ignore_errors=True)


def run(people: int, reps: int = 1, names: tuple[str, ...] = JOIN_QUERIES,
        cache: Path = CACHE, network: bool = False) -> dict[str, Any]:
    """Both modes for every query in ``names``; a JSON-ready dict."""
    reveal = federation(people, cache)
    nothing = oblivious_copy(reveal, people)
    out: dict[str, Any] = {"people": people, "reps": reps, "queries": {}}
    for name in names:
        row: dict[str, Any] = {"sql": QUERIES[name]}
        for mode, fed in (("reveal", reveal), ("nothing", nothing)):
            row[mode] = {"embedded": _child(fed, name, reps)}
            if network and name in ("join_filter_sum", "cross_party_predicate"):
                row[mode]["network"] = _network(fed, name, reps)
        for where in ("embedded", "network"):
            if where in row["nothing"]:
                a, b = row["reveal"][where], row["nothing"][where]
                row[f"ratio_first_{where}"] = b["first_s"] / a["first_s"]
                row[f"ratio_repeated_{where}"] = b["repeated_s"] / a["repeated_s"]
        out["queries"][name] = row
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: print the figures as JSON."""
    ap = argparse.ArgumentParser(prog="python -m bench.join", description=__doc__.split("\n")[0])
    ap.add_argument("--people", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--only", default="", help="comma-separated query names")
    ap.add_argument("--network", action="store_true", help="also over three veil serve nodes")
    ap.add_argument("--cache", type=Path, default=CACHE, help="folder of generated federations")
    ap.add_argument("--json", action="store_true", help="one line of JSON")
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    names = tuple(n for n in JOIN_QUERIES if not args.only or n in args.only.split(","))
    if args.child is not None:
        print(json.dumps(embedded(args.child, names[0], args.reps)))
        return 0
    res = run(args.people, args.reps, names, args.cache, args.network)
    print(json.dumps(res, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
