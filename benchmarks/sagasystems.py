"""The systems the saga benchmarks compare, each with its own three services: Accompanist
(four sidecars, fault-tolerant on SQLite, or default mode), Temporal (dev server, a workflow
worker, one activity worker per service) and DBOS (one process, SQLite WAL).

Every system offers the same small interface to ``saga.py`` and ``recovery.py``: ``start``,
``place``-by-phase (``run``), the PIDs whose fsyncs count as its durable commits, ``stop``;
and its services can be killed and restarted (the payment service and whatever serves it).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import sys
from pathlib import Path
from typing import Any

import aiohttp
from examples.warehouse.cluster import Proc, wait_healthy
from harness import ROOT, free_port
from sagaload import Driver, place_all, place_open
from sagaservices import SERVICES

__all__ = ["SYSTEMS", "AccompanistSystem", "DBOSSystem", "Services", "System", "TemporalSystem", "make_system"]

BENCH = ROOT / "benchmarks"
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), str(BENCH)]),
}
ENV.pop("ACCOMPANIST_STORE", None)
_COMMITS = re.compile(rb"^accompanist_store_commits(?:_total)? (\S+)$", re.MULTILINE)
ROLES = ("shop", "inventory", "payment", "shipping")
SERVED_BY = {"inventory": "inventory", "payment": "payment", "shipping": "shipping"}


class Services:
    """The three services of one system, each with its own SQLite database."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ports = {s: free_port() for s in SERVICES}
        self.procs = {
            s: Proc(
                f"{s}-service",
                [sys.executable, str(BENCH / "sagaservices.py"), s, str(self.ports[s]), str(self.db(s))],
                ENV,
                workdir / f"{s}-service.log",
                self.url(s),
                cwd=workdir,
            )
            for s in SERVICES
        }

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def db(self, service: str) -> Path:
        return self.workdir / f"{service}-service.db"

    @property
    def urls(self) -> dict[str, str]:
        return {s: self.url(s) for s in SERVICES}

    @property
    def dbs(self) -> dict[str, Path]:
        return {s: self.db(s) for s in SERVICES}

    async def start(self, http: aiohttp.ClientSession) -> None:
        for proc in self.procs.values():
            proc.start()
        for proc in self.procs.values():
            await wait_healthy(http, proc, 60)

    async def stop(self) -> None:
        await asyncio.gather(*(p.terminate(10) for p in self.procs.values()))


class System:
    """One system under test, with its own services in ``workdir``."""

    name = "?"
    how_counted = ""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.services = Services(workdir)
        self.http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # No connection limit: an open-loop client may wait on hundreds of orders at once.
        self.http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=600), connector=aiohttp.TCPConnector(limit=0)
        )
        await self.services.start(self.http)
        await self._start()

    async def _start(self) -> None:
        raise NotImplementedError

    async def run(self, orders: list[dict[str, Any]], concurrency: int, tick: Any = None) -> dict[str, Any]:
        """Place ``orders`` at ``concurrency`` (see :func:`sagaload.place_all`)."""
        raise NotImplementedError

    async def run_open(self, orders: list[dict[str, Any]], rate: float, t0: float, timeout: float) -> dict[str, Any]:
        """Place ``orders`` open loop at ``rate`` per second from ``t0`` (see :func:`sagaload.place_open`)."""
        raise NotImplementedError

    def durable_pids(self) -> list[int]:
        """The processes whose fsyncs are this system's durable commits (not the services')."""
        raise NotImplementedError

    async def own_commits(self) -> float | None:
        """The system's own count of its durable commits so far, if it keeps one."""
        return None

    async def kill_payment(self) -> None:
        """SIGKILL the payment service and whatever of this system serves it."""
        raise NotImplementedError

    async def restart_payment(self) -> None:
        """Start them again (the service first); return when they answer."""
        raise NotImplementedError

    async def _stop(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        try:
            await self._stop()
        finally:
            await self.services.stop()
            if self.http is not None:
                await self.http.close()


class AccompanistSystem(System):
    """Four sidecars (``shop`` is the initiator the client calls), fault-tolerant on SQLite
    ``synchronous=FULL`` (or default mode), HMAC-signed frames, as the warehouse example runs."""

    how_counted = "strace fsync+fdatasync of the 4 sidecars; accompanist_store_commits beside it"

    def __init__(self, workdir: Path, mode: str = "fault-tolerant") -> None:
        super().__init__(workdir)
        self.mode = mode
        self.name = "accompanist" if mode == "fault-tolerant" else "accompanist-default"
        listen = {role: free_port() for role in ROLES}
        self.sidecars: dict[str, Proc] = {}
        env = {**ENV, "SAGA_URLS": json.dumps(self.services.urls), "ACCOMPANIST_HMAC_KEY": secrets.token_hex(16)}
        level = os.environ.get("SAGA_LOG_LEVEL", "WARNING")  # INFO to see what the sidecars do
        for role in ROLES:
            api = free_port()
            command = [
                sys.executable, "-m", "accompanist", "sidecar", "--app", "sagaapp:app", "--role", role,
                "--listen", f"127.0.0.1:{listen[role]}", "--api", f"127.0.0.1:{api}", "--log-level", level,
                "--mode", mode, "--max-inflight", "10000", "--receive-timeout", "5",
            ]  # fmt: skip
            if mode == "fault-tolerant":
                command += ["--store", f"sqlite:///{workdir / f'{role}-sidecar.db'}", "--sqlite-synchronous", "FULL"]
            for other in ROLES:
                if other != role:
                    command += ["--peer", f"{other}=127.0.0.1:{listen[other]}"]
            self.sidecars[role] = Proc(
                f"{role}-sidecar", command, env, workdir / f"{role}-sidecar.log", f"http://127.0.0.1:{api}", cwd=workdir
            )

    async def _start(self) -> None:
        assert self.http is not None
        for proc in self.sidecars.values():
            proc.start()
        for proc in self.sidecars.values():
            await wait_healthy(self.http, proc, 60)

    async def place(self, order: dict[str, Any], *, wait: bool = True) -> str:
        """Start the order's session at ``shop`` (the order id is the session id)."""
        assert self.http is not None
        query = "?wait=true&timeout=300" if wait else ""
        body = {"choreography": "order", "args": [order], "session_id": order["order_id"]}
        async with self.http.post(f"{self.sidecars['shop'].health}/sessions{query}", json=body) as r:
            answer = await r.json()
        return str(answer.get("status"))

    async def status(self, order_id: str) -> str | None:
        """The session's status at ``shop``, None if unknown."""
        assert self.http is not None
        async with self.http.get(f"{self.sidecars['shop'].health}/sessions/{order_id}") as r:
            return str((await r.json())["status"]) if r.status == 200 else None

    async def run(self, orders: list[dict[str, Any]], concurrency: int, tick: Any = None) -> dict[str, Any]:
        return await place_all(self.place, orders, concurrency, tick)

    async def run_open(self, orders: list[dict[str, Any]], rate: float, t0: float, timeout: float) -> dict[str, Any]:
        return await asyncio.wait_for(place_open(self.place, orders, rate, t0), timeout)

    def durable_pids(self) -> list[int]:
        return [p.proc.pid for p in self.sidecars.values() if p.proc is not None]

    async def own_commits(self) -> float | None:
        assert self.http is not None
        if self.mode != "fault-tolerant":
            return None  # a memory store's commits are not durable
        total = 0.0
        for proc in self.sidecars.values():
            async with self.http.get(f"{proc.health}/metrics") as r:
                match = _COMMITS.search(await r.read())
            total += float(match.group(1)) if match else 0.0
        return total

    async def kill_payment(self) -> None:
        self.sidecars["payment"].kill()
        self.services.procs["payment"].kill()

    async def restart_payment(self) -> None:
        assert self.http is not None
        self.services.procs["payment"].start()
        await wait_healthy(self.http, self.services.procs["payment"], 60)
        self.sidecars["payment"].start()
        await wait_healthy(self.http, self.sidecars["payment"], 60)

    async def _stop(self) -> None:
        await asyncio.gather(*(p.terminate(10) for p in self.sidecars.values()))


class TemporalSystem(System):
    """The dev server (file-backed, ``transferProcessorMaxPollRPS=1000``), one workflow
    worker, one activity worker per service, and a driver process (the client)."""

    name = "temporal"
    how_counted = "strace fsync+fdatasync of the server and the 4 workers"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        from saga_temporal import TemporalServer

        self.server = TemporalServer(workdir)
        script = str(BENCH / "saga_temporal.py")
        urls = json.dumps(self.services.urls)
        self.workers = {
            s: Driver(
                [sys.executable, script, "activities", s, self.server.address, urls],
                ENV,
                workdir / f"{s}-worker.log",
                workdir,
            )
            for s in SERVICES
        }
        self.workers["workflows"] = Driver(
            [sys.executable, script, "workflows", self.server.address], ENV, workdir / "workflow-worker.log", workdir
        )
        self.driver = Driver(
            [sys.executable, script, "drive", self.server.address], ENV, workdir / "driver.log", workdir
        )

    async def _start(self) -> None:
        await asyncio.to_thread(self.server.start)
        await asyncio.gather(*(w.start() for w in self.workers.values()))
        await self.driver.start()

    async def run(self, orders: list[dict[str, Any]], concurrency: int, tick: Any = None) -> dict[str, Any]:
        return await self.driver.run(orders, concurrency)

    async def run_open(self, orders: list[dict[str, Any]], rate: float, t0: float, timeout: float) -> dict[str, Any]:
        return await self.driver.run_open(orders, rate, t0, timeout)

    def durable_pids(self) -> list[int]:
        return [self.server.pid, *(w.pid for w in self.workers.values())]

    async def kill_payment(self) -> None:
        worker = self.workers["payment"]
        assert worker.proc is not None
        worker.proc.kill()
        await worker.proc.wait()
        self.services.procs["payment"].kill()

    async def restart_payment(self) -> None:
        assert self.http is not None
        self.services.procs["payment"].start()
        await wait_healthy(self.http, self.services.procs["payment"], 60)
        await self.workers["payment"].start()

    async def _stop(self) -> None:
        try:
            await asyncio.gather(self.driver.stop(), *(w.stop(ask=False) for w in self.workers.values()))
        finally:
            await asyncio.to_thread(self.server.stop)


class DBOSSystem(System):
    """One DBOS process (workflows and client in one, SQLite WAL system database)."""

    name = "dbos"
    how_counted = "strace fsync+fdatasync of the DBOS process"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        command = [
            sys.executable, str(BENCH / "saga_dbos.py"), str(workdir / "dbos-system.sqlite"),
            json.dumps(self.services.urls),
        ]  # fmt: skip
        self.driver = Driver(command, ENV, workdir / "dbos.log", workdir)

    async def _start(self) -> None:
        await self.driver.start()

    async def run(self, orders: list[dict[str, Any]], concurrency: int, tick: Any = None) -> dict[str, Any]:
        return await self.driver.run(orders, concurrency)

    def durable_pids(self) -> list[int]:
        return [self.driver.pid]

    async def _stop(self) -> None:
        await self.driver.stop()


SYSTEMS = ("accompanist", "accompanist-default", "temporal", "dbos")


def make_system(name: str, workdir: Path) -> System:
    """A system by name (see :data:`SYSTEMS`).

    Raises:
        ImportError / FileNotFoundError: its packages or binaries are not installed.
    """
    if name == "accompanist":
        return AccompanistSystem(workdir)
    if name == "accompanist-default":
        return AccompanistSystem(workdir, mode="default")
    if name == "temporal":
        import temporalio  # noqa: F401 - fail early, with the reason, when it is missing

        return TemporalSystem(workdir)
    if name == "dbos":
        import dbos  # noqa: F401

        return DBOSSystem(workdir)
    raise ValueError(f"unknown system {name!r}; one of {', '.join(SYSTEMS)}")
