"""The analyst's session: compile, run the parties' nodes, reconstruct, post-process.

With ``address = "local"`` every party's node runs in a thread of this process, each
with its own connector, ledger and transport endpoint on an in-process network; the
analyst is one more endpoint that receives only budget outcomes and output shares.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from veilql.engine.clamp import clamp_result
from veilql.engine.dp import LargeEpsilonWarning
from veilql.engine.ledger.entries import check_purpose
from veilql.engine.ledger.ledger import Ledger
from veilql.engine.node import (
    ANALYST,
    PartyNode,
    Progress,
    QueryRequest,
    Refused,
    participants,
)
from veilql.engine.plan.nodes import Plan
from veilql.engine.plan_cache import PLANS_KEPT, PlanCache
from veilql.engine.remote import (
    RemoteAnalyst,
    all_remote,
    analyst_credentials,
    remote_budget,
)
from veilql.engine.result import Result, build_result
from veilql.engine.sql.parse import parse
from veilql.engine.transport.identity import certificate_name
from veilql.engine.transport.inprocess import InProcessNetwork
from veilql.engine.transport.mailbox import without_rounds
from veilql.errors import (
    BudgetExceeded,
    Interrupted,
    ProtocolError,
    UsageError,
    VeilError,
)
from veilql.policies.discovery import find_federation
from veilql.policies.loader import load_federation
from veilql.policies.model import Federation

LARGE_EPSILON = 5.0
CANCEL_WAIT = 5.0  # seconds to let cancelled local nodes settle their ledgers
BUDGET_HINT = "ask for a smaller epsilon/delta, or ask the party to raise your budget"
CLOSED_TEXT = "this session is closed; open a new one with veilql.connect(...)"


class EmbeddedModeWarning(UserWarning):
    """Every party runs inside the analyst's process: nothing is enforced against it."""


EMBEDDED_TEXT = (
    "running embedded: every party's data, seeds and ledger are in this process, so nothing "
    "here is enforced against the analyst; only `veil serve` nodes enforce the privacy "
    "guarantee (docs/SECURITY.md)")


class _Charges:
    """What the analyst endpoint heard about charges during one query."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.admitted = False  # every charged party's reservation succeeded
        self.committed: list[str] = []

    def note(self) -> str:
        """One sentence on what stays charged where."""
        charged = list(self.plan.charged)
        if not charged:
            return "nothing was charged"
        if self.committed and len(self.committed) == len(charged):
            return "the charge stands at " + ", ".join(self.committed)
        unknown = [p for p in charged if p not in self.committed]
        if self.committed:
            return ("the charge stands at " + ", ".join(self.committed) + "; "
                    + ", ".join(unknown) + " may also have kept it (see `veil budget`)")
        if self.admitted:
            return ("every party had admitted the query, so it may stay charged at "
                    + ", ".join(charged) + " (see `veil budget`)")
        return "no party had begun: nothing was charged"


class Session:
    """A connection to a federation as one analyst (``veilql.connect``).

    Use it as a context manager (``with veilql.connect(...) as s:``) or call ``close()``;
    a closed session refuses every further call with a ``UsageError``.
    """

    _closed = False  # set by close(); a class default, so __init__ needs no change

    def __init__(self, federation: Federation | str | Path | None = None,
                 analyst: str | None = None, *, timeout: float | None = None,
                 clamp: bool = False) -> None:
        if not isinstance(federation, Federation):
            federation = load_federation(find_federation(
                None if federation is None else str(federation)))
        self.federation = federation
        self.analyst = analyst
        self.timeout = timeout if timeout is not None else federation.timeout
        self.clamp = clamp  # default of sql(clamp=...): see veilql.engine.clamp
        self._nodes: dict[str, PartyNode] = {}
        self._warned_embedded = False
        self._catalog: dict[str, dict[str, list[str]]] | None = None
        self._plans = PlanCache(federation)  # a repeated query is planned once

    # -- compile ---------------------------------------------------------------------------
    def catalog(self) -> dict[str, dict[str, list[str]]]:
        """Table and column names of every local party (public inside the federation):
        as the federation's loader read them when it did (the same moment as a session
        opened at once), else from the party's connector."""
        self._check_open()
        if self._catalog is None:
            self._catalog = {
                p.name: ({t: list(cols) for t, cols in p.catalog.items()}
                         if p.catalog is not None else
                         {t: [c.name for c in cols]
                          for t, cols in self._node(p.name).connector.catalog().items()})
                for p in self.federation.parties if p.is_local
            }
        return self._catalog

    def plan(self, sql: str, epsilon: float | None = None, delta: float | None = None,
             mechanism: str = "auto") -> Plan:
        """The plan of ``sql`` (spends nothing)."""
        self._check_open()
        return self._plans.compile(sql, epsilon=epsilon, delta=delta, mechanism=mechanism,
                                   catalog=self.catalog())

    def explain(self, sql: str, epsilon: float | None = None, delta: float | None = None) -> str:
        """``veil explain``: the plan as text (spends nothing)."""
        self._check_open()
        return self.plan(sql, epsilon, delta).to_s()

    # -- run -------------------------------------------------------------------------------
    def sql(self, sql: str, epsilon: float | None = None, delta: float | None = None, *,
            dry_run: bool = False, mechanism: str = "auto",
            on_step: Progress | None = None, purpose: str | None = None,
            clamp: bool | None = None) -> Result:
        """Run ``sql`` and return the released noisy answer (charged at every party read).

        ``on_step(party, step)`` hears each party's steps as they start (for progress).
        ``purpose`` is why the analyst asks (or ``OPTIONS (purpose = '...')`` in the SQL):
        every charged party records it with the query in its ledger. A dry run spends
        nothing and returns the cost, the budget left and no rows. ``clamp`` (default: the
        session's) clamps released counts at 0 and averages to their bounds, as
        post-processing (``veilql.engine.clamp``).
        """
        self._check_open()
        analyst = self._analyst()
        stated = _stated_purpose(sql, purpose)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LargeEpsilonWarning)
            plan = self.plan(sql, epsilon, delta, mechanism)
        if plan.epsilon > LARGE_EPSILON:
            warnings.warn(
                f"epsilon {float(plan.epsilon):g} is above {LARGE_EPSILON:g}: the privacy "
                "guarantee of this single answer is weak", LargeEpsilonWarning, stacklevel=2)
        if dry_run:
            budget = {}
            for p in plan.charged:  # a node that does not answer is left out of a dry run
                try:
                    budget.update(self.budget(parties=(p,)))
                except VeilError:
                    continue
            return Result([o.name for o in plan.outputs], [], {},
                          {"epsilon": float(plan.epsilon), "delta": float(plan.delta)},
                          budget, plan, dry_run=True)
        request = QueryRequest(uuid.uuid4().hex, sql, analyst, epsilon, delta, mechanism,
                               purpose=stated)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LargeEpsilonWarning)
            result = self._run(plan, request, on_step)
        return clamp_result(result) if (self.clamp if clamp is None else clamp) else result

    def _analyst(self) -> str:
        if not self.analyst and os.environ.get("VEIL_CERT") and all(
                not p.is_local for p in self.federation.parties):
            # Remote nodes charge the analyst named by the certificate; default to it.
            self.analyst = certificate_name(os.environ["VEIL_CERT"])
        if not self.analyst:
            raise UsageError("no analyst given", "pass --analyst NAME or set VEIL_ANALYST")
        if self.analyst not in self.federation.analysts:
            known = ", ".join(sorted(self.federation.analysts)) or "none"
            raise UsageError(
                f"analyst {self.analyst!r} has no budget in {self.federation.path}",
                f"known analysts: {known}",
            )
        return self.analyst

    def _node(self, party: str) -> PartyNode:
        if party not in self._nodes:
            self._nodes[party] = PartyNode(self.federation, party)
        return self._nodes[party]

    def _run(self, plan: Plan, request: QueryRequest, on_step: Progress | None = None) -> Result:
        who = participants(plan)
        charges = _Charges(plan)
        if all_remote(self.federation, who):
            # Party nodes run elsewhere (`veil serve`): the analyst endpoint is a TLS client;
            # the nodes charge the analyst named by its certificate.
            name, creds = analyst_credentials(self.federation, self.analyst)
            with RemoteAnalyst(self.federation, who, request, creds, timeout=self.timeout,
                               on_step=on_step) as me:
                try:
                    return self._collect(me, plan, request.query_id, name, charges)
                except VeilError as exc:
                    raise _with_charges(exc, charges) from None
                except KeyboardInterrupt:
                    # Leaving the block says goodbye to every node: each settles its charge.
                    self._drain_commits(me, charges, request.query_id, 0.5)
                    raise Interrupted(f"query cancelled; {charges.note()}",
                                      "a cancelled query is charged once any party may "
                                      "have computed") from None
        if len(who) > 1 and not self._warned_embedded:
            self._warned_embedded = True
            warnings.warn(EMBEDDED_TEXT, EmbeddedModeWarning, stacklevel=4)
        net = InProcessNetwork([*who, ANALYST], timeout=self.timeout)
        errors: dict[str, tuple[float, BaseException]] = {}

        def run(party: str) -> None:
            try:
                self._node(party).serve(net.endpoint(party), request, on_step)
            except Refused:
                pass
            except BaseException as exc:  # noqa: BLE001 - reported to the analyst below
                errors[party] = (time.monotonic(), exc)
                net.mark_dead(party, _reason(exc))

        threads = [threading.Thread(target=run, args=(p,), name=f"veil-{p}", daemon=True)
                   for p in who]
        for t in threads:
            t.start()
        me = net.endpoint(ANALYST)
        try:
            result = self._collect(me, plan, request.query_id, request.analyst, charges)
        except KeyboardInterrupt:
            for p in (*who, ANALYST):
                net.mark_dead(p, "the analyst cancelled the query")
            for t in threads:
                t.join(CANCEL_WAIT)
            self._drain_commits(me, charges, request.query_id, 0.0)
            raise Interrupted(f"query cancelled; {charges.note()}",
                              "a cancelled query is charged once any party may have "
                              "computed") from None
        except VeilError as exc:
            for t in threads:
                t.join(self.timeout + 5)
            raise _with_charges(_root_cause(errors) or exc, charges) from None
        for t in threads:
            t.join(self.timeout + 5)
        root = _root_cause(errors)
        if root is not None:
            raise _with_charges(root, charges)
        return result

    def _collect(self, me: Any, plan: Plan, qid: str, analyst: str,
                 charges: _Charges | None = None) -> Result:
        """What the analyst endpoint receives, in either mode, made into the Result."""
        charges = charges or _Charges(plan)
        budget = self._collect_budget(me, plan, qid, analyst)
        charges.admitted = True
        for p in plan.charged:
            json.loads(me.recv(p, f"{qid}/committed/{p}"))
            charges.committed.append(p)
        info = None
        if plan.threshold is not None:
            owner = next(g.party for g in plan.groups if g.private)
            info = json.loads(me.recv(owner, "cells"))
        noisy = self._receive(me, plan)
        return build_result(plan, noisy, budget, info)

    @staticmethod
    def _drain_commits(me: Any, charges: _Charges, qid: str, wait: float) -> None:
        """After a cancel: pick up commit notices that had arrived but were not read."""
        for p in charges.plan.charged:
            if p in charges.committed:
                continue
            try:
                me.recv(p, f"{qid}/committed/{p}", wait)
                charges.committed.append(p)
            except (VeilError, OSError):
                continue

    def _collect_budget(self, me: Any, plan: Plan, qid: str,
                        analyst: str) -> dict[str, dict[str, float]]:
        statuses = [json.loads(me.recv(p, f"{qid}/budget/{p}")) for p in plan.charged]
        refused = [s["message"] for s in statuses if not s["ok"] and not s.get("skipped")]
        if refused:
            raise BudgetExceeded(
                f"privacy budget of analyst {analyst!r} would be exceeded at "
                + "; ".join(refused) + "; nothing was charged", BUDGET_HINT)
        return {s["party"]: {"epsilon_remaining": s["epsilon_remaining"],
                             "delta_remaining": s["delta_remaining"]} for s in statuses}

    def _receive(self, me: Any, plan: Plan) -> np.ndarray:
        if plan.mode == "local":
            return np.asarray(me.recv_array(plan.parties[0], "release"), dtype=np.int64)
        pairs = [me.recv_array(p, "release") for p in plan.compute]
        for i in range(3):  # party i sends (x_i, x_{i+1}); both copies of x_{i+1} must agree
            if not np.array_equal(pairs[i][1], pairs[(i + 1) % 3][0]):
                raise ProtocolError(
                    f"output shares of {plan.compute[i]} and {plan.compute[(i + 1) % 3]} "
                    "disagree", "a party is faulty; nothing was released")
        total = pairs[0][0] + pairs[1][0] + pairs[2][0]
        return total.astype(np.uint64).view(np.int64)

    # -- budgets ------------------------------------------------------------------------------
    def budget(self, parties: tuple[str, ...] | None = None) -> dict[str, dict[str, float]]:
        """Spent and remaining (epsilon, delta) of this analyst at each party's ledger.

        A local party's ledger is read here; a remote party (`veil serve`) is asked through
        its node, which answers only for its own ledger and only for the analyst named by
        the client certificate (so the name may differ from ``--analyst``: the certificate
        wins, as when charging).
        """
        self._check_open()
        out = {}
        names = parties or self.federation.party_names
        remote = [n for n in names if not self.federation.party(n).is_local]  # type: ignore[union-attr]
        if remote:
            _, creds = analyst_credentials(self.federation, self.analyst)
            for name in remote:
                out[name] = remote_budget(self.federation, name, creds, timeout=self.timeout)
        local = [n for n in names if n not in remote]
        if not local:
            return out
        analyst = self.federation.analysts[self._analyst()]
        for name in local:
            ledger = self.ledger(name)
            spent = ledger.spent(analyst.name) if ledger else (0, 0)
            remaining = ledger.remaining(analyst) if ledger else (analyst.epsilon, analyst.delta)
            out[name] = {"epsilon_spent": float(spent[0]), "delta_spent": float(spent[1]),
                         "epsilon_remaining": float(remaining[0]),
                         "delta_remaining": float(remaining[1])}
        return out

    def ledger(self, party: str) -> Ledger | None:
        """The ledger of local ``party``, or None when it has charged nothing yet."""
        self._check_open()
        node = self._node(party)
        path = node.state_dir() / f"{party}.jsonl"
        return Ledger(path, party) if path.exists() else None

    def close(self) -> None:
        """Close every local node's connector; later calls raise ``UsageError``. Closing
        twice is harmless."""
        self._closed = True
        nodes, self._nodes = list(self._nodes.values()), {}
        for node in nodes:
            node.close()

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError(CLOSED_TEXT, "a session is closed by close() or by leaving its "
                             "`with` block")

    def __enter__(self) -> Session:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(federation: str | Path | None = None, analyst: str | None = None,
            **kwargs: Any) -> Session:
    """Open a session on a federation file (default: discovery as in CONTRACT.md)."""
    return Session(federation, analyst or os.environ.get("VEIL_ANALYST"), **kwargs)


def _stated_purpose(sql: str, purpose: str | None) -> str:
    """The query's purpose: the ``purpose`` argument or the SQL's ``OPTIONS (purpose =
    ...)``, checked as a ledger records it (one line of plain text)."""
    written = _written_purpose(sql)
    if purpose is not None and written is not None and purpose.strip() != written.strip():
        raise UsageError(f"two purposes given: {purpose!r} and OPTIONS purpose {written!r}",
                         "state the purpose once, as an option or in the SQL")
    try:
        return check_purpose(purpose if purpose is not None else written or "")
    except ValueError as exc:
        raise UsageError(f"cannot record the purpose: {exc}",
                         "state the purpose as one line of plain text") from None


@lru_cache(maxsize=PLANS_KEPT)
def _written_purpose(sql: str) -> str | None:
    """The SQL's ``OPTIONS (purpose = ...)``: a function of the text alone, kept for the
    texts a session's plans are kept for (parsing it again took 1-2 ms of every query).
    A parse error is raised every time (exceptions are not kept)."""
    return parse(sql).purpose


def _reason(exc: BaseException) -> str:
    if isinstance(exc, VeilError):
        return f"it failed: {exc}"
    return f"it failed: internal error ({type(exc).__name__})"


def _root_cause(errors: dict[str, tuple[float, BaseException]]) -> BaseException | None:
    """The error that started a failure: the earliest one (the others follow from it).

    An unexpected exception is reported by its type only: its text may carry a party's data.
    """
    if not errors:
        return None
    party, (_, exc) = min(errors.items(), key=lambda item: item[1][0])
    if isinstance(exc, VeilError):
        return exc
    wrapped = ProtocolError(f"internal error at {party} ({type(exc).__name__})",
                            "this is a bug; please report it with the query")
    wrapped.__cause__ = exc
    return wrapped


def _with_charges(exc: BaseException, charges: _Charges) -> BaseException:
    """Add what stays charged to a failure's hint (budget refusals say it themselves), and
    drop the transport's round names, which mean nothing to an analyst."""
    if isinstance(exc, VeilError):
        exc.message = without_rounds(exc.message)
        if not isinstance(exc, BudgetExceeded) and charges.admitted:
            exc.hint = f"{charges.note()}" + (f"; {exc.hint}" if exc.hint else "")
    return exc
