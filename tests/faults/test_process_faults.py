"""Fault-tolerant sidecar processes: divergence after a code change, corrupt stores at start."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from accompanist.store.base import SessionRecord, WriteBatch
from accompanist.store.sqlite import SQLiteStore
from tests.integration.procs import ROOT, ProcessCluster

FT = ["--mode", "fault-tolerant", "--receive-timeout", "1", "--store", "sqlite:///./{role}.db"]


async def test_changed_choreography_after_a_crash_is_reported_as_diverged(tmp_path: Path) -> None:
    async with ProcessCluster(
        ["a", "b", "c"], "tests.faults.faultapp:app", tmp_path, FT, FAULT_EFFECTS_DIR=str(tmp_path)
    ) as cluster:
        started = await cluster.start_session("a", "pingpong", 5, wait=False)
        sid = started["session_id"]
        for _ in range(100):  # b answered and now waits for a's second message
            seen = await cluster.session("b", sid)
            if seen is not None:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        cluster.kill("a")  # a dies in its slow step; b waits, then parks
        cluster.kill("b")
        cluster["b"].env["FAULT_CHANGED"] = "1"  # b comes back with different code, same version
        await cluster.restart("b")
        for _ in range(100):
            status, listing = await cluster.request("GET", "b", "/sessions?status=diverged")
            if listing["sessions"]:
                break
            await asyncio.sleep(0.1)
        assert [s["session_id"] for s in listing["sessions"]] == [sid]
        error = listing["sessions"][0]["error"]
        assert f"session {sid} diverged at step 2" in error
        assert "send(b->a#1/value)" in error and "local(" in error


def _start_with_store(tmp_path: Path, store: Path) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable, "-m", "accompanist", "sidecar", "--app", "tests.faults.faultapp:app", "--role", "b",
        "--listen", "127.0.0.1:0", "--mode", "fault-tolerant", "--store", f"sqlite:///{store}",
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(ROOT)})


async def test_corrupt_and_truncated_store_files_are_refused_at_start(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 40)
    truncated = tmp_path / "truncated.db"
    store = SQLiteStore(truncated, "b")
    await store.open()
    rows = [SessionRecord(session_id=f"s{i}", choreography="chain", version=1, role="b", status="running")
            for i in range(2000)]  # fmt: skip
    await store.commit(WriteBatch(sessions=rows))
    await store.close()
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    for path in (garbage, truncated):
        before = path.read_bytes()
        result = await asyncio.to_thread(_start_with_store, tmp_path, path)
        assert result.returncode != 0
        assert str(path) in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert path.read_bytes() == before, "a refused store file must be left untouched"
