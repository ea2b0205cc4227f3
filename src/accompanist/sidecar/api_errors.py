"""Errors of the service-facing API: one JSON shape, stable codes, and the middlewares that
guarantee them (a catch-all for the unexpected, a bearer-token check).

Every answer that is not a success is ``{"error": message, "code": code, "field": name|null}``
(plus a few documented extras such as ``outcome``). Client mistakes (4xx) are never logged
with a traceback; an unexpected exception answers ``500 {"code": "internal"}`` and is logged
once, with its traceback.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from accompanist.errors import StoreError

__all__ = [
    "CODES",
    "ApiError",
    "OPEN_PATHS",
    "auth_middleware",
    "error_response",
    "errors_middleware",
]

log = logging.getLogger("accompanist.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Every ``code`` the API answers with, its HTTP status and what it means (the README and the
#: OpenAPI document list these; clients may rely on them).
CODES: dict[str, tuple[int, str]] = {
    "invalid-json": (400, "the request body is not JSON (UTF-8), or not a JSON object"),
    "too-deep": (400, "the body or an argument nests deeper than the API accepts"),
    "missing-field": (400, "a required field is absent"),
    "invalid-field": (400, "a field has the wrong type or value"),
    "unknown-field": (400, "the body has a field the API does not know"),
    "wrong-arity": (400, "'args' has more or fewer arguments than the choreography takes"),
    "invalid-argument": (400, "an argument does not fit its declared type, or cannot be stored"),
    "not-initiator": (400, "the choreography starts at another role's sidecar"),
    "invalid-query": (400, "a query parameter is malformed (field names it)"),
    "unauthorized": (401, "no or a wrong bearer token (see WWW-Authenticate)"),
    "unknown-choreography": (404, "no such choreography or version is deployed here"),
    "unknown-session": (404, "no such session at this role"),
    "not-found": (404, "no such path"),
    "method-not-allowed": (405, "the path exists, the method does not"),
    "session-conflict": (409, "the session_id belongs to another choreography's session"),
    "outcome-decided": (409, "the cancel came after the initiator declared the outcome"),
    "conflict": (409, "the session's state does not allow this now"),
    "version-unavailable": (409, "a role of the choreography does not serve the version (`lacking` names it)"),
    "body-too-large": (413, "the request body is larger than the API accepts"),
    "overloaded": (429, "max_inflight sessions run already; retry after Retry-After"),
    "internal": (500, "an unexpected error in the sidecar (logged once with its traceback)"),
    "not-accepting": (503, "the sidecar is starting or shutting down; retry after Retry-After"),
    "store-unavailable": (503, "the store is failing; nothing was started or decided; retry"),
}

#: Paths that never need the token (probes and scrapers).
OPEN_PATHS = frozenset({"/healthz", "/metrics"})


class ApiError(Exception):
    """A failure answered as the API's JSON error.

    Args:
        code: one of :data:`CODES` (it fixes the status).
        message: what went wrong, for a human.
        field: the body field or query parameter at fault, if any.
        headers: extra response headers (``Retry-After``, ``WWW-Authenticate``).
        extra: more JSON members (``outcome``).
    """

    def __init__(
        self,
        code: str,
        message: str,
        field: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = CODES[code][0]
        self.message = message
        self.field = field
        self.headers = headers or {}
        self.extra = extra

    def response(self) -> web.Response:
        """This error as the JSON answer."""
        return error_response(self.code, self.message, self.field, headers=self.headers, **self.extra)


def error_response(
    code: str, message: str, field: str | None = None, *, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    """The JSON error answer for ``code``."""
    body = {"error": message, "code": code, "field": field, **extra}
    return web.json_response(body, status=CODES[code][0], headers=headers)


_HTTP_CODES = {404: "not-found", 405: "method-not-allowed", 413: "body-too-large", 401: "unauthorized"}


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into the JSON error shape; log only what is the sidecar's fault."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:  # aiohttp's own: unknown path, wrong method, body too large
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status)
        if code is None:
            code = "internal" if exc.status >= 500 else "invalid-query"
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        field = "body" if code == "body-too-large" else None
        message = (exc.text or exc.reason) if code == "body-too-large" else exc.reason
        return error_response(code, message, field, headers=headers)
    except StoreError as exc:
        return error_response("store-unavailable", str(exc), headers={"Retry-After": "1"})
    except RecursionError:
        # Deeply nested input reached code that recurses: the client's doing, not a bug here.
        return error_response("too-deep", "the request nests too deeply", "body")
    except Exception:
        log.exception("internal error answering %s %s", request.method, request.path)
        return error_response("internal", "internal error (logged by the sidecar)")


def auth_middleware(token: str) -> Middleware:
    """Require ``Authorization: Bearer <token>`` on every path but :data:`OPEN_PATHS`."""
    expected = token.encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            ok = scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("utf-8", "replace"), expected)
            if not ok:
                raise ApiError(
                    "unauthorized",
                    "this API needs 'Authorization: Bearer <token>' (the sidecar's api_token)",
                    "Authorization",
                    headers={"WWW-Authenticate": 'Bearer realm="accompanist"'},
                )
        return await handler(request)

    return check
