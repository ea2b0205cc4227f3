"""Best-effort copies of the outcome round, and what they tell about whether a peer is reachable.

The outcome round nudges: a waiting role asks the initiator for the outcome, a waiting
initiator says its decision (or an order) again, the initiator answers a query. These copies
are sent best effort, outside the outbox. Two things used to go wrong on a loaded machine:

- a copy went out at every nudge, whether or not the last one had been acknowledged. On a link
  slower than the nudges the queue grew for as long as sessions waited, and the envelopes that
  would have ended them waited behind it: sessions stayed unfinished for good. Now a copy
  waits for its acknowledgement before the same envelope is sent again (:class:`Resender`).
- a default-mode initiator gave up on a role that had not answered within the receive
  timeout and declared ``failed`` ("not confirmed: unreachable") although the role was only
  slow. Now every acknowledgement and every envelope from a role counts (:class:`Reach`): a
  role is unreachable only when nothing came from it for the receive timeout and the last
  copy sent to it was refused, lost or not acknowledged within ``deliver_timeout``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import Any

from accompanist.envelope import Envelope
from accompanist.errors import AccompanistError
from accompanist.transport.base import Transport

__all__ = ["Reach", "Resender"]


class Reach:
    """What one run has seen of each peer: when it last showed it is reachable (an envelope of
    the session came from it, or it acknowledged one), and when a copy sent to it last went
    unacknowledged."""

    def __init__(self) -> None:
        self._heard: dict[str, float] = {}  # role -> monotonic time
        self._missed: dict[str, float] = {}

    def hear(self, role: str) -> None:
        """``role`` is reachable now."""
        self._heard[role] = time.monotonic()

    def miss(self, role: str) -> None:
        """A copy sent to ``role`` was refused, lost, or not acknowledged in time: it may be
        unreachable (a copy still on its way says nothing yet)."""
        self._missed[role] = time.monotonic()

    def silent(self, role: str, since: float, timeout: float, *, probed: bool) -> bool:
        """Whether ``role`` has been silent for ``timeout`` seconds (counted from ``since`` at
        the earliest) and, when it is being ``probed`` (sent copies), whether the latest copy
        that settled went unacknowledged: then it is unreachable, not just slow."""
        heard = self._heard.get(role)
        if time.monotonic() - max(since, heard or since) < timeout:
            return False
        if not probed:
            return True
        missed = self._missed.get(role)
        return missed is not None and (heard is None or missed >= heard)


class Resender:
    """Sends best-effort copies, one at a time per envelope.

    Args:
        transport: how envelopes travel.
        timeout: how long a copy waits for its acknowledgement (``deliver_timeout``).
        spawn: runs a coroutine as a background task of the engine.
    """

    def __init__(
        self, transport: Transport, timeout: float, spawn: Callable[[Coroutine[Any, Any, None], str], None]
    ) -> None:
        self._transport = transport
        self._timeout = timeout
        self._spawn = spawn
        self._pending: set[tuple[str, str, str, int]] = set()  # keys of copies on their way

    def send(self, reach: Reach, envelopes: list[Envelope]) -> None:
        """Send a copy of each envelope unless one is on its way already (it says the same;
        another would only queue behind it). ``reach`` learns how each copy fared."""
        for envelope in envelopes:
            key = envelope.key
            if key in self._pending:
                continue
            self._pending.add(key)
            self._spawn(self._copy(reach, envelope), f"resend-{envelope.dst}")

    async def _copy(self, reach: Reach, envelope: Envelope) -> None:
        try:
            await self._transport.send(envelope, wait=True, timeout=self._timeout)
        except (AccompanistError, OSError, TimeoutError):
            reach.miss(envelope.dst)  # lost, refused or unanswered: the next nudge sends it again
            return
        finally:
            self._pending.discard(envelope.key)
        reach.hear(envelope.dst)
