"""VeilQL engine: ledger.

Each party's append-only privacy-budget ledger (``Ledger``), hash-chained under the party's
secret ledger key (``keys``), with the anchors it holds of the other parties' ledgers
(``anchors``); the multi-party helpers that reserve, commit and abort one query at every
party it reads (``reserve_all``, ``commit_all``, ``abort_all``); and ``verify_all``, which
checks every ledger against its own chain and against the anchors the others hold for it.
See ``docs/ledger.md``.
"""

from veilql.engine.ledger.anchors import Anchor, AnchorBook, anchors_path
from veilql.engine.ledger.chain import PROBLEM_KINDS, Problem
from veilql.engine.ledger.errors import (
    BudgetRefused,
    LedgerBusy,
    LedgerCorrupt,
    LedgerError,
    PartiesRefused,
)
from veilql.engine.ledger.keys import key_path, load_key
from veilql.engine.ledger.ledger import Charge, Ledger, Reservation, VerifyResult
from veilql.engine.ledger.multi import (
    DEFAULT_MAX_OPEN_AGE,
    abort_all,
    commit_all,
    ledger_path,
    open_ledgers,
    reserve_all,
    verify_all,
)

__all__ = [
    "DEFAULT_MAX_OPEN_AGE",
    "PROBLEM_KINDS",
    "Anchor",
    "AnchorBook",
    "BudgetRefused",
    "Charge",
    "Ledger",
    "LedgerBusy",
    "LedgerCorrupt",
    "LedgerError",
    "PartiesRefused",
    "Problem",
    "Reservation",
    "VerifyResult",
    "abort_all",
    "anchors_path",
    "commit_all",
    "key_path",
    "ledger_path",
    "load_key",
    "open_ledgers",
    "reserve_all",
    "verify_all",
]
