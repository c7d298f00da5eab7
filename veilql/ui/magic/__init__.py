"""The Jupyter magic: ``%load_ext veilql``, ``%veil connect``, ``%%veil`` (docs/reference.md).

::

    %load_ext veilql
    %veil connect [FEDERATION] [--analyst NAME] [--timeout S]
    %veil budget                     # spent and remaining budget at every party
    %veil plot [COLUMN] [--x GROUP] [--result NAME]   # error bars of the last answer
    %veil close
    %%veil [--epsilon E] [--delta D] [--purpose TEXT] [--dry-run] [--explain] [--yes] [NAME <<]
    [NAME <<] SELECT ... WHERE region = '{{region}}'
    %veil [options] [NAME <<] SELECT ...     # the same on one line

A query returns a ``NotebookResult`` whose HTML shows ``value ± ci95``, the cost and the
budget left; ``NAME << SELECT ...`` stores it in the variable ``NAME`` instead, and
``{{name}}`` inserts a notebook variable (jupysql's syntax). Options come from traitlets,
so ``%config VeilMagic.default_epsilon = 0.5`` works, as in jupysql's ``SqlMagic``.

One module per job: ``magics`` (the magic), ``args`` (parsing lines and variables),
``render`` (what is displayed: results, plans, budgets, plots), ``settings`` (the options).
"""

from __future__ import annotations

from typing import Any

from veilql.ui.magic.args import (
    ConnectArgs,
    PlotArgs,
    QueryArgs,
    expand_variables,
    parse_connect,
    parse_plot,
    parse_query,
)
from veilql.ui.magic.magics import VeilMagic, to_ipython_error
from veilql.ui.magic.render import BudgetTable, NotebookResult, PlanText, plot
from veilql.ui.magic.settings import MagicSettings


def load_ipython_extension(ipython: Any) -> None:
    """Register ``VeilMagic`` (``%load_ext veilql``)."""
    ipython.register_magics(VeilMagic)


def unload_ipython_extension(ipython: Any) -> None:
    """Close the magic's session (``%unload_ext veilql``)."""
    magic = ipython.magics_manager.registry.get("VeilMagic")
    if magic is not None and magic.session is not None:
        magic.session.close()
        magic.session = None


__all__ = [
    "BudgetTable",
    "ConnectArgs",
    "MagicSettings",
    "NotebookResult",
    "PlanText",
    "PlotArgs",
    "QueryArgs",
    "VeilMagic",
    "expand_variables",
    "load_ipython_extension",
    "parse_connect",
    "parse_plot",
    "parse_query",
    "plot",
    "to_ipython_error",
    "unload_ipython_extension",
]
