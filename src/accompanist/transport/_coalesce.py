"""Frames written to one connection in one event-loop turn leave in one system call.

Why: a ``write`` on a loopback (or any) TCP socket is a system call, and on the receiving
machine a wake-up; the installed event loops (asyncio's and uvloop's) try to send at once on
every ``write``. Under load a sidecar answers many envelopes and sends many more on the same
connection within one turn of its event loop, so collecting them and writing them together
(``writelines``: one ``writev``) costs one system call instead of one per frame. The first
frame of a turn still leaves at once: a session alone on the line (one token through a chain)
must not wait for whatever else its task does before it next yields.
"""

from __future__ import annotations

import asyncio

__all__ = ["CoalescingWriter"]


class CoalescingWriter:
    """Buffers frames for one stream until the end of the current event-loop turn.

    Args:
        writer: the connection's stream writer.
        loop: the running event loop.
    """

    __slots__ = ("_frames", "_loop", "_scheduled", "_size", "writer")

    def __init__(self, writer: asyncio.StreamWriter, loop: asyncio.AbstractEventLoop) -> None:
        self.writer = writer
        self._loop = loop
        self._frames: list[bytes] = []
        self._size = 0
        self._scheduled = False

    def write(self, data: bytes) -> None:
        """Write one encoded frame: the first of this turn at once (a lone envelope waits for
        nothing), the ones after it with the rest of the turn's, in one system call."""
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)
            if not self._frames and not self.writer.transport.is_closing():
                self.writer.write(data)
                return
        self._frames.append(data)
        self._size += len(data)

    def flush(self) -> None:
        """Hand everything queued to the socket now (one system call). A closed connection
        drops it: its senders learn that from the lost connection."""
        self._scheduled = False
        frames = self._frames
        if not frames:
            return
        self._frames, self._size = [], 0
        if self.writer.transport.is_closing():
            return
        if len(frames) == 1:
            self.writer.write(frames[0])
        else:
            self.writer.writelines(frames)

    @property
    def buffered(self) -> int:
        """Bytes not yet taken by the socket: queued here plus the transport's own buffer."""
        return self._size + self.writer.transport.get_write_buffer_size()
