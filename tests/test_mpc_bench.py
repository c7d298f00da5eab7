"""The benchmark harness runs and reports the communication the docs claim."""

from __future__ import annotations

from bench import mpc


def test_measure_lt_traffic_and_rounds() -> None:
    s = mpc.measure(lambda rt, a, b: rt.lt(a, b), 2000, 1)
    assert s["rounds"] == 7
    assert s["bytes_per_op"] == 50.875  # 12 + 8 + 8 + 3 * (4 + 2 + 1 + 1/2 + 1/8)
    assert s["per_s"] > 0 and s["cpu_seconds"] > 0


def test_measure_mul_and_eq() -> None:
    assert mpc.measure(lambda rt, a, b: rt.mul(a, b), 1000, 1)["bytes_per_op"] == 24.0
    eq = mpc.measure(lambda rt, a, b: rt.eq(a, b), 1000, 1)
    assert eq["rounds"] == 7 and eq["bytes_per_op"] == 31.625  # 20 + 3 * 3.875


def test_machine_info() -> None:
    info = mpc.machine()
    assert info["cpus"] and info["numpy"]
