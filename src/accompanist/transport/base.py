"""The ``Transport`` protocol: deliver envelopes between sidecars."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from accompanist.envelope import Envelope

__all__ = ["Handler", "Transport", "TransportStats"]

Handler = Callable[[Envelope], Awaitable[None] | None]
"""Accepts one incoming envelope. Returning None means *accepted now*; returning an awaitable
(a coroutine, or a future the handler settles) means *accepted* when it completes (in
fault-tolerant mode: once the envelope is safely in the inbox). Either way the transport then
acknowledges it. Raising, at once or from the awaitable, means *rejected*: the transport
answers the sender with the error's message (and counts it). A plain ``async def`` handler is
the simple case; a handler that can often decide at once saves a task per envelope."""


@dataclass
class TransportStats:
    """Counters (and a few gauges) a transport keeps for ``/metrics`` and for tests."""

    sent: int = 0
    received: int = 0
    acked: int = 0
    reconnects: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    #: incoming connections refused or closed by a bound of the peer port, by reason
    closed: Counter[str] = field(default_factory=Counter)
    #: incoming connections open now
    connections: int = 0
    #: bytes of frames being read on connections that have not authenticated yet (over the
    #: per-frame allowance, i.e. what draws on the shared budget)
    unauth_bytes: int = 0
    #: TLS connections that failed, by ``(direction, reason)``: ``in`` for connections to our
    #: listener, ``out`` for ours to peers; reasons are ``TlsFailure`` values
    tls_failed: Counter[tuple[str, str]] = field(default_factory=Counter)


class Transport(Protocol):
    """Moves envelopes between sidecars addressed by role name."""

    stats: TransportStats

    async def start(self, handler: Handler) -> None:
        """Start receiving; ``handler`` is called for every authenticated, well-formed envelope."""

    async def send(self, envelope: Envelope, *, wait: bool = True, timeout: float | None = None) -> None:
        """Send ``envelope`` to the sidecar of ``envelope.dst``.

        With ``wait=True`` return only once the peer's handler accepted it; raise
        ``TransportError`` if it could not be delivered, was rejected, or no answer came within
        ``timeout``. With ``wait=False`` hand it to the connection and return (at-most-once).
        """

    def post(self, envelope: Envelope, timeout: float | None = None) -> asyncio.Future[None]:
        """Start sending ``envelope`` and wait for nothing: the returned future ends as
        ``send(envelope, wait=True, timeout=timeout)`` would (done when the peer accepted it,
        or with its ``TransportError``), so a caller that sends many envelopes (the relay)
        needs no task per envelope. Must be called with the event loop running."""

    async def close(self) -> None:
        """Stop receiving and close every connection."""
