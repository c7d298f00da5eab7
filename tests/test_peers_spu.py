"""bench.peers_spu: SPU's rows are null with a reason without its venv, and real with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import peers_spu


def test_missing_venv_gives_null_rows_and_a_reason(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setattr(peers_spu, "PYTHON", tmp_path / "no-venv" / "bin" / "python")
    monkeypatch.setattr(peers_spu, "VENV", peers_spu.ROOT / "bench" / "no-venv")
    got = peers_spu.summary(1000, 1)
    assert got["lt_per_s"] is None and got["mul_per_s"] is None
    assert "--setup" in got["reason"]


@pytest.mark.skipif(peers_spu.missing_reason() is not None, reason="no bench/.venv-spu")
def test_spu_worker_checks_its_outputs() -> None:
    got = peers_spu.summary(1000, 1)
    assert got["checked"] is True
    assert got["lt_per_s"] > 0 and got["mul_per_s"] > 0
    assert got["bytes_per_mul"] == 24.0  # ABY3 resharing: one 64-bit word per party
    assert got["detail"]["versions"]["spu"] == peers_spu.SPU_REQUIREMENT.split("==")[1]
