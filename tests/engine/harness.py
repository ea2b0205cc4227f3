"""Engines for several roles wired over one in-memory network (unit tests of the engine)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

from accompanist import App, Choreography
from accompanist.engine.config import EngineConfig
from accompanist.engine.engine import Engine
from accompanist.store.base import SessionRecord, Store
from accompanist.store.memory import MemoryStore
from accompanist.transport.memory import FaultPlan, MemoryNetwork


class Cluster:
    """Engines by role, their stores, and the network between them."""

    def __init__(
        self,
        app: App,
        roles: Iterable[str],
        config: EngineConfig,
        network: MemoryNetwork,
        stores: dict[str, Store] | None = None,
    ) -> None:
        self.app = app
        self.config = config
        self.network = network
        self.stores: dict[str, Store] = {r: (stores or {}).get(r) or MemoryStore(r) for r in roles}
        self.engines: dict[str, Engine] = {}

    async def start(self, role: str, config: EngineConfig | None = None) -> Engine:
        engine = Engine(
            self.app,
            role,
            store=self.stores.setdefault(role, MemoryStore(role)),
            transport=self.network.transport(role),
            config=config or self.config,
        )
        await engine.start()
        self.engines[role] = engine
        return engine

    async def stop(self, role: str) -> None:
        await self.engines.pop(role).stop(grace=0)

    def __getitem__(self, role: str) -> Engine:
        return self.engines[role]


async def wait_status(engine: Engine, session_id: str, status: str, timeout: float = 10.0) -> SessionRecord:
    """Poll until the session has ``status`` at ``engine`` (also for non-terminal statuses)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    record = None
    while loop.time() < deadline:
        record = await engine.get(session_id)
        if record is not None and record.status == status:
            return record
        await asyncio.sleep(0.02)
    raise AssertionError(f"session {session_id} at '{engine.role}' is {record and record.status}, not {status}")


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``check`` until it holds (for what the system reaches in its own time)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout:g}s")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def cluster(
    app: App,
    roles: Iterable[str],
    config: EngineConfig | None = None,
    plan: FaultPlan | None = None,
    stores: dict[str, Store] | None = None,
    **net: Any,
) -> AsyncIterator[Cluster]:
    roles = list(roles)
    c = Cluster(app, roles, config or EngineConfig(receive_timeout=30), MemoryNetwork(plan, **net), stores)
    for role in roles:
        await c.start(role)
    try:
        yield c
    finally:
        for role in list(c.engines):
            await c.stop(role)


class Deployments:
    """Engines of roles ``a``, ``b``, ``c`` over one memory network, each started with the code
    it is given (a whole app, or one choreography): roles that run different code, as during a
    rolling upgrade. Stores outlive a stop, so a role can come back with other code."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.network = MemoryNetwork()
        self.stores = {r: MemoryStore(r) for r in "abc"}
        self.engines: dict[str, Engine] = {}

    async def start(self, role: str, code: App | Choreography) -> Engine:
        app = code if isinstance(code, App) else App(code)
        engine = Engine(app, role, store=self.stores[role], transport=self.network.transport(role), config=self.config)
        await engine.start()
        self.engines[role] = engine
        return engine

    async def stop(self, role: str) -> None:
        await self.engines.pop(role).stop(grace=0)

    async def stop_all(self) -> None:
        for role in list(self.engines):
            await self.stop(role)

    async def kinds(self, role: str, sid: str) -> list[tuple[str, str]]:
        """``(kind, name)`` of each journal step of ``sid`` at ``role``."""
        return [(e.kind, e.name) for e in await self.stores[role].journal_load(sid)]


async def heard(engine: Engine, *roles: str) -> None:
    """Wait until ``engine`` knows which versions ``roles`` serve (from their hellos)."""

    async def check() -> bool:
        return all(engine.versions.peer(r) is not None for r in roles)

    await eventually(check, 10, f"'{engine.role}' heard the versions of {roles}")
