"""The magic's options (``%config VeilMagic.<option> = value``), as in jupysql's
``SqlMagic``; the confirmation threshold is the shell's (``DEFAULT_CONFIRM_ABOVE``)."""

from __future__ import annotations

from typing import Any

from traitlets import Bool, Float, TraitError, validate
from traitlets.config import Configurable

from veilql.ui.shell.settings import DEFAULT_CONFIRM_ABOVE


class MagicSettings(Configurable):
    """The configurable options of ``VeilMagic`` (its base class)."""

    default_epsilon = Float(
        None, allow_none=True, config=True,
        help="Epsilon of a query without --epsilon or OPTIONS (None: the federation's).")
    default_delta = Float(
        None, allow_none=True, config=True,
        help="Delta of a query without --delta or OPTIONS (None: the federation's).")
    confirm_above = Float(
        DEFAULT_CONFIRM_ABOVE, allow_none=True, config=True,
        help="A query costing more epsilon than this needs --yes (as veil shell's "
             "--confirm-above); re-running a cell spends budget again (None: never ask).")
    autopandas = Bool(
        False, config=True,
        help="Return released answers as pandas DataFrames (with <col>_ci95 columns).")
    short_errors = Bool(
        True, config=True,
        help="Show VeilQL errors as one message without traceback (False: full traceback).")

    @validate("default_epsilon", "confirm_above")
    def _positive(self, proposal: Any) -> Any:
        value = proposal["value"]
        if value is not None and not value > 0:
            raise TraitError(f"{proposal['trait'].name} must be > 0 or None, got {value}")
        return value

    @validate("default_delta")
    def _delta(self, proposal: Any) -> Any:
        value = proposal["value"]
        if value is not None and not 0 <= value < 1:
            raise TraitError(f"default_delta must be in [0, 1) or None, got {value}")
        return value
