"""Benchmarks: ``python -m bench.mpc --json`` for the secure runtime."""
