"""Per-session delivery of incoming messages: in order per sender, early ones buffered,
duplicates dropped, a bounded buffer and a timeout on every receive."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from accompanist.envelope import Envelope
from accompanist.errors import BufferOverflowError

__all__ = ["Mailbox"]


class Mailbox:
    """Holds a session's incoming message envelopes until the projection asks for them.

    The projection asks for ``(src, seq)`` in its own order; an envelope that arrives before
    it is asked for waits in the buffer. An envelope whose ``seq`` was already consumed, or
    is already buffered, is a duplicate and is dropped.

    Args:
        session_id: for error messages.
        limit: how many envelopes may wait in memory at once.
        fetch: in fault-tolerant mode, reads an envelope back from the inbox: one that arrives
            beyond the limit is then left there (it is durable already) instead of failing the
            session, and read when it is asked for. Without it, one more fails the session.
    """

    def __init__(
        self,
        session_id: str,
        limit: int,
        fetch: Callable[[str, int], Awaitable[Envelope | None]] | None = None,
    ) -> None:
        self._session_id = session_id
        self._limit = limit
        self._fetch = fetch
        self._spilled: set[tuple[str, int]] = set()  # left in the inbox, beyond the limit
        self._buffer: dict[tuple[str, int], Envelope] = {}
        self._consumed: dict[str, int] = {}
        self._waiters: dict[tuple[str, int], asyncio.Future[Envelope]] = {}
        self._history: set[tuple[str, int]] = set()  # buffered from the inbox, not early arrivals
        self.duplicates = 0

    def offer(self, envelope: Envelope) -> bool:
        """Accept an incoming message envelope; return False if it was a duplicate.

        Raises:
            BufferOverflowError: the buffer is full (the caller fails the session).
        """
        key = (envelope.src, envelope.seq)
        if envelope.seq <= self._consumed.get(envelope.src, 0) or key in self._buffer or key in self._spilled:
            self.duplicates += 1
            return False
        waiter = self._waiters.pop(key, None)
        if waiter is not None and not waiter.done():
            self._consumed[envelope.src] = max(self._consumed.get(envelope.src, 0), envelope.seq)
            waiter.set_result(envelope)
            return True
        if len(self._buffer) - len(self._history) >= self._limit:
            if self._fetch is not None:
                self._spilled.add(key)
                return True
            raise BufferOverflowError(
                f"session {self._session_id}: more than {self._limit} early envelopes are waiting "
                f"(last from '{envelope.src}' #{envelope.seq}); raise the buffer limit if this is expected",
                session_id=self._session_id,
            )
        self._buffer[key] = envelope
        return True

    def preload(self, envelope: Envelope) -> None:
        """Put an envelope from the inbox back (a replay): the session's history, however
        long, is not bounded by the limit on envelopes that arrive early."""
        key = (envelope.src, envelope.seq)
        if envelope.seq > self._consumed.get(envelope.src, 0) and key not in self._buffer:
            self._buffer[key] = envelope
            self._history.add(key)

    async def take(self, src: str, seq: int, timeout: float | None) -> Envelope:
        """The envelope ``src -> here #seq``, waiting at most ``timeout`` seconds.

        Raises:
            TimeoutError: it did not arrive in time.
        """
        key = (src, seq)
        found = self._buffer.pop(key, None)
        if found is None and key in self._spilled and self._fetch is not None:
            found = await self._fetch(src, seq)
            if found is not None:
                self._spilled.discard(key)
        if found is not None:
            self._history.discard(key)
            self._consumed[src] = max(self._consumed.get(src, 0), seq)
            return found
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Envelope] = loop.create_future()
        self._waiters[key] = waiter
        # The deadline settles the waiter itself (cheaper than a timeout scope around it): the
        # waiter ends with the envelope or with the timeout, whichever comes first, so an
        # envelope handed over is never lost to a timeout that fires in the same turn.
        expiry = loop.call_later(timeout, _expire, waiter) if timeout is not None else None
        try:
            return await waiter
        finally:
            if expiry is not None:
                expiry.cancel()
            if self._waiters.get(key) is waiter:
                del self._waiters[key]

    def fail(self, exc: BaseException) -> None:
        """Wake every pending receive with ``exc`` (e.g. a failure broadcast by a peer)."""
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(exc)
        self._waiters.clear()

    def holds(self, src: str, seq: int) -> bool:
        """Whether the envelope ``src -> here #seq`` has arrived and waits to be taken."""
        return (src, seq) in self._buffer or (src, seq) in self._spilled

    def waiting_from(self) -> list[str]:
        """The sender of every envelope that arrived early and waits to be taken (for metrics)."""
        early = [src for (src, seq) in self._buffer if (src, seq) not in self._history]
        return early + [src for src, _ in self._spilled]

    @property
    def buffered(self) -> int:
        """How many envelopes wait in the buffer."""
        return len(self._buffer)


def _expire(waiter: asyncio.Future[Envelope]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
