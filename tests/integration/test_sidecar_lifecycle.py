"""Sidecars embedded in-process, clean shutdown on SIGTERM, and back-pressure (429)."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from examples.app import app as examples_app

import accompanist as ac
from accompanist.engine.config import EngineConfig, Mode
from accompanist.store.base import SessionStatus
from accompanist.store.url import open_store
from tests.integration.procs import ROOT, ProcessCluster, free_port


@pytest.mark.parametrize("mode", [Mode.DEFAULT, Mode.FAULT_TOLERANT])
async def test_embedded_sidecars(tmp_path: Path, mode: Mode) -> None:
    buyer_port, seller_port = free_port(), free_port()
    key = "embedded-test-secret"

    def config(role: str, port: int, peer: str, peer_port: int) -> ac.SidecarConfig:
        return ac.SidecarConfig(
            role=role,
            listen=("127.0.0.1", port),
            peers={peer: ("127.0.0.1", peer_port)},
            store=f"sqlite:///{tmp_path}/{role}.db" if mode is Mode.FAULT_TOLERANT else None,
            hmac_key=key,
            engine=EngineConfig(mode=mode, receive_timeout=5),
        )

    async with (
        ac.Sidecar(config("seller", seller_port, "buyer", buyer_port), examples_app),
        ac.Sidecar(config("buyer", buyer_port, "seller", seller_port), examples_app) as buyer,
    ):
        assert await buyer.run("bookseller", "SICP") == "bought at 30"
        with pytest.raises(ac.UnknownChoreographyError):
            await buyer.run("no-such-choreography")


async def test_sigterm_lets_in_flight_sessions_finish(tmp_path: Path) -> None:
    args = ["--mode", "fault-tolerant", "--store", "sqlite:///./{role}.db", "--grace", "20"]
    async with ProcessCluster(
        ["a", "b", "c"], "tests.faults.faultapp:app", tmp_path, args, FAULT_EFFECTS_DIR=str(tmp_path), FAULT_PAUSE="1"
    ) as cluster:
        started = await cluster.start_session("a", "pingpong", 1, wait=False)
        await asyncio.sleep(0.3)  # a is inside its one-second step
        proc = cluster["a"].proc
        assert proc is not None
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
        assert code == 0, cluster["a"].log_tail(2000)
    store = open_store(f"sqlite:///{tmp_path}/a.db", "a")
    await store.open()
    try:
        record = await store.get_session(started["session_id"])
    finally:
        await store.close()
    assert record is not None and record.status == SessionStatus.COMPLETED


async def test_overload_answers_429(tmp_path: Path) -> None:
    async with ProcessCluster(
        ["a", "b", "c"],
        "tests.faults.faultapp:app",
        tmp_path,
        ["--max-inflight", "1"],
        FAULT_EFFECTS_DIR=str(tmp_path),
        FAULT_PAUSE="2",
    ) as cluster:
        first = await cluster.start_session("a", "pingpong", 1, wait=False)
        status, body = await cluster.request("POST", "a", "/sessions", json={"choreography": "pingpong", "args": [2]})
        assert status == 429 and "max_inflight=1" in body["error"]
        status, done = await cluster.request("GET", "a", f"/sessions/{first['session_id']}")
        assert status == 200


@pytest.mark.parametrize("mode", ["default", "fault-tolerant"])
@pytest.mark.parametrize("taken", ["--listen", "--api"])
def test_a_sidecar_on_a_taken_port_exits_non_zero_at_once(tmp_path: Path, mode: str, taken: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        ports = ["--listen", f"127.0.0.1:{port}"] if taken == "--listen" else ["--listen", "127.0.0.1:0"]
        ports += ["--api", f"127.0.0.1:{port}"] if taken == "--api" else []
        cmd = [sys.executable, "-m", "accompanist", "sidecar", "--app", "examples.app:app", "--role", "buyer",
               "--mode", mode, "--store", f"sqlite:///{tmp_path / 'buyer.db'}" if mode != "default" else "memory:",
               *ports]  # fmt: skip
        began = time.monotonic()
        # Before the fix, a fault-tolerant sidecar printed the error and hung (its store's writer
        # thread was left open), and a taken API port gave a traceback.
        done = subprocess.run(
            cmd, cwd=tmp_path, capture_output=True, text=True, timeout=30, env={"PYTHONPATH": str(ROOT)}
        )
    assert done.returncode == 1, done.stderr
    assert time.monotonic() - began < 15
    where = "cannot listen" if taken == "--listen" else "the API cannot listen"
    assert f"{where} on 127.0.0.1:{port}" in done.stderr and "address already in use" in done.stderr
    assert "Traceback" not in done.stderr and "│" not in done.stderr
