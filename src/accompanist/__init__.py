"""Accompanist: resilient choreographic programming for Python.

Write a distributed interaction once, as an ``async def`` with a global view of every role;
run each role's part in a sidecar beside its service.
"""

from typing import TYPE_CHECKING, Any

from accompanist import testing
from accompanist._version import __version__
from accompanist.codec import PayloadCodec
from accompanist.engine.config import CompensationOrder, EngineConfig, Mode
from accompanist.engine.stepkey import StepKey, current_step
from accompanist.errors import (
    Abort,
    AccompanistError,
    BufferOverflowError,
    CodecError,
    ConfigError,
    DefinitionError,
    EnvelopeRejectedError,
    FrameError,
    LifecycleError,
    NondeterminismError,
    OutcomeDecidedError,
    OverloadedError,
    PayloadTooLargeError,
    ProjectionError,
    ReceiveTimeoutError,
    SessionCancelledError,
    SessionConflictError,
    SessionError,
    SessionFailedError,
    StoreCorruptError,
    StoreError,
    StoreInputError,
    TransactionError,
    TransactionFailedError,
    TransitionRefusedError,
    TransportError,
    UnknownChoreographyError,
    UnknownSessionError,
    VersionUnavailableError,
)
from accompanist.failure import Failure
from accompanist.interpreters import CentralRunner, run_central
from accompanist.language import App, Choreo, Choreography, Located, Role, Step, StepKind, choreography, roles
from accompanist.language.transaction import Retry, Transaction, TxContext, transaction

if TYPE_CHECKING:
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
    "CompensationOrder",
    "ConfigError",
    "DefinitionError",
    "EngineConfig",
    "EnvelopeRejectedError",
    "Failure",
    "FrameError",
    "LifecycleError",
    "Located",
    "Mode",
    "NondeterminismError",
    "OutcomeDecidedError",
    "OverloadedError",
    "PayloadCodec",
    "PayloadTooLargeError",
    "ProjectionError",
    "ReceiveTimeoutError",
    "Retry",
    "Role",
    "SessionCancelledError",
    "SessionConflictError",
    "SessionError",
    "SessionFailedError",
    "Sidecar",
    "SidecarConfig",
    "Step",
    "StepKey",
    "StepKind",
    "StoreCorruptError",
    "StoreError",
    "StoreInputError",
    "Transaction",
    "TransactionError",
    "TransactionFailedError",
    "TransitionRefusedError",
    "TransportError",
    "TxContext",
    "UnknownChoreographyError",
    "UnknownSessionError",
    "VersionUnavailableError",
    "__version__",
    "choreography",
    "current_step",
    "roles",
    "run_central",
    "testing",
    "transaction",
]


def __getattr__(name: str) -> Any:
    """``Sidecar`` and ``SidecarConfig`` are imported on first use: the sidecar brings the HTTP
    server and client (aiohttp, about half a second of start-up), which a process that only
    defines choreographies, runs a service or the CLI's other commands never needs."""
    if name in ("Sidecar", "SidecarConfig"):
        from accompanist import sidecar

        return getattr(sidecar, name)
    raise AttributeError(f"module 'accompanist' has no attribute {name!r}")
