"""The chart of cumulative epsilon over time: one panel per analyst, one step line per party,
the analyst's budget as a dashed line.

Drawn with matplotlib's object API on a given ``Figure`` (no pyplot, so no global state and no
display backend), so the HTML (PNG) and the PDF (vector) draw the very same chart.
"""

from __future__ import annotations

import io
from datetime import datetime

from matplotlib import dates as mdates
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from veilql.ui.report.collect import Report

# Colour-blind-safe palette (Okabe and Ito 2008), one colour per party in report order.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442",
           "#000000")
BUDGET_COLOUR = "#B22222"


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
    colours = party_colours(report)
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
        for party, series in report.series[analyst].items():
            xs = [start] + [datetime.fromisoformat(t) for t, _ in series.points] + [end]
            vals = [float(series.start)] + [float(v) for _, v in series.points]
            ys = vals + [vals[-1]]
            ax.step(xs, ys, where="post", color=colours.get(party, "#333333"), lw=1.8,
                    label=party)
            ax.plot(xs[1:-1], ys[1:-1], "o", color=colours.get(party, "#333333"), ms=3.5)
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
