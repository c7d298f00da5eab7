"""Display text shared by the HTML and PDF reports: times, amounts, status words.

>>> when("2026-11-26T20:37:05.194586+00:00")
'2026-11-26 20:37:05 UTC'
>>> amount(None), amount(Fraction(3, 2))
('n/a', '1.5')
"""

from __future__ import annotations

from datetime import UTC, datetime
from fractions import Fraction

from veilql.engine.ledger.money import fmt
from veilql.ui.report.collect import PartyIntegrity, Report

STATUS_TEXT = {
    "committed": "released",
    "aborted": "aborted, charge returned",
    "open": "OPEN: reserved, never settled (counts as spent)",
    "mixed": "MIXED: parties disagree, investigate",
}
TITLE = "Privacy budget compliance report"


def when(iso: str) -> str:
    """An ISO time from a ledger as ``YYYY-MM-DD HH:MM:SS UTC``."""
    t = datetime.fromisoformat(iso)
    t = t.astimezone(UTC) if t.tzinfo else t
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def amount(value: Fraction | None) -> str:
    """An exact amount for people (``money.fmt``); ``n/a`` when unknown."""
    return "n/a" if value is None else fmt(value)


def filters_text(report: Report) -> str:
    """``analyst alice, party bank, since ...`` or ``none`` for the report header."""
    f = report.filters
    parts = [f"analyst {f['analyst']}" if f.get("analyst") else "",
             f"party {f['party']}" if f.get("party") else "",
             f"queries since {when(f['since'])}" if f.get("since") else ""]
    return ", ".join(p for p in parts if p) or "none (every analyst, party and query)"


def integrity_banner(report: Report) -> str:
    """The one-sentence integrity verdict shown at the top of the HTML and PDF."""
    if report.ok:
        n = sum(1 for i in report.integrity if i.exists)
        if n == 0:
            return "No ledger has any entries yet: nothing has been charged to any analyst."
        held = sum(len(i.anchors) for i in report.integrity)
        text = (f"Ledger integrity verified: the hash chains of all {n} ledger(s) read are "
                "intact")
        text += (f" and hold the {held} anchor(s) the other parties keep for them."
                 if held else ".")
        unkeyed = [i.party for i in report.integrity if i.keyed is False]
        if unkeyed:
            text += (f" Warning: the ledger(s) of {', '.join(unkeyed)} are not keyed (plain "
                     "SHA-256, made before ledger keys): only anchors would reveal a rewrite.")
        return text
    failed = "; ".join(f"{i.party}: {i.failure()}" for i in report.integrity if not i.ok)
    return (f"LEDGER INTEGRITY CHECK FAILED. {failed}. The figures drawn from these ledgers "
            "are UNVERIFIED (marked as such below): a ledger was edited, truncated, "
            "rewritten, deleted or damaged. Restore it from a backup and investigate before "
            "relying on this report.")


def chain_status(i: PartyIntegrity) -> str:
    """The status word of one ledger's check: ``ok``, ``MISSING`` or ``FAILED``."""
    if i.ok:
        return "ok"
    return "MISSING" if i.problems and i.problems[0].kind == "missing" else "FAILED"


def anchors_text(i: PartyIntegrity) -> str:
    """The anchors others hold for this ledger, e.g. ``insurer: entry 12 (matches)``."""
    verdict = {True: "matches", False: "DOES NOT MATCH", None: "not checked"}
    return "; ".join(f"{a.holder}: entry {a.seq} ({verdict[a.matches]})" for a in i.anchors)


def counts(report: Report) -> dict[str, int]:
    """Queries by status, for the summary line."""
    out = {"queries": len(report.queries)}
    for s in ("committed", "aborted", "open", "mixed"):
        out[s] = sum(1 for q in report.queries if q.status == s)
    return out
