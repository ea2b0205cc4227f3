"""Key rotation without downtime, performed on a running 3-sidecar cluster under steady load.

The procedure the README documents, step by step, each step one sidecar at a time (SIGTERM,
new configuration, start): (1) add the new HMAC key as an old key everywhere; (2) make it the
signing key; (3) drop the old key, and give each sidecar a new TLS certificate from the same
CA. Sessions keep starting throughout. At the end every session completed with its result,
no frame was refused for its key or its certificate in any sidecar's life, and both keys were
used on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.procs import ProcessCluster

pytest.importorskip("cryptography")
from tests.support.pki import Authority  # noqa: E402

pytestmark = pytest.mark.slow

APP = "tests.faults.faultapp:app"
ROLES = ("a", "b", "c")
K1, K2 = "rotation-key-one-0123456789abcdef", "rotation-key-two-0123456789abcdef"
ARGS = ["--mode", "fault-tolerant", "--store", "sqlite:///./{role}.db", "--grace", "1", "--receive-timeout", "5"]
IN_FLIGHT = 6
TERMINAL = frozenset({"completed", "compensated", "failed", "cancelled", "diverged"})
# Refusals that would mean the rotation broke authentication somewhere.
AUTH_REJECTIONS = ("unsigned", "unknown-key", "bad-mac", "wrong-src")


class Load:
    """Starts ``chain`` sessions at ``a`` without pause; a start refused while ``a`` restarts is
    retried with the same session id (idempotent), so every session is started exactly once."""

    def __init__(self, cluster: ProcessCluster) -> None:
        self.cluster = cluster
        self.started: dict[str, int] = {}  # session id -> argument
        self.retries = 0
        self._stop = asyncio.Event()

    async def run(self) -> None:
        await asyncio.gather(*(self._worker(w) for w in range(IN_FLIGHT)))

    async def _worker(self, worker: int) -> None:
        for n in itertools.count(worker * 1_000_000):
            if self._stop.is_set():
                return
            sid = f"rot-{uuid.uuid4()}"
            await self._start(sid, n)
            await self._wait(sid)

    async def _start(self, sid: str, n: int) -> None:
        body = {"choreography": "chain", "args": [n], "session_id": sid}
        while True:
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                status, answer = await self.cluster.request("POST", "a", "/sessions", json=body)
                if status in (200, 202):
                    self.started[sid] = n
                    return
                assert status in (503, 429), (status, answer)  # stopping, starting, busy
            self.retries += 1
            await asyncio.sleep(0.05)

    async def _wait(self, sid: str) -> None:
        """Keep IN_FLIGHT sessions running: wait until this one leaves ``running`` at ``a``."""
        for _ in range(200):
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                record = await self.cluster.session("a", sid)
                if record is not None and record["status"] != "running":
                    return
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()


def rejections(metrics: str) -> dict[str, float]:
    """Refused frames by reason, and failed TLS handshakes, from one ``/metrics`` text."""
    out: dict[str, float] = {}
    for line in metrics.splitlines():
        match = re.fullmatch(r'accompanist_frames_rejected_total\{reason="([^"]+)"\} (\S+)', line)
        if match and match.group(1) in AUTH_REJECTIONS:
            out[match.group(1)] = out.get(match.group(1), 0) + float(match.group(2))
        match = re.fullmatch(r"accompanist_tls_handshakes_failed_total\{(.+)\} (\S+)", line)
        # A handshake cut short because its peer was stopping (aborted, timeout) is a restart,
        # not a refusal: every other reason says an identity was not accepted.
        if match and not re.search(r'reason="(aborted|timeout)"', match.group(1)):
            out[f"tls {match.group(1)}"] = out.get(f"tls {match.group(1)}", 0) + float(match.group(2))
    return {k: v for k, v in out.items() if v}


async def test_hmac_and_certificate_rotation_under_load_without_downtime(tmp_path: Path) -> None:
    ca = Authority(tmp_path / "pki")
    first = {role: ca.issue(f"{role}-1", role) for role in ROLES}
    second = {role: ca.issue(f"{role}-2", role) for role in ROLES}
    env = {"FAULT_EFFECTS_DIR": str(tmp_path), "ACCOMPANIST_TLS_CA": str(ca.ca)}
    cluster = ProcessCluster(ROLES, APP, tmp_path, ARGS, **env)
    for role in ROLES:  # the cluster as it runs before the rotation
        cluster[role].env.update(
            ACCOMPANIST_HMAC_KEY=K1,
            ACCOMPANIST_HMAC_KEY_ID="k1",
            ACCOMPANIST_TLS_CERT=str(first[role].cert),
            ACCOMPANIST_TLS_KEY=str(first[role].key),
        )
    async with cluster:
        load = Load(cluster)
        running = asyncio.create_task(load.run())
        refused: dict[str, dict[str, float]] = {}
        steps: list[tuple[str, dict[str, str]]] = [
            ("add k2 as an old key", {"ACCOMPANIST_OLD_HMAC_KEYS": f"k2={K2}"}),
            ("sign with k2", {"ACCOMPANIST_HMAC_KEY": K2, "ACCOMPANIST_HMAC_KEY_ID": "k2",
                              "ACCOMPANIST_OLD_HMAC_KEYS": f"k1={K1}"}),
        ]  # fmt: skip
        try:
            await asyncio.sleep(1)
            for what, change in steps:
                for role in ROLES:
                    refused[f"{role} before '{what}'"] = await restart(cluster, role, change)
                    await asyncio.sleep(0.5)  # sessions flow between the restarts
            for role in ROLES:  # drop k1, and a new certificate from the same CA
                change = {"ACCOMPANIST_OLD_HMAC_KEYS": "", "ACCOMPANIST_TLS_CERT": str(second[role].cert),
                          "ACCOMPANIST_TLS_KEY": str(second[role].key)}  # fmt: skip
                refused[f"{role} before 'drop k1, new certificate'"] = await restart(cluster, role, change)
                await asyncio.sleep(0.5)
            await asyncio.sleep(1)
        finally:
            load.stop()
            await asyncio.wait_for(running, 120)
        statuses = await final_statuses(cluster, load.started)
        for role in ROLES:
            refused[f"{role} at the end"] = rejections(await metrics_of(cluster, role))
        sessions = len(load.started)

    print(f"{sessions} sessions, {load.retries} start retries while a restarted")
    assert sessions >= 30, f"only {sessions} sessions ran: the load did not flow"
    bad = {sid: status for sid, status in statuses.items() if status != "completed"}
    assert not bad, f"{len(bad)} of {sessions} sessions did not complete: {list(bad.items())[:5]}"
    assert not any(refused.values()), {k: v for k, v in refused.items() if v}
    keys = inbox_keys(tmp_path)
    assert keys == {"k1", "k2"}, keys  # both keys signed real traffic


async def restart(cluster: ProcessCluster, role: str, change: dict[str, str]) -> dict[str, float]:
    """SIGTERM, new configuration, start; return what the old process refused in its life."""
    refused = rejections(await metrics_of(cluster, role))
    code = await cluster[role].terminate(timeout=30)
    assert code == 0, cluster[role].log_tail()
    for key, value in change.items():
        if value:
            cluster[role].env[key] = value
        else:
            cluster[role].env.pop(key, None)
    cluster[role].start()
    await cluster.wait_ready(role, timeout=60)
    return refused


async def metrics_of(cluster: ProcessCluster, role: str) -> str:
    status, text = await cluster.request("GET", role, "/metrics")
    assert status == 200
    return str(text)


async def final_statuses(cluster: ProcessCluster, started: dict[str, int]) -> dict[str, Any]:
    """Each session's status at ``a`` once none is running (results checked on the way)."""
    deadline = asyncio.get_running_loop().time() + 120
    statuses: dict[str, Any] = {}
    pending = set(started)
    while pending and asyncio.get_running_loop().time() < deadline:
        for sid in list(pending):
            record = await cluster.session("a", sid)
            status = None if record is None else record["status"]
            statuses[sid] = status
            if status in TERMINAL:  # a parked session resumes once its peer is back: wait on
                pending.discard(sid)
                if status == "completed":
                    assert record is not None and record["result"] == started[sid] + 4, record
        if pending:
            await asyncio.sleep(0.2)
    return statuses


def inbox_keys(workdir: Path) -> set[str]:
    keys: set[str] = set()
    for role in ROLES:
        db = sqlite3.connect(workdir / f"{role}.db")
        try:
            keys |= {str(r[0]) for r in db.execute("SELECT DISTINCT auth FROM acc_inbox")}
        finally:
            db.close()
    return keys
