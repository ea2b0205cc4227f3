"""Start, kill, restart and stop the warehouse saga's six processes, on loopback or hosts apart.

Three services (:mod:`.services`, each with its own SQLite database) and three sidecars
(``python -m accompanist sidecar``, fault-tolerant mode, each with its own SQLite store), all
in ``workdir``. A killed process is started again on the same ports, database and store.
The demo, the integration test and the saga fault campaign all drive the saga through this.
Given ``hosts``, each role's service and sidecar run on a host of their own (a network
namespace, for ``tests/faults/test_hosts_apart.py``), reached only by its address.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import aiohttp
import msgspec

from examples.warehouse.saga import Order
from examples.warehouse.services import SERVICES

__all__ = ["HOST_PORTS", "ROLES", "Host", "Proc", "WarehouseCluster", "free_port", "wait_healthy"]

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("warehouse", "payment", "loyalty")


HOST_PORTS = {"service": 9000, "peer": 7000, "api": 8000}
"""The ports every host uses when each role has a host of its own (each has all its ports)."""


class Host(NamedTuple):
    """Where one role's service and sidecar run when the roles are hosts apart."""

    prefix: tuple[str, ...]  # runs a command on the host, e.g. ("ip", "netns", "exec", NS)
    address: str  # the host's address, reached from every other host and from the caller


_HANDED_OUT: set[int] = set()  # ports given to this test run's sidecars: never twice


def free_port() -> int:
    """A port nobody listens on right now (bound and released), not handed out before in
    this test run: the kernel may offer a just-released port again, and two sidecars of one
    cluster must not be given the same one."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


class Proc:
    """One child process with a fixed command line and a log file; start it again at will."""

    def __init__(
        self, name: str, command: list[str], env: Mapping[str, str], log_path: Path, health: str, cwd: Path = ROOT
    ) -> None:
        self.name = name
        self.command = command
        self.env = dict(env)
        self.log_path = log_path
        self.health = health
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"\n--- start #{self.starts + 1} ---\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal reaches only the driver
            )
        self.starts += 1

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean-up, no flush, like a power cut."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    async def terminate(self, timeout: float = 20) -> int | None:
        """SIGTERM, then wait (SIGKILL after ``timeout``); return the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


async def wait_healthy(http: aiohttp.ClientSession, proc: Proc, timeout: float = 30) -> None:
    """Wait until ``proc`` answers ``GET {health}/healthz`` with 200.

    Raises:
        RuntimeError: the process exited.
        TimeoutError: it did not answer within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc is not None and proc.proc.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.proc.returncode}:\n{proc.log_tail()}")
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with http.get(f"{proc.health}/healthz", timeout=aiohttp.ClientTimeout(total=1)) as r:
                if r.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{proc.name} not ready after {timeout}s:\n{proc.log_tail()}")


class WarehouseCluster:
    """The three services and three sidecars of the warehouse saga.

    Args:
        workdir: where databases, stores and logs go.
        receive_timeout: the sidecars' receive timeout (a receive then parks).
        sidecar_env: extra environment for the sidecars (``ACCOMPANIST_*`` settings).
        log_level: the sidecars' log level.
        service_delay: the most seconds a service waits between committing and answering.
        mode: the sidecars' mode; ``default`` keeps their state in memory (no store files).
        hosts: each role's :class:`Host` (its service runs there too), or None for loopback.
        peer_route: ``(from_role, to_role) -> "HOST:PORT"``: where a sidecar reaches a peer,
            e.g. through a delay proxy between regions; by default the peer's own address.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        receive_timeout: float = 2.0,
        sidecar_env: Mapping[str, str] | None = None,
        log_level: str = "WARNING",
        service_delay: float = 0.0,
        mode: str = "fault-tolerant",
        hosts: Mapping[str, Host] | None = None,
        peer_route: Callable[[str, str], str] | None = None,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        # The children import this checkout's examples (and its src, for a checkout that is
        # not the installed one), whatever the working directory of the caller.
        path = [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]
        base_env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
        base_env.pop("ACCOMPANIST_STORE", None)
        self.hosts = dict(hosts or {})
        if self.hosts:  # a host of their own each: every one has all its ports
            self.service_ports = dict.fromkeys(SERVICES, HOST_PORTS["service"])
            self.peer_ports = dict.fromkeys(ROLES, HOST_PORTS["peer"])
            self.api_ports = dict.fromkeys(ROLES, HOST_PORTS["api"])
        else:
            self.service_ports = {s: free_port() for s in SERVICES}
            self.peer_ports = {r: free_port() for r in ROLES}
            self.api_ports = {r: free_port() for r in ROLES}
        route = peer_route or (lambda _, to: f"{self._address(to)}:{self.peer_ports[to]}")
        self.procs: dict[str, Proc] = {}
        for service, port in self.service_ports.items():
            cmd = [*self._prefix(service), sys.executable, "-m", "examples.warehouse.services", service]
            cmd += ["--host", self._address(service), "--port", str(port)]
            cmd += ["--db", str(self.service_db(service)), "--seed", "--delay", str(service_delay)]
            self.procs[f"{service}-service"] = Proc(
                f"{service}-service", cmd, base_env, self.workdir / f"{service}-service.log", self.service_url(service)
            )
        sidecar_env_all = {
            **base_env,
            "WAREHOUSE_SERVICE_URL": self.service_url("warehouse"),
            "PAYMENT_SERVICE_URL": self.service_url("payment"),
            "LOYALTY_SERVICE_URL": self.service_url("loyalty"),
            "ACCOMPANIST_HMAC_KEY": secrets.token_hex(16),  # sidecars authenticate each frame
            "ACCOMPANIST_RETRY_MIN": "0.02",
            "ACCOMPANIST_RETRY_MAX": "0.5",
            "ACCOMPANIST_DELIVER_TIMEOUT": "2",
            "ACCOMPANIST_RELAY_INTERVAL": "0.2",
            **(sidecar_env or {}),
        }
        for role in ROLES:
            cmd = [*self._prefix(role), sys.executable, "-m", "accompanist", "sidecar"]
            cmd += ["--app", "examples.warehouse.saga:app"]
            store = self.store_url(role) if mode == "fault-tolerant" else "memory:"
            cmd += ["--role", role, "--mode", mode, "--store", store]
            me = self._address(role)
            cmd += ["--listen", f"{me}:{self.peer_ports[role]}", "--api", f"{me}:{self.api_ports[role]}"]
            cmd += ["--receive-timeout", str(receive_timeout), "--log-level", log_level]
            for peer in ROLES:
                if peer != role:
                    cmd += ["--peer", f"{peer}={route(role, peer)}"]
            self.procs[role] = Proc(role, cmd, sidecar_env_all, self.workdir / f"{role}-sidecar.log", self.api(role))
        self.http: aiohttp.ClientSession | None = None

    # -- addresses ---------------------------------------------------------------------------
    def _address(self, role: str) -> str:
        host = self.hosts.get(role)
        return "127.0.0.1" if host is None else host.address

    def _prefix(self, role: str) -> list[str]:
        host = self.hosts.get(role)
        return [] if host is None else list(host.prefix)

    def service_url(self, service: str) -> str:
        return f"http://{self._address(service)}:{self.service_ports[service]}"

    def service_db(self, service: str) -> Path:
        return self.workdir / f"{service}-service.db"

    def store_url(self, role: str) -> str:
        return f"sqlite:///{self.workdir / f'{role}-sidecar.db'}"

    def api(self, role: str) -> str:
        return f"http://{self._address(role)}:{self.api_ports[role]}"

    @property
    def names(self) -> list[str]:
        """Every process: ``warehouse``, ``payment``, ``loyalty`` (sidecars) and ``*-service``."""
        return list(self.procs)

    # -- lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> WarehouseCluster:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the services, then the sidecars; return when all answer."""
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        try:
            for name in self.procs:
                if name.endswith("-service"):
                    self.procs[name].start()
            await asyncio.gather(*(self.wait_ready(n) for n in self.procs if n.endswith("-service")))
            for role in ROLES:
                self.procs[role].start()
            await asyncio.gather(*(self.wait_ready(role) for role in ROLES))
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> dict[str, int | None]:
        """SIGTERM the sidecars (they finish in-flight work), then the services; exit codes."""
        codes: dict[str, int | None] = {}
        sidecars = await asyncio.gather(*(self.procs[r].terminate() for r in ROLES))
        codes.update(zip(ROLES, sidecars, strict=True))
        services = [n for n in self.procs if n.endswith("-service")]
        codes.update(zip(services, await asyncio.gather(*(self.procs[n].terminate() for n in services)), strict=True))
        if self.http is not None:
            await self.http.close()
            self.http = None
        return codes

    async def wait_ready(self, name: str, timeout: float = 30) -> None:
        """Wait until ``name`` answers ``/healthz``.

        Raises:
            RuntimeError: the process exited.
            TimeoutError: it did not answer within ``timeout``.
        """
        assert self.http is not None
        await wait_healthy(self.http, self.procs[name], timeout)

    def kill(self, name: str) -> None:
        """SIGKILL one process (a sidecar by role, or ``<service>-service``)."""
        self.procs[name].kill()

    async def restart(self, name: str) -> None:
        """Start a killed process again on the same ports, database and store."""
        self.procs[name].kill()
        self.procs[name].start()
        await self.wait_ready(name)

    # -- talking to it -----------------------------------------------------------------------
    async def _get(self, url: str) -> Any:
        assert self.http is not None
        async with self.http.get(url) as r:
            r.raise_for_status()
            return await r.json()

    async def place(self, order: Order, *, wait: bool = False, timeout: float = 60) -> tuple[int, dict[str, Any]]:
        """Start an ``order`` session at the warehouse sidecar: ``(HTTP status, answer)``.

        Raises:
            aiohttp.ClientError: the sidecar is down (the session may or may not exist).
        """
        assert self.http is not None
        query = f"?wait=true&timeout={timeout:g}" if wait else ""
        # The order id is the session id: a POST retried after a lost answer starts nothing new.
        body = {"choreography": "order", "args": [msgspec.to_builtins(order)], "session_id": order.order_id}
        async with self.http.post(f"{self.api('warehouse')}/sessions{query}", json=body) as r:
            return r.status, dict(await r.json())

    async def session(self, role: str, session_id: str) -> dict[str, Any] | None:
        """The session's record at ``role``'s sidecar, or None if it does not know it."""
        assert self.http is not None
        async with self.http.get(f"{self.api(role)}/sessions/{session_id}") as r:
            return dict(await r.json()) if r.status == 200 else None

    async def sessions(self, role: str) -> dict[str, dict[str, Any]]:
        """Every session ``role``'s sidecar knows, by id."""
        listing = await self._get(f"{self.api(role)}/sessions?limit=10000")
        return {s["session_id"]: s for s in listing["sessions"]}

    async def state(self, service: str) -> dict[str, Any]:
        """``GET /state`` of a service."""
        return dict(await self._get(f"{self.service_url(service)}/state"))
