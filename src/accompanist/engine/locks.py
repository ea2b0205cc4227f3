"""One lock per key (a session id), held only while someone holds it.

Why not a dict of ``asyncio.Lock`` behind ``contextlib.asynccontextmanager``: a session's lock is
taken several times per session at every role (each envelope that opens or ends it, each status
change), almost always uncontended, and the generator-based context manager and a fresh
``asyncio.Lock`` per session cost more than the rest of such a change. Here an uncontended
``async with`` is two dictionary operations and no await; only a contended key gets a queue of
waiters, served first come, first served.
"""

from __future__ import annotations

import asyncio
import collections
from types import TracebackType

__all__ = ["KeyedLocks"]


class KeyedLocks:
    """Serializes work per key without keeping anything for keys nobody holds."""

    def __init__(self) -> None:
        # key -> None (held, nobody waiting) or the futures of those waiting, in order
        self._held: dict[str, collections.deque[asyncio.Future[None]] | None] = {}

    def hold(self, key: str) -> _Hold:
        """Hold the lock of ``key`` for an ``async with`` block."""
        return _Hold(self, key)

    async def acquire(self, key: str) -> None:
        """Wait until this caller holds ``key`` (cancellable while waiting)."""
        held = self._held
        if key not in held:
            held[key] = None
            return
        waiters = held[key]
        if waiters is None:
            waiters = held[key] = collections.deque()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(key)  # it was handed over just as we were cancelled: pass it on
            raise

    def release(self, key: str) -> None:
        """Hand ``key`` to the next waiter, or let it go."""
        waiters = self._held.get(key)
        while waiters:
            future = waiters.popleft()
            if not future.done():  # a waiter cancelled meanwhile is skipped
                future.set_result(None)
                return
        del self._held[key]

    def __len__(self) -> int:
        return len(self._held)


class _Hold:
    __slots__ = ("_key", "_locks")

    def __init__(self, locks: KeyedLocks, key: str) -> None:
        self._locks = locks
        self._key = key

    async def __aenter__(self) -> None:
        await self._locks.acquire(self._key)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._locks.release(self._key)
