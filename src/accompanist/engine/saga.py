"""The saga part of the engine: the outcome round, compensation, and why a session failed.

Kept apart from :mod:`accompanist.engine.engine` so that the session lifecycle reads on its
own; every function here acts on one session's run for its engine.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

import msgspec

from accompanist.engine.session import Park, SessionRun
from accompanist.envelope import CONTROL_SEQ, Envelope, EnvelopeKind
from accompanist.errors import SessionCancelledError, SessionError, TransactionFailedError, UnknownSessionError
from accompanist.interpreters.common import Committed
from accompanist.language.transaction import TxContext, compensate_until_done
from accompanist.store.base import TERMINAL_STATUSES, SessionRecord, SessionStatus, TxRecord, WriteBatch

if TYPE_CHECKING:
    from accompanist.engine.engine import Engine

__all__ = ["agree", "cancel", "compensate", "compensate_one", "control", "failure_envelopes", "failure_of"]


async def agree(engine: Engine, run: SessionRun, initiator: bool) -> None:
    """The outcome round of a saga: finished roles report ``done`` to the initiator; once it
    holds ``done`` from every participant it declares ``completed`` and tells them. Until
    then a failure anywhere still compensates everywhere."""
    record = run.record
    choreography = run.choreography
    record.status, record.error = SessionStatus.FINISHED, None
    timeout = engine.config.receive_timeout
    if initiator:
        if engine.durable:
            await engine.write(run, [])
        try:
            await run.wait_for(run.all_done, timeout)
        except TimeoutError:
            missing = sorted(r for r in run.participants() if r not in run.dones and r != engine.role)
            if engine.durable:
                raise Park(f"waiting for 'done' from {', '.join(missing)}", finished=True) from None
            raise SessionError(
                f"no 'done' from {', '.join(missing)} within {timeout:g}s", session_id=run.session_id
            ) from None
        record.status = SessionStatus.COMPLETED
        outcome = [
            control(engine, run, role, EnvelopeKind.OUTCOME, SessionStatus.COMPLETED.encode())
            for role in sorted(run.participants() - {engine.role})
        ]
        await engine.write(run, outcome)
        return
    done = run.last_envelope_with_done() or control(
        engine, run, choreography.initiator.name, EnvelopeKind.DONE, msgspec.json.encode(sorted(run.contacts))
    )
    await engine.write(run, [done])
    wait = timeout if engine.durable else max(60.0, 10 * timeout)
    try:
        await run.wait_for(lambda: run.outcome is not None, wait)
    except TimeoutError:
        raise Park("finished its part; waiting for the initiator's outcome", finished=True) from None
    record.status = SessionStatus(run.outcome or SessionStatus.COMPLETED)


async def compensate(engine: Engine, run: SessionRun) -> None:
    """Undo what this role committed in the session, last first, each until it succeeds."""
    for item in reversed(run.committed):
        key = item.ctx.idempotency_key
        if key not in run.compensated:
            await compensate_one(engine, run, item, key)
            run.compensated.add(key)


async def compensate_one(engine: Engine, run: SessionRun, item: Committed, key: str) -> None:
    """Run one compensation until it succeeds and record it as compensated (atomically with
    the service's undo for an ``atomic`` transaction)."""
    logged = run.txlog.get(key)
    mark = TxRecord(
        session_id=run.session_id,
        key=key,
        name=item.tx.name,
        step=item.ctx.step,
        status="compensated",
        result=logged.result if logged is not None else None,
        updated_at=time.time(),
    )
    atomic = getattr(engine.store, "atomic", None) if item.tx.atomic and engine.durable else None

    def ctx(attempt: int) -> TxContext:
        return dataclasses.replace(item.ctx, attempt=attempt, compensating=True)

    def complain(attempt: int, exc: BaseException) -> None:
        if attempt in (1, 10) or attempt % 100 == 0:
            engine.log.warning("compensation %s failed (try %d), retrying: %s", key, attempt, exc)

    async def undo_atomically(attempt_ctx: TxContext) -> None:
        # The service's undo and the 'compensated' mark commit together.
        assert atomic is not None and item.tx.compensate is not None
        async with atomic() as scope:
            lent = dataclasses.replace(attempt_ctx, connection=scope.connection)
            await item.tx.compensate(lent, *item.args, item.result)
            scope.batch.txlog.append(mark)

    await compensate_until_done(
        item.tx,
        ctx,
        item.args,
        item.result,
        on_error=complain,
        max_delay=engine.config.retry_max,
        call=undo_atomically if atomic is not None else None,
    )
    if engine.durable and atomic is None:
        await engine.store.commit(WriteBatch(txlog=[mark]))


def failure_of(engine: Engine, run: SessionRun, exc: BaseException) -> tuple[str, bool]:
    """Why the session failed, and whether this role must tell the others."""
    if run.failure is not None and (run.failure_remote or exc is not run.failure):
        return run.failure_reason, False
    if isinstance(exc, (TransactionFailedError, SessionCancelledError)):
        return str(exc), True
    return f"failed at role '{engine.role}', step {run.current_step}: {type(exc).__name__}: {exc}", True


def control(engine: Engine, run: SessionRun, dst: str, kind: EnvelopeKind, payload: bytes) -> Envelope:
    """A control envelope (failure, done, outcome) of ``run`` from this role to ``dst``."""
    c = run.choreography
    return Envelope(
        session_id=run.session_id,
        choreography=c.name,
        version=c.version,
        src=engine.role,
        dst=dst,
        seq=CONTROL_SEQ[kind],
        kind=kind,
        payload=payload,
    )


def failure_envelopes(engine: Engine, run: SessionRun, reason: str) -> list[Envelope]:
    """The ``failure`` envelopes telling every other role of the choreography why it failed."""
    return [
        control(engine, run, r.name, EnvelopeKind.FAILURE, reason.encode())
        for r in run.choreography.roles
        if r.name != engine.role
    ]


async def cancel(engine: Engine, session_id: str) -> SessionRecord:
    """Operator cancellation (see :meth:`Engine.cancel`).

    Holds the session's open lock, like an arriving envelope does: an envelope must not resume
    the session from the record as it was before the cancellation.
    """
    async with engine.session_lock(session_id):
        return await _cancel(engine, session_id)


async def _cancel(engine: Engine, session_id: str) -> SessionRecord:
    record = await engine.store.get_session(session_id)
    if record is None:
        raise UnknownSessionError(f"no session {session_id} at role '{engine.role}'", session_id=session_id)
    if record.status in TERMINAL_STATUSES:
        return record
    choreography = engine.app.get(record.choreography, record.version)
    run = engine.live_run(session_id)
    status = run.record.status if run is not None else record.status
    if status == SessionStatus.FINISHED and choreography.initiator.name != engine.role:
        raise SessionError(
            f"session {session_id} finished its part at role '{engine.role}'; cancel it at the "
            f"initiator '{choreography.initiator.name}', which decides the outcome",
            session_id=session_id,
        )
    exc = SessionCancelledError(f"cancelled by an operator at role '{engine.role}'", session_id=session_id)
    if run is not None:
        # Tell everyone now (durably), not when this role's current step ends: the run
        # itself stops at its next step and compensates.
        reason = str(exc)
        run.record.status = SessionStatus.COMPENSATING if choreography.saga else SessionStatus.FAILED
        run.record.error = reason
        await engine.write(run, failure_envelopes(engine, run, reason))
        run.fail_from_peer(exc, remote=True, reason=reason)
        return await engine.get(session_id) or record
    # Not running here: record the failure and tell everyone; a durable saga then resumes by
    # replay to compensate, anything else simply ends.
    compensate = engine.durable and choreography.saga
    record.status = SessionStatus.COMPENSATING if compensate else SessionStatus.FAILED
    record.error = str(exc)
    stub = SessionRun(engine, record, choreography)
    await engine.write(stub, failure_envelopes(engine, stub, record.error))
    if compensate:
        await engine.activate(session_id, record)
    else:
        await engine.ended(record)
    return record
