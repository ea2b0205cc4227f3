"""The live web view: the sessions table and each session's sequence diagram, in a browser.

``accompanist ui --sidecar URL ...`` serves it on its own port; ``accompanist sidecar --ui``
serves it on the sidecar's API port under ``/ui``. Plain HTML, CSS and JavaScript shipped in
the package (``ui/static``): no build step, nothing loaded from the network.
"""

from accompanist.ui.server import add_ui_routes

__all__ = ["add_ui_routes"]
