"""Metrics and spans through real sidecar processes: a peer down (the outbox to it grows and
ages, the initiator parks), an operator's cancel (compensation spans with their attempts, the
cancelled count), a divergence (the diverged count), a SIGKILL and replay (no duplicate span),
and the OpenTelemetry metrics export saying what ``/metrics`` says."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.faults.test_edges_processes import _diverge, cancel, procs, status_at, until
from tests.faults.test_tracing_processes import _check_connected, _spans
from tests.integration.procs import ProcessCluster

pytest.importorskip("opentelemetry.sdk", reason="the telemetry extra is not installed")


def _value(text: str, sample: str) -> float:
    """The value of the sample line ``sample value`` (0 if absent)."""
    found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    return float(found[1]) if found else 0.0


async def _metrics(c: ProcessCluster, role: str) -> str:
    status, text = await c.request("GET", role, "/metrics")
    assert status == 200
    return str(text)


async def _when(c: ProcessCluster, role: str, sample: str, holds: Any, what: str) -> float:
    async def probe() -> tuple[float] | None:
        value = _value(await _metrics(c, role), sample)
        return (value,) if holds(value) else None  # a tuple: 0 is a value too

    found: tuple[float] = await until(probe, f"{what} ({sample} at {role})", timeout=30)
    return found[0]


def _exported(path: Path) -> dict[str, Any]:
    """The last OpenTelemetry export in a metrics file: metric name -> its data points."""
    lines = path.read_text().splitlines()
    assert lines, f"nothing exported to {path}"
    last = json.loads(lines[-1])
    metrics = last["resource_metrics"][0]["scope_metrics"][0]["metrics"]
    return {m["name"]: m["data"] for m in metrics}


def _stored_status(tmp_path: Path, role: str, sid: str) -> str | None:
    """The session's status in ``role``'s SQLite store (what a SIGKILL leaves), if any yet."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{tmp_path / role}.db?mode=ro", uri=True)) as db:
            row = db.execute("SELECT status FROM acc_sessions WHERE session_id = ?", (sid,)).fetchone()
    except sqlite3.OperationalError:  # not created yet, or busy
        return None
    return None if row is None else str(row[0])


async def _async(value: bool) -> bool:
    return value


def _tracing(tmp_path: Path, c: ProcessCluster) -> None:
    for role in "abc":
        c[role].env["ACCOMPANIST_TRACES_FILE"] = str(tmp_path / f"spans-{role}.jsonl")
        c[role].env["ACCOMPANIST_METRICS_FILE"] = str(tmp_path / f"metrics-{role}.jsonl")
        c[role].env["OTEL_METRIC_EXPORT_INTERVAL"] = "300"


async def test_a_peer_down_a_cancel_and_a_divergence_move_the_metrics_and_spans(tmp_path: Path) -> None:
    c = procs(tmp_path, FAULT_PAUSE="1.5")
    _tracing(tmp_path, c)
    async with c:
        # c is down: b's envelope to it waits in b's outbox, a's receive from c times out (parks).
        c.kill("c")
        sid = str((await c.start_session("a", "saga", 1, wait=False))["session_id"])
        await _when(c, "b", 'accompanist_peer_outbox_unacked{peer="c"}', lambda v: v >= 1, "b's envelope for c")
        await _when(c, "a", 'accompanist_sessions_waiting{status="parked"}', lambda v: v == 1, "a parked")
        await _when(c, "b", 'accompanist_peer_outbox_oldest_unacked_seconds{peer="c"}', lambda v: v >= 0.5, "it ages")
        at_b = await _metrics(c, "b")
        assert _value(at_b, 'accompanist_peer_outbox_unacked{peer="a"}') == 0  # per peer: a is up
        # The operator cancels; b compensates its reservation; c comes back and learns it all.
        status, body = await cancel(c, "a", sid)
        assert status in (200, 202), body
        await c.restart("c")
        for role in "abc":
            await status_at(c, role, sid, {"compensated"}, timeout=30)
        await _when(c, "b", 'accompanist_peer_outbox_unacked{peer="c"}', lambda v: v == 0, "b's outbox drained")
        await _when(c, "a", 'accompanist_sessions_waiting{status="parked"}', lambda v: v == 0, "a resumed")
        at_a = await _metrics(c, "a")
        assert _value(at_a, 'accompanist_sessions_ended_total{status="parked"}') >= 1
        for role in "abc":
            text = await _metrics(c, role)
            assert _value(text, "accompanist_sessions_cancelled_total") == 1, role
        assert _value(await _metrics(c, "b"), "accompanist_compensations_total") == 1
        # A divergence (b restarted with changed code): counted while it waits for an operator.
        diverged = await _diverge(c)
        await status_at(c, "b", diverged, {"diverged"}, timeout=30)
        await _when(c, "b", 'accompanist_sessions_waiting{status="diverged"}', lambda v: v == 1, "b diverged")
        await _when(c, "a", 'accompanist_sessions_waiting{status="diverged"}', lambda v: v == 1, "a was told")
        status, body = await cancel(c, "a", diverged, wait=True)
        assert status == 200, body
        await status_at(c, "b", diverged, {"compensated", "failed"}, timeout=30)
        await _when(c, "b", 'accompanist_sessions_waiting{status="diverged"}', lambda v: v == 0, "b done")
        # The OpenTelemetry export says what /metrics says, under the same names.
        prometheus = await _metrics(c, "b")

        async def caught_up() -> dict[str, Any] | None:
            exported = _exported(tmp_path / "metrics-b.jsonl")
            ended = {
                p["attributes"]["status"]: p["value"] for p in exported["accompanist_sessions_ended"]["data_points"]
            }
            want = {
                s: _value(prometheus, f'accompanist_sessions_ended_total{{status="{s}"}}')
                for s in ("compensated", "diverged", "failed")
            }
            return exported if all(ended.get(s, 0) == v for s, v in want.items()) else None

        exported = await until(caught_up, "an export with the last numbers")
    assert exported["accompanist_sessions_ended"]["is_monotonic"] is True
    for point in exported["accompanist_step_seconds"]["data_points"]:  # histograms: the same buckets
        count = _value(prometheus, f'accompanist_step_seconds_count{{kind="{point["attributes"]["kind"]}"}}')
        assert point["count"] == count and sum(point["bucket_counts"]) == count, point
        assert len(point["bucket_counts"]) == len(point["explicit_bounds"]) + 1
    peers = {p["attributes"]["peer"] for p in exported["accompanist_peer_outbox_unacked"]["data_points"]}
    assert peers == {"a", "c"}
    assert "accompanist_frames_rejected" in exported  # the transport's metrics too
    # Spans: one connected trace; b's compensation with its attempts; a's park; no duplicates.
    spans = _spans(tmp_path, sid)
    _check_connected(spans, sid, "a", "abc")
    names = Counter((s["attributes"].get("accompanist.role"), s["name"]) for s in spans)
    assert names[("b", "compensate")] == 1 and names[("a", "parked")] >= 1, names
    undo = next(s for s in spans if s["name"] == "compensate")
    assert (
        undo["attributes"]["accompanist.transaction"] == "reserve" and undo["attributes"]["accompanist.attempts"] == 1
    )
    commit = next(s for s in spans if s["name"] == "transaction")
    assert commit["attributes"]["accompanist.attempts"] == 1
    parked = next(s for s in spans if s["name"] == "parked")
    assert "waiting for envelope #1 from 'c'" in parked["attributes"]["accompanist.reason"]
    keyed = Counter(
        (s["attributes"]["accompanist.role"], s["name"], s["attributes"].get("accompanist.step"))
        for s in spans
        if s["name"] in ("send", "receive", "local", "transaction", "compensate")
        and not s["attributes"].get("accompanist.parked")  # a wait that parked, then a served receive
    )
    assert max(keyed.values()) == 1, keyed


async def test_a_crash_after_a_commit_replays_without_a_duplicate_span(tmp_path: Path) -> None:
    c = procs(tmp_path)
    _tracing(tmp_path, c)
    async with c:
        # 'late': c commits and finishes; b waits at a gate; a waits for b (and parks).
        sid = str((await c.start_session("a", "late", 3, wait=False))["session_id"])
        await status_at(c, "c", sid, {"finished"})
        await status_at(c, "a", sid, {"parked"})
        await until(lambda: _async(_stored_status(tmp_path, "a", sid) == "parked"), "a's parked status durable")
        c.kill("a")  # after the change is durable: a restarts parked, and its park is a span
        c.kill("c")
        await c.restart("c")
        await c.restart("a")
        (tmp_path / "gate").touch()
        for role in "abc":
            await status_at(c, role, sid, {"completed"}, timeout=30)

        async def all_ended() -> list[dict[str, Any]] | None:
            found = _spans(tmp_path, sid)
            ended = {s["attributes"]["accompanist.role"] for s in found if s["name"].startswith("session ")}
            return found if ended == set("abc") else None

        spans = await until(all_ended, "every session span")
    _check_connected(spans, sid, "a", "abc")
    keyed = Counter(
        (s["attributes"]["accompanist.role"], s["name"], s["attributes"].get("accompanist.step"))
        for s in spans
        if s["name"] in ("send", "receive", "local", "transaction") and not s["attributes"].get("accompanist.parked")
    )
    assert max(keyed.values()) == 1, f"a replayed step was traced again: {keyed}"
    waits = [s for s in spans if s["attributes"].get("accompanist.parked")]  # a's wait that parked
    assert [(s["attributes"]["accompanist.role"], s["name"]) for s in waits] == [("a", "receive")], waits
    commits = [s for s in spans if s["name"] == "transaction"]
    assert sorted(s["attributes"]["accompanist.transaction"] for s in commits) == ["hold", "risky"]
    assert all(s["attributes"]["accompanist.attempts"] == 1 for s in commits)
    assert [s["attributes"]["accompanist.role"] for s in spans if s["name"] == "replay"] == ["a"]
    assert any(s["name"] == "parked" and s["attributes"]["accompanist.role"] == "a" for s in spans)
