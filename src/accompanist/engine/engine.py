"""The session engine: one asyncio task per session, behind a ``Store`` and a ``Transport``.

Sessions start at the initiator through :meth:`Engine.start_session`, at a role whose part
begins with a send when the initiator's ``start`` envelope arrives, and lazily at other roles
with the first envelope. The engine knows no sockets and no SQL: default and fault-tolerant
mode differ only in what is written to the store and in whether the relay redelivers the
outbox.

Every change of a session's status goes through :meth:`Engine.transition`, under the
session's lock, checked against the table in :mod:`accompanist.engine.status`; the outcome
round that decides those changes lives in :mod:`accompanist.engine.outcome`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec

from accompanist.engine import outcome
from accompanist.engine.background import announce, nudge_loop, prune_loop
from accompanist.engine.config import CompensationOrder, EngineConfig, Mode
from accompanist.engine.ids import new_session_id
from accompanist.engine.inbound import Inbound
from accompanist.engine.locks import KeyedLocks
from accompanist.engine.metrics import Metrics
from accompanist.engine.persist import StoreGuard
from accompanist.engine.probe import eager_roles
from accompanist.engine.protocol import Outcome, Report, Undone, encode
from accompanist.engine.registry import TransactionRegistry
from accompanist.engine.relay import Relay
from accompanist.engine.session import Park, SessionRun, new_seed
from accompanist.engine.status import check_transition
from accompanist.envelope import MESSAGE_KINDS, Envelope, EnvelopeKind, control_seq
from accompanist.errors import (
    AccompanistError,
    DefinitionError,
    EnvelopeRejectedError,
    NondeterminismError,
    OutcomeDecidedError,
    OverloadedError,
    SessionConflictError,
    SessionError,
    SessionFailedError,
    StoreError,
    StoreInputError,
    UnknownChoreographyError,
    UnknownSessionError,
)
from accompanist.failure import Failure
from accompanist.interpreters.common import Committed, check_args, session_result
from accompanist.interpreters.projected import project
from accompanist.language.choreography import App, Choreography
from accompanist.store.base import TERMINAL_STATUSES, AtomicScope, SessionRecord, SessionStatus, Store, WriteBatch
from accompanist.transport.base import Transport

__all__ = ["Engine", "UnknownSessionError"]

S = SessionStatus
_AWAITING = (S.FINISHED, S.COMPENSATING)  # this role's part is over; the outcome is not known yet
_SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


class Engine:
    """Runs one role's part of every session of the choreographies in ``app``.

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
    ) -> None:
        self.app = app
        self.role = role
        self.store = store
        self.transport = transport
        self.config = config or EngineConfig()
        self.log = log or logging.getLogger(f"accompanist.engine.{role}")
        self.metrics = Metrics(role)
        self.durable = self.config.mode is Mode.FAULT_TOLERANT
        self.guard = StoreGuard(store, self.config.store_retry_max, self.log)
        self.registry = TransactionRegistry(app)
        self.relay = (
            Relay(store, transport, self.config, self.metrics, self.log, on_refused=self._undeliverable)
            if self.durable
            else None
        )
        self.inbound = Inbound(self)
        self.live: dict[str, SessionRun] = {}
        self.blocked: dict[str, str] = {}
        self._locks = KeyedLocks()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._eager: dict[tuple[str, int], asyncio.Future[tuple[str, ...]]] = {}
        self._accepting = False
        self.stopping = False  # stop() is under way: nothing new runs
        self._started_at = 0.0
        self.on_session_end: list[Callable[[SessionRecord], Awaitable[None] | None]] = []

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the store, resume unfinished sessions (fault-tolerant mode), start receiving.

        Raises:
            StoreCorruptError: the store cannot be used; nothing was started.
        """
        await self.store.open()
        self._started_at = time.time()
        await self.transport.start(self.inbound.handle)
        if self.relay is not None:
            await self.relay.start()
            for record in await self.guard.retry(self.store.nonterminal_sessions):
                async with self.session_lock(record.session_id):
                    await self._resume_at_start(record)
            self.spawn_background(announce(self), "accompanist-hello")
        self.spawn_background(nudge_loop(self), "accompanist-nudge")
        self._accepting = True
        self.spawn_background(prune_loop(self), "accompanist-prune")

    async def _resume_at_start(self, record: SessionRecord) -> None:
        try:
            choreography = self.app.get(record.choreography, record.version)
        except UnknownChoreographyError as exc:
            self.blocked[record.session_id] = f"this sidecar does not have it: {exc}; deploy that version to resume"
            self.metrics.blocked.set(len(self.blocked))
            self.log.warning("session %s is blocked: %s", record.session_id, self.blocked[record.session_id])
            return
        initiator = choreography.initiator.name == self.role
        if record.status == S.FINISHED and not initiator:
            return  # waits for the outcome, which arrives (or is asked for) without a task
        if record.status == S.DIVERGED and not self._diverged_here(record):
            return  # waits for the role that diverged to resume, or for an operator
        await self.activate(record, choreography)

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting sessions, give running ones ``grace`` seconds, then stop the rest.

        In fault-tolerant mode, sessions stopped here stay unfinished in the store and are
        resumed at the next start; in default mode they are marked failed.
        """
        self._accepting = False
        grace = self.config.grace if grace is None else grace
        tasks = [r.task for r in self.live.values() if r.task is not None and r.record.status == S.RUNNING]
        if tasks and grace > 0:
            await asyncio.wait(tasks, timeout=grace)
        self.stopping = True  # no envelope is taken and no run starts from here on
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        runs = list(self.live.values())
        for run in runs:
            if run.task is not None:
                run.task.cancel()
        await asyncio.gather(*(r.task for r in runs if r.task), return_exceptions=True)
        if not self.durable:
            for run in runs:  # default mode keeps nothing: say so at this role
                if run.record.status not in TERMINAL_STATUSES:
                    why = "the sidecar stopped while the session ran (default mode keeps no state)"
                    run.record.status, run.record.error = S.FAILED, why
                    with contextlib.suppress(AccompanistError):
                        await self.store.commit(WriteBatch(sessions=[msgspec.structs.replace(run.record)]))
        self.live.clear()
        if self.relay is not None:
            await self.relay.stop()
        await self.transport.close()
        await self.store.close()

    @property
    def live_sessions(self) -> int:
        """Sessions with a run in memory now (running, or awaiting the outcome)."""
        return len(self.live)

    def live_run(self, session_id: str) -> SessionRun | None:
        """The session's run at this role, if it is in memory now."""
        return self.live.get(session_id)

    @property
    def started_at(self) -> float:
        """UNIX time the engine started."""
        return self._started_at

    @property
    def accepting(self) -> bool:
        """Whether new sessions are accepted."""
        return self._accepting

    def session_lock(self, session_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Held for every status change of the session (and while it is opened)."""
        return self._locks.hold(session_id)

    def health(self) -> dict[str, Any]:
        """Whether the engine can take sessions: its store's state and what is blocked."""
        report: dict[str, Any] = {"ok": self.guard.healthy, **self.guard.health()}
        report["blocked_sessions"] = len(self.blocked)
        return report

    async def handle(self, envelope: Envelope) -> None:
        """Accept one envelope from a peer (see :meth:`Inbound.handle`).

        Raises:
            EnvelopeRejectedError: it is refused, with a code and whether for good.
        """
        await self.inbound.handle(envelope)

    # -- service-facing ----------------------------------------------------------------------
    async def start_session(
        self, name: str, args: Sequence[Any] = (), version: int | None = None, session_id: str | None = None
    ) -> str:
        """Start a session as the initiator; return its id once its record is stored.

        Args:
            name: the choreography.
            args: its plain arguments.
            version: its version (default: the latest).
            session_id: an id chosen by the caller, making the start idempotent: if a session
                of this choreography with this id exists already, nothing new starts and its
                id is returned.

        Raises:
            UnknownChoreographyError: no such choreography or version.
            DefinitionError: this role is not the initiator, the argument count is wrong, or
                ``session_id`` is malformed.
            SessionConflictError: ``session_id`` is taken by a session of another choreography.
            CodecError: an argument cannot be stored.
            OverloadedError: too many sessions run already, or the sidecar is not accepting.
            StoreError: the store is failing (try again later; nothing was started).
        """
        if not self._accepting:
            raise OverloadedError("the sidecar is not accepting sessions (starting or shutting down)")
        if session_id is not None and (not isinstance(session_id, str) or not _SESSION_ID.match(session_id)):
            raise DefinitionError(
                f"invalid session_id {session_id!r}: use 1-128 letters, digits and '._:-', starting with "
                "a letter or digit"
            )
        choreography = self.app.get(name, version)
        if session_id is not None and await self._taken(session_id, choreography):
            return session_id
        if choreography.initiator.name != self.role:
            raise DefinitionError(
                f"choreography {choreography.name!r} starts at role '{choreography.initiator.name}', "
                f"not at '{self.role}': start it through that role's sidecar"
            )
        check_args(choreography, args)
        if len(self.live) >= self.config.max_inflight:
            raise OverloadedError(f"{len(self.live)} sessions are running (max_inflight={self.config.max_inflight})")
        if not self.guard.worth_trying():
            raise StoreError(f"the store is failing ({self.guard.last_error}); try again later")
        sid = session_id or new_session_id()
        encoded_args = choreography.codec.encode(list(args))
        async with self.session_lock(sid):
            if session_id is not None and await self._taken(sid, choreography):
                return sid  # the same id raced itself: one start wins
            now = time.time()
            record = SessionRecord(
                session_id=sid,
                choreography=choreography.name,
                version=choreography.version,
                role=self.role,
                status=S.RUNNING,
                args=encoded_args,
                created_at=now,
                updated_at=now,
                seed=new_seed(),
            )
            run = SessionRun(self, record, choreography)
            starts = [self.control(run, r, EnvelopeKind.START, b"") for r in await self._eager_roles(choreography)]
            run.contacts.update(e.dst for e in starts)
            batch = WriteBatch(sessions=[msgspec.structs.replace(record)], outbox=starts if self.durable else [])
            await self.guard.commit_once(batch)
            await self.emit(starts)
            self.spawn(run)
        return sid

    async def _taken(self, session_id: str, choreography: Choreography) -> bool:
        """Whether a session with this id exists here already (of this choreography).

        Raises:
            SessionConflictError: it is a session of another choreography.
        """
        existing = self.live.get(session_id)
        found = existing.record if existing else await self.stored(session_id, retry=False)
        if found is None:
            return False
        if found.choreography != choreography.name or found.role != self.role:
            raise SessionConflictError(
                f"session_id {session_id!r} is taken by a session of {found.choreography!r} at role '{found.role}'",
                session_id=session_id,
            )
        return True

    async def _eager_roles(self, choreography: Choreography) -> tuple[str, ...]:
        key = (choreography.name, choreography.version)
        found = self._eager.get(key)
        if found is None:  # probed once per choreography, however many sessions start at once
            found = self._eager[key] = asyncio.ensure_future(eager_roles(choreography))
        return await asyncio.shield(found)

    async def wait(self, session_id: str, timeout: float | None = None) -> SessionRecord:
        """Wait until the session ends at this role and return its record.

        Raises:
            UnknownSessionError: no such session here.
            TimeoutError: it did not end within ``timeout``.
        """
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(session_id, []).append(waiter)
        try:
            record = await self.get(session_id)
            if record is None:
                raise UnknownSessionError(f"no session {session_id} at role '{self.role}'", session_id=session_id)
            if record.status in TERMINAL_STATUSES:
                return record
            async with asyncio.timeout(timeout):
                await waiter
        finally:
            waiters = self._waiters.get(session_id)
            if waiters is not None:
                with contextlib.suppress(ValueError):
                    waiters.remove(waiter)
                if not waiters:
                    self._waiters.pop(session_id, None)
        record = await self.get(session_id)
        assert record is not None
        return record

    async def run(self, name: str, *args: Any, version: int | None = None, timeout: float | None = None) -> Any:
        """Start a session, wait for it, and return its result.

        Raises:
            SessionFailedError: the session did not complete (its status and failure attached).
        """
        session_id = await self.start_session(name, args, version)
        record = await self.wait(session_id, timeout)
        if record.status != S.COMPLETED:
            failure = self.failure_of(record)
            role = failure.role if failure is not None else record.role
            raise SessionFailedError(session_id, role, record.error or record.status, record.status, failure=failure)
        return self.result_of(record)

    async def get(self, session_id: str) -> SessionRecord | None:
        """The session's record at this role, or None.

        Raises:
            StoreError: the store is failing.
        """
        run = self.live.get(session_id)
        if run is not None:
            return msgspec.structs.replace(run.record)
        return await self.stored(session_id, retry=False)

    async def stored(self, session_id: str, *, retry: bool = True) -> SessionRecord | None:
        """The session's stored record; through store outages unless ``retry=False``.

        Raises:
            StoreError: the store failed (only with ``retry=False``).
        """

        async def read() -> SessionRecord | None:
            return await self.store.get_session(session_id)

        return await (self.guard.retry(read) if retry else self.guard.once(read))

    def result_of(self, record: SessionRecord) -> Any:
        """The decoded result of a completed session (None if it has none)."""
        if record.result is None:
            return None
        return self.app.get(record.choreography, record.version).codec.decode(record.result)

    @staticmethod
    def failure_of(record: SessionRecord) -> Failure | None:
        """The session's structured failure, if it failed (or diverged)."""
        return Failure.decode(record.failure) if record.failure else None

    async def cancel(self, session_id: str) -> SessionRecord:
        """Ask to cancel a session: its saga compensates everywhere, unless the initiator has
        declared the outcome already. At the initiator the decision is taken now; at another
        role the request goes to the initiator. Returns the record as it is now.

        Raises:
            UnknownSessionError: no such session here.
            OutcomeDecidedError: the session completed; the cancel lost.
        """
        async with self.session_lock(session_id):
            run = self.live.get(session_id)
            record = run.record if run is not None else await self.stored(session_id)
            if record is None:
                raise UnknownSessionError(f"no session {session_id} at role '{self.role}'", session_id=session_id)
            if record.status == S.COMPLETED:
                raise OutcomeDecidedError(
                    f"session {session_id} completed: the outcome is declared, nothing to cancel",
                    session_id=session_id,
                    status=S.COMPLETED,
                )
            if record.status in TERMINAL_STATUSES or record.status == S.COMPENSATING:
                return msgspec.structs.replace(record)
            choreography = self._choreography_of(record)
            target = run or SessionRun(self, record, choreography)
            failure = outcome.cancel_failure(self.role)
            if target.initiator:
                await outcome.decide_locked(self, target, failure)
                if run is None:
                    await self.activate(target.record, choreography)
            else:
                initiator = choreography.initiator.name
                await self.write(target, [self.control(target, initiator, EnvelopeKind.CANCEL, failure.encode())])
            return msgspec.structs.replace(target.record)

    async def resume(self, session_id: str) -> SessionRecord:
        """Resume a session that waits for an operator: one that diverged (after fixed code
        was deployed), is parked, or was blocked for a missing version.

        Raises:
            UnknownSessionError: no such session here.
            UnknownChoreographyError: its version is still not deployed here.
        """
        async with self.session_lock(session_id):
            run = self.live.get(session_id)
            if run is not None:
                return msgspec.structs.replace(run.record)
            record = await self.stored(session_id)
            if record is None:
                raise UnknownSessionError(f"no session {session_id} at role '{self.role}'", session_id=session_id)
            choreography = self.app.get(record.choreography, record.version)
            if self.blocked.pop(session_id, None) is not None:
                self.metrics.blocked.set(len(self.blocked))
            if record.status not in TERMINAL_STATUSES:
                await self.activate(record, choreography)
            found = self.live.get(session_id)
            return msgspec.structs.replace(found.record if found else record)

    def _choreography_of(self, record: SessionRecord) -> Choreography:
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
    ) -> SessionRecord:
        """Change the session's status, durably with ``sends`` and ``batch``, then send.

        The caller holds the session's lock; the change is checked against the status table.
        Store outages are waited out (the session's state never decides on its own).

        Raises:
            TransitionRefusedError: the change is not allowed from the current status.
            StoreInputError: the write was refused as invalid (nothing changed).
        """
        record = run.record
        check_transition(record.session_id, record.status, status)
        before = msgspec.structs.replace(record)
        record.status = status
        if failure is not None:
            record.failure, record.error = failure.encode(), failure.describe()
        elif status == S.RUNNING:
            record.failure = record.error = None
        elif status == S.PARKED:
            record.error = error
        if state is not None:
            record.state = state
        record.updated_at = time.time()
        write = batch or WriteBatch()
        write.sessions.append(msgspec.structs.replace(record))
        write.journal.extend(run.take_pending())
        if self.durable:
            write.outbox.extend(sends)
        try:
            await self.guard.commit(write)
        except StoreInputError:
            run.record = before
            raise
        await self.emit(sends)
        waiting = status in _AWAITING
        if waiting != (before.status in _AWAITING) and self.live.get(record.session_id) is run:
            self.metrics.awaiting_outcome.inc(1 if waiting else -1)
        if status in TERMINAL_STATUSES or status in (S.DIVERGED, S.PARKED):
            await self.ended(record)
        return record

    async def write(self, run: SessionRun, envelopes: Sequence[Envelope] = (), batch: WriteBatch | None = None) -> None:
        """Store the run's pending journal (and, durably, ``envelopes``) without a status
        change, then send ``envelopes``."""
        write = batch or WriteBatch()
        write.journal.extend(run.take_pending())
        if self.durable:
            write.outbox.extend(envelopes)
        if write:
            await self.guard.commit(write)
        await self.emit(envelopes)

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
        """Send envelopes again, best effort (the receivers drop what they have)."""
        for envelope in envelopes:
            self.spawn_background(self._send_quietly(envelope), f"resend-{envelope.dst}")

    async def query(self, run: SessionRun) -> None:
        """Ask the initiator for the outcome (best effort; never stored)."""
        initiator = run.choreography.initiator.name
        self.metrics.queries.inc()
        await self.resend(run, [self.control(run, initiator, EnvelopeKind.QUERY, encode(outcome.query_of(run)))])

    async def _send_quietly(self, envelope: Envelope) -> None:
        with contextlib.suppress(AccompanistError, OSError, TimeoutError):
            await self.transport.send(envelope, wait=True, timeout=self.config.deliver_timeout)

    async def discover(self, run: SessionRun) -> list[Committed] | None:
        """Replay the session's journal to meet transactions this process does not know yet
        (then compensable from the log); None when one stays unknown (the session is blocked)."""
        from accompanist.engine import compensation

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
            run = await self.load(record, choreography, projection=True)
            self.metrics.replays.inc()
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
        return run

    def spawn(self, run: SessionRun) -> None:
        """Start the run's task (it drives the session from its current status); not while
        the engine stops (the store holds what is needed to go on after the next start)."""
        if self.stopping:
            return
        self.live[run.session_id] = run
        if run.record.status in _AWAITING:
            self.metrics.awaiting_outcome.inc()
        run.task = asyncio.create_task(self._drive(run), name=f"session-{run.session_id}")
        self.metrics.sessions_started.inc()
        self.metrics.sessions_live.set(len(self.live))

    def forget(self, run: SessionRun) -> None:
        """The run stops being in memory (its state, if any, is in the store)."""
        run.accepting = False
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
            returned = await project(choreography, choreography.role(self.role), run, args)
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
            self.forget(run)
            await self.transition(run, S.PARKED, error=str(park))
            if run.mailbox.holds(*park.awaited):  # it arrived while we parked: go on by replay
                await self.activate(run.record, run.choreography)
        return False

    async def _park(self, run: SessionRun) -> bool:
        """The outcome round waits long: drop the task (fault-tolerant mode), unless something
        arrived meanwhile (then go on)."""
        async with self.session_lock(run.session_id):
            if run.signal.is_set():
                return True
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
            self.forget(run)
            self.log.error("session %s diverged at '%s': %s", run.session_id, self.role, exc)
            await self.transition(run, S.DIVERGED, failure=failure, sends=notices)

    async def _undeliverable(self, envelope: Envelope, exc: EnvelopeRejectedError) -> None:
        """A peer refused an outbox envelope for good: fail its session (never retried).

        A peer that refuses the initiator's failure decision (or an order to compensate) for
        good holds nothing of this session (its id belongs to another session there): it is
        counted as having answered, with nothing undone, so the outcome can be declared.
        """
        self.metrics.undeliverable.inc()
        self.log.error("role '%s' refused %s for good: %s", envelope.dst, envelope.key, exc)
        if envelope.kind not in (*MESSAGE_KINDS, EnvelopeKind.FAILURE, EnvelopeKind.COMPENSATE):
            return
        async with self.session_lock(envelope.session_id):
            run = self.live.get(envelope.session_id)
            record = run.record if run else await self.stored(envelope.session_id)
            if record is None or record.status in TERMINAL_STATUSES:
                return
            choreography = self._choreography_of(record)
            target = run or SessionRun(self, record, choreography)
            if envelope.kind in MESSAGE_KINDS:
                failure = Failure(
                    role=self.role,
                    step=None,
                    transaction=None,
                    error_type=type(exc).__name__,
                    message=f"role '{envelope.dst}' refused message #{envelope.seq}: {exc}",
                )
                await outcome.fail_locked(self, target, failure)
            elif target.initiator:
                answer = self._nothing_undone(target, envelope)
                if self.durable:
                    await self.guard.commit(WriteBatch(inbox=[answer]))
                outcome.absorb(target, answer)
            if run is None:
                await self.activate(target.record, choreography)

    def _nothing_undone(self, run: SessionRun, refused: Envelope) -> Envelope:
        """The answer a role that refused ``refused`` for good stands for: nothing to undo."""
        if refused.kind == EnvelopeKind.COMPENSATE:
            payload, kind = encode(Undone(count=0)), EnvelopeKind.UNDONE
        elif self.config.compensation is CompensationOrder.ORDERED:
            payload, kind = encode(Report()), EnvelopeKind.REPORT
        else:
            payload, kind = encode(Undone(count=0)), EnvelopeKind.UNDONE
        answer = self.control(run, self.role, kind, payload)
        return msgspec.structs.replace(
            answer,
            src=refused.dst,
            dst=self.role,
            seq=refused.seq if kind == EnvelopeKind.UNDONE and refused.kind == EnvelopeKind.COMPENSATE else answer.seq,
        )

    async def ended(self, record: SessionRecord) -> None:
        """A session reached a terminal (or operator-waiting) status here: wake waiters, count,
        run hooks."""
        self.metrics.sessions_ended.labels(status=record.status).inc()
        if record.status not in TERMINAL_STATUSES:
            return
        for waiter in self._waiters.pop(record.session_id, []):
            if not waiter.done():
                waiter.set_result(None)
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
