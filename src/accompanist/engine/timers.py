"""Durable timers at one role: one asyncio timer for every sleeping session and saga deadline.

Why one timer and not a task (or ``call_at``) per session: thousands of sessions may sleep at
once (an order waiting 15 minutes for payment, a reminder in a day), and a parked session must
cost a row in the store and a tuple in memory, nothing more. So the engine keeps a heap of
``(when, session, kind)`` and one ``TimerHandle`` for its earliest entry, as
:mod:`accompanist.engine.linger` does for commits. An entry that was replaced or cleared stays
in the heap until it comes up and is skipped then (cheaper than removing it).

Two kinds of timer:

- ``wake``: a session parked in ``ch.sleep`` resumes (by replay) at its deadline;
- ``cancel``: a saga deadline (``ch.cancel_after``) at the initiator cancels the session
  unless its outcome was decided first.

Both deadlines are journaled steps; a parked session also carries them in its record's
``state`` JSON (``wake_at``, ``cancel_at``, ``cancel_reason``), so a restart rebuilds the
heap from the list of unfinished sessions it reads anyway, without loading a journal.

The clock: deadlines are UNIX seconds (they must mean the same instant after a restart), but
waits run on the event loop's clock, so that a virtual clock (``ac.testing``) skips a sleep of
an hour. :meth:`Timers.now` is :func:`~accompanist.language.timers.wall_clock`: the wall clock
moved by however far the loop's clock ran ahead of real time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any

import msgspec

from accompanist.language.timers import wall_clock
from accompanist.store.base import SessionRecord, SessionStatus

__all__ = ["CANCEL", "WAKE", "Timers", "timer_state", "with_timer_state"]

WAKE = "wake"
CANCEL = "cancel"

_KEYS = ("wake_at", "cancel_at", "cancel_reason")


def timer_state(state: bytes | None) -> dict[str, Any]:
    """What a record's ``state`` JSON says of its timers (an empty dict if nothing or unreadable)."""
    if not state:
        return {}
    try:
        decoded = msgspec.json.decode(state)
    except msgspec.DecodeError:
        return {}
    if not isinstance(decoded, dict):
        return {}
    return {k: decoded[k] for k in _KEYS if k in decoded}


def with_timer_state(state: bytes | None, **changes: Any) -> bytes:
    """``state`` (the record's engine-owned JSON object) with the keys in ``changes`` set (a
    value of None removes the key) and every other key kept: the timer keys and the finished
    initiator's ``contacts`` share the one object."""
    current: dict[str, Any] = {}
    if state:
        try:
            decoded = msgspec.json.decode(state)
            if isinstance(decoded, dict):
                current = decoded
        except msgspec.DecodeError:
            current = {}
    for key, value in changes.items():
        if value is None:
            current.pop(key, None)
        else:
            current[key] = value
    return msgspec.json.encode(current)


class Timers:
    """The durable timers of one engine: ``(session, kind) -> deadline``, one loop timer.

    Args:
        fire: called with ``(session_id, kind)`` when a timer is due (from the loop's
            callback: it must not block; the engine spawns the work).
    """

    def __init__(self, fire: Callable[[str, str], None] | None = None) -> None:
        self.fire = fire
        self._due: dict[tuple[str, str], float] = {}  # the deadline that counts, UNIX seconds
        self._heap: list[tuple[float, int, str, str, float]] = []  # (loop time, n, session, kind, deadline)
        self._count = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    # -- the clock ---------------------------------------------------------------------------
    def now(self) -> float:
        """UNIX seconds, advancing with the running loop's clock (virtual clocks included)."""
        return wall_clock()

    def _loop_time(self, deadline: float) -> float:
        loop_now = asyncio.get_running_loop().time()
        return loop_now + (deadline - self.now())

    # -- arming ------------------------------------------------------------------------------
    def arm(self, session_id: str, kind: str, deadline: float) -> None:
        """Fire ``kind`` for ``session_id`` at ``deadline`` (UNIX seconds), replacing any
        earlier timer of that kind for it; a deadline in the past fires at once (soon)."""
        key = (session_id, kind)
        if self._due.get(key) == deadline:
            return
        self._due[key] = deadline
        when = self._loop_time(deadline)
        heapq.heappush(self._heap, (when, next(self._count), session_id, kind, deadline))
        if self._timer is None or when < self._timer_at:
            self._schedule(when)

    def disarm(self, session_id: str, kind: str | None = None) -> None:
        """Clear the session's timer of ``kind`` (every kind by default)."""
        for k in (WAKE, CANCEL) if kind is None else (kind,):
            self._due.pop((session_id, k), None)
        if not self._due and self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._heap.clear()

    def deadline(self, session_id: str, kind: str) -> float | None:
        """The armed deadline of the session's timer of ``kind``, or None."""
        return self._due.get((session_id, kind))

    def sleeping(self, record: SessionRecord) -> bool:
        """Whether a parked session waits for its sleep's deadline (not for a message): an
        envelope that arrives meanwhile stays in the inbox and does not resume it."""
        if record.status != SessionStatus.PARKED:
            return False
        wake_at = timer_state(record.state).get("wake_at")
        return isinstance(wake_at, (int, float)) and wake_at > self.now()

    def __len__(self) -> int:
        """Timers armed now."""
        return len(self._due)

    def close(self) -> None:
        """Forget every timer (the engine stops: the store holds the deadlines)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._due.clear()
        self._heap.clear()

    def _schedule(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = asyncio.get_running_loop().call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = asyncio.get_running_loop().time()
        heap = self._heap
        while heap:
            when, _, session_id, kind, deadline = heap[0]
            if when > now:
                self._schedule(when)
                return
            heapq.heappop(heap)
            if self._due.get((session_id, kind)) != deadline:
                continue  # replaced or cleared since
            del self._due[(session_id, kind)]
            if self.fire is not None:
                self.fire(session_id, kind)
