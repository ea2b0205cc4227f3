"""What tells a session's run to stop or wake: the driver's signals and the run's waiter."""

from __future__ import annotations

import asyncio

__all__ = ["Park", "Signal", "StartRefused", "expire"]


class Park(Exception):  # noqa: N818 - a signal, not an error
    """The session waits without a task: a receive timed out in fault-tolerant mode.

    Attributes:
        awaited: ``(src, seq)`` of the envelope it waits for.
    """

    def __init__(self, what: str, awaited: tuple[str, int]) -> None:
        self.awaited = awaited
        super().__init__(what)


class StartRefused(Exception):  # noqa: N818 - a signal, not an error
    """A session started through the API could not be made durable before its first effect:
    the start is refused (the caller hears why) and the run stops without a trace."""


class Signal:
    """Something of the outcome round arrived (an ``asyncio.Event`` without its waiter queue:
    only the run's own task ever waits on it, see :meth:`SessionRun.wait_for`)."""

    __slots__ = ("flag", "waiter")

    def __init__(self) -> None:
        self.flag = False
        self.waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        """Raise the flag and wake the waiting run."""
        self.flag = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def is_set(self) -> bool:
        """Whether something arrived since the run last looked."""
        return self.flag


def expire(waiter: asyncio.Future[None]) -> None:
    """End ``waiter`` with ``TimeoutError`` (a deadline), unless it ended already."""
    if not waiter.done():
        waiter.set_exception(TimeoutError())
