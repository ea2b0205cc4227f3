"""OpenTelemetry traces across real sidecar processes: one connected trace per session, and a
crash and replay that adds no duplicate span (each sidecar writes its spans to a file)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from accompanist.tracing import session_span_id, trace_id_of
from tests.integration.procs import ProcessCluster

pytest.importorskip("opentelemetry.sdk", reason="the telemetry extra is not installed")

FT = ["--mode", "fault-tolerant", "--receive-timeout", "5", "--store", "sqlite:///./{role}.db"]


def _cluster(tmp_path: Path, **env: str) -> ProcessCluster:
    cluster = ProcessCluster(
        ["a", "b", "c"], "tests.faults.faultapp:app", tmp_path, FT, FAULT_EFFECTS_DIR=str(tmp_path), **env
    )
    for role in "abc":
        cluster[role].env["ACCOMPANIST_TRACES_FILE"] = str(tmp_path / f"spans-{role}.jsonl")
    return cluster


def _spans(tmp_path: Path, sid: str) -> list[dict[str, Any]]:
    found = []
    for role in "abc":
        path = tmp_path / f"spans-{role}.jsonl"
        if path.exists():
            for line in path.read_text().splitlines():
                span = json.loads(line)
                if (
                    span["attributes"].get("accompanist.session_id") == sid
                    or span["trace_id"] == f"{trace_id_of(sid):032x}"
                ):
                    found.append(span)
    return found


async def _ended_everywhere(cluster: ProcessCluster, sid: str, tmp_path: Path, roles: str) -> list[dict[str, Any]]:
    for _ in range(200):
        spans = _spans(tmp_path, sid)
        sessions = {s["attributes"].get("accompanist.role") for s in spans if s["name"].startswith("session ")}
        if sessions >= set(roles):
            return spans
        await asyncio.sleep(0.05)
    raise AssertionError(
        f"session spans of {sid} did not all arrive: {sorted(s['name'] for s in _spans(tmp_path, sid))}"
    )


def _check_connected(spans: list[dict[str, Any]], sid: str, initiator: str, roles: str) -> None:
    trace = f"{trace_id_of(sid):032x}"
    assert {s["trace_id"] for s in spans} == {trace}, "one trace per session"
    sessions = [s for s in spans if s["name"].startswith("session ")]
    by_role = Counter(s["attributes"]["accompanist.role"] for s in sessions)
    assert by_role == Counter(roles), f"one session span per role: {by_role}"
    root = f"{session_span_id(sid, initiator):016x}"
    for s in sessions:
        role = s["attributes"]["accompanist.role"]
        assert s["span_id"] == f"{session_span_id(sid, role):016x}"
        assert s["parent_id"] == (None if role == initiator else root), s
    ids = {s["span_id"] for s in sessions}
    for s in spans:
        if not s["name"].startswith("session "):
            assert s["parent_id"] in ids, f"{s['name']} hangs off no session span"


async def test_a_saga_is_one_connected_trace_across_sidecars(tmp_path: Path) -> None:
    async with _cluster(tmp_path) as cluster:
        for n, outcome in ((1, "completed"), (5, "compensated")):  # c refuses multiples of 5
            status, body = await cluster.request(
                "POST", "a", "/sessions?wait=true", json={"choreography": "saga", "args": [n]}
            )
            assert status == 200 and body["status"] == outcome, body
            sid = body["session_id"]
            spans = await _ended_everywhere(cluster, sid, tmp_path, "abc")
            _check_connected(spans, sid, "a", "abc")
            outcomes = {s["attributes"]["accompanist.outcome"] for s in spans if s["name"].startswith("session ")}
            assert outcomes == {outcome}
            names = Counter((s["attributes"].get("accompanist.role"), s["name"]) for s in spans)
            assert names[("b", "transaction")] == 1 and names[("b", "receive")] >= 1 and names[("a", "send")] >= 1
            assert names[("c", "transaction")] == 1


async def test_a_crash_and_replay_adds_no_duplicate_span(tmp_path: Path) -> None:
    async with _cluster(tmp_path, FAULT_PAUSE="2") as cluster:
        started = await cluster.start_session("a", "pingpong", 5, wait=False)
        sid = started["session_id"]
        for _ in range(100):  # a is in its slow step once b has answered
            if any(
                s["name"] == "receive" and s["attributes"].get("accompanist.role") == "a" for s in _spans(tmp_path, sid)
            ):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        cluster.kill("a")
        await cluster.restart("a")
        for _ in range(200):
            record = await cluster.session("a", sid)
            if record is not None and record["status"] == "completed":
                break
            await asyncio.sleep(0.1)
        assert record is not None and record["status"] == "completed", record
        spans = await _ended_everywhere(cluster, sid, tmp_path, "ab")  # c has no part in pingpong
    _check_connected(spans, sid, "a", "ab")
    # On a loaded machine b may wait past its receive timeout while a is down: b parks, and its
    # wait's span ends marked as parked (a "parked" span follows); the resumed wait is a span of
    # its own. Those are two waits, not a replayed step traced twice.
    parked = [s for s in spans if s["attributes"].get("accompanist.parked")]
    assert not parked or any(s["name"] == "parked" for s in spans), parked
    steps = Counter(
        (s["attributes"]["accompanist.role"], s["name"], s["attributes"].get("accompanist.step"))
        for s in spans
        if s["name"] in ("send", "receive", "local", "transaction") and not s["attributes"].get("accompanist.parked")
    )
    assert max(steps.values()) == 1, f"a replayed step was traced again: {steps}"
    replays = [s for s in spans if s["name"] == "replay"]
    assert [s["attributes"]["accompanist.role"] for s in replays] == ["a"]
    assert replays[0]["attributes"]["accompanist.replayed_steps"] >= 2
    # Every step of a's part is traced exactly once across its two lives.
    assert sorted(k[1] for k in steps if k[0] == "a") == ["local", "receive", "receive", "send", "send"]


def _metric(text: str, name: str) -> float:
    """The value of one sample line ``name value`` (0 if absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


async def test_the_metrics_move_through_a_real_run(tmp_path: Path) -> None:
    async with _cluster(tmp_path, FAULT_PAUSE="1") as cluster:
        for n in (1, 5):  # completed, then compensated (c refuses multiples of 5)
            status, body = await cluster.request(
                "POST", "a", "/sessions?wait=true", json={"choreography": "saga", "args": [n]}
            )
            assert status == 200, body
        started = await cluster.start_session("a", "pingpong", 2, wait=False)
        await asyncio.sleep(0.6)  # a is in its slow step
        cluster.kill("a")
        await cluster.restart("a")
        for _ in range(200):
            record = await cluster.session("a", started["session_id"])
            if record is not None and record["status"] == "completed":
                break
            await asyncio.sleep(0.1)
        _, text = await cluster.request("GET", "a", "/metrics")
        _, at_c = await cluster.request("GET", "c", "/metrics")
    assert _metric(text, 'accompanist_sessions_ended_total{status="completed"}') >= 1
    assert _metric(at_c, 'accompanist_sessions_ended_total{status="compensated"}') >= 1
    assert _metric(at_c, 'accompanist_step_seconds_count{kind="transaction"}') >= 2
    assert _metric(text, 'accompanist_step_seconds_count{kind="receive"}') >= 1  # counted after the restart
    assert _metric(text, "accompanist_replay_seconds_count") == 1
    assert _metric(text, "accompanist_replays_total") == 1
    assert _metric(text, "accompanist_store_commit_seconds_count") >= 1
    assert "accompanist_outbox_oldest_unacked_seconds" in text
