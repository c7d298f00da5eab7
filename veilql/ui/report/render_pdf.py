"""The report as a real PDF (A4), drawn with matplotlib's ``PdfPages``: the same content as
the HTML, with the chart as vector graphics.

A small top-down layout engine (``_Pages``) places wrapped text, tables and the chart on A4
figures and starts a new page (repeating a table's header) when one is full. Fonts are
embedded as TrueType (``pdf.fonttype`` 42), so the text can be searched and copied. The
document's ``Keywords`` carry the SHA-256 of the JSON rendering of the same report, so anyone
can check which data a PDF was built from; its ``Subject`` states the integrity verdict.
"""

from __future__ import annotations

import hashlib
import io
import textwrap
from datetime import datetime

import matplotlib
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from veilql import __version__
from veilql.ui.report import chart
from veilql.ui.report.collect import Report
from veilql.ui.report.render_json import render_json
from veilql.ui.report.text import (
    TITLE,
    amount,
    chain_status,
    counts,
    filters_text,
    integrity_banner,
    when,
)

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

    def __init__(self, pdf: PdfPages, report: Report) -> None:
        self.pdf = pdf
        self.report = report
        self.fig: Figure | None = None
        self.page = 0
        self.y = 0.0

    # -- pages ------------------------------------------------------------------------
    def new_page(self) -> None:
        """Finish the current page and start the next, with its running header."""
        self.finish()
        self.page += 1
        self.fig = Figure(figsize=(PAGE_W, PAGE_H))
        self.y = 0.45
        self.text(f"VeilQL {TITLE.lower()}  \u00b7  {self.report.federation}  \u00b7  "
                  f"{when(self.report.generated_at)}", size=7, color=MUTED, advance=False)
        self.text(f"page {self.page}", size=7, color=MUTED, x=PAGE_W - MARGIN, ha="right")
        self.y += 0.2

    def finish(self) -> None:
        """Write the current page (if any) to the PDF."""
        if self.fig is not None:
            self.pdf.savefig(self.fig)
            self.fig = None

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

        self.need(2 * (line_h + 2 * pad))
        head()
        for r, row in enumerate(rows):
            wrapped = [_wrap(cell, w - 2 * pad, size, i in mono)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
            h = max(len(c) for c in wrapped) * line_h + 2 * pad
            if self.need(h):
                head()
            if r in shade:
                self._box(MARGIN, self.y, sum(widths), h, shade[r], None, 0)
            self._cells(row, widths, wrapped, mono, right, size, "normal")
            self.y += h
            self._rule(self.y, LINE, 0.5)
        self.y += 0.15

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

    def chart(self, report: Report) -> None:
        """The cumulative-epsilon chart, full width, on this page if it fits."""
        height = self.chart_height(report)
        self.need(height + 0.2)
        assert self.fig is not None
        bottom = PAGE_H - (self.y + height)
        chart.draw(self.fig, report, ((MARGIN + 0.45) / PAGE_W, (bottom + 0.45) / PAGE_H,
                                      (PAGE_W - 2 * MARGIN - 0.5) / PAGE_W,
                                      (height - 0.55) / PAGE_H))
        self.y += height + 0.1


def digest(report: Report) -> str:
    """SHA-256 of the report's JSON rendering: the PDF's link to its data."""
    return hashlib.sha256(render_json(report).encode()).hexdigest()


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
    with matplotlib.rc_context({"pdf.fonttype": 42, "svg.hashsalt": "veilql"}), \
            PdfPages(buf, metadata=meta) as pdf:
        pages = _Pages(pdf, report)
        _content(pages, report)
        pages.finish()
    return buf.getvalue()


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
    p.para(f"{c['queries']} queries: {c['committed']} released, {c['aborted']} aborted, "
           f"{c['open']} open, {c['mixed']} mixed.", weight="bold")

    p.heading("Ledger integrity")
    p.table(["Party", "Chain", "Entries", "Result and ledger file"], [1.0, 0.75, 0.7, 4.42],
            [[i.party, chain_status(i), str(i.entries),
              f"{i.summary()}\n{i.path}"] for i in report.integrity],
            right={2}, shade={n: "#fde2e1" for n, i in enumerate(report.integrity)
                              if not i.ok})

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

    p.heading("Cumulative epsilon over time", keep=p.chart_height(report) + 0.2)
    p.chart(report)

    p.heading("Queries")
    if not report.queries:
        p.para("No queries in this period.")
        return
    p.table(["Time (UTC)", "Analyst", "SQL", "\u03b5", "\u03b4", "Charged at",
             "Status"], [0.95, 0.65, 2.62, 0.4, 0.55, 0.85, 0.85],
            [[when(q.time).replace(" ", "\n", 1).removesuffix(" UTC"), q.analyst,
              f"{q.sql}\nid {q.query_id}", amount(q.epsilon), amount(q.delta),
              ", ".join(q.charged) or "none",
              q.status + ("\nUNVERIFIED" if not q.verified else "")
              + "".join(f"\n{r}" for r in q.reasons)] for q in report.queries],
            mono={2}, right={3, 4},
            shade={n: "#fde2e1" for n, q in enumerate(report.queries) if not q.verified})
    p.para(f"Generated by VeilQL {__version__} from each party's hash-chained ledger. "
           f"Data digest (SHA-256 of the JSON report): {digest(report)}", size=7,
           color=MUTED)
