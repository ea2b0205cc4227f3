"""The saga edges (issue 8) with real sidecar processes over TCP: cancel semantics over HTTP,
two choreographies under one session id, a value over the frame limit, roles that speak
first, divergence told to every role, a blocked version, and a long session replayed after a
SIGKILL. The same cases in process are in ``tests/engine/test_saga_edges.py``."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.faults.faultapp import EXPECTED_EFFECTS, read_effects, read_tx
from tests.integration.procs import ProcessCluster

APP = "tests.faults.faultapp:app"
FT = ["--mode", "fault-tolerant", "--receive-timeout", "1", "--store", "sqlite:///./{role}.db"]
DEFAULT = ["--mode", "default", "--receive-timeout", "2"]
MODES = pytest.mark.parametrize("args", [DEFAULT, FT], ids=["default", "fault-tolerant"])
ENV = {"FAULT_PAUSE": "1", "ACCOMPANIST_RETRY_MIN": "0.02", "ACCOMPANIST_RETRY_MAX": "0.3"}
TERMINAL = {"completed", "compensated", "failed"}

T = TypeVar("T")


def procs(tmp_path: Path, args: list[str] = FT, roles: str = "abc", **env: str) -> ProcessCluster:
    return ProcessCluster(list(roles), APP, tmp_path, args, FAULT_EFFECTS_DIR=str(tmp_path), **{**ENV, **env})


async def until(probe: Callable[[], Awaitable[T | None]], what: str, timeout: float = 15) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = await probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def status_at(c: ProcessCluster, role: str, sid: str, wanted: set[str], timeout: float = 15) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        record = await c.session(role, sid)
        return record if record is not None and record["status"] in wanted else None

    return await until(probe, f"session {sid} {'|'.join(sorted(wanted))} at {role}", timeout)


async def start(c: ProcessCluster, role: str, name: str, *args: Any, **body: Any) -> tuple[int, Any]:
    query = "?wait=true&timeout=20" if body.pop("wait", False) else ""
    return await c.request("POST", role, f"/sessions{query}", json={"choreography": name, "args": list(args), **body})


async def cancel(c: ProcessCluster, role: str, sid: str, wait: bool = False) -> tuple[int, Any]:
    return await c.request("POST", role, f"/sessions/{sid}/cancel{'?wait=true' if wait else ''}")


def effects_of(tmp_path: Path, role: str, sid: str) -> dict[str, int]:
    """``step -> value`` of the effects ``role``'s service recorded for ``sid``."""
    try:
        effects = read_effects(tmp_path, role)[0]
    except sqlite3.OperationalError:  # the sidecar is creating the database right now
        return {}
    return {k.split("/", 1)[1]: v for k, v in effects.items() if k.startswith(f"{sid}/")}


def tx_of(tmp_path: Path, role: str, sid: str) -> dict[str, int]:
    """``"commit:<key>"``/``"undo:<key>"`` -> calls, of ``role``'s transactions for ``sid``."""
    try:
        calls = read_tx(tmp_path, role)
    except sqlite3.OperationalError:
        return {}
    return {k: n for k, n in calls.items() if k.split(":", 1)[1].startswith(f"{sid}/")}


async def metric(c: ProcessCluster, role: str, name: str) -> float:
    status, text = await c.request("GET", role, "/metrics")
    assert status == 200
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    assert found is not None, f"no {name} in {role}'s /metrics"
    return float(found.group(1))


# -- cancel over HTTP -------------------------------------------------------------------------
async def test_cancel_answers_over_http(tmp_path: Path) -> None:
    async with procs(tmp_path) as c:
        done = await c.start_session("a", "chain", 5)
        sid = done["session_id"]
        assert done["status"] == "completed" and done["result"] == 9
        for role in "abc":  # too late at every role: 409 with the outcome that stands
            await status_at(c, role, sid, {"completed"})
            status, body = await cancel(c, role, sid, wait=role == "c")
            assert status == 409 and body["outcome"] == "completed", (role, body)
            assert "completed" in body["error"]
        assert {(await c.session(r, sid) or {}).get("status") for r in "abc"} == {"completed"}

        # At a non-initiator while running: 202, passed on to the initiator; ?wait=true then
        # answers with the final status, the same at both roles.
        sid = (await c.start_session("a", "pingpong", 1, wait=False))["session_id"]
        await status_at(c, "b", sid, {"running", "parked"})
        status, body = await cancel(c, "b", sid)
        assert status == 202 and body["cancel"] == "requested from the initiator 'a'", body
        assert body["status"] not in TERMINAL
        status, body = await cancel(c, "b", sid, wait=True)
        assert status == 200 and body["status"] == "failed", body  # pingpong commits nothing
        assert body["failure"]["error_type"] == "SessionCancelledError" and body["failure"]["role"] == "b"
        at_a = await status_at(c, "a", sid, TERMINAL)
        assert at_a["status"] == "failed" and at_a["failure"] == body["failure"]

        # At the initiator while a saga runs, ?wait=true: compensated, b's commit undone once.
        status, started = await start(c, "a", "slow-b", 3, version=2)
        sid = started["session_id"]
        await until(lambda: _async(tx_of(tmp_path, "b", sid)), "b's commit")
        status, body = await cancel(c, "a", sid, wait=True)
        assert status == 200 and body["status"] == "compensated", body
        assert body["failure"]["message"] == "cancelled by an operator at role 'a'"
        await status_at(c, "b", sid, {"compensated"})
        assert tx_of(tmp_path, "b", sid) == {f"commit:{sid}/b/hold/0": 1, f"undo:{sid}/b/hold/0": 1}

        status, body = await cancel(c, "a", "no-such-session")
        assert status == 404


async def _async(value: T) -> T:
    return value


# -- two choreographies, one session id ---------------------------------------------------------
async def test_a_second_choreography_under_a_taken_session_id_is_refused(tmp_path: Path) -> None:
    async with procs(tmp_path) as c:
        status, _ = await start(c, "a", "chain", 10, session_id="order-x")
        assert status == 202
        await status_at(c, "b", "order-x", {"running", "parked", "finished", "completed"})
        status, body = await start(c, "b", "echo-b", 1, session_id="order-x", wait=True)
        assert status == 409 and "'order-x' is taken by a session of 'chain'" in body["error"], body
        status, body = await start(c, "a", "pingpong", 1, session_id="order-x")
        assert status == 409 and "taken by a session of 'chain'" in body["error"], body
        for role in "abc":
            record = await status_at(c, role, "order-x", {"completed"})
            assert record["choreography"] == "chain"
        assert (await c.session("a", "order-x") or {})["result"] == 14
        for role in "abc":  # the chain's effects, each once, and none of echo-b's
            expected = {k: 10 + v for k, v in EXPECTED_EFFECTS.items() if k.startswith(role)}
            assert effects_of(tmp_path, role, "order-x") == expected, role
        status, body = await start(c, "b", "echo-b", 1, session_id="order-x")
        assert status == 409

        # Both at once, at two initiators: at most one runs; nothing is delivered across.
        for i in range(4):
            sid = f"race-{i}"
            (s1, chain), (s2, echo) = await asyncio.gather(
                start(c, "a", "chain", 100, session_id=sid, wait=True),
                start(c, "b", "echo-b", 7, session_id=sid, wait=True),
            )
            outcomes = []
            for status, body, right in ((s1, chain, 104), (s2, echo, 8)):
                assert status in (200, 409), (status, body)
                if status == 200:
                    assert body["status"] in ("completed", "failed"), body
                    if body["status"] == "completed":
                        assert body["result"] == right, body
                    else:
                        assert "two sessions share one id" in body["error"], body
                    outcomes.append(body["status"])
            assert outcomes.count("completed") <= 1, (chain, echo)
            effects = {r: effects_of(tmp_path, r, sid) for r in "abc"}
            if s1 == 200 and chain["status"] == "completed":
                assert effects == {r: {k: 100 + v for k, v in EXPECTED_EFFECTS.items() if k[0] == r} for r in "abc"}
            if s2 == 200 and echo["status"] == "completed":
                assert effects == {"a": {"a/1": 8}, "b": {}, "c": {}}


# -- a value over the frame limit -------------------------------------------------------------
@MODES
async def test_a_value_over_the_frame_limit_fails_its_own_session(tmp_path: Path, args: list[str]) -> None:
    async with procs(tmp_path, args, "ab") as c:
        began = time.monotonic()
        status, body = await start(c, "a", "big", 5_000_000, wait=True)
        assert status == 200 and body["status"] == "compensated", body
        assert time.monotonic() - began < 10, "failed at the send, not after retries"
        failure = body["failure"]
        assert failure["error_type"] == "PayloadTooLargeError" and failure["role"] == "b", failure
        assert "over the limit" in failure["message"] and "b->a" in failure["message"]
        sid = body["session_id"]
        at_b = await status_at(c, "b", sid, TERMINAL)
        assert at_b["status"] == "compensated" and at_b["failure"] == failure
        assert tx_of(tmp_path, "b", sid) == {f"commit:{sid}/b/hold/0": 1, f"undo:{sid}/b/hold/0": 1}

        began = time.monotonic()  # the next sessions to the same peer are not held behind it
        answers = await asyncio.gather(*(start(c, "a", "big", 10 + i, wait=True) for i in range(10)))
        assert [(s, b["status"], b["result"]) for s, b in answers] == [(200, "completed", 10 + i) for i in range(10)]
        assert time.monotonic() - began < 5


# -- roles that speak first -------------------------------------------------------------------
@MODES
async def test_roles_that_speak_first_run_across_processes(tmp_path: Path, args: list[str]) -> None:
    async with procs(tmp_path, args) as c:
        for n in (3, 30):
            status, body = await start(c, "a", "first", n, wait=True)
            assert status == 200 and body["status"] == "completed" and body["result"] == n + 7, body
            sid = body["session_id"]
            for role in "abc":  # c took part though nobody ever sends to it
                await status_at(c, role, sid, {"completed"})
            assert effects_of(tmp_path, "b", sid) == {"b/1": 7}
            assert tx_of(tmp_path, "c", sid) == {f"commit:{sid}/c/hold/0": 1}


# -- divergence across processes --------------------------------------------------------------
async def _diverge(c: ProcessCluster) -> str:
    """A pingpong session that diverged at b after a crash and a changed deployment of b."""
    sid = str((await c.start_session("a", "pingpong", 5, wait=False))["session_id"])
    await until(lambda: _async(effects_of(c.workdir, "b", sid)), "b's first step")
    await asyncio.sleep(0.2)  # b has sent its answer; a is in its slow step
    c.kill("a")
    c.kill("b")
    c["b"].env["FAULT_CHANGED"] = "1"  # b comes back with one more step, same version
    await c.restart("b")
    await c.restart("a")
    return sid


async def test_a_divergence_is_told_to_every_role_and_the_operator_cancels_it(tmp_path: Path) -> None:
    async with procs(tmp_path, FAULT_PAUSE="1.5") as c:
        sid = await _diverge(c)
        at_b = await status_at(c, "b", sid, {"diverged"})
        assert f"session {sid} diverged at step 2" in at_b["error"]
        at_a = await status_at(c, "a", sid, {"diverged"})  # told, not left waiting
        assert at_a["failure"] == at_b["failure"] and at_a["error"] == at_b["error"], (at_a, at_b)
        assert at_a["failure"]["error_type"] == "NondeterminismError" and at_a["failure"]["role"] == "b"

        async def listed() -> list[str]:  # the store lists it once the change is durable
            status, listing = await c.request("GET", "a", "/sessions?status=diverged")
            return [s["session_id"] for s in listing["sessions"]]

        assert await until(listed, "the diverged session listed") == [sid]
        status, body = await cancel(c, "a", sid, wait=True)
        assert status == 200 and body["status"] in ("compensated", "failed"), body
        at_b = await status_at(c, "b", sid, TERMINAL)
        assert at_b["status"] == body["status"] and at_b["failure"] == body["failure"]
        assert (await c.start_session("a", "chain", 1))["result"] == 5  # the others run on


async def test_a_divergence_resumes_once_the_old_code_is_back(tmp_path: Path) -> None:
    async with procs(tmp_path, FAULT_PAUSE="1.5") as c:
        sid = await _diverge(c)
        await status_at(c, "b", sid, {"diverged"})
        await status_at(c, "a", sid, {"diverged"})
        c.kill("b")
        c["b"].env.pop("FAULT_CHANGED")  # the operator deploys the code the session ran with
        await c.restart("b")
        status, body = await c.request("POST", "b", f"/sessions/{sid}/resume")
        assert status == 202, body
        status, body = await c.request("POST", "a", f"/sessions/{sid}/resume")
        assert status == 202, body
        at_a = await status_at(c, "a", sid, TERMINAL, timeout=20)
        assert at_a["status"] == "completed" and at_a["result"] == 7, at_a  # 5, +1 at b, +1 at b
        await status_at(c, "b", sid, {"completed"})
        assert effects_of(tmp_path, "b", sid) == {"b/1": 6, "b/4": 7}


# -- a stored session of a version the sidecar no longer has ------------------------------------
async def test_a_session_of_a_dropped_version_is_blocked_until_it_is_deployed_again(tmp_path: Path) -> None:
    async with procs(tmp_path, roles="ab", FAULT_PAUSE="2") as c:
        status, started = await start(c, "a", "slow-b", 3, version=1)
        sid = started["session_id"]
        await until(lambda: _async(effects_of(tmp_path, "b", sid)), "b in its slow step")
        c.kill("b")
        c["b"].env["FAULT_WITHOUT_V1"] = "1"  # redeployed without version 1 of slow-b
        await c.restart("b")  # it starts
        record = await status_at(c, "b", sid, {"blocked"})
        assert "deploy that version" in record["error"] and "slow-b" in record["error"], record
        status, listing = await c.request("GET", "b", "/sessions?status=blocked")
        assert [s["session_id"] for s in listing["sessions"]] == [sid]
        assert await metric(c, "b", "accompanist_sessions_blocked") == 1
        # ... and serves everything else, including the version it has.
        status, other = await start(c, "b", "echo-b", 4, wait=True)
        assert status == 200 and other["status"] == "completed" and other["result"] == 5, other
        status, v2 = await start(c, "a", "slow-b", 9, version=2, wait=True)
        assert status == 200 and v2["status"] == "completed" and v2["result"] == 10, v2
        assert (await c.session("a", sid) or {})["status"] in ("running", "parked")

        c.kill("b")
        c["b"].env.pop("FAULT_WITHOUT_V1")  # version 1 is back
        await c.restart("b")
        at_a = await status_at(c, "a", sid, TERMINAL, timeout=20)
        assert at_a["status"] == "completed" and at_a["result"] == 4, at_a
        record = await status_at(c, "b", sid, {"completed"})
        assert record["error"] is None
        # Never compensated; its commit may run again after the SIGKILL (its record rides with
        # the next write), under the same idempotency key: one effect.
        assert set(tx_of(tmp_path, "b", sid)) == {f"commit:{sid}/b/hold/0"}
        assert effects_of(tmp_path, "b", sid) == {"b/2": 4}
        assert await metric(c, "b", "accompanist_sessions_blocked") == 0


# -- a long session replayed after a SIGKILL ----------------------------------------------------
async def test_a_session_longer_than_the_buffer_limit_completes_after_a_sigkill(tmp_path: Path) -> None:
    async with procs(tmp_path, [*FT, "--buffer-limit", "32"], "ab", FAULT_PAUSE="1.5") as c:
        sid = (await c.start_session("a", "loop", 100, wait=False))["session_id"]
        await until(lambda: _async(effects_of(tmp_path, "b", sid)), "100 round trips", timeout=25)
        c.kill("b")  # in its slow step, 100 envelopes from a in its inbox, over the limit of 32
        await c.restart("b")
        at_a = await status_at(c, "a", sid, TERMINAL, timeout=20)
        assert at_a["status"] == "completed" and at_a["result"] == sum(range(100)) + 1, at_a
        await status_at(c, "b", sid, {"completed"})
        replays = await metric(c, "b", "accompanist_replays_total")
        assert 1 <= replays <= 2, f"{replays} replays: a replay loop"
        await asyncio.sleep(1)
        assert await metric(c, "b", "accompanist_replays_total") == replays
        assert list(effects_of(tmp_path, "b", sid).values()) == [sum(range(100)) + 1]
