"""``accompanist sessions`` and ``accompanist show`` against running sidecars and, offline,
against their stores."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from tests.integration.procs import ROOT, ProcessCluster

FT = ["--mode", "fault-tolerant", "--receive-timeout", "5", "--store", "sqlite:///./{role}.db"]


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "250"}
    cmd = [sys.executable, "-m", "accompanist", *args]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)


async def test_sessions_and_show_across_sidecars_and_stores(tmp_path: Path) -> None:
    cluster = ProcessCluster(
        ["a", "b", "c"], "tests.faults.faultapp:app", tmp_path, FT, FAULT_EFFECTS_DIR=str(tmp_path)
    )
    async with cluster:
        ids = {}
        for n, outcome in ((1, "completed"), (5, "compensated")):
            status, body = await cluster.request(
                "POST", "a", "/sessions?wait=true", json={"choreography": "saga", "args": [n]}
            )
            assert status == 200 and body["status"] == outcome, body
            ids[outcome] = body["session_id"]
        for role in "bc":  # the participants learn the outcome a moment later
            for outcome, sid in ids.items():
                for _ in range(100):
                    seen = await cluster.session(role, sid)
                    if seen is not None and seen["status"] == outcome:
                        break
                    await asyncio.sleep(0.05)
        urls = [arg for role in "abc" for arg in ("--sidecar", cluster[role].api)]
        listing = _cli(tmp_path, "sessions", *urls)
        assert listing.returncode == 0, listing.stderr
        lines = listing.stdout.splitlines()
        for outcome, sid in ids.items():
            row = next(line for line in lines if sid in line)
            assert row.count(outcome) == 3 and "yes" in row, row  # every role, and they agree
        only = _cli(tmp_path, "sessions", *urls, "--status", "compensated")
        assert ids["compensated"] in only.stdout and ids["completed"] not in only.stdout
        shown = _cli(tmp_path, "show", ids["compensated"], *urls)
        assert shown.returncode == 0, shown.stderr
        assert "Abort at c: charge refuses 5" in shown.stdout and "roles agree: yes" in shown.stdout
    # Offline, from the stores the sidecars left behind: the same, plus each role's steps.
    stores = [arg for role in "abc" for arg in ("--store", f"{role}=sqlite:///{tmp_path / f'{role}.db'}")]
    offline = _cli(tmp_path, "show", ids["compensated"], *stores)
    assert offline.returncode == 0, offline.stderr
    assert "roles agree: yes" in offline.stdout and "steps at b (from its store)" in offline.stdout
    assert "reserve" in offline.stdout and "compensated" in offline.stdout
    missing = _cli(tmp_path, "show", "no-such-session", *stores)
    assert missing.returncode == 1 and "no sidecar or store knows session no-such-session" in missing.stderr
    bad = _cli(tmp_path, "sessions", "--store", "sqlite:///x.db")
    assert bad.returncode == 2 and "--store takes ROLE=STORE_URL" in bad.stderr
