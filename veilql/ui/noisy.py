"""Noisy values as text: the value to the precision its 95% interval allows.

Shared by ``veil query``'s table format, the shell, the notebook HTML and
``print(result)`` (the implementation is ``Result.noisy_text``, so the Python API, which
must not import the UI, formats numbers the same way): ``3101 ± 3`` and ``0.083 ± 0.012``
rather than digits that are only noise.
"""

from __future__ import annotations

from typing import Any

from veilql.engine.result import Result


def noisy_text(value: Any, half: float | None) -> tuple[str, str]:
    """A noisy value and its 95% half-width as text, with as many decimals as the noise allows.

    >>> noisy_text(3101, 3.0), noisy_text(15136246.4, 2468000.0), noisy_text(0.08341, 0.01234)
    (('3101', '3'), ('15136246', '2468000'), ('0.083', '0.012'))
    """
    return Result.noisy_text(value, half)


def noisy_cell(value: Any, half: float | None) -> str:
    """``value ± half`` as one string, or just the value without an interval.

    >>> noisy_cell(1203, 2.9), noisy_cell(None, 1.0)
    ('1203 ± 3', 'NULL')
    """
    text, width = noisy_text(value, half)
    return f"{text} ± {width}" if width else text
