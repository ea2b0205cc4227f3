"""``Cluster``: one in-process sidecar engine per role over a memory network, crashable.

Why: a choreography's fault tolerance is only believable once its roles have been crashed
mid-session and started again from what their stores kept. Real processes and SIGKILLs are
what the project's own fault tests use; a user's test suite wants the same semantics in
milliseconds. Here each role's engine runs on the test's event loop, talks to the others
over :class:`~accompanist.transport.memory.MemoryNetwork` (every envelope still crosses the
frame codec), and keeps its state in a :class:`~accompanist.store.memory.MemoryStore` that
outlives the engine: :meth:`Cluster.crash` stops the engine at once, and from that moment the
dead engine's leftovers can neither write to the store nor call on anything (as after a
SIGKILL); :meth:`Cluster.restart` starts a new engine on the same store, which replays the
unfinished sessions from their journals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from accompanist.engine.config import EngineConfig, Mode
from accompanist.engine.engine import Engine
from accompanist.errors import SessionFailedError, StoreError, UnknownSessionError
from accompanist.language.choreography import App, Choreography
from accompanist.store.base import TERMINAL_STATUSES, SessionRecord, Store
from accompanist.store.memory import MemoryStore
from accompanist.testing.clock import poll_interval
from accompanist.transport.memory import FaultPlan, MemoryNetwork

__all__ = ["Cluster", "quick_config"]


def quick_config(mode: Mode | str = Mode.FAULT_TOLERANT, *, virtual: bool = False, **overrides: Any) -> EngineConfig:
    """Engine settings for tests: short retry and outcome intervals, so a crashed role's
    peers notice its return within milliseconds; ``overrides`` win.

    With ``virtual`` (a virtual clock), the periodic wake-ups (the relay's rescan, the outcome
    round's nudges) are seconds apart instead: waiting costs nothing there, but every wake-up
    is a step of the clock, and an hour in 20 ms steps would take a while even so.
    """
    settings: dict[str, Any] = {
        "mode": Mode(mode),
        "receive_timeout": 30.0,
        "retry_min": 0.005,
        "retry_max": 0.05,
        "relay_interval": 0.02,
        "outcome_query_after": 0.2,
        "deliver_timeout": 2.0,
        "grace": 0.0,
        "store_retry_max": 0.05,
        "lazy_interval": 0.02,
        "ack_linger": 0.01,
    }
    if virtual:
        settings.update(relay_interval=60.0, outcome_query_after=30.0, lazy_interval=0.1, ack_linger=0.05)
    settings.update(overrides)
    return EngineConfig(**settings)


class _Life:
    """One engine's view of its role's store: dead once that engine crashed. Then what the
    crashed engine still does is lost: its commits are dropped (a process killed with SIGKILL
    writes nothing more, whatever it meant to), its reads fail."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.dead = False

    async def close(self) -> None:
        if not self.dead:
            await self.store.close()

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.store, name)
        if name == "atomic" and callable(target):

            def atomic() -> Any:
                if self.dead:
                    raise StoreError("this sidecar crashed")
                return target()

            return atomic
        if not callable(target) or not asyncio.iscoroutinefunction(target):
            return target

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.dead:
                if name == "commit":
                    return None  # written by a dead process: it never reaches the disk
                raise StoreError("this sidecar crashed")
            return await target(*args, **kwargs)

        return call


class Cluster:
    """Sidecar engines for every role of ``app``, in this process (see the module docstring).

    Use it as ``async with Cluster(app) as cluster:``; the engines start on entry and stop on
    exit.

    Args:
        app: the choreographies (an ``App``, or one ``Choreography``).
        config: engine settings for every role (default: :func:`quick_config`, fault-tolerant).
        roles: the roles to run (default: every role of every choreography in ``app``).
        plan: network faults (drop, duplicate, delay, reorder) between the roles.
        stores: a store per role (default: a ``MemoryStore`` each); a durable one (SQLite)
            keeps the sessions for ``accompanist export`` after the test.
    """

    def __init__(
        self,
        app: App | Choreography,
        *,
        config: EngineConfig | None = None,
        roles: Iterable[str] | None = None,
        plan: FaultPlan | None = None,
        stores: Mapping[str, Store] | None = None,
    ) -> None:
        self.app = app if isinstance(app, App) else App(app)
        self.config = config or quick_config()
        found = roles or dict.fromkeys(r.name for c in self.app for r in c.roles)
        self.roles: list[str] = list(found)
        self.network = MemoryNetwork(plan, send_timeout=0.5)
        self.stores: dict[str, Store] = {r: (stores or {}).get(r) or MemoryStore(r) for r in self.roles}
        self.engines: dict[str, Engine] = {}
        self.crashes: dict[str, int] = {}
        self._lives: dict[str, _Life] = {}
        self._log = logging.getLogger("accompanist.testing.cluster")

    async def __aenter__(self) -> Cluster:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __getitem__(self, role: str) -> Engine:
        return self.engines[role]

    async def start(self, *roles: str) -> None:
        """Start the engines of ``roles`` (default: every role not running)."""
        for role in roles or [r for r in self.roles if r not in self.engines]:
            life = _Life(self.stores[role])
            engine = Engine(
                self.app,
                role,
                store=life,
                transport=self.network.transport(role),
                config=self.config,
                log=logging.getLogger(f"accompanist.testing.{role}"),
            )
            await engine.start()
            self.engines[role] = engine
            self._lives[role] = life

    async def crash(self, role: str) -> None:
        """Stop ``role``'s engine at once, as a SIGKILL would: nothing it does from now on
        reaches its store (not even the marks a graceful stop writes), and its unfinished
        sessions stay as they were stored."""
        engine = self.engines.pop(role)
        life = self._lives.pop(role)
        self.crashes[role] = self.crashes.get(role, 0) + 1
        tasks = [run.task for run in list(engine.live.values()) if run.task is not None]
        life.dead = True  # from now on its writes are lost, as a SIGKILL loses them
        await engine.stop(grace=0)
        await life.store.close()  # what it wrote before is kept; the next engine opens it again
        leftovers = [t for t in tasks if not t.done()]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    async def restart(self, role: str) -> None:
        """Start ``role`` again on the store it had: it replays its unfinished sessions."""
        await self.start(role)

    async def stop(self) -> None:
        """Stop every engine (sessions in flight stay in the stores)."""
        for role in list(self.engines):
            engine = self.engines.pop(role)
            with contextlib.suppress(Exception):
                await engine.stop(grace=0)
            self._lives.pop(role, None)

    async def start_session(
        self, choreography: str | Choreography, *args: Any, version: int | None = None, session_id: str | None = None
    ) -> str:
        """Start a session at its initiator's engine; return its id (``session_id`` makes the
        start idempotent: a client repeats it after a crash with the same id)."""
        c = choreography if isinstance(choreography, Choreography) else self.app.get(choreography, version)
        return await self.engines[c.initiator.name].start_session(c.name, args, c.version, session_id)

    async def run(self, choreography: str | Choreography, *args: Any, timeout: float = 30.0) -> Any:
        """Start a session, wait until it ends at every role, and return the initiator's result.

        Raises:
            SessionFailedError: it did not complete (compensated, failed, cancelled).
            TimeoutError: it did not end everywhere within ``timeout`` seconds.
        """
        c = choreography if isinstance(choreography, Choreography) else self.app.get(choreography)
        sid = await self.start_session(c, *args)
        records = await self.settle(sid, timeout)
        record = records[c.initiator.name]
        assert record is not None
        if record.status != "completed":
            failure = Engine.failure_of(record)
            raise SessionFailedError(sid, record.role, record.error or record.status, record.status, failure=failure)
        return self.app.get(record.choreography, record.version).codec.decode(record.result) if record.result else None

    async def record(self, session_id: str, role: str) -> SessionRecord | None:
        """The session's record at ``role``, read from its store (also while it is down)."""
        engine = self.engines.get(role)
        if engine is not None:
            with contextlib.suppress(UnknownSessionError, StoreError):
                return await engine.get(session_id)
        store = self.stores[role]  # the role is down: read what its store kept
        await store.open()
        try:
            return await store.get_session(session_id)
        finally:
            await store.close()

    async def records(self, session_id: str) -> dict[str, SessionRecord | None]:
        """The session's record at every role (None where it never started)."""
        return {role: await self.record(session_id, role) for role in self.roles}

    async def settle(self, session_id: str, timeout: float = 30.0) -> dict[str, SessionRecord | None]:
        """Wait until the session is terminal at every role that has it (``timeout`` in wall
        seconds, which also bounds a virtual clock), and return the records.

        Raises:
            TimeoutError: not within ``timeout``; the message says where each role is.
        """
        deadline = time.monotonic() + timeout
        pause = 0.005
        while True:
            records = await self.records(session_id)
            present = [r for r in records.values() if r is not None]
            if present and all(r.status in TERMINAL_STATUSES for r in present):
                return records
            if time.monotonic() > deadline:
                where = ", ".join(f"{role}={r.status if r else '-'}" for role, r in records.items())
                raise TimeoutError(f"session {session_id} did not end everywhere within {timeout:g}s: {where}")
            await asyncio.sleep(pause)
            pause = min(2 * pause, poll_interval(0.02, 60.0))  # see poll_interval
