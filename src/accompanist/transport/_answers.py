"""The answers (acks and rejects) of one incoming connection of a ``TcpTransport``."""

from __future__ import annotations

import asyncio
import contextlib

from accompanist.transport._coalesce import CoalescingWriter
from accompanist.transport._peer import WRITE_HIGH_WATER
from accompanist.transport.frames import Frame, KeyRing, encode_frame

__all__ = ["Answers"]

_MAX_INFO = 1024  # characters of a reject's reason: answers stay tiny, never oversized


class Answers:
    """Queues answer frames for one incoming connection: they leave with the other frames of
    this event-loop turn, in one system call (see :class:`CoalescingWriter`). Answering never
    waits: a sender that does not read its answers gets a task that waits for the socket.

    Args:
        writer: the connection's stream writer.
        ring: this sidecar's key ring, or None (answers unsigned).
        max_frame: the largest frame body.
        tasks: where the drain tasks are kept (the transport cancels them when it closes).
    """

    def __init__(
        self, writer: asyncio.StreamWriter, ring: KeyRing | None, max_frame: int, tasks: set[asyncio.Task[None]]
    ) -> None:
        self.out = CoalescingWriter(writer, asyncio.get_running_loop())
        self._ring = ring
        self._max_frame = max_frame
        self._tasks = tasks
        self._drain_lock = asyncio.Lock()

    def send(self, frame: Frame, key_id: str | None = None) -> None:
        """Queue ``frame``, signed with ``key_id`` (that of the envelope it answers) when set."""
        if self.out.writer.transport.is_closing():
            return  # the sender is gone; it will learn nothing and retry
        if len(frame.info) > _MAX_INFO:
            frame = Frame(frame.type, frame.corr, info=frame.info[:_MAX_INFO] + "...")
        self.out.write(encode_frame(frame, ring=self._ring, max_frame=self._max_frame, key_id=key_id))
        if self.out.buffered > WRITE_HIGH_WATER:
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            self.out.flush()
            async with self._drain_lock:
                await self.out.writer.drain()
