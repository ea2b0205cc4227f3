"""The peer port under attack from real sockets, and the secure-by-default start.

A real sidecar process (HMAC key set, open-file limit lowered to 256 with ``prlimit`` once it
runs) is attacked from a separate process with idle connections, connections holding a
partial 4 MiB frame, slow writers and a flood from one address, all from loopback addresses
other than the legitimate peer's. Meanwhile real sessions keep completing at close to their
quiet latency, the sidecar's memory stays bounded, every abusive connection is closed and the
closes are counted in ``/metrics``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.procs import ROOT, ProcessCluster

APP = "examples.app:app"
KEY = ["--hmac-key", "peer-port-limits-secret"]
LIMITS = {
    "ACCOMPANIST_PEER_MAX_CONNECTIONS": "160",
    "ACCOMPANIST_PEER_MAX_CONNECTIONS_PER_ADDRESS": "64",
    "ACCOMPANIST_PEER_FIRST_FRAME_TIMEOUT": "2",
    "ACCOMPANIST_PEER_FRAME_TIMEOUT": "2",
    "ACCOMPANIST_PEER_IDLE_TIMEOUT": "300",
}
ATTACK_SECONDS = 8.0

# The attacker runs in its own process so that its work does not slow the test's client.
ATTACKER = r"""
import asyncio, json, struct, sys, time
host, port, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
end = time.monotonic() + duration
stats = {"opened": 0, "closed_by_server": 0, "open_at_end": 0, "connect_failed": 0}

async def idle(writer):
    pass

async def partial(writer):  # a 4 MiB frame announced, 3 MiB of it sent, then nothing
    writer.write(struct.pack(">I", 4 * 1024 * 1024 - 1) + b"\0" * (3 * 1024 * 1024))

async def slow(writer):  # a 1000-byte frame, one byte every half second
    writer.write(struct.pack(">I", 1000))
    while True:
        await asyncio.sleep(0.5)
        writer.write(b"\0")

async def attacker(source, payload):
    while time.monotonic() < end:
        try:
            reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
        except OSError:
            stats["connect_failed"] += 1
            await asyncio.sleep(0.2)
            continue
        stats["opened"] += 1
        feeding = asyncio.ensure_future(payload(writer))
        try:
            data = await asyncio.wait_for(reader.read(1), timeout=max(0.1, end - time.monotonic()))
            if data == b"":
                stats["closed_by_server"] += 1
        except (ConnectionError, OSError):
            stats["closed_by_server"] += 1
        except asyncio.TimeoutError:
            stats["open_at_end"] += 1
        finally:
            feeding.cancel()
            writer.transport.abort()
        await asyncio.sleep(0.05)

async def main():
    tasks = []
    # More than the per-address cap from one address, first: connecting before the others fill
    # the total cap, so the per-address refusal happens however loaded the machine is.
    for i in range(80):
        tasks.append(attacker("127.0.0.20", idle))
    for i in range(200):  # idle, from 10 addresses
        tasks.append(attacker(f"127.0.0.{2 + i % 10}", idle))
    for i in range(40):  # partial large frames, from 4 addresses
        tasks.append(attacker(f"127.0.0.{12 + i % 4}", partial))
    for i in range(20):
        tasks.append(attacker("127.0.0.16", slow))
    await asyncio.gather(*tasks)
    print(json.dumps(stats), flush=True)

asyncio.run(main())
"""


def rss_kib(pid: int) -> int:
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    assert match is not None
    return int(match.group(1))


def metric_values(text: str, name: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(rf'^{name}(?:\{{reason="([^"]*)"\}})? (\S+)$', line)
        if match:
            values[match.group(1) or ""] = float(match.group(2))
    return values


async def session_latency(cluster: ProcessCluster) -> float:
    began = time.perf_counter()
    body = await cluster.start_session("buyer", "bookseller", "SICP")
    assert body["status"] == "completed" and body["result"] == "bought at 30", body
    return time.perf_counter() - began


@pytest.mark.skipif(not shutil.which("prlimit") or not Path("/proc/self/status").exists(), reason="needs Linux prlimit")
async def test_peer_port_survives_an_attack_with_a_low_fd_limit(tmp_path: Path) -> None:
    async with ProcessCluster(["buyer", "seller"], APP, tmp_path, KEY, **LIMITS) as cluster:
        seller = cluster["seller"]
        assert seller.proc is not None
        pid = seller.proc.pid
        limit = await asyncio.create_subprocess_exec("prlimit", "--nofile=256:256", "--pid", str(pid))
        assert await limit.wait() == 0

        quiet = [await session_latency(cluster) for _ in range(40)]
        rss_before = rss_kib(pid)

        attack = await asyncio.create_subprocess_exec(
            sys.executable, "-c", ATTACKER, "127.0.0.1", str(seller.peer_port), str(ATTACK_SECONDS),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        await asyncio.sleep(1.0)  # let the attack build up
        under_attack: list[float] = []
        peak = rss_before
        began = time.monotonic()
        while time.monotonic() - began < ATTACK_SECONDS - 2:
            under_attack.append(await session_latency(cluster))
            peak = max(peak, rss_kib(pid))
        out, _ = await attack.communicate()
        attacker = json.loads(out)

        quiet_median, attack_median = statistics.median(quiet), statistics.median(under_attack)
        print(
            f"\nquiet median {quiet_median * 1000:.1f} ms, under attack {attack_median * 1000:.1f} ms "
            f"({len(under_attack)} sessions); RSS {rss_before // 1024} MiB -> peak {peak // 1024} MiB; "
            f"attacker {attacker}"
        )
        # Real sessions keep completing, near their quiet latency (loose bound against flakes).
        assert len(under_attack) >= 10
        assert attack_median <= 3 * quiet_median + 0.02, (quiet_median, attack_median)
        # 40 connections each pushing 3 MiB of a 4 MiB frame do not make the sidecar hold them.
        assert peak - rss_before < 100 * 1024, (rss_before, peak)
        # The abusive connections were closed by the sidecar, not kept open.
        assert attacker["opened"] > 340 and attacker["closed_by_server"] >= attacker["opened"] - 5, attacker

        status, text = await cluster.request("GET", "seller", "/metrics")
        assert status == 200
        closed = metric_values(text, "accompanist_peer_connections_closed_total")
        print(f"closed by reason: {closed}")
        for reason in ("limit-total", "limit-per-address", "first-frame-timeout", "frame-timeout", "unauth-budget"):
            assert closed.get(reason, 0) > 0, (reason, closed)
        # Once the attack is over only the real peer's connection stays.
        deadline = time.monotonic() + 10
        while True:
            _, text = await cluster.request("GET", "seller", "/metrics")
            open_now = metric_values(text, "accompanist_peer_connections")[""]
            if open_now <= 1 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert open_now <= 1, open_now
        assert metric_values(text, "accompanist_peer_unauth_bytes")[""] == 0
        # And the sidecar still works.
        await session_latency(cluster)


def sidecar_command(*args: str) -> list[str]:
    return [
        sys.executable, "-m", "accompanist", "sidecar", "--app", APP, "--role", "seller",
        "--peer", "buyer=127.0.0.1:1", "--log-level", "WARNING", *args,
    ]  # fmt: skip


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ACCOMPANIST_")}
    return {**clean, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def start_until_ready(command: list[str], extra_env: dict[str, str] | None = None) -> str:
    """Start a sidecar, wait for its ready line, stop it; return its stderr."""
    proc = subprocess.Popen(
        command, env={**env(), **(extra_env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "accompanist sidecar ready" in line, line
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    return err


def test_no_key_off_loopback_refuses_to_start() -> None:
    proc = subprocess.run(
        sidecar_command("--listen", "0.0.0.0:0"), env=env(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: refusing to listen for peers on 0.0.0.0"), proc.stderr
    assert "--insecure" in lines[0] and "Traceback" not in proc.stderr


def test_insecure_or_a_key_or_loopback_starts() -> None:
    err = start_until_ready(sidecar_command("--listen", "0.0.0.0:0", "--insecure"))
    assert "not authenticated" in err
    start_until_ready(sidecar_command("--listen", "0.0.0.0:0"), {"ACCOMPANIST_INSECURE": "1"})
    start_until_ready(sidecar_command("--listen", "0.0.0.0:0", "--hmac-key", "a-secret-of-16-bytes+"))
    err = start_until_ready(sidecar_command("--listen", "127.0.0.1:0"))
    assert "not authenticated" in err


@pytest.mark.skipif(not shutil.which("prlimit"), reason="needs prlimit")
def test_a_low_fd_limit_is_warned_about_at_start() -> None:
    err = start_until_ready(["prlimit", "--nofile=200:200", "--", *sidecar_command("--listen", "127.0.0.1:0")])
    assert "open-file limit (ulimit -n) is 200" in err and "accepting at most 136 peer connections" in err, err
