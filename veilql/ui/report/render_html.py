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
from veilql.ui.report.render_json import digest
from veilql.ui.report.text import (
    OUTCOME_TEXT,
    TITLE,
    amount,
    analyst_summary,
    anchors_text,
    chain_status,
    counts,
    filters_text,
    identity_text,
    integrity_banner,
    party_summary,
    prior_text,
    reasons_text,
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
.tag.committed, .tag.ok, .tag.released { background: #dafbe1; color: var(--ok); }
.tag.aborted, .tag.failed-query, .tag.cancelled, .tag.refused { background: #eaeef2;
       color: var(--muted); }
.tag.over-budget { background: #fde2e1; color: var(--bad); }
.tag.open, .tag.mixed { background: #fff8c5; color: var(--warn); }
.tag.failed, .tag.unverified { background: var(--bad); color: #fff; }
.bar { background: #eaeef2; border-radius: 3px; height: 8px; width: 120px; }
.bar i { display: block; height: 8px; border-radius: 3px; background: #0072b2; }
.bar i.high { background: var(--bad); }
.reason { color: var(--muted); font-size: 12px; }
figure { margin: 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
footer { margin-top: 36px; color: var(--muted); font-size: 12px; }
.signoff { margin-top: 28px; border: 1px solid var(--ink); border-radius: 6px;
           padding: 14px 18px; break-inside: avoid; }
.signoff table td { border: none; padding: 14px 8px 4px; }
.signoff .line { border-bottom: 1px solid var(--ink); min-width: 260px; }
.digest { font: 11px ui-monospace, Menlo, Consolas, monospace; word-break: break-all; }
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


def _summaries(report: Report) -> str:
    """Per analyst (the party that binds) and per party, side by side."""
    rows = []
    for a in analyst_summary(report):
        flag = "" if a["verified"] else " " + _tag("unverified", "unverified")
        rows.append(
            f"<tr><td>{escape(str(a['analyst']))}{flag}</td>"
            f"<td class=num>{amount(a['budget_epsilon'])}</td>"
            f"<td class=num>{amount(a['spent_epsilon'])}</td>"
            f"<td>{escape(str(a['spent_at']))}</td>"
            f"<td class=num>{amount(a['remaining_epsilon'])}</td>"
            f"<td class=num>{a['released']}</td><td class=num>{a['refused']}</td></tr>")
    analysts = ("<table><thead><tr><th>Analyst</th><th>Budget &epsilon;</th>"
                "<th>Most spent &epsilon;</th><th>at party</th><th>Least remaining &epsilon;</th>"
                "<th>Released</th><th>Refused</th></tr></thead><tbody>" + "".join(rows)
                + "</tbody></table>")
    rows = []
    for p in party_summary(report):
        flag = "" if p["verified"] else " " + _tag("unverified", "unverified")
        rows.append(
            f"<tr><td>{escape(str(p['party']))}{flag}</td>"
            f"<td class=num>{amount(p['spent_epsilon'])}</td>"
            f"<td class=num>{p['charged']}</td><td class=num>{p['refused']}</td></tr>")
    parties = ("<table><thead><tr><th>Party</th><th>&epsilon; charged (all analysts)</th>"
               "<th>Queries charged</th><th>Refused here</th></tr></thead><tbody>"
               + "".join(rows) + "</tbody></table>")
    return f"<h3>Per analyst</h3>{analysts}<h3>Per party</h3>{parties}"


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
        cls = q.outcome.replace(" ", "-") if q.outcome != "failed" else "failed-query"
        status = _tag(q.outcome or q.status, cls)
        if not q.verified:
            status += " " + _tag("unverified", "unverified")
        reasons = "".join(f'<div class="reason">{escape(r)}</div>' for r in reasons_text(q))
        # per-party outcomes only where they add something: an abort or a disagreement
        per_party = ("" if q.status == "committed" else
                     ", ".join(f"{escape(p)}: {escape(s)}" for p, s in q.statuses))
        read = [f"tables: {', '.join(q.tables) or 'none'}"]
        if q.columns:
            read.append(f"columns: {', '.join(q.columns)}")
        if q.mechanism:
            read.append(f"mechanism: {q.mechanism}")
        details = "".join(f'<div class="reason">{escape(t)}</div>' for t in read)
        charged = (f"{amount(q.charged_epsilon)}" if q.charged_epsilon == q.epsilon else
                   f"{amount(q.charged_epsilon)}<div class=reason>asked "
                   f"{amount(q.epsilon)}</div>")
        rows.append(
            f"<tr><td class=when>{escape(when(q.time))}</td><td>{escape(q.analyst)}"
            f'<div class="reason">{escape(identity_text(q.identity))}</div></td>'
            f"<td>{escape(q.purpose) or '<i>none stated</i>'}</td>"
            f"<td><code class=sql>{escape(q.sql)}</code>"
            f'<div class="reason">query {escape(q.query_id)}</div>{details}</td>'
            f"<td class=num>{charged}</td><td class=num>{amount(q.charged_delta)}</td>"
            f'<td>{escape(", ".join(q.charged)) or "none"}'
            f'<div class="reason">{per_party}</div></td>'
            f'<td title="{escape(OUTCOME_TEXT.get(q.outcome, q.status))}">{status}{reasons}'
            "</td></tr>")
    return ("<table><thead><tr><th>Time</th><th>Who</th><th>Purpose</th><th>SQL, what it "
            "read</th><th>&epsilon; charged</th><th>&delta; charged</th><th>Parties charged"
            "</th><th>Outcome</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _signoff(report: Report) -> str:
    """The block an officer signs: name, role, date, signature, and the data digest the
    signature covers."""
    lines = "".join(f"<tr><td>{label}</td><td class=line>&nbsp;</td></tr>"
                    for label in ("Reviewed by (name)", "Role", "Date", "Signature"))
    return ('<section class="signoff"><h2>Review and signature</h2><p>I have reviewed this '
            f"report of the privacy budget spent in federation <b>{escape(report.federation)}</b>, "
            f"generated {escape(when(report.generated_at))}.</p><table>{lines}</table>"
            '<p class="meta">This signature covers the data whose JSON report has SHA-256 '
            f'<span class="digest">{digest(report)}</span> (re-run <code>veil report '
            "--format json</code> on the same ledgers to check).</p></section>")


def render_html(report: Report) -> str:
    """The report as a complete, self-contained HTML document."""
    c = counts(report)
    image = base64.b64encode(chart.png(report)).decode("ascii")
    cards = "".join(
        f'<div class="card"><b>{n}</b><span>{label}</span></div>'
        for n, label in ((c["queries"], "queries"), (c["released"], "released"),
                         (c["over budget"] + c["refused"], "refused"),
                         (c["failed"] + c["cancelled"], "failed / cancelled"),
                         (c["open"] + c["mixed"], "open / mixed")))
    prior = prior_text(report)
    prior_html = f'<p class="meta"><b>Earlier report:</b> {escape(prior)}</p>' if prior else ""
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
{prior_html}
<h2>Budgets per analyst and party</h2>
<p class="meta">All-time figures. Spent counts released queries and open reservations;
aborted queries were given back.</p>
{_budgets(report)}
{_summaries(report)}
<h2>Cumulative epsilon over time</h2>
<figure><img alt="Cumulative epsilon spent over time per analyst and party"
src="data:image/png;base64,{image}"></figure>
<h2>Queries</h2>
<p class="meta">Every query, released or not: refused and over-budget attempts cost nothing
and are listed too. Columns and mechanism are re-derived from the SQL under today's
policies; the purpose is the analyst's own statement; "certificate" means a node took the
analyst's name from a client certificate, "self-asserted" that it ran embedded.</p>
{_queries(report)}
{_signoff(report)}
<footer>Generated by VeilQL {escape(__version__)} from each party's hash-chained ledger.
Amounts are exact ledger values.</footer>
</main>
</body>
</html>
"""
