"""What a running session needs from its engine, as a protocol.

The session runner (:mod:`accompanist.engine.session`) talks to the engine only through this
protocol (and the outcome round through :class:`~accompanist.engine.coordinator.Coordinator`),
so neither imports the engine: the engine imports them, and there is no import circle.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from accompanist.engine.config import EngineConfig
from accompanist.engine.linger import Lingering
from accompanist.engine.metrics import Metrics
from accompanist.engine.persist import StoreGuard
from accompanist.engine.registry import TransactionRegistry
from accompanist.engine.timers import Timers
from accompanist.engine.trail import Trails
from accompanist.envelope import Envelope
from accompanist.store.base import AtomicScope
from accompanist.tracing import Tracing

__all__ = ["Host"]


class Host(Protocol):
    """The engine as a session runner sees it."""

    role: str
    config: EngineConfig
    durable: bool
    log: logging.Logger
    metrics: Metrics
    registry: TransactionRegistry
    guard: StoreGuard
    tracing: Tracing
    trails: Trails
    lingering: Lingering
    timers: Timers

    def atomic(self) -> Callable[[], contextlib.AbstractAsyncContextManager[AtomicScope]] | None:
        """The store's atomic scope for ``atomic=True`` transactions (fault-tolerant mode), or None."""

    async def emit(self, envelopes: Sequence[Envelope]) -> None:
        """Deliver envelopes that were just made durable (or, in default mode, send them)."""

    def spawn_background(self, coro: Any, name: str) -> None:
        """Run ``coro`` as a task the engine cancels when it stops."""
