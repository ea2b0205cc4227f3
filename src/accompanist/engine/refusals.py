"""Envelopes a peer refused for good: the session they belong to fails, or (for the outcome
round's orders) the refusing peer counts as having answered with nothing undone.

Kept apart from :mod:`accompanist.engine.runs` (which calls it from the relay's callback):
the rare path, with the reasoning it needs, beside the common one would hide both.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from accompanist.engine import outcome
from accompanist.engine.config import CompensationOrder
from accompanist.engine.coordinator import Coordinator
from accompanist.engine.protocol import Report, Undone, encode
from accompanist.engine.session import SessionRun
from accompanist.envelope import MESSAGE_KINDS, Envelope, EnvelopeKind
from accompanist.errors import EnvelopeRejectedError
from accompanist.failure import Failure
from accompanist.language.choreography import Choreography
from accompanist.store.base import TERMINAL_STATUSES, SessionRecord, WriteBatch

__all__ = ["undeliverable"]


class Runs(Coordinator, Protocol):
    """What this module needs of :class:`~accompanist.engine.runs.Runs` (a protocol, so that
    module imports this one and not the other way round)."""

    live: dict[str, SessionRun]

    async def stored(self, session_id: str, *, retry: bool = True) -> SessionRecord | None:
        """The stored record of a session, or None."""

    def choreography_of(self, record: SessionRecord) -> Choreography:
        """The choreography a stored session runs."""

    async def activate(self, record: SessionRecord, choreography: Choreography) -> SessionRun | None:
        """Give a session without a task one."""


async def undeliverable(runs: Runs, envelope: Envelope, exc: EnvelopeRejectedError) -> None:
    """A peer refused an outbox envelope for good: fail its session (never retried).

    A peer that refuses the initiator's failure decision (or an order to compensate) for
    good holds nothing of this session (its id belongs to another session there): it is
    counted as having answered, with nothing undone, so the outcome can be declared.
    """
    runs.metrics.undeliverable.inc()
    runs.log.error("role '%s' refused %s for good: %s", envelope.dst, envelope.key, exc)
    if envelope.kind not in (*MESSAGE_KINDS, EnvelopeKind.FAILURE, EnvelopeKind.COMPENSATE):
        return
    async with runs.session_lock(envelope.session_id):
        run = runs.live.get(envelope.session_id)
        record = run.record if run else await runs.stored(envelope.session_id)
        if record is None or record.status in TERMINAL_STATUSES:
            return
        choreography = runs.choreography_of(record)
        target = run or SessionRun(runs, record, choreography)
        if envelope.kind in MESSAGE_KINDS:
            failure = Failure(
                role=runs.role,
                step=None,
                transaction=None,
                error_type=type(exc).__name__,
                message=f"role '{envelope.dst}' refused message #{envelope.seq}: {exc}",
            )
            await outcome.fail_locked(runs, target, failure)
        elif target.initiator:
            answer = _nothing_undone(runs, target, envelope)
            if runs.durable:
                await runs.guard.commit(WriteBatch(inbox=[answer]))
            outcome.absorb(target, answer)
        if run is None:
            await runs.activate(target.record, choreography)


def _nothing_undone(runs: Runs, run: SessionRun, refused: Envelope) -> Envelope:
    """The answer a role that refused ``refused`` for good stands for: nothing to undo."""
    if refused.kind == EnvelopeKind.COMPENSATE:
        payload, kind = encode(Undone(count=0)), EnvelopeKind.UNDONE
    elif runs.config.compensation is CompensationOrder.ORDERED:
        payload, kind = encode(Report()), EnvelopeKind.REPORT
    else:
        payload, kind = encode(Undone(count=0)), EnvelopeKind.UNDONE
    answer = runs.control(run, runs.role, kind, payload)
    return msgspec.structs.replace(
        answer,
        src=refused.dst,
        dst=runs.role,
        seq=refused.seq if kind == EnvelopeKind.UNDONE and refused.kind == EnvelopeKind.COMPENSATE else answer.seq,
    )
