"""Rows that wait for their run's next commit are committed, at the latest, ``ack_linger``
seconds after they began to wait (see :mod:`accompanist.engine.unsaved`)."""

from __future__ import annotations

import asyncio
from typing import Protocol

__all__ = ["Lingering", "Waiter"]


class Waiter(Protocol):
    """What waits: the unsaved rows of one run (:class:`~accompanist.engine.unsaved.Unsaved`)."""

    def lingered(self) -> None:
        """It waited long enough: commit now."""


class Lingering:
    """The runs whose rows wait for their next commit, each saved at the latest ``linger``
    seconds after it began to wait: one timer for all of them.

    Why not a timer per run: a run starts waiting once or twice per session (a received
    envelope, a new record), and almost always commits long before the deadline; a timer per
    wait (made, then cancelled) cost more than the bookkeeping of the wait itself. The linger is
    the same for every run, so the runs wait in arrival order and the first is the next due.
    """

    def __init__(self, linger: float) -> None:
        self._linger = linger
        self._due: dict[Waiter, float] = {}  # in the order they began to wait
        self._timer: asyncio.TimerHandle | None = None

    def arm(self, unsaved: Waiter) -> None:
        """``unsaved`` began to wait (nothing changes if it waits already)."""
        if unsaved in self._due:
            return
        loop = asyncio.get_running_loop()
        self._due[unsaved] = loop.time() + self._linger
        if self._timer is None:
            self._timer = loop.call_later(self._linger, self._fire)

    def disarm(self, unsaved: Waiter) -> None:
        """``unsaved`` committed (or stopped): it no longer waits."""
        self._due.pop(unsaved, None)

    def waited(self, unsaved: Waiter) -> float:
        """Seconds ``unsaved`` has waited (0 when it does not wait): for metrics."""
        due = self._due.get(unsaved)
        if due is None:
            return 0.0
        return max(0.0, asyncio.get_running_loop().time() - (due - self._linger))

    def _fire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._due:
            unsaved, due = next(iter(self._due.items()))
            if due > now:
                self._timer = loop.call_at(due, self._fire)
                return
            del self._due[unsaved]
            unsaved.lingered()
