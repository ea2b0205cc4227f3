"""Engines for several roles wired over one in-memory network (unit tests of the engine)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

from accompanist import App
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
