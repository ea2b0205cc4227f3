"""The timer steps of a live session: ``ch.sleep``/``ch.sleep_until`` and ``ch.cancel_after``.

A mixin of :class:`~accompanist.engine.session.SessionRun` (see
:mod:`accompanist.engine.session_tx` for the pattern). A timer step is a journaled local step
whose value is a deadline in UNIX seconds, made durable before it is used (like ``ch.now``):
a replay after a crash gets the same deadline back, never one computed from the new "now".

Then a sleep waits. In default mode, and in fault-tolerant mode for a wait shorter than
``sleep_in_task`` seconds, it waits in the session's task (woken early if the session is
cancelled or failed elsewhere). A longer wait in fault-tolerant mode raises :class:`Sleeping`:
the driver parks the session (``parked``, "sleeping until ..."), drops its task and arms the
engine's one timer (:mod:`accompanist.engine.timers`), which resumes it by replay at the
deadline; the replayed sleep step then finds its deadline passed and goes on.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import TYPE_CHECKING, Any

from accompanist.engine.host import Host
from accompanist.engine.signals import Park
from accompanist.engine.timers import CANCEL, with_timer_state
from accompanist.language.choreo import LocalThunk
from accompanist.language.steps import Step
from accompanist.language.timers import DeadlineOf
from accompanist.store.base import SessionRecord

__all__ = ["Sleeping", "TimerSteps", "iso"]


def iso(deadline: float) -> str:
    """A deadline as an ISO 8601 UTC time, for people (park reasons, logs)."""
    try:
        return dt.datetime.fromtimestamp(deadline, dt.UTC).isoformat(timespec="milliseconds")
    except (OverflowError, ValueError, OSError):  # past year 9999 (ch.sleep(role, 1e12) is legal)
        return f"UNIX time {deadline:.3f}"


class Sleeping(Park):
    """The session sleeps until ``until`` (UNIX seconds) without a task: park it, arm its timer.

    Attributes:
        until: the journaled deadline.
    """

    def __init__(self, until: float) -> None:
        self.until = until
        super().__init__(f"sleeping until {iso(until)}", ("", 0))


class TimerSteps:
    """The timer steps of a session run (see the module's docstring)."""

    host: Host
    record: SessionRecord
    durable: bool
    stop: BaseException | None

    if TYPE_CHECKING:  # provided by SessionRun

        @property
        def session_id(self) -> str: ...

        async def local(self, step: Step, thunk: LocalThunk) -> Any: ...

        async def wait_for(self, condition: Any, timeout: float | None) -> None: ...

    async def _deadline(self, step: Step, deadline_of: DeadlineOf) -> float:
        """Run (or recall) the step whose value is its deadline; durable before it is used."""
        timers = self.host.timers

        async def thunk() -> float:
            return deadline_of(timers.now())

        return float(await self.local(step, thunk))

    async def sleep(self, step: Step, deadline_of: DeadlineOf) -> None:
        """Wait until the step's journaled deadline: in the task, or parked (see the module).

        Raises:
            Sleeping: fault-tolerant mode and a long wait: the driver parks the session.
        """
        deadline = await self._deadline(step, deadline_of)
        remaining = deadline - self.host.timers.now()
        if remaining <= 0:
            return
        if self.durable and remaining >= self.host.config.sleep_in_task:
            raise Sleeping(deadline)
        with contextlib.suppress(TimeoutError):
            await self.wait_for(lambda: self.stop is not None, remaining)
        if self.stop is not None:
            raise self.stop  # decided elsewhere (a cancel) while it slept

    async def cancel_at(self, step: Step, deadline_of: DeadlineOf, reason: str) -> None:
        """Run (or recall) the saga deadline at the initiator and arm it; the record carries it
        too (written with its next change), so a restart re-arms it without a replay."""
        deadline = await self._deadline(step, deadline_of)
        self.record.state = with_timer_state(self.record.state, cancel_at=deadline, cancel_reason=reason)
        self.host.timers.arm(self.session_id, CANCEL, deadline)
