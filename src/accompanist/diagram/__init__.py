"""Sequence diagrams of sessions: Mermaid text, a standalone SVG, a self-contained HTML page.

``render_html(view)``, ``render_svg(view)`` and ``mermaid_session(view)`` draw a
:class:`~accompanist.inspection.view.SessionView` (a session across its roles, built by
:func:`accompanist.inspection.session_view` from running sidecars or stores);
``mermaid_sequence`` draws a central run (``accompanist check``).
"""

from accompanist.diagram.html import render_html
from accompanist.diagram.mermaid import mermaid_sequence, mermaid_session
from accompanist.diagram.svg import render_svg

__all__ = ["mermaid_sequence", "mermaid_session", "render_html", "render_svg"]
