"""The envelope: the one record that travels between sidecars."""

from __future__ import annotations

import enum

import msgspec

__all__ = ["CONTROL_SEQ", "MESSAGE_KINDS", "Envelope", "EnvelopeKind", "batch_of", "control_seq", "number_of"]


class EnvelopeKind(enum.StrEnum):
    """What an envelope carries.

    Messages (``value``, ``select``) are what the choreography sends. The rest drive the
    outcome round of a session, coordinated by its initiator (see ``accompanist.engine.outcome``).
    """

    VALUE = "value"  # a communicated value (payload: codec bytes)
    SELECT = "select"  # a branch label (payload: codec bytes)
    START = "start"  # initiator -> a role whose part does not begin with a receive: start it
    FAILURE = "failure"  # to the initiator: src failed (a report); from it: the decided failure
    DONE = "done"  # src finished its part (to the initiator; payload: the roles it sent to)
    OUTCOME = "outcome"  # the initiator's final decision (payload: status and failure)
    CANCEL = "cancel"  # to the initiator: an operator asked src to cancel the session
    QUERY = "query"  # to the initiator: src waits long for the outcome; tell it again (not stored)
    DIVERGED = "diverged"  # src's replay diverged from its journal: the session needs an operator
    RESUME = "resume"  # src resumed a diverged session: resume yours too
    UNDONE = "undone"  # to the initiator: src compensated (all of its part, or one batch)
    REPORT = "report"  # to the initiator: what src committed, to compensate in global order
    COMPENSATE = "compensate"  # initiator -> src: compensate these commits now (one batch)
    HELLO = "hello"  # src (re)started: retry what you hold for it now (session_id empty)


MESSAGE_KINDS = frozenset({EnvelopeKind.VALUE, EnvelopeKind.SELECT})

CONTROL_SEQ: dict[str, int] = {
    EnvelopeKind.FAILURE: -1,
    EnvelopeKind.DONE: -2,
    EnvelopeKind.OUTCOME: -3,
    EnvelopeKind.START: -4,
    EnvelopeKind.CANCEL: -5,
    EnvelopeKind.QUERY: -6,
    EnvelopeKind.UNDONE: -9,
    EnvelopeKind.REPORT: -10,
    EnvelopeKind.HELLO: 0,
}
"""The fixed ``seq`` of control envelopes sent at most once per direction and session. Those
that may be sent again (a batch of an ordered compensation, a divergence reported once per
replay) use :func:`control_seq` with a number of their own."""

_BATCH_BASE = 100
_DIVERGED_BASE = 1_000_000
_RESUME_BASE = 2_000_000


def control_seq(kind: str, number: int = 0) -> int:
    """The ``seq`` of a control envelope: fixed per kind, or numbered (ordered-compensation
    batch ``number``; the divergence or resume of replay ``number``)."""
    if kind in (EnvelopeKind.COMPENSATE, EnvelopeKind.UNDONE) and number > 0:
        return -(_BATCH_BASE + number)
    if kind == EnvelopeKind.DIVERGED:
        return -(_DIVERGED_BASE + number)
    if kind == EnvelopeKind.RESUME:
        return -(_RESUME_BASE + number)
    return CONTROL_SEQ[kind]


def number_of(kind: str, seq: int) -> int:
    """The number :func:`control_seq` gave a ``diverged`` or ``resume`` envelope."""
    if kind == EnvelopeKind.DIVERGED:
        return -seq - _DIVERGED_BASE
    if kind == EnvelopeKind.RESUME:
        return -seq - _RESUME_BASE
    return 0


def batch_of(seq: int) -> int:
    """The ordered-compensation batch number a ``compensate``/``undone`` seq stands for (0: the
    parallel mode's single ``undone``)."""
    return -seq - _BATCH_BASE if -_DIVERGED_BASE < seq <= -_BATCH_BASE - 1 else 0


class Envelope(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """One message between two roles of one session.

    Identity is ``(session_id, src, dst, seq)``: receivers deliver in ``seq`` order per
    ``(session, src -> dst)`` and drop duplicates. Messages use ``seq >= 1``; control
    envelopes, at most one of each kind per direction and session, use the fixed negative
    numbers of :func:`control_seq`, so one unique key covers both.

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
