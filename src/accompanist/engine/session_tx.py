"""A saga transaction's step in a live session: commit it once per session, log its intent
and its result, retry it, and remember it for compensation.

A mixin of :class:`~accompanist.engine.session.SessionRun`, apart for size: the step with the
most cases (replayed, logged, declined, uncertain, atomic with the store) reads best on its
own. It declares what it uses of the run; the run provides it.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

from accompanist.codec import PayloadCodec
from accompanist.engine.host import Host
from accompanist.engine.unsaved import Unsaved
from accompanist.errors import Abort, CodecError, TransactionFailedError
from accompanist.interpreters.common import Committed
from accompanist.language.choreography import Choreography
from accompanist.language.steps import Step
from accompanist.language.transaction import Transaction, TxContext, commit_with_retry
from accompanist.store.base import JournalEntry, SessionRecord, TxRecord

__all__ = ["TransactionSteps"]


class TransactionSteps:
    """The transaction step of a session run (see the module's docstring)."""

    host: Host
    record: SessionRecord
    choreography: Choreography
    codec: PayloadCodec
    durable: bool
    unsaved: Unsaved
    txlog: dict[str, TxRecord]
    occurrences: dict[str, int]
    committed: list[Committed]
    pending: list[JournalEntry]
    journal: list[JournalEntry]
    clock: int
    step_now: int | None
    tx_attempts: int

    if TYPE_CHECKING:  # the run's own steps, provided by SessionRun

        async def flush(self, *, sending: bool = False) -> None: ...
        async def save(self) -> None: ...
        def take_pending(self) -> list[JournalEntry]: ...
        def _start_step(self, step: Step) -> None: ...
        def _recorded(self, step: Step) -> JournalEntry | None: ...
        def _entry(self, step: Step, value: bytes | None = None) -> JournalEntry: ...
        def _note(self, step: Step, value: bytes | None = None) -> None: ...

    async def _transaction(self, step: Step, tx: Transaction, args: list[Any]) -> Any:
        """Commit a saga transaction once per session: a replay returns the logged result,
        and a commit that failed before fails again without running."""
        # A durable commit that is not atomic writes its intent before the service is called,
        # and what waits (held sends, the new record, inbox rows) goes in that same commit: one
        # fsync, not two. Nothing with an effect runs before it.
        await self.flush(sending=self.durable and not tx.atomic)
        self._start_step(step)
        recorded = self._recorded(step)
        occurrence = self.occurrences.get(tx.name, 0)
        self.occurrences[tx.name] = occurrence + 1
        self.host.registry.note(self.choreography.name, tx)
        self.clock += 1
        clock = self.clock
        role, session_id = self.record.role, self.record.session_id

        def ctx(attempt: int) -> TxContext:
            return TxContext(session_id, role, tx.name, occurrence, step.index, attempt)

        def remember(result: Any) -> None:  # to compensate it if the saga fails
            self.committed.append(Committed(tx, args, result, ctx(1), clock))

        key = ctx(1).idempotency_key
        logged = self.txlog.get(key)
        if logged is not None and logged.status not in ("uncertain", "pending"):
            result = self.codec.decode(logged.result) if logged.result is not None else None
            remember(result)
            self.step_now = None
            return result
        if recorded is not None and recorded.value is not None:
            failed = self.codec.decode(recorded.value)
            uncertain = bool(failed.get("uncertain"))
            if uncertain:
                remember(None)
            raise TransactionFailedError(
                role,
                tx.name,
                step.index,
                str(failed.get("failed", "the commit failed")),
                uncertain=uncertain,
                error_type=str(failed.get("type", "")),
                detail=str(failed.get("detail", "")),
            )
        atomic = self.host.atomic() if tx.atomic and self.durable else None
        if atomic is not None and self.unsaved:
            await self.save()  # what waits is durable before the service's own transaction

        try:
            encoded_args: bytes | None = self.codec.encode(args) if self.durable else None
        except CodecError:
            encoded_args = None  # compensable only by replaying the session

        def record(status: str, result: Any) -> TxRecord:
            return TxRecord(
                session_id=session_id,
                key=key,
                name=tx.name,
                step=step.index,
                status=status,
                result=None if result is None else self.codec.encode(result),
                updated_at=time.time(),
                args=encoded_args,
                clock=clock,
            )

        async def commit_atomically(attempt_ctx: TxContext) -> Any:
            # The service writes through the store's connection; the log entry, and the
            # journal up to this step, commit in the same transaction or not at all.
            assert atomic is not None
            async with atomic() as scope:
                result = await tx.commit(dataclasses.replace(attempt_ctx, connection=scope.connection), *args)
                if result is False:
                    raise Abort("the commit returned False")
                entry = record("committed", result)
                scope.batch.txlog.append(entry)
                scope.batch.journal.extend(self.pending)
                if recorded is None:
                    scope.batch.journal.append(self._entry(step))
            self.take_pending()
            if recorded is None:
                self.journal.append(self._entry(step))
            self.txlog[key] = entry
            return result

        if atomic is None and self.durable:
            # The intent is durable before the service is called: whatever happens next, a
            # failed saga knows to compensate this commit (settling it first if its result was
            # lost). It rides with whatever else waits: one commit.
            intent = record("pending", None)
            self.unsaved.txlog(intent)
            self.txlog[key] = intent
            await self.save()

        def attempt(number: int) -> TxContext:  # counted for the trail and the span
            self.tx_attempts = number
            return ctx(number)

        try:
            result = await commit_with_retry(tx, attempt, args, commit_atomically if atomic is not None else None)
        except TransactionFailedError as exc:
            if exc.uncertain:  # the retries ran out: it may have taken effect, so undo it too
                remember(None)
            elif self.durable and atomic is None:  # declined: nothing to undo, the intent is void
                entry = record("failed", None)
                self.unsaved.txlog(entry)
                self.txlog[key] = entry
            if recorded is None:
                failed = {
                    "failed": exc.reason,
                    "uncertain": exc.uncertain,
                    "type": exc.error_type,
                    "detail": exc.detail,
                }
                self._note(step, self.codec.encode(failed))
            if exc.uncertain and self.durable:
                entry = record("uncertain", None)
                self.unsaved.txlog(entry)
                self.txlog[key] = entry
            raise
        remember(result)  # before encoding the result: compensable even if that fails
        if self.durable and atomic is None:
            entry = record("committed", result)
            if recorded is None:
                self._note(step)
            self.unsaved.txlog(entry)  # durable with the next commit; lost, it runs again (same key)
            self.txlog[key] = entry
        self.step_now = None
        return result
