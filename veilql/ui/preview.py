"""What a query will cost and how accurate its answer will be, before anything is spent.

The plan fixes the noise of every released column before the query runs, so the 95%
interval of a COUNT or SUM is known in advance (``engine.dp.ci95`` of the aggregate's
noise, in the column's unit, as ``engine/result.py`` computes it after the run). An AVG
divides two noisy values, so its interval depends on the released count; the preview
gives the intervals of its sum and its count instead. Variances and quantiles come from
several noisy parts, so their preview says the interval is known after release.

``veil query --dry-run``, the shell's ``.cost`` and its confirmation question, and the
notebook's ``--dry-run`` use these texts, so they read the same everywhere::

    would spend epsilon 1, delta 0; epsilon remaining before: bank 10, insurer 10;
    after: bank 9, insurer 9
    95% intervals: n ± 3, total ± 4900000
"""

from __future__ import annotations

import math
from typing import Any

from veilql.engine.dp import ci95
from veilql.engine.ledger.errors import BudgetRefused
from veilql.engine.ledger.money import to_fraction
from veilql.errors import BudgetExceeded


def round_half(h: float) -> str:
    """A half-width for reading: two significant digits, no exponent.

    >>> round_half(2.9), round_half(4936000.0), round_half(0.01234), round_half(math.inf)
    ('2.9', '4900000', '0.012', 'unbounded')
    """
    if not math.isfinite(h):
        return "unbounded"
    if h == 0:
        return "0"
    if h >= 10:
        digits = math.floor(math.log10(h)) - 1
        return str(int(round(h, -digits)))
    return f"{h:.2g}"


def _half(plan: Any, name: str) -> float:
    spec = plan.aggregate(name)
    return float(ci95(spec.noise)) / 10**spec.decimals


def accuracy_preview(plan: Any) -> list[tuple[str, str]]:
    """``(column, 95% interval)`` for every released column of ``plan``, before it runs.

    Counts and sums get ``± h``; an AVG, whose interval depends on the released count,
    gets the intervals of its sum and count; a variance or quantile, built from several
    noisy parts, says its interval is known after release.
    """
    out: list[tuple[str, str]] = []
    for o in plan.outputs:
        if o.kind in ("group", "expr"):  # expr: computed after release, from its parts
            continue
        try:
            if o.kind in ("var", "quantile"):
                # Built from several noisy parts (moments, or a histogram's buckets): the
                # interval depends on the released parts, so it is known only afterwards.
                what = "moments" if o.kind == "var" else "histogram buckets"
                out.append((o.name, f"known after release (from {len(o.aggregates)} "
                                    f"noisy {what})"))
            elif o.kind == "avg":
                num, den = o.aggregates
                out.append((o.name, f"sum ± {round_half(_half(plan, num))} over a count "
                                    f"± {round_half(_half(plan, den))}"))
            else:
                out.append((o.name, f"± {round_half(_half(plan, o.aggregates[0]))}"))
        except (AttributeError, TypeError, ValueError, KeyError):  # a plan without noise
            out.append((o.name, "unknown"))
    return out


def accuracy_text(plan: Any) -> str:
    """``95% intervals: n ± 3, total ± 4900000`` (empty when nothing is released)."""
    items = accuracy_preview(plan)
    if not items:
        return ""
    return "95% intervals: " + ", ".join(f"{c} {t}" for c, t in items)


def remaining_text(budget: dict[str, dict[str, float]], epsilon: float) -> str:
    """``epsilon remaining before: bank 10; after: bank 9`` for a query costing
    ``epsilon`` at the parties of ``budget`` (the remaining budget before it runs).

    >>> remaining_text({"bank": {"epsilon_remaining": 10.0}}, 1.0)
    'epsilon remaining before: bank 10; after: bank 9'
    """
    if not budget:
        return ""
    before = ", ".join(f"{p} {b['epsilon_remaining']:g}" for p, b in budget.items())
    after = ", ".join(f"{p} {max(0.0, b['epsilon_remaining'] - epsilon):g}"
                      for p, b in budget.items())
    return f"epsilon remaining before: {before}; after: {after}"


def dry_run_text(result: Any) -> str:
    """The whole preview of a dry-run ``Result``: cost, remaining before and after, and the
    95% interval each released column will have."""
    eps, delta = result.privacy["epsilon"], result.privacy["delta"]
    parts = [f"would spend epsilon {eps:g}, delta {delta:g}"]
    left = remaining_text(result.budget, eps)
    if left:
        parts.append(left)
    text = "; ".join(parts)
    if result.plan is not None:
        acc = accuracy_text(result.plan)
        if acc:
            text += "\n" + acc
    return text


def check_budget(session: Any, plan: Any) -> None:
    """Refuse now (``BudgetExceeded``, exit 4; nothing asked, nothing charged) a query that
    some local party's ledger cannot pay; the parties decide again, exactly, when it runs.
    Parties whose ledgers live at their own nodes are left to decide then."""
    try:
        _check(session, plan)
    except BudgetRefused as refusal:
        raise BudgetExceeded(f"{refusal.message}; nothing was charged", refusal.hint
                             ) from None


def _check(session: Any, plan: Any) -> None:
    analyst = session.federation.analysts.get(session.analyst or "")
    if analyst is None:
        return  # the run says why (no analyst, unknown analyst)
    for party in plan.charged:
        if not session.federation.party(party).is_local:
            continue
        ledger = session.ledger(party)
        if ledger is None:  # nothing charged there yet: the whole budget is left
            budget = (to_fraction(analyst.epsilon), to_fraction(analyst.delta))
            if plan.epsilon > budget[0] or plan.delta > budget[1]:
                raise BudgetRefused(party=party, analyst=analyst.name,
                                    requested=(plan.epsilon, plan.delta), remaining=budget)
            continue
        refusal = ledger.check(analyst, plan.epsilon, plan.delta)
        if refusal is not None:
            raise refusal
