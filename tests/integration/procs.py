"""Real sidecar processes on loopback, for integration and fault tests.

Each sidecar is ``python -m accompanist sidecar ...`` in its own process; tests talk to it
through its HTTP API, and fault tests kill it with SIGKILL and start it again on the same
ports and store.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from examples.warehouse.cluster import free_port

ROOT = Path(__file__).resolve().parents[2]


class SidecarProcess:
    """One sidecar process: its ports, its command line, and the process itself."""

    def __init__(self, role: str, app: str, workdir: Path, args: list[str], env: Mapping[str, str]) -> None:
        self.role = role
        self.app = app
        self.peer_port = free_port()
        self.api_port = free_port()
        self.workdir = workdir
        self.args = args
        self.env = dict(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{role}.log"
        self.starts = 0

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def command(self, peers: Mapping[str, int]) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "accompanist",
            "sidecar",
            "--app",
            self.app,
            "--role",
            self.role,
            "--listen",
            f"127.0.0.1:{self.peer_port}",
            "--api",
            f"127.0.0.1:{self.api_port}",
            "--log-level",
            "WARNING",
        ]
        for role, port in sorted(peers.items()):
            if role != self.role:
                cmd += ["--peer", f"{role}=127.0.0.1:{port}"]
        return cmd + self.args

    def start(self, peers: Mapping[str, int]) -> None:
        env = {**os.environ, **self.env, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        log = self.log_path.open("ab")
        log.write(f"\n--- start #{self.starts + 1} ---\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            self.command(peers), cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL: no clean-up, no flush, like a power cut of the process."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def terminate(self, timeout: float = 15) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class ProcessCluster:
    """A set of sidecar processes that know each other's addresses."""

    def __init__(
        self, roles: Iterable[str], app: str, workdir: Path, args: Mapping[str, list[str]] | list[str] = (), **env: str
    ) -> None:
        self.workdir = workdir
        self.sidecars: dict[str, SidecarProcess] = {}
        for role in roles:
            role_args = list(args.get(role, [])) if isinstance(args, Mapping) else list(args)
            role_args = [a.replace("{role}", role) for a in role_args]
            self.sidecars[role] = SidecarProcess(role, app, workdir, role_args, env)
        self.http: aiohttp.ClientSession | None = None

    @property
    def peers(self) -> dict[str, int]:
        return {r: s.peer_port for r, s in self.sidecars.items()}

    def __getitem__(self, role: str) -> SidecarProcess:
        return self.sidecars[role]

    async def __aenter__(self) -> ProcessCluster:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        for sidecar in self.sidecars.values():
            sidecar.start(self.peers)
        for role in self.sidecars:
            await self.wait_ready(role)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for sidecar in self.sidecars.values():
            sidecar.terminate()
        if self.http is not None:
            await self.http.close()

    async def wait_ready(self, role: str, timeout: float = 30) -> None:
        sidecar = self.sidecars[role]
        deadline = time.monotonic() + timeout
        assert self.http is not None
        while time.monotonic() < deadline:
            if sidecar.proc is not None and sidecar.proc.poll() is not None:
                raise RuntimeError(f"sidecar {role} exited with {sidecar.proc.returncode}:\n{sidecar.log()[-3000:]}")
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with self.http.get(f"{sidecar.api}/healthz", timeout=aiohttp.ClientTimeout(total=1)) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"sidecar {role} not ready after {timeout}s:\n{sidecar.log()[-3000:]}")

    def kill(self, role: str) -> None:
        self.sidecars[role].kill()

    async def restart(self, role: str) -> None:
        self.sidecars[role].kill()
        self.sidecars[role].start(self.peers)
        await self.wait_ready(role)

    async def request(self, method: str, role: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        assert self.http is not None
        async with self.http.request(method, f"{self.sidecars[role].api}{path}", **kwargs) as r:
            if r.content_type == "application/json":
                return r.status, await r.json()
            return r.status, await r.text()

    async def start_session(self, role: str, choreography: str, *args: Any, wait: bool = True) -> dict[str, Any]:
        status, body = await self.request(
            "POST",
            role,
            f"/sessions?wait={'true' if wait else 'false'}",
            json={"choreography": choreography, "args": list(args)},
        )
        assert status in (200, 202), (status, body)
        return dict(body)

    async def session(self, role: str, session_id: str) -> dict[str, Any] | None:
        status, body = await self.request("GET", role, f"/sessions/{session_id}")
        return dict(body) if status == 200 else None
