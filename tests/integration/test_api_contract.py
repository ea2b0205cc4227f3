"""The service-facing API's contract, against real sidecar processes over real HTTP: every
bad request answers a 4xx JSON error naming the field, server-side failures a JSON 5xx with
a stable code, the bearer token guards every path but /healthz and /metrics, and every answer
fits the OpenAPI document the sidecar serves."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from pathlib import Path
from typing import Any, cast

import aiohttp
import jsonschema
import pytest

from accompanist.engine.engine import Engine
from accompanist.sidecar.api import build_api
from accompanist.sidecar.api_errors import CODES
from accompanist.sidecar.api_serve import serve
from tests.integration.procs import ProcessCluster

APP = "tests.integration.api_app:app"
BOOM = "boom-internal"  # the id api_app fails on (not imported: that would patch this process's Engine)


def cluster(tmp_path: Path, args: Any = (), **env: str) -> ProcessCluster:
    return ProcessCluster(["a", "b", "c"], APP, tmp_path, args, FAULT_EFFECTS_DIR=str(tmp_path), **env)


async def call(
    c: ProcessCluster, method: str, role: str, path: str, **kwargs: Any
) -> tuple[int, str, Any, aiohttp.typedefs.LooseHeaders]:
    """``(status, content type, body, headers)`` of one request."""
    assert c.http is not None
    async with c.http.request(method, f"{c[role].api}{path}", **kwargs) as r:
        body: Any = await r.json() if r.content_type == "application/json" else await r.text()
        return r.status, r.content_type, body, r.headers


def chain_body(*args: Any, **extra: Any) -> dict[str, Any]:
    return {"choreography": "chain", "args": list(args), **extra}


NESTED_2000 = '{"choreography": "chain", "args": [' + "[" * 2000 + "]" * 2000 + "]}"
NESTED_100 = '{"choreography": "chain", "args": [' + "[" * 100 + "]" * 100 + "]}"

# (method, path, request keywords, status, code, field)
BAD_REQUESTS: list[tuple[str, str, dict[str, Any], int, str, str | None]] = [
    ("POST", "/sessions", {"data": b"[" * 1_000_000}, 400, "too-deep", "body"),
    ("POST", "/sessions", {"data": NESTED_2000}, 400, "too-deep", "body"),
    ("POST", "/sessions", {"data": NESTED_100}, 400, "too-deep", "args[0]"),
    ("POST", "/sessions", {"data": b" " * (2 * 1024 * 1024)}, 413, "body-too-large", "body"),
    ("POST", "/sessions", {"data": b"{not json"}, 400, "invalid-json", "body"),
    ("POST", "/sessions", {"data": b'{"choreography": "\xff"}'}, 400, "invalid-json", "body"),
    ("POST", "/sessions", {"data": '{"choreography": "chain", "args": [NaN]}'}, 400, "invalid-json", "body"),
    ("POST", "/sessions", {"data": '{"choreography": "chain", "args": [1e999]}'}, 400, "invalid-json", "body"),
    ("POST", "/sessions", {"json": [1]}, 400, "invalid-json", "body"),
    ("POST", "/sessions", {"json": {"args": [1]}}, 400, "missing-field", "choreography"),
    ("POST", "/sessions", {"json": {"choreography": 5}}, 400, "invalid-field", "choreography"),
    ("POST", "/sessions", {"json": chain_body(1, version="1")}, 400, "invalid-field", "version"),
    ("POST", "/sessions", {"json": chain_body(1, version=True)}, 400, "invalid-field", "version"),
    ("POST", "/sessions", {"json": {"choreography": "chain", "args": {"n": 1}}}, 400, "invalid-field", "args"),
    ("POST", "/sessions", {"json": chain_body(1, session_id=7)}, 400, "invalid-field", "session_id"),
    ("POST", "/sessions", {"json": chain_body(1, session_id="no spaces!")}, 400, "invalid-field", "session_id"),
    ("POST", "/sessions", {"json": chain_body(1, colour="red")}, 400, "unknown-field", "colour"),
    ("POST", "/sessions", {"json": chain_body(1, 2)}, 400, "wrong-arity", "args"),
    ("POST", "/sessions", {"json": chain_body()}, 400, "wrong-arity", "args"),
    ("POST", "/sessions", {"json": {"choreography": "nope", "args": []}}, 404, "unknown-choreography", "choreography"),
    ("POST", "/sessions", {"json": chain_body(1, version=99)}, 404, "unknown-choreography", "version"),
    ("POST", "/sessions?timeout=nan&wait=true", {"json": chain_body(1)}, 400, "invalid-query", "timeout"),
    ("POST", "/sessions?timeout=inf&wait=true", {"json": chain_body(1)}, 400, "invalid-query", "timeout"),
    ("POST", "/sessions?timeout=-1&wait=true", {"json": chain_body(1)}, 400, "invalid-query", "timeout"),
    ("POST", "/sessions?timeout=soon&wait=true", {"json": chain_body(1)}, 400, "invalid-query", "timeout"),
    ("POST", "/sessions?wait=maybe", {"json": chain_body(1)}, 400, "invalid-query", "wait"),
    ("POST", "/sessions/x/cancel?wait=true&timeout=nan", {}, 400, "invalid-query", "timeout"),
    ("GET", "/sessions?status=bogus", {}, 400, "invalid-query", "status"),
    ("GET", "/sessions?limit=many", {}, 400, "invalid-query", "limit"),
    ("GET", "/sessions/no-such-session", {}, 404, "unknown-session", "session_id"),
    ("GET", "/sessions/no-such-session/steps", {}, 404, "unknown-session", "session_id"),
    ("POST", "/sessions/no-such-session/cancel", {}, 404, "unknown-session", "session_id"),
    ("POST", "/sessions/no-such-session/resume", {}, 404, "unknown-session", "session_id"),
    ("GET", "/no/such/path", {}, 404, "not-found", None),
    ("DELETE", "/sessions", {}, 405, "method-not-allowed", None),
]


def assert_error(status: int, ctype: str, body: Any, code: str, field: str | None) -> None:
    assert ctype == "application/json", (status, body)
    assert set(body) >= {"error", "code", "field"}, body
    assert (body["code"], body["field"], status) == (code, field, CODES[code][0]), body
    assert isinstance(body["error"], str) and body["error"]


async def test_bad_requests_get_json_errors_naming_the_field_and_no_traceback(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        for method, path, kwargs, status, code, field in BAD_REQUESTS:
            got = await call(c, method, "a", path, **kwargs)
            assert got[0] == status, (method, path, got[:3])
            assert_error(got[0], got[1], got[2], code, field)
        # At a role that does not start the choreography.
        status, ctype, body, _ = await call(c, "POST", "b", "/sessions", json=chain_body(1))
        assert_error(status, ctype, body, "not-initiator", "choreography")
        # The arity is named: the extra argument is refused, not dropped.
        status, _, body, _ = await call(c, "POST", "a", "/sessions", json=chain_body(1, 2))
        assert body["expected"] == 1 and "takes 1 argument(s), got 2" in body["error"]
        # A charset the header invents does not matter: the body is UTF-8 JSON.
        status, _, body, _ = await call(
            c,
            "POST",
            "a",
            "/sessions?wait=true",
            data=json.dumps(chain_body(5)),
            headers={"Content-Type": "application/json; charset=no-such-charset"},
        )
        assert status == 200 and body["result"] == 9, body
        # The sidecar is unharmed and its log holds no traceback for any of it.
        assert (await c.start_session("a", "chain", 1))["result"] == 5
        log = (tmp_path / "a.log").read_text()
        assert "Traceback" not in log, log[-3000:]

        # A failure of the sidecar's own (an injected bug): JSON 500, logged once.
        status, ctype, body, _ = await call(c, "GET", "a", f"/sessions/{BOOM}")
        assert_error(status, ctype, body, "internal", None)
        assert "injected" not in body["error"]  # the details stay in the log
        assert (await call(c, "GET", "a", "/healthz"))[0] == 200
        log = (tmp_path / "a.log").read_text()
        assert log.count("Traceback") == 1 and log.count("internal error answering GET") == 1, log[-3000:]
        assert "an injected bug in the engine" in log and "Server got itself in trouble" not in log


async def test_the_api_token_guards_all_but_health_and_metrics(tmp_path: Path) -> None:
    # a takes the token on the command line; b and c from ACCOMPANIST_API_TOKEN.
    args = {"a": ["--api-token", "command-line-secret"]}
    async with cluster(tmp_path, args, ACCOMPANIST_API_TOKEN="environment-secret") as c:
        bearer = {"Authorization": "Bearer command-line-secret"}
        wrong = [
            "Bearer wrong",
            "Basic Y29tbWFuZC1saW5lLXNlY3JldA==",
            "Bearer environment-secret",
            "command-line-secret",
        ]
        for headers in [{}] + [{"Authorization": w} for w in wrong]:
            for method, path in (("GET", "/sessions"), ("POST", "/sessions"), ("GET", "/openapi.json"),
                                 ("GET", "/sessions/x"), ("POST", "/sessions/x/cancel"), ("GET", "/nope")):  # fmt: skip
                status, ctype, body, resp_headers = await call(
                    c, method, "a", path, headers=headers, json=chain_body(1)
                )
                assert_error(status, ctype, body, "unauthorized", "Authorization")
                assert resp_headers["WWW-Authenticate"].startswith("Bearer"), (headers, path)
        for path in ("/healthz", "/metrics"):
            assert (await call(c, "GET", "a", path))[0] == 200
        status, _, body, _ = await call(c, "POST", "a", "/sessions?wait=true", json=chain_body(5), headers=bearer)
        assert status == 200 and body["result"] == 9, body
        status, _, body, _ = await call(c, "GET", "a", f"/sessions/{body['session_id']}", headers=bearer)
        assert status == 200 and body["status"] == "completed"
        status, _, doc, _ = await call(c, "GET", "a", "/openapi.json", headers=bearer)
        assert doc["security"] == [{"bearer": []}] and doc["paths"]["/healthz"]["get"]["security"] == []
        # The environment's token at b.
        assert (await call(c, "GET", "b", "/sessions"))[0] == 401
        assert (await call(c, "GET", "b", "/sessions", headers={"Authorization": "Bearer environment-secret"}))[
            0
        ] == 200
        assert "Traceback" not in (tmp_path / "a.log").read_text()


async def test_an_api_on_a_public_address_without_a_token_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    engine = cast(Engine, None)  # the handlers are never called here
    for host, token, warned in (("0.0.0.0", None, True), ("127.0.0.1", None, False), ("0.0.0.0", "t", False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="accompanist.api"):
            runner, _ = await serve(build_api(engine, mode="default", token=token), (host, 0))
            await runner.cleanup()
        assert ("without a token" in caplog.text) is warned, (host, token, caplog.text)


# -- the OpenAPI document ---------------------------------------------------------------------
class Contract:
    """The served document, and a check of one real answer against it."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.seen: set[tuple[str, str, str]] = set()
        self.templates = [(re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p) + "$"), p) for p in doc["paths"]]

    def template(self, path: str) -> str | None:
        bare = path.split("?", 1)[0]
        return next((t for rx, t in self.templates if rx.match(bare)), None)

    def check(self, method: str, path: str, status: int, ctype: str, body: Any) -> None:
        template = self.template(path)
        operation = self.doc["paths"].get(template or "", {}).get(method.lower())
        if operation is None:  # an unknown path or method: the generic error shape
            schema: dict[str, Any] = {"$ref": "#/components/schemas/Error"}
        else:
            responses = operation["responses"]
            answer = responses.get(str(status)) or responses.get("default")
            assert answer is not None, f"{method} {path} answered {status}, which the document does not list"
            media = answer["content"]
            assert ctype in media, (method, path, status, ctype)
            schema = media[ctype]["schema"]
            self.seen.add((method, template or path, str(status) if str(status) in responses else "default"))
        validator = jsonschema.Draft202012Validator({**schema, "components": self.doc["components"]})
        errors = sorted(validator.iter_errors(body), key=str)
        assert not errors, f"{method} {path} {status}: {errors[0].message}\n{body}"


async def test_every_answer_fits_the_served_openapi_document(tmp_path: Path) -> None:
    async with cluster(tmp_path, FAULT_PAUSE="3") as c:
        status, ctype, doc, _ = await call(c, "GET", "a", "/openapi.json")
        assert status == 200 and doc["openapi"] == "3.1.0" and "security" not in doc
        jsonschema.Draft202012Validator.check_schema({"$defs": doc["components"]["schemas"]})
        contract = Contract(doc)
        contract.check("GET", "/openapi.json", status, ctype, doc)

        async def answer(method: str, role: str, path: str, **kwargs: Any) -> tuple[int, Any]:
            status, ctype, body, _ = await call(c, method, role, path, **kwargs)
            contract.check(method, path, status, ctype, body)
            return status, body

        status, done = await answer("POST", "a", "/sessions?wait=true", json=chain_body(5, session_id="order-1"))
        assert status == 200 and done["result"] == 9
        status, started = await answer("POST", "a", "/sessions", json=chain_body(1))
        assert status == 202
        status, slow = await answer(
            "POST", "a", "/sessions?wait=true&timeout=0.2", json={"choreography": "pingpong", "args": [1]}
        )
        assert status == 202 and slow["status"] == "running"
        status, _ = await answer("POST", "a", "/sessions", json=chain_body(1, session_id="order-1", version=1))
        status, _ = await answer(
            "POST", "a", "/sessions", json={"choreography": "pingpong", "args": [1], "session_id": "order-1"}
        )
        assert status == 409
        assert (await answer("GET", "a", f"/sessions/{done['session_id']}"))[0] == 200
        assert (await answer("GET", "b", f"/sessions/{done['session_id']}"))[0] == 200
        for role in "ab":  # its steps (default mode: from memory); and a session still running
            status, steps = await answer("GET", role, f"/sessions/{done['session_id']}/steps")
            assert status == 200 and steps["role"] == role and steps["sources"] == ["memory"], steps
            kinds = [(s["kind"], s["peer"], s["value"]) for s in steps["steps"] if s["kind"] in ("send", "receive")]
            assert kinds[0] == ("send", "b", "6") if role == "a" else ("receive", "a", "6"), kinds
            assert all(s["started_at"] and s["state"] == "done" for s in steps["steps"]), steps
        status, steps = await answer("GET", "a", f"/sessions/{slow['session_id']}/steps")
        assert status == 200 and steps["status"] in ("running", "parked"), steps
        for query in ("", "?status=completed&limit=5", "?status=running", "?status=blocked", "?limit=0"):
            status, listing = await answer("GET", "a", f"/sessions{query}")
            assert status == 200, listing
        # Cancel: 202 at a role that is not the initiator while it runs, then 200 when it ended;
        # 409 once the outcome is declared; 404 for an unknown session.
        deadline = time.monotonic() + 10
        while (await c.session("b", slow["session_id"]) or {}).get("status") not in ("running", "parked"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        status, body = await answer("POST", "b", f"/sessions/{slow['session_id']}/cancel")
        assert status == 202 and body["cancel"] == "requested from the initiator 'a'", body
        status, body = await answer("POST", "b", f"/sessions/{slow['session_id']}/cancel?wait=true&timeout=10")
        assert status == 200 and body["status"] == "failed", body
        for role in "abc":
            status, body = await answer("POST", role, f"/sessions/{done['session_id']}/cancel?wait=true")
            assert status == 409 and body["code"] == "outcome-decided" and body["outcome"] == "completed", body
        assert (await answer("POST", "a", "/sessions/nope/cancel"))[0] == 404
        assert (await answer("POST", "a", f"/sessions/{done['session_id']}/resume"))[0] in (202, 409)
        assert (await answer("POST", "a", "/sessions/nope/resume"))[0] == 404
        assert (await answer("GET", "a", "/healthz"))[0] == 200
        for role in "ab":
            status, versions = await answer("GET", role, "/versions")
            assert status == 200 and versions["role"] == role, versions
        assert (await answer("GET", "a", "/metrics"))[0] == 200
        assert (await answer("GET", "a", f"/sessions/{BOOM}"))[0] == 500
        for method, path, kwargs, status, _, _ in BAD_REQUESTS:
            assert (await answer(method, "a", path, **kwargs))[0] == status
        assert (await answer("POST", "b", "/sessions", json=chain_body(1)))[0] == 400
        # The answers walked cover every operation the document lists (HEAD aside).
        operations = {(m.upper(), p) for p, item in doc["paths"].items() for m in item if m != "head"}
        assert operations <= {(m, p) for m, p, _ in contract.seen}, operations - {(m, p) for m, p, _ in contract.seen}


def test_every_route_the_app_registers_is_in_the_document() -> None:
    app = build_api(cast(Engine, None), mode="default")
    from accompanist.sidecar.openapi import openapi_document

    paths = openapi_document(secured=False)["paths"]
    registered = {(r.method.lower(), r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    documented = {(m, p) for p, item in paths.items() for m in item}
    assert registered == documented, registered ^ documented
    for method, path in registered:
        operation = paths[path][method]
        assert operation["responses"], (method, path)
        for name in re.findall(r"\{([^}]+)\}", path):
            assert any(p["name"] == name and p["in"] == "path" for p in operation["parameters"]), (method, path)
