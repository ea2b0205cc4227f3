"""A session as one self-contained HTML page: its roles, its sequence diagram, its steps.

Why one file with everything inline: it is attached to an incident ticket, mailed, opened on
a laptop without network access. The page loads nothing (no CDN, no font, no script from
anywhere): the CSS, the SVG and a few lines of JavaScript (hovering a diagram row highlights
its step in the table, and the other way round) are all in it. ``accompanist diagram
--format html`` writes it; ``accompanist demo`` calls :func:`render_html` for its sessions.
"""

from __future__ import annotations

import datetime as dt
from html import escape
from typing import Any

from accompanist._version import __version__
from accompanist.diagram.svg import STYLES, render_svg
from accompanist.inspection.view import SessionView, seconds

__all__ = ["PAGE_CSS", "render_html", "steps_table_html"]

PAGE_CSS = """
body { font-family: Helvetica, Arial, sans-serif; margin: 24px; color: #263238; background: #fafafa; }
h1 { font-size: 20px; margin: 0 0 4px 0; } h2 { font-size: 16px; margin: 24px 0 8px 0; }
.sub { color: #607d8b; margin-bottom: 16px; font-size: 13px; }
table { border-collapse: collapse; font-size: 13px; background: #fff; }
th, td { border: 1px solid #cfd8dc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #eceff1; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.steps td:nth-child(5) { white-space: nowrap; }
.badge { display: inline-block; padding: 2px 8px; border-radius: 10px; font-size: 12px; font-weight: bold; }
.s-completed { background: #e8f5e9; color: #1b5e20; } .s-compensated, .s-failed, .s-cancelled, .s-disagreement
{ background: #ffebee; color: #b71c1c; } .s-running, .s-finished, .s-compensating, .s-parked, .s-in-progress
{ background: #e3f2fd; color: #0d47a1; } .s-diverged, .s-blocked { background: #fff3e0; color: #bf360c; }
.diagram { overflow-x: auto; background: #fff; border: 1px solid #cfd8dc; padding: 8px; }
tr.hot td { background: #fff9c4; } g.row.hot rect, g.row.hot line { stroke-width: 3; }
g.row { cursor: default; } g.waiting rect { animation: pulse 1.2s ease-in-out infinite; }
@keyframes pulse { 0%, 100% { opacity: 1; } 50% { opacity: .45; } }
td.failed { color: #b71c1c; } td.compensation { color: #bf360c; }
.legend span { display: inline-block; margin-right: 12px; font-size: 12px; }
.legend i { display: inline-block; width: 12px; height: 12px; border: 1px solid; margin-right: 4px;
 vertical-align: -2px; }
"""
"""The page's stylesheet (the web view uses the same)."""

_SCRIPT = """
(function () {
  function mark(order, on) {
    document.querySelectorAll('[data-order="' + order + '"]').forEach(function (el) {
      el.classList.toggle('hot', on);
    });
  }
  document.querySelectorAll('[data-order]').forEach(function (el) {
    var order = el.getAttribute('data-order');
    if (order === '-1') { return; }
    el.addEventListener('mouseenter', function () { mark(order, true); });
    el.addEventListener('mouseleave', function () { mark(order, false); });
  });
})();
"""


def _badge(status: str) -> str:
    return f'<span class="badge s-{escape(status.replace(" ", "-"))}">{escape(status)}</span>'


def _offset(stamp: str | None, base: float | None) -> str:
    at = seconds(stamp)
    return "" if at is None or base is None else f"+{(at - base) * 1e3:.1f} ms"


def _cell(value: Any) -> str:
    return "" if value is None else escape(str(value))


def steps_table_html(view: SessionView) -> str:
    """The merged steps of ``view`` as an HTML table (one row per step, in causal order)."""
    base = view.started
    head = "".join(
        f"<th>{h}</th>"
        for h in ("#", "role", "step", "kind", "name", "value", "at", "took", "attempts", "transaction", "state")
    )
    rows = []
    for order, event in enumerate(view.events):
        s = event.step
        state = s.get("state") or "done"
        klass = "failed" if state == "failed" else ("compensation" if s["kind"] == "compensation" else "")
        took = f"{s['duration_ms']:.1f} ms" if s.get("duration_ms") is not None else ""
        error = f": {s['error']}" if s.get("error") else ""
        at = _offset(s.get("started_at") or s.get("ended_at"), base)
        rows.append(
            f'<tr data-order="{order}"><td class="num">{order + 1}</td><td>{escape(event.role)}</td>'
            f'<td class="num">{_cell(s.get("index"))}</td><td>{escape(s["kind"])}</td><td>{escape(s["name"])}</td>'
            f'<td>{_cell(s.get("value"))}</td><td class="num">{at}</td><td class="num">{took}</td>'
            f'<td class="num">{_cell(s.get("attempts"))}</td>'
            f'<td>{_cell(s.get("transaction"))}</td><td class="{klass}">{escape(state + error)}</td></tr>'
        )
    return f'<table class="steps"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _roles_table(view: SessionView) -> str:
    rows = []
    for role in view.roles:
        record = view.records.get(role)
        waiting = view.waiting.get(role)
        status = _badge(str(record["status"])) if record else "<i>not known</i>"
        updated = escape(str(record.get("updated_at") or ""))[:23].replace("T", " ") if record else ""
        rows.append(
            f"<tr><td>{escape(role)}</td><td>{status}</td><td>{updated}</td>"
            f"<td>{escape(waiting['text']) if waiting else ''}</td></tr>"
        )
    head = "<tr><th>role</th><th>status</th><th>updated (UTC)</th><th>waiting</th></tr>"
    return f'<table class="roles"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _legend() -> str:
    names = {
        "message": "message",
        "transaction": "transaction",
        "local": "local step",
        "failure": "failure",
        "compensation": "compensation",
        "waiting": "waiting now",
    }
    items = []
    for style, name in names.items():
        fill, stroke, _ = STYLES[style]
        items.append(f'<span><i style="background:{fill};border-color:{stroke}"></i>{name}</span>')
    return f'<div class="legend">{"".join(items)}</div>'


def render_html(view: SessionView) -> str:
    """The session as one self-contained HTML page (nothing loaded from the network)."""
    failure = view.failure
    why = ""
    if failure is not None and view.status != "completed":
        why = (
            f"<p><b>failure:</b> {escape(str(failure['error_type']))} at role {escape(str(failure['role']))}"
            f"{' (transaction ' + escape(str(failure['transaction'])) + ')' if failure.get('transaction') else ''}: "
            f"{escape(str(failure['message']))}</p>"
        )
    made = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    title = f"session {view.session_id}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{PAGE_CSS}</style></head><body>"
        f"<h1>{escape(str(view.choreography))} v{escape(str(view.version))} {_badge(view.status)}</h1>"
        f'<div class="sub">{escape(title)} · roles agree: {escape(view.agree)} · {len(view.events)} steps'
        f" · drawn {made} by accompanist {escape(__version__)}</div>{why}"
        f"{_roles_table(view)}<h2>Sequence</h2>{_legend()}"
        f'<div class="diagram">{render_svg(view)}</div>'
        f"<h2>Steps, in causal order</h2>{steps_table_html(view)}"
        f"<script>{_SCRIPT}</script></body></html>\n"
    )
