"""One session at one role: the step runner that the projected interpreter drives.

In default mode a send goes straight to the transport and a receive waits on the mailbox.
In fault-tolerant mode every step is checked against the session's journal: a replay
returns recorded values, skips sends that are already in the outbox, and stops with a
``NondeterminismError`` at the first step that differs from the record. New steps are
journaled; their entries become durable together with the next outbox row or the session's
end, so journaling costs no extra fsync.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from accompanist.engine.config import Mode, ReplayPolicy
from accompanist.engine.mailbox import Mailbox
from accompanist.engine.stepkey import StepKey, reset_current_step, set_current_step
from accompanist.envelope import Envelope
from accompanist.errors import (
    Abort,
    CodecError,
    NondeterminismError,
    ReceiveTimeoutError,
    SessionFailedError,
    TransactionFailedError,
)
from accompanist.interpreters.common import Committed
from accompanist.language.choreo import LocalThunk
from accompanist.language.choreography import Choreography
from accompanist.language.steps import Step, StepKind
from accompanist.language.transaction import Transaction, TxContext, commit_with_retry
from accompanist.store.base import JournalEntry, SessionRecord, TxRecord, WriteBatch

if TYPE_CHECKING:
    from accompanist.engine.engine import Engine

__all__ = ["DONE_HEADER", "Park", "SessionRun", "journal_name"]

DONE_HEADER = "accompanist-done"
"""Header on a role's last envelope to the initiator: the role finished its part of the saga
(its value: the roles it sent to, as a JSON list), so no separate ``done`` envelope is sent."""


class Park(Exception):  # noqa: N818 - a signal, not an error
    """The session waits without a task: a receive timed out in fault-tolerant mode (status
    ``parked``), or a saga role finished its part and awaits the outcome (``finished``)."""

    def __init__(self, what: str, *, finished: bool = False) -> None:
        self.finished = finished
        super().__init__(what)


def journal_name(step: Step) -> str:
    """The name a step is journaled under; a replay must produce the same one."""
    if step.kind in (StepKind.SEND, StepKind.RECV):
        return f"{step.src}->{step.dst}#{step.seq}/{step.msg_kind}"
    return step.name


def _traceparent(session_id: str) -> str:
    # One session is one trace: the trace id is the session's UUID.
    return f"00-{session_id.replace('-', '')}-{os.urandom(8).hex()}-01"


class SessionRun:
    """Runs one session's projection at this role and records what it does.

    Args:
        engine: the engine that owns the session (store, transport, relay, settings).
        record: the session's row.
        choreography: what it runs.
        journal: durable journal entries loaded for a replay (empty for a fresh run).
        sent: ``(dst, seq)`` of envelopes already in the outbox.
    """

    def __init__(
        self,
        engine: Engine,
        record: SessionRecord,
        choreography: Choreography,
        *,
        journal: list[JournalEntry] | None = None,
        sent: set[tuple[str, int]] | None = None,
        txlog: dict[str, TxRecord] | None = None,
    ) -> None:
        self.engine = engine
        self.record = record
        self.choreography = choreography
        self.codec = choreography.codec
        self.mailbox = Mailbox(record.session_id, engine.config.buffer_limit)
        self.durable = engine.config.mode is Mode.FAULT_TOLERANT
        self.journal: list[JournalEntry] = journal or []
        self.pending: list[JournalEntry] = []
        self.sent: set[tuple[str, int]] = sent or set()
        self.failure: BaseException | None = None
        self.failure_remote = False
        self.failure_reason = ""
        self.task: asyncio.Task[None] | None = None
        self.txlog: dict[str, TxRecord] = txlog or {}
        self.occurrences: dict[str, int] = {}
        self.committed: list[Committed] = []
        self.compensated: set[str] = {k for k, r in self.txlog.items() if r.status == "compensated"}
        self.contacts: set[str] = set()
        self.dones: dict[str, list[str]] = {}
        self.outcome: str | None = None
        self.signal = asyncio.Event()
        self.current_step = 0
        initiator = choreography.initiator.name
        self._defer_to = initiator if choreography.saga and record.role != initiator else None
        self._deferred: tuple[Step, Envelope, bool] | None = None
        self.replayed_steps = 0
        self._traceparent = _traceparent(record.session_id)

    @property
    def session_id(self) -> str:
        """The session's id."""
        return self.record.session_id

    @property
    def replaying(self) -> bool:
        """Whether the run is still inside the recorded journal."""
        return len(self.journal) > 0 and self.replayed_steps < len(self.journal)

    # -- failure from outside ---------------------------------------------------------------
    def fail_from_peer(self, exc: BaseException, *, remote: bool = True, reason: str | None = None) -> None:
        """The session must fail: a peer reported a failure (``remote``), an operator cancelled
        it, or its buffer overflowed. Pending receives wake with ``exc``; a replay raises it
        only once it has passed the end of the journal, so it first rebuilds what committed."""
        if self.failure is None:
            self.failure = exc
            self.failure_remote = remote
            self.failure_reason = reason if reason is not None else str(exc)
        self.mailbox.fail(exc)
        self.signal.set()

    def _check_failed(self, step: Step) -> None:
        self.current_step = step.index
        if self.failure is not None and step.index >= len(self.journal):
            raise self.failure

    def raise_if_failed(self) -> None:
        """Raise the known failure, if any (at the end of the projection)."""
        if self.failure is not None:
            raise self.failure

    async def wait_for(self, condition: Callable[[], bool], timeout: float | None) -> None:
        """Wait until ``condition()`` holds (checked on every done/outcome/failure arrival).

        Raises:
            TimeoutError: not within ``timeout``.
            the session's failure, if one arrives first.
        """
        async with asyncio.timeout(timeout):
            while True:
                self.raise_if_failed()
                if condition():
                    return
                self.signal.clear()
                await self.signal.wait()

    def participants(self) -> set[str]:
        """Roles known to have taken part: this one, whom it sent to, and whom they sent to."""
        roles = {self.record.role, *self.contacts}
        for contacts in self.dones.values():
            roles.update(contacts)
        return roles

    def all_done(self) -> bool:
        """Whether every other participant has reported ``done`` (initiator only)."""
        return all(r in self.dones for r in self.participants() if r != self.record.role)

    # -- journal -----------------------------------------------------------------------------
    def _recorded(self, step: Step) -> JournalEntry | None:
        """The journal entry for ``step`` if this step is a replay; checks it matches."""
        if not self.durable or step.index >= len(self.journal):
            return None
        entry = self.journal[step.index]
        name = journal_name(step)
        if entry.kind != step.kind or entry.name != name:
            raise NondeterminismError(
                self.session_id, step.index, f"{entry.kind}({entry.name})", f"{step.kind}({name})"
            )
        self.replayed_steps = step.index + 1
        return entry

    def _entry(self, step: Step, value: bytes | None = None) -> JournalEntry:
        return JournalEntry(
            session_id=self.session_id, step=step.index, kind=str(step.kind), name=journal_name(step), value=value
        )

    def _note(self, step: Step, value: bytes | None = None) -> JournalEntry | None:
        if not self.durable:
            return None
        entry = self._entry(step, value)
        self.pending.append(entry)
        return entry

    def take_pending(self) -> list[JournalEntry]:
        """Journal entries not yet durable; the caller writes them in its batch."""
        pending, self.pending = self.pending, []
        self.journal.extend(pending)
        return pending

    # -- StepRunner --------------------------------------------------------------------------
    async def send(self, step: Step, value: Any) -> None:
        """Send one message (durably through the outbox in fault-tolerant mode)."""
        await self.flush()
        self._check_failed(step)
        recorded = self._recorded(step)
        assert step.dst is not None and step.seq is not None
        self.contacts.add(step.dst)
        if recorded is not None and (step.dst, step.seq) in self.sent:
            return  # already in the outbox: the relay delivers it, never twice
        envelope = Envelope(
            session_id=self.session_id,
            choreography=self.choreography.name,
            version=self.choreography.version,
            src=self.record.role,
            dst=step.dst,
            seq=step.seq,
            kind=step.msg_kind,
            payload=self.codec.encode(value),
            headers={"traceparent": self._traceparent},
        )
        if step.dst == self._defer_to:
            # Held until this role's next step starts (microseconds): if there is none, the
            # envelope carries this role's 'done' to the initiator instead of a message of its own.
            self._deferred = (step, envelope, recorded is None)
            return
        await self._emit(step, envelope, recorded is None)

    async def _emit(self, step: Step, envelope: Envelope, new: bool) -> None:
        if not self.durable:
            await self.engine.deliver_now(envelope)
            return
        if new:
            self._note(step)
        await self.engine.store.commit(WriteBatch(outbox=[envelope], journal=self.take_pending()))
        self.sent.add((envelope.dst, envelope.seq))
        self.engine.relay_kick(envelope)

    async def flush(self) -> None:
        """Send the held envelope to the initiator: this role has a next step after all."""
        if self._deferred is not None:
            step, envelope, new = self._deferred
            self._deferred = None
            await self._emit(step, envelope, new)

    def last_envelope_with_done(self) -> Envelope | None:
        """The held last envelope to the initiator, now carrying this role's ``done`` (with
        its contacts), for the caller to write with the ``finished`` record; None if this
        role's last step was not a send to the initiator."""
        if self._deferred is None:
            return None
        step, envelope, new = self._deferred
        self._deferred = None
        if new:
            self._note(step)
        self.sent.add((envelope.dst, envelope.seq))
        done = msgspec.json.encode(sorted(self.contacts)).decode()
        return msgspec.structs.replace(envelope, headers={**envelope.headers, DONE_HEADER: done})

    async def recv(self, step: Step) -> Any:
        """Receive one message: from the mailbox, fed by the transport and (on replay) the inbox."""
        await self.flush()
        self._check_failed(step)
        recorded = self._recorded(step)
        assert step.src is not None and step.seq is not None
        timeout = self.engine.config.receive_timeout
        try:
            envelope = await self.mailbox.take(step.src, step.seq, timeout)
        except TimeoutError:
            if self.durable:
                raise Park(f"waiting for envelope #{step.seq} from '{step.src}'") from None
            raise ReceiveTimeoutError(self.session_id, step.src, step.seq, timeout) from None
        if envelope.kind != step.msg_kind:
            raise NondeterminismError(
                self.session_id, step.index, f"{step.msg_kind} message", f"{envelope.kind} message"
            )
        if recorded is None:
            self._note(step)
        return self.codec.decode(envelope.payload)

    async def local(self, step: Step, thunk: LocalThunk) -> Any:
        """Run a local step, or return its recorded result when replaying (journal policy)."""
        await self.flush()
        self._check_failed(step)
        recorded = self._recorded(step)
        use_record = step.kind is not StepKind.LOCAL or self.engine.config.replay_policy is ReplayPolicy.JOURNAL
        if recorded is not None and recorded.value is not None and use_record:
            return self.codec.decode(recorded.value)
        token = set_current_step(StepKey(self.session_id, self.record.role, step.index))
        try:
            value = await thunk()
        finally:
            reset_current_step(token)
        if recorded is None and self.durable:
            try:
                encoded: bytes | None = self.codec.encode(value)
            except CodecError:
                if step.kind is not StepKind.LOCAL:
                    raise
                encoded = None  # not journaled: a replay runs this step again
            self._note(step, encoded)
        return value

    async def transaction(self, step: Step, tx: Transaction, args: list[Any]) -> Any:
        """Commit a saga transaction once per session: a replay returns the logged result,
        and a commit that failed before fails again without running."""
        await self.flush()
        self._check_failed(step)
        recorded = self._recorded(step)
        occurrence = self.occurrences.get(tx.name, 0)
        self.occurrences[tx.name] = occurrence + 1
        role, session_id = self.record.role, self.session_id

        def ctx(attempt: int) -> TxContext:
            return TxContext(session_id, role, tx.name, occurrence, step.index, attempt)

        def remember(result: Any) -> None:  # to compensate it if the saga fails
            self.committed.append(Committed(tx, args, result, ctx(1)))

        key = ctx(1).idempotency_key
        logged = self.txlog.get(key)
        if logged is not None:
            result = self.codec.decode(logged.result) if logged.result is not None else None
            remember(result)
            return result
        if recorded is not None and recorded.value is not None:
            failed = self.codec.decode(recorded.value)
            uncertain = bool(failed.get("uncertain"))
            if uncertain:
                remember(None)
            raise TransactionFailedError(
                role, tx.name, step.index, str(failed.get("failed", "the commit failed")), uncertain=uncertain
            )
        atomic = getattr(self.engine.store, "atomic", None) if tx.atomic and self.durable else None

        def record(result: Any) -> TxRecord:
            return TxRecord(
                session_id=session_id,
                key=key,
                name=tx.name,
                step=step.index,
                status="committed",
                result=self.codec.encode(result),
                updated_at=time.time(),
            )

        async def commit_atomically(attempt_ctx: TxContext) -> Any:
            # The service writes through the store's connection; the log entry, and the
            # journal up to this step, commit in the same transaction or not at all.
            assert atomic is not None
            async with atomic() as scope:
                result = await tx.commit(dataclasses.replace(attempt_ctx, connection=scope.connection), *args)
                if result is False:
                    raise Abort("the commit returned False")
                entry = record(result)
                scope.batch.txlog.append(entry)
                scope.batch.journal.extend(self.pending)
                if recorded is None:
                    scope.batch.journal.append(self._entry(step))
            self.take_pending()
            if recorded is None:
                self.journal.append(self._entry(step))
            self.txlog[key] = entry
            return result

        try:
            result = await commit_with_retry(tx, ctx, args, commit_atomically if atomic is not None else None)
        except TransactionFailedError as exc:
            if exc.uncertain:  # the retries ran out: it may have taken effect, so undo it too
                remember(None)
            if recorded is None:
                self._note(step, self.codec.encode({"failed": exc.reason, "uncertain": exc.uncertain}))
            raise
        remember(result)  # before encoding the result: compensable even if that fails
        if self.durable and atomic is None:
            entry = record(result)
            if recorded is None:
                self._note(step)
            await self.engine.store.commit(WriteBatch(txlog=[entry], journal=self.take_pending()))
            self.txlog[key] = entry
        return result

    def remote_failure(self, src: str, reason: str) -> SessionFailedError:
        """The error a receive wakes with when ``src`` reports the session failed."""
        return SessionFailedError(self.session_id, src, reason, "compensating" if self.choreography.saga else "failed")
