"""Accompanist: resilient choreographic programming for Python.

Write a distributed interaction once, as an ``async def`` with a global view of every role;
run each role's part in a sidecar beside its service.
"""

from accompanist import testing
from accompanist._version import __version__
from accompanist.codec import PayloadCodec
from accompanist.engine.stepkey import StepKey, current_step
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
    TransactionFailedError,
    TransportError,
    UnknownChoreographyError,
    UnknownSessionError,
)
from accompanist.interpreters import CentralRunner, run_central
from accompanist.language import App, Choreo, Choreography, Located, Role, Step, StepKind, choreography, roles
from accompanist.language.transaction import Retry, Transaction, TxContext, transaction
from accompanist.sidecar import Sidecar, SidecarConfig

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
    "Retry",
    "Role",
    "SessionCancelledError",
    "SessionError",
    "SessionFailedError",
    "Sidecar",
    "SidecarConfig",
    "Step",
    "StepKey",
    "StepKind",
    "StoreCorruptError",
    "StoreError",
    "Transaction",
    "TransactionError",
    "TransactionFailedError",
    "TransportError",
    "TxContext",
    "UnknownChoreographyError",
    "UnknownSessionError",
    "__version__",
    "choreography",
    "current_step",
    "roles",
    "run_central",
    "testing",
    "transaction",
]
