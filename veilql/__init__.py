"""VeilQL: SQL across organisations on secret shares, with differential privacy.

>>> import veilql
>>> callable(veilql.connect)
True

See CONTRACT.md for the Python API: ``veilql.connect(federation, analyst=...)`` returns a
session whose ``.sql(...)`` releases noisy answers charged to the analyst's budget.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from veilql.engine.session import Session


def connect(federation: Any = None, analyst: str | None = None, **kwargs: Any) -> Session:
    """Open a session on a federation file as ``analyst`` (see ``veilql.engine.session``)."""
    from veilql.engine.session import connect as _connect

    return _connect(federation, analyst, **kwargs)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext veilql``: register the ``%veil`` magic (IPython is imported only here)."""
    from veilql.ui.magic import load_ipython_extension as _load

    _load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext veilql``: close the magic's session."""
    from veilql.ui.magic import unload_ipython_extension as _unload

    _unload(ipython)


__all__ = ["__version__", "connect", "load_ipython_extension", "unload_ipython_extension"]
