"""The service-facing HTTP/JSON API of a sidecar.

A service in any language starts sessions and reads their state here::

    POST /sessions[?wait=true&timeout=S]   {"choreography": "order", "version": 1, "args": [...],
                                            "session_id": "order-1042" (optional: idempotent start)}
    GET  /sessions/{id}
    GET  /sessions/{id}/steps              that role's steps in order, with times, values, attempts
    GET  /sessions?status=failed&limit=100
    POST /sessions/{id}/cancel[?wait=true&timeout=S]
    POST /sessions/{id}/resume
    GET  /healthz
    GET  /metrics                            Prometheus text
    GET  /openapi.json                       this API as an OpenAPI 3.1 document

Errors are JSON ``{"error", "code", "field"}`` (see :mod:`.api_errors`); with a token set,
every path but ``/healthz`` and ``/metrics`` needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.typedefs import Middleware

from accompanist.engine.engine import Engine
from accompanist.engine.upgrades import versions_report
from accompanist.errors import (
    AccompanistError,
    CodecError,
    DefinitionError,
    OutcomeDecidedError,
    OverloadedError,
    SessionConflictError,
    SessionError,
    StoreInputError,
    UnknownChoreographyError,
    UnknownSessionError,
    VersionUnavailableError,
)
from accompanist.ids import SESSION_ID_RULE, valid_session_id
from accompanist.inspection.engine_steps import steps_of
from accompanist.sidecar.api_errors import ApiError, auth_middleware, errors_middleware
from accompanist.sidecar.api_input import MAX_DEPTH, convert_args, field, flag, json_object, timeout_of, too_deep
from accompanist.sidecar.openapi import openapi_document
from accompanist.store.base import TERMINAL_STATUSES, SessionRecord, SessionStatus

__all__ = ["build_api", "record_json"]

#: Largest request body accepted (413 beyond).
MAX_BODY = 1024 * 1024
API_TOKEN_SET = web.AppKey("api_token_set", bool)

log = logging.getLogger("accompanist.api")


def _iso(ts: float) -> str | None:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat() if ts else None


def record_json(engine: Engine, record: SessionRecord) -> dict[str, Any]:
    """A session record as the API shows it (result decoded to JSON-able data)."""
    result: Any = None
    if record.result is not None:
        try:
            result = msgspec.to_builtins(engine.result_of(record))
        except (AccompanistError, TypeError) as exc:
            result = f"<result not representable as JSON: {exc}>"
    failure = engine.failure_of(record)
    blocked = engine.blocked.get(record.session_id)
    return {
        "session_id": record.session_id,
        "choreography": record.choreography,
        "version": record.version,
        "role": record.role,
        "status": "blocked" if blocked is not None else record.status,
        "result": result,
        "error": blocked or record.error,
        "failure": failure.to_json() if failure is not None else None,
        "attempts": record.attempts,
        "created_at": _iso(record.created_at),
        "updated_at": _iso(record.updated_at),
    }


_START_FIELDS = ("choreography", "version", "args", "session_id")


def build_api(
    engine: Engine,
    *,
    mode: str,
    extra_metrics: Callable[[], bytes] | None = None,
    token: str | None = None,
) -> web.Application:
    """The aiohttp application serving ``engine``'s sessions.

    Args:
        engine: the engine whose sessions are served.
        mode: shown by ``/healthz``.
        extra_metrics: more Prometheus text for ``/metrics``.
        token: when set, every path but ``/healthz`` and ``/metrics`` needs
            ``Authorization: Bearer <token>``.
    """

    async def start_session(request: web.Request) -> web.Response:
        body = await json_object(request)
        unknown = sorted(set(body) - set(_START_FIELDS))
        if unknown:
            raise ApiError("unknown-field", f"unknown field(s): {', '.join(unknown)}", unknown[0])
        name = field(body, "choreography", str, "a string", required=True)
        if not name:
            raise ApiError("invalid-field", "field 'choreography' must not be empty", "choreography")
        version = field(body, "version", int, "an integer")
        args = field(body, "args", list, "a JSON array")
        args = [] if args is None else args
        session_id = field(body, "session_id", str, "a string")
        if session_id is not None and not valid_session_id(session_id):
            raise ApiError("invalid-field", f"invalid session_id {session_id!r}: use {SESSION_ID_RULE}", "session_id")
        wait = flag(request, "wait")
        timeout = timeout_of(request)
        try:
            choreography = engine.app.get(name, version)
        except UnknownChoreographyError as exc:
            raise ApiError(
                "unknown-choreography", str(exc), "version" if version is not None else "choreography"
            ) from None
        for index, arg in enumerate(args):
            if too_deep(arg, MAX_DEPTH - 2):
                raise ApiError(
                    "too-deep", f"argument {index} nests deeper than {MAX_DEPTH - 2} levels", f"args[{index}]"
                )
        initiator, arity = choreography.initiator.name, choreography.arity
        # An idempotent retry with a taken session_id is answered before these checks (by the
        # engine, as for any start), so convert only what the engine would run.
        converted = convert_args(choreography, args) if initiator == engine.role and len(args) == arity else args
        try:
            session_id = await engine.start_session(name, converted, version, session_id)
        except UnknownChoreographyError as exc:
            raise ApiError("unknown-choreography", str(exc), "choreography") from None
        except (CodecError, StoreInputError) as exc:  # an argument the wire or the store cannot hold
            raise ApiError("invalid-argument", str(exc), "args") from None
        except DefinitionError as exc:
            if initiator != engine.role:
                raise ApiError(
                    "not-initiator",
                    f"choreography {choreography.name!r} starts at role '{initiator}', not at '{engine.role}': "
                    "start it through that role's sidecar",
                    "choreography",
                ) from None
            if len(args) != arity:
                raise ApiError(
                    "wrong-arity",
                    f"choreography {choreography.name!r} takes {arity} argument(s), got {len(args)}",
                    "args",
                    expected=arity,
                ) from None
            raise ApiError("invalid-field", str(exc)) from None
        except OverloadedError as exc:
            code = "overloaded" if engine.live_sessions else "not-accepting"
            raise ApiError(code, str(exc), headers={"Retry-After": "1"}) from None
        except SessionConflictError as exc:
            raise ApiError("session-conflict", str(exc), "session_id") from None
        except VersionUnavailableError as exc:
            raise ApiError(
                "version-unavailable",
                str(exc),
                "version" if version is not None else "choreography",
                versions=exc.versions,
                lacking=exc.lacking,
            ) from None
        except SessionError as exc:
            raise ApiError("conflict", str(exc)) from None
        if not wait:
            return web.json_response(
                {"session_id": session_id, "status": SessionStatus.RUNNING},
                status=202,
                headers={"Location": f"/sessions/{session_id}"},
            )
        try:
            record = await engine.wait(session_id, timeout)
        except TimeoutError:
            return web.json_response(
                {"session_id": session_id, "status": "running"},
                status=202,
                headers={"Location": f"/sessions/{session_id}"},
            )
        return web.json_response(record_json(engine, record))

    async def get_session(request: web.Request) -> web.Response:
        session_id = request.match_info["session_id"]
        record = await engine.get(session_id)
        if record is None:
            raise ApiError("unknown-session", f"no session {session_id} at role '{engine.role}'", "session_id")
        return web.json_response(record_json(engine, record))

    async def get_steps(request: web.Request) -> web.Response:
        session_id = request.match_info["session_id"]
        steps = await steps_of(engine, session_id)
        if steps is None:
            raise ApiError("unknown-session", f"no session {session_id} at role '{engine.role}'", "session_id")
        return web.json_response(steps)

    async def list_sessions(request: web.Request) -> web.Response:
        status = request.query.get("status")
        known = [s.value for s in SessionStatus] + ["blocked"]
        if status is not None and status not in known:
            raise ApiError("invalid-query", f"unknown status {status!r}; one of {', '.join(known)}", "status")
        try:
            limit = max(1, min(int(request.query.get("limit", "100")), 10_000))
        except ValueError:
            raise ApiError("invalid-query", "query parameter 'limit' must be an integer", "limit") from None
        if status == "blocked":
            found = [await engine.stored(sid, retry=False) for sid in list(engine.blocked)[:limit]]
            records = [r for r in found if r is not None]
        else:
            records = await engine.guard.once(lambda: engine.store.list_sessions(status, limit))
        return web.json_response({"sessions": [record_json(engine, r) for r in records]})

    async def cancel_session(request: web.Request) -> web.Response:
        """A cancel is a request: it wins unless the initiator has declared the outcome."""
        session_id = request.match_info["session_id"]
        wait = flag(request, "wait")
        timeout = timeout_of(request)
        try:
            record = await engine.cancel(session_id)
            if wait and record.status not in TERMINAL_STATUSES:
                record = await engine.wait(session_id, timeout)
        except UnknownSessionError as exc:
            raise ApiError("unknown-session", str(exc), "session_id") from None
        except OutcomeDecidedError as exc:
            raise ApiError("outcome-decided", str(exc), outcome=exc.status) from None
        except TimeoutError:
            record = await engine.get(session_id) or record
        except SessionError as exc:
            raise ApiError("conflict", str(exc)) from None
        body = record_json(engine, record)
        if record.status == SessionStatus.COMPLETED:  # the request lost: the outcome stands
            body.update(
                error="the session completed before the cancel", code="outcome-decided", field=None, outcome="completed"
            )
            return web.json_response(body, status=409)
        if record.status in TERMINAL_STATUSES:
            return web.json_response(body)
        try:
            initiator = engine.app.get(record.choreography, record.version).initiator.name
        except UnknownChoreographyError:  # its version is not deployed here (blocked)
            initiator = engine.role
        if initiator != engine.role and record.status != SessionStatus.COMPENSATING:
            body["cancel"] = f"requested from the initiator '{initiator}'"
        return web.json_response(body, status=202)

    async def resume_session(request: web.Request) -> web.Response:
        """An operator resumes a diverged (after fixed code was deployed) or blocked session."""
        session_id = request.match_info["session_id"]
        try:
            record = await engine.resume(session_id)
        except UnknownSessionError as exc:
            raise ApiError("unknown-session", str(exc), "session_id") from None
        except UnknownChoreographyError as exc:
            raise ApiError("unknown-choreography", str(exc)) from None
        except SessionError as exc:
            raise ApiError("conflict", str(exc)) from None
        return web.json_response(record_json(engine, record), status=202)

    async def healthz(request: web.Request) -> web.Response:
        health = engine.health()
        body = {
            "status": "ok" if health["ok"] else "unhealthy",
            "role": engine.role,
            "mode": mode,
            "live_sessions": engine.live_sessions,
            "uptime_seconds": round(time.time() - engine.started_at, 3),
            **{k: v for k, v in health.items() if k != "ok"},
        }
        return web.json_response(body, status=200 if health["ok"] else 503)

    async def versions(request: web.Request) -> web.Response:
        return web.json_response(await versions_report(engine))

    async def metrics(request: web.Request) -> web.Response:
        text = engine.metrics.render() + (extra_metrics() if extra_metrics else b"")
        return web.Response(body=text, content_type="text/plain", charset="utf-8")

    middlewares: list[Middleware] = [errors_middleware] + ([auth_middleware(token)] if token else [])
    app = web.Application(client_max_size=MAX_BODY, middlewares=middlewares)
    app[API_TOKEN_SET] = bool(token)
    document = openapi_document(secured=bool(token))

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(document)

    app.router.add_post("/sessions", start_session)
    app.router.add_get("/sessions", list_sessions)
    app.router.add_get("/sessions/{session_id}", get_session)
    app.router.add_get("/sessions/{session_id}/steps", get_steps)
    app.router.add_post("/sessions/{session_id}/cancel", cancel_session)
    app.router.add_post("/sessions/{session_id}/resume", resume_session)
    app.router.add_get("/versions", versions)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    return app
