"""What each participant receives when a query runs, for the neighbouring-federation tests.

A secure step leaks nothing about a person when every message a compute party receives has
the same length with and without that person. These helpers run a query with transcripts
on (``VEIL_TRANSCRIPT_DIR``) and read back the data records, without heartbeats: those
(empty, one per third of the silence timeout) follow the clock, not the data, so a run
slowed by load would otherwise differ from another in its number of empty records.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest
from adversarial.test_transcript_scan import records_of

import veilql
from veilql.engine.transport.base import HEARTBEAT_TAG


def run_recorded(fed: Path, out: Path, sql: str, *, analyst: str = "oracle",
                 epsilon: float = 1.0, delta: float = 1e-6) -> veilql.Result:
    """Run ``sql`` on federation ``fed`` with every participant's transcript in ``out``."""
    mp = pytest.MonkeyPatch()
    mp.setenv("VEIL_TRANSCRIPT_DIR", str(out))
    try:
        with veilql.connect(fed, analyst=analyst) as session, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return session.sql(sql, epsilon=epsilon, delta=delta)
    finally:
        mp.undo()


def data_records(path: Path) -> list[tuple[str, str, int]]:
    """``(sender, kind, payload length)`` of every data record of one transcript, in order,
    heartbeats left out."""
    return [(f, k, len(p)) for f, k, tag, p in records_of(path)
            if k == "data" and tag != HEARTBEAT_TAG]


def received(out: Path, receivers: Iterable[str]) -> Counter:
    """The multiset of ``(receiver, sender, payload length)`` of the data records each of
    ``receivers`` got (heartbeats left out)."""
    return Counter((to, f, n) for to in receivers for f, _, n in data_records(out / f"{to}.bin"))
