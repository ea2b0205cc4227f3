"""Real sidecar processes on loopback, for integration and fault tests.

Each sidecar is ``python -m accompanist sidecar ...`` in its own process; tests talk to it
through its HTTP API, and fault tests kill it with SIGKILL and start it again on the same
ports and store.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from examples.warehouse.cluster import Proc, free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[2]


class SidecarProcess(Proc):
    """One sidecar process: its two ports and the command line that knows every peer.

    It runs in the test's work directory, so relative store URLs (``sqlite:///./a.db``) land
    there; ``env`` may be changed between a kill and a restart (new code under old sessions).
    With ``broker`` (``nats://host:port``) it has no peer port and knows no peer: envelopes
    travel through the broker.
    """

    def __init__(
        self,
        role: str,
        app: str,
        workdir: Path,
        args: list[str],
        env: Mapping[str, str],
        peers: Mapping[str, int],
        broker: str | None = None,
    ) -> None:
        self.peer_port = peers[role]
        self.api_port = free_port()
        command = [
            sys.executable, "-m", "accompanist", "sidecar", "--app", app, "--role", role,
            "--api", f"127.0.0.1:{self.api_port}", "--log-level", "WARNING",
        ]  # fmt: skip
        if broker is not None:
            command += ["--transport", broker]
        else:
            command += ["--listen", f"127.0.0.1:{self.peer_port}"]
            for other, port in sorted(peers.items()):
                if other != role:
                    command += ["--peer", f"{other}=127.0.0.1:{port}"]
        pythonpath = f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
        full_env = {**os.environ, **env, "PYTHONPATH": pythonpath}
        api = f"http://127.0.0.1:{self.api_port}"
        super().__init__(role, command + args, full_env, workdir / f"{role}.log", api, cwd=workdir)

    @property
    def api(self) -> str:
        """The sidecar's HTTP API base URL."""
        return self.health


class ProcessCluster:
    """A set of sidecar processes that know each other's addresses (or, with ``broker``, the
    address of the NATS JetStream broker they all exchange envelopes through)."""

    def __init__(
        self,
        roles: Iterable[str],
        app: str,
        workdir: Path,
        args: Mapping[str, list[str]] | list[str] = (),
        *,
        broker: str | None = None,
        **env: str,
    ) -> None:
        self.workdir = workdir
        roles = list(roles)
        peers = {role: free_port() for role in roles}
        self.sidecars: dict[str, SidecarProcess] = {}
        for role in roles:
            role_args = list(args.get(role, [])) if isinstance(args, Mapping) else list(args)
            role_args = [a.replace("{role}", role) for a in role_args]
            self.sidecars[role] = SidecarProcess(role, app, workdir, role_args, env, peers, broker)
        self.http: aiohttp.ClientSession | None = None

    def __getitem__(self, role: str) -> SidecarProcess:
        return self.sidecars[role]

    async def __aenter__(self) -> ProcessCluster:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        for sidecar in self.sidecars.values():
            sidecar.start()
        for role in self.sidecars:
            await self.wait_ready(role)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for sidecar in self.sidecars.values():
            await sidecar.terminate()
        if self.http is not None:
            await self.http.close()

    async def wait_ready(self, role: str, timeout: float = 30) -> None:
        assert self.http is not None
        await wait_healthy(self.http, self.sidecars[role], timeout)

    def kill(self, role: str) -> None:
        self.sidecars[role].kill()

    async def restart(self, role: str) -> None:
        self.sidecars[role].kill()
        self.sidecars[role].start()
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
