"""MPyC's secure comparisons and multiplications, to set beside VeilQL's (``bench.mpc``).

    BENCH_MPYC_N=100000 BENCH_MPYC_REPS=3 python -m bench.peers_mpyc -M3

MPyC's own launcher starts the three parties as separate processes talking over
loopback TCP when given ``-M3`` (party 0 spawns parties 1 and 2). The secure type is
``SecInt(32)`` in numpy secure arrays (MPyC's fastest path; with gmpy2 installed); the
timed work is one call on whole arrays, from a barrier all parties pass to the moment
every party holds its result shares and has passed a second barrier. Party 0 prints one
JSON line: operations per second (median over ``--reps``), bytes each party sent during
the timed calls, and MPyC's version. ``run_mpyc`` runs the script and parses that line.

The MPyC import is inside ``main`` so that importing this module (``bench.run``, the
test suite) never requires MPyC.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def available() -> bool:
    """Whether MPyC is importable here."""
    try:
        import mpyc  # noqa: F401
    except ImportError:
        return False
    return True


async def _measure(mpc: Any, n: int, reps: int) -> dict[str, Any]:
    """Time secure LT and multiplication on ``n`` 32-bit values at every party."""
    secint = mpc.SecInt(32)
    rng = np.random.default_rng(n)  # test inputs only: not protocol randomness
    xs = rng.integers(-(2**30), 2**30, n)
    ys = rng.integers(-(2**30), 2**30, n)
    # party 0 inputs x, party 1 inputs y (like bench.mpc: two data owners)
    x = mpc.input(secint.array(xs), senders=0)
    y = mpc.input(secint.array(ys), senders=1)
    await mpc.gather(x + y)  # inputs settled before timing

    def sent() -> int:
        return sum(p.protocol.nbytes_sent for p in mpc.parties if p.pid != mpc.pid)

    out: dict[str, Any] = {}
    for name, op in (("lt", lambda: x < y), ("mul", lambda: x * y)):
        times: list[float] = []
        traffic: list[int] = []
        for _ in range(reps):
            await mpc.barrier()
            b0 = sent()
            t0 = time.perf_counter()
            await mpc.gather(op())
            await mpc.barrier()
            times.append(time.perf_counter() - t0)
            traffic.append(sent() - b0)
        per_party = await mpc.transfer(statistics.median(traffic), senders=None, receivers=0)
        out[name] = {"seconds": statistics.median(times),
                     "per_s": n / statistics.median(times),
                     "bytes_sent_per_party": per_party if mpc.pid == 0 else None}
    # sanity: the comparison really computed x < y (output is collective, to party 0)
    got = await mpc.output(x[:100] < y[:100], receivers=0)
    if mpc.pid == 0:
        out["lt_checked"] = bool(np.array_equal(np.asarray(got).astype(bool), xs[:100] < ys[:100]))
    return out


def main() -> int:
    """Run as one MPyC party (MPyC parses ``-M3``/``-I`` itself)."""
    # Sizes come by environment (inherited by the parties MPyC spawns): MPyC parses the
    # command line itself and would take ``--n`` for an abbreviation of its own options.
    n = int(os.environ.get("BENCH_MPYC_N", "100000"))
    reps = int(os.environ.get("BENCH_MPYC_REPS", "3"))
    from mpyc.runtime import mpc

    async def prog() -> None:
        await mpc.start()
        res = await _measure(mpc, n, reps)
        await mpc.shutdown()
        if mpc.pid == 0:
            import mpyc

            try:
                import gmpy2
                gv = gmpy2.version()
            except ImportError:
                gv = None
            res.update(n=n, reps=reps, parties=len(mpc.parties),
                       mpyc=mpyc.__version__, gmpy2=gv, transport="TCP loopback, 3 processes")
            print("MPYC_RESULT " + json.dumps(res), flush=True)

    mpc.run(prog())
    return 0


def run_mpyc(n: int, reps: int, timeout: float = 1800.0) -> dict[str, Any]:
    """Run the three MPyC parties once; the dict party 0 printed (with ``wall_seconds``)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), BENCH_MPYC_N=str(n), BENCH_MPYC_REPS=str(reps))
    # --output-file: parties 1 and 2 write to log files, not into our pipe
    cmd = [sys.executable, "-m", "bench.peers_mpyc", "-M3", "--output-file", "--no-log"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=_scratch(), env=env, capture_output=True, text=True,
                          timeout=timeout)
    wall = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith("MPYC_RESULT "):
            res = json.loads(line.split(" ", 1)[1])
            res["wall_seconds"] = wall
            return res
    raise RuntimeError(f"MPyC run failed (exit {proc.returncode}): {proc.stderr[-2000:]}")


def _scratch() -> str:
    """A folder for MPyC's party log files (kept out of the repository)."""
    d = ROOT / "bench" / ".data" / "mpyc"
    d.mkdir(parents=True, exist_ok=True)
    return str(d)


if __name__ == "__main__":
    raise SystemExit(main())
