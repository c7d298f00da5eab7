"""Join throughput: VeilQL's secure join operator beside openmined-psi, on the same keys.

Both sides get the same two key sets (``key_sets``: ``n`` keys each, half of them
shared). Measured in the same process, one after the other:

- **VeilQL**: the whole secure join on the privacy unit at three in-process parties
  (one thread each): the two key holders agree on a tag key and tag their keys with
  AES (``operators.tags``), secret-share the tag column and one payload column each,
  then ``join_stage`` shuffles both sides, opens the tags to the viewer and gathers the
  matching rows. Its output is more than a count: secret shares of the aligned rows.
- **VeilQL over TLS**: the same join with the three parties as separate processes over
  mutual TLS on loopback (``veilql_join_tls``), which also gives each party process's
  peak memory.
- **openmined-psi** 2.x (C++, ECDH on P-256): server setup + client request + server
  response + client's intersection size (cardinality mode, raw data structure so it is
  exact), both roles in this process, one after the other as the library runs them.

Throughput is input keys (both sides) per second; each figure is the median of ``reps``.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import numpy as np

from bench.e2e import peak_rss_mb
from veilql.engine.mpc.runtime import Runtime
from veilql.engine.mpc.testing import PARTIES, run_three
from veilql.engine.operators.join import SharedTable, join_stage
from veilql.engine.operators.tags import new_key, tags
from veilql.engine.plan.nodes import JoinStage
from veilql.engine.transport.inprocess import InProcessNetwork


def available() -> bool:
    """Whether openmined-psi is importable here."""
    try:
        import private_set_intersection.python  # noqa: F401
    except ImportError:
        return False
    return True


def key_sets(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Two sets of ``n`` distinct int64 keys with ``n // 2`` in common (test inputs only)."""
    rng = np.random.default_rng(seed)
    pool = rng.choice(2**40, size=2 * n - n // 2, replace=False).astype(np.int64)
    a = pool[:n]
    b = np.concatenate([pool[: n // 2], pool[n:]])
    return rng.permutation(a), rng.permutation(b)


def _join(rt: Runtime, keys: np.ndarray | None, sizes: tuple[int, int]) -> int:
    """One party's part of the secure join of party 0's and party 1's keys; rows joined."""
    p0, p1, p2 = rt.parties
    stage = JoinStage(left=(p0,), right=p1, key_parties=(p0, p1), viewer=p2)
    # the key holders agree on a fresh tag key; the viewer never sees it
    key = b""
    if rt.me == 0:
        key = new_key()
        rt.transport.send(p1, "tagkey", key)
    elif rt.me == 1:
        key = rt.transport.recv(p0, "tagkey", rt.timeout)
    sides = []
    for owner, n in enumerate(sizes):
        mine = rt.me == owner and keys is not None
        t = tags(key, keys) if mine else None
        pay = keys.astype(np.uint64) if mine else None
        sides.append(SharedTable(n, {f"tag{owner}": rt.share(owner, t, n),
                                     f"pay{owner}": rt.share(owner, pay, n)}))
    right = SharedTable(sides[1].n, {"tag0": sides[1].cols.pop("tag1"), **sides[1].cols})
    return join_stage(rt, stage, sides[0], right, "tag0").n


def veilql_join(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """One secure join of key sets ``a`` (party 0) and ``b`` (party 1) at three in-process
    parties; seconds, matches, bytes sent per party and rounds."""
    net = InProcessNetwork(PARTIES, timeout=600.0)
    barrier = threading.Barrier(3)
    out: dict[str, Any] = {}

    def prog(rt: Runtime, keys: np.ndarray | None) -> int:
        barrier.wait()
        if rt.me == 0:
            out["sent0"] = dict(net.bytes_sent)
            out["rounds0"] = rt.rounds
            out["t0"] = time.perf_counter()
        barrier.wait()
        n = _join(rt, keys, (len(a), len(b)))
        barrier.wait()
        if rt.me == 0:
            out["seconds"] = time.perf_counter() - out["t0"]
            out["rounds"] = rt.rounds - out["rounds0"]
            out["sent"] = {p: net.bytes_sent[p] - out["sent0"][p] for p in PARTIES}
        return n

    sizes = run_three(prog, [a, b, None], network=net, timeout=600.0)
    assert len(set(sizes)) == 1
    return {"seconds": out["seconds"], "matches": sizes[0], "rounds": out["rounds"],
            "bytes_sent_per_party": out["sent"]}


def _tls_join_party(transport: Any, n: int) -> dict[str, Any]:
    """One party process of ``veilql_join_tls``: its seconds, traffic, rounds, peak memory."""
    rt = Runtime(transport, transport.parties)
    rt.setup()
    a, b = key_sets(n)
    keys = a if rt.me == 0 else b if rt.me == 1 else None
    sync = rt.share(0, np.zeros(1, np.uint64) if rt.me == 0 else None, 1)
    rt.open(sync)  # a one-element round: the three parties start together
    before, rounds0 = sum(transport.bytes_sent.values()), rt.rounds
    t0 = time.perf_counter()
    matches = _join(rt, keys, (len(a), len(b)))
    return {"seconds": time.perf_counter() - t0, "matches": matches,
            "bytes_sent": sum(transport.bytes_sent.values()) - before,
            "rounds": rt.rounds - rounds0,
            "peak_rss_mb": peak_rss_mb()}


def veilql_join_tls(n: int) -> dict[str, Any]:
    """The same join with the three parties as processes over mutual TLS on loopback."""
    from veilql.engine.transport.launch import run_parties_tls

    res = run_parties_tls("bench.peers_psi:_tls_join_party", PARTIES, (n,), timeout=600)
    return {"seconds": max(r["seconds"] for r in res), "matches": res[0]["matches"],
            "rounds": max(r["rounds"] for r in res),
            "bytes_sent_per_party": {p: r["bytes_sent"] for p, r in zip(PARTIES, res,
                                                                         strict=True)},
            "peak_rss_mb_per_party": {p: round(r["peak_rss_mb"], 1)
                                      for p, r in zip(PARTIES, res, strict=True)}}


def openmined_cardinality(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """openmined-psi cardinality of ``a`` (client) and ``b`` (server); seconds and bytes."""
    import private_set_intersection.python as psi

    client_items = [str(int(k)) for k in a]
    server_items = [str(int(k)) for k in b]
    t0 = time.perf_counter()
    client = psi.client.CreateWithNewKey(False)
    server = psi.server.CreateWithNewKey(False)
    setup = server.CreateSetupMessage(1e-9, len(client_items), server_items,
                                      psi.DataStructure.RAW)
    request = client.CreateRequest(client_items)
    response = server.ProcessRequest(request)
    size = client.GetIntersectionSize(setup, response)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "matches": int(size),
            "bytes_sent_per_party": {"server": setup.ByteSize() + response.ByteSize(),
                                     "client": request.ByteSize()}, "rounds": 2}


def run(n: int, reps: int, peers: bool = True, tls: bool = True) -> dict[str, Any]:
    """VeilQL's join (in-process, and with ``tls`` as three processes over mutual TLS) and,
    when installed and ``peers``, openmined-psi on the same n x n keys."""
    a, b = key_sets(n)
    out: dict[str, Any] = {"n_per_side": n, "common": n // 2}
    runs = [veilql_join(a, b) for _ in range(reps)]
    secs = statistics.median(r["seconds"] for r in runs)
    out["veilql"] = {"seconds": secs, "keys_per_s": 2 * n / secs, "matches": runs[0]["matches"],
                     "rounds": runs[0]["rounds"],
                     "bytes_sent_per_party": runs[0]["bytes_sent_per_party"],
                     "runs": [r["seconds"] for r in runs]}
    if tls:
        truns = [veilql_join_tls(n) for _ in range(reps)]
        tsecs = statistics.median(r["seconds"] for r in truns)
        out["veilql_tls"] = {**truns[0], "seconds": tsecs, "keys_per_s": 2 * n / tsecs,
                             "runs": [r["seconds"] for r in truns],
                             "transport": "mutual TLS 1.3, three processes, loopback"}
    else:
        out["veilql_tls"] = None
    if peers and available():
        import private_set_intersection.python as psi

        pruns = [openmined_cardinality(a, b) for _ in range(reps)]
        psecs = statistics.median(r["seconds"] for r in pruns)
        out["openmined_psi"] = {"version": psi.__version__, "seconds": psecs,
                                "keys_per_s": 2 * n / psecs, "matches": pruns[0]["matches"],
                                "bytes_sent_per_party": pruns[0]["bytes_sent_per_party"],
                                "runs": [r["seconds"] for r in pruns]}
        out["ratio_veilql_over_psi"] = psecs / secs
        out["ratio_veilql_tls_over_psi"] = (psecs / out["veilql_tls"]["seconds"]
                                            if out["veilql_tls"] else None)
    else:
        out["openmined_psi"] = None
        out["ratio_veilql_over_psi"] = out["ratio_veilql_tls_over_psi"] = None
    return out


if __name__ == "__main__":
    import json
    import sys

    size = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 100_000
    if "--tls-only" in sys.argv:
        print(json.dumps(veilql_join_tls(size), indent=2))
    else:
        print(json.dumps(run(size, 3), indent=2))
