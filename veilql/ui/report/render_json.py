"""The report as one JSON object, with integrity at the top.

Amounts are JSON numbers (the nearest double of the ledger's exact value, printed by Python's
shortest round-trip ``repr``) with the exact value beside them as text (``*_exact``: a
decimal when it terminates, else ``p/q``, as the ledger stores it); keys are sorted and the
indentation fixed, so the same ledgers give the same bytes. ``integrity.ok`` is the first
thing a script should read; ``anchor_report`` says what ``--anchor`` checked.

>>> from veilql.ui.report.collect import Report
>>> rep = Report("demo", "2026-01-01T00:00:00+00:00", {}, (), (), ())
>>> print(render_json(rep).splitlines()[1])
  "integrity": {
"""

from __future__ import annotations

import hashlib
import json
from fractions import Fraction
from typing import Any

from veilql.engine.ledger.money import encode
from veilql.ui.report.collect import PartyIntegrity, Report

FORMAT_VERSION = 2  # 2: purpose, identity, tables, columns, mechanism, outcome, refusals


def exact(value: Fraction | None) -> str | None:
    """An exact amount as the ledger writes it: ``"0.5"``, ``"1/3"``; None when unknown.

    >>> exact(Fraction(1, 2)), exact(Fraction(1, 3)), exact(None)
    ('0.5', '1/3', None)
    """
    return None if value is None else encode(value)


def number(value: Fraction | None) -> float | int | None:
    """An exact amount as a JSON number: ints stay ints.

    >>> number(Fraction(1, 2)), number(Fraction(3)), number(None)
    (0.5, 3, None)
    """
    if value is None:
        return None
    return int(value) if value.denominator == 1 else float(value)


def integrity_obj(report: Report) -> dict[str, Any]:
    """``{"ok", "failed", "parties"}``: the integrity section every format starts with.

    Each party has its chain's ``head`` and ``head_seq`` (when it verified), whether it is
    ``keyed``, its ``problems`` (``kind``, ``message``, ``index``, ``holder``), ``warnings``,
    and the ``anchors`` the other parties hold for it (``matches`` is False when the ledger
    no longer holds the anchored entry)."""
    return {
        "ok": report.ok,
        "failed": list(report.failed),
        "parties": {i.party: _party(i) for i in report.integrity},
    }


def _party(i: PartyIntegrity) -> dict[str, Any]:
    return {"ok": i.ok, "exists": i.exists, "entries": i.entries, "bad_index": i.bad_index,
            "problem": i.problem, "head": i.head, "head_seq": i.head_seq, "keyed": i.keyed,
            "skipped_lines": i.skipped, "path": i.path, "summary": i.summary(),
            "warnings": list(i.warnings),
            "problems": [{"kind": p.kind, "message": p.message, "index": p.index,
                          "holder": p.holder} for p in i.problems],
            "anchors": [{"holder": a.holder, "seq": a.seq, "hash": a.hash,
                         "query_id": a.query_id, "time": a.time, "matches": a.matches}
                        for a in i.anchors]}


def to_obj(report: Report) -> dict[str, Any]:
    """The report as plain JSON-ready data."""
    return {
        "report": "veilql compliance report",
        "format_version": FORMAT_VERSION,
        "federation": report.federation,
        "generated_at": report.generated_at,
        "filters": dict(report.filters),
        "integrity": integrity_obj(report),
        "budgets": [{
            "analyst": b.analyst, "party": b.party,
            "budget_epsilon": number(b.budget_epsilon), "budget_delta": number(b.budget_delta),
            "spent_epsilon": number(b.spent_epsilon), "spent_delta": number(b.spent_delta),
            "remaining_epsilon": number(b.remaining_epsilon),
            "remaining_delta": number(b.remaining_delta),
            "spent_epsilon_exact": exact(b.spent_epsilon),
            "spent_delta_exact": exact(b.spent_delta),
            "remaining_epsilon_exact": exact(b.remaining_epsilon),
            "remaining_delta_exact": exact(b.remaining_delta),
            "queries": b.queries, "verified": b.verified,
        } for b in report.budgets],
        "queries": [{
            "time": q.time, "query_id": q.query_id, "analyst": q.analyst, "sql": q.sql,
            "purpose": q.purpose, "identity": q.identity,
            "epsilon": number(q.epsilon), "delta": number(q.delta),
            "epsilon_exact": exact(q.epsilon), "delta_exact": exact(q.delta),
            "charged_epsilon": number(q.charged_epsilon),
            "charged_delta": number(q.charged_delta),
            "charged_epsilon_exact": exact(q.charged_epsilon),
            "charged_delta_exact": exact(q.charged_delta),
            "parties": list(q.parties), "charged": list(q.charged),
            "tables": list(q.tables), "columns": list(q.columns), "mechanism": q.mechanism,
            "status": q.status, "outcome": q.outcome, "statuses": dict(q.statuses),
            "reasons": list(q.reasons), "verified": q.verified,
        } for q in report.queries],
        "anchor_report": None if report.prior is None else {
            "file": report.prior.get("file"), "generated_at": report.prior.get("generated_at"),
            "heads": [{"party": h.party, "seq": h.seq, "hash": h.hash, "matches": h.matches}
                      for h in report.prior_heads],
        },
        "cumulative_epsilon": {
            analyst: {party: {"start": number(s.start),
                              "points": [[t, number(v)] for t, v in s.points]}
                      for party, s in lines.items()}
            for analyst, lines in report.series.items()
        },
    }


def render_json(report: Report) -> str:
    """The report as indented JSON text with sorted keys (newline-terminated)."""
    # sort_keys would bury "integrity" among the keys; keep the top level in reading order
    # and sort everything below it.
    top = to_obj(report)
    parts = [f"  {json.dumps(k)}: " + _indented(v) for k, v in
             sorted(top.items(), key=lambda kv: _ORDER.index(kv[0]))]
    return "{\n" + ",\n".join(parts) + "\n}\n"


_ORDER = ("integrity", "report", "format_version", "federation", "generated_at", "filters",
          "anchor_report", "budgets", "queries", "cumulative_epsilon")


def digest(report: Report) -> str:
    """SHA-256 of the report's JSON rendering: what a signature under an HTML or PDF report
    binds to (anyone can re-render the JSON from the same ledgers and compare)."""
    return hashlib.sha256(render_json(report).encode()).hexdigest()


def _indented(value: Any) -> str:
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)
    return text.replace("\n", "\n  ")
