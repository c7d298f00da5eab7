"""Loopback benchmark of transport stacks: round-trip latency and bulk throughput.

    python -m bench.transport [--json] [--sizes 8,64] [--rtt 2000] [--repeat 3]
                              [--only veilql-tls,asyncio-tls,arrow-flight-mtls]

Every stack runs between two OS processes on 127.0.0.1 with mutual TLS 1.3 and certificates
from the same throw-away CA, so the figures compare like with like:

- ``inprocess``: the in-process transport (threads, no sockets), for reference.
- ``veilql-tls``: ``veilql.engine.transport.tls.TlsTransport`` (threads, ``ssl`` sockets),
  started by the launch harness; also a three-party all-to-all round, the shape of an MPC
  round where every party sends to both others at once.
- ``asyncio-tls``: asyncio streams over TLS (the stdlib alternative).
- ``arrow-flight-mtls``: Arrow Flight (gRPC + Arrow IPC) with mutual TLS: ``do_action`` for
  the round trip, ``do_put`` of one binary value for throughput.

Latency is the median of ``--rtt`` ping-pongs of 8-byte messages; throughput is payload
bytes / (send start to the receiver's 1-byte acknowledgement), best of ``--repeat``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from veilql.engine.transport.certs import (
    PartyCredentials,
    client_context,
    make_federation_certs,
    server_context,
)

MB = 1 << 20


# ------------------------------------------------------------------------- VeilQL TLS
def _veil_target(transport: Any, sizes: list[int], n_rtt: int, repeat: int) -> dict[str, Any]:
    """Two-party ping-pong and bulk transfer; runs in both harness processes."""
    me = transport.me
    client = me == "a"
    other = "b" if client else "a"
    small = b"\0" * 8
    times = []
    for i in range(n_rtt):
        if client:
            t0 = time.perf_counter()
            transport.send(other, f"p{i}", small)
            transport.recv(other, f"q{i}")
            times.append(time.perf_counter() - t0)
        else:
            transport.recv(other, f"p{i}")
            transport.send(other, f"q{i}", small)
    out: dict[str, Any] = {"rtt_us": statistics.median(times) * 1e6 if times else None}
    for size in sizes:
        # Arrays, as protocols send them: recv_array skips the copy that recv makes.
        payload = np.frombuffer(os.urandom(size), dtype=np.uint64) if client else None
        best = best_copy = float("inf")
        for r in range(repeat):
            if client:
                t0 = time.perf_counter()
                transport.send_array(other, f"bulk{size}/{r}", payload)
                transport.recv(other, f"ack{size}/{r}")
                best = min(best, time.perf_counter() - t0)
                t0 = time.perf_counter()
                transport.send_array(other, f"copy{size}/{r}", payload)
                transport.recv(other, f"ack{size}/{r}")
                best_copy = min(best_copy, time.perf_counter() - t0)
            else:
                transport.recv_array(other, f"bulk{size}/{r}")
                transport.send(other, f"ack{size}/{r}", b"k")
                transport.recv(other, f"copy{size}/{r}")  # bytes: one extra copy
                transport.send(other, f"ack{size}/{r}", b"k")
        if client:
            out[f"{size // MB}MB_MBps"] = size / MB / best
            out[f"{size // MB}MB_MBps_recv_bytes"] = size / MB / best_copy
    return out


def _veil_round(transport: Any, size: int, repeat: int) -> float:
    """Three parties each send ``size`` bytes to both others at once; best seconds."""
    peers = [p for p in transport.parties if p != transport.me]
    payload = np.frombuffer(os.urandom(size), dtype=np.uint64)
    best = float("inf")
    for r in range(repeat):
        t0 = time.perf_counter()
        th = threading.Thread(target=transport.send_array, args=(peers[1], f"r{r}", payload))
        th.start()
        transport.send_array(peers[0], f"r{r}", payload)
        for p in peers:
            transport.recv_array(p, f"r{r}")
        th.join()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_veil(sizes: list[int], n_rtt: int, repeat: int) -> dict[str, Any]:
    """Figures for VeilQL's own TLS transport (separate processes via the launch harness)."""
    from veilql.engine.transport.launch import run_parties_tls

    res = run_parties_tls("bench.transport:_veil_target", ["a", "b"], (sizes, n_rtt, repeat),
                          timeout=120)[0]
    size = sizes[0]
    secs = max(run_parties_tls("bench.transport:_veil_round", ["a", "b", "c"],
                               (size, repeat), timeout=120))
    res[f"3party_round_{size // MB}MB_each_ms"] = secs * 1000
    return res


# ------------------------------------------------------------------------ asyncio + TLS
def _asyncio_server(creds: PartyCredentials, port_q: Any) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (n,) = struct.unpack("<Q", await reader.readexactly(8))
                await reader.readexactly(n)
                writer.write(b"k")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context(creds),
                                            limit=4 * MB)
        port_q.put(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def bench_asyncio(creds: dict[str, PartyCredentials], sizes: list[int], n_rtt: int,
                  repeat: int) -> dict[str, Any]:
    """Figures for asyncio streams over mutual TLS."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_asyncio_server, args=(creds["b"], q), daemon=True)
    proc.start()
    try:
        port = q.get(timeout=30)

        async def client() -> dict[str, Any]:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context(creds["a"]), server_hostname="b")
            msg = struct.pack("<Q", 8) + b"\0" * 8
            times = []
            for _ in range(n_rtt):
                t0 = time.perf_counter()
                writer.write(msg)
                await writer.drain()
                await reader.readexactly(1)
                times.append(time.perf_counter() - t0)
            out: dict[str, Any] = {"rtt_us": statistics.median(times) * 1e6}
            for size in sizes:
                payload = os.urandom(size)
                best = float("inf")
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    writer.write(struct.pack("<Q", size))
                    writer.write(payload)
                    await writer.drain()
                    await reader.readexactly(1)
                    best = min(best, time.perf_counter() - t0)
                out[f"{size // MB}MB_MBps"] = size / MB / best
            writer.close()
            return out

        return asyncio.run(client())
    finally:
        proc.kill()
        proc.join()


# ---------------------------------------------------------------------- Arrow Flight mTLS
def _flight_server(creds: PartyCredentials, port_q: Any) -> None:
    import pyarrow.flight as fl

    class Server(fl.FlightServerBase):  # type: ignore[misc]
        def do_action(self, context: Any, action: Any) -> list[bytes]:
            return [b"k"]

        def do_put(self, context: Any, descriptor: Any, reader: Any, writer: Any) -> None:
            reader.read_all()

    server = Server(
        "grpc+tls://127.0.0.1:0",
        tls_certificates=[fl.CertKeyPair(creds.cert_path.read_bytes(),
                                         creds.key_path.read_bytes())],
        verify_client=True, root_certificates=creds.ca_path.read_bytes(),
    )
    port_q.put(server.port)
    server.serve()


def bench_flight(creds: dict[str, PartyCredentials], sizes: list[int], n_rtt: int,
                 repeat: int) -> dict[str, Any]:
    """Figures for Arrow Flight with mutual TLS."""
    import pyarrow as pa
    import pyarrow.flight as fl

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_flight_server, args=(creds["b"], q), daemon=True)
    proc.start()
    try:
        port = q.get(timeout=30)
        a = creds["a"]
        client = fl.FlightClient(
            f"grpc+tls://127.0.0.1:{port}", tls_root_certs=a.ca_path.read_bytes(),
            cert_chain=a.cert_path.read_bytes(), private_key=a.key_path.read_bytes(),
            override_hostname="b",
        )
        action = fl.Action("ping", b"\0" * 8)
        times = []
        for _ in range(n_rtt):
            t0 = time.perf_counter()
            list(client.do_action(action))
            times.append(time.perf_counter() - t0)
        out: dict[str, Any] = {"rtt_us": statistics.median(times) * 1e6}
        schema = pa.schema([("v", pa.large_binary())])
        for size in sizes:
            table = pa.table({"v": pa.array([os.urandom(size)], type=pa.large_binary())})
            best = float("inf")
            for _ in range(repeat):
                t0 = time.perf_counter()
                writer, _reader = client.do_put(fl.FlightDescriptor.for_command(b"x"), schema)
                writer.write_table(table)
                writer.close()
                best = min(best, time.perf_counter() - t0)
            out[f"{size // MB}MB_MBps"] = size / MB / best
        client.close()
        return out
    finally:
        proc.kill()
        proc.join()


def bench_inprocess(creds: dict[str, PartyCredentials], sizes: list[int], n_rtt: int,
                    repeat: int) -> dict[str, Any]:
    """Reference figures: the in-process transport (two threads, no network, no TLS)."""
    from veilql.engine.transport.inprocess import InProcessNetwork

    net = InProcessNetwork(["a", "b"], timeout=60)
    a, b = net.endpoint("a"), net.endpoint("b")
    peer = threading.Thread(target=_veil_target, args=(b, sizes, n_rtt, repeat))
    peer.start()
    out = _veil_target(a, sizes, n_rtt, repeat)
    peer.join()
    return out


STACKS: dict[str, Callable[..., dict[str, Any]]] = {
    "inprocess": bench_inprocess,
    "veilql-tls": lambda creds, *a: bench_veil(*a),
    "asyncio-tls": bench_asyncio,
    "arrow-flight-mtls": bench_flight,
}


def main(argv: list[str] | None = None) -> int:
    """Run the selected stacks and print a table (or one JSON object with ``--json``)."""
    ap = argparse.ArgumentParser(prog="python -m bench.transport", description=__doc__.split(
        "\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--sizes", default="8,64", help="bulk message sizes in MB (default 8,64)")
    ap.add_argument("--rtt", type=int, default=2000, help="ping-pongs for latency")
    ap.add_argument("--repeat", type=int, default=3, help="bulk repetitions (best is kept)")
    ap.add_argument("--only", default=",".join(STACKS), help="comma-separated stacks")
    opts = ap.parse_args(argv)
    sizes = [int(float(s) * MB) for s in opts.sizes.split(",")]
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "stacks": {},
    }
    with tempfile.TemporaryDirectory() as d:
        creds = make_federation_certs(Path(d), ["a", "b"])
        for name in opts.only.split(","):
            try:
                results["stacks"][name] = STACKS[name](creds, sizes, opts.rtt, opts.repeat)
            except Exception as exc:  # one stack failing must not hide the others
                results["stacks"][name] = {"error": f"{type(exc).__name__}: {exc}"}
    if opts.json:
        print(json.dumps(results, indent=2))
    else:
        for name, figs in results["stacks"].items():
            print(name)
            for k, v in figs.items():
                print(f"  {k:28} {v:.1f}" if isinstance(v, float) else f"  {k:28} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
