"""Throughput of the secure runtime with three in-process parties (one thread each).

    python -m bench.mpc --json [--quick]

prints one JSON object: secure signed 64-bit LT comparisons per second at 10^4, 10^5
and 10^6 elements, multiplications and equality tests per second, shuffle throughput,
bytes sent (all parties together) and rounds per comparison, MPyC's and SecretFlow SPU's
figures from the same run (``mpyc_lt_per_s``; ``spu_lt_per_s``, ``spu_mul_per_s``: null,
with ``spu.reason``, when ``bench/.venv-spu`` is missing), and the machine; and the cost
of sampling central noise on shares (``noise_on_shares``: 1,000 cells of a COUNT and a SUM
plan, one batch; ``python -m bench.mpc --noise`` runs only that).
Each figure is the best of a few repetitions of wall time from a barrier that all three
parties pass before the call to one they pass after it; ``lt_cpu_ms_per_1e6`` adds up
the CPU time of the three party threads for one call on 10^6 elements (less sensitive
to other load on the machine than wall time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from veilql.engine.mpc.runtime import Runtime
from veilql.engine.mpc.shares import AShare
from veilql.engine.mpc.testing import PARTIES, run_three
from veilql.engine.transport.inprocess import InProcessNetwork

Op = Callable[[Runtime, AShare, AShare], Any]


def measure(op: Op, n: int, reps: int) -> dict[str, float]:
    """Best wall time of ``op`` over ``reps`` runs at all three parties, plus traffic."""
    rng = np.random.default_rng(n)
    x = rng.integers(-(2**61), 2**61, n).view(np.uint64)
    y = rng.integers(-(2**61), 2**61, n).view(np.uint64)
    net = InProcessNetwork(PARTIES, timeout=120.0)
    barrier = threading.Barrier(3)
    times: list[float] = []
    traffic: list[int] = []
    rounds: list[int] = []
    cpu: list[list[float]] = [[], [], []]

    def prog(rt: Runtime, xv: Any, yv: Any) -> None:
        a = rt.share(0, xv, n)
        b = rt.share(1, yv, n)
        for _ in range(reps):
            barrier.wait()
            if rt.me == 0:  # snapshot before anyone may start sending
                sent0, r0 = sum(net.bytes_sent.values()), rt.rounds
            barrier.wait()
            if rt.me == 0:
                t0 = time.perf_counter()
            c0 = time.thread_time()
            op(rt, a, b)
            cpu[rt.me].append(time.thread_time() - c0)
            barrier.wait()
            if rt.me == 0:
                times.append(time.perf_counter() - t0)
                traffic.append(sum(net.bytes_sent.values()) - sent0)
                rounds.append(rt.rounds - r0)

    run_three(prog, [x, None, None], [None, y, None], network=net, timeout=120.0)
    best = min(times)
    return {"per_s": n / best, "seconds": best, "bytes_per_op": traffic[0] / n,
            "rounds": rounds[0], "cpu_seconds": sum(min(c) for c in cpu)}


def measure_noise(cells: int = 1000, reps: int = 5,
                  scales: tuple[float, ...] = (2.0, 4e6)) -> dict[str, Any]:
    """Secure time, traffic and rounds of ``dlap_on_shares`` for ``cells`` cells of one
    aggregate per scale (default: the COUNT and the SUM of a two-party query at epsilon 1,
    ``t = 2`` and ``4e6``), all in one batch, best of ``reps``."""
    from veilql.engine.dp.central import thresholds
    from veilql.engine.mpc.protocols.noise import dlap_on_shares

    th = [thresholds(t) for t in scales]
    net = InProcessNetwork(PARTIES, timeout=120.0)
    barrier = threading.Barrier(3)
    times: list[float] = []
    traffic: list[int] = []
    rounds: list[int] = []
    cpu: list[list[float]] = [[], [], []]

    def prog(rt: Runtime) -> None:
        for _ in range(reps):
            barrier.wait()
            if rt.me == 0:
                sent0, r0 = sum(net.bytes_sent.values()), rt.rounds
            barrier.wait()
            if rt.me == 0:
                t0 = time.perf_counter()
            c0 = time.thread_time()
            dlap_on_shares(rt, th, cells)
            cpu[rt.me].append(time.thread_time() - c0)
            barrier.wait()
            if rt.me == 0:
                times.append(time.perf_counter() - t0)
                traffic.append(sum(net.bytes_sent.values()) - sent0)
                rounds.append(rt.rounds - r0)

    run_three(prog, network=net, timeout=120.0)
    coins = 2 * cells * sum(len(t) for t in th)
    return {"cells": cells, "scales": list(scales), "digits": [len(t) for t in th],
            "coins": coins, "seconds": min(times), "rounds": rounds[0],
            "bytes": traffic[0], "bytes_per_coin": traffic[0] / coins,
            "cpu_seconds": sum(min(c) for c in cpu)}


def machine() -> dict[str, Any]:
    """Where the figures were measured."""
    import cryptography

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "cryptography": cryptography.__version__,
    }


def run(quick: bool = False) -> dict[str, Any]:
    """All figures as one JSON-ready dict."""
    reps = 2 if quick else 5
    lt: Op = lambda rt, a, b: rt.lt(a, b)  # noqa: E731
    out: dict[str, Any] = {"parties": 3, "transport": "in-process"}
    lt_stats = {}
    # Small sizes are dominated by thread wake-ups (7 rounds): more repetitions.
    for n, k in ((10_000, 6 * reps), (100_000, 2 * reps), (1_000_000, max(2, reps - 2))):
        lt_stats[n] = measure(lt, n, k)
    out["lt_per_s"] = {f"1e{len(str(n)) - 1}": round(s["per_s"]) for n, s in lt_stats.items()}
    out["bytes_per_lt"] = round(lt_stats[1_000_000]["bytes_per_op"], 2)
    out["rounds_per_lt"] = lt_stats[1_000_000]["rounds"]
    # CPU time of the three party threads together: robust when the machine is shared.
    out["lt_cpu_ms_per_1e6"] = round(lt_stats[1_000_000]["cpu_seconds"] * 1e3, 1)
    big = 1_000_000
    mul = measure(lambda rt, a, b: rt.mul(a, b), big, reps)
    out["mul_per_s"] = round(mul["per_s"])
    out["bytes_per_mul"] = round(mul["bytes_per_op"], 2)
    eq = measure(lambda rt, a, b: rt.eq(a, b), big, max(2, reps - 2))
    out["eq_per_s"] = round(eq["per_s"])
    out["bytes_per_eq"] = round(eq["bytes_per_op"], 2)
    a2b = measure(lambda rt, a, b: rt.a2b(a), big, 2)
    out["a2b_per_s"] = round(a2b["per_s"])
    sh = measure(lambda rt, a, b: rt.shuffle([a, b]), 100_000, 2)
    out["shuffle_rows_per_s_2cols"] = round(sh["per_s"])
    out["noise_on_shares"] = measure_noise(1000, reps)
    out["mpyc_lt_per_s"] = measure_mpyc(quick)
    spu = measure_spu(quick)
    out["spu_lt_per_s"], out["spu_mul_per_s"] = spu["lt_per_s"], spu["mul_per_s"]
    out["spu"] = spu
    out["tls"] = measure_tls(quick)
    out["machine"] = machine()
    return out


def measure_mpyc(quick: bool = False) -> int | None:
    """MPyC's secure LT per second, 3 parties on loopback, in this same run (None when the
    `bench` extra is not installed)."""
    try:
        import mpyc  # noqa: F401
    except ImportError:
        return None
    from bench.peers_mpyc import run_mpyc

    res = run_mpyc(10_000 if quick else 100_000, 2 if quick else 3)
    return round(res["lt"]["per_s"])


def measure_spu(quick: bool = False) -> dict[str, Any]:
    """SecretFlow SPU (ABY3, three simulated parties, its own venv) at 10^6 elements
    (10^5 with ``quick``), in this same run: ``lt_per_s`` and ``mul_per_s`` on 64-bit
    integers, fixed point beside them; both None with a ``reason`` when the venv is
    missing (``python -m bench.peers_spu --setup``) or the run fails."""
    from bench.peers_spu import summary

    return summary(100_000 if quick else 1_000_000, 2 if quick else 3)


def _tls_lt_party(transport: Any, n: int, reps: int) -> dict[str, float]:
    """One party process of ``measure_tls``: LT of n pairs, best of ``reps``, and traffic."""
    rt = Runtime(transport, transport.parties)
    rt.setup()
    rng = np.random.default_rng(n)
    x = rng.integers(-(2**61), 2**61, n).view(np.uint64)
    y = rng.integers(-(2**61), 2**61, n).view(np.uint64)
    a = rt.share(0, x if rt.me == 0 else None, n)
    b = rt.share(1, y if rt.me == 1 else None, n)
    sync = rt.share(0, np.zeros(1, np.uint64) if rt.me == 0 else None, 1)
    best, sent = float("inf"), 0
    for _ in range(reps):
        rt.open(sync)  # a one-element round: all three parties start the timed call together
        before = sum(transport.bytes_sent.values())
        t0 = time.perf_counter()
        rt.lt(a, b)
        best = min(best, time.perf_counter() - t0)
        sent = sum(transport.bytes_sent.values()) - before
    return {"seconds": best, "bytes_sent": sent}


def measure_tls(quick: bool = False) -> dict[str, Any]:
    """LT/s with three party processes over mutual TLS on loopback (the ``tls`` section)."""
    from veilql.engine.transport.launch import run_parties_tls

    out: dict[str, Any] = {"transport": "mutual TLS 1.3, three processes, loopback"}
    lt_per_s, bytes_per_lt = {}, 0.0
    for n in (10_000, 100_000, 1_000_000):
        reps = 2 if quick or n == 1_000_000 else 3
        res = run_parties_tls("bench.mpc:_tls_lt_party", PARTIES, (n, reps), timeout=300)
        # The slowest party bounds the protocol; traffic is summed over the three.
        lt_per_s[f"1e{len(str(n)) - 1}"] = round(n / max(r["seconds"] for r in res))
        bytes_per_lt = sum(r["bytes_sent"] for r in res) / n
    out["lt_per_s"] = lt_per_s
    out["bytes_per_lt"] = round(bytes_per_lt, 2)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m bench.mpc", description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object (default)")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--noise", action="store_true",
                    help="only the cost of sampling 1,000 cells of central noise on shares")
    args = ap.parse_args(argv)
    result = {"noise_on_shares": measure_noise(1000, 2 if args.quick else 5),
              "machine": machine()} if args.noise else run(quick=args.quick)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
