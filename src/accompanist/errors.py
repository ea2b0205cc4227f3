"""Every error Accompanist raises, in one tree.

Catch ``AccompanistError`` to catch them all; catch a branch to handle one layer::

    AccompanistError
    ├── DefinitionError            a choreography is written wrongly (found before or while it runs)
    ├── ProjectionError            a located value was opened at a role that does not own it
    ├── CodecError                 a value cannot cross a process boundary (unregistered type, bad bytes)
    │   └── PayloadTooLargeError   an envelope would exceed the frame limit (known before it is stored)
    ├── ConfigError                a sidecar option is missing or malformed
    ├── LifecycleError             an app's startup or shutdown hook failed (a failed start)
    ├── NondeterminismError        a replay produced a different step than the journal
    ├── TransportError             a peer cannot be reached, or a frame is malformed or unauthenticated
    │   ├── FrameError             one frame was rejected (bad length, bad signature, bad body)
    │   └── EnvelopeRejectedError  the peer refused an envelope, saying why (``code``, ``permanent``)
    ├── StoreError                 the durable store failed or holds something unreadable (retried)
    │   ├── StoreCorruptError      the store file/schema is damaged; refuse to start
    │   └── StoreInputError        a write batch is invalid: a bug or bad input, never retried
    ├── SessionError               one session cannot go on (others are unaffected)
    │   ├── SessionFailedError     a session ended in failure; carries the structured failure
    │   ├── ReceiveTimeoutError    an awaited envelope did not arrive in time
    │   ├── BufferOverflowError    too many early envelopes waited for one session
    │   ├── UnknownChoreographyError  no choreography of that name and version is registered
    │   ├── VersionUnavailableError   a role taking part does not serve the version a session needs
    │   ├── UnknownSessionError    no session with that id is known at this role
    │   ├── SessionConflictError   the session id is taken by a session of another choreography
    │   ├── SessionCancelledError  an operator cancelled the session
    │   ├── OutcomeDecidedError    a cancel came after the initiator had declared the outcome
    │   ├── TransitionRefusedError a status change the session's state does not allow (a lost race)
    │   └── OverloadedError        the sidecar runs as many sessions as it may; try again later
    └── TransactionError           a saga step failed
        ├── Abort                  raised by a commit to fail the saga on purpose (a business failure)
        └── TransactionFailedError a commit failed for good (business failure or retries used up)

Errors carry structured attributes (``session_id``, ``role``, ``seq`` ...) so callers can act on
them without parsing messages.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "Abort",
    "AccompanistError",
    "BufferOverflowError",
    "CodecError",
    "ConfigError",
    "DefinitionError",
    "EnvelopeRejectedError",
    "FrameError",
    "LifecycleError",
    "NondeterminismError",
    "OutcomeDecidedError",
    "OverloadedError",
    "PayloadTooLargeError",
    "ProjectionError",
    "ReceiveTimeoutError",
    "SessionCancelledError",
    "SessionConflictError",
    "SessionError",
    "SessionFailedError",
    "StoreCorruptError",
    "StoreError",
    "StoreInputError",
    "TransactionError",
    "TransactionFailedError",
    "TransitionRefusedError",
    "TransportError",
    "UnknownChoreographyError",
    "UnknownSessionError",
    "VersionUnavailableError",
]


class AccompanistError(Exception):
    """Root of every error raised by Accompanist."""


class DefinitionError(AccompanistError):
    """A choreography is written wrongly: bad roles, self-communication, a sync function..."""


class ProjectionError(AccompanistError):
    """A located value was used at a role that does not own it.

    Attributes:
        role: the role that tried to use the value.
        owners: the roles that own it.
        operation: what was attempted (``locally``, ``comm``, ...).
    """

    def __init__(self, role: str, owners: tuple[str, ...], operation: str, detail: str = "") -> None:
        self.role = role
        self.owners = owners
        self.operation = operation
        owned = ", ".join(owners) if owners else "no role"
        msg = f"{operation}: role '{role}' cannot open a value located at {owned}"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)


class CodecError(AccompanistError):
    """A value cannot be encoded for the wire, or received bytes cannot be decoded."""


class PayloadTooLargeError(CodecError):
    """An envelope would be larger than the frame limit, so no peer could ever accept it.

    Raised at the send, before anything is stored: the session fails with this reason instead
    of leaving an undeliverable envelope in the outbox.

    Attributes:
        size: the encoded size in bytes.
        limit: the largest size allowed.
    """

    def __init__(self, message: str, *, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(message)


class ConfigError(AccompanistError):
    """A sidecar option is missing or malformed."""


class LifecycleError(AccompanistError):
    """An app's startup or shutdown hook raised (see :mod:`accompanist.language.lifecycle`).

    A failed startup hook is a failed start: the sidecar releases what it opened and exits
    non-zero.

    Attributes:
        phase: ``startup`` or ``shutdown``.
        hook: the hook's qualified name.
        role: the role it ran for.
        cause: what the hook raised.
    """

    def __init__(self, phase: str, hook: str, role: str, cause: BaseException) -> None:
        self.phase = phase
        self.hook = hook
        self.role = role
        self.cause = cause
        super().__init__(f"{phase} hook {hook!r} failed for role '{role}': {type(cause).__name__}: {cause}")


class NondeterminismError(AccompanistError):
    """A replay produced a different step than the one recorded at the same index.

    The session is stopped and marked ``diverged``; it is never silently continued.
    """

    def __init__(self, session_id: str, step: int, expected: str, actual: str) -> None:
        self.session_id = session_id
        self.step = step
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"session {session_id} diverged at step {step}: the journal has {expected}, "
            f"the replay produced {actual} (was the choreography changed while it ran?)"
        )


class TransportError(AccompanistError):
    """A peer cannot be reached or answered wrongly."""


class FrameError(TransportError):
    """One frame was rejected: oversized, truncated, badly signed or not decodable."""


class EnvelopeRejectedError(TransportError):
    """The peer received an envelope and refused it, saying why.

    Attributes:
        code: a short stable word for why (``session-conflict``, ``unknown-choreography``,
            ``store-unavailable`` ...), or ``""`` when the peer gave none.
        permanent: the envelope can never be accepted (resending it is pointless): its session
            fails instead of retrying forever. Only an authenticated answer can be permanent.
    """

    def __init__(self, message: str, *, code: str = "", permanent: bool = False) -> None:
        self.code = code
        self.permanent = permanent
        super().__init__(message)


class StoreError(AccompanistError):
    """The durable store failed or holds something unreadable."""


class StoreCorruptError(StoreError):
    """The store is damaged or is not an Accompanist store; the sidecar refuses to start."""


class StoreInputError(StoreError):
    """A write batch is invalid (a bug or bad input): nothing of it was written.

    Unlike other store errors (a lost connection, a full disk), retrying cannot help, so the
    engine never retries it.
    """


class SessionError(AccompanistError):
    """One session cannot go on; other sessions are unaffected."""

    def __init__(self, message: str, *, session_id: str | None = None) -> None:
        self.session_id = session_id
        super().__init__(message)


class SessionFailedError(SessionError):
    """A session ended in failure.

    Attributes:
        session_id: the failed session.
        role: the role where it failed (where the transaction aborted or the step raised).
        reason: the failure's message.
        status: the terminal status (``failed``, ``compensated``, ``diverged``...).
        failure: the structured failure (an :class:`accompanist.failure.Failure`: role, step,
            transaction, error type, message), the same at every role and in every
            interpreter; None when unknown.
    """

    def __init__(self, session_id: str, role: str, reason: str, status: str = "failed", *, failure: Any = None) -> None:
        self.role = role
        self.reason = reason
        self.status = status
        self.failure = failure
        super().__init__(f"session {session_id} {status} at role '{role}': {reason}", session_id=session_id)


class ReceiveTimeoutError(SessionError):
    """An awaited envelope did not arrive within the receive timeout."""

    def __init__(self, session_id: str, src: str, seq: int, timeout: float) -> None:
        self.src = src
        self.seq = seq
        self.timeout = timeout
        super().__init__(
            f"session {session_id}: no envelope #{seq} from '{src}' within {timeout:g}s",
            session_id=session_id,
        )


class BufferOverflowError(SessionError):
    """More early envelopes arrived for one session than its buffer holds."""


class UnknownChoreographyError(SessionError):
    """No choreography of the requested name and version is registered here."""

    def __init__(self, name: str, version: int | None, known: dict[str, list[int]]) -> None:
        self.name = name
        self.version = version
        listing = ", ".join(f"{n} v{','.join(map(str, vs))}" for n, vs in sorted(known.items())) or "none"
        which = f"'{name}'" if version is None else f"'{name}' version {version}"
        super().__init__(f"unknown choreography {which}; registered: {listing}")


class VersionUnavailableError(SessionError):
    """A session cannot start: a role of the choreography is known not to serve its version.

    Raised at once by the initiator (nothing is stored or sent), instead of starting a session
    that would wait forever for a peer that refuses its envelopes.

    Attributes:
        choreography: the choreography's name.
        versions: the versions that were considered (the one asked for, or every one this
            sidecar serves).
        lacking: for each role that lacks one of them, the versions it serves (empty: none).
    """

    def __init__(self, choreography: str, versions: list[int], lacking: dict[str, list[int]]) -> None:
        self.choreography = choreography
        self.versions = versions
        self.lacking = lacking
        asked = ", ".join(f"v{v}" for v in versions)
        roles = "; ".join(
            f"role '{r}' serves {', '.join(f'v{v}' for v in vs) if vs else 'no version of it'}"
            for r, vs in sorted(lacking.items())
        )
        super().__init__(
            f"choreography {choreography!r} {asked} is not served by every role: {roles}; "
            "deploy the version to those roles first (or start a version they serve)"
        )


class UnknownSessionError(SessionError):
    """No session with that id is known at this role."""


class SessionConflictError(SessionError):
    """The session id is taken at this role by a session of another choreography or version."""


class SessionCancelledError(SessionError):
    """An operator cancelled the session."""


class OutcomeDecidedError(SessionError):
    """A cancel came too late: the initiator had already declared the outcome.

    Attributes:
        status: the outcome that stands (``completed``).
    """

    def __init__(self, message: str, *, session_id: str, status: str) -> None:
        self.status = status
        super().__init__(message, session_id=session_id)


class TransitionRefusedError(SessionError):
    """A session's status may not change that way now (another change won the race).

    Attributes:
        current: the status the session has.
        wanted: the status that was refused.
    """

    def __init__(self, session_id: str, current: str, wanted: str, why: str = "") -> None:
        self.current = current
        self.wanted = wanted
        detail = f": {why}" if why else ""
        super().__init__(f"session {session_id}: {current} -> {wanted} is not allowed{detail}", session_id=session_id)


class OverloadedError(SessionError):
    """The sidecar already runs as many sessions as it is allowed to; retry later."""


class TransactionError(AccompanistError):
    """A saga step failed."""


class Abort(TransactionError):  # noqa: N818 - the name is the verb users raise
    """Raise from a transaction's commit to fail the saga on purpose (a business failure).

    Args:
        reason: why the saga is aborted; every role sees it as the session's failure reason.
    """

    def __init__(self, reason: str, **details: Any) -> None:
        self.reason = reason
        self.details = details
        super().__init__(reason)


class TransactionFailedError(TransactionError):
    """A transaction's commit failed for good: the saga compensates everywhere.

    Attributes:
        role: where the commit ran.
        name: the transaction's name.
        step: its step index at that role.
        reason: why (the business error's message, or the last infrastructure error).
        error_type: the type name of the error behind it (``Abort``, a business error type, or
            the last infrastructure error's type).
        detail: that error's own message (``Abort``'s reason).
        uncertain: the retries were used up, so the commit may have taken effect; it is
            compensated like a committed one (with result None).
    """

    def __init__(
        self,
        role: str,
        name: str,
        step: int,
        reason: str,
        *,
        uncertain: bool = False,
        error_type: str = "",
        detail: str = "",
    ) -> None:
        self.role = role
        self.name = name
        self.step = step
        self.reason = reason
        self.uncertain = uncertain
        self.error_type = error_type or "TransactionFailedError"
        self.detail = detail or reason
        super().__init__(f"failed at role '{role}', step {step} (transaction {name}): {reason}")
