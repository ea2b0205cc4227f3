"""Seeing sessions: one role's steps, every role's steps merged, read from sidecars or stores.

``await session_view([HttpSource(url) for url in urls], session_id)`` gives a
:class:`SessionView` of a session across its roles, which :mod:`accompanist.diagram` draws.
"""

from accompanist.inspection.sources import HttpSource, Source, StoreSource, collect_sessions, session_view
from accompanist.inspection.view import Event, SessionView, build_view

__all__ = [
    "Event",
    "HttpSource",
    "SessionView",
    "Source",
    "StoreSource",
    "build_view",
    "collect_sessions",
    "session_view",
]
