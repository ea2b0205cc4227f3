"""A sequence diagram as SVG, drawn by hand: lifelines, arrows, notes. No JavaScript library.

Why our own: a sequence diagram is a handful of shapes on a grid, and a file that needs a
library from a CDN would not open on the machine where the incident is being looked at. The
SVG stands alone (inline styles), every row carries a ``<title>`` (its times, attempts, seq) as
a native tooltip, and ``data-order`` ties it to the step's row in the HTML page's table.
"""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

from accompanist.diagram.model import Row, rows_of
from accompanist.inspection.view import SessionView

__all__ = ["STYLES", "render_svg", "svg_of_rows"]

_CHAR = 7.0  # average width of one character at 13px, for layout
_MAX_TEXT = 64  # characters shown in one row (the tooltip has everything)
_TOP = 16
_HEAD = 34
_ROW = {"arrow": 34, "note": 30, "outcome": 34}

STYLES: dict[str, tuple[str, str, str]] = {
    # style -> (fill, stroke, text colour)
    "message": ("none", "#37474f", "#263238"),
    "select": ("none", "#6a1b9a", "#4a148c"),
    "unreceived": ("none", "#9e9e9e", "#757575"),
    "local": ("#fffde7", "#c9b458", "#3e2723"),
    "transaction": ("#e3f2fd", "#1e88e5", "#0d47a1"),
    "failure": ("#ffebee", "#d32f2f", "#b71c1c"),
    "stopped": ("#f5f5f5", "#9e9e9e", "#616161"),
    "parked": ("#e0f7fa", "#00838f", "#006064"),
    "compensation": ("#fff3e0", "#ef6c00", "#bf360c"),
    "waiting": ("#e8f5e9", "#2e7d32", "#1b5e20"),
    "completed": ("#e8f5e9", "#2e7d32", "#1b5e20"),
    "failed": ("#ffebee", "#d32f2f", "#b71c1c"),
}
"""Colours of each row style: a failure is red, a compensation orange, where a role waits green."""


def _clip(text: str, limit: int = _MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _width(text: str) -> float:
    return len(text) * _CHAR


def svg_of_rows(roles: list[str], rows: list[Row], *, title: str = "") -> str:
    """Draw ``rows`` across the lifelines of ``roles`` as one standalone ``<svg>`` element."""
    roles = roles or sorted({r.src for r in rows})
    texts = [_clip(r.text) for r in rows]
    widest = max([_width(t) for t, r in zip(texts, rows, strict=True) if r.kind != "outcome"] + [0.0])
    gap = max(170.0, min(_width("x" * _MAX_TEXT) + 24, widest + 28))
    boxes = [max(90.0, _width(role) + 28) for role in roles]
    left = max(20.0, boxes[0] / 2 + 10, gap / 2 + 6) if roles else 20.0
    x = {role: left + i * gap for i, role in enumerate(roles)}
    width = (left * 2 + gap * (len(roles) - 1)) if roles else 200.0
    y = _TOP + _HEAD + 18
    body: list[str] = []
    for index, (row, text) in enumerate(zip(rows, texts, strict=True)):
        fill, stroke, ink = STYLES.get(row.style, STYLES["local"])
        y += _ROW[row.kind]
        tip = f"<title>{escape(row.text)}{' · ' + escape(row.detail) if row.detail else ''}</title>"
        attrs = f'class="row {row.kind} {row.style}" data-order="{row.order}" data-row="{index}"'
        if row.kind == "arrow" and row.src in x and row.dst in x:
            x1, x2 = x[row.src], x[str(row.dst)]
            dash = ' stroke-dasharray="6 4"' if row.style in ("select", "unreceived") else ""
            marker = "url(#cross)" if row.style == "unreceived" else "url(#head)"
            body.append(
                f"<g {attrs}>{tip}"
                f'<line x1="{x1:.1f}" y1="{y:.1f}" x2="{x2 + (-8 if x2 > x1 else 8):.1f}" y2="{y:.1f}" '
                f'stroke="{stroke}" stroke-width="1.6"{dash} marker-end="{marker}"/>'
                f'<text x="{(x1 + x2) / 2:.1f}" y="{y - 7:.1f}" text-anchor="middle" fill="{ink}">{escape(text)}</text>'
                "</g>"
            )
        elif row.kind == "outcome" and roles:
            x1, x2 = x[roles[0]] - gap / 2 + 8, x[roles[-1]] + gap / 2 - 8
            body.append(
                f"<g {attrs}>{tip}"
                f'<rect x="{x1:.1f}" y="{y - 22:.1f}" width="{x2 - x1:.1f}" height="28" rx="6" fill="{fill}" '
                f'stroke="{stroke}" stroke-width="1.4"/>'
                f'<text x="{(x1 + x2) / 2:.1f}" y="{y - 4:.1f}" text-anchor="middle" fill="{ink}" '
                f'font-weight="bold">{escape(_clip(row.text, int((x2 - x1) / _CHAR) - 2))}</text></g>'
            )
        elif row.src in x:
            w = min(gap - 12, _width(text) + 18)
            cx = x[row.src]
            body.append(
                f"<g {attrs}>{tip}"
                f'<rect x="{cx - w / 2:.1f}" y="{y - 20:.1f}" width="{w:.1f}" height="24" rx="4" fill="{fill}" '
                f'stroke="{stroke}"/>'
                f'<text x="{cx:.1f}" y="{y - 4:.1f}" text-anchor="middle" fill="{ink}">'
                f"{escape(_clip(text, int((w - 10) / _CHAR)))}</text></g>"
            )
    height = y + 30
    heads = []
    for role, box in zip(roles, boxes, strict=True):
        cx = x[role]
        heads.append(
            f'<line x1="{cx:.1f}" y1="{_TOP + _HEAD:.1f}" x2="{cx:.1f}" y2="{height - 8:.1f}" stroke="#b0bec5" '
            'stroke-dasharray="4 4"/>'
            f'<rect x="{cx - box / 2:.1f}" y="{_TOP}" width="{box:.1f}" height="{_HEAD}" rx="6" fill="#eceff1" '
            'stroke="#546e7a"/>'
            f'<text x="{cx:.1f}" y="{_TOP + 22}" text-anchor="middle" font-weight="bold" fill="#263238">'
            f"{escape(role)}</text>"
        )
    label = f"<title>{escape(title)}</title>" if title else ""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="sequence" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="Helvetica, Arial, sans-serif" font-size="13" '
        f"role=\"img\" aria-label={quoteattr(title or 'sequence diagram')}>{label}"
        '<defs><marker id="head" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" markerHeight="8" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#37474f"/></marker>'
        '<marker id="cross" viewBox="0 0 10 10" refX="5" refY="5" markerWidth="9" markerHeight="9" orient="auto">'
        '<path d="M 1 1 L 9 9 M 9 1 L 1 9" stroke="#9e9e9e" stroke-width="2"/></marker></defs>'
        f'<rect width="100%" height="100%" fill="#ffffff"/>{"".join(heads)}{"".join(body)}</svg>'
    )


def render_svg(view: SessionView) -> str:
    """The whole session as a standalone SVG sequence diagram across its roles."""
    title = f"session {view.session_id}: {view.choreography} v{view.version}, {view.status}"
    return svg_of_rows(view.roles, rows_of(view), title=title)
