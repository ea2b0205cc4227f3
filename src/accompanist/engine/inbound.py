"""Envelopes from peers: checked, stored (fault-tolerant mode), then handed to their session.

Returning from :meth:`Inbound.handle` acknowledges an envelope (in fault-tolerant mode it is
in the inbox by then); raising ``EnvelopeRejectedError`` refuses it, saying whether resending
could ever help. A message for a running session takes a fast path without the session's lock;
everything else (a message that opens or resumes a session, every control envelope) is handled
under the lock, where the status changes it implies are made.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING

import msgspec

from accompanist.engine import outcome
from accompanist.engine.background import answer_hello
from accompanist.engine.origin import patches_from_headers, seed_with
from accompanist.engine.protocol import Outcome, Query, decode, failure_of
from accompanist.engine.session import SessionRun
from accompanist.envelope import MESSAGE_KINDS, Envelope, EnvelopeKind
from accompanist.errors import (
    BufferOverflowError,
    DefinitionError,
    EnvelopeRejectedError,
    StoreError,
    UnknownChoreographyError,
)
from accompanist.failure import Failure
from accompanist.ids import SESSION_ID_RULE, valid_session_id
from accompanist.language.choreography import Choreography
from accompanist.store.base import TERMINAL_STATUSES, SessionRecord, SessionStatus, WriteBatch
from accompanist.store.validation import envelope_problem

if TYPE_CHECKING:
    from accompanist.engine.runs import Runs

__all__ = ["Inbound"]

S = SessionStatus
_KNOWN_KINDS = frozenset(k.value for k in EnvelopeKind)
_FAST = frozenset({*MESSAGE_KINDS, EnvelopeKind.DONE})  # handed to a running session without its lock
_WAKE_COMPENSATING = frozenset(
    {EnvelopeKind.COMPENSATE, EnvelopeKind.OUTCOME, EnvelopeKind.REPORT, EnvelopeKind.UNDONE}
)  # what a compensating session without a task may be waiting for
_RIDES = frozenset({S.RUNNING, S.FINISHED, S.COMPENSATING})
"""A live run in these statuses commits again soon (or its rows are saved before it parks): a
control envelope's inbox row may wait for that commit."""
_CONTROL_TO_INITIATOR = frozenset(
    {EnvelopeKind.DONE, EnvelopeKind.CANCEL, EnvelopeKind.QUERY, EnvelopeKind.UNDONE, EnvelopeKind.REPORT}
)


def _completes(envelope: Envelope) -> bool:
    try:
        return decode(envelope.payload, Outcome, "outcome").status == S.COMPLETED
    except DefinitionError:
        return False


class Inbound:
    """The peer-facing side of one engine."""

    def __init__(self, engine: Runs) -> None:
        self._engine = engine

    def _reject(self, code: str, message: str, *, permanent: bool) -> EnvelopeRejectedError:
        self._engine.metrics.rejected.labels(reason=code).inc()
        return EnvelopeRejectedError(message, code=code, permanent=permanent)

    def _check(self, envelope: Envelope) -> Choreography:
        """The envelope's choreography, if the envelope fits it and this role.

        Raises:
            EnvelopeRejectedError: it does not.
        """
        e = self._engine
        if envelope.kind not in _KNOWN_KINDS:
            raise self._reject("invalid", f"unknown envelope kind {envelope.kind!r}", permanent=True)
        try:
            choreography = e.app.get(envelope.choreography, envelope.version)
        except UnknownChoreographyError as exc:  # it may be deployed later: not for good
            raise self._reject("unknown-choreography", str(exc), permanent=False) from None
        names = {r.name for r in choreography.roles}
        if envelope.src not in names or envelope.dst != e.role or e.role not in names:
            raise self._reject(
                "invalid",
                f"envelope {envelope.src}->{envelope.dst} does not fit choreography {choreography.name!r} "
                f"(roles: {', '.join(sorted(names))}) at role '{e.role}'",
                permanent=True,
            )
        if envelope.kind in MESSAGE_KINDS and envelope.seq < 1:
            raise self._reject("invalid", f"message envelope with invalid seq {envelope.seq}", permanent=True)
        if envelope.kind in _CONTROL_TO_INITIATOR and e.role != choreography.initiator.name:
            raise self._reject("invalid", f"a {envelope.kind} envelope goes to the initiator only", permanent=True)
        # Checked here, once, so that every row the engine builds from it is fit to store:
        # its batches then skip the store's row validation (WriteBatch.trusted).
        if not valid_session_id(envelope.session_id):
            raise self._reject(
                "invalid", f"invalid session id {envelope.session_id[:200]!r}: use {SESSION_ID_RULE}", permanent=True
            )
        problem = envelope_problem(envelope)
        if problem is not None:
            raise self._reject("invalid", f"the envelope cannot be stored: {problem}", permanent=True)
        return choreography

    def _same_session(self, record: SessionRecord, envelope: Envelope) -> None:
        if (record.choreography, record.version) != (envelope.choreography, envelope.version):
            raise self._reject(
                "session-conflict",
                f"session {envelope.session_id} at role '{self._engine.role}' is a session of "
                f"{record.choreography!r} v{record.version}, not of {envelope.choreography!r} v{envelope.version}: "
                "two sessions share one id",
                permanent=True,
            )

    async def _store_inbox(self, envelope: Envelope, batch: WriteBatch | None = None) -> None:
        write = batch or WriteBatch()
        write.inbox.append(envelope)
        try:
            await self._engine.guard.commit_once(write)
        except StoreError as exc:
            self._engine.metrics.store_failures.inc()
            raise self._reject("store-unavailable", f"the store is failing: {exc}", permanent=False) from exc

    async def handle(self, envelope: Envelope) -> None:
        """Accept one envelope from a peer. Returning acknowledges it.

        Raises:
            EnvelopeRejectedError: it is refused (``permanent`` when it can never be accepted).
        """
        pending = self.accept(envelope)
        if pending is not None:
            await pending

    def accept(self, envelope: Envelope) -> Awaitable[None] | None:
        """:meth:`handle` as a transport handler (see ``transport.base.Handler``): None when the
        envelope is accepted at once (a message for a running session in default mode), the
        future of its durability when only that is awaited (fault-tolerant mode), a coroutine
        otherwise (whatever needs the session's lock). So the common envelope costs no task.

        Raises:
            EnvelopeRejectedError: it is refused (``permanent`` when it can never be accepted).
        """
        e = self._engine
        if envelope.kind == EnvelopeKind.HELLO:
            if e.relay is not None:
                e.relay.wake(envelope.src)
            if e.versions.learn(envelope) and not e.stopping:
                e.spawn_background(answer_hello(e, envelope.src), "accompanist-hello-reply")
            return None
        if e.stopping:
            raise self._reject("stopping", f"role '{e.role}' is shutting down; retry", permanent=False)
        try:
            choreography = self._check(envelope)
        except DefinitionError as exc:
            raise self._reject("invalid", str(exc), permanent=True) from None
        e.metrics.messages_received.inc()
        run = e.live.get(envelope.session_id)
        if run is not None and envelope.kind in _FAST and run.accepting:
            # A message (or 'done') for a running session: it is handed over now and made
            # durable with the session's next commit; the sender hears back after that commit.
            self._same_session(run.record, envelope)
            run.reach.hear(envelope.src)
            saved = run.unsaved.arrived(envelope) if e.durable else None
            self._offer(run, envelope)
            return None if saved is None else self._durable(saved)
        return self._under_lock(envelope, choreography)

    async def _under_lock(self, envelope: Envelope, choreography: Choreography) -> None:
        async with self._engine.session_lock(envelope.session_id):
            saved = await self._locked(envelope, choreography)
        if saved is not None:  # outside the lock: the run's commit may need it
            await self._durable(saved)

    def _durable(self, saved: asyncio.Future[None]) -> asyncio.Future[None]:
        """``saved`` (this envelope's own future, see ``Unsaved.arrived``), which ends refused
        as ``slow`` if the envelope is not durable within ``deliver_timeout``."""
        if not saved.done():
            expiry = asyncio.get_running_loop().call_later(self._engine.config.deliver_timeout, self._too_slow, saved)
            saved.add_done_callback(lambda _: expiry.cancel())
        return saved

    def _too_slow(self, saved: asyncio.Future[None]) -> None:
        if not saved.done():
            saved.set_exception(
                self._reject("slow", "the envelope is not durable yet; deliver it again", permanent=False)
            )

    def _offer(self, run: SessionRun, envelope: Envelope) -> None:
        outcome.absorb(run, envelope)  # a 'done', alone or riding on the message
        if envelope.kind not in MESSAGE_KINDS:
            return
        try:
            if not run.mailbox.offer(envelope):
                self._engine.metrics.duplicates.inc()
        except BufferOverflowError as exc:
            run.interrupt(exc)

    async def _locked(self, envelope: Envelope, choreography: Choreography) -> asyncio.Future[None] | None:
        """Handle an envelope under its session's lock; returns what to wait for (outside the
        lock) before acknowledging it, if anything."""
        e = self._engine
        sid, kind = envelope.session_id, envelope.kind
        if kind == EnvelopeKind.QUERY:
            await self._answer_query(envelope, choreography)
            return None
        run = e.live.get(sid)
        if run is not None:
            record: SessionRecord | None = run.record
        else:
            try:
                record = await e.stored(sid, retry=False)
            except StoreError as exc:
                raise self._reject("store-unavailable", f"the store is failing: {exc}", permanent=False) from exc
        if record is None:
            return await self._unknown(envelope, choreography)
        self._same_session(record, envelope)
        if run is not None:
            run.reach.hear(envelope.src)
        if record.status in TERMINAL_STATUSES:
            e.metrics.ignored.inc()
            return None
        before = record.status
        completed = kind == EnvelopeKind.OUTCOME and record.status == S.FINISHED and _completes(envelope)
        target = run or SessionRun(e, record, choreography)
        saved: asyncio.Future[None] | None = None
        if e.durable and completed:
            e.guard.defer(WriteBatch(inbox=[envelope]))  # if lost, the role asks for it again
        elif e.durable and (run is None or run.record.status in _RIDES):
            # Its inbox row rides on the commit of the change it causes (one fsync, not two):
            # nothing that change produces leaves before that commit, and the sender is
            # acknowledged only after it (see engine.unsaved).
            if not e.guard.worth_trying():
                raise self._reject("store-unavailable", f"the store is failing: {e.guard.last_error}", permanent=False)
            saved = target.unsaved.arrived(envelope)
        elif e.durable:
            await self._store_inbox(envelope)
        if run is None and kind == EnvelopeKind.DIVERGED and e.durable:  # is it late? the inbox knows
            for earlier in await e.guard.retry(lambda: e.store.inbox_load(sid)):
                if earlier.kind == EnvelopeKind.RESUME:
                    outcome.absorb(target, earlier)
        if kind in MESSAGE_KINDS:
            self._offer(target, envelope)
        elif kind != EnvelopeKind.START:
            try:
                outcome.absorb(target, envelope)
            except DefinitionError as exc:
                raise self._reject("invalid", str(exc), permanent=True) from None
            await outcome.on_control_locked(e, target, envelope)
        if run is not None:
            if run.record.status in (S.DIVERGED, S.PARKED) and self._wakes(run.record, envelope, choreography):
                run.rearm = True  # its task is on its way out: resume once it is gone
            return saved  # durable with the run's next commit (or ``ack_linger`` later)
        if not e.durable:
            await self._tombstone_mail(target, envelope)
        elif completed:  # a finished part needs nothing but the news: no replay, no commit now
            await e.transition(target, S.COMPLETED, lazy=True)
        else:
            if target.unsaved:  # no change carried it: written now (a resumed run reads it there)
                await self._save_or_reject(target)
            if target.record.status != before or self._wakes(target.record, envelope, choreography):
                await e.activate(target.record, choreography)
        return None

    async def _save_or_reject(self, run: SessionRun) -> None:
        try:
            await run.unsaved.save(once=True)
        except StoreError as exc:
            self._engine.metrics.store_failures.inc()
            raise self._reject("store-unavailable", f"the store is failing: {exc}", permanent=False) from exc

    def _wakes(self, record: SessionRecord, envelope: Envelope, choreography: Choreography) -> bool:
        """Whether an envelope for a session without a task resumes it (one that changed its
        status always does)."""
        status, kind = record.status, envelope.kind
        if status == S.PARKED:
            return not self._engine.timers.sleeping(record)  # a sleeper wakes at its deadline
        if status == S.COMPENSATING:
            # It waits for an order, an answer or the outcome. Anything else (a copy of the
            # decision it knows, answering its own query; a late message) would only run its
            # wait again, which asks the initiator again, whose answer would wake it again: on
            # a loaded machine, for as long as the initiator waits.
            return kind in _WAKE_COMPENSATING
        if status == S.FINISHED:
            return kind not in MESSAGE_KINDS  # a late duplicate message changes nothing
        if status == S.DIVERGED:
            if kind == EnvelopeKind.RESUME:
                return True
            failure = self._engine.failure_of(record)
            return kind in MESSAGE_KINDS and failure is not None and failure.role != self._engine.role
        return status == S.RUNNING  # an orphan (its task died): go on

    async def _unknown(self, envelope: Envelope, choreography: Choreography) -> asyncio.Future[None] | None:
        """An envelope of a session this role has no record of; returns what to wait for
        before acknowledging it (the new session's first commit, in fault-tolerant mode)."""
        e = self._engine
        kind = envelope.kind
        if e.role == choreography.initiator.name or kind not in (
            *MESSAGE_KINDS,
            EnvelopeKind.START,
            EnvelopeKind.FAILURE,
        ):
            # A session the initiator never started (sessions start there only through its
            # API), or control of a session this role never took part in: drop it.
            e.metrics.ignored.inc()
            return None
        now = time.time()
        record = SessionRecord(
            session_id=envelope.session_id,
            choreography=choreography.name,
            version=choreography.version,
            role=e.role,
            status=S.RUNNING,
            created_at=now,
            updated_at=now,
            seed=seed_with(choreography.fingerprint, self._patches_known(envelope, choreography)),
        )
        run = SessionRun(e, record, choreography)
        e.event(record, "joined", before=None)
        inbox = [envelope] if e.durable else []
        if kind == EnvelopeKind.FAILURE:  # failed before it reached us: nothing to undo here
            decided = failure_of(envelope.payload)
            record.status, record.failure, record.error = S.COMPENSATING, decided.encode(), decided.describe()
            answer = e.answer_for_tombstone(run)
            batch = WriteBatch(sessions=[msgspec.structs.replace(record)], inbox=inbox)
            if e.durable:
                batch.outbox.append(answer)
            await self._commit_or_reject(batch)
            await e.emit([answer])
            return None
        if not e.durable:
            await self._commit_or_reject(WriteBatch(sessions=[msgspec.structs.replace(record)]))
        saved = None
        if e.durable:  # the record and the envelope are written with the session's first commit
            run.unsaved.record()
            saved = run.unsaved.arrived(envelope)
        if kind in MESSAGE_KINDS:
            self._offer(run, envelope)
        e.spawn(run)
        return saved

    def _patches_known(self, envelope: Envelope, choreography: Choreography) -> list[str]:
        """The patches the session took (from the initiator), if this role's code knows them
        all. A role that joins with code lacking one (rolled back, or its hello was stale) would
        run the old branch where the others ran the new: the envelope is refused until code
        with the patch is deployed here, as for a missing version.

        Raises:
            EnvelopeRejectedError: the code here lacks a patch the session took.
        """
        patches = patches_from_headers(envelope.headers)
        missing = sorted(set(patches) - choreography.code.patches - choreography.code.deprecated)
        if missing and envelope.kind != EnvelopeKind.FAILURE:  # a failure runs nothing here
            raise self._reject(
                "patch-missing",
                f"session {envelope.session_id} took patch(es) {', '.join(map(repr, missing))} that the code of "
                f"{choreography.name!r} v{choreography.version} at role '{self._engine.role}' lacks; "
                "deploy code with the patch here to go on",
                permanent=False,
            )
        return patches

    async def _commit_or_reject(self, batch: WriteBatch) -> None:
        try:
            await self._engine.guard.commit_once(batch)
        except StoreError as exc:
            self._engine.metrics.store_failures.inc()
            raise self._reject("store-unavailable", f"the store is failing: {exc}", permanent=False) from exc

    async def _tombstone_mail(self, run: SessionRun, envelope: Envelope) -> None:
        """Default mode: a session without a run here is one this role never took part in."""
        e = self._engine
        if run.record.status != S.COMPENSATING:
            return
        if envelope.kind == EnvelopeKind.OUTCOME and run.outcome is not None:
            status = run.outcome.status if run.outcome.status != S.COMPLETED else S.FAILED
            await e.transition(run, status, failure=run.outcome.failure)
        elif envelope.kind == EnvelopeKind.FAILURE:  # the initiator missed our answer
            await e.emit([e.answer_for_tombstone(run)])

    async def _answer_query(self, envelope: Envelope, choreography: Choreography) -> None:
        """At the initiator: a role waits long for the outcome; tell it again."""
        e = self._engine
        sid = envelope.session_id
        run = e.live.get(sid)
        if run is not None:
            run.reach.hear(envelope.src)  # it waits, so it has not given up on the session: it will answer
        record = run.record if run is not None else None
        if record is None:
            try:
                record = await e.stored(sid, retry=False)
            except StoreError:
                return  # it will ask again; never guess an answer from a failing store
        stub = run or SessionRun(
            e,
            record
            or SessionRecord(
                session_id=sid,
                choreography=choreography.name,
                version=choreography.version,
                role=e.role,
                status=S.FAILED,
            ),
            choreography,
        )
        try:
            query: Query | None = decode(envelope.payload, Query, "query")
        except DefinitionError:
            query = None
        if record is None:  # it never started here, so it cannot have completed: presume abort
            unknown = Failure(
                role=e.role,
                step=None,
                transaction=None,
                error_type="UnknownSessionError",
                message=f"the initiator '{e.role}' has no record of this session",
            )
            failure = query.failure if query is not None and query.failure is not None else unknown
            stub.record.failure = failure.encode()
            await e.resend(stub, [e.outcome_envelope(stub, envelope.src)])
            return
        if record.status in TERMINAL_STATUSES or record.status == S.COMPENSATING:
            await e.resend(stub, [e.outcome_envelope(stub, envelope.src)])
            return
        if (
            query is not None and query.status == S.COMPENSATING and query.failure is not None
        ):  # a failure report that was lost
            await outcome.decide_locked(e, stub, query.failure)
            if run is None and e.durable:
                await e.activate(stub.record, choreography)
