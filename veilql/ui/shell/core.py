"""The shell's core: input lines in, ``Reply`` objects out, no terminal.

Multi-line statements run when a ``;`` ends them; dot commands (``commands.py``) run on
their own line, also after an unfinished statement (which stays pending). Before a query
spends anything the shell prices it: a query the budget cannot pay is refused at once
(exit 4, nothing asked), and one above the confirmation threshold asks first, showing the
cost, the budget remaining before and after, and the 95% interval each released column
will have.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from veilql.engine.clamp import note as clamp_note
from veilql.engine.dp import LargeEpsilonWarning
from veilql.engine.result import Result
from veilql.engine.session import Session
from veilql.engine.sql.parse import parse
from veilql.errors import UsageError, VeilError
from veilql.ui.preview import accuracy_preview, accuracy_text, check_budget, remaining_text
from veilql.ui.progress import StepLine
from veilql.ui.shell.render import render_listing, render_result
from veilql.ui.shell.reply import Reply
from veilql.ui.shell.settings import Settings
from veilql.ui.shell.statements import is_command, split_statements

MAX_SCRIPT_DEPTH = 16  # \i inside \i ... (a script that reads itself stops here)


class Shell:
    """The shell's state and its line handler, independent of any terminal.

    ``confirm`` asks the user whether to run a query above the confirmation threshold
    (``None``: nobody to ask, so such a query is refused with a hint); ``status``
    receives progress text ("" when a step ends), for a front-end to show. ``sink`` is the
    file data goes to after ``\\o FILE`` (None: stdout).
    """

    def __init__(self, session: Session, *, settings: Settings | None = None,
                 confirm: Callable[[str], bool] | None = None, yes: bool = False,
                 status: Callable[[str], None] | None = None) -> None:
        self.session = session
        self.settings = settings or Settings()
        self.confirm = confirm
        self.yes = yes
        self.status = status or (lambda _text: None)
        self.buffer: list[str] = []
        self.sink: TextIO | None = None
        self.sink_path: Path | None = None
        self._depth = 0
        self._left: float | None = None
        self._left_known = False

    # -- input ------------------------------------------------------------------------------
    @property
    def pending(self) -> bool:
        """Whether part of a statement is waiting for its ``;``."""
        return bool(self.buffer)

    def handle_line(self, line: str) -> list[Reply]:
        """Feed one line (or a pasted block); return the replies of what it completed."""
        return list(self.feed(line))

    def feed(self, text: str) -> Iterator[Reply]:
        """Like ``handle_line`` but yields each reply as soon as it is ready.

        ``text`` may hold several lines (a pasted block). After an error, the rest of the
        input given so far is dropped: one statement's failure should not run the next one
        of the same block blind.
        """
        for line in text.split("\n"):
            for reply in self._feed_line(line):
                yield reply
                if reply.error is not None or reply.quit:
                    self.buffer = []
                    return

    def _feed_line(self, line: str) -> Iterator[Reply]:
        if is_command(line, "\n".join(self.buffer)):
            reply = self._guard(lambda: self.command(line.strip()))
            if reply.script is not None:
                yield from self._run_script(reply.script)
            else:
                yield reply
            return
        self.buffer.append(line)
        done, rest = split_statements("\n".join(self.buffer))
        self.buffer = [rest] if rest else []
        for stmt in done:
            yield self._guard(lambda s=stmt: self.statement(s))

    def _run_script(self, text: str) -> Iterator[Reply]:
        """Run the lines of a script (``\\i``) with their own statement buffer; a statement
        left without ``;`` at its end runs too. An error stops the script."""
        if self._depth >= MAX_SCRIPT_DEPTH:
            yield Reply(error=UsageError(
                f"scripts nested {MAX_SCRIPT_DEPTH} deep (does a script read itself?)",
                "remove the \\i line that reads the script again"))
            return
        saved, self.buffer = self.buffer, []
        self._depth += 1
        try:
            failed = False
            for reply in self.feed(text):
                yield reply
                if reply.error is not None or reply.quit:
                    failed = True
                    break
            if not failed:
                yield from self.finish()
        finally:
            self._depth -= 1
            self.buffer = saved

    def finish(self) -> list[Reply]:
        """At end of input: run a last statement that lacks its ``;``."""
        if not self.buffer:
            return []
        text, self.buffer = "\n".join(self.buffer), []
        return [self._guard(lambda: self.statement(text))]

    def reset(self) -> None:
        """Drop a half-typed statement (Ctrl-C), and re-read the budget for the prompt."""
        self.buffer = []
        self._left_known = False

    def _guard(self, step: Callable[[], Reply]) -> Reply:
        try:
            return step()
        except VeilError as err:
            return Reply(error=err)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - the shell reports a bug and carries on
            err = VeilError(f"internal error: {type(exc).__name__}: {exc}",
                            "this is a bug; please report it with the input that caused it")
            err.__cause__ = exc
            return Reply(error=err)
        finally:
            self.status("")

    # -- output -----------------------------------------------------------------------------
    def write_out(self, text: str, default: Callable[[str], None]) -> None:
        """Send data ``text`` to the ``\\o`` file, or to ``default`` (stdout, a pager)."""
        if self.sink is not None:
            self.sink.write(text + "\n")
            self.sink.flush()
        else:
            default(text)

    def set_output(self, path: str | None) -> str:
        """``\\o FILE``: data to ``FILE`` (emptied first, as psql does); ``None``: stdout."""
        if self.sink is not None:
            self.sink.close()
            self.sink, self.sink_path = None, None
        if not path:
            return "output to standard output"
        target = Path(path).expanduser()
        try:
            self.sink = open(target, "w", encoding="utf-8")  # noqa: SIM115 - kept open
        except OSError as exc:
            raise UsageError(f"cannot write to {target}: {exc.strerror or exc}",
                             "give a file in a folder you can write to") from None
        self.sink_path = target
        return f"output to {target} (\\o alone goes back to standard output)"

    def close(self) -> None:
        """Close the ``\\o`` file, if any."""
        if self.sink is not None:
            self.sink.close()
            self.sink = None

    # -- prompt ----------------------------------------------------------------------------
    def epsilon_left(self) -> float | None:
        """The smallest epsilon the analyst has left at any party (None without an analyst)."""
        if not self._left_known:
            self._left_known = True
            try:
                left = [b["epsilon_remaining"] for b in self.session.budget().values()]
                self._left = min(left) if left else None
            except VeilError:
                self._left = None
        return self._left

    def prompt(self) -> str:
        """``alice ε 8.5> `` (``veil> `` without an analyst); the continuation lines match."""
        who = self.session.analyst
        left = self.epsilon_left()
        if who and left is not None:
            head = f"{who} ε {left:.4g}"
        else:
            head = who or "veil"
        return f"{head}> " if not self.buffer else " " * max(0, len(head) - 3) + "...> "

    # -- statements ------------------------------------------------------------------------
    def statement(self, sql: str) -> Reply:
        """Run one SQL statement (``EXPLAIN ...`` shows the plan instead)."""
        head, _, rest = sql.strip().partition(" ")
        if head.upper() == "EXPLAIN":
            return self.explain(rest)
        return self.query(sql)

    def _cost(self) -> tuple[float | None, float | None]:
        return self.settings.epsilon, self.settings.delta

    def _purpose(self, sql: str) -> str | None:
        """The ``.purpose`` setting, unless the SQL states its own (``OPTIONS (purpose =
        ...)``), which wins over the shell's default."""
        if not self.settings.purpose:
            return None
        try:
            written = parse(sql).purpose
        except VeilError:
            written = None  # the run reports the parse error
        return None if written is not None else self.settings.purpose

    def _plan(self, sql: str) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LargeEpsilonWarning)
            return self.session.plan(sql, *self._cost())

    def _local_budget(self, plan: Any) -> dict[str, dict[str, float]]:
        """The remaining budget at the plan's charged parties whose ledgers are here."""
        local = tuple(p for p in plan.charged
                      if self.session.federation.party(p).is_local)
        return self.session.budget(parties=local) if local else {}

    def _check_budget(self, plan: Any) -> None:
        """Refuse now (exit 4, nothing asked, nothing charged) a query that some local
        party's ledger cannot pay (``preview.check_budget``)."""
        check_budget(self.session, plan)

    def question(self, plan: Any) -> str:
        """The confirmation question for a query above the threshold: what it spends, the
        budget remaining before and after, and how accurate each released column will be."""
        eps = float(plan.epsilon)
        lines = [f"This query spends epsilon {eps:g} (delta {float(plan.delta):g}) at "
                 f"{', '.join(plan.charged)}, above your threshold "
                 f"{self.settings.confirm_above:g}."]
        left = remaining_text(self._local_budget(plan), eps)
        if left:
            lines.append(left[0].upper() + left[1:] + ".")
        acc = accuracy_text(plan)
        if acc:
            lines.append(acc + ".")
        lines.append("Run it?")
        return "\n".join(lines)

    def query(self, sql: str) -> Reply:
        """Price the query, refuse what the budget cannot pay, confirm a large spend, run it
        and format the answer."""
        self.status("planning")
        started = time.monotonic()
        plan = self._plan(sql)
        self._check_budget(plan)
        threshold = self.settings.confirm_above
        if plan.epsilon > threshold and not self.yes:
            if self.confirm is None:
                raise UsageError(
                    f"query would spend epsilon {float(plan.epsilon):g}, above the confirmation "
                    f"threshold {threshold:g}, and there is no terminal to ask",
                    "run `veil shell --yes` to allow it, raise the threshold with "
                    "--confirm-above or .confirm, or lower the cost with .epsilon",
                )
            self.status("")
            if not self.confirm(self.question(plan)):
                return Reply(note="not run; nothing was spent")
            started = time.monotonic()
        self.status(f"starting at {', '.join(plan.parties)}")
        steps = StepLine(plan, self.status)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", LargeEpsilonWarning)
            try:
                result = self.session.sql(sql, *self._cost(), on_step=steps,
                                          purpose=self._purpose(sql), clamp=self.settings.clamp)
            finally:
                steps.close()  # a node that reports late draws nothing over the prompt
                self._left_known = False  # the ledgers may have moved, whatever happened
        elapsed = time.monotonic() - started
        notes = [f"warning: {w.message}" for w in caught]
        notes.append(self._footer(result))
        if self.settings.timer:
            notes.append(f"run time: {elapsed:.3f} s")
        return Reply(out=self.format(result), note="\n".join(notes))

    def _footer(self, result: Result) -> str:
        n = len(result.rows)
        cost = f"epsilon {result.privacy['epsilon']:g}, delta {result.privacy['delta']:g}"
        text = (f"{n} row{'s' if n != 1 else ''}; spent {cost} at "
                f"{', '.join(result.budget) or 'no party'}")
        if result.accuracy and not self.settings.explained_interval and self.settings.mode in (
                "table", "box", "line", "markdown"):
            self.settings.explained_interval = True
            text += f" ({Result.INTERVAL_NOTE})"
        if clamp_note(result):
            text += f"; {clamp_note(result)}"
        return text

    def format(self, result: Result) -> str:
        """The answer in the current mode; text modes show ``value ± interval``."""
        s = self.settings
        return render_result(result, s.mode, expanded=s.expanded, maxrows=s.maxrows)

    def render(self, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
        """A listing (parties, tables, budget) in the current mode."""
        s = self.settings
        return render_listing(columns, rows, s.mode, expanded=s.expanded, maxrows=s.maxrows)

    def explain(self, sql: str) -> Reply:
        """The plan of ``sql``: local SQL, secure steps, what is revealed, the cost."""
        sql = strip_sql(sql, ".explain")
        self.status("planning")
        return Reply(out=self._plan(sql).to_s())

    def cost(self, sql: str) -> Reply:
        """Price ``sql`` (a dry run): the budget remaining before and after at every party it
        charges, whether it fits, and the 95% interval each released column will have."""
        sql = strip_sql(sql, ".cost")
        self.status("planning")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LargeEpsilonWarning)
            result = self.session.sql(sql, *self._cost(), dry_run=True,
                                      purpose=self._purpose(sql))
        eps, delta = result.privacy["epsilon"], result.privacy["delta"]
        rows = []
        for party, b in result.budget.items():
            e_after = b["epsilon_remaining"] - eps
            d_after = b["delta_remaining"] - delta
            # The ledger decides exactly; this is a preview, so a tiny float slack is fine.
            fits = e_after >= -1e-12 and d_after >= -1e-18
            rows.append([party, eps, delta, b["epsilon_remaining"], round(max(e_after, 0), 12),
                         b["delta_remaining"], max(d_after, 0.0), "yes" if fits else "NO"])
        cols = ["party", "epsilon", "delta", "epsilon_remaining_before",
                "epsilon_remaining_after", "delta_remaining_before", "delta_remaining_after",
                "fits"]
        out = self.render(cols, rows)
        assert result.plan is not None
        preview = accuracy_preview(result.plan)
        if preview:
            out += "\n\n" + self.render(["column", "95% interval if run"],
                                        [list(p) for p in preview])
        note = "nothing was spent"
        if eps > self.settings.confirm_above:
            note += f"; above the confirmation threshold {self.settings.confirm_above:g}"
        return Reply(out=out, note=note)

    # -- dot commands ------------------------------------------------------------------------
    def command(self, line: str) -> Reply:
        """Run one dot command (``.tables``, ``\\dt`` ...)."""
        from veilql.ui.shell.commands import find_command

        word, _, arg = line.rstrip(";").strip().partition(" ")
        found = find_command(word)
        if found is None:
            raise UsageError(f"unknown command {word!r}",
                             "type .help for the list of commands; SQL statements end with ;")
        return found.run(self, arg.strip())


def strip_sql(sql: str, command: str) -> str:
    """The SQL argument of ``.explain``/``.cost`` without its ``;`` (UsageError if empty)."""
    sql = sql.strip().rstrip(";").strip()
    if not sql:
        raise UsageError(f"{command} needs a SQL query", f"e.g. {command} SELECT COUNT(*) AS n "
                         "FROM bank.customers")
    return sql
