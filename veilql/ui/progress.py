"""Progress of a running query on a terminal's stderr: "step k of n", the party, what it does.

The engine tells ``on_step(party, step)`` each step a party starts, in an analyst's words
(``node.py``: "agreeing on the plan", "reserving budget", "running its local SQL",
"secret-sharing its columns", "joining with X on shares", "aggregating on shares", "adding
noise", "aggregating and adding noise", "done"). ``Steps`` numbers them from the plan
(its mode and join stages), so the line reads::

    step 5 of 7 · bank: joining with insurer on shares … 1.4 s

``Ticker`` draws one such line and redraws its elapsed time; ``StepLine`` turns the engine's
events into that line. Both are for a terminal only (the callers check ``isatty``), and a
``StepLine`` that was closed ignores late events, so a node thread that reports after the
query ended (for instance after Ctrl-C) never draws over the next prompt.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

LOCAL_STEPS: tuple[str, ...] = ("agreeing on the plan", "reserving budget",
                                "running its local SQL", "aggregating and adding noise")
DONE = "done"


class Steps:
    """The steps of one plan, numbered as a party passes them.

    >>> from types import SimpleNamespace as NS
    >>> s = Steps(NS(mode="secure", joins=(NS(right="insurer"),)))
    >>> s.n, s.number("joining with insurer on shares"), s.number("done")
    (7, 5, 7)
    >>> Steps(NS(mode="local", joins=())).names
    ('agreeing on the plan', 'reserving budget', 'running its local SQL', 'aggregating and adding noise')
    """  # noqa: E501

    def __init__(self, plan: Any) -> None:
        if plan.mode == "local":
            self.names: tuple[str, ...] = LOCAL_STEPS
        else:
            self.names = ("agreeing on the plan", "reserving budget", "running its local SQL",
                          "secret-sharing its columns",
                          *(f"joining with {j.right} on shares" for j in plan.joins),
                          "aggregating on shares", "adding noise")

    @property
    def n(self) -> int:
        """How many steps the query takes."""
        return len(self.names)

    def number(self, step: str) -> int | None:
        """1-based number of ``step`` (``n`` for done; None for a step this plan lacks)."""
        if step == DONE:
            return self.n
        try:
            return self.names.index(step) + 1
        except ValueError:
            return None


class StepLine:
    """The engine's ``on_step(party, step)`` as one line for ``sink`` (e.g. a ``Ticker``).

    The line follows the party furthest behind (the one the analyst is waiting for), so the
    step number never runs backwards while several parties work at once.

    >>> from types import SimpleNamespace as NS
    >>> seen = []
    >>> line = StepLine(NS(mode="local", joins=()), seen.append)
    >>> line("bank", "running its local SQL"); seen[-1]
    'step 3 of 4 · bank: running its local SQL'
    >>> line.close(); line("bank", "done"); len(seen)
    1
    """

    def __init__(self, plan: Any, sink: Callable[[str], None]) -> None:
        self.steps = Steps(plan)
        self.sink = sink
        self._at: dict[str, tuple[int, str]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def __call__(self, party: str, step: str) -> None:
        """One event from the engine (any thread)."""
        with self._lock:
            if self._closed:
                return
            k = self.steps.number(step)
            last = self._at.get(party, (0, ""))[0]
            self._at[party] = (max(last, k or last), step)
            working = {p: s for p, s in self._at.items() if s[1] != DONE}
            if not working:
                return  # every party is done: the caller ends the line
            party, (k, step) = min(working.items(), key=lambda item: (item[1][0], item[0]))
            text = f"{party}: {step}"
            self.sink(f"step {k} of {self.steps.n} · {text}" if k else text)

    def close(self) -> None:
        """Ignore every later event (the query is over)."""
        with self._lock:
            self._closed = True


class Ticker:
    """Shows the current step and its elapsed time on one stderr line, redrawn 10x a second.

    Only for a terminal: ``ticker("")`` ends the step and erases the line; ``close()`` stops
    the thread. Nothing is drawn for a step shorter than ``delay`` (no flicker).
    """

    def __init__(self, stream: TextIO, delay: float = 0.3) -> None:
        self.stream = stream
        self.delay = delay
        self._text = ""
        self._since = 0.0
        self._drawn = False
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="veil-ticker", daemon=True)
        self._thread.start()

    def __call__(self, text: str) -> None:
        """Start step ``text`` ("" ends the current one and erases the line)."""
        with self._lock:
            if text and self._text and text.split(" · ")[0] == self._text.split(" · ")[0]:
                self._text = text  # the same step (another party at it): keep its clock
            else:
                self._text = text
                self._since = time.monotonic()
            if not text and self._drawn:
                self._erase()
        self._wake.set()

    def _erase(self) -> None:
        self.stream.write("\r\x1b[2K")
        self.stream.flush()
        self._drawn = False

    def _loop(self) -> None:
        while not self._stop:
            self._wake.wait(0.1)
            self._wake.clear()
            with self._lock:
                if self._stop:
                    break
                elapsed = time.monotonic() - self._since
                if self._text and elapsed >= self.delay:
                    width = max(20, terminal_width(self.stream) - 12)
                    text = self._text if len(self._text) <= width else self._text[:width - 1] + "…"
                    self.stream.write(f"\r\x1b[2K{text} … {elapsed:.1f} s")
                    self.stream.flush()
                    self._drawn = True

    def close(self) -> None:
        """Stop the thread and erase any line it drew."""
        with self._lock:
            self._stop = True
            self._text = ""
            if self._drawn:
                self._erase()
        self._wake.set()
        self._thread.join(1.0)


def terminal_width(stream: TextIO | None = None) -> int:
    """Columns of the terminal behind ``stream`` (stderr by default); 80 when unknown."""
    try:
        return os.get_terminal_size((stream or sys.stderr).fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 80


class QueryProgress:
    """``veil query``'s progress: a ``Ticker`` on stderr fed by a ``StepLine``, for one plan.

    Use as ``on_step``; ``close()`` ignores later events and erases the line.
    """

    def __init__(self, plan: Any, stream: TextIO | None = None) -> None:
        self.ticker = Ticker(stream or sys.stderr)
        self.line = StepLine(plan, self.ticker)

    def __call__(self, party: str, step: str) -> None:
        """One event from the engine."""
        self.line(party, step)

    def close(self) -> None:
        """The query is over: no more drawing."""
        self.line.close()
        self.ticker.close()
