"""Bounds of the peer port before and after authentication, and the state the watchdog reads.

Why apart from :mod:`accompanist.transport.tcp`: these are the settings an operator tunes
(``peer_*`` in the sidecar's configuration) and the reasons ``/metrics`` reports; the transport
only applies them.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass

from accompanist.errors import ConfigError

__all__ = ["FIRST", "FRAME", "IDLE", "CloseReason", "Inbound", "PeerLimits"]


class CloseReason(enum.StrEnum):
    """Why the peer port refused or closed a connection; the keys of ``TransportStats.closed``."""

    LIMIT_TOTAL = "limit-total"  # max_connections connections are open already
    LIMIT_PER_ADDRESS = "limit-per-address"  # max_connections_per_address from this address
    FIRST_FRAME_TIMEOUT = "first-frame-timeout"  # no frame header within first_frame_timeout of connecting
    FRAME_TIMEOUT = "frame-timeout"  # the rest of a frame did not come within frame_timeout of its header
    IDLE_TIMEOUT = "idle-timeout"  # nothing for idle_timeout with no answer owed
    UNAUTH_BUDGET = "unauth-budget"  # a large frame before authentication, budget exhausted


@dataclass(frozen=True)
class PeerLimits:
    """Bounds of the peer port, so unauthenticated clients cannot exhaust the sidecar.

    Attributes:
        max_connections: incoming connections open at once; beyond, a new one is closed at once.
        max_connections_per_address: the same, per remote IP address.
        first_frame_timeout: seconds from connect (after the TLS handshake, which is bounded
            by the same time) until the first frame header must have arrived.
        frame_timeout: seconds the rest of a frame may take once its 4-byte header arrived.
        idle_timeout: seconds a connection may stay silent while no answer is owed to it.
        unauth_frame_limit: the largest frame a connection that has not sent a verified frame
            yet (always, without HMAC key or TLS) may send freely, in bytes.
        unauth_budget: bytes that all such connections together may be reading in frames
            larger than ``unauth_frame_limit``; a frame that does not fit closes its connection.
    """

    max_connections: int = 512
    max_connections_per_address: int = 64
    first_frame_timeout: float = 10.0
    frame_timeout: float = 10.0
    idle_timeout: float = 300.0
    unauth_frame_limit: int = 64 * 1024
    unauth_budget: int = 8 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.max_connections_per_address < 1:
            raise ConfigError("max_connections and max_connections_per_address must be at least 1")
        if min(self.first_frame_timeout, self.frame_timeout, self.idle_timeout) <= 0:
            raise ConfigError("first_frame_timeout, frame_timeout and idle_timeout must be > 0")
        if self.unauth_frame_limit < 64 or self.unauth_budget < 0:
            raise ConfigError("unauth_frame_limit must be at least 64 and unauth_budget not negative")


FIRST, FRAME, IDLE = 0, 1, 2  # what an incoming connection is waiting for


class Inbound:
    """The state of one incoming connection that the watchdog looks at."""

    __slots__ = (
        "address",
        "authenticated",
        "deadline",
        "inflight",
        "peer",
        "phase",
        "reason",
        "roles",
        "task",
        "writer",
    )

    def __init__(
        self, task: asyncio.Task[None], writer: asyncio.StreamWriter, peer: str, address: str, deadline: float
    ) -> None:
        self.task = task
        self.writer = writer
        self.peer = peer
        self.address = address
        self.phase = FIRST
        self.deadline = deadline
        self.inflight = 0
        self.authenticated = False
        self.reason: CloseReason | None = None
        # With mutual TLS: the roles the client's certificate may speak for (None without TLS).
        self.roles: frozenset[str] | None = None
