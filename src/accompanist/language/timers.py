"""Durable timers in the choreography language: ``ch.sleep``, ``ch.sleep_until``, ``ch.cancel_after``.

Why a step and not a plain ``asyncio.sleep`` in user code: a sleep's deadline must be computed
once, when the step first runs, and remembered, so that a sidecar that crashed and replays the
session waits for the same instant instead of starting the wait over. So a sleep is a step of
one role (kind ``sleep``) whose journaled value is its deadline (UNIX seconds); how the role
then waits is the interpreter's business: the central interpreter and the test runners sleep
on the event loop's clock (a virtual clock skips it), the fault-tolerant engine parks the
session without a task and wakes it from one engine-wide timer.

A saga deadline (``ch.cancel_after``) is a step of the initiator (kind ``deadline``) whose
journaled value is the instant after which the session is cancelled, through the same path as
an operator's cancel, unless its outcome was decided first.

These are written once here, as a mixin of :class:`~accompanist.language.choreo.Choreo`, on two
hooks an interpreter may override (:meth:`TimerOps._wait_until` and
:meth:`TimerOps._cancel_at`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from accompanist.errors import DefinitionError
from accompanist.language.located import ABSENT, Located, make_located
from accompanist.language.roles import Role
from accompanist.language.steps import StepKind

__all__ = ["DeadlineOf", "TimerOps", "deadline_of_datetime", "seconds_of", "wall_clock"]

DeadlineOf = Callable[[float], float]
"""Given "now" (UNIX seconds, from the interpreter's clock), the deadline (UNIX seconds)."""


def wall_clock() -> float:
    """UNIX seconds as the running event loop sees them: the wall clock plus however far the
    loop's clock has run ahead of the monotonic clock it normally is.

    On an ordinary loop (``loop.time()`` is ``time.monotonic()``) this is ``time.time()``. On a
    virtual clock (``ac.testing.virtual_clock``) it moves with the virtual time, so "now + 1 h"
    passes after an hour of virtual time, for ``ch.now``, ``ch.sleep`` and the engine's timers
    alike, with no state to share between them.
    """
    return time.time() + (asyncio.get_running_loop().time() - time.monotonic())


def seconds_of(value: Any, operation: str) -> float:
    """A duration in seconds, checked: a finite, non-negative number.

    Raises:
        DefinitionError: anything else (a bool, a string, a negative or infinite number).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DefinitionError(f"{operation}: seconds must be a number, got {type(value).__name__} {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise DefinitionError(f"{operation}: seconds must be finite and >= 0, got {value!r}")
    return seconds


def deadline_of_datetime(when: Any, operation: str) -> float:
    """The UNIX time of an aware ``datetime``.

    Raises:
        DefinitionError: ``when`` is not a datetime, or is naive (no time zone: which instant
            it means would depend on the sidecar's local zone).
    """
    if not isinstance(when, dt.datetime):
        raise DefinitionError(f"{operation}: expected an aware datetime, got {type(when).__name__} {when!r}")
    if when.tzinfo is None or when.tzinfo.utcoffset(when) is None:
        raise DefinitionError(
            f"{operation}: the datetime {when.isoformat()} is naive (no time zone); "
            "pass an aware one, e.g. datetime.now(UTC) + timedelta(hours=1)"
        )
    return when.timestamp()


class TimerOps:
    """The timer operations of :class:`~accompanist.language.choreo.Choreo`."""

    if TYPE_CHECKING:  # provided by Choreo

        @property
        def census(self) -> tuple[Role, ...]: ...

        def _check(self, role: Any, operation: str) -> Role: ...

        def _real(self, role: Role) -> Role: ...

        def _here(self, role: Role) -> bool: ...

        async def _run_local(
            self, role: Role, kind: StepKind, name: str, thunk: Callable[[], Awaitable[Any]]
        ) -> Any: ...

    # -- hooks ------------------------------------------------------------------------------
    def _clock(self) -> float:
        """The time for deadlines: :func:`wall_clock`."""
        return wall_clock()

    async def _wait_until(self, role: Role, name: str, deadline_of: DeadlineOf) -> None:
        """Run the ``sleep`` step at ``role`` (which is here): journal the deadline, then wait.

        By default the wait is an ``asyncio.sleep`` on the loop's clock, so a virtual clock
        (``ac.testing.virtual_clock``) skips it.
        """

        async def thunk() -> float:
            return deadline_of(self._clock())

        deadline = await self._run_local(role, StepKind.SLEEP, name, thunk)
        await asyncio.sleep(max(0.0, float(deadline) - self._clock()))

    async def _cancel_at(self, role: Role, deadline_of: DeadlineOf, reason: str) -> None:
        """Run the ``deadline`` step at the initiator ``role`` (which is here): journal the
        instant and arm the cancel. By default the step is journaled and nothing is armed (an
        interpreter without sessions to cancel)."""

        async def thunk() -> float:
            return deadline_of(self._clock())

        await self._run_local(role, StepKind.DEADLINE, "cancel_after", thunk)

    # -- what users call --------------------------------------------------------------------
    async def sleep(self, role: Role, seconds: float) -> Located[None]:
        """``role`` waits ``seconds``; the other roles go on (they wait only for its next message).

        The deadline is computed once, when the step first runs, and journaled: a replay after
        a crash waits for the same instant (and not at all if it passed while the sidecar was
        down). In fault-tolerant mode a long sleep holds no task: the session is ``parked``
        until the deadline.

        Raises:
            DefinitionError: ``role`` is not in the census, or ``seconds`` is not a finite
                number >= 0.
        """
        self._check(role, "sleep")
        wait = seconds_of(seconds, "sleep")
        real = self._real(role)
        if not self._here(real):
            return make_located((real,), ABSENT)
        await self._wait_until(real, "sleep", lambda now: now + wait)
        return make_located((real,), None)

    async def sleep_until(self, role: Role, when: dt.datetime | Located[dt.datetime]) -> Located[None]:
        """``role`` waits until ``when`` (an aware ``datetime``, or one located at ``role``).

        Raises:
            DefinitionError: ``role`` is not in the census, or ``when`` is naive or not a
                datetime.
            ProjectionError: ``when`` is a located value ``role`` does not own.
        """
        self._check(role, "sleep_until")
        real = self._real(role)
        if isinstance(when, Located):
            if not self._here(real):
                return make_located((real,), ABSENT)
            opened = when._open(real, "sleep_until")
            deadline = deadline_of_datetime(opened, "sleep_until")
        else:
            deadline = deadline_of_datetime(when, "sleep_until")  # checked at every role alike
            if not self._here(real):
                return make_located((real,), ABSENT)
        await self._wait_until(real, "sleep_until", lambda _now: deadline)
        return make_located((real,), None)

    async def cancel_after(self, seconds: float, *, reason: str = "") -> None:
        """A saga deadline: cancel this session if its outcome is not decided ``seconds`` from
        now ("cancel the order if payment has not completed in 15 minutes").

        A step of the initiator (the choreography's first role; the others skip it). When the
        deadline passes before the initiator declared the outcome, the session is cancelled
        exactly as by an operator: every role compensates what it committed and every role
        ends ``compensated`` (or ``failed``, if nothing had committed), with a
        ``SessionCancelledError`` naming ``reason``. The deadline is journaled, so it fires at
        the same instant after a crash (at once, if the sidecar was down past it); it is
        cleared when the session ends.

        Raises:
            DefinitionError: ``seconds`` is not a finite number >= 0, or this is called inside
                an enclave or a sub-choreography the initiator takes no part in.
        """
        wait = seconds_of(seconds, "cancel_after")
        if not isinstance(reason, str):
            raise DefinitionError(f"cancel_after: reason must be a string, got {type(reason).__name__}")
        initiator = self._session_initiator()
        if initiator not in {self._real(r) for r in self.census}:
            raise DefinitionError(
                f"cancel_after: a step of the initiator '{initiator.name}', which does not take part here "
                "(an enclave or call without it)"
            )
        if not self._here(initiator):
            return
        why = reason or f"the saga deadline of {wait:g} s passed"
        await self._cancel_at(initiator, lambda now: now + wait, why)

    def _session_initiator(self) -> Role:
        """The session's initiator (a real role); interpreters that know the choreography say."""
        return self._real(self.census[0])
