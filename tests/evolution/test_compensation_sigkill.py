"""SIGKILL between a compensation and its record: it runs again, the outcome agreed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.faults.test_timer_processes import FT, _calls, _until
from tests.integration.procs import ProcessCluster


async def test_sigkill_between_a_compensation_and_its_mark(tmp_path: Path) -> None:
    env = {"TIMER_EFFECTS_DIR": str(tmp_path)}
    async with ProcessCluster(["a", "b"], "tests.evolution.compapp:app", tmp_path, FT, **env) as cluster:
        sid = (await cluster.start_session("a", "late", 1, wait=False))["session_id"]
        deadline = time.monotonic() + 30
        while not (tmp_path / "hung-b").exists():  # b's compensation ran and now hangs
            assert time.monotonic() < deadline, "b never compensated"
            await asyncio.sleep(0.05)
        cluster.kill("b")
        await asyncio.sleep(0.5)
        await cluster.restart("b")
        done = await _until(cluster, "a", sid, {"completed", "compensated", "failed"})
        b_done = await _until(cluster, "b", sid, {"completed", "compensated", "failed"})
        assert done["status"] == b_done["status"] == "compensated", (done, b_done)
        assert done["error"] == b_done["error"], (done["error"], b_done["error"])
    assert _calls(tmp_path, "a", "commit") == [1] and _calls(tmp_path, "a", "compensate") == [1]
    assert _calls(tmp_path, "b", "commit") == [1]
    assert _calls(tmp_path, "b", "compensate") == [2]  # again, under the same key
