"""Test helpers: run every role's projection concurrently over in-memory queues."""

from __future__ import annotations

import asyncio
from typing import Any

from accompanist.interpreters.common import check_args, maybe_sync, session_result
from accompanist.interpreters.projected import project
from accompanist.language.choreo import LocalThunk
from accompanist.language.choreography import Choreography
from accompanist.language.roles import Role
from accompanist.language.steps import Step

__all__ = ["run_projected"]


class _QueueRunner:
    """A :class:`~accompanist.interpreters.StepRunner` over one FIFO queue per (src, dst)."""

    def __init__(self, choreography: Choreography, channels: dict[tuple[str, str], asyncio.Queue[tuple[int, bytes]]]):
        self._codec = choreography.codec
        self._channels = channels

    def _queue(self, src: str | None, dst: str | None) -> asyncio.Queue[tuple[int, bytes]]:
        assert src is not None and dst is not None
        return self._channels.setdefault((src, dst), asyncio.Queue())

    async def send(self, step: Step, value: Any) -> None:
        assert step.seq is not None
        self._queue(step.src, step.dst).put_nowait((step.seq, self._codec.encode(value)))

    async def recv(self, step: Step) -> Any:
        seq, data = await self._queue(step.src, step.dst).get()
        if seq != step.seq:  # pragma: no cover - FIFO queues keep order
            raise AssertionError(f"out of order: expected #{step.seq}, got #{seq}")
        return self._codec.decode(data)

    async def local(self, step: Step, thunk: LocalThunk) -> Any:
        return await thunk()


async def _run_all(choreography: Choreography, args: tuple[Any, ...], timeout: float | None) -> Any:
    check_args(choreography, args)
    channels: dict[tuple[str, str], asyncio.Queue[tuple[int, bytes]]] = {}
    tasks: dict[Role, asyncio.Task[Any]] = {
        role: asyncio.create_task(project(choreography, role, _QueueRunner(choreography, channels), args))
        for role in choreography.roles
    }
    try:
        async with asyncio.timeout(timeout):
            pending: set[asyncio.Task[Any]] = set(tasks.values())
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    exc = task.exception()
                    if exc is not None:
                        raise exc
    finally:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
    return session_result(choreography, tasks[choreography.initiator].result())


def run_projected(choreography: Choreography, *args: Any, timeout: float | None = 60.0) -> Any:
    """Run each role as its own projected interpreter, concurrently, and return the result.

    Messages cross an in-memory transport through the payload codec, exactly as between
    sidecars. If a role fails, the others are cancelled and that role's error is raised.
    Like ``run_central``, it runs to completion from plain code and returns an awaitable
    inside a running event loop.

    Raises:
        TimeoutError: the roles did not all finish within ``timeout`` seconds (a deadlock).
    """
    return maybe_sync(lambda: _run_all(choreography, args, timeout))
