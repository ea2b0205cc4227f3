"""What the outcome round needs from its engine: status changes under the session's lock.

A protocol, so :mod:`accompanist.engine.outcome` does not import the engine (which imports it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Protocol

from accompanist.engine.host import Host
from accompanist.engine.session import SessionRun
from accompanist.envelope import Envelope
from accompanist.failure import Failure
from accompanist.interpreters.common import Committed
from accompanist.store.base import SessionRecord, WriteBatch

__all__ = ["Coordinator"]


class Coordinator(Host, Protocol):
    """The engine as the outcome round sees it: status changes under the session's lock."""

    def session_lock(self, session_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Held for every status change of the session."""

    async def transition(
        self,
        run: SessionRun,
        status: str,
        *,
        failure: Failure | None = None,
        sends: Sequence[Envelope] = (),
        batch: WriteBatch | None = None,
        state: bytes | None = None,
        lazy: bool = False,
    ) -> SessionRecord:
        """Change the session's status (checked against the table), durably with ``sends``
        and ``batch``, then send; the caller holds the session's lock."""

    def control(self, run: SessionRun, dst: str, kind: str, payload: bytes, number: int = 0) -> Envelope:
        """A control envelope of ``run`` from this role to ``dst``."""

    async def write(self, run: SessionRun, envelopes: Sequence[Envelope] = (), batch: WriteBatch | None = None) -> None:
        """Store the run's pending journal (and, durably, ``envelopes``) without a status
        change, then send ``envelopes``; the caller holds the session's lock."""

    def peers_of(self, run: SessionRun) -> list[str]:
        """Every other role of the session's choreography."""

    async def query(self, run: SessionRun) -> None:
        """Ask the initiator for the outcome (best effort, not stored)."""

    async def resend(self, run: SessionRun, envelopes: Sequence[Envelope]) -> None:
        """Send again, best effort, envelopes that may have been lost (default mode)."""

    async def discover(self, run: SessionRun) -> list[Committed] | None:
        """This role's commits when the log names a transaction this process does not know:
        replay the session to meet it again (None: still unknown; the session is blocked)."""
