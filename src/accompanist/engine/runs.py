"""Runs of sessions at one role: the coordinator that the outcome round and the session runner
talk to (status changes, writes, control envelopes) and the task that drives each session.

:class:`~accompanist.engine.engine.Engine` builds on this and adds the lifecycle, the
service-facing calls and the peer-facing side. Every change of a session's status goes through
:meth:`Runs.transition`, under the session's lock, checked against the table in
:mod:`accompanist.engine.status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec

from accompanist.engine import compensation, outcome, refusals
from accompanist.engine.config import CompensationOrder, EngineConfig, Mode
from accompanist.engine.linger import Lingering
from accompanist.engine.locks import KeyedLocks
from accompanist.engine.metrics import Metrics, peer_depths
from accompanist.engine.origin import PATCHES_HEADER
from accompanist.engine.persist import StoreGuard
from accompanist.engine.protocol import Outcome, Report, Undone, encode
from accompanist.engine.reach import Resender
from accompanist.engine.registry import TransactionRegistry
from accompanist.engine.relay import Relay
from accompanist.engine.session import SessionRun
from accompanist.engine.session_timers import Sleeping
from accompanist.engine.signals import Park, StartRefused
from accompanist.engine.status import check_transition, is_decided
from accompanist.engine.timers import WAKE, Timers, timer_state, with_timer_state
from accompanist.engine.trail import Trails
from accompanist.engine.versions import PeerVersions
from accompanist.envelope import MESSAGE_KINDS, Envelope, EnvelopeKind, control_seq
from accompanist.errors import (
    AccompanistError,
    DefinitionError,
    NondeterminismError,
    SessionCancelledError,
    SessionError,
    StoreInputError,
    UnknownChoreographyError,
)
from accompanist.failure import Failure
from accompanist.interpreters.common import Committed, session_result
from accompanist.interpreters.projected import project
from accompanist.language.choreography import App, Choreography
from accompanist.logs import SESSION_LOGGER, session_event
from accompanist.store.base import TERMINAL_STATUSES, AtomicScope, SessionRecord, SessionStatus, Store, WriteBatch
from accompanist.tracing import Tracing, setup_tracing
from accompanist.transport.base import Transport

__all__ = ["Runs"]

S = SessionStatus
_AWAITING = (S.FINISHED, S.COMPENSATING)  # this role's part is over; the outcome is not known yet


class Runs:
    """The sessions of one role: their runs in memory, their status changes, their tasks.

    Args:
        app: the choreographies served (by name and version).
        role: the role this engine plays.
        store: durable (fault-tolerant mode) or in-memory (default mode) session state.
        transport: how envelopes reach the other roles' sidecars.
        config: timeouts, bounds and the mode.
        log: logger (default: ``accompanist.engine.<role>``).
    """

    def __init__(
        self,
        app: App,
        role: str,
        *,
        store: Store,
        transport: Transport,
        config: EngineConfig | None = None,
        log: logging.Logger | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.app = app
        self.role = role
        self.store = store
        self.transport = transport
        self.config = config or EngineConfig()
        self.log = log or logging.getLogger(f"accompanist.engine.{role}")
        self.events = logging.getLogger(SESSION_LOGGER)  # one line per session event
        self.tracing = tracing or setup_tracing(role, self.config.traces_file)
        self.metrics = Metrics(role)
        self.trails = Trails(min(self.config.memory_keep, self.config.steps_kept))  # GET /sessions/{id}/steps
        stats = getattr(store, "commit_stats", None)
        if stats is not None:
            self.metrics.store_commits.set_function(lambda: float(store.commit_stats.transactions))  # type: ignore[attr-defined]
        self.durable = self.config.mode is Mode.FAULT_TOLERANT
        self.guard = StoreGuard(store, self.config.store_retry_max, self.log, self.config.lazy_interval)
        self.guard.on_commit = self.metrics.commit_seconds.observe
        self.lingering = Lingering(self.config.ack_linger)
        self.timers = Timers()  # durable timers: sleeping sessions, saga deadlines (see engine.wakeups)
        self.registry = TransactionRegistry(app)
        self.relay = (
            Relay(
                store,
                transport,
                self.config,
                self.metrics,
                self.log,
                on_refused=lambda envelope, exc: refusals.undeliverable(self, envelope, exc),
                on_acked=self.guard.defer,
                destinations=[r.name for c in app for r in c.roles if r.name != role],
            )
            if self.durable
            else None
        )
        self.live: dict[str, SessionRun] = {}
        peers = sorted({r.name for c in app for r in c.roles if r.name != role})
        self.metrics.watch_peers(lambda: peer_depths(list(self.live.values()), self.relay, peers))
        self.blocked: dict[str, str] = {}
        self.versions = PeerVersions(app, role, self.log, on_unknown=self.metrics.unknown_versions.inc)
        self.stopping = False  # stop() is under way: nothing new runs
        self.on_session_end: list[Callable[[SessionRecord], Awaitable[None] | None]] = []
        self._locks = KeyedLocks()
        self._waiters: dict[str, list[asyncio.Future[SessionRecord]]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self.resender = Resender(transport, self.config.deliver_timeout, self.spawn_background)

    def live_run(self, session_id: str) -> SessionRun | None:
        """The session's run at this role, if it is in memory now."""
        return self.live.get(session_id)

    def session_lock(self, session_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Held for every status change of the session (and while it is opened)."""
        return self._locks.hold(session_id)

    async def stored(self, session_id: str, *, retry: bool = True) -> SessionRecord | None:
        """The session's stored record; through store outages unless ``retry=False``.

        Raises:
            StoreError: the store failed (only with ``retry=False``).
        """

        deferred = self.guard.deferred(session_id)  # newer than the store's until written
        if deferred is not None:
            return deferred

        async def read() -> SessionRecord | None:
            return await self.store.get_session(session_id)

        return await (self.guard.retry(read) if retry else self.guard.once(read))

    @staticmethod
    def failure_of(record: SessionRecord) -> Failure | None:
        """The session's structured failure, if it failed (or diverged)."""
        return Failure.decode(record.failure) if record.failure else None

    def choreography_of(self, record: SessionRecord) -> Choreography:
        """The choreography (and version) a stored session runs; a clear error if this sidecar
        does not serve it."""
        try:
            return self.app.get(record.choreography, record.version)
        except UnknownChoreographyError as exc:
            raise SessionError(
                f"session {record.session_id} is blocked: {exc}; deploy that version first",
                session_id=record.session_id,
            ) from exc

    def _diverged_here(self, record: SessionRecord) -> bool:
        failure = self.failure_of(record)
        return failure is None or failure.role == self.role

    # -- the coordinator: status changes, writes, control envelopes ---------------------------
    async def transition(
        self,
        run: SessionRun,
        status: str,
        *,
        failure: Failure | None = None,
        sends: Sequence[Envelope] = (),
        batch: WriteBatch | None = None,
        state: bytes | None = None,
        error: str | None = None,
        lazy: bool = False,
    ) -> SessionRecord:
        """Change the session's status, durably with ``sends`` and ``batch`` (and with what the
        run has not saved yet), then send. ``lazy``: the change may be lost without harm (a
        participant's ``completed``, which it can ask for again), so it waits for the next
        commit instead of making one.

        The caller holds the session's lock; the change is checked against the status table.
        Store outages are waited out (the session's state never decides on its own).

        Raises:
            TransitionRefusedError: the change is not allowed from the current status.
            StoreInputError: the write was refused as invalid (nothing changed).
        """
        record = run.record
        previous = record.status
        check_transition(record.session_id, previous, status)
        # What this change touches, to put back if the write is refused (no copy of the record).
        undo = (previous, record.failure, record.error, record.state, record.updated_at)
        record.status = status
        if failure is not None:
            record.failure, record.error = failure.encode(), failure.describe()
        elif status == S.RUNNING:
            record.failure = record.error = None
        elif status == S.PARKED:
            record.error = error
        if state is not None:
            record.state = state
        elif previous == S.PARKED and record.state and "wake_at" in timer_state(record.state):
            record.state = with_timer_state(record.state, wake_at=None)  # it no longer sleeps
        if previous == S.PARKED or is_decided(status):
            self.timers.disarm(record.session_id, WAKE if not is_decided(status) else None)
        record.updated_at = time.time()
        self.metrics.moved(previous, status)
        write = batch or WriteBatch()
        write.sessions.append(msgspec.structs.replace(record))
        try:
            if lazy and self.durable and not run.unsaved.waiting:
                # Losing it costs nothing: the role asks for the outcome again (see the README).
                run.unsaved.take(write)
                self.guard.defer(write)
                await self.emit(sends)
            else:
                await run.unsaved.save(write, sends)
        except StoreInputError:
            record.status, record.failure, record.error, record.state, record.updated_at = undo
            self.metrics.moved(status, previous)
            raise
        if run.starting is not None and not run.starting.done():
            run.starting.set_result(None)  # a session that ends before any step with an effect
        if status in TERMINAL_STATUSES:
            run.accepting = False  # late envelopes are acknowledged and ignored, not handed over
        waiting = status in _AWAITING
        if waiting != (previous in _AWAITING) and self.live.get(record.session_id) is run:
            self.metrics.awaiting_outcome.inc(1 if waiting else -1)
        self.event(record, status, before=previous, failure=failure)
        if self.tracing.enabled:
            c = run.choreography
            self.tracing.on_transition(
                record.session_id,
                (c.name, c.version, c.initiator.name),
                record.created_at,
                (previous, undo[4], undo[2]),
                (status, record.updated_at, status in TERMINAL_STATUSES),
            )
        if status in TERMINAL_STATUSES or status in (S.DIVERGED, S.PARKED):
            await self.ended(record)
        return record

    def event(
        self, record: SessionRecord, event: str, *, before: str | None = None, failure: Failure | None = None
    ) -> None:
        """Log one session event (see :mod:`accompanist.logs`): outcomes, parks, divergences and
        replays at INFO; a part joined, finished or resumed at DEBUG."""
        level = logging.DEBUG if event in (S.FINISHED, S.RUNNING, "joined") else logging.INFO
        if not self.events.isEnabledFor(level):
            return
        session_event(
            self.events,
            event,
            session_id=record.session_id,
            role=self.role,
            choreography=record.choreography,
            version=record.version,
            level=level,
            status=record.status,
            previous=before,
            reason=record.error if event == S.PARKED else None,
            failed_role=failure.role if failure else None,
            error_type=failure.error_type if failure else None,
            error=failure.message if failure else None,
            step=failure.step if failure else None,
            attempts=record.attempts or None,
        )

    async def write(self, run: SessionRun, envelopes: Sequence[Envelope] = (), batch: WriteBatch | None = None) -> None:
        """Store what the run has not saved yet (and, durably, ``envelopes``) without a status
        change, then send ``envelopes``."""
        await run.unsaved.save(batch, envelopes)

    def control(self, run: SessionRun, dst: str, kind: str, payload: bytes, number: int = 0) -> Envelope:
        """A control envelope of ``run`` from this role to ``dst``."""
        c = run.choreography
        return Envelope(
            session_id=run.session_id,
            choreography=c.name,
            version=c.version,
            src=self.role,
            dst=dst,
            seq=control_seq(kind, number),
            kind=kind,
            payload=payload,
            headers={PATCHES_HEADER: ",".join(sorted(run.patches))} if run.patches else {},
        )

    def peers_of(self, run: SessionRun) -> list[str]:
        """Every other role of the session's choreography."""
        return [r.name for r in run.choreography.roles if r.name != self.role]

    def atomic(self) -> Callable[[], contextlib.AbstractAsyncContextManager[AtomicScope]] | None:
        """The store's atomic scope (fault-tolerant mode), or None."""
        scope: Callable[[], contextlib.AbstractAsyncContextManager[AtomicScope]] | None = getattr(
            self.store, "atomic", None
        )
        return scope

    async def emit(self, envelopes: Sequence[Envelope]) -> None:
        """Deliver envelopes just made durable (relay), or in default mode send them now."""
        for envelope in envelopes:
            self.metrics.messages_sent.inc()
            if self.relay is not None:
                self.relay.kick(envelope)
            else:
                with contextlib.suppress(AccompanistError, OSError, TimeoutError):
                    await self.transport.send(envelope, wait=False)

    async def resend(self, run: SessionRun, envelopes: Sequence[Envelope]) -> None:
        """Send envelopes again, best effort (the receivers drop what they have), one copy at a
        time (see :mod:`accompanist.engine.reach`)."""
        self.resender.send(run.reach, list(envelopes))

    async def query(self, run: SessionRun) -> None:
        """Ask the initiator for the outcome (best effort; never stored)."""
        initiator = run.choreography.initiator.name
        self.metrics.queries.inc()
        await self.resend(run, [self.control(run, initiator, EnvelopeKind.QUERY, encode(outcome.query_of(run)))])

    async def discover(self, run: SessionRun) -> list[Committed] | None:
        """Replay the session's journal to meet transactions this process does not know yet
        (then compensable from the log); None when one stays unknown (the session is blocked)."""
        probe = await self.load(run.record, run.choreography, projection=True)
        probe.interrupt(outcome.SessionStopped("replaying only to find the session's transactions"))
        with contextlib.suppress(Exception):
            args = probe.codec.decode(probe.record.args) if probe.initiator else []
            await project(probe.choreography, probe.choreography.role(self.role), probe, args)
        found = compensation.commits_of(self, run)
        if found is None:
            missing = sorted(
                {t.name for t in run.txlog.values() if self.registry.get(run.choreography.name, t.name) is None}
            )
            self.blocked[run.session_id] = (
                f"cannot compensate: transaction(s) {', '.join(missing) or '?'} are not in the deployed code; "
                "deploy code that has them and resume"
            )
            self.metrics.blocked.set(len(self.blocked))
            self.log.error("session %s is blocked: %s", run.session_id, self.blocked[run.session_id])
        return found

    # -- runs ----------------------------------------------------------------------------------
    async def load(self, record: SessionRecord, choreography: Choreography, *, projection: bool) -> SessionRun:
        """A run of a stored session with what the store holds of it (caller holds the lock)."""
        sid = record.session_id
        journal = await self.guard.retry(lambda: self.store.journal_load(sid)) if projection else []
        sent: set[tuple[str, int]] = set()
        if projection:
            outbox = await self.guard.retry(lambda: self.store.outbox_load(sid))
            sent = {(row.envelope.dst, row.envelope.seq) for row in outbox if row.envelope.kind in MESSAGE_KINDS}
        inbox = await self.guard.retry(lambda: self.store.inbox_load(sid))
        txlog = {t.key: t for t in await self.guard.retry(lambda: self.store.txlog_load(sid))}
        run = SessionRun(self, record, choreography, journal=journal, sent=sent, txlog=txlog)
        for envelope in inbox:
            if envelope.kind in MESSAGE_KINDS and projection:
                run.mailbox.preload(envelope)
            if envelope.kind not in (EnvelopeKind.START, EnvelopeKind.QUERY):
                with contextlib.suppress(DefinitionError):
                    outcome.absorb(run, envelope)
        return run

    async def activate(self, record: SessionRecord, choreography: Choreography) -> SessionRun | None:
        """Resume a stored session from its status (caller holds the lock): replay its
        projection, or go on with its outcome round. Default mode keeps no journal: only a
        live run can go on there."""
        sid = record.session_id
        if sid in self.live:
            return self.live[sid]
        status = record.status
        if status in TERMINAL_STATUSES or not self.durable:
            return None
        record.attempts += 1  # resumed once more after a stop (saved with its next change)
        if status in (S.RUNNING, S.PARKED, S.DIVERGED):
            began = time.perf_counter()
            run = await self.load(record, choreography, projection=True)
            self.metrics.replay_seconds.observe(time.perf_counter() - began)
            self.metrics.replays.inc()
            self.event(record, "replay")
            sends: list[Envelope] = []
            if status == S.DIVERGED and self._diverged_here(record):  # fixed code deployed: tell the others
                sends = [self.control(run, r, EnvelopeKind.RESUME, b"", record.attempts) for r in self.peers_of(run)]
            if status != S.RUNNING:
                await self.transition(run, S.RUNNING, sends=sends)
        else:
            run = await self.load(record, choreography, projection=False)
            if status == S.FINISHED and run.initiator:
                outcome.restore_contacts(run)
        self.spawn(run)
        if self.tracing.enabled and run.journal:  # replayed steps emit no spans: this one says how many
            with self.tracing.step(
                record.session_id, "replay", replayed_steps=len(run.journal), attempt=record.attempts
            ):
                pass
        return run

    def spawn(self, run: SessionRun) -> None:
        """Start the run's task (it drives the session from its current status); not while
        the engine stops (the store holds what is needed to go on after the next start)."""
        if self.stopping:
            return
        self.live[run.session_id] = run
        run.trail = self.trails.attach(run.session_id)
        if self.tracing.enabled:
            c = run.choreography
            self.tracing.session(run.session_id, c.name, c.version, c.initiator.name, run.record.created_at)
        if run.record.status in _AWAITING:
            self.metrics.awaiting_outcome.inc()
        run.task = asyncio.create_task(self._drive(run), name=f"session-{run.session_id}")
        self.metrics.sessions_started.inc()
        self.metrics.sessions_live.set(len(self.live))

    def forget(self, run: SessionRun) -> None:
        """The run stops being in memory (its state, if any, is in the store); senders of
        envelopes it had not saved are told to deliver them again."""
        run.accepting = False
        run.unsaved.fail(self.role)
        if self.live.get(run.session_id) is run:
            del self.live[run.session_id]
            if run.record.status in _AWAITING:
                self.metrics.awaiting_outcome.dec()
        self.metrics.sessions_live.set(len(self.live))

    async def _drive(self, run: SessionRun) -> None:
        started = time.monotonic()
        try:
            while True:
                status = run.record.status
                if status == S.RUNNING:
                    going = await self._project(run)
                elif status == S.FINISHED:
                    going = await outcome.await_outcome(self, run) or await self._park(run)
                elif status == S.COMPENSATING:
                    going = await outcome.compensation_phase(self, run) or await self._park(run)
                else:
                    going = False
                if not going:
                    break
        except asyncio.CancelledError:
            pass  # the engine stops: the store holds what is needed to go on
        except Exception:  # a bug must not leave a silent, stuck session behind
            self.log.exception("internal error running session %s at '%s'", run.session_id, self.role)
        finally:
            self.forget(run)
        if run.record.status in TERMINAL_STATUSES:
            self.metrics.session_seconds.observe(time.monotonic() - started)
        elif run.rearm and self.durable:
            self.spawn_background(self._rearm(run.session_id), f"rearm-{run.session_id}")

    async def _rearm(self, session_id: str) -> None:
        """Resume a session whose run stopped just as an envelope that resumes it arrived."""
        async with self.session_lock(session_id):
            record = await self.stored(session_id)
            if record is not None and session_id not in self.live:
                with contextlib.suppress(UnknownChoreographyError):
                    await self.activate(record, self.app.get(record.choreography, record.version))

    async def _project(self, run: SessionRun) -> bool:
        """Run (or replay) this role's projection; False when the run stops here (parked,
        diverged), True when the session goes on from its new status."""
        choreography = run.choreography
        try:
            args = choreography.codec.decode(run.record.args) if run.initiator else []
            try:
                returned = await project(choreography, choreography.role(self.role), run, args)
            finally:  # its steps are over: kept as plain data from now on (see engine.trail)
                self.trails.seal(run.session_id)
            run.check_replay_complete()
            run.projected = True
            result = choreography.codec.encode(session_result(choreography, returned)) if run.initiator else None
            await outcome.finish(self, run, result)
            return True
        except Park as park:
            return await self._park_projection(run, park)
        except NondeterminismError as exc:
            await self._diverged(run, exc)
            return False
        except outcome.SessionStopped:
            run.projected = True
            return True
        except StartRefused:
            self.forget(run)  # nothing of it was written, nothing ran: the caller was told
            return False
        except Exception as exc:
            run.projected = True
            run.drop_deferred()
            failure = Failure.of(exc, self.role, run.step_now)
            if not isinstance(exc, (AccompanistError, TimeoutError)):
                self.log.warning("session %s failed at '%s'", run.session_id, self.role, exc_info=exc)
            async with self.session_lock(run.session_id):
                await outcome.fail_locked(self, run, failure)
            return True

    async def _park_projection(self, run: SessionRun, park: Park) -> bool:
        async with self.session_lock(run.session_id):
            if run.record.status != S.RUNNING:
                return True
            if isinstance(park, Sleeping):  # the deadline goes in the record: a restart re-arms it
                state = with_timer_state(run.record.state, wake_at=park.until)
                await self.transition(run, S.PARKED, error=str(park), state=state)
                self.forget(run)
                self.timers.arm(run.session_id, WAKE, park.until)
                return False
            await self.transition(run, S.PARKED, error=str(park))  # with what it has not saved
            self.forget(run)
            if run.mailbox.holds(*park.awaited):  # it arrived while we parked: go on by replay
                await self.activate(run.record, run.choreography)
        return False

    async def _park(self, run: SessionRun) -> bool:
        """The outcome round waits long: drop the task (fault-tolerant mode), unless something
        arrived meanwhile (then go on)."""
        async with self.session_lock(run.session_id):
            if run.signal.is_set():
                return True
            if run.unsaved:
                await run.unsaved.save()
            self.forget(run)
        return False

    async def _diverged(self, run: SessionRun, exc: NondeterminismError) -> None:
        async with self.session_lock(run.session_id):
            if run.record.status not in (S.RUNNING, S.DIVERGED):
                return
            failure = Failure(
                role=self.role, step=exc.step, transaction=None, error_type=type(exc).__name__, message=str(exc)
            )
            notices = [
                self.control(run, r, EnvelopeKind.DIVERGED, failure.encode(), run.record.attempts)
                for r in self.peers_of(run)
            ]
            self.log.error("session %s diverged at '%s': %s", run.session_id, self.role, exc)
            await self.transition(run, S.DIVERGED, failure=failure, sends=notices)
            self.forget(run)

    async def ended(self, record: SessionRecord) -> None:
        """A session reached a terminal (or operator-waiting) status here: wake waiters, count,
        run hooks."""
        self.metrics.sessions_ended.labels(status=record.status).inc()
        if record.status not in TERMINAL_STATUSES:
            return
        failure = self.failure_of(record)
        if failure is not None and failure.error_type == SessionCancelledError.__name__:
            self.metrics.cancelled.inc()
        for waiter in self._waiters.pop(record.session_id, []):
            if not waiter.done():
                waiter.set_result(msgspec.structs.replace(record))
        for hook in self.on_session_end:
            result = hook(msgspec.structs.replace(record))
            if result is not None:
                await result

    def answer_for_tombstone(self, run: SessionRun) -> Envelope:
        """What a role that never took part answers a failure decision: nothing to undo."""
        initiator = run.choreography.initiator.name
        if self.config.compensation is CompensationOrder.ORDERED:
            return self.control(run, initiator, EnvelopeKind.REPORT, encode(Report()))
        return self.control(run, initiator, EnvelopeKind.UNDONE, encode(Undone(count=0)))

    def outcome_envelope(self, run: SessionRun, dst: str) -> Envelope:
        """The initiator's outcome (or decision) for ``dst``, rebuilt from its record."""
        record = run.record
        if record.status == S.COMPENSATING and record.failure:
            return self.control(run, dst, EnvelopeKind.FAILURE, record.failure)
        failure = self.failure_of(record)
        return self.control(run, dst, EnvelopeKind.OUTCOME, encode(Outcome(status=record.status, failure=failure)))

    def spawn_background(self, coro: Any, name: str) -> None:
        """Run ``coro`` as a task the engine cancels when it stops."""
        if self.stopping:
            coro.close()
            return
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
