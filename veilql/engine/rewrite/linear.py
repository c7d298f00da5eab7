"""Split arithmetic over several parties' columns into one part per party.

A cross-party comparison ``l.amount > 2 * p.monthly_txn_amount + 100`` becomes
``bank: l.amount`` and ``payments: -(2 * p.monthly_txn_amount) - 100`` compared with 0:
each party computes its own part locally, and only the sum is computed on shares. An
aggregate's argument may also be a product of one factor per party (``split_product``).
The functions live in ``veilql.engine.sql.parts``, since the binder refuses what neither
shape takes before any plan is made; this module is the rewrite passes' view of them.

>>> parts = split_linear(exp.condition("a.x - 2 * b.y + 3"), lambda alias: alias.upper())
>>> {k: v.sql() for k, v in parts.items()}
{'A': 'a.x', 'B': '-(2 * b.y)', None: '3'}
"""

from __future__ import annotations

from sqlglot import exp

from veilql.engine.sql.parts import Parts, is_linear, split_linear, split_product

__all__ = ["Parts", "exp", "is_linear", "split_linear", "split_product"]
