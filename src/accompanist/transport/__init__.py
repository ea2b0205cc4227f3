"""Transports: how envelopes move between sidecars.

``Transport`` is the protocol the session engine talks to; ``TcpTransport`` is the one
sidecars use between machines, ``MemoryNetwork`` hands out in-process transports with
injectable faults for tests. Both use the wire format of :mod:`accompanist.transport.frames`.
"""

from accompanist.transport.base import Handler, Transport, TransportStats
from accompanist.transport.frames import DEFAULT_MAX_FRAME, Frame, FrameType, InvalidFrameError, KeyRing, Reason
from accompanist.transport.memory import FaultPlan, FaultStats, MemoryNetwork, MemoryTransport
from accompanist.transport.tcp import TcpTransport
from accompanist.transport.tls import tls_contexts

__all__ = [
    "DEFAULT_MAX_FRAME",
    "FaultPlan",
    "FaultStats",
    "Frame",
    "FrameType",
    "Handler",
    "InvalidFrameError",
    "KeyRing",
    "MemoryNetwork",
    "MemoryTransport",
    "Reason",
    "TcpTransport",
    "Transport",
    "TransportStats",
    "tls_contexts",
]
