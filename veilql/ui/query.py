"""``veil query``, ``veil explain``, ``veil budget`` and ``veil ledger verify``.

Stdout carries the answer only; warnings, the cost footer of the table format and
errors go to stderr. A refused or failed query charges nothing (see the ledger).
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import click

from veilql.engine.clamp import note as clamp_note
from veilql.engine.clamp import range_text as clamp_range_text
from veilql.engine.dp import LargeEpsilonWarning
from veilql.engine.ledger.ledger import Ledger, VerifyResult
from veilql.engine.ledger.multi import verify_all
from veilql.engine.result import Result
from veilql.engine.session import EmbeddedModeWarning, Session
from veilql.errors import ExitCode, UsageError
from veilql.policies.model import Federation
from veilql.ui.clicommon import emit, federation_option, format_option, load
from veilql.ui.formats import render
from veilql.ui.noisy import noisy_cell
from veilql.ui.preview import dry_run_text
from veilql.ui.progress import QueryProgress
from veilql.ui.report.collect import ledger_file


def analyst_option(func: Any) -> Any:
    """``--analyst NAME`` (default ``$VEIL_ANALYST``)."""
    return click.option("--analyst", default=None, metavar="NAME",
                        help="Analyst whose budget pays (default: $VEIL_ANALYST).")(func)


def cost_options(func: Any) -> Any:
    """``--epsilon`` and ``--delta``: the cost when the SQL has no OPTIONS clause."""
    func = click.option("--delta", type=float, default=None,
                        help="Delta when the SQL has no OPTIONS (default: federation's).")(func)
    return click.option("--epsilon", type=float, default=None,
                        help="Epsilon when the SQL has no OPTIONS (default: federation's).")(func)


#: The progress printer of ``veil query`` (kept under its old name).
StepPrinter = QueryProgress


def read_sql(sql: str) -> str:
    """The SQL argument, or standard input for ``-``."""
    text = sys.stdin.read() if sql == "-" else sql
    if not text.strip():
        raise UsageError("no SQL given", "pass the query as an argument, or - to read stdin")
    return text


def open_session(federation: str | None, analyst: str | None) -> Session:
    """A session on the discovered federation as the named analyst."""
    return Session(load(federation), analyst or os.environ.get("VEIL_ANALYST"))


def cell(value: Any, half: Any) -> str:
    """``1203 ± 3`` for the table format (``noisy.noisy_text`` sets the precision)."""
    return noisy_cell(value, half)


def csv_columns(result: Result) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows for CSV: each noisy column followed by ``<col>_ci95``, the
    half-width of its 95% interval in that row (as ``Result.to_pandas`` does)."""
    frame_cols: list[str] = []
    for c in result.columns:
        frame_cols.append(c)
        if c in result.accuracy:
            frame_cols.append(f"{c}_ci95")
            if result.accuracy[c].get("clamped"):
                frame_cols.append(f"{c}_clamped_to")  # --clamp: the range, on every row
    rows = []
    for r, row in enumerate(result.rows):
        out: list[Any] = []
        for c, v in zip(result.columns, row, strict=True):
            out.append(v)
            if c in result.accuracy:
                out.append(result.ci95(c, r))
                if result.accuracy[c].get("clamped"):
                    out.append(clamp_range_text(result.accuracy[c]["range"]))
        rows.append(out)
    return frame_cols, rows


def format_result(result: Result, fmt: str) -> str:
    """The answer in ``fmt``; json keeps accuracy, privacy and budget beside the rows, csv
    an interval column ``<col>_ci95`` beside each noisy column."""
    if fmt == "json":
        meta = {k: v for k, v in result.to_dict().items() if k not in ("columns", "rows")}
        return render(result.columns, result.rows, "json", meta=meta)
    if fmt == "csv":
        return render(*csv_columns(result), "csv")
    if fmt != "table":
        return render(result.columns, result.rows, fmt)
    rows = []
    for r, row in enumerate(result.rows):
        out = []
        for name, value in zip(result.columns, row, strict=True):
            acc = result.accuracy.get(name)
            half = None
            if acc is not None:
                half = acc["ci95_rows"][r] if "ci95_rows" in acc else acc.get("ci95")
            out.append(cell(value, half) if acc is not None else value)
        rows.append(out)
    return render(result.columns, rows, "table")


def footer(result: Result) -> str:
    """The stderr footer: the cost and what is left at each party; for a dry run, the budget
    remaining before and after and the 95% interval each released column will have."""
    if result.dry_run:
        return dry_run_text(result)
    cost = f"epsilon {result.privacy['epsilon']:g}, delta {result.privacy['delta']:g}"
    left = ", ".join(f"{p} {b['epsilon_remaining']:g}" for p, b in result.budget.items())
    clamped = clamp_note(result)
    return (f"spent {cost}; epsilon remaining: {left} (± is a 95% interval of the noise"
            + (f"; {clamped})" if clamped else ")"))


@click.command("query")
@federation_option
@analyst_option
@cost_options
@format_option(("table", "json", "jsonl", "csv"))
@click.option("--dry-run", is_flag=True,
              help="Show the cost, the budget remaining before and after, and the 95% "
                   "interval of each released column; spend nothing.")
@click.option("--purpose", default=None, metavar="TEXT",
              help="Why you ask: recorded with the query in every charged party's ledger "
                   "and shown in compliance reports (or OPTIONS (purpose = '...')).")
@click.option("--clamp", is_flag=True,
              help="Clamp released counts at 0 and averages to their declared bounds "
                   "(post-processing: no privacy cost, but biased); said in the output.")
@click.argument("sql")
def query(federation: str | None, analyst: str | None, epsilon: float | None,
          delta: float | None, fmt: str, dry_run: bool, purpose: str | None,
          clamp: bool, sql: str) -> None:
    """Run SQL across the parties and print the noisy answer (charged to your budget)."""
    text = read_sql(sql)
    session = open_session(federation, analyst)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", LargeEpsilonWarning)
            warnings.simplefilter("always", EmbeddedModeWarning)
            progress = None
            if sys.stderr.isatty() and not dry_run:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", LargeEpsilonWarning)
                    progress = QueryProgress(session.plan(text, epsilon, delta))
            try:
                result = session.sql(text, epsilon, delta, dry_run=dry_run, on_step=progress,
                                     purpose=purpose, clamp=clamp)
            finally:
                if progress is not None:
                    progress.close()
                for w in caught:
                    click.echo(f"veil: warning: {w.message}", err=True)
    finally:
        session.close()
    if dry_run and fmt == "table":
        click.echo(footer(result), err=True)
        return
    emit(format_result(result, fmt))
    if fmt == "table":
        click.echo(footer(result), err=True)


@click.command("explain")
@federation_option
@cost_options
@click.argument("sql")
def explain(federation: str | None, epsilon: float | None, delta: float | None,
            sql: str) -> None:
    """Show the plan: each party's local SQL, the secure steps, what is revealed, the cost."""
    session = open_session(federation, None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LargeEpsilonWarning)
            emit(session.explain(read_sql(sql), epsilon, delta))
    finally:
        session.close()


@click.command("budget")
@federation_option
@analyst_option
@format_option()
def budget(federation: str | None, analyst: str | None, fmt: str) -> None:
    """Spent and remaining privacy budget of the analyst at every party."""
    session = open_session(federation, analyst)
    rows = [[party, b["epsilon_spent"], b["epsilon_remaining"], b["delta_spent"],
             b["delta_remaining"]] for party, b in session.budget().items()]
    cols = ["party", "epsilon_spent", "epsilon_remaining", "delta_spent", "delta_remaining"]
    emit(render(cols, rows, fmt))


@click.group("ledger")
def ledger() -> None:
    """Inspect the parties' privacy-budget ledgers."""


@ledger.command("verify")
@federation_option
@format_option()
@click.option("--max-open-age", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="Report reservations open longer than this (default: the federation's "
                   "timeout).")
def verify(federation: str | None, fmt: str, max_open_age: float | None) -> None:
    """Check every local party's ledger: its keyed hash chain, the anchors the other parties
    hold for it, and reservations left open; exit 3 when any check fails."""
    fed = load(federation)
    ledgers = local_ledgers(fed)
    age = fed.timeout if max_open_age is None else max_open_age
    results = verify_all(ledgers, max_open_age=age) if ledgers else {}
    rows = [verify_row(party, r) for party, r in results.items()]
    cols = ["party", "status", "entries", "head_seq", "head", "keyed", "anchors", "problem",
            "warning"]
    meta = {
        "ok": all(r.ok for r in results.values()),
        "problems": [{"party": party, "kind": p.kind, "message": p.message, "index": p.index,
                      "holder": p.holder} for party, r in results.items() for p in r.problems],
        "warnings": [{"party": party, "message": w} for party, r in results.items()
                     for w in r.warnings],
    }
    emit(render(cols, rows, fmt, meta=meta))
    for party, r in results.items():
        for w in r.warnings:
            click.echo(f"veil: warning: {party}: {w}", err=True)
    failed = [(party, r) for party, r in results.items() if not r.ok]
    if failed:
        what = ", ".join(f"{party} ({', '.join(dict.fromkeys(p.kind for p in r.problems))})"
                         for party, r in failed)
        click.echo(f"veil: error: ledger verification FAILED for {what}", err=True)
        click.echo("hint: a chain, anchor or missing-ledger failure means a ledger was edited, "
                   "cut short, rewritten or deleted: restore it from a backup and investigate; "
                   "an open reservation means a node lost track of a query (it stays charged)",
                   err=True)
        raise click.exceptions.Exit(int(ExitCode.UNAVAILABLE))


def local_ledgers(fed: Federation) -> dict[str, Ledger]:
    """The ledgers ``veil ledger verify`` checks here: every party that runs in this process
    (``address = "local"``: its ledger must be here, even if it was deleted), and every other
    party that left a ledger, key or anchor file in its state folder on this host."""
    out = {}
    for p in fed.parties:
        path = ledger_file(fed, p.name)
        ledger = Ledger(path, p.name)
        here = (path, ledger.key_path, ledger.anchors_path)
        if p.is_local or any(f.exists() for f in here):
            out[p.name] = ledger
    return out


def verify_row(party: str, r: VerifyResult) -> list[Any]:
    """One row of ``veil ledger verify``: status, head, keyed, anchors held by others,
    every problem and warning."""
    if r.ok:
        status = "ok" if r.exists else "no ledger"
    else:
        status = "MISSING" if r.problems and r.problems[0].kind == "missing" else "FAILED"
    return [party, status, r.entries, r.head_seq if r.ok else None, r.head,
            r.keyed, [f"{a.holder}@{a.seq}" for a in r.anchors],
            "; ".join(f"{p.kind}: {p}" for p in r.problems),
            "; ".join(r.warnings)]
