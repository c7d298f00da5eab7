"""Run one function in several OS processes connected by ``TlsTransport`` on loopback.

``run_parties_tls("pkg.module:function", ["a", "b", "c"], args)`` starts one Python process
per party (``python -m veilql.engine.transport.launch``), gives each a fresh certificate
from a throw-away federation CA and a free loopback port, connects them with mutual TLS,
calls ``function(transport, *args)`` in every process and returns the results in party
order. Tests use it to run MPC protocols over the real network stack; ``kill`` SIGKILLs a
party some time after all are connected, to check that the others fail cleanly.

Arguments and results cross process boundaries by pickle (they are produced and consumed
by the same trusted test or benchmark). Exceptions come back as the same class with the same
attributes (``party``, ``hint``, ...), plus the child's traceback text in ``remote_traceback``.
"""

from __future__ import annotations

import importlib
import os
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veilql.engine.transport.certs import PartyCredentials, make_federation_certs
from veilql.errors import PartyUnavailable, ProtocolError, UsageError

_READY, _DONE = b"R", b"D"
# Set in every party process: a party process that starts parties itself (typically a script
# without an ``if __name__ == "__main__":`` guard, re-run on import) would multiply forever.
_CHILD_ENV = "VEIL_LAUNCH_PARTY"


@dataclass
class PartyOutcome:
    """What one party process did: its return value or error, and its traffic."""

    party: str
    ok: bool = False
    value: Any = None
    error: BaseException | None = None
    killed: bool = False
    bytes_sent: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0  # time spent in the target function (after connection set-up)


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports that were free a moment ago on ``host``."""
    socks = [socket.create_server((host, 0)) for _ in range(n)]
    try:
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def resolve_target(target: str) -> Callable[..., Any]:
    """Import ``"package.module:function"``."""
    module, sep, name = target.partition(":")
    if not sep or not module or not name:
        raise UsageError(f"bad target {target!r}", "write it as 'package.module:function'")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _pack_error(exc: BaseException) -> tuple[str, str, tuple[Any, ...], dict[str, Any], str]:
    state = {k: v for k, v in vars(exc).items() if _picklable(v)}
    args = tuple(a for a in exc.args if _picklable(a))
    tb = "".join(traceback.format_exception(exc))
    return type(exc).__module__, type(exc).__qualname__, args, state, tb


def _picklable(value: Any) -> bool:
    try:
        pickle.dumps(value)
        return True
    except Exception:  # anything unpicklable is left out
        return False


def _unpack_error(party: str, packed: tuple[str, str, tuple[Any, ...], dict[str, Any], str],
                  ) -> BaseException:
    module, qualname, args, state, tb = packed
    try:
        cls: Any = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        exc = cls.__new__(cls)
        exc.args = args
        exc.__dict__.update(state)
    except Exception:  # fall back to a plain protocol error
        exc = ProtocolError(f"party {party!r} failed: {qualname}: {args}")
    exc.remote_traceback = tb
    return exc


def run_parties_tls_detailed(
    target: str, parties: Sequence[str] = ("p0", "p1", "p2"), args: Sequence[Any] = (), *,
    party_args: Mapping[str, Sequence[Any]] | None = None, timeout: float = 30.0,
    connect_timeout: float = 20.0, kill: Mapping[str, float] | None = None,
    transcript_dir: str | None = None, wall_timeout: float | None = None,
    env: Mapping[str, str] | None = None,
) -> list[PartyOutcome]:
    """Like ``run_parties_tls`` but returns every party's ``PartyOutcome``, errors included.

    ``kill`` maps a party to a delay in seconds after all parties are connected, at which
    the harness SIGKILLs it. ``wall_timeout`` bounds the whole run (default: connect
    timeout + 4 x timeout + 30 s); parties still running then are killed and get a
    ``PartyUnavailable`` error.
    """
    if os.environ.get(_CHILD_ENV):
        raise UsageError(
            "run_parties_tls was called inside a party process it started",
            "guard the script's top-level code with `if __name__ == \"__main__\":` "
            "so that importing the target does not start parties again",
        )
    parties = list(parties)
    if len(set(parties)) != len(parties):
        raise UsageError(f"party names repeat: {parties}", "give every party its own name")
    limit = wall_timeout if wall_timeout is not None else connect_timeout + 4 * timeout + 30
    workdir = Path(tempfile.mkdtemp(prefix="veil-launch-"))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        creds = make_federation_certs(workdir, parties)
        ports = free_ports(len(parties))
        addresses = {p: f"127.0.0.1:{port}" for p, port in zip(parties, ports, strict=True)}
        session = uuid.uuid4().hex
        child_env = {**os.environ, **(env or {}), _CHILD_ENV: "1"}
        for p in parties:
            spec = {
                "target": target, "me": p, "addresses": addresses, "creds": creds[p],
                "session_id": session, "timeout": timeout, "connect_timeout": connect_timeout,
                "transcript_dir": transcript_dir, "sys_path": list(sys.path),
                "args": tuple(party_args[p]) if party_args and p in party_args else tuple(args),
            }
            proc = subprocess.Popen(
                [sys.executable, "-m", "veilql.engine.transport.launch"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=child_env,
            )
            assert proc.stdin is not None
            proc.stdin.write(pickle.dumps(spec))
            proc.stdin.close()
            procs[p] = proc
        return _collect(procs, kill or {}, time.monotonic() + limit)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _collect(procs: dict[str, subprocess.Popen[bytes]], kill: Mapping[str, float],
             deadline: float) -> list[PartyOutcome]:
    ready = {p: threading.Event() for p in procs}
    raw: dict[str, bytes | None] = {p: None for p in procs}

    def reader(p: str) -> None:
        out = procs[p].stdout
        assert out is not None
        first = out.read(1)
        if first == _READY:
            ready[p].set()
            first = b""
        raw[p] = first + out.read()

    threads = [threading.Thread(target=reader, args=(p,), daemon=True) for p in procs]
    for t in threads:
        t.start()
    killed: set[str] = set()
    if kill:
        for p in procs:
            ready[p].wait(max(0.0, deadline - time.monotonic()))
        start = time.monotonic()
        for p, delay in sorted(kill.items(), key=lambda kv: kv[1]):
            time.sleep(max(0.0, start + delay - time.monotonic()))
            procs[p].kill()
            killed.add(p)
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    outcomes = []
    for p, proc in procs.items():
        o = PartyOutcome(p, killed=p in killed)
        data = raw[p]
        if p in killed:
            o.error = PartyUnavailable(p, f"party {p!r} was killed by the harness")
        elif data and data[:1] == _DONE:
            status, value, sent, secs = pickle.loads(data[1:])
            o.ok, o.bytes_sent, o.seconds = status == "ok", sent, secs
            if o.ok:
                o.value = value
            else:
                o.error = _unpack_error(p, value)
        else:
            if proc.poll() is None:
                proc.kill()
                o.error = PartyUnavailable(p, f"party {p!r} did not finish in time")
            else:
                o.error = PartyUnavailable(
                    p, f"party {p!r} exited with code {proc.wait()} and no result")
        outcomes.append(o)
    return outcomes


def run_parties_tls(
    target: str, parties: Sequence[str] = ("p0", "p1", "p2"), args: Sequence[Any] = (), *,
    return_exceptions: bool = False, **options: Any,
) -> list[Any]:
    """Call ``target(transport, *args)`` in one process per party; results in party order.

    ``target`` is ``"package.module:function"``. Options are those of
    ``run_parties_tls_detailed``. Unless ``return_exceptions``, the first failure is raised,
    preferring a party's own error over the ``PartyUnavailable`` it caused at the others.
    """
    outcomes = run_parties_tls_detailed(target, parties, args, **options)
    if return_exceptions:
        return [o.value if o.ok else o.error for o in outcomes]
    errors = [o.error for o in outcomes if o.error is not None and not o.killed]
    if errors:
        root = [e for e in errors if not isinstance(e, PartyUnavailable)]
        raise (root or errors)[0]  # type: ignore[misc]
    return [o.value for o in outcomes]


def ping_ring(transport: Any, rounds: int = 3, size: int = 16) -> list[int]:
    """A tiny three-party protocol for harness tests: pass a counter around the ring."""
    from veilql.engine.transport.tls import TlsTransport

    assert isinstance(transport, TlsTransport)
    parties = transport.parties
    i = parties.index(transport.me)
    nxt, prv = parties[(i + 1) % len(parties)], parties[(i - 1) % len(parties)]
    seen = []
    for r in range(rounds):
        transport.send(nxt, f"ping/{r}", struct.pack("<Q", i + r) + b"\0" * size)
        (v,) = struct.unpack_from("<Q", transport.recv(prv, f"ping/{r}"))
        seen.append(v)
    return seen


def _child() -> None:
    # fd 1 carries the harness protocol; anything the target prints goes to stderr.
    proto = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    spec = pickle.load(sys.stdin.buffer)
    for p in reversed(spec["sys_path"]):
        if p not in sys.path:
            sys.path.insert(0, p)
    from veilql.engine.transport.tls import TlsTransport

    sent: dict[str, int] = {}
    secs = 0.0
    try:
        fn = resolve_target(spec["target"])
        creds: PartyCredentials = spec["creds"]
        with TlsTransport(
            spec["me"], spec["addresses"], creds, session_id=spec["session_id"],
            timeout=spec["timeout"], connect_timeout=spec["connect_timeout"],
            transcript_dir=spec["transcript_dir"],
        ) as transport:
            proto.write(_READY)
            t0 = time.perf_counter()
            value = fn(transport, *spec["args"])
            secs = time.perf_counter() - t0
            sent = dict(transport.bytes_sent)
        outcome: tuple[Any, ...] = ("ok", value, sent, secs)
    except BaseException as exc:  # reported to the parent
        outcome = ("err", _pack_error(exc), sent, secs)
    try:
        data = pickle.dumps(outcome)
    except Exception as exc:  # unpicklable result
        data = pickle.dumps(("err", _pack_error(exc), sent, secs))
    proto.write(_DONE + data)
    proto.close()


if __name__ == "__main__":
    _child()
