"""Accompanist: resilient choreographic programming for Python.

Write a distributed interaction once, as an ``async def`` with a global view of every role;
run each role's part in a sidecar beside its service.
"""

from accompanist import testing
from accompanist._version import __version__
from accompanist.codec import PayloadCodec
from accompanist.errors import (
    Abort,
    AccompanistError,
    BufferOverflowError,
    CodecError,
    ConfigError,
    DefinitionError,
    FrameError,
    NondeterminismError,
    OverloadedError,
    ProjectionError,
    ReceiveTimeoutError,
    SessionCancelledError,
    SessionError,
    SessionFailedError,
    StoreCorruptError,
    StoreError,
    TransactionError,
    TransportError,
    UnknownChoreographyError,
)
from accompanist.interpreters import CentralRunner, run_central
from accompanist.language import App, Choreo, Choreography, Located, Role, Step, StepKind, choreography, roles

__all__ = [
    "Abort",
    "AccompanistError",
    "App",
    "BufferOverflowError",
    "CentralRunner",
    "Choreo",
    "Choreography",
    "CodecError",
    "ConfigError",
    "DefinitionError",
    "FrameError",
    "Located",
    "NondeterminismError",
    "OverloadedError",
    "PayloadCodec",
    "ProjectionError",
    "ReceiveTimeoutError",
    "Role",
    "SessionCancelledError",
    "SessionError",
    "SessionFailedError",
    "Step",
    "StepKind",
    "StoreCorruptError",
    "StoreError",
    "TransactionError",
    "TransportError",
    "UnknownChoreographyError",
    "__version__",
    "choreography",
    "roles",
    "run_central",
    "testing",
]
