"""Durable timers in real sidecar processes: SIGKILL while a session sleeps, or while a saga
deadline runs; the sidecar comes back after the deadline and the timer fires at its start."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from tests.faults.timerapp import read_ledger
from tests.integration.procs import ProcessCluster

FT = ["--mode", "fault-tolerant", "--receive-timeout", "1", "--store", "sqlite:///./{role}.db"]


async def _until(
    cluster: ProcessCluster, role: str, sid: str, statuses: set[str], timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    seen: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        seen = await cluster.session(role, sid)
        if seen is not None and seen["status"] in statuses:
            return seen
        await asyncio.sleep(0.1)
    raise AssertionError(f"session {sid} at '{role}' is {seen and seen['status']}, not one of {sorted(statuses)}")


def _calls(tmp_path: Path, role: str, what: str) -> list[int]:
    return [n for (_, w), n in read_ledger(tmp_path, role).items() if w == what]


async def test_a_sleeping_session_survives_sigkill_and_wakes_at_start_past_its_deadline(tmp_path: Path) -> None:
    env = {"TIMER_EFFECTS_DIR": str(tmp_path), "TIMER_SLEEP": "3"}
    async with ProcessCluster(["a", "b"], "tests.faults.timerapp:app", tmp_path, FT, **env) as cluster:
        sid = (await cluster.start_session("a", "nap", 1, wait=False))["session_id"]
        parked = await _until(cluster, "b", sid, {"parked"})
        assert parked["error"].startswith("sleeping until "), parked
        killed_at = time.monotonic()
        cluster.kill("b")
        await asyncio.sleep(4.0)  # down past the deadline (3 s after the sleep began)
        await cluster.restart("b")
        assert time.monotonic() - killed_at >= 4.0
        done = await _until(cluster, "a", sid, {"completed", "compensated", "failed"})
        assert done["status"] == "completed", done
        assert (await _until(cluster, "b", sid, {"completed"}))["status"] == "completed"
    # b booked before and after its sleep, a once: each effect exactly once, nothing undone.
    assert sorted(_calls(tmp_path, "b", "commit")) == [1, 1]
    assert _calls(tmp_path, "a", "commit") == [1]
    assert not _calls(tmp_path, "a", "compensate") and not _calls(tmp_path, "b", "compensate")


async def test_a_saga_deadline_fires_after_a_sigkill_and_the_saga_compensates_everywhere(tmp_path: Path) -> None:
    env = {"TIMER_EFFECTS_DIR": str(tmp_path), "TIMER_DEADLINE": "3"}
    async with ProcessCluster(["a", "b"], "tests.faults.timerapp:app", tmp_path, FT, **env) as cluster:
        sid = (await cluster.start_session("a", "late_payment", 1, wait=False))["session_id"]
        await _until(cluster, "b", sid, {"parked"})  # b booked and sleeps: payment is late
        cluster.kill("a")  # the initiator, which holds the deadline, dies before it passes
        await asyncio.sleep(3.5)
        await cluster.restart("a")
        done = await _until(cluster, "a", sid, {"completed", "compensated", "failed"})
        assert done["status"] == "compensated", done
        assert "payment did not complete in time" in done["error"]
        b_done = await _until(cluster, "b", sid, {"completed", "compensated", "failed"})
        assert b_done["status"] == "compensated", b_done
    for role in ("a", "b"):  # every commit compensated, each exactly once
        assert _calls(tmp_path, role, "commit") == [1], role
        assert _calls(tmp_path, role, "compensate") == [1], role
