"""Recovery after a crash: how long a fault-tolerant sidecar takes to replay N unfinished
sessions after a SIGKILL, and how fast they then finish.

Why: a sidecar that crashes under load comes back with every session it was in; until it has
replayed them it serves nobody. Two sidecars (``start`` and ``s1`` of ``chainapp.held``) on
SQLite ``synchronous=FULL``; N sessions run until ``s1`` has called its service and waits
for ``start``'s second message (``start`` waits at a gate). Then ``s1`` is SIGKILLed and
started again on the same store:

- ``healthy_s``: from the restart until ``/healthz`` answers 200 (every unfinished session
  loaded and its replay under way: the API opens once recovery is done);
- ``replayed_s``: until ``accompanist_replays_total`` counts all N;
- ``drained_s``: after the gate opens, until all N sessions completed at the initiator, with
  the right result each (so each replay really got back to where it was).

Usage::

    python benchmarks/recovery.py [--sessions 10000] [--quick]

Writes ``benchmarks/results/recovery.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT), str(ROOT / "benchmarks")]

from examples.warehouse.cluster import Proc, free_port, wait_healthy  # noqa: E402

__all__ = ["main"]

RESULTS = ROOT / "benchmarks" / "results"
PARTS = str(ROOT / "benchmarks" / "chainparts.py")
_REPLAYS = re.compile(rb"^accompanist_replays_total (\S+)$", re.MULTILINE)
_LIVE = re.compile(rb"^accompanist_sessions_live (\S+)$", re.MULTILINE)


def _progress(text: str) -> None:
    print(f"\r[recovery] {text:<90}", end="", file=sys.stderr, flush=True)


async def _metric(http: aiohttp.ClientSession, api: str, pattern: re.Pattern[bytes]) -> float:
    try:
        async with http.get(f"{api}/metrics") as r:
            match = pattern.search(await r.read())
    except (aiohttp.ClientError, TimeoutError):
        return -1.0
    return float(match.group(1)) if match else 0.0


async def _run(n: int, workdir: Path) -> dict[str, Any]:
    gate = workdir / "gate"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "benchmarks")]),
        "CHAIN_GATE": str(gate),
    }
    service_port = free_port()
    service = Proc("service", [sys.executable, PARTS, "service", str(service_port)], env, workdir / "service.log", "")
    listen = {"start": free_port(), "s1": free_port()}
    procs: dict[str, Proc] = {}
    for role, other in (("start", "s1"), ("s1", "start")):
        api = free_port()
        command = [
            sys.executable, "-m", "accompanist", "sidecar", "--app", "chainapp:app", "--role", role,
            "--listen", f"127.0.0.1:{listen[role]}", "--api", f"127.0.0.1:{api}", "--log-level", "WARNING",
            "--peer", f"{other}=127.0.0.1:{listen[other]}", "--mode", "fault-tolerant",
            "--store", f"sqlite:///{workdir / f'{role}.db'}", "--receive-timeout", "3600",
            "--max-inflight", str(2 * n + 100),
        ]  # fmt: skip
        role_env = {**env, "CHAIN_SERVICE_PORT": str(service_port)}
        procs[role] = Proc(role, command, role_env, workdir / f"{role}.log", f"http://127.0.0.1:{api}", cwd=workdir)
    service.start()
    for proc in procs.values():
        proc.start()
    results: dict[str, Any] = {"sessions": n}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
            for proc in procs.values():
                await wait_healthy(http, proc, 60)
            start_api, s1_api = procs["start"].health, procs["s1"].health
            ids: list[tuple[str, int]] = []
            values = iter(range(n))

            async def place() -> None:
                for value in values:
                    body = {"choreography": "held", "args": [value]}
                    async with http.post(f"{start_api}/sessions?wait=false", json=body) as r:
                        answer = await r.json()
                        if r.status != 202:
                            raise RuntimeError(f"start refused: {r.status} {answer}")
                    ids.append((answer["session_id"], value))
                    if len(ids) % 250 == 0:
                        _progress(f"starting sessions: {len(ids)}/{n}")

            began = time.perf_counter()
            await asyncio.gather(*(place() for _ in range(32)))
            results["start_s"] = time.perf_counter() - began
            while (live := await _metric(http, s1_api, _LIVE)) < n:
                _progress(f"waiting for s1 to hold every session: {live:.0f}/{n}")
                await asyncio.sleep(0.5)
            await asyncio.sleep(1.0)  # the last inbox and journal rows ride on a lingering commit
            _progress(f"SIGKILL s1 with {n} unfinished sessions, and start it again")
            procs["s1"].kill()
            began = time.perf_counter()
            procs["s1"].start()
            await wait_healthy(http, procs["s1"], 600)
            results["healthy_s"] = time.perf_counter() - began
            while (replayed := await _metric(http, s1_api, _REPLAYS)) < n:
                _progress(f"replaying: {replayed:.0f}/{n}")
                await asyncio.sleep(0.1)
            results["replayed_s"] = time.perf_counter() - began
            gate.touch()
            began = time.perf_counter()
            while (live := await _metric(http, start_api, _LIVE)) != 0:
                _progress(f"gate open: {live:.0f} sessions still running at start")
                await asyncio.sleep(0.1)
            drained = time.perf_counter() - began
            checks = iter(ids)

            async def check() -> None:
                for sid, value in checks:
                    async with http.get(f"{start_api}/sessions/{sid}") as r:
                        record = await r.json()
                    if record.get("status") != "completed" or record["result"] != 2 * value + 2:
                        raise RuntimeError(f"session {sid} ended {record}, expected completed with {2 * value + 2}")

            await asyncio.gather(*(check() for _ in range(16)))
            results["drained_s"] = drained
            results["replays_counted"] = await _metric(http, s1_api, _REPLAYS)
    finally:
        print(file=sys.stderr)
        await asyncio.gather(*(p.terminate(10) for p in procs.values()), service.terminate(5))
    return results


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and write its results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="2,000 sessions")
    args = parser.parse_args(argv)
    n = 2000 if args.quick else args.sessions
    with tempfile.TemporaryDirectory(prefix="recovery-bench-") as tmp:
        data = asyncio.run(_run(n, Path(tmp)))
    data["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "recovery.json").write_text(json.dumps(data, indent=2) + "\n")
    print(
        f"{n} unfinished sessions: healthy {data['healthy_s']:.2f} s after the restart, all replayed "
        f"{data['replayed_s']:.2f} s, then all completed in {data['drained_s']:.2f} s"
    )


if __name__ == "__main__":
    main()
