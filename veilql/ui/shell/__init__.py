"""``veil shell``: an interactive SQL shell over a federation, and its scriptable core.

One module per job:

- ``core``: ``Shell``, which turns input lines into ``Reply`` objects (data for stdout or
  the ``\\o`` file, notes for stderr, or an error) and knows nothing about terminals;
- ``statements``: where a statement ends (``;`` outside quotes and comments) and which
  lines are dot commands (also after an unfinished statement);
- ``commands``: the dot commands (``.tables``, ``.budget``, ``.mode``, ``.cost``,
  ``.output``, ``.read``, ``.purpose`` ... with backslash aliases as in psql) and what the
  completer offers;
- ``render``: results and listings in every ``.mode`` (``box`` and ``line`` as in the
  DuckDB CLI), expanded display (``\\x``), ``.maxrows``;
- ``settings``: the settings dot commands change, and how their arguments are read;
- ``repl``: the front-ends, ``interactive`` (prompt_toolkit, after pgcli and litecli:
  history, completion, highlighting, a pager) and ``batch`` (``veil shell < file.sql``: no
  prompts, stops at the first error with its exit code);
- ``cli``: the click command.

Every statement spends budget, so the prompt shows the smallest epsilon left at any party,
a query the budget cannot pay is refused before anything is asked, and a query above
``--confirm-above`` asks first (or, in batch, is refused unless ``--yes``).
"""

from veilql.ui.noisy import noisy_text
from veilql.ui.progress import Ticker
from veilql.ui.shell.cli import shell
from veilql.ui.shell.commands import COMMAND_INDEX, COMMANDS, Command, vocabulary
from veilql.ui.shell.core import Shell
from veilql.ui.shell.render import render_box, render_expanded, render_line, render_result
from veilql.ui.shell.repl import batch, history_path, interactive
from veilql.ui.shell.reply import Reply
from veilql.ui.shell.reply import one_line as _one_line
from veilql.ui.shell.settings import DEFAULT_CONFIRM_ABOVE, MODES, Settings
from veilql.ui.shell.statements import in_literal, is_complete, split_statements

__all__ = [
    "COMMANDS",
    "COMMAND_INDEX",
    "DEFAULT_CONFIRM_ABOVE",
    "MODES",
    "Command",
    "Reply",
    "Settings",
    "Shell",
    "Ticker",
    "_one_line",
    "batch",
    "history_path",
    "in_literal",
    "interactive",
    "is_complete",
    "noisy_text",
    "render_box",
    "render_expanded",
    "render_line",
    "render_result",
    "shell",
    "split_statements",
    "vocabulary",
]
