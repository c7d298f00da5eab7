"""The chart of cumulative epsilon over time: one panel per analyst, one step line per party,
the analyst's budget as a dashed line.

Lines stay readable when they coincide (an analyst whose queries all read two parties spends
the same at both): parties whose series are identical are drawn once and labelled together
(``bank = insurer``), and every party has its own colour, line style and marker, drawn
thickest first, so a line that covers another only in part still leaves it visible.

Drawn with matplotlib's object API on a given ``Figure`` (no pyplot, so no global state and no
display backend), so the HTML (PNG) and the PDF (vector) draw the very same chart.
"""

from __future__ import annotations

import io
from datetime import datetime

from matplotlib import dates as mdates
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from veilql.ui.report.collect import Report, Series

# Colour-blind-safe palette (Okabe and Ito 2008), one colour per party in report order.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442",
           "#000000")
BUDGET_COLOUR = "#B22222"
LINE_STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def party_styles(report: Report) -> dict[str, tuple[str, str, str]]:
    """A stable (colour, line style, marker) per party, in report order."""
    return {i.party: (PALETTE[n % len(PALETTE)], LINE_STYLES[n % len(LINE_STYLES)],
                      MARKERS[n % len(MARKERS)]) for n, i in enumerate(report.integrity)}


def same_line(a: Series, b: Series, tolerance: float = 1.0) -> bool:
    """Whether two series would draw the same line: the same amounts, at times less than
    ``tolerance`` seconds apart (one query charges its parties milliseconds apart)."""
    if a.start != b.start or len(a.points) != len(b.points):
        return False
    for (ta, va), (tb, vb) in zip(a.points, b.points, strict=True):
        if va != vb:
            return False
        gap = abs((datetime.fromisoformat(ta) - datetime.fromisoformat(tb)).total_seconds())
        if gap > tolerance:
            return False
    return True


def merged(lines: dict[str, Series], tolerance: float = 1.0) -> list[tuple[list[str], Series]]:
    """Series grouped when they draw the same line: ``[(parties, series), ...]`` in
    first-seen order."""
    out: list[tuple[list[str], Series]] = []
    for party, series in lines.items():
        for names, same in out:
            if same_line(same, series, tolerance):
                names.append(party)
                break
        else:
            out.append(([party], series))
    return out


def party_colours(report: Report) -> dict[str, str]:
    """A stable colour per party (report order)."""
    return {i.party: PALETTE[n % len(PALETTE)] for n, i in enumerate(report.integrity)}


def draw(fig: Figure, report: Report, rect: tuple[float, float, float, float]) -> None:
    """Draw the chart into ``rect`` (left, bottom, width, height in figure fractions)."""
    left, bottom, width, height = rect
    analysts = list(report.series)
    if not analysts:
        ax = fig.add_axes(rect)
        ax.set_axis_off()
        ax.text(0.5, 0.5, "No privacy budget was spent in this period.", ha="center",
                va="center", fontsize=10, color="#555555")
        return
    styles = party_styles(report)
    end = datetime.fromisoformat(report.generated_at)
    since = report.filters.get("since")
    first = min(datetime.fromisoformat(t) for lines in report.series.values()
                for s in lines.values() for t, _ in s.points) if any(
        s.points for lines in report.series.values() for s in lines.values()) else end
    start = datetime.fromisoformat(since) if since else first
    end = max(end, first)
    gap = 0.07 * height / max(1, len(analysts) - 1) if len(analysts) > 1 else 0.0
    panel = (height - gap * (len(analysts) - 1)) / len(analysts)
    for n, analyst in enumerate(analysts):
        y = bottom + height - (n + 1) * panel - n * gap
        ax = fig.add_axes((left, y, width, panel))
        top = 0.0
        span = (end - start).total_seconds() if start < end else 0.0
        groups = merged(dict(report.series[analyst]), max(1.0, 0.005 * span))
        for k, (parties, series) in enumerate(groups):
            colour, style, marker = styles.get(parties[0], ("#333333", "-", "o"))
            xs = [start] + [datetime.fromisoformat(t) for t, _ in series.points] + [end]
            vals = [float(series.start)] + [float(v) for _, v in series.points]
            ys = vals + [vals[-1]]
            lw = 2.6 - 0.5 * min(k, 3)  # the first drawn is the widest: overlaps show
            ax.step(xs, ys, where="post", color=colour, lw=lw, ls=style,
                    label=" = ".join(parties) + (" (same)" if len(parties) > 1 else ""),
                    zorder=2 + k)
            ax.plot(xs[1:-1], ys[1:-1], marker, color=colour, ms=4.5, zorder=2 + k,
                    markeredgecolor="white", markeredgewidth=0.6)
            top = max(top, max(ys))
        budget = report.analyst_budget(analyst)
        if budget is not None:
            ax.axhline(float(budget), color=BUDGET_COLOUR, lw=1.2, ls="--",
                       label=f"budget {float(budget):g}")
            top = max(top, float(budget))
        ax.set_ylim(0, top * 1.12 or 1.0)
        ax.set_xlim(start, end) if start < end else None
        ax.set_title(f"analyst {analyst}", loc="left", fontsize=9.5, fontweight="bold",
                     color="#222222")
        ax.set_ylabel("epsilon spent", fontsize=8.5)
        ax.tick_params(labelsize=7.5)
        ax.grid(True, color="#E5E5E5", lw=0.7)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        locator = mdates.AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.xaxis.get_offset_text().set_fontsize(7.5)
        ax.legend(loc="upper left", fontsize=7.5, frameon=False, ncol=4)
        if n == len(analysts) - 1:
            ax.set_xlabel("time (UTC)", fontsize=8.5)
        else:  # panels share the time axis: label it once, under the last one
            ax.tick_params(labelbottom=False)
            ax.xaxis.get_offset_text().set_visible(False)


def figure(report: Report, width: float = 8.0) -> Figure:
    """A standalone figure holding only the chart (for the HTML report)."""
    panels = max(1, len(report.series))
    height = 0.9 + 2.1 * panels
    fig = Figure(figsize=(width, height))
    margin_top, margin_bottom = 0.25 / height, 0.55 / height
    draw(fig, report, (0.08, margin_bottom, 0.89, 1 - margin_top - margin_bottom))
    return fig


def png(report: Report, dpi: int = 144) -> bytes:
    """The chart as PNG bytes (Agg backend; no timestamp or software metadata)."""
    fig = figure(report)
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()
