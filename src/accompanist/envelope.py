"""The envelope: the one record that travels between sidecars."""

from __future__ import annotations

import enum

import msgspec

__all__ = ["CONTROL_SEQ", "MESSAGE_KINDS", "Envelope", "EnvelopeKind"]


class EnvelopeKind(enum.StrEnum):
    """What an envelope carries."""

    VALUE = "value"  # a communicated value (payload: codec bytes)
    SELECT = "select"  # a branch label (payload: codec bytes)
    FAILURE = "failure"  # the session failed at src; every role compensates (payload: reason)
    DONE = "done"  # src finished its part of a saga (to the initiator)
    OUTCOME = "outcome"  # the initiator's final decision (payload: status)
    HELLO = "hello"  # src (re)started: retry what you hold for it now (session_id empty)


MESSAGE_KINDS = frozenset({EnvelopeKind.VALUE, EnvelopeKind.SELECT})

CONTROL_SEQ: dict[str, int] = {
    EnvelopeKind.FAILURE: -1,
    EnvelopeKind.DONE: -2,
    EnvelopeKind.OUTCOME: -3,
    EnvelopeKind.HELLO: 0,
}


class Envelope(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """One message between two roles of one session.

    Identity is ``(session_id, src, dst, seq)``: receivers deliver in ``seq`` order per
    ``(session, src -> dst)`` and drop duplicates. Messages use ``seq >= 1``; control
    envelopes, at most one of each kind per direction and session, use the fixed negative
    numbers in :data:`CONTROL_SEQ`, so one unique key covers both.

    Attributes:
        session_id: the session (UUIDv7 text).
        choreography: name of the choreography, so a peer can start its part lazily.
        version: its version; a peer without that version rejects the envelope.
        src: sending role.
        dst: receiving role.
        seq: position on ``src -> dst`` within the session, from 1.
        kind: an :class:`EnvelopeKind` value.
        payload: codec bytes (value/select) or UTF-8 text (control kinds).
        headers: W3C trace context (``traceparent``, ``tracestate``) and other metadata.
        auth: the id of the key whose HMAC signs the frame ("" when unsigned).
    """

    session_id: str
    choreography: str
    version: int
    src: str
    dst: str
    seq: int
    kind: str
    payload: bytes = b""
    headers: dict[str, str] = {}
    auth: str = ""

    @property
    def key(self) -> tuple[str, str, str, int]:
        """The identity ``(session_id, src, dst, seq)``."""
        return (self.session_id, self.src, self.dst, self.seq)
