"""Run every benchmark and write ``bench/results/<YYYY-MM-DD>.json`` and ``.md``.

    python -m bench.run [--quick] [--no-peers] [--people 100000,1000000] [--out DIR]

Sections (each figure a median over several runs, peers measured in the same run):

- ``e2e``: the sample federation at each N, five queries, first and repeated run beside
  plain DuckDB on the union (``bench.e2e``; each N in its own process so its peak memory
  is its own);
- ``mpc``: the secure runtime (``bench.mpc``) beside MPyC, 3 parties, numpy secure arrays
  (``bench.peers_mpyc``);
- ``join``: VeilQL's secure join beside openmined-psi on the same key sets
  (``bench.peers_psi``);
- ``accuracy``: RMSE at equal total epsilon beside smartnoise-sql (``bench.accuracy``);
- ``nodes``: the two join queries over three ``veil serve`` processes on loopback TLS
  beside the embedded mode, bytes written and peak memory per node (``bench.nodes``, in
  its own process; 1,000,000 people, 100,000 with ``--quick``).

A peer that is not installed is skipped (its figures are null). The load average before
and after each section is recorded: on a shared machine, compare ratios, not times.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import accuracy, peers_mpyc, peers_psi
from bench.e2e import CACHE, ROOT

RESULTS = ROOT / "bench" / "results"
SECTIONS = ("e2e", "mpc", "join", "accuracy", "nodes")


def settings(quick: bool) -> dict[str, Any]:
    """Sizes and repetitions of each section: a few minutes with ``quick``, else ~30."""
    if quick:
        return {"people": [100_000], "e2e_reps": 2, "mpyc_n": 10_000, "mpyc_reps": 1,
                "psi_n": 20_000, "psi_reps": 2, "acc_people": 100_000, "acc_runs": 100,
                "nodes_people": 100_000, "nodes_reps": 2}
    return {"people": [100_000, 1_000_000], "e2e_reps": 5, "mpyc_n": 100_000, "mpyc_reps": 3,
            "psi_n": 100_000, "psi_reps": 3, "acc_people": 100_000, "acc_runs": 300,
            "join_tls_big": 1_000_000, "nodes_people": 1_000_000, "nodes_reps": 3}


def machine() -> dict[str, Any]:
    """Platform and versions of everything measured."""
    from importlib.metadata import PackageNotFoundError, version

    from bench.mpc import machine as mpc_machine

    out = mpc_machine()
    for dist in ("veilql", "duckdb", "opendp", "sqlglot", "mpyc", "gmpy2", "openmined-psi"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    pages = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    out["memory_gib"] = round(pages / 2**30, 1)
    return out


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def _e2e(people: int, reps: int, cache: Path) -> dict[str, Any]:
    """``bench.e2e`` for one N in a fresh process (its own peak memory)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "bench.e2e", "--people", str(people),
                           "--reps", str(reps), "--cache", str(cache), "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=7200)
    if proc.returncode != 0:
        raise RuntimeError(f"bench.e2e --people {people} failed: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def _nodes(people: int, reps: int, cache: Path) -> dict[str, Any]:
    """``bench.nodes`` in a fresh process (its own peak memory; nothing left running)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "bench.nodes", "--people", str(people),
                           "--reps", str(reps), "--cache", str(cache), "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=7200)
    if proc.returncode != 0:
        raise RuntimeError(f"bench.nodes --people {people} failed: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def section_mpc(cfg: dict[str, Any], quick: bool, peers: bool) -> dict[str, Any]:
    """The secure runtime's figures, with MPyC's beside them when installed."""
    from bench import mpc

    out = mpc.run(quick=quick)
    n = cfg["mpyc_n"]
    out["mpyc"] = (peers_mpyc.run_mpyc(n, cfg["mpyc_reps"])
                   if peers and peers_mpyc.available() else None)
    out["mpyc_lt_per_s"] = round(out["mpyc"]["lt"]["per_s"]) if out["mpyc"] else None
    out["lt_vs_mpyc"] = compare_mpyc(out)
    return out


def compare_mpyc(mpc: dict[str, Any]) -> dict[str, Any] | None:
    """VeilQL's LT and multiplication rates over MPyC's at MPyC's n (None without MPyC)."""
    m = mpc.get("mpyc")
    if not m:
        return None
    n = m["n"]
    key = f"1e{len(str(n)) - 1}"
    tls = (mpc.get("tls") or {}).get("lt_per_s") or {}
    return {"n": n, "veilql_lt_per_s": mpc["lt_per_s"].get(key),
            "ratio": mpc["lt_per_s"].get(key, 0) / m["lt"]["per_s"],
            # like for like: VeilQL's parties as three processes over mutual TLS
            "veilql_tls_lt_per_s": tls.get(key),
            "ratio_tls": (tls[key] / m["lt"]["per_s"]) if key in tls else None,
            "mul_ratio": mpc["mul_per_s"] / m["mul"]["per_s"]}


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of the issue with the measured value and whether it is met."""
    rows: list[dict[str, Any]] = []

    def add(name: str, value: float | None, target: float, higher: bool, unit: str) -> None:
        met = None if value is None else (value >= target if higher else value <= target)
        rows.append({"target": name, "value": value, "goal": target,
                     "goal_is": "at least" if higher else "at most", "unit": unit, "met": met})

    mpc = res.get("mpc") or {}
    lt = (mpc.get("lt_per_s") or {}).get("1e6")
    add("secure comparisons per second (10^6 elements)", lt, 1e6, True, "/s")
    vs = mpc.get("lt_vs_mpyc") or {}
    add("secure comparisons vs MPyC (same n; VeilQL in-process threads)", vs.get("ratio"), 300,
        True, "x")
    add("secure comparisons vs MPyC (same n; both 3 processes on loopback, VeilQL over TLS)",
        vs.get("ratio_tls"), 300, True, "x")
    join = res.get("join") or {}
    add("join throughput vs openmined-psi (VeilQL in-process threads)",
        join.get("ratio_veilql_over_psi"), 3, True, "x")
    add("join throughput vs openmined-psi (VeilQL 3 processes over TLS)",
        join.get("ratio_veilql_tls_over_psi"), 3, True, "x")
    big = (res.get("e2e") or {}).get("1000000")
    q = (big or {}).get("queries", {}).get("join_filter_sum", {})
    add("join + predicate + SUM, 10^6 people, first run", q.get("first_s"), 60, False, "s")
    add("join + predicate + SUM, 10^6 people, repeated run", q.get("repeated_s"), 5, False, "s")
    acc = res.get("accuracy") or {}
    add("RMSE COUNT vs smartnoise-sql, equal spend", acc.get("ratio_count"), 1.25, False, "x")
    add("RMSE SUM vs smartnoise-sql, equal spend", acc.get("ratio_sum"), 1.25, False, "x")
    return rows


def run(quick: bool = False, peers: bool = True, people: list[int] | None = None,
        sections: tuple[str, ...] = SECTIONS, out_dir: Path = RESULTS,
        overrides: dict[str, Any] | None = None, cache: Path = CACHE) -> tuple[Path, Path]:
    """Run the chosen sections and write the JSON and markdown results; their paths."""
    cfg = settings(quick)
    if people:
        cfg["people"] = people
    cfg.update(overrides or {})
    res: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                           "quick": quick, "settings": cfg, "machine": machine(),
                           "load": {}, "seconds": {}}

    def timed(name: str, fn: Callable[[], Any]) -> None:
        before = loadavg()
        t0 = time.perf_counter()
        res[name] = fn()
        res["seconds"][name] = round(time.perf_counter() - t0, 1)
        res["load"][name] = {"before": before, "after": loadavg()}

    if "e2e" in sections:
        timed("e2e", lambda: {str(n): _e2e(n, cfg["e2e_reps"], cache) for n in cfg["people"]})
    if "mpc" in sections:
        timed("mpc", lambda: section_mpc(cfg, quick, peers))
    if "join" in sections:
        def join() -> dict[str, Any]:
            out = peers_psi.run(cfg["psi_n"], cfg["psi_reps"], peers=peers)
            big = cfg.get("join_tls_big")
            # one larger join as three processes: per-party peak memory at scale
            out["veilql_tls_big"] = peers_psi.veilql_join_tls(big) if big else None
            return out

        timed("join", join)
    if "accuracy" in sections:
        timed("accuracy", lambda: accuracy.run(cfg["acc_people"], cfg["acc_runs"],
                                                     peers=peers, cache=cache))
    if "nodes" in sections:
        timed("nodes", lambda: _nodes(cfg["nodes_people"], cfg["nodes_reps"], cache))
    res["resources"] = resources(res)
    res["targets"] = targets(res)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = dt.date.today().isoformat() + ("-quick" if quick else "")
    jpath, mpath = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    jpath.write_text(json.dumps(res, indent=2) + "\n")
    mpath.write_text(markdown(res))
    return jpath, mpath


def resources(res: dict[str, Any]) -> dict[str, Any]:
    """Peak memory, bytes per party and rounds, gathered from the sections."""
    out: dict[str, Any] = {}
    for n, e in (res.get("e2e") or {}).items():
        out[f"e2e_{n}"] = {
            "peak_rss_mb_process": round(e["peak_rss_mb"], 1),
            "queries": {k: {"bytes_sent_first": q["bytes_sent_first"],
                            "rounds_first": q["rounds_first"],
                            "bytes_sent_repeated": q["bytes_sent_repeated"],
                            "rounds_repeated": q["rounds_repeated"]}
                        for k, q in e["queries"].items()},
        }
    join = res.get("join")
    if join:
        out["join"] = {"veilql_bytes_sent_per_party": join["veilql"]["bytes_sent_per_party"],
                       "veilql_rounds": join["veilql"]["rounds"]}
        for key in ("veilql_tls", "veilql_tls_big"):
            t = join.get(key)
            if t:
                out["join"][f"{key}_peak_rss_mb_per_party"] = t["peak_rss_mb_per_party"]
    nodes = res.get("nodes")
    if nodes:
        out["nodes"] = {k: {f"{m}_{r}": q["network"][f"{m}_{r}"]
                            for m in ("bytes_written", "peak_rss_mb")
                            for r in ("first", "repeated")}
                        for k, q in nodes["queries"].items()}
    return out


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        return f"{x:.{digits}g}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def markdown(res: dict[str, Any]) -> str:
    """The results as the markdown tables the README links to."""
    m = res["machine"]
    lines = [f"# Benchmark results {res['date']}{' (quick)' if res['quick'] else ''}", "",
             f"Machine: {m['platform']}, {m['cpus']} CPUs, {m.get('memory_gib')} GiB; Python "
             f"{m['python']}, numpy {m['numpy']}, DuckDB {m['duckdb']}, OpenDP {m['opendp']}, "
             f"cryptography {m['cryptography']}. Load average (1/5/15 min) per section: "
             + "; ".join(f"{k} {v['before']} -> {v['after']}" for k, v in res["load"].items())
             + ".", "", "## Targets", "", "| target | measured | goal | met |",
             "| --- | --- | --- | --- |"]
    for t in res["targets"]:
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']} | {_fmt(t['value'])} {t['unit']} | {t['goal_is']} "
                     f"{_fmt(float(t['goal']))} {t['unit']} | {met} |")
    for n, e in (res.get("e2e") or {}).items():
        lines += ["", f"## End to end, {int(n):,} people (rows: "
                  + ", ".join(f"{k} {v:,}" for k, v in e["rows"].items())
                  + f"; peak RSS {e['peak_rss_mb']:.0f} MiB)", "",
                  "| query | first run s | repeated s | DuckDB s | first / DuckDB | "
                  "repeated / DuckDB | MB sent (first, all parties) | rounds first / repeated |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for k, q in e["queries"].items():
            mb = sum(v for p, v in q["bytes_sent_first"].items() if p != "analyst") / 1e6
            lines.append(f"| {k} | {_fmt(q['first_s'])} | {_fmt(q['repeated_s'])} | "
                         f"{_fmt(q['duckdb_s'])} | {_fmt(q['ratio_first'])} | "
                         f"{_fmt(q['ratio_repeated'])} | {mb:.1f} | "
                         f"{q['rounds_first']} / {q['rounds_repeated']} |")
    mpc = res.get("mpc")
    if mpc:
        lines += ["", "## Secure runtime beside MPyC (3 parties)", "",
                  "| figure | VeilQL | MPyC | ratio |", "| --- | --- | --- | --- |"]
        mp = mpc.get("mpyc") or {}
        vs = mpc.get("lt_vs_mpyc") or {}
        lines.append(f"| LT per second (n = {_fmt(vs.get('n'))}) | "
                     f"{_fmt(vs.get('veilql_lt_per_s'))} | "
                     f"{_fmt((mp.get('lt') or {}).get('per_s'))} | {_fmt(vs.get('ratio'))} |")
        lines.append(f"| LT per second (n = {_fmt(vs.get('n'))}), VeilQL as 3 processes over "
                     f"mutual TLS | {_fmt(vs.get('veilql_tls_lt_per_s'))} | "
                     f"{_fmt((mp.get('lt') or {}).get('per_s'))} | {_fmt(vs.get('ratio_tls'))} |")
        lines.append(f"| LT per second (10^6) | {_fmt(mpc['lt_per_s'].get('1e6'))} | | |")
        lines.append(f"| multiplications per second | {_fmt(mpc['mul_per_s'])} | "
                     f"{_fmt((mp.get('mul') or {}).get('per_s'))} | "
                     f"{_fmt(vs.get('mul_ratio'))} |")
        per_party = (mp.get("lt") or {}).get("bytes_sent_per_party")
        mpyc_bytes = (sum(per_party) / vs["n"]) if per_party and vs.get("n") else None
        lines.append(f"| bytes per LT, all parties | {_fmt(mpc['bytes_per_lt'])} | "
                     f"{_fmt(mpyc_bytes)} | |")
        lines.append(f"| rounds per LT call | {mpc['rounds_per_lt']} | | |")
        if mp:
            lines.append(f"| versions | VeilQL in-process transport | MPyC {mp['mpyc']}, gmpy2 "
                         f"{mp['gmpy2']}, {mp['transport']} | |")
    join = res.get("join")
    if join:
        v, p = join["veilql"], join.get("openmined_psi") or {}
        lines += ["", f"## Join beside openmined-psi ({join['n_per_side']:,} x "
                  f"{join['n_per_side']:,} keys, {join['common']:,} common)", "",
                  "| system | seconds | keys per second | matches | bytes sent per party |",
                  "| --- | --- | --- | --- | --- |",
                  f"| VeilQL secure join (shares of aligned rows) | {_fmt(v['seconds'])} | "
                  f"{_fmt(v['keys_per_s'])} | {v['matches']:,} | "
                  f"{v['bytes_sent_per_party']} |"]
        t = join.get("veilql_tls")
        if t:
            lines.append(f"| VeilQL, 3 processes over mutual TLS | {_fmt(t['seconds'])} | "
                         f"{_fmt(t['keys_per_s'])} | {t['matches']:,} | "
                         f"{t['bytes_sent_per_party']} (peak RSS MiB "
                         f"{t['peak_rss_mb_per_party']}) |")
        if p:
            lines.append(f"| openmined-psi {p['version']} cardinality | {_fmt(p['seconds'])} | "
                         f"{_fmt(p['keys_per_s'])} | {p['matches']:,} | "
                         f"{p['bytes_sent_per_party']} |")
        lines.append(f"\nRatio (openmined-psi time / VeilQL time): "
                     f"{_fmt(join['ratio_veilql_over_psi'])} in-process, "
                     f"{_fmt(join.get('ratio_veilql_tls_over_psi'))} over TLS.")
        big = join.get("veilql_tls_big")
        if big:
            n = big["matches"] * 2
            lines.append(f"\nAt {n:,} x {n:,} keys over TLS: {_fmt(big['seconds'])} s, "
                         f"{big['rounds']} rounds, bytes sent per party "
                         f"{big['bytes_sent_per_party']}, peak RSS per party process (MiB) "
                         f"{big['peak_rss_mb_per_party']}.")
    acc = res.get("accuracy")
    if acc:
        v, s = acc["veilql"], acc.get("smartnoise_sql") or {}
        lines += ["", f"## Accuracy at equal spend ({acc['runs']} runs, {acc['people']:,} "
                  f"people, {acc['groups']} groups, total epsilon {acc['total_epsilon']:g}, "
                  "delta 0)", "", f"`{acc['sql']}`", "",
                  "| engine | RMSE COUNT | RMSE SUM | privacy per query | s per query |",
                  "| --- | --- | --- | --- | --- |",
                  f"| VeilQL ({v['mode']} mode) | {_fmt(v['rmse_count'])} | "
                  f"{_fmt(v['rmse_sum'])} | epsilon {v['privacy_per_query']['epsilon']:g} "
                  f"(COUNT {v['noise'][0]['epsilon']:g}, SUM {v['noise'][1]['epsilon']:g}), "
                  f"delta {v['privacy_per_query']['delta']:g} | "
                  f"{_fmt(v['seconds_per_query'])} |"]
        if s:
            lines.append(f"| smartnoise-sql {s['smartnoise_sql']} | {_fmt(s['rmse_count'])} | "
                         f"{_fmt(s['rmse_sum'])} | epsilon {s['epsilon_per_measurement']:g} per "
                         f"measurement, get_privacy_cost {s['privacy_cost']} | "
                         f"{_fmt(s['seconds_per_query'])} |")
        exp = v["expected_rmse"]
        lines.append("\nExpected from VeilQL's noise scales: "
                     + ", ".join(f"{k} {x:.3g}" for k, x in exp.items())
                     + f". Ratios VeilQL / smartnoise: COUNT {_fmt(acc['ratio_count'])}, "
                     f"SUM {_fmt(acc['ratio_sum'])}.")
    nodes = res.get("nodes")
    if nodes:
        lines += ["", "## Join queries over three `veil serve` nodes (loopback TLS) beside the "
                  f"embedded mode, {nodes['people']:,} people", "",
                  "| query | run | network s | embedded s | network / embedded | "
                  "bytes written per node (wchar) | bytes sent per party (embedded) | "
                  "peak RSS per node MiB |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for k, q in nodes["queries"].items():
            nw, em = q["network"], q["embedded"]
            for run_ in ("first", "repeated"):
                sent = {p: b for p, b in em[f"bytes_sent_{run_}"].items() if p != "analyst"}
                lines.append(f"| {k} | {run_} | {_fmt(nw[run_ + '_s'])} | "
                             f"{_fmt(em[run_ + '_s'])} | {_fmt(q['ratio_' + run_])} | "
                             f"{_mb(nw['bytes_written_' + run_])} | {_mb(sent)} | "
                             f"{_per_party(nw['peak_rss_mb_' + run_], 1)} |")
        lines.append(f"\nPeak RSS of the embedded process (all parties as threads, plus the "
                     f"network client): {nodes['peak_rss_mb_embedded_process']:.0f} MiB. "
                     "wchar counts every byte a node wrote (TLS records to peers and client, "
                     "its log line and ledger entries). A node's peak is reset to its "
                     "resident size before each run, so it includes what the node already "
                     "holds (the cached join, for the repeated run).")
    return "\n".join(lines) + "\n"


def _mb(per_party: dict[str, int]) -> str:
    """Bytes per party in MB (10^6), or kB when under a megabyte."""
    return ", ".join(f"{p} {b / 1e6:.1f} MB" if b >= 1e6 else f"{p} {b / 1e3:.1f} kB"
                     for p, b in per_party.items())


def _per_party(values: dict[str, float], scale: float) -> str:
    return ", ".join(f"{p} {v / scale:.0f}" for p, v in values.items())


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few minutes instead of ~30")
    ap.add_argument("--no-peers", action="store_true", help="skip MPyC, openmined-psi, smartnoise")
    ap.add_argument("--people", default="", help="comma-separated N for the end-to-end runs")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of {', '.join(SECTIONS)}")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    ap.add_argument("--render", type=Path, metavar="JSON",
                    help="only rewrite the markdown next to an existing results JSON")
    args = ap.parse_args(argv)
    if args.render:
        res = json.loads(args.render.read_text())
        if res.get("mpc"):
            res["mpc"]["lt_vs_mpyc"] = compare_mpyc(res["mpc"])
        res["targets"] = targets(res)
        args.render.write_text(json.dumps(res, indent=2) + "\n")
        args.render.with_suffix(".md").write_text(markdown(res))
        print(f"wrote {args.render.with_suffix('.md')}")
        return 0
    people = [int(x) for x in args.people.split(",") if x] or None
    sections = tuple(s for s in args.sections.split(",") if s)
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    jpath, mpath = run(args.quick, not args.no_peers, people, sections, args.out)
    print(f"wrote {jpath} and {mpath}")
    print(mpath.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
