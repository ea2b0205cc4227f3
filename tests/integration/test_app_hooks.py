"""An app's lifecycle hooks in real sidecar processes: run around the engine, and a failed start."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.integration.procs import ROOT, ProcessCluster, free_port

APP = "tests.integration.hooks_app:app"


async def test_hooks_run_around_the_sidecar_and_close_its_clients(tmp_path: Path) -> None:
    log = tmp_path / "hooks.log"
    async with ProcessCluster(["pinger", "ponger"], APP, tmp_path, HOOKS_LOG=str(log)) as cluster:
        done = await cluster.start_session("pinger", "ping", 41)
        assert (done["status"], done["result"]) == ("completed", 42)
        codes = [await cluster[role].terminate() for role in ("pinger", "ponger")]
    assert codes == [0, 0]
    lines = log.read_text().splitlines()
    for role in ("pinger", "ponger"):
        mine = [line for line in lines if line.endswith(f" {role}")]
        assert mine == [f"startup open_http {role}", f"startup check {role}", f"shutdown close_http {role}"]
    assert lines.count("exit http-closed=True") == 2, lines
    for role in ("pinger", "ponger"):
        text = cluster[role].log_tail(100_000)
        assert "Unclosed" not in text and "Traceback" not in text, text


def test_a_failing_startup_hook_fails_the_start_and_releases_everything(tmp_path: Path) -> None:
    log = tmp_path / "hooks.log"
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOOKS_LOG": str(log), "HOOKS_FAIL": "check"}
    command = [sys.executable, "-m", "accompanist", "sidecar", "--app", APP, "--role", "pinger"]
    command += ["--listen", f"127.0.0.1:{port}", "--api", f"127.0.0.1:{free_port()}"]
    command += ["--peer", f"ponger=127.0.0.1:{free_port()}", "--mode", "fault-tolerant"]
    command += ["--store", f"sqlite:///{tmp_path / 'pinger.db'}"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "error: startup hook '_Http.check' failed for role 'pinger': RuntimeError: the check failed" in done.stderr
    assert "Traceback" not in done.stderr
    # The hooks that had opened something were undone; the engine never started.
    assert log.read_text().splitlines() == [
        "startup open_http pinger",
        "startup check pinger",
        "shutdown close_http pinger",
        "exit http-closed=True",
    ]
    assert not (tmp_path / "pinger.db").exists()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # the peer port was never taken


async def test_a_failing_first_hook_reports_its_own_cause(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOOKS_FAIL": "open_http"}
    command = [sys.executable, "-m", "accompanist", "sidecar", "--app", APP, "--role", "ponger"]
    command += ["--listen", f"127.0.0.1:{free_port()}", "--peer", f"pinger=127.0.0.1:{free_port()}"]
    proc = await asyncio.create_subprocess_exec(
        *command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    assert "startup hook '_Http.open' failed for role 'ponger': ConnectionRefusedError" in err.decode()
