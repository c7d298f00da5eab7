"""The report as a real PDF (A4), drawn with matplotlib's ``PdfPages``: the same content as
the HTML, with the chart as vector graphics.

A small top-down layout engine (``_Pages``) places wrapped text, tables and the chart on A4
figures and starts a new page (repeating a table's header) when one is full; every page is
numbered "page N of M" once the last one is known. The chart shrinks to the room left on a
page rather than leaving it half empty. Fonts are embedded as TrueType (``pdf.fonttype``
42), so the text can be searched and copied. The document's ``Keywords`` carry the SHA-256
of the JSON rendering of the same report, so anyone can check which data a PDF was built
from (the sign-off block at the end prints it too); its ``Subject`` states the integrity
verdict.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Callable
from datetime import datetime

import matplotlib
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from veilql import __version__
from veilql.ui.report import chart
from veilql.ui.report.collect import QueryRow, Report
from veilql.ui.report.render_json import digest
from veilql.ui.report.text import (
    TITLE,
    amount,
    analyst_summary,
    chain_status,
    counts,
    filters_text,
    identity_text,
    integrity_banner,
    prior_text,
    reasons_text,
    when,
)

__all__ = ["digest", "layout", "render_pdf"]

PAGE_W, PAGE_H = 8.27, 11.69  # A4, inches
MARGIN = 0.7
BOTTOM = 0.75
INK, MUTED, LINE, HEAD_BG = "#1f2328", "#59636e", "#d1d9e0", "#eef1f4"
BAD, OK_BG, OK_INK = "#b42318", "#dafbe1", "#1a7f37"
SANS, MONO = "DejaVu Sans", "DejaVu Sans Mono"


def _wrap(text: str, width_in: float, size: float, mono: bool = False,
          bold: bool = False) -> list[str]:
    """Wrap ``text`` to a column ``width_in`` inches wide at ``size`` points (estimated
    glyph widths: DejaVu Sans averages about 0.55 em, bold 0.63 em, monospace 0.6 em)."""
    em = 0.61 if mono else 0.64 if bold else 0.56
    chars = max(4, int(width_in * 72 / (size * em)))
    out: list[str] = []
    for para in text.splitlines() or [""]:
        out += textwrap.wrap(para, chars, break_long_words=True, break_on_hyphens=False) or [""]
    return out


class _Pages:
    """A cursor over A4 pages of one ``PdfPages``: ``y`` is inches from the page top."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.fig: Figure | None = None
        self.page = 0
        self.y = 0.0
        self.figures: list[Figure] = []
        self.fills: list[float] = []  # per finished page: the share of its body used

    # -- pages ------------------------------------------------------------------------
    def new_page(self) -> None:
        """Finish the current page and start the next, with its running header."""
        self.finish()
        self.page += 1
        self.fig = Figure(figsize=(PAGE_W, PAGE_H))
        self.y = 0.45
        self.text(f"VeilQL {TITLE.lower()}  \u00b7  {self.report.federation}  \u00b7  "
                  f"{when(self.report.generated_at)}", size=7, color=MUTED, advance=False)
        self.y += 0.2

    def finish(self) -> None:
        """End the current page (if any); pages are written by ``save`` once all exist."""
        if self.fig is not None:
            top, bottom = 0.65, PAGE_H - BOTTOM
            self.fills.append(min(1.0, max(0.0, (self.y - top) / (bottom - top))))
            self.figures.append(self.fig)
            self.fig = None

    @property
    def room(self) -> float:
        """Inches left on the current page."""
        return PAGE_H - BOTTOM - self.y if self.fig is not None else 0.0

    def save(self, pdf: PdfPages) -> None:
        """Number every page "page N of M" and write them all."""
        self.finish()
        total = len(self.figures)
        for n, fig in enumerate(self.figures, 1):
            fig.text((PAGE_W - MARGIN) / PAGE_W, 1 - 0.45 / PAGE_H, f"page {n} of {total}",
                     fontsize=7, color=MUTED, family=SANS, ha="right", va="top")
            pdf.savefig(fig)

    def need(self, height: float) -> bool:
        """Start a new page unless ``height`` inches still fit; True if a page was started."""
        if self.fig is None or self.y + height > PAGE_H - BOTTOM:
            self.new_page()
            return True
        return False

    # -- drawing ----------------------------------------------------------------------
    def text(self, s: str, *, size: float = 9.5, color: str = INK, weight: str = "normal",
             mono: bool = False, x: float = MARGIN, ha: str = "left",
             advance: bool = True) -> None:
        """One line of text at the cursor."""
        assert self.fig is not None
        self.fig.text(x / PAGE_W, 1 - self.y / PAGE_H, s, fontsize=size, color=color,
                      fontweight=weight, family=MONO if mono else SANS, ha=ha, va="top")
        if advance:
            self.y += size * 1.45 / 72

    def para(self, s: str, *, size: float = 9.5, color: str = INK, weight: str = "normal",
             width: float = PAGE_W - 2 * MARGIN) -> None:
        """Wrapped text, breaking pages as needed."""
        for line in _wrap(s, width, size, bold=weight == "bold"):
            self.need(size * 1.45 / 72)
            self.text(line, size=size, color=color, weight=weight)

    def heading(self, s: str, keep: float = 1.0) -> None:
        """A section heading with a rule under it, kept with ``keep`` inches below it."""
        self.need(keep + 0.45)
        self.y += 0.12
        self.text(s, size=12.5, weight="bold")
        self._rule(self.y + 0.02, INK, 0.6)
        self.y += 0.1

    def banner(self, s: str, ok: bool) -> None:
        """A full-width box: green for a clean check, solid red for a failure."""
        size = 9.5 if ok else 10.5
        lines = _wrap(s, PAGE_W - 2 * MARGIN - 0.3, size, bold=True)
        height = len(lines) * size * 1.45 / 72 + 0.24
        self.need(height)
        self._box(MARGIN, self.y, PAGE_W - 2 * MARGIN, height, OK_BG if ok else BAD,
                  OK_INK if ok else "#7a1610", 0.8 if ok else 2.5)
        self.y += 0.12
        for line in lines:
            self.text(line, size=size, x=MARGIN + 0.15, weight="bold",
                      color=OK_INK if ok else "#ffffff")
        self.y += 0.26

    def table(self, header: list[str], widths: list[float], rows: list[list[str]], *,
              mono: set[int] | None = None, right: set[int] | None = None,
              size: float = 7.5, shade: dict[int, str] | None = None) -> None:
        """A table with wrapped cells; the header repeats on every page it spans.

        ``shade`` maps a row index to a background colour (used for failed rows).
        """
        mono, right, shade = mono or set(), right or set(), shade or {}
        line_h = size * 1.4 / 72
        pad = 0.05

        def head() -> None:
            h = line_h + 2 * pad
            self._box(MARGIN, self.y, sum(widths), h, HEAD_BG, None, 0)
            self._cells(header, widths, [[c] for c in header], set(), right, size, "bold")
            self.y += h

        # the header never ends a page alone: it goes with a few lines of the first row
        self.need(line_h + 2 * pad + min(self.row_height(rows[0], widths, mono, size),
                                         4 * line_h + 2 * pad) if rows else 0.0)
        head()
        for r, row in enumerate(rows):
            wrapped = [_wrap(cell, w - 2 * pad, size, i in mono)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
            total = max(len(c) for c in wrapped)
            h = total * line_h + 2 * pad
            if h > self.room and self.room >= 4 * line_h + 2 * pad and total > 6:
                self._split_row(r, row, wrapped, widths, mono, right, size, shade, head)
                continue
            if self.need(h):
                head()
            if r in shade:
                self._box(MARGIN, self.y, sum(widths), h, shade[r], None, 0)
            self._cells(row, widths, wrapped, mono, right, size, "normal")
            self.y += h
            self._rule(self.y, LINE, 0.5)
        self.y += 0.15

    def _split_row(self, r: int, row: list[str], wrapped: list[list[str]],
                   widths: list[float], mono: set[int], right: set[int], size: float,
                   shade: dict[int, str], head: Callable[[], None]) -> None:
        """A row taller than the room left: as many of its lines as fit here, the rest on
        the next pages (under the repeated header), so a long SQL never leaves a page
        half empty nor runs off its bottom."""
        line_h, pad = size * 1.4 / 72, 0.05
        start, total = 0, max(len(c) for c in wrapped)
        while start < total:
            fit = max(1, int((self.room - 2 * pad) // line_h))
            if fit < 3 and start < total:
                self.new_page()
                head()
                continue
            part = [c[start:start + fit] for c in wrapped]
            h = max(1, max(len(c) for c in part)) * line_h + 2 * pad
            if r in shade:
                self._box(MARGIN, self.y, sum(widths), h, shade[r], None, 0)
            self._cells(row, widths, part, mono, right, size, "normal")
            self.y += h
            start += fit
            if start < total:
                self.new_page()
                head()
        self._rule(self.y, LINE, 0.5)

    @staticmethod
    def row_height(row: list[str], widths: list[float], mono: set[int] | None = None,
                   size: float = 7.5) -> float:
        """Inches one table row takes once its cells are wrapped."""
        mono = mono or set()
        lines = max((len(_wrap(cell, w - 0.1, size, i in mono))
                     for i, (cell, w) in enumerate(zip(row, widths, strict=True))), default=1)
        return lines * size * 1.4 / 72 + 0.1

    def _cells(self, row: list[str], widths: list[float], wrapped: list[list[str]],
               mono: set[int], right: set[int], size: float, weight: str) -> None:
        assert self.fig is not None
        x, line_h = MARGIN, size * 1.4 / 72
        for i, (lines, w) in enumerate(zip(wrapped, widths, strict=True)):
            for k, line in enumerate(lines):
                tx = x + w - 0.05 if i in right else x + 0.05
                self.fig.text(tx / PAGE_W, 1 - (self.y + 0.05 + k * line_h) / PAGE_H, line,
                              fontsize=size, family=MONO if i in mono else SANS,
                              fontweight=weight, color=INK, va="top",
                              ha="right" if i in right else "left")
            x += w

    def _rule(self, y: float, colour: str, lw: float) -> None:
        assert self.fig is not None
        self.fig.add_artist(Line2D(
            [MARGIN / PAGE_W, (PAGE_W - MARGIN) / PAGE_W], [1 - y / PAGE_H] * 2, color=colour,
            lw=lw, transform=self.fig.transFigure))

    def _box(self, x: float, y: float, w: float, h: float, fill: str, edge: str | None,
             lw: float) -> None:
        assert self.fig is not None
        self.fig.add_artist(Rectangle(
            (x / PAGE_W, 1 - (y + h) / PAGE_H), w / PAGE_W, h / PAGE_H, facecolor=fill,
            edgecolor=edge or fill, lw=lw, transform=self.fig.transFigure, zorder=-1))

    @staticmethod
    def chart_height(report: Report) -> float:
        """Inches the chart takes: about two per analyst panel, at most most of a page."""
        if not report.series:
            return 0.7  # just the "nothing spent" line
        return min(PAGE_H - 2.5, 0.5 + 2.0 * len(report.series))

    @staticmethod
    def chart_min_height(report: Report) -> float:
        """The least the chart may shrink to: about an inch per analyst panel."""
        if not report.series:
            return 0.7
        return min(PAGE_H - 2.5, 0.5 + 1.0 * len(report.series))

    def chart(self, report: Report) -> None:
        """The cumulative-epsilon chart, full width: on this page, shrunk to the room left
        when it does not fit whole but still readable, else on the next page."""
        height = self.chart_height(report)
        if self.fig is not None and self.room - 0.2 < height:
            if self.room - 0.2 >= self.chart_min_height(report):
                height = self.room - 0.2
        self.need(height + 0.2)
        assert self.fig is not None
        bottom = PAGE_H - (self.y + height)
        chart.draw(self.fig, report, ((MARGIN + 0.45) / PAGE_W, (bottom + 0.45) / PAGE_H,
                                      (PAGE_W - 2 * MARGIN - 0.5) / PAGE_W,
                                      (height - 0.55) / PAGE_H))
        self.y += height + 0.1


def render_pdf(report: Report) -> bytes:
    """The report as PDF bytes (A4, one or more pages)."""
    buf = io.BytesIO()
    created = datetime.fromisoformat(report.generated_at)
    meta = {
        "Title": f"{TITLE}: {report.federation}",
        "Author": "VeilQL", "Creator": f"VeilQL {__version__}",
        "Subject": "ledger integrity " + ("verified" if report.ok else
                                          "FAILED: " + ", ".join(report.failed)),
        "Keywords": f"veilql-report sha256={digest(report)}",
        "CreationDate": created,
    }
    with matplotlib.rc_context({"pdf.fonttype": 42, "svg.hashsalt": "veilql"}):
        pages = layout(report)
        with PdfPages(buf, metadata=meta) as pdf:
            pages.save(pdf)
    return buf.getvalue()


def layout(report: Report) -> _Pages:
    """The report laid out on pages (not yet written): ``.figures`` and ``.fills``."""
    pages = _Pages(report)
    _content(pages, report)
    pages.finish()
    return pages


def _content(p: _Pages, report: Report) -> None:
    p.new_page()
    p.text(TITLE, size=18, weight="bold")
    p.y += 0.05
    p.para(f"Federation {report.federation}  \u00b7  generated {when(report.generated_at)}",
           color=MUTED)
    p.para(f"Filters: {filters_text(report)}", color=MUTED)
    p.y += 0.1
    p.banner(integrity_banner(report), report.ok)
    c = counts(report)
    p.para(f"{c['queries']} queries: {c['released']} released, {c['over budget']} over "
           f"budget, {c['refused']} refused, {c['cancelled']} cancelled, {c['failed']} "
           f"failed, {c['open']} open, {c['mixed']} mixed.", weight="bold")

    p.heading("Ledger integrity")
    p.table(["Party", "Chain", "Entries", "Result and ledger file"], [1.0, 0.75, 0.7, 4.42],
            [[i.party, chain_status(i), str(i.entries),
              f"{i.summary()}\n{i.path}"] for i in report.integrity],
            right={2}, shade={n: "#fde2e1" for n, i in enumerate(report.integrity)
                              if not i.ok})
    prior = prior_text(report)
    if prior:
        p.para(f"Earlier report: {prior}", size=8,
               color=INK if all(h.matches is not False for h in report.prior_heads) else BAD)
        p.y += 0.05

    p.heading("Budgets per analyst and party")
    p.para("All-time figures. Spent counts released queries and open reservations; aborted "
           "queries were given back.", size=8, color=MUTED)
    p.y += 0.05
    p.table(["Analyst", "Party", "Budget \u03b5", "Spent \u03b5", "Left \u03b5",
             "Budget \u03b4", "Spent \u03b4", "Left \u03b4", "Queries"],
            [0.85, 1.1, 0.65, 0.65, 0.65, 0.75, 0.75, 0.75, 0.72],
            [[b.analyst, b.party + ("" if b.verified else "\nUNVERIFIED"),
              amount(b.budget_epsilon), amount(b.spent_epsilon), amount(b.remaining_epsilon),
              amount(b.budget_delta), amount(b.spent_delta), amount(b.remaining_delta),
              str(b.queries)] for b in report.budgets],
            right={2, 3, 4, 5, 6, 7, 8},
            shade={n: "#fde2e1" for n, b in enumerate(report.budgets) if not b.verified})
    p.table(["Analyst", "Budget \u03b5", "Most spent \u03b5", "at party",
             "Least left \u03b5", "Released", "Refused"],
            [1.0, 0.85, 1.0, 1.1, 1.0, 0.95, 0.97],
            [[str(a["analyst"]) + ("" if a["verified"] else "\nUNVERIFIED"),
              amount(a["budget_epsilon"]), amount(a["spent_epsilon"]),
              str(a["spent_at"]), amount(a["remaining_epsilon"]),
              str(a["released"]), str(a["refused"])] for a in analyst_summary(report)],
            right={1, 2, 4, 5, 6})

    # The chart where it fits (shrunk to the room left if need be); when not even its
    # smallest readable size fits, the queries go first so no page is left half empty.
    chart_first = p.room >= p.chart_min_height(report) + 0.2 + 0.57
    if chart_first:
        _chart(p, report)
    _queries(p, report)
    if not chart_first:
        _chart(p, report)
    _signoff(p, report)
    p.para(f"Generated by VeilQL {__version__} from each party's hash-chained ledger. "
           f"Data digest (SHA-256 of the JSON report): {digest(report)}", size=7,
           color=MUTED)


def _chart(p: _Pages, report: Report) -> None:
    """The cumulative-epsilon chart under its heading."""
    p.heading("Cumulative epsilon over time", keep=p.chart_min_height(report) + 0.2)
    p.chart(report)


QUERY_WIDTHS = [0.8, 1.0, 0.8, 2.3, 0.62, 0.6, 0.75]


def _queries(p: _Pages, report: Report) -> None:
    """The table of every query, its heading kept with the first row."""
    rows = [[when(q.time).replace(" ", "\n", 1).removesuffix(" UTC"),
             f"{q.analyst}\n{identity_text(q.identity)}", q.purpose or "none stated",
             _query_text(q), f"{amount(q.charged_epsilon)}\n{amount(q.charged_delta)}"
             + ("" if q.charged_epsilon == q.epsilon else f"\nasked {amount(q.epsilon)}"),
             ", ".join(q.charged) or "none",
             (q.outcome or q.status) + ("\nUNVERIFIED" if not q.verified else "")
             + "".join(f"\n{r}" for r in reasons_text(q))] for q in report.queries]
    first = p.row_height(rows[0], QUERY_WIDTHS, {3}) if rows else 0.0
    p.heading("Queries", keep=min(first, 0.9) + 0.6)  # a tall first row splits
    if not rows:
        p.para("No queries in this period.")
        return
    p.para("Every query, released or not: refused and over-budget attempts cost nothing "
           "and are listed too. Columns and mechanism are re-derived from the SQL under "
           "today's policies; the purpose is the analyst's own statement.", size=8,
           color=MUTED)
    p.y += 0.05
    p.table(["Time (UTC)", "Who", "Purpose", "SQL, what it read", "\u03b5 / \u03b4",
             "Charged", "Outcome"], QUERY_WIDTHS, rows, mono={3}, right={4},
            shade={n: "#fde2e1" for n, q in enumerate(report.queries) if not q.verified})


def _query_text(q: QueryRow) -> str:
    """The SQL cell of the queries table: the SQL, its id, tables, columns, mechanism."""
    lines = [q.sql, f"id {q.query_id}", "tables: " + (", ".join(q.tables) or "none")]
    if q.columns:
        lines.append("columns: " + ", ".join(q.columns))
    if q.mechanism:
        lines.append(f"mechanism: {q.mechanism}")
    return "\n".join(lines)


def _signoff(p: _Pages, report: Report) -> None:
    """The sign-off block: a statement, lines for name, role, date and signature, and the
    digest of the data the signature covers; kept on one page."""
    p.heading("Review and signature", keep=2.6)
    p.para(f"I have reviewed this report of the privacy budget spent in federation "
           f"{report.federation}, generated {when(report.generated_at)}.", size=9)
    p.y += 0.1
    assert p.fig is not None
    for label in ("Reviewed by (name)", "Role", "Date", "Signature"):
        p.y += 0.32
        p.text(label, size=9, advance=False)
        p.fig.add_artist(Line2D([(MARGIN + 1.6) / PAGE_W, (PAGE_W - MARGIN) / PAGE_W],
                                [1 - (p.y + 0.14) / PAGE_H] * 2, color=INK, lw=0.7,
                                transform=p.fig.transFigure))
    p.y += 0.35
    p.para(f"The signature covers the data whose JSON report has SHA-256 {digest(report)}.",
           size=7.5, color=MUTED)
