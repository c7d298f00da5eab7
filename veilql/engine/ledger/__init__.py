"""VeilQL engine: ledger.

Each party's append-only, hash-chained privacy-budget ledger (``Ledger``), and the
multi-party helpers that reserve, commit and abort one query at every party it reads
(``reserve_all``, ``commit_all``, ``abort_all``). See ``docs/ledger.md``.
"""

from veilql.engine.ledger.errors import (
    BudgetRefused,
    LedgerBusy,
    LedgerCorrupt,
    LedgerError,
    PartiesRefused,
)
from veilql.engine.ledger.ledger import Charge, Ledger, Reservation, VerifyResult
from veilql.engine.ledger.multi import (
    abort_all,
    commit_all,
    ledger_path,
    open_ledgers,
    reserve_all,
    verify_all,
)

__all__ = [
    "BudgetRefused",
    "Charge",
    "Ledger",
    "LedgerBusy",
    "LedgerCorrupt",
    "LedgerError",
    "PartiesRefused",
    "Reservation",
    "VerifyResult",
    "abort_all",
    "commit_all",
    "ledger_path",
    "open_ledgers",
    "reserve_all",
    "verify_all",
]
