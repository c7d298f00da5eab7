"""Smoke test of ``python -m bench.run --quick`` on tiny inputs, without the peer systems."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bench import run as bench_run

KEYS = {"date", "quick", "settings", "machine", "load", "seconds", "e2e", "join", "accuracy",
        "resources", "targets"}
QUERY_KEYS = {"sql", "first_s", "repeated_s", "duckdb_s", "ratio_first", "ratio_repeated",
              "bytes_sent_first", "rounds_first", "bytes_sent_repeated", "rounds_repeated"}


def test_quick_run_writes_json_and_markdown(tmp_path: Path) -> None:
    jpath, mpath = bench_run.run(
        quick=True, peers=False, people=[2000], sections=("e2e", "join", "accuracy"),
        out_dir=tmp_path / "results", cache=tmp_path / "data",
        overrides={"e2e_reps": 1, "psi_n": 2000, "psi_reps": 1, "acc_people": 2000,
                   "acc_runs": 3})
    res = json.loads(jpath.read_text())
    assert KEYS <= set(res)
    e2e = res["e2e"]["2000"]
    assert set(e2e["queries"]) == {"join_filter_sum", "cross_party_predicate",
                                   "three_way_group_by", "avg_by_group", "single_party_group_by"}
    for name, q in e2e["queries"].items():
        assert QUERY_KEYS <= set(q), name
        assert q["first_s"] > 0 and q["duckdb_s"] > 0
    join_q = e2e["queries"]["join_filter_sum"]
    # three compute parties each sent shares; the repeated run reuses the join: fewer rounds
    assert all(join_q["bytes_sent_first"][p] > 0 for p in ("bank", "payments", "insurer"))
    assert 0 < join_q["rounds_repeated"] < join_q["rounds_first"]
    assert e2e["queries"]["single_party_group_by"]["rounds_first"] == 0  # local mode
    assert e2e["peak_rss_mb"] > 10
    join = res["join"]
    assert join["n_per_side"] == 2000 and join["veilql"]["matches"] == 1000
    assert join["openmined_psi"] is None and join["ratio_veilql_over_psi"] is None
    tls = join["veilql_tls"]  # the same join as three processes over mutual TLS
    assert tls["matches"] == 1000 and set(tls["peak_rss_mb_per_party"]) == {"p0", "p1", "p2"}
    # The same protocol over TLS sends the same bytes in all; which party sends which share
    # of them depends on the round counter (the shuffle's roles rotate with it).
    assert sum(tls["bytes_sent_per_party"].values()) == sum(
        join["veilql"]["bytes_sent_per_party"].values())
    assert all(b > 0 for b in tls["bytes_sent_per_party"].values())
    acc = res["accuracy"]
    assert acc["veilql"]["privacy_per_query"] == {"epsilon": 1.0, "delta": 0.0}
    assert acc["veilql"]["values_scored"] == 3 * acc["groups"] and acc["groups"] == 5
    assert acc["veilql"]["ledger_epsilon_spent_total"] == 3.0
    targets = {t["target"]: t for t in res["targets"]}
    assert targets["join throughput vs openmined-psi (VeilQL in-process threads)"]["met"] is None
    assert "## End to end, 2,000 people" in mpath.read_text()


@pytest.mark.network
@pytest.mark.slow  # three veil serve processes (14 s)
def test_nodes_benchmark_runs_three_serve_processes_and_leaves_none(tmp_path: Path) -> None:
    """``bench.nodes`` at 2,000 people: both modes answer, bytes and peaks per node, no
    node process survives the run."""
    from bench import nodes

    res = nodes.run(people=2000, reps=1, cache=tmp_path / "data")
    assert set(res["queries"]) == {"join_filter_sum", "cross_party_predicate"}
    for name, q in res["queries"].items():
        nw, em = q["network"], q["embedded"]
        assert nw["first_s"] > 0 and em["first_s"] > 0, name
        assert q["ratio_first"] == pytest.approx(nw["first_s"] / em["first_s"])
        for run_ in ("first", "repeated"):
            written = nw[f"bytes_written_{run_}"]
            sent = em[f"bytes_sent_{run_}"]
            assert set(written) == {"bank", "payments", "insurer"}
            # wchar counts the TLS records (payload plus framing) and a log line: at least
            # what the same party sent in the embedded mode, and not wildly more
            for p in written:
                assert sent[p] > 0 and sent[p] <= written[p] < 3 * sent[p] + 100_000, (p, run_)
            assert all(10 < mb < 4000 for mb in nw[f"peak_rss_mb_{run_}"].values())
        # the repeated run reuses the join on the nodes: much less traffic
        assert sum(nw["bytes_written_repeated"].values()) < sum(
            nw["bytes_written_first"].values())
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert res["workdir"] not in ps, "a node process was left behind"
    assert not Path(res["workdir"]).exists()
