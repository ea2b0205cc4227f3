"""What the engine does when a durable timer fires, and how it rebuilds its timers at start.

A fired ``wake`` resumes a session parked in ``ch.sleep`` (by replay, as any parked session
resumes); a fired ``cancel`` cancels a session past its saga deadline through the operator's
cancel path. Timers fire from the loop's callback, possibly thousands at the same instant, so
the work goes through a queue drained by at most ``_WORKERS`` tasks: the tasks (and the
replays that run at once) stay bounded however many sessions wake together.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from accompanist.engine.status import is_decided
from accompanist.engine.timers import CANCEL, WAKE, timer_state, with_timer_state
from accompanist.errors import AccompanistError
from accompanist.store.base import SessionRecord, SessionStatus

if TYPE_CHECKING:
    from accompanist.engine.runs import Runs

__all__ = ["Wakeups"]

S = SessionStatus
_WORKERS = 64

Cancel = Callable[[str, str], Awaitable[object]]
"""Cancels a session (``session_id``, reason) as an operator would."""


class Wakeups:
    """Carries out fired timers for one engine (see the module's docstring).

    Args:
        engine: the engine whose sessions the timers belong to.
        cancel: its operator cancel, given a reason.
    """

    def __init__(self, engine: Runs, cancel: Cancel) -> None:
        self._engine = engine
        self._cancel = cancel
        self._queue: collections.deque[tuple[str, str]] = collections.deque()
        self._workers = 0
        engine.timers.fire = self.due

    def due(self, session_id: str, kind: str) -> None:
        """A timer fired (called from the loop's timer callback: queues the work)."""
        self._queue.append((session_id, kind))
        while self._workers < _WORKERS and self._workers < len(self._queue):
            self._workers += 1
            self._engine.spawn_background(self._drain(), "accompanist-timers")

    async def _drain(self) -> None:
        try:
            while self._queue:
                session_id, kind = self._queue.popleft()
                try:
                    if kind == WAKE:
                        await self.wake(session_id)
                    elif kind == CANCEL:
                        await self.expire(session_id)
                except AccompanistError as exc:
                    self._engine.log.warning("timer %s of session %s: %s", kind, session_id, exc)
        finally:
            self._workers -= 1

    async def wake(self, session_id: str) -> None:
        """Resume a session parked in a sleep whose deadline passed (by replay)."""
        engine = self._engine
        async with engine.session_lock(session_id):
            if session_id in engine.live:
                return
            record = await engine.stored(session_id)
            if record is None or record.status != S.PARKED or "wake_at" not in timer_state(record.state):
                return  # woken otherwise meanwhile (a cancel, an operator's resume)
            choreography = engine.app.get(record.choreography, record.version)
            record.state = with_timer_state(record.state, wake_at=None)
            await engine.activate(record, choreography)

    async def expire(self, session_id: str) -> None:
        """A saga deadline passed: cancel the session unless its outcome is decided."""
        engine = self._engine
        run = engine.live.get(session_id)
        record = run.record if run is not None else await engine.stored(session_id)
        if record is None or is_decided(record.status):
            return
        reason = timer_state(record.state).get("cancel_reason") or "the saga deadline passed"
        with contextlib.suppress(AccompanistError):  # decided meanwhile: the outcome stands
            await self._cancel(session_id, f"saga deadline: {reason}")

    def restore(self, record: SessionRecord) -> bool:
        """At start, from an unfinished session's record: re-arm its timers. Returns True when
        the session sleeps past now (its timer resumes it; no replay at start), False when it
        is to be resumed now (a sidecar down past a deadline fires it at start)."""
        state = timer_state(record.state)
        if not state:
            return False
        timers = self._engine.timers
        cancel_at = state.get("cancel_at")
        if isinstance(cancel_at, (int, float)) and not is_decided(record.status):
            timers.arm(record.session_id, CANCEL, float(cancel_at))
        wake_at = state.get("wake_at")
        if record.status != S.PARKED or not isinstance(wake_at, (int, float)):
            return False
        if wake_at <= timers.now():
            return False
        timers.arm(record.session_id, WAKE, float(wake_at))
        return True
