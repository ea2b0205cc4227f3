"""Run every role's projection concurrently over in-memory queues: the messages cross the codec
as between sidecars, with no engine (no store, no retries): the quickest check of a projection."""

from __future__ import annotations

import asyncio
from typing import Any

from accompanist.ids import new_session_id
from accompanist.interpreters.common import SagaLog, check_args, maybe_sync, session_result
from accompanist.interpreters.projected import project
from accompanist.language.choreo import LocalThunk
from accompanist.language.choreography import App, Choreography
from accompanist.language.roles import Role
from accompanist.language.steps import Step
from accompanist.language.transaction import Transaction

__all__ = ["run_projected"]


class _QueueRunner:
    """A :class:`~accompanist.interpreters.StepRunner` over one FIFO queue per (src, dst)."""

    def __init__(
        self,
        choreography: Choreography,
        channels: dict[tuple[str, str], asyncio.Queue[tuple[int, bytes]]],
        role: Role,
        saga: SagaLog,
    ):
        self._codec = choreography.codec
        self._channels = channels
        self._role = role
        self._saga = saga
        self.failed_at: int | None = None  # the step of this role that raised, if one did

    def _queue(self, src: str | None, dst: str | None) -> asyncio.Queue[tuple[int, bytes]]:
        assert src is not None and dst is not None
        return self._channels.setdefault((src, dst), asyncio.Queue())

    async def send(self, step: Step, value: Any) -> None:
        assert step.seq is not None
        try:
            data = self._codec.encode(value)
        except Exception:
            self.failed_at = step.index
            raise
        self._queue(step.src, step.dst).put_nowait((step.seq, data))

    async def recv(self, step: Step) -> Any:
        seq, data = await self._queue(step.src, step.dst).get()
        if seq != step.seq:  # pragma: no cover - FIFO queues keep order
            raise AssertionError(f"out of order: expected #{step.seq}, got #{seq}")
        return self._codec.decode(data)

    async def local(self, step: Step, thunk: LocalThunk) -> Any:
        try:
            return await thunk()
        except Exception:
            self.failed_at = step.index
            raise

    async def transaction(self, step: Step, tx: Transaction, args: list[Any]) -> Any:
        try:
            return await self._saga.commit(self._role, tx, args, step.index)
        except Exception:
            self.failed_at = step.index
            raise


async def _run_all(choreography: Choreography, args: tuple[Any, ...], timeout: float | None) -> Any:
    check_args(choreography, args)
    channels: dict[tuple[str, str], asyncio.Queue[tuple[int, bytes]]] = {}
    saga = SagaLog(new_session_id())  # a fresh id per run: transactions' keys never repeat across runs
    runners = {role: _QueueRunner(choreography, channels, role, saga) for role in choreography.roles}
    tasks: dict[Role, asyncio.Task[Any]] = {
        role: asyncio.create_task(project(choreography, role, runners[role], args)) for role in choreography.roles
    }
    failure: tuple[BaseException, str] | None = None
    try:
        async with asyncio.timeout(timeout):
            pending: set[asyncio.Task[Any]] = set(tasks.values())
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
                for role, task in tasks.items():
                    if task in done and task.exception() is not None and failure is None:
                        failure = (task.exception(), role.name)  # type: ignore[assignment]
                if failure is not None:
                    break
    finally:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
    if failure is not None:
        exc, role_name = failure
        step = next(r.failed_at for ro, r in runners.items() if ro.name == role_name)
        saga.failed_at = (role_name, step)
        await saga.fail(exc, role_name)
    return session_result(choreography, tasks[choreography.initiator].result())


def run_projected(choreography: Choreography, *args: Any, timeout: float | None = 60.0, app: App | None = None) -> Any:
    """Run each role as its own projected interpreter, concurrently, and return the result.

    Messages cross an in-memory transport through the payload codec, exactly as between
    sidecars. If a role fails, the others are cancelled and that role's error is raised.
    Like ``run_central``, it runs to completion from plain code and returns an awaitable
    inside a running event loop. With ``app``, its startup hooks run for every role of the
    choreography before the run and its shutdown hooks after it.

    Raises:
        TimeoutError: the roles did not all finish within ``timeout`` seconds (a deadlock).
        LifecycleError: a hook of ``app`` failed.
    """

    async def go() -> Any:
        if app is None:
            return await _run_all(choreography, args, timeout)
        async with app.lifecycle.running([r.name for r in choreography.roles]):
            return await _run_all(choreography, args, timeout)

    return maybe_sync(go)
