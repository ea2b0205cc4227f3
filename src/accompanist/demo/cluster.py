"""Start, kill, restart and stop the boutique's processes: eight services and seven sidecars.

Every process is a child of the caller in a process group of its own (so a Ctrl-C in the
terminal reaches only the caller, which then stops them in order), and on Linux is told to
die with its parent (``PR_SET_PDEATHSIG``), so even a caller killed with SIGKILL leaves no
process behind. Ports are free loopback ports picked at start; a killed process is started
again on the same ports, database and store.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import aiohttp
import grpc

from accompanist.demo.clients import address_env
from accompanist.demo.services import SERVICES
from accompanist.demo.services.frontend import SIDECAR_ENV

__all__ = ["ROLES", "Cluster", "Proc", "free_ports"]

ROLES = ("frontend", "cart", "catalog", "currency", "payment", "shipping", "email")
"""The checkout choreography's roles: one sidecar each."""


def free_ports(n: int, *, low: int = 20000, high: int = 32000) -> list[int]:
    """``n`` distinct loopback ports nobody listens on right now.

    They are drawn below the kernel's ephemeral range (32768 and up on Linux), which outgoing
    connections take their ports from: a port found free there may be gone a moment later.
    """
    rng = random.SystemRandom()
    found: list[int] = []
    while len(found) < n:
        port = rng.randrange(low, high)
        if port in found:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
    return found


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Proc:
    """One child process with a fixed command line, a log file and a way to check it is up."""

    def __init__(self, name: str, command: list[str], env: Mapping[str, str], log: Path, cwd: Path) -> None:
        self.name = name
        self.command = command
        self.env = dict(env)
        self.log = log
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        """Start it (again), appending to its log."""
        with self.log.open("ab") as log:
            log.write(f"\n--- start #{self.starts + 1} ---\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        self.starts += 1

    @property
    def pid(self) -> int | None:
        """Its process id while it runs."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def kill(self) -> None:
        """SIGKILL: no clean-up, no flush, like a power cut."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    async def terminate(self, timeout: float = 15) -> int | None:
        """SIGTERM, then wait (SIGKILL after ``timeout``); return the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def tail(self, chars: int = 2000) -> str:
        """The end of its log."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


class Cluster:
    """The boutique as processes in ``workdir``.

    Args:
        workdir: where databases, stores and logs go.
        mode: the sidecars' mode, ``fault-tolerant`` (SQLite stores) or ``default``.
        log_level: the sidecars' log level.
        delay_ms: one-way delay on every link between hosts (:mod:`.delay`): sidecar to
            sidecar, the frontend to the orchestrated checkout, and that checkout to each
            service. A service and its sidecar are one host: no delay between them.
    """

    def __init__(
        self, workdir: Path, *, mode: str = "fault-tolerant", log_level: str = "WARNING", delay_ms: float = 0
    ) -> None:
        self.workdir = workdir.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.mode = mode
        self.delay_ms = delay_ms
        remote = [s for s in SERVICES if s != "frontend"]  # what the checkout and frontend reach over the network
        ports = free_ports(len(SERVICES) + 2 * len(ROLES) + (len(ROLES) + len(remote) if delay_ms > 0 else 0))
        self.service_ports = dict(zip(SERVICES, ports, strict=False))
        self.peer_ports = dict(zip(ROLES, ports[len(SERVICES) :], strict=False))
        self.api_ports = dict(zip(ROLES, ports[len(SERVICES) + len(ROLES) :], strict=False))
        extra = ports[len(SERVICES) + 2 * len(ROLES) :]
        # Where the others reach a sidecar's peer port, or a service: through the proxy or not.
        self.peer_via = {r: extra[i] if extra else self.peer_ports[r] for i, r in enumerate(ROLES)}
        self.remote_via = {s: extra[len(ROLES) + i] if extra else self.service_ports[s] for i, s in enumerate(remote)}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCOMPANIST_", "BOUTIQUE_"))}
        env.update({address_env(s): self.address(s) for s in SERVICES})
        env[SIDECAR_ENV] = self.api("frontend")
        remote_env = {**env, **{address_env(s): f"127.0.0.1:{p}" for s, p in self.remote_via.items()}}
        self.procs: dict[str, Proc] = {}
        if delay_ms > 0:
            links = [f"{self.peer_via[r]}={self.peer_ports[r]}" for r in ROLES]
            links += [f"{self.remote_via[s]}={self.service_ports[s]}" for s in remote]
            command = [sys.executable, "-m", "accompanist.demo.delay", f"{delay_ms:g}", *links]
            self.procs["delay-proxy"] = Proc(
                "delay-proxy", command, env, self.workdir / "delay-proxy.log", self.workdir
            )
        for service in SERVICES:
            command = [sys.executable, "-m", "accompanist.demo.services", service]
            command += ["--port", str(self.service_ports[service]), "--db", str(self.db(service)), "--seed"]
            self.procs[f"{service}-service"] = Proc(
                f"{service}-service",
                command,
                remote_env if service in ("checkout", "frontend") else env,
                self.workdir / f"{service}-service.log",
                self.workdir,
            )
        sidecar_env = {
            **env,
            "ACCOMPANIST_HMAC_KEY": secrets.token_hex(16),  # the sidecars authenticate every frame
            "ACCOMPANIST_RETRY_MIN": "0.02",
            "ACCOMPANIST_RETRY_MAX": "0.5",
            "ACCOMPANIST_DELIVER_TIMEOUT": "2",
            "ACCOMPANIST_RELAY_INTERVAL": "0.2",
        }
        for role in ROLES:
            store = f"sqlite:///{self.workdir / f'{role}-sidecar.db'}" if mode == "fault-tolerant" else "memory:"
            command = [sys.executable, "-m", "accompanist", "sidecar", "--app", "accompanist.demo.checkout:app"]
            command += ["--role", role, "--mode", mode, "--store", store, "--log-level", log_level]
            command += ["--listen", f"127.0.0.1:{self.peer_ports[role]}", "--api", f"127.0.0.1:{self.api_ports[role]}"]
            command += ["--receive-timeout", "30"]
            for peer in ROLES:
                if peer != role:
                    command += ["--peer", f"{peer}=127.0.0.1:{self.peer_via[peer]}"]
            self.procs[role] = Proc(role, command, sidecar_env, self.workdir / f"{role}-sidecar.log", self.workdir)
        self.http: aiohttp.ClientSession | None = None

    # -- addresses ---------------------------------------------------------------------------
    def address(self, service: str) -> str:
        """``HOST:PORT`` of a service's gRPC API."""
        return f"127.0.0.1:{self.service_ports[service]}"

    def db(self, service: str) -> Path:
        """A service's SQLite database."""
        return self.workdir / f"{service}-service.db"

    def api(self, role: str) -> str:
        """A sidecar's HTTP API base URL."""
        return f"http://127.0.0.1:{self.api_ports[role]}"

    def pids(self) -> list[int]:
        """The ids of every process running now."""
        return [p.pid for p in self.procs.values() if p.pid is not None]

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self, on_ready: Callable[[str], None] | None = None) -> None:
        """Start every process and return when all answer (``on_ready(name)`` after each).

        Raises:
            RuntimeError: a process exited or did not answer in time (its log's end is in
                the message); whatever was started is stopped again.
        """
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        try:
            for proc in self.procs.values():
                proc.start()

            async def ready(name: str) -> None:
                await self.wait_ready(name)
                if on_ready is not None:
                    on_ready(name)

            await asyncio.gather(*(ready(n) for n in self.procs))
        except BaseException:
            await self.stop()
            raise

    async def wait_ready(self, name: str, timeout: float = 60) -> None:
        """Wait until ``name`` answers: a sidecar's ``/healthz``, a service's gRPC port.

        Raises:
            RuntimeError: it exited, or did not answer within ``timeout``.
        """
        proc = self.procs[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.proc is not None and proc.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.proc.returncode}:\n{proc.tail()}")
            if await self._answers(name):
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{name} did not answer within {timeout:g} s:\n{proc.tail()}")

    async def _answers(self, name: str) -> bool:
        if name == "delay-proxy":
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.peer_via[ROLES[0]])
            except OSError:
                return False
            writer.close()
            return True
        if name in ROLES:
            assert self.http is not None
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with self.http.get(f"{self.api(name)}/healthz") as r:
                    return r.status == 200
            return False
        async with grpc.aio.insecure_channel(self.address(name.removesuffix("-service"))) as channel:
            try:
                await asyncio.wait_for(channel.channel_ready(), 0.5)
            except TimeoutError:
                return False
            return True

    def kill(self, name: str) -> None:
        """SIGKILL one process (a sidecar by role, a service as ``NAME-service``)."""
        self.procs[name].kill()

    async def restart(self, name: str) -> None:
        """Start a killed process again on the same ports, database and store."""
        self.procs[name].kill()
        self.procs[name].start()
        await self.wait_ready(name)

    async def stop(self) -> dict[str, int | None]:
        """SIGTERM the sidecars (they finish in-flight work), then the services; exit codes.

        Anything still running after its grace is killed, so nothing is left behind.
        """
        codes: dict[str, int | None] = {}
        sidecars = [n for n in self.procs if n in ROLES]
        services = [n for n in self.procs if n not in ROLES]
        for group in (sidecars, services):
            results = await asyncio.gather(*(self.procs[n].terminate() for n in group))
            codes.update(zip(group, results, strict=True))
        if self.http is not None:
            await self.http.close()
            self.http = None
        return codes

    def kill_all(self) -> None:
        """SIGKILL whatever still runs (a last resort, synchronous)."""
        for proc in self.procs.values():
            proc.kill()
