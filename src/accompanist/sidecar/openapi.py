"""The service-facing API as an OpenAPI 3.1 document (served at ``GET /openapi.json``).

The schemas are JSON Schema 2020-12 and strict (``additionalProperties: false``) where the
API's answers are fixed, so a test can check every real answer against them.
"""

from __future__ import annotations

from typing import Any

from accompanist._version import __version__
from accompanist.sidecar.api_errors import CODES
from accompanist.store.base import SessionStatus

__all__ = ["openapi_document"]

_JSON = "application/json"
_STATUSES = [s.value for s in SessionStatus] + ["blocked"]
_NULLABLE_STRING = {"type": ["string", "null"]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _record_properties() -> dict[str, Any]:
    return {
        "session_id": {"type": "string"},
        "choreography": {"type": "string"},
        "version": {"type": "integer"},
        "role": {"type": "string", "description": "the role this sidecar plays in the session"},
        "status": {"type": "string", "enum": _STATUSES},
        "result": {"description": "the session's result as JSON (the initiator's, once completed), or null"},
        "error": {**_NULLABLE_STRING, "description": "why it failed or is blocked, in one line"},
        "failure": {"oneOf": [_ref("Failure"), {"type": "null"}]},
        "attempts": {"type": "integer", "minimum": 0},
        "created_at": {**_NULLABLE_STRING, "format": "date-time"},
        "updated_at": {**_NULLABLE_STRING, "format": "date-time"},
    }


def _schemas() -> dict[str, Any]:
    record = _record_properties()
    return {
        "Error": {
            "type": "object",
            "description": "Every error answer. `code` is stable; `field` names the body field, query parameter "
            "or header at fault (null when none is).",
            "required": ["error", "code", "field"],
            "additionalProperties": False,
            "properties": {
                "error": {"type": "string"},
                "code": {
                    "type": "string",
                    "enum": sorted(CODES),
                    "description": "; ".join(f"`{c}` ({s}): {d}" for c, (s, d) in sorted(CODES.items())),
                },
                "field": _NULLABLE_STRING,
                "outcome": {"type": "string", "description": "with `outcome-decided`: the outcome that stands"},
                "expected": {"type": "integer", "description": "with `wrong-arity`: how many arguments it takes"},
            },
        },
        "Failure": {
            "type": "object",
            "required": ["role", "step", "transaction", "error_type", "message"],
            "additionalProperties": False,
            "properties": {
                "role": {"type": "string"},
                "step": {"type": ["integer", "null"]},
                "transaction": _NULLABLE_STRING,
                "error_type": {"type": "string"},
                "message": {"type": "string"},
            },
        },
        "Session": {
            "type": "object",
            "required": sorted(record),
            "additionalProperties": False,
            "properties": {
                **record,
                "cancel": {"type": "string", "description": "in a cancel's 202 at a role that is not the initiator"},
            },
        },
        "CancelLost": {
            "type": "object",
            "description": "A cancel that came after the session completed: the session, with the error fields.",
            "required": [*sorted(record), "code", "field", "outcome"],
            "additionalProperties": False,
            "properties": {
                **record,
                "error": {"type": "string"},
                "code": {"const": "outcome-decided"},
                "field": {"type": "null"},
                "outcome": {"const": "completed"},
            },
        },
        "Step": _step_schema(),
        "Waiting": {
            "type": "object",
            "description": "Where the role waits now: a receive (by peer and seq), the outcome, an operator.",
            "required": ["text", "peer", "seq", "since"],
            "additionalProperties": False,
            "properties": {
                "text": {"type": "string"},
                "peer": _NULLABLE_STRING,
                "seq": {"type": ["integer", "null"]},
                "since": {**_NULLABLE_STRING, "format": "date-time"},
            },
        },
        "Steps": {
            "type": "object",
            "description": "One role's steps of one session, in order, then its compensations.",
            "required": [
                "session_id",
                "role",
                "choreography",
                "version",
                "status",
                "roles",
                "initiator",
                "steps",
                "waiting",
                "failure",
                "sources",
            ],
            "additionalProperties": False,
            "properties": {
                "session_id": {"type": "string"},
                "role": {"type": "string"},
                "choreography": {"type": "string"},
                "version": {"type": "integer"},
                "status": {"type": "string", "enum": _STATUSES},
                "roles": {"type": ["array", "null"], "items": {"type": "string"}},
                "initiator": _NULLABLE_STRING,
                "steps": {"type": "array", "items": _ref("Step")},
                "waiting": {"oneOf": [_ref("Waiting"), {"type": "null"}]},
                "failure": {"oneOf": [_ref("Failure"), {"type": "null"}]},
                "sources": {
                    "type": "array",
                    "items": {"type": "string", "enum": ["memory", "store"]},
                    "description": "where the steps came from: this process's memory, the store",
                },
            },
        },  # fmt: skip
        "Started": {
            "type": "object",
            "required": ["session_id", "status"],
            "additionalProperties": False,
            "properties": {"session_id": {"type": "string"}, "status": {"const": "running"}},
        },
        "SessionList": {
            "type": "object",
            "required": ["sessions"],
            "additionalProperties": False,
            "properties": {"sessions": {"type": "array", "items": _ref("Session")}},
        },
        "Health": {
            "type": "object",
            "required": ["status", "role", "mode", "live_sessions", "uptime_seconds", "blocked_sessions"],
            "additionalProperties": True,
            "description": "More members describe the store's state (since when and why it fails).",
            "properties": {
                "status": {"type": "string", "enum": ["ok", "unhealthy"]},
                "role": {"type": "string"},
                "mode": {"type": "string", "enum": ["default", "fault-tolerant"]},
                "live_sessions": {"type": "integer", "minimum": 0},
                "uptime_seconds": {"type": "number", "minimum": 0},
                "blocked_sessions": {"type": "integer", "minimum": 0},
                "code_changed_sessions": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "unfinished sessions found at start whose code changed without a version bump",
                },
            },
        },
        "Versions": {
            "type": "object",
            "required": ["role", "choreographies"],
            "properties": {
                "role": {"type": "string"},
                "choreographies": {"type": "array", "items": _ref("ChoreographyVersions")},
            },
        },
        "ChoreographyVersions": {
            "type": "object",
            "required": ["choreography", "served", "next_version", "unfinished", "needed_not_served", "peers"],
            "properties": {
                "choreography": {"type": "string"},
                "served": {"type": "array", "items": {"type": "integer"}},
                "fingerprints": {"type": "object", "additionalProperties": {"type": "string"}},
                "initiator": {"type": "boolean", "description": "whether sessions start at this role"},
                "next_version": {
                    "type": ["integer", "null"],
                    "description": "the version a new session starts at (null: not the initiator, or none possible)",
                },
                "unfinished": {
                    "type": "object",
                    "additionalProperties": {"type": "integer"},
                    "description": "version -> unfinished sessions here that still need it",
                },
                "needed_not_served": {
                    "type": "array",
                    "items": {"type": "integer"},
                    "description": "versions unfinished sessions need but this sidecar lacks (blocked)",
                },
                "peers_lacking": {
                    "type": "object",
                    "additionalProperties": {"type": "array", "items": {"type": "string"}},
                    "description": "version -> peers that said they lack it while sessions of it are unfinished here",
                },
                "peers": {
                    "type": "object",
                    "description": "role -> what its hello said (served null: unknown)",
                    "additionalProperties": {"type": "object"},
                },
                "code_changed": {
                    "type": "array",
                    "items": {"type": "object"},
                    "description": "unfinished sessions whose code changed without a version bump",
                },
            },
        },
        "StartRequest": {
            "type": "object",
            "required": ["choreography"],
            "additionalProperties": False,
            "properties": {
                "choreography": {"type": "string", "minLength": 1},
                "version": {
                    "type": "integer",
                    "description": "default: the highest version that every role serves (from their hellos)",
                },
                "args": {"type": "array", "description": "exactly as many as the choreography takes", "default": []},
                "session_id": {
                    "type": "string",
                    "pattern": "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$",
                    "description": "your own id: makes the start idempotent",
                },
            },
        },
    }


def _step_schema() -> dict[str, Any]:
    nullable_int = {"type": ["integer", "null"]}
    return {
        "type": "object",
        "description": "One step. Times are null where unknown (steps replayed from the store carry none).",
        "required": [
            "index",
            "kind",
            "name",
            "peer",
            "seq",
            "message",
            "started_at",
            "ended_at",
            "duration_ms",
            "attempts",
            "transaction",
            "value",
            "error",
            "state",
            "clock",
            "source",
        ],  # fmt: skip
        "additionalProperties": False,
        "properties": {
            "index": {**nullable_int, "description": "the step's index at this role (null: a compensation)"},
            "kind": {
                "type": "string",
                "enum": ["send", "receive", "local", "now", "uuid", "random", "transaction", "compensation"],
            },
            "name": {"type": "string", "description": "the function or transaction; `src->dst #seq` for a message"},
            "peer": {**_NULLABLE_STRING, "description": "the other role of a message"},
            "seq": nullable_int,
            "message": {"type": ["string", "null"], "enum": ["value", "select", None]},
            "started_at": {**_NULLABLE_STRING, "format": "date-time"},
            "ended_at": {**_NULLABLE_STRING, "format": "date-time"},
            "duration_ms": {"type": ["number", "null"], "description": "a receive's includes its wait"},
            "attempts": {**nullable_int, "description": "commit (or compensation) attempts"},
            "transaction": {
                "type": ["string", "null"],
                "enum": ["pending", "committed", "uncertain", "failed", "compensated", None],
            },
            "value": {**_NULLABLE_STRING, "description": "a short summary of the value sent, received or returned"},
            "error": _NULLABLE_STRING,
            "state": {"type": "string", "enum": ["done", "failed", "parked", "stopped"]},
            "clock": {**nullable_int, "description": "the message's Lamport time, where the store has it"},
            "source": {"type": "string", "enum": ["memory", "journal", "store"]},
            "parked": {"type": "boolean", "description": "the receive parked before it was served"},
            "compensates": {**nullable_int, "description": "a compensation: the step it undoes"},
        },
    }


def _json(description: str, schema: dict[str, Any], headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": {_JSON: {"schema": schema}}}
    if headers:
        answer["headers"] = headers
    return answer


def _error(description: str) -> dict[str, Any]:
    return _json(description, _ref("Error"))


_RETRY = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
_WAIT = {
    "name": "wait",
    "in": "query",
    "description": "true: answer when the session ended (or `timeout` passed)",
    "schema": {"type": "string", "enum": ["true", "false", "1", "0", "yes", "no", ""]},
}
_TIMEOUT = {
    "name": "timeout",
    "in": "query",
    "description": "seconds a `wait=true` waits at most (finite, >= 0)",
    "schema": {"type": "number", "minimum": 0},
}
_SESSION_ID = {"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _common(*, secured: bool) -> dict[str, Any]:
    common: dict[str, Any] = {
        "500": _error("`internal`: an unexpected failure (logged by the sidecar)"),
        "503": _json("`store-unavailable` or `not-accepting`: retry later", _ref("Error"), _RETRY),
        "default": _error("any other error (`not-found`, `method-not-allowed`, `body-too-large`)"),
    }
    if secured:
        common["401"] = _json(
            "`unauthorized`: no or a wrong bearer token",
            _ref("Error"),
            {"WWW-Authenticate": {"schema": {"type": "string"}}},
        )
    return common


def openapi_document(*, secured: bool) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API (``secured``: a bearer token is required)."""
    common = _common(secured=secured)
    session = _json("the session at this role", _ref("Session"))
    paths: dict[str, Any] = {
        "/sessions": {
            "post": {
                "operationId": "startSession",
                "summary": "Start a session as the initiator",
                "parameters": [_WAIT, _TIMEOUT],
                "requestBody": {"required": True, "content": {_JSON: {"schema": _ref("StartRequest")}}},
                "responses": {
                    "200": _json("with wait=true: the session ended", _ref("Session")),
                    "202": _json(
                        "started (or still running when `timeout` passed)",
                        _ref("Started"),
                        {"Location": {"schema": {"type": "string"}}},
                    ),
                    "400": _error("a bad body or query (`field` names it)"),
                    "404": _error("`unknown-choreography`"),
                    "409": _error(
                        "`session-conflict`: session_id belongs to another choreography; "
                        "`version-unavailable`: a role does not serve the version (`lacking`: role -> "
                        "the versions it serves)"
                    ),
                    "413": _error("`body-too-large`"),
                    "429": _json("`overloaded`: max_inflight sessions run", _ref("Error"), _RETRY),
                    **common,
                },
            },
            "get": {
                "operationId": "listSessions",
                "summary": "List sessions at this role, newest first",
                "parameters": [
                    {"name": "status", "in": "query", "schema": {"type": "string", "enum": _STATUSES}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "default": 100},
                        "description": "clamped to 1..10000",
                    },
                ],
                "responses": {
                    "200": _json("the sessions", _ref("SessionList")),
                    "400": _error("`invalid-query` (status or limit)"),
                    **common,
                },
            },
        },
        "/sessions/{session_id}": {
            "get": {
                "operationId": "getSession",
                "summary": "A session's status, result or failure",
                "parameters": [_SESSION_ID],
                "responses": {"200": session, "404": _error("`unknown-session`"), **common},
            },
        },
        "/sessions/{session_id}/steps": {
            "get": {
                "operationId": "getSessionSteps",
                "summary": "The session's steps at this role: kind, name, peer, seq, times, attempts, values",
                "parameters": [_SESSION_ID],
                "responses": {"200": _json("the steps", _ref("Steps")), "404": _error("`unknown-session`"), **common},
            },
        },
        "/sessions/{session_id}/cancel": {
            "post": {
                "operationId": "cancelSession",
                "summary": "Request a cancel: it wins unless the initiator declared the outcome",
                "parameters": [_SESSION_ID, _WAIT, _TIMEOUT],
                "responses": {
                    "200": _json("the session ended (cancelled, compensated, failed)", _ref("Session")),
                    "202": _json("the cancel is under way", _ref("Session")),
                    "400": _error("`invalid-query` (wait or timeout)"),
                    "404": _error("`unknown-session`"),
                    "409": _json(
                        "`outcome-decided`: the outcome stands; or `conflict`",
                        {"anyOf": [_ref("Error"), _ref("CancelLost")]},
                    ),
                    **common,
                },
            },
        },
        "/sessions/{session_id}/resume": {
            "post": {
                "operationId": "resumeSession",
                "summary": "Resume a diverged or blocked session",
                "parameters": [_SESSION_ID],
                "responses": {
                    "202": _json("resumed", _ref("Session")),
                    "404": _error("`unknown-session` or `unknown-choreography`"),
                    "409": _error("`conflict`"),
                    **common,
                },
            },
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "Whether the sidecar can take sessions (never needs the token)",
                "security": [],
                "responses": {
                    "200": _json("healthy", _ref("Health")),
                    "503": _json("unhealthy (the store fails)", _ref("Health")),
                    "default": common["default"],
                },
            },
        },
        "/versions": {
            "get": {
                "operationId": "versions",
                "summary": "Versions served here and by the peers, and which ones unfinished sessions need",
                "responses": {"200": _json("per choreography", _ref("Versions")), **common},
            },
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (never needs the token)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Prometheus text",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "default": common["default"],
                },
            },
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": _json("the OpenAPI document", {"type": "object"}), **common},
            },
        },
    }
    for item in paths.values():  # aiohttp answers HEAD for every GET
        if "get" in item:
            get = item["get"]
            item["head"] = {
                "operationId": get["operationId"] + "Head",
                "summary": "The headers of GET",
                "parameters": get.get("parameters", []),
                **({"security": get["security"]} if "security" in get else {}),
                "responses": {code: {"description": r["description"]} for code, r in get["responses"].items()},
            }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Accompanist sidecar: service-facing API",
            "version": __version__,
            "description": "Start, list, inspect, cancel and resume sessions of the choreographies this sidecar "
            "serves. Errors are `Error` objects with a stable `code`.",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "the api_token"}},
        },
    }
    if secured:
        document["security"] = [{"bearer": []}]
    return document
