"""SecretFlow SPU's secure comparisons and multiplications, beside VeilQL's (``bench.mpc``).

    python -m bench.peers_spu --setup                  # create bench/.venv-spu from PyPI
    python -m bench.peers_spu [--n 1000000] [--reps 3] [--json]
    python -m bench.peers_spu --report bench/results/2026-12-01-spu

SPU 0.9.5 (the only release the package index here offers; its cp311 x86_64 wheel
installs) pins numpy below 2 and JAX 0.4.34, which VeilQL's environment (numpy 2) cannot
hold, so it lives in its own virtual environment, ``bench/.venv-spu`` (git-ignored), and
``bench/spu_worker.py`` runs there as a subprocess with a timeout; this module parses the
JSON line it prints.
``--report`` measures VeilQL's LT and multiplication at the same n in this process (three
party threads, in-process transport: ``bench.mpc.measure``) right after SPU's run and
writes ``<stem>.json`` and ``<stem>.md`` with the ratios.

Nothing here imports SPU: importing this module never requires it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "bench" / ".venv-spu"
PYTHON = VENV / "bin" / "python"
WORKER = ROOT / "bench" / "spu_worker.py"
SPU_REQUIREMENT = "spu==0.9.5"  # `pip index versions spu` lists only 0.9.5 here


def setup(python: str | None = None) -> None:
    """Create ``bench/.venv-spu`` with ``python`` (default: python3.11 on the PATH, else
    this interpreter) and install SPU from PyPI into it."""
    base = python or shutil.which("python3.11") or sys.executable
    if not PYTHON.exists():
        subprocess.run([base, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
                   check=True)
    subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", SPU_REQUIREMENT],
                   check=True)


def missing_reason() -> str | None:
    """Why SPU cannot run here, or None when its venv imports it."""
    if not PYTHON.exists():
        return f"no SPU venv at {VENV.relative_to(ROOT)} (python -m bench.peers_spu --setup)"
    proc = subprocess.run([str(PYTHON), "-c", "import spu"], capture_output=True, text=True,
                          timeout=300, env=_env())
    if proc.returncode != 0:
        return "the SPU venv cannot import spu: " + proc.stderr.strip()[-300:]
    return None


def _env() -> dict[str, str]:
    # VeilQL's PYTHONPATH or venv would put numpy 2 in front of SPU's numpy 1.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["JAX_PLATFORMS"] = "cpu"  # no accelerator probing
    return env


def run_spu(n: int = 1_000_000, reps: int = 3, timeout: float = 1800.0,
            encodings: str = "int,fxp") -> dict[str, Any]:
    """Run the SPU worker once; the dict it printed (with ``wall_seconds``)."""
    cmd = [str(PYTHON), str(WORKER), "--n", str(n), "--reps", str(reps),
           "--encodings", encodings]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(),
                          cwd=str(ROOT / "bench"))
    wall = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith("SPU_RESULT "):
            res = json.loads(line.split(" ", 1)[1])
            res["wall_seconds"] = wall
            for label, (sent, actions) in traffic(proc.stdout).items():
                enc, op = label.split()
                if enc in res and len(sent) == 3:
                    res[enc][op].update(bytes_per_op=sum(sent) / n,
                                        send_actions_per_party=max(actions))
            return res
    raise RuntimeError(f"SPU run failed (exit {proc.returncode}): {proc.stderr[-2000:]}")


_LINK = re.compile(r"Link details: total send bytes (\d+), recv bytes \d+, send actions (\d+)")


def traffic(stdout: str) -> dict[str, tuple[list[int], list[int]]]:
    """Per ``SPU_PROFILE <encoding> <op>`` block of the worker's output, the bytes each
    party sent and its send actions, from SPU's profiler log lines."""
    out: dict[str, tuple[list[int], list[int]]] = {}
    label = None
    for line in stdout.splitlines():
        if line.startswith("SPU_PROFILE "):
            label = line.split(" ", 1)[1].strip()
            out[label] = ([], [])
        elif label and (m := _LINK.search(line)):
            out[label][0].append(int(m.group(1)))
            out[label][1].append(int(m.group(2)))
    return out


def summary(n: int, reps: int) -> dict[str, Any]:
    """SPU's figures for ``bench.mpc``: LT and mul per second on 64-bit integers (the
    like-for-like ones), fixed point beside them; every figure None with ``reason`` when
    SPU is not set up or its run fails."""
    reason = missing_reason()
    res: dict[str, Any] | None = None
    if reason is None:
        try:
            res = run_spu(n, reps)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            reason = str(exc)[-500:]
    if res is None:
        return {"lt_per_s": None, "mul_per_s": None, "reason": reason}
    return {"lt_per_s": round(res["int"]["lt"]["per_s"]),
            "mul_per_s": round(res["int"]["mul"]["per_s"]),
            "fxp_lt_per_s": round(res["fxp"]["lt"]["per_s"]),
            "fxp_mul_per_s": round(res["fxp"]["mul"]["per_s"]),
            "bytes_per_lt": res["int"]["lt"].get("bytes_per_op"),
            "bytes_per_mul": res["int"]["mul"].get("bytes_per_op"),
            "checked": all(res[e][o]["checked"] for e in ("int", "fxp") for o in ("lt", "mul")),
            "n": n, "reps": reps, "detail": res}


def report(stem: Path, n: int, reps: int) -> dict[str, Any]:
    """SPU, then VeilQL's LT and mul at the same ``n`` (best of ``reps``), into
    ``<stem>.json`` and ``<stem>.md``."""
    from bench.mpc import machine, measure

    load = [os.getloadavg()]
    spu = run_spu(n, reps)
    load.append(os.getloadavg())
    lt = measure(lambda rt, a, b: rt.lt(a, b), n, reps)
    mul = measure(lambda rt, a, b: rt.mul(a, b), n, reps)
    load.append(os.getloadavg())
    veil = {"lt_per_s": lt["per_s"], "lt_seconds": lt["seconds"],
            "lt_cpu_seconds": lt["cpu_seconds"], "mul_per_s": mul["per_s"],
            "mul_seconds": mul["seconds"], "mul_cpu_seconds": mul["cpu_seconds"],
            "bytes_per_lt": lt["bytes_per_op"], "bytes_per_mul": mul["bytes_per_op"],
            "rounds_lt": lt["rounds"], "rounds_mul": mul["rounds"]}
    out = {"n": n, "reps": reps, "spu": spu, "veilql": veil,
           "ratios": {"lt": veil["lt_per_s"] / spu["int"]["lt"]["per_s"],
                      "mul": veil["mul_per_s"] / spu["int"]["mul"]["per_s"],
                      "lt_vs_fxp": veil["lt_per_s"] / spu["fxp"]["lt"]["per_s"],
                      "mul_vs_fxp": veil["mul_per_s"] / spu["fxp"]["mul"]["per_s"]},
           "load_average": {"before": load[0], "after_spu": load[1], "after_veilql": load[2]},
           "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "veilql_commit": source_commit()}
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    stem.with_suffix(".md").write_text(render(out))
    return out


def source_commit() -> str | None:
    """The commit VeilQL's figures were measured at: ``$VEIL_BENCH_COMMIT`` (a snapshot
    outside git), else ``git describe --always --dirty`` of this checkout."""
    if os.environ.get("VEIL_BENCH_COMMIT"):
        return os.environ["VEIL_BENCH_COMMIT"]
    try:
        proc = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                              capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    return proc.stdout.strip() or None


def render(out: dict[str, Any]) -> str:
    """The markdown table of a ``report``."""
    spu, veil, r = out["spu"], out["veilql"], out["ratios"]
    v = spu["versions"]
    lines = [
        f"# VeilQL beside SecretFlow SPU: secure LT and multiplication at n = {out['n']:,}",
        "",
        f"{out['date']}; {out['machine']['cpus']} vCPUs shared with other jobs; load average "
        f"(1 min) {out['load_average']['before'][0]:.1f} before, "
        f"{out['load_average']['after_spu'][0]:.1f} after SPU, "
        f"{out['load_average']['after_veilql'][0]:.1f} after VeilQL. SPU {v['spu']} (JAX "
        f"{v['jax']}, numpy {v['numpy']}, its own venv), ABY3 over Z_2^64, three parties as "
        f"threads on SPU's in-memory link; VeilQL: three party threads, in-process transport, "
        f"numpy {out['machine']['numpy']}, at commit {out.get('veilql_commit')}. Best of "
        f"{out['reps']}, inputs shared before timing.",
        "",
        "| operation | VeilQL per s | SPU per s | VeilQL / SPU | VeilQL CPU s | SPU CPU s "
        "| bytes per op, all parties: VeilQL / SPU | rounds: VeilQL / SPU send actions |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def spu_comm(s: dict[str, Any]) -> tuple[str, str]:
        b, a = s.get("bytes_per_op"), s.get("send_actions_per_party")
        return (f"{b:g}" if b is not None else "?"), (str(a) if a is not None else "?")

    for op, label in (("lt", "signed 64-bit x < y"), ("mul", "64-bit x * y (mod 2^64)")):
        s = spu["int"][op]
        b, a = spu_comm(s)
        lines.append(f"| {label} | {veil[op + '_per_s']:,.0f} | {s['per_s']:,.0f} | "
                     f"{r[op]:.1f}x | {veil[op + '_cpu_seconds']:.2f} | "
                     f"{s['cpu_seconds']:.2f} | {veil['bytes_per_' + op]:g} / {b} | "
                     f"{veil['rounds_' + op]} / {a} |")
    for op, label in (("lt", "SPU fixed point x < y (18 fraction bits)"),
                      ("mul", "SPU fixed point x * y (with truncation)")):
        s = spu["fxp"][op]
        b, a = spu_comm(s)
        lines.append(f"| {label} | - | {s['per_s']:,.0f} | {r[op + '_vs_fxp']:.1f}x (vs VeilQL "
                     f"integer) | - | {s['cpu_seconds']:.2f} | - / {b} | - / {a} |")
    checked = all(spu[e][o]["checked"] for e in ("int", "fxp") for o in ("lt", "mul"))
    lines += ["", f"SPU outputs reconstructed and checked against numpy: {checked}. CPU "
              "seconds: VeilQL's three party threads (thread time); SPU's whole process "
              "(its worker pools included), over the best repetition. Traffic: VeilQL's "
              "in-process network counters; SPU's from its own profiler (one more, untimed "
              "run with `enable_hal_profile`), send actions per party standing for rounds.",
              ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m bench.peers_spu",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--setup", action="store_true", help="create bench/.venv-spu and install SPU")
    ap.add_argument("--python", help="interpreter for --setup (default: python3.11)")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--report", type=Path, help="write STEM.json and STEM.md beside VeilQL's")
    ap.add_argument("--json", action="store_true", help="one line of JSON")
    args = ap.parse_args(argv)
    if args.setup:
        setup(args.python)
        print(f"SPU installed in {VENV}")
        return 0
    reason = missing_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    res = report(args.report, args.n, args.reps) if args.report else run_spu(args.n, args.reps)
    print(json.dumps(res, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
