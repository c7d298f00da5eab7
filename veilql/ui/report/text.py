"""Display text shared by the HTML and PDF reports: times, amounts, status words.

>>> when("2026-11-26T20:37:05.194586+00:00")
'2026-11-26 20:37:05 UTC'
>>> amount(None), amount(Fraction(3, 2)), amount(Fraction(1, 3))
('n/a', '1.5', '≈0.3333')
"""

from __future__ import annotations

from datetime import UTC, datetime
from fractions import Fraction

from veilql.engine.ledger.money import fmt
from veilql.ui.report.collect import PartyIntegrity, Report

STATUS_TEXT = {
    "committed": "released",
    "aborted": "aborted, charge returned",
    "refused": "refused by a party's budget, nothing charged",
    "open": "OPEN: reserved, never settled (counts as spent)",
    "mixed": "MIXED: parties disagree, investigate",
}
#: What each outcome means, for the officer (``QueryRow.outcome``).
OUTCOME_TEXT = {
    "released": "every party admitted it; the charge stands and the answer was released",
    "over budget": "a party's ledger refused it for lack of budget; nothing was charged",
    "refused": "another party refused it; the charge was given back",
    "cancelled": "cancelled before any party read data; the charge was given back",
    "failed": "failed before any party read data; the charge was given back",
    "open": "reserved and never settled: counts as spent, investigate",
    "mixed": "the parties disagree on how it ended: investigate",
}
IDENTITY_TEXT = {
    "certificate": "certificate (checked by the node)",
    "self-asserted": "self-asserted (embedded mode)",
    "mixed": "MIXED (certificate at some parties only)",
    None: "not recorded",
}
MAX_EXACT = 12  # characters: longer exact amounts are shown rounded, marked with ≈
TITLE = "Privacy budget compliance report"


def when(iso: str) -> str:
    """An ISO time from a ledger as ``YYYY-MM-DD HH:MM:SS UTC``."""
    t = datetime.fromisoformat(iso)
    t = t.astimezone(UTC) if t.tzinfo else t
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def amount(value: Fraction | None) -> str:
    """An amount for people: exact (``money.fmt``) when that is short, else rounded to four
    significant digits and marked ``≈`` (the JSON keeps the exact value); ``n/a`` when
    unknown."""
    if value is None:
        return "n/a"
    text = fmt(value)
    if len(text) <= MAX_EXACT and "/" not in text:
        return text
    return f"≈{float(value):.4g}"


def readable(value: Fraction | None) -> str:
    """An amount for a spreadsheet cell: exact when short, else the nearest double (always
    a number a spreadsheet reads); empty when unknown.

    >>> readable(Fraction(1, 2)), readable(Fraction(1, 3)), readable(None)
    ('0.5', '0.3333333333333333', '')
    """
    if value is None:
        return ""
    text = fmt(value)
    return text if len(text) <= MAX_EXACT and "/" not in text else repr(float(value))


def reasons_text(q: object) -> list[str]:
    """A query's recorded reasons without repeating its outcome (``over budget: bank: ...``
    under the outcome ``over budget`` reads ``bank: ...``)."""
    outcome = getattr(q, "outcome", "")
    return [r.removeprefix(f"{outcome}: ") for r in getattr(q, "reasons", ())]


def identity_text(identity: str | None) -> str:
    """How the analyst was identified, for people."""
    return IDENTITY_TEXT.get(identity, identity or "not recorded")


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
    """Queries by status and by outcome, for the summary line."""
    out = {"queries": len(report.queries)}
    for s in ("committed", "aborted", "refused", "open", "mixed"):
        out[s] = sum(1 for q in report.queries if q.status == s)
    for o in OUTCOME_TEXT:
        out[o] = sum(1 for q in report.queries if q.outcome == o)
    return out


def analyst_summary(report: Report) -> list[dict[str, object]]:
    """Per analyst: the budget, the most spent at any party (the party that binds), the
    least remaining, and how many queries were released and refused."""
    out = []
    for name in dict.fromkeys(b.analyst for b in report.budgets):
        rows = [b for b in report.budgets if b.analyst == name]
        top = max(rows, key=lambda b: b.spent_epsilon)
        low = min(rows, key=lambda b: (b.remaining_epsilon is None, b.remaining_epsilon or 0))
        mine = [q for q in report.queries if q.analyst == name]
        out.append({
            "analyst": name, "budget_epsilon": top.budget_epsilon,
            "spent_epsilon": top.spent_epsilon, "spent_at": top.party,
            "remaining_epsilon": low.remaining_epsilon, "remaining_at": low.party,
            "released": sum(1 for q in mine if q.outcome == "released"),
            "refused": sum(1 for q in mine if q.outcome in ("over budget", "refused")),
            "verified": all(b.verified for b in rows),
        })
    return out


def party_summary(report: Report) -> list[dict[str, object]]:
    """Per party: the epsilon charged there over every analyst, and the queries it
    charged and refused."""
    out = []
    for i in report.integrity:
        rows = [b for b in report.budgets if b.party == i.party]
        here = [q for q in report.queries if i.party in q.parties]
        out.append({
            "party": i.party, "analysts": len(rows),
            "spent_epsilon": sum((b.spent_epsilon for b in rows), Fraction(0)),
            "charged": sum(1 for q in here if i.party in q.charged),
            "refused": sum(1 for q in here if dict(q.statuses).get(i.party) == "refused"),
            "verified": i.ok,
        })
    return out


def prior_text(report: Report) -> str:
    """What the ``--anchor`` check found, in one sentence (empty without ``--anchor``)."""
    if report.prior is None:
        return ""
    when = report.prior.get("generated_at") or "an earlier report"
    if not report.prior_heads:
        return f"The earlier report of {when} recorded no ledger head read here."
    bad = [h.party for h in report.prior_heads if h.matches is False]
    if bad:
        return (f"The heads the report of {when} recorded are NOT all in today's ledgers: "
                f"{', '.join(bad)} changed since.")
    held = ", ".join(f"{h.party} entry {h.seq}" for h in report.prior_heads)
    return f"Every head the report of {when} recorded is still in today's ledgers ({held})."
