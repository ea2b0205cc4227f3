"""Small pieces of talking to a NATS client that the JetStream transport needs: answering one
message whatever state the connection is in, saying "still working", and closing.

Why apart: each is a workaround for how the client behaves when the broker is away (answers
that may fail, a close that may raise a cancellation of its own), kept out of the transport's
own logic.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

__all__ = ["KeepAlive", "disconnect", "settle"]


class KeepAlive:
    """Tells the broker every ``period`` seconds that a slow handler is still at ``msg``, so it
    does not redeliver it meanwhile (a timer, not a task, while all is quick)."""

    def __init__(self, msg: Msg, period: float, tasks: set[asyncio.Task[None]]) -> None:
        self._msg = msg
        self._period = period
        self._tasks = tasks
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_later(period, self._fire)

    def _fire(self) -> None:
        task = self._loop.create_task(settle(self._msg.in_progress()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._timer = self._loop.call_later(self._period, self._fire)

    def stop(self) -> None:
        self._timer.cancel()


async def disconnect(nc: Client) -> None:
    """Close the client, whatever state the broker is in."""
    try:
        await nc.close()
    except (nats.errors.Error, OSError, TimeoutError):
        pass
    except asyncio.CancelledError:
        # With the broker gone the client's close can end in a CancelledError of its own
        # (a socket it cancelled); only a cancellation of our task must go on.
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise


async def settle(answer: Any) -> None:
    """Send an ack, nak, term or progress note; a lost one only means a redelivery."""
    with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
        await answer
