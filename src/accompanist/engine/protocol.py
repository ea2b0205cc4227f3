"""The payloads of control envelopes: what the roles of one session tell each other to agree.

Messages carry codec bytes of the choreography's values; control envelopes carry these small
JSON records instead. Every decoder here is total: bad bytes raise ``DefinitionError``, which
the engine turns into a rejected envelope, never a crash.
"""

from __future__ import annotations

from typing import TypeVar

import msgspec

from accompanist.errors import CodecError, DefinitionError
from accompanist.failure import Failure

__all__ = ["Compensate", "Outcome", "Query", "Report", "Undone", "decode", "encode", "failure_of"]

T = TypeVar("T")


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """The initiator's decision: ``completed``, ``compensated`` or ``failed``, and why."""

    status: str
    failure: Failure | None = None


class Undone(msgspec.Struct, frozen=True, kw_only=True):
    """A role compensated: all of its part (``batch`` 0, parallel mode) or one batch.

    Attributes:
        count: how many commits it compensated (so the initiator can tell ``compensated``,
            something was undone somewhere, from ``failed``, nothing had committed).
        batch: the ordered-compensation batch this answers (0 in parallel mode).
    """

    count: int = 0
    batch: int = 0


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """What a role committed, for a compensation in global reverse order: ``[clock, key]``
    pairs, each commit's Lamport time and idempotency key."""

    commits: list[tuple[int, str]] = []


class Compensate(msgspec.Struct, frozen=True, kw_only=True):
    """The initiator tells a role to compensate these commits now (ordered mode)."""

    batch: int
    keys: list[str]


class Query(msgspec.Struct, frozen=True, kw_only=True):
    """A role asks the initiator for the outcome, saying where it stands."""

    status: str
    failure: Failure | None = None


_ENCODER = msgspec.json.Encoder()


def encode(record: msgspec.Struct) -> bytes:
    """JSON bytes of one control record."""
    return _ENCODER.encode(record)


def decode(data: bytes, kind: type[T], what: str) -> T:
    """Read a control record of type ``kind`` (``what`` names it in the error).

    Raises:
        DefinitionError: the bytes are not such a record.
    """
    if kind is Outcome and data in (b"completed", b"compensated", b"failed"):
        return Outcome(status=data.decode())  # type: ignore[return-value]  # an envelope of version 1
    try:
        return msgspec.json.decode(data, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise DefinitionError(f"malformed {what} envelope: {exc}") from exc


def failure_of(data: bytes) -> Failure:
    """The failure a ``failure``, ``cancel`` or ``diverged`` envelope carries.

    Envelopes written by version 1 carried the reason as plain text; it becomes the message.
    """
    try:
        return Failure.decode(data)
    except CodecError:
        text = data.decode("utf-8", errors="replace")
        return Failure(role="?", step=None, transaction=None, error_type="SessionFailedError", message=text)
