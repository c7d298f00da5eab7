"""Compliance reports (``veil report``) built from every party's privacy-budget ledger.

``collect`` reads the ledgers into a ``Report`` (budgets, queries, integrity, the cumulative
epsilon series); ``render_json``, ``render_csv``, ``render_html`` and ``render_pdf`` each turn
that one model into one format, so every format shows the same figures. ``command`` holds the
click command.
"""

from veilql.ui.report.collect import (
    BudgetRow,
    PartyIntegrity,
    QueryRow,
    Report,
    collect,
    collect_ledgers,
    parse_since,
)

__all__ = [
    "BudgetRow",
    "PartyIntegrity",
    "QueryRow",
    "Report",
    "collect",
    "collect_ledgers",
    "parse_since",
]
