"""SecretFlow SPU's secure comparisons and multiplications (run inside ``bench/.venv-spu``).

    bench/.venv-spu/bin/python bench/spu_worker.py --n 1000000 --reps 3

SPU pins numpy below 2 (and JAX 0.4), which VeilQL's environment cannot hold, so this
script runs in its own virtual environment and is started by ``bench.peers_spu``; it
imports nothing from VeilQL. Protocol: ABY3 (three-party replicated secret sharing, semi-
honest, honest majority) over the ring Z_2^64 (``FM64``), three parties as threads of this
process talking through SPU's in-memory link (``libspu.link.create_mem``), the set-up of
``spu.utils.simulation.Simulator`` with the timing split out of it:

- ``x < y`` and ``x * y`` are compiled once (JAX -> SPU IR);
- the inputs are secret-shared once by SPU's ``Io`` (the simulator's dealer step) and
  handed to each party's runtime: not timed;
- each repetition: all three party threads pass a barrier, run the executable, and pass a
  second barrier; wall time from the first to the second at party 0, and the CPU time of
  the whole process (SPU's worker threads included) over the same span; best of ``reps``;
- the outputs are reconstructed once and checked against numpy.

Two encodings: ``int`` (signed 64-bit integers from [-2^61, 2^61), as ``bench.mpc`` draws;
the product wraps modulo 2^64 as VeilQL's does) and ``fxp`` (SPU's fixed point, 18
fractional bits, values in [-1000, 1000); the product includes the truncation). Prints one
JSON line starting with ``SPU_RESULT``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import threading
import time
from typing import Any

import numpy as np


def _cpu() -> float:
    # every thread of the process, SPU's own pools included, at sub-millisecond resolution
    return time.process_time()


def _compile(fn: Any, x: np.ndarray, y: np.ndarray) -> Any:
    """The SPU executable of ``fn(x, y)`` with both inputs secret."""
    import spu.libspu as libspu
    import spu.utils.frontend as fe

    exe, _ = fe.compile(fe.Kind.JAX, fn, (x, y), {}, ["in0", "in1"],
                        [libspu.Visibility.VIS_SECRET] * 2, lambda out: ["out0"])
    return exe


def measure(encoding: str, op: str, n: int, reps: int) -> dict[str, Any]:
    """Best time of ``op`` (``lt`` or ``mul``) on ``n`` shared pairs at three ABY3 parties."""
    import jax.numpy as jnp
    import spu.api as spu_api
    import spu.libspu as libspu

    rng = np.random.default_rng(n)  # test inputs only: SPU draws its own protocol randomness
    if encoding == "int":
        x = rng.integers(-(2**61), 2**61, n, dtype=np.int64)
        y = rng.integers(-(2**61), 2**61, n, dtype=np.int64)
        fraction_bits = 0
    else:
        x = rng.uniform(-1000.0, 1000.0, n)
        y = rng.uniform(-1000.0, 1000.0, n)
        fraction_bits = 18
    fn = jnp.less if op == "lt" else jnp.multiply
    config = libspu.RuntimeConfig(protocol=libspu.ProtocolKind.ABY3,
                                  field=libspu.FieldType.FM64)
    if fraction_bits:
        config.fxp_fraction_bits = fraction_bits
    t0 = time.perf_counter()
    exe = _compile(fn, x, y)
    compile_s = time.perf_counter() - t0
    io = spu_api.Io(3, config)
    shares = [io.make_shares(v, libspu.Visibility.VIS_SECRET) for v in (x, y)]
    desc = libspu.link.Desc()
    for rank in range(3):
        desc.add_party(f"id_{rank}", f"thread_{rank}")
    barrier = threading.Barrier(3)
    times: list[float] = []
    cpu: list[float] = []
    outs: list[Any] = [None, None, None]
    errors: list[BaseException] = []
    profiled = libspu.RuntimeConfig(config)
    # One more, untimed run with SPU's profiler on: it logs each party's link traffic
    # ("Link details: total send bytes ...") to stdout after this marker, for the driver.
    profiled.enable_hal_profile = True

    def party(rank: int) -> None:
        try:
            rt = spu_api.Runtime(libspu.link.create_mem(desc, rank), libspu.RuntimeConfig(config))
            for i, name in enumerate(exe.input_names):
                rt.set_var(name, shares[i][rank])
            for _ in range(reps):
                barrier.wait()
                t, c = time.perf_counter(), _cpu()
                rt.run(exe)
                barrier.wait()
                if rank == 0:
                    times.append(time.perf_counter() - t)
                    cpu.append(_cpu() - c)
            outs[rank] = rt.get_var(exe.output_names[0])
        except BaseException as exc:  # a failed party must not leave the others waiting
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=party, args=(r,)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    _profiled_run(exe, shares, desc, profiled, f"{encoding} {op}")
    got = np.asarray(io.reconstruct(outs))
    if op == "lt":
        ok = bool(np.array_equal(got.astype(bool), x < y))
    elif encoding == "int":
        ok = bool(np.array_equal(got.astype(np.int64), x * y))  # wraps modulo 2^64, as SPU's
    else:
        ok = bool(np.allclose(got, x * y, atol=1e-2))
    best = int(np.argmin(times))
    return {"per_s": n / times[best], "seconds": times[best], "cpu_seconds": cpu[best],
            "all_seconds": times, "checked": ok, "compile_seconds": compile_s,
            "fraction_bits": fraction_bits}


def _profiled_run(exe: Any, shares: list[Any], desc: Any, config: Any, label: str) -> None:
    """Run ``exe`` once more at three parties with ``config`` (profiling on), after a
    ``SPU_PROFILE <label>`` line on stdout."""
    import spu.api as spu_api
    import spu.libspu as libspu

    print(f"SPU_PROFILE {label}", flush=True)

    def party(rank: int) -> None:
        cfg = libspu.RuntimeConfig(config)
        rt = spu_api.Runtime(libspu.link.create_mem(desc, rank), cfg)
        for i, name in enumerate(exe.input_names):
            rt.set_var(name, shares[i][rank])
        rt.run(exe)

    threads = [threading.Thread(target=party, args=(r,)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main(argv: list[str] | None = None) -> int:
    """Measure LT and mul for each encoding; print one ``SPU_RESULT`` JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--encodings", default="int,fxp")
    args = ap.parse_args(argv)
    import jax

    # 64-bit integers stay 64-bit (JAX narrows them to 32 bits otherwise).
    jax.config.update("jax_enable_x64", True)
    import spu

    res: dict[str, Any] = {"n": args.n, "reps": args.reps, "protocol": "ABY3",
                           "field": "FM64", "parties": 3,
                           "transport": "SPU in-memory link, three threads of one process"}
    for enc in [e for e in args.encodings.split(",") if e]:
        res[enc] = {op: measure(enc, op, args.n, args.reps) for op in ("lt", "mul")}
    res["versions"] = {"spu": spu.__version__, "jax": jax.__version__,
                       "numpy": np.__version__, "python": sys.version.split()[0]}
    res["platform"] = platform.platform()
    print("SPU_RESULT " + json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
