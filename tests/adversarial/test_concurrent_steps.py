"""Steps run side by side must not tell a colluding party more than steps run in turn.

The join's two sides and the aggregation's two streams of chunks run at the same time on
forked runtimes (``Runtime.parallel``), each with tags of its own. The attack: the analyst
colludes with one compute party, which records every message it receives (sender, round
tag, length) for two federations that differ only in one person's values, and looks for
anything the concurrency made depend on them: a fork's tag, a stream's chunk count, the
shuffle's lead, the width of the match positions. Arrival order follows the threads'
timing, so the comparison is of multisets; everything in them must be equal.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from lengths import run_recorded
from test_where_across import J2, build

from adversarial.test_transcript_scan import records_of
from veilql.engine.transport.base import HEARTBEAT_TAG

QUERY_ID = re.compile(r"\b[0-9a-f]{32}\b")
SQL = f"SELECT COUNT(*) AS n, SUM(a.v) AS s {J2} WHERE a.v > b.f"


def _view(out: Path, party: str) -> Counter:
    """(sender, tag with the query id blanked, length) of every data record ``party`` got."""
    return Counter((f, QUERY_ID.sub("Q", tag), len(p)) for f, k, tag, p
                   in records_of(out / f"{party}.bin") if k == "data" and tag != HEARTBEAT_TAG)


def test_concurrent_steps_show_a_colluding_party_the_same_rounds_for_neighbours(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VEIL_MEMORY_MB", "0.05")  # small chunks: both aggregation streams work
    views, answers = [], []
    for name, change in (("a", False), ("b", True)):
        fed = build(tmp_path / name, change=change)
        answers.append(run_recorded(fed, tmp_path / f"o{name}", SQL, epsilon=1e9).rows)
        views.append({p: _view(tmp_path / f"o{name}", p) for p in ("alice", "bob", "carol")})
    assert answers[0] != answers[1]  # the person's values changed the answer...
    tags = {t for view in views[0].values() for _, t, _ in view}
    # The concurrent paths ran: the second join side's shuffle and the second stream of
    # the aggregation's chunks on forks of their own.
    assert any(re.match(r"fork:\d+/1/shuffle", t) for t in tags), sorted(tags)
    assert any(re.match(r"fork:\d+/1/(mul|dot|msb)", t) for t in tags), sorted(tags)
    for party in ("alice", "bob", "carol"):
        assert views[0][party] == views[1][party], party  # ...and nothing else did
