"""The report as one self-contained HTML file: inline CSS, the chart as an embedded PNG.

Nothing is fetched when the file is opened (no scripts, fonts or images from elsewhere), so it
can be mailed or archived as is. Every text that comes from a ledger (SQL, names, reasons,
problems) goes through ``html.escape``: a ledger is data, and a query's SQL must never become
markup in the officer's browser. A failed integrity check is a red banner at the top.

>>> from veilql.ui.report.collect import Report
>>> page = render_html(Report("demo", "2026-01-01T00:00:00+00:00", {}, (), (), ()))
>>> page.startswith("<!DOCTYPE html>"), "data:image/png;base64," in page
(True, True)
"""

from __future__ import annotations

import base64
from html import escape

from veilql import __version__
from veilql.ui.report import chart
from veilql.ui.report.collect import Report
from veilql.ui.report.text import (
    STATUS_TEXT,
    TITLE,
    amount,
    anchors_text,
    chain_status,
    counts,
    filters_text,
    integrity_banner,
    when,
)

CSS = """
:root { --ink:#1f2328; --muted:#59636e; --line:#d1d9e0; --bg:#f6f8fa; --ok:#1a7f37;
        --bad:#b42318; --warn:#9a6700; }
* { box-sizing: border-box; }
body { font: 14px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: var(--ink);
       margin: 0; background: #fff; }
main { max-width: 1100px; margin: 0 auto; padding: 28px 32px 48px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 32px 0 10px; padding-bottom: 6px; border-bottom: 1px solid
     var(--line); }
.meta { color: var(--muted); margin: 0 0 18px; }
.banner { padding: 14px 18px; border-radius: 6px; margin: 12px 0 20px; font-weight: 600; }
.banner.ok { background: #dafbe1; color: var(--ok); border: 1px solid #aceebb; }
.banner.fail { background: var(--bad); color: #fff; border: 3px solid #7a1610; font-size: 16px; }
.cards { display: flex; gap: 12px; flex-wrap: wrap; margin: 8px 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 10px 16px; min-width: 130px;
        background: var(--bg); }
.card b { display: block; font-size: 22px; }
.card span { color: var(--muted); font-size: 12px; text-transform: uppercase; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid var(--line);
         vertical-align: top; }
th { background: var(--bg); font-weight: 600; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.when { white-space: nowrap; }
code.sql { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
           white-space: pre-wrap; word-break: break-word; }
.tag { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
       font-weight: 600; white-space: nowrap; }
.tag.committed, .tag.ok { background: #dafbe1; color: var(--ok); }
.tag.aborted { background: #eaeef2; color: var(--muted); }
.tag.open, .tag.mixed { background: #fff8c5; color: var(--warn); }
.tag.failed, .tag.unverified { background: var(--bad); color: #fff; }
.bar { background: #eaeef2; border-radius: 3px; height: 8px; width: 120px; }
.bar i { display: block; height: 8px; border-radius: 3px; background: #0072b2; }
.bar i.high { background: var(--bad); }
.reason { color: var(--muted); font-size: 12px; }
figure { margin: 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
footer { margin-top: 36px; color: var(--muted); font-size: 12px; }
@media print { main { max-width: none; padding: 0; } tr, figure { break-inside: avoid; }
               .banner.fail { -webkit-print-color-adjust: exact; print-color-adjust: exact; } }
"""


def _tag(text: str, cls: str) -> str:
    return f'<span class="tag {escape(cls)}">{escape(text)}</span>'


def _usage_bar(spent: float, budget: float | None) -> str:
    if not budget:
        return ""
    share = min(1.0, spent / budget)
    cls = ' class="high"' if share >= 0.9 else ""
    return (f'<div class="bar" title="{share:.0%} of the budget"><i{cls} '
            f'style="width:{share * 100:.1f}%"></i></div>')


def _banner(report: Report) -> str:
    cls = "ok" if report.ok else "fail"
    role = "status" if report.ok else "alert"
    return f'<div class="banner {cls}" role="{role}">{escape(integrity_banner(report))}</div>'


def _integrity(report: Report) -> str:
    rows = []
    for i in report.integrity:
        status = _tag("ok", "ok") if i.ok else _tag(chain_status(i), "failed")
        rows.append(
            f"<tr><td>{escape(i.party)}</td><td>{status}</td><td class=num>{i.entries}</td>"
            f"<td>{escape(i.summary())}</td><td>{escape(anchors_text(i)) or 'none'}</td>"
            f"<td><code>{escape(i.path)}</code></td></tr>")
    return ("<table><thead><tr><th>Party</th><th>Chain</th><th>Entries verified</th>"
            "<th>Result</th><th>Anchors held by other parties</th><th>Ledger file</th>"
            "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _budgets(report: Report) -> str:
    rows = []
    for b in report.budgets:
        flag = "" if b.verified else " " + _tag("unverified", "unverified")
        budget = float(b.budget_epsilon) if b.budget_epsilon is not None else None
        rows.append(
            f"<tr><td>{escape(b.analyst)}</td><td>{escape(b.party)}{flag}</td>"
            f"<td class=num>{amount(b.budget_epsilon)}</td>"
            f"<td class=num>{amount(b.spent_epsilon)}</td>"
            f"<td class=num>{amount(b.remaining_epsilon)}</td>"
            f"<td>{_usage_bar(float(b.spent_epsilon), budget)}</td>"
            f"<td class=num>{amount(b.budget_delta)}</td>"
            f"<td class=num>{amount(b.spent_delta)}</td>"
            f"<td class=num>{amount(b.remaining_delta)}</td>"
            f"<td class=num>{b.queries}</td></tr>")
    return ("<table><thead><tr><th>Analyst</th><th>Party</th><th>Budget &epsilon;</th>"
            "<th>Spent &epsilon;</th><th>Remaining &epsilon;</th><th>Used</th>"
            "<th>Budget &delta;</th><th>Spent &delta;</th><th>Remaining &delta;</th>"
            "<th>Queries charged</th></tr></thead><tbody>" + "".join(rows)
            + "</tbody></table>")


def _queries(report: Report) -> str:
    if not report.queries:
        return "<p>No queries in this period.</p>"
    rows = []
    for q in report.queries:
        status = _tag(q.status, q.status)
        if not q.verified:
            status += " " + _tag("unverified", "unverified")
        reasons = "".join(f'<div class="reason">{escape(r)}</div>' for r in q.reasons)
        # per-party outcomes only where they add something: an abort or a disagreement
        per_party = ("" if q.status == "committed" else
                     ", ".join(f"{escape(p)}: {escape(s)}" for p, s in q.statuses))
        rows.append(
            f"<tr><td class=when>{escape(when(q.time))}</td><td>{escape(q.analyst)}</td>"
            f"<td><code class=sql>{escape(q.sql)}</code>"
            f'<div class="reason">query {escape(q.query_id)}</div></td>'
            f"<td class=num>{amount(q.epsilon)}</td><td class=num>{amount(q.delta)}</td>"
            f'<td>{escape(", ".join(q.charged)) or "none"}'
            f'<div class="reason">{per_party}</div></td>'
            f'<td title="{escape(STATUS_TEXT.get(q.status, q.status))}">{status}{reasons}</td>'
            "</tr>")
    return ("<table><thead><tr><th>Time</th><th>Analyst</th><th>SQL</th><th>&epsilon;</th>"
            "<th>&delta;</th><th>Parties charged</th><th>Status</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def render_html(report: Report) -> str:
    """The report as a complete, self-contained HTML document."""
    c = counts(report)
    image = base64.b64encode(chart.png(report)).decode("ascii")
    cards = "".join(
        f'<div class="card"><b>{n}</b><span>{label}</span></div>'
        for n, label in ((c["queries"], "queries"), (c["committed"], "released"),
                         (c["aborted"], "aborted"), (c["open"] + c["mixed"], "open / mixed")))
    title = f"{TITLE}: {report.federation}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="VeilQL {escape(__version__)}">
<title>{escape(title)}</title>
<style>{CSS}</style>
</head>
<body>
<main>
<h1>{escape(TITLE)}</h1>
<p class="meta">Federation <b>{escape(report.federation)}</b> &middot; generated
{escape(when(report.generated_at))} &middot; filters: {escape(filters_text(report))}</p>
{_banner(report)}
<div class="cards">{cards}</div>
<h2>Ledger integrity</h2>
{_integrity(report)}
<h2>Budgets per analyst and party</h2>
<p class="meta">All-time figures. Spent counts released queries and open reservations;
aborted queries were given back.</p>
{_budgets(report)}
<h2>Cumulative epsilon over time</h2>
<figure><img alt="Cumulative epsilon spent over time per analyst and party"
src="data:image/png;base64,{image}"></figure>
<h2>Queries</h2>
{_queries(report)}
<footer>Generated by VeilQL {escape(__version__)} from each party's hash-chained ledger.
Amounts are exact ledger values.</footer>
</main>
</body>
</html>
"""
