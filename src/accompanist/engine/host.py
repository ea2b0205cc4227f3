"""What a running session needs from its engine, as a protocol.

The session runner (:mod:`accompanist.engine.session`) and the outcome round
(:mod:`accompanist.engine.outcome`) talk to the engine only through these protocols, so they
do not import the engine and the engine imports them: no import circle.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from accompanist.engine.config import EngineConfig
from accompanist.engine.metrics import Metrics
from accompanist.engine.persist import StoreGuard
from accompanist.engine.registry import TransactionRegistry
from accompanist.envelope import Envelope
from accompanist.failure import Failure
from accompanist.store.base import AtomicScope, SessionRecord, WriteBatch

if TYPE_CHECKING:
    from accompanist.engine.session import SessionRun
    from accompanist.interpreters.common import Committed

__all__ = ["Coordinator", "Host"]


class Host(Protocol):
    """The engine as a session runner sees it."""

    role: str
    config: EngineConfig
    durable: bool
    log: logging.Logger
    metrics: Metrics
    registry: TransactionRegistry
    guard: StoreGuard

    def atomic(self) -> Callable[[], contextlib.AbstractAsyncContextManager[AtomicScope]] | None:
        """The store's atomic scope for ``atomic=True`` transactions (fault-tolerant mode), or None."""

    async def emit(self, envelopes: Sequence[Envelope]) -> None:
        """Deliver envelopes that were just made durable (or, in default mode, send them)."""


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
