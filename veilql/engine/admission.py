"""Admission: the budget chain every charged party runs before a query may release.

A party reserves the plan's cost in its own ledger only after every earlier charged party
admitted the query, tells every participant and the analyst the outcome, and stops everywhere
if any party refused (``reserve``). Once all admitted, each commits and announces its ledger
head (``announce_commit``); a compute party sends no output share before every other charged
party's commit notice has arrived (``await_commits``), so nothing is released that was not
charged. ``engine/node.py`` calls these in the query's lifecycle.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from veilql.engine.ledger.errors import BudgetRefused
from veilql.engine.operators import ANALYST
from veilql.engine.plan.nodes import Plan
from veilql.engine.request import QueryRequest, participants
from veilql.engine.transport.base import Transport
from veilql.errors import ProtocolError

if TYPE_CHECKING:
    from veilql.engine.ledger.ledger import Reservation
    from veilql.engine.node import PartyNode


class Refused(Exception):
    """This node stopped because some party refused the budget (the analyst reports it)."""


def reserve(node: PartyNode, transport: Transport, plan: Plan,
            request: QueryRequest) -> Reservation | None:
    """Reserve at this party's ledger if the plan reads its tables, and exchange the
    outcome with every participant and the analyst; stop everywhere if any refused.

    Admission is a chain in ``plan.charged`` order: a party reserves only after every
    earlier one admitted the query (a later one is not asked once one refused). So
    the parties admit concurrent queries of one analyst in the same order, and a
    party that waits for its open reservations to settle (``Ledger.reserve(wait=)``)
    waits only on queries that every earlier party already admitted: no cycle, and a
    budget for k queries releases exactly k however many race for it.

    The reservation is aborted here on any failure of the exchange (a peer that died,
    a refusal elsewhere), so no reservation is ever left open by a live node. A query
    only this party takes part in has nobody else to wait for: its reserve and commit are
    appended at once (``Ledger.reserve(commit=True)``, one durable write), and the
    reservation, committed, stands whatever happens next.
    """
    me = node.party.name
    tag = f"{request.query_id}/budget"
    reservation = None
    refused = False
    try:
        for p in plan.charged:
            if p != me:
                theirs = json.loads(transport.recv(p, f"{tag}/{p}"))
                refused = refused or not theirs["ok"]
                continue
            if refused:
                status = {"party": me, "ok": False, "skipped": True,
                          "message": f"{me}: not asked (another party refused first)"}
            else:
                status = _try_reserve(node, plan, request,
                                      commit=list(participants(plan)) == [me])
                reservation = status.pop("reservation")
            payload = json.dumps(status).encode()
            for other in participants(plan):
                if other != me:
                    transport.send(other, f"{tag}/{me}", payload)
            transport.send(ANALYST, f"{tag}/{me}", payload)
            refused = refused or not status["ok"]
    except BaseException:
        if reservation is not None and not reservation.committed:
            node.ledger.abort(reservation, "the budget exchange failed")
        raise
    if refused:
        if reservation is not None and not reservation.committed:
            node.ledger.abort(reservation, "another party refused the query")
        raise Refused()
    return reservation


def _try_reserve(node: PartyNode, plan: Plan, request: QueryRequest, *,
                 commit: bool = False) -> dict:
    """Reserve the plan's cost for the analyst (and commit it at once with ``commit``);
    the outcome as a status message."""
    me = node.party.name
    analyst = node.federation.analysts.get(request.analyst)
    if analyst is None:
        return {"party": me, "ok": False, "reservation": None,
                "message": f"{me}: analyst {request.analyst!r} has no budget here"}
    tables = [t for step in plan.steps if step.party == me for t in step.tables]
    # Waiting for open reservations to settle is silence to the peers down the chain:
    # keep the chain's total wait inside their timeout.
    wait = node.federation.timeout / (len(plan.charged) + 1)
    try:
        reservation = node.ledger.reserve(
            analyst, plan.epsilon, plan.delta, query_id=request.query_id,
            sql=request.sql, tables=tables, wait=wait, purpose=request.purpose,
            identity=request.identity, record_refusal=True, commit=commit)
    except BudgetRefused as refusal:
        return {"party": me, "ok": False, "reservation": None, "message": refusal.detail()}
    eps, delta = node.ledger.remaining(analyst)
    return {"party": me, "ok": True, "reservation": reservation,
            "epsilon_remaining": float(eps), "delta_remaining": float(delta)}


def announce_commit(node: PartyNode, transport: Transport, plan: Plan, qid: str) -> None:
    """Tell every participant and the analyst that this party committed its charge,
    with its ledger's head (which the others keep as an anchor)."""
    me = node.party.name
    seq, digest = node.ledger.head()
    payload = json.dumps({"party": me, "seq": seq, "hash": digest}).encode()
    for p in participants(plan):
        if p != me:
            transport.send(p, f"{qid}/committed/{me}", payload)
    transport.send(ANALYST, f"{qid}/committed/{me}", payload)


def await_commits(node: PartyNode, transport: Transport, plan: Plan, qid: str) -> None:
    """Before any output share leaves: every other charged party has committed.

    Each commit carries that party's ledger head; this party keeps it as an anchor.
    """
    me = node.party.name
    for p in plan.charged:
        if p == me:
            continue
        theirs = json.loads(transport.recv(p, f"{qid}/committed/{p}"))
        if theirs.get("party") != p:
            raise ProtocolError(f"party {p!r} sent a malformed commit notice")
        node.ledger.record_anchor(p, int(theirs["seq"]), str(theirs["hash"]), qid)
