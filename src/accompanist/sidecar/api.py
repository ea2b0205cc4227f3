"""The service-facing HTTP/JSON API of a sidecar.

A service in any language starts sessions and reads their state here::

    POST /sessions[?wait=true&timeout=S]   {"choreography": "order", "version": 1, "args": [...],
                                            "session_id": "order-1042" (optional: idempotent start)}
    GET  /sessions/{id}
    GET  /sessions?status=failed&limit=100
    POST /sessions/{id}/cancel[?wait=true&timeout=S]
    POST /sessions/{id}/resume
    GET  /healthz
    GET  /metrics                            Prometheus text
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
import typing
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from accompanist.engine.engine import Engine
from accompanist.errors import (
    AccompanistError,
    CodecError,
    DefinitionError,
    OutcomeDecidedError,
    OverloadedError,
    SessionError,
    StoreError,
    TransportError,
    UnknownChoreographyError,
    UnknownSessionError,
)
from accompanist.language.choreography import Choreography
from accompanist.language.located import Located
from accompanist.store.base import TERMINAL_STATUSES, SessionRecord, SessionStatus

__all__ = ["build_api", "record_json"]

_MAX_BODY = 1024 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _iso(ts: float) -> str | None:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat() if ts else None


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _unavailable(exc: BaseException) -> web.Response:
    """The store is failing: try again later (nothing was lost or decided)."""
    return web.json_response({"error": str(exc), "code": "store-unavailable"}, status=503, headers={"Retry-After": "1"})


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


def convert_args(choreography: Choreography, args: list[Any]) -> list[Any]:
    """Turn JSON arguments into the types the choreography declares (``Located[Order]``).

    Raises:
        CodecError: an argument does not fit its declared, registered type (named).
    """
    hints = choreography.argument_types()
    if not hints:
        return args
    params = choreography.parameters
    registered = set(choreography.codec.types)
    out = []
    for index, (name, value) in enumerate(zip(params, args, strict=False)):
        target = hints.get(name)
        inner = typing.get_args(target)[0] if typing.get_origin(target) is Located and typing.get_args(target) else None
        if isinstance(inner, type) and inner in registered:
            try:
                if hasattr(inner, "model_validate"):
                    value = inner.model_validate(value)
                else:
                    value = msgspec.convert(value, inner, strict=False)
            except Exception as exc:
                raise CodecError(f"argument {index} ({name}) is not a valid {inner.__qualname__}: {exc}") from exc
        out.append(value)
    return out


def _timeout(request: web.Request) -> float | None:
    """``?timeout=S``: a finite, non-negative number of seconds, or None.

    Raises:
        ValueError: it is not.
    """
    if "timeout" not in request.query:
        return None
    value = float(request.query["timeout"])
    if not math.isfinite(value) or value < 0:
        raise ValueError(value)
    return value


def build_api(engine: Engine, *, mode: str, extra_metrics: Callable[[], bytes] | None = None) -> web.Application:
    """The aiohttp application serving ``engine``'s sessions."""

    async def start_session(request: web.Request) -> web.Response:
        try:
            body = await request.json(loads=json.loads)
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            return _error(400, "request body is not valid JSON")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object with 'choreography' and 'args'")
        name = body.get("choreography")
        version = body.get("version")
        args = body.get("args", [])
        if not isinstance(name, str) or not name:
            return _error(400, "field 'choreography' (string) is required")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            return _error(400, "field 'version' must be an integer")
        if not isinstance(args, list):
            return _error(400, "field 'args' must be a JSON array")
        session_id = body.get("session_id")
        if session_id is not None and not isinstance(session_id, str):
            return _error(400, "field 'session_id' must be a string")
        unknown = sorted(set(body) - {"choreography", "version", "args", "session_id"})
        if unknown:
            return _error(400, f"unknown field(s): {', '.join(unknown)}")
        wait = request.query.get("wait", "false").lower() in ("1", "true", "yes")
        try:
            timeout = _timeout(request)
        except ValueError:
            return _error(400, "query parameter 'timeout' must be a finite number of seconds")
        try:
            choreography = engine.app.get(name, version)
            session_id = await engine.start_session(name, convert_args(choreography, args), version, session_id)
        except UnknownChoreographyError as exc:
            return _error(404, str(exc))
        except (DefinitionError, CodecError) as exc:
            return _error(400, str(exc))
        except OverloadedError as exc:
            status = 429 if engine.live_sessions else 503
            return web.json_response({"error": str(exc)}, status=status, headers={"Retry-After": "1"})
        except SessionError as exc:  # a session_id taken by another choreography
            return _error(409, str(exc))
        except StoreError as exc:
            return _unavailable(exc)
        if not wait:
            return web.json_response(
                {"session_id": session_id, "status": SessionStatus.RUNNING},
                status=202,
                headers={"Location": f"/sessions/{session_id}"},
            )
        try:
            record = await engine.wait(session_id, timeout)
        except TimeoutError:
            return web.json_response({"session_id": session_id, "status": "running"}, status=202)
        except StoreError as exc:
            return _unavailable(exc)
        return web.json_response(record_json(engine, record))

    async def get_session(request: web.Request) -> web.Response:
        try:
            record = await engine.get(request.match_info["session_id"])
        except StoreError as exc:
            return _unavailable(exc)
        if record is None:
            return _error(404, f"no session {request.match_info['session_id']} at role '{engine.role}'")
        return web.json_response(record_json(engine, record))

    async def list_sessions(request: web.Request) -> web.Response:
        status = request.query.get("status")
        known = [s.value for s in SessionStatus] + ["blocked"]
        if status is not None and status not in known:
            return _error(400, f"unknown status {status!r}; one of {', '.join(known)}")
        try:
            limit = max(1, min(int(request.query.get("limit", "100")), 10_000))
        except ValueError:
            return _error(400, "query parameter 'limit' must be an integer")
        try:
            if status == "blocked":
                found = [await engine.stored(sid, retry=False) for sid in list(engine.blocked)[:limit]]
                records = [r for r in found if r is not None]
            else:
                records = await engine.guard.once(lambda: engine.store.list_sessions(status, limit))
        except StoreError as exc:
            return _unavailable(exc)
        return web.json_response({"sessions": [record_json(engine, r) for r in records]})

    async def cancel_session(request: web.Request) -> web.Response:
        """A cancel is a request: it wins unless the initiator has declared the outcome."""
        session_id = request.match_info["session_id"]
        wait = request.query.get("wait", "false").lower() in ("1", "true", "yes")
        try:
            timeout = _timeout(request)
        except ValueError:
            return _error(400, "query parameter 'timeout' must be a finite number of seconds")
        try:
            record = await engine.cancel(session_id)
            if wait and record.status not in TERMINAL_STATUSES:
                record = await engine.wait(session_id, timeout)
        except UnknownSessionError as exc:
            return _error(404, str(exc))
        except OutcomeDecidedError as exc:
            return _error(409, str(exc), outcome=exc.status)
        except TimeoutError:
            record = await engine.get(session_id) or record
        except SessionError as exc:
            return _error(409, str(exc))
        except StoreError as exc:
            return _unavailable(exc)
        body = record_json(engine, record)
        if record.status == SessionStatus.COMPLETED:  # the request lost: the outcome stands
            return web.json_response({"error": "the session completed before the cancel", **body}, status=409)
        if record.status in TERMINAL_STATUSES:
            return web.json_response(body)
        initiator = engine.app.get(record.choreography, record.version).initiator.name
        if initiator != engine.role and record.status != SessionStatus.COMPENSATING:
            body["cancel"] = f"requested from the initiator '{initiator}'"
        return web.json_response(body, status=202)

    async def resume_session(request: web.Request) -> web.Response:
        """An operator resumes a diverged (after fixed code was deployed) or blocked session."""
        session_id = request.match_info["session_id"]
        try:
            record = await engine.resume(session_id)
        except (UnknownSessionError, UnknownChoreographyError) as exc:
            return _error(404, str(exc))
        except StoreError as exc:
            return _unavailable(exc)
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

    async def metrics(request: web.Request) -> web.Response:
        text = engine.metrics.render() + (extra_metrics() if extra_metrics else b"")
        return web.Response(body=text, content_type="text/plain", charset="utf-8")

    app = web.Application(client_max_size=_MAX_BODY)
    app.router.add_post("/sessions", start_session)
    app.router.add_get("/sessions", list_sessions)
    app.router.add_get("/sessions/{session_id}", get_session)
    app.router.add_post("/sessions/{session_id}/cancel", cancel_session)
    app.router.add_post("/sessions/{session_id}/resume", resume_session)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


async def serve(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, tuple[str, int]]:
    """Start serving ``app``; return the runner (to clean up) and the bound address.

    Raises:
        TransportError: the address cannot be bound (taken, or not this host's).
    """
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise TransportError(f"the API cannot listen on {host}:{port}: {exc}") from exc
    bound = (host, port)
    for address in runner.addresses:  # the real port when 0 was asked for
        if isinstance(address, tuple) and len(address) >= 2:
            bound = (str(address[0]), int(address[1]))
            break
    return runner, bound
