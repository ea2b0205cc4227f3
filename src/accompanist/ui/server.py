"""The web view's routes: its static page and the JSON it polls, over any set of sources.

Why the server draws the diagram: the SVG renderer is Python (:mod:`accompanist.diagram`), the
same one behind ``accompanist diagram``, so the page needs no drawing library: it asks for the
session every second and swaps in the new SVG. Each source is read on every request, so the
page is as live as the sidecars; a source that fails is reported on the page, never hides the
others.

Routes, under ``prefix`` (``/ui``)::

    GET /ui/                         the page (sessions table; #/session/ID: one session)
    GET /ui/static/{app.js,app.css}  its script and styles
    GET /ui/api/sessions             the table: ?status= &choreography= &since= (an age: 10m) &limit=
    GET /ui/api/sessions/{id}        one session: every role's record and steps, merged; its SVG
"""

from __future__ import annotations

import asyncio
import importlib.resources
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from accompanist.diagram.html import steps_table_html
from accompanist.diagram.svg import render_svg
from accompanist.errors import AccompanistError
from accompanist.inspection.listing import filter_sessions, session_counts
from accompanist.inspection.sources import Source
from accompanist.inspection.view import agreement, build_view

__all__ = ["add_ui_routes", "ui_application"]

_STATIC = {"app.js": "application/javascript", "app.css": "text/css", "index.html": "text/html"}
_FETCH = 2_000  # sessions read per source for the table
_AGES = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _asset(name: str) -> bytes:
    return importlib.resources.files("accompanist.ui").joinpath("static", name).read_bytes()


def _age(text: str | None) -> float | None:
    """``10m`` -> 600 seconds (None when absent).

    Raises:
        web.HTTPBadRequest: not an age.
    """
    if not text:
        return None
    unit = _AGES.get(text[-1:])
    try:
        if unit is None:
            raise ValueError(text)
        return float(text[:-1]) * unit
    except ValueError:
        raise web.HTTPBadRequest(text=f"since={text!r}: use an age such as 30s, 10m, 2h, 1d") from None


async def _each(sources: Sequence[Source], call: Any) -> tuple[list[Any], list[dict[str, str]]]:
    """``call(source)`` for every source at once: the answers of those that answered, and
    what went wrong with the others."""
    answers = await asyncio.gather(*(call(s) for s in sources), return_exceptions=True)
    good, errors = [], []
    for source, answer in zip(sources, answers, strict=True):
        if isinstance(answer, BaseException):
            if not isinstance(answer, (AccompanistError, OSError, TimeoutError)):
                raise answer
            errors.append({"source": source.name, "error": str(answer)})
        else:
            good.append(answer)
    return good, errors


def add_ui_routes(app: web.Application, sources: Sequence[Source], prefix: str = "/ui") -> None:
    """Serve the web view at ``prefix`` on ``app``, reading ``sources``."""
    assets = {name: _asset(name) for name in _STATIC}

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=assets["index.html"], content_type="text/html", charset="utf-8")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(prefix + "/")

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in assets or name == "index.html":
            raise web.HTTPNotFound()
        return web.Response(body=assets[name], content_type=_STATIC[name], charset="utf-8")

    async def table(request: web.Request) -> web.Response:
        q = request.query
        try:
            limit = max(1, min(int(q.get("limit", "200")), _FETCH))
        except ValueError:
            raise web.HTTPBadRequest(text="limit must be an integer") from None
        age = _age(q.get("since"))
        answers, errors = await _each(sources, lambda s: s.sessions(None, _FETCH))
        by_session: dict[str, dict[str, dict[str, Any]]] = {}
        for answer in answers:
            for record in answer:
                by_session.setdefault(record["session_id"], {})[record["role"]] = record
        since = None if age is None else time.time() - age
        rows = filter_sessions(
            by_session, status=q.get("status") or None, choreography=q.get("choreography") or None, since=since
        )
        roles: list[str] = []
        for _, at in rows:
            roles += [r for r in at if r not in roles]
        body = {
            "roles": roles,
            "total": len(rows),
            "counts": session_counts(rows),
            "choreographies": sorted({next(iter(at.values()))["choreography"] for at in by_session.values()}),
            "sessions": [
                {
                    "session_id": sid,
                    "choreography": next(iter(at.values()))["choreography"],
                    "version": next(iter(at.values()))["version"],
                    "statuses": {role: r["status"] for role, r in at.items()},
                    "agree": agreement([r["status"] for r in at.values()]),
                    "updated_at": max(str(r.get("updated_at") or "") for r in at.values()),
                }
                for sid, at in rows[:limit]
            ],
            "errors": errors,
        }
        return web.json_response(body)

    async def session(request: web.Request) -> web.Response:
        session_id = request.match_info["session_id"]

        async def read(source: Source) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
            record = await source.session(session_id)
            return record, (await source.steps(session_id) if record is not None else None)

        found, errors = await _each(sources, read)
        records = {r["role"]: r for r, _ in found if r is not None}
        if not records:
            return web.json_response({"error": f"no source knows session {session_id}", "errors": errors}, status=404)
        view = build_view(session_id, records, {r["role"]: s for r, s in found if r is not None})
        return web.json_response(
            {**view.to_json(), "svg": render_svg(view), "steps_html": steps_table_html(view), "errors": errors}
        )

    app.router.add_get(prefix, redirect)
    app.router.add_get(prefix + "/", page)
    app.router.add_get(prefix + "/static/{name}", static)
    app.router.add_get(prefix + "/api/sessions", table)
    app.router.add_get(prefix + "/api/sessions/{session_id}", session)


def ui_application(sources: Sequence[Source]) -> web.Application:
    """A web application serving only the web view (``accompanist ui``); ``/`` leads to it."""
    app = web.Application()

    async def root(request: web.Request) -> web.Response:
        raise web.HTTPFound("/ui/")

    app.router.add_get("/", root)
    add_ui_routes(app, sources)

    async def close_sources(app: web.Application) -> None:
        await asyncio.gather(*(s.close() for s in sources), return_exceptions=True)

    app.on_cleanup.append(close_sources)
    return app
