"""The processes of a chain run, started and stopped together: services, the delay proxy, the
raw-socket floor, the orchestrators and one or more sets of sidecars (``chainapp``).

Why apart from ``chain.py``: ``throughput.py`` runs the same topology (the 3-role chain) with
other stores, and both must measure exactly the same processes.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from chainparts import read_frame, write_frame
from examples.warehouse.cluster import Proc, free_port, wait_healthy
from harness import ROOT

__all__ = ["ROLES", "RawClient", "Setup", "Sidecars", "chain_session", "measure"]

ROLES = ["start", *(f"s{i}" for i in range(1, 6))]
PARTS = str(ROOT / "benchmarks" / "chainparts.py")
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), str(ROOT / "benchmarks")]),
}
_COMMITS = re.compile(rb"^accompanist_store_commits(?:_total)? (\S+)$", re.MULTILINE)


@dataclass(frozen=True)
class Sidecars:
    """One set of sidecars: a name, its mode, a store URL per role (None: the mode's default)
    and the SQLite durability level."""

    name: str
    mode: str
    roles: tuple[str, ...]
    store: dict[str, str] | None = None
    synchronous: str = "FULL"


class Setup:
    """Every process of one run. ``ns``: chain lengths that get a floor and an orchestrator."""

    def __init__(self, workdir: Path, ns: list[int], sets: list[Sidecars], *, orchestrator: bool = True) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []
        self.services = {f"s{i}": free_port() for i in range(1, 6)}
        self.links: dict[int, int] = {}  # proxy port -> target port
        self.control = free_port()
        self.floor_entry: dict[int, int] = {}
        self.orchestrator_entry: dict[int, int] = {}
        self.sidecars: dict[str, dict[str, Proc]] = {}
        for role, port in self.services.items():
            self._proc(f"service-{role}", ["service", str(port)])
        for n in ns:
            self._floor(n)
            if orchestrator:
                self._orchestrator(n)
        for spec in sets:
            self._sidecars(spec)

    def _link(self, target: int) -> int:
        port = free_port()
        self.links[port] = target
        return port

    def _proc(self, name: str, args: list[str], health: str = "") -> Proc:
        proc = Proc(name, [sys.executable, PARTS, *args], ENV, self.workdir / f"{name}.log", health, cwd=self.workdir)
        self.procs.append(proc)
        return proc

    def _floor(self, n: int) -> None:
        ports = [free_port() for _ in range(n + 1)]
        for i in range(n + 1):
            service = self.services.get(f"s{i}", 0)
            nxt = self._link(ports[(i + 1) % (n + 1)])
            self._proc(f"floor{n}-node{i}", ["node", str(i), str(n), str(ports[i]), str(service), str(nxt)])
        self.floor_entry[n] = ports[0]

    def _orchestrator(self, n: int) -> None:
        port = free_port()
        via = [str(self._link(self.services[f"s{i}"])) for i in range(1, n + 1)]
        self._proc(f"orchestrator{n}", ["orchestrator", str(port), *via])
        self.orchestrator_entry[n] = self._link(port)

    def _sidecars(self, spec: Sidecars) -> None:
        listen = {role: free_port() for role in spec.roles}
        self.sidecars[spec.name] = {}
        for role in spec.roles:
            api = free_port()
            command = [
                sys.executable, "-m", "accompanist", "sidecar", "--app", "chainapp:app", "--role", role,
                "--listen", f"127.0.0.1:{listen[role]}", "--api", f"127.0.0.1:{api}", "--log-level", "WARNING",
                "--mode", spec.mode, "--max-inflight", "10000",
            ]  # fmt: skip
            if spec.mode == "fault-tolerant":
                store = (spec.store or {}).get(role) or f"sqlite:///{self.workdir / f'{spec.name}-{role}.db'}"
                command += ["--store", store, "--sqlite-synchronous", spec.synchronous]
            for other in spec.roles:
                if other != role:
                    command += ["--peer", f"{other}=127.0.0.1:{self._link(listen[other])}"]
            env = {**ENV, "CHAIN_SERVICE_PORT": str(self.services.get(role, 0))}
            log = self.workdir / f"{spec.name}-{role}.log"
            proc = Proc(f"{spec.name}-{role}", command, env, log, f"http://127.0.0.1:{api}", cwd=self.workdir)
            self.procs.append(proc)
            self.sidecars[spec.name][role] = proc

    async def start(self, http: aiohttp.ClientSession) -> None:
        proxy = Proc(
            "proxy",
            [sys.executable, PARTS, "proxy", str(self.control), *(f"{p}={t}" for p, t in self.links.items())],
            ENV,
            self.workdir / "proxy.log",
            "",
            cwd=self.workdir,
        )
        self.procs.insert(0, proxy)
        for proc in self.procs:
            proc.start()
        for by_role in self.sidecars.values():
            for proc in by_role.values():
                await wait_healthy(http, proc, 120)
        await self.set_delay(0)

    async def set_delay(self, ms: float) -> None:
        """Every link of the proxy holds each chunk ``ms`` per direction from now on."""
        for _ in range(400):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.control)
                break
            except OSError:
                await asyncio.sleep(0.05)
        else:
            raise RuntimeError("the delay proxy does not answer on its control port")
        writer.write(f"{ms}\n".encode())
        await writer.drain()
        await reader.readline()
        writer.close()

    async def stop(self) -> None:
        await asyncio.gather(*(p.terminate(10) for p in self.procs))

    def api(self, name: str) -> str:
        """The initiator's (``start``'s) API of the sidecar set ``name``."""
        return self.sidecars[name]["start"].health

    def cpu(self, name: str) -> dict[str, float]:
        """CPU seconds (user + system) each sidecar of set ``name`` has used so far."""
        ticks = os.sysconf("SC_CLK_TCK")
        used = {}
        for role, proc in self.sidecars[name].items():
            assert proc.proc is not None
            fields = Path(f"/proc/{proc.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            used[role] = (int(fields[11]) + int(fields[12])) / ticks
        return used

    async def commits(self, http: aiohttp.ClientSession, name: str) -> float:
        """Durable commits the stores of set ``name`` have made so far (their own counters)."""
        total = 0.0
        for proc in self.sidecars[name].values():
            async with http.get(f"{proc.health}/metrics") as r:
                match = _COMMITS.search(await r.read())
            total += float(match.group(1)) if match else 0.0
        return total


class RawClient:
    """The floor's and the orchestrator's client: a msgpack connection per concurrent caller."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.ids = itertools.count()

    async def call(self, value: int) -> int:
        if self.conns:
            conn = self.conns.pop()
        else:
            for _ in range(400):
                try:
                    conn = await asyncio.open_connection("127.0.0.1", self.port)
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"nothing listens on {self.port}")
        write_frame(conn[1], [0, next(self.ids), value])
        answer = int(await read_frame(conn[0]))
        self.conns.append(conn)
        return answer

    def close(self) -> None:
        for _, writer in self.conns:
            writer.close()
        self.conns.clear()


async def chain_session(http: aiohttp.ClientSession, api: str, n: int, value: int) -> int:
    """One ``chain<n>`` session started at ``api`` and awaited; its result.

    Raises:
        RuntimeError: the session did not complete.
    """
    body = {"choreography": f"chain{n}", "args": [value]}
    async with http.post(f"{api}/sessions?wait=true&timeout=60", json=body) as r:
        answer = await r.json()
    if answer.get("status") != "completed":
        raise RuntimeError(f"chain{n} session did not complete: {answer}")
    return int(answer["result"])


async def measure(call: Any, n: int, count: int, concurrency: int, tick: Any = None) -> tuple[list[float], float]:
    """Run ``count`` tokens through ``call`` with ``concurrency`` callers; check each result.

    Returns latencies (s) and the wall time (s).
    """
    latencies: list[float] = []
    values = iter(range(count))

    async def worker() -> None:
        for value in values:
            t0 = time.perf_counter()
            got = await call(value)
            latencies.append(time.perf_counter() - t0)
            if got != value + n:
                raise RuntimeError(f"chain{n}: {value} came back as {got}, expected {value + n}")
            if tick is not None:
                tick(advance=1)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - began
