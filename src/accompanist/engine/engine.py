"""The session engine: one asyncio task per session, behind a ``Store`` and a ``Transport``.

Sessions start at the initiator through :meth:`Engine.start_session`, at a role whose part
begins with a send when the initiator's ``start`` envelope arrives, and lazily at other roles
with the first envelope. The engine knows no sockets and no SQL: default and fault-tolerant
mode differ only in what is written to the store and in whether the relay redelivers the
outbox.

Every change of a session's status goes through :meth:`Runs.transition`
(:mod:`accompanist.engine.runs`), under the session's lock, checked against the table in
:mod:`accompanist.engine.status`; the outcome round that decides those changes lives in
:mod:`accompanist.engine.outcome`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from accompanist.engine import outcome
from accompanist.engine.background import announce, heard_back, nudge_loop, prune_loop
from accompanist.engine.config import EngineConfig
from accompanist.engine.inbound import Inbound
from accompanist.engine.origin import seed_with
from accompanist.engine.probe import eager_roles
from accompanist.engine.runs import Runs
from accompanist.engine.session import SessionRun
from accompanist.engine.upgrades import CodeChange, warn_code_changes
from accompanist.engine.wakeups import Wakeups
from accompanist.envelope import Envelope, EnvelopeKind
from accompanist.errors import (
    AccompanistError,
    DefinitionError,
    OutcomeDecidedError,
    OverloadedError,
    SessionConflictError,
    SessionFailedError,
    StoreError,
    UnknownChoreographyError,
    UnknownSessionError,
)
from accompanist.ids import SESSION_ID_RULE, new_session_id, valid_session_id
from accompanist.interpreters.common import check_args
from accompanist.language.choreography import App, Choreography
from accompanist.store.base import TERMINAL_STATUSES, SessionRecord, SessionStatus, Store, WriteBatch
from accompanist.transport.base import Transport

__all__ = ["Engine", "UnknownSessionError"]

S = SessionStatus
_RECOVERY_CONCURRENCY = 64
_HELLO_WAIT = 1.0  # seconds an initiator waits at start for its peers' versions


class Engine(Runs):
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
        super().__init__(app, role, store=store, transport=transport, config=config, log=log)
        self.inbound = Inbound(self)
        self.wakeups = Wakeups(self, lambda sid, reason: self.cancel(sid, reason=reason))
        self._eager: dict[tuple[str, int], asyncio.Future[tuple[str, ...]]] = {}
        self._accepting = False
        self._started_at = 0.0
        self.code_changed: list[CodeChange] = []  # found at start (see engine/upgrades.py)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the store, resume unfinished sessions (fault-tolerant mode), start receiving.

        Raises:
            StoreCorruptError: the store cannot be used; nothing was started.
            TransportError: the peer endpoint cannot listen; the store was closed again.
        """
        await self.store.open()
        try:
            await self._start_opened()
        except BaseException:
            # A failed start (the listen port taken, the store failing during recovery)
            # releases what it opened: the store's writer thread would keep the process alive.
            with contextlib.suppress(Exception):
                await self.stop(0)
            raise

    async def _start_opened(self) -> None:
        self._started_at = time.time()
        await self.transport.start(self.inbound.accept)
        if self.relay is not None:
            await self.relay.start()
            # Unfinished sessions resume side by side (their reads overlap), a bounded number
            # at a time so that a large backlog does not flood the store.
            gate = asyncio.Semaphore(_RECOVERY_CONCURRENCY)

            async def resume(record: SessionRecord) -> None:
                async with gate, self.session_lock(record.session_id):
                    await self._resume_at_start(record)

            unfinished = await self.guard.retry(self.store.nonterminal_sessions)
            self.code_changed = warn_code_changes(self, unfinished)  # before any of them replays
            for record in unfinished:  # counted before any of them resumes (and is counted out)
                self.metrics.moved("", record.status)
            await asyncio.gather(*(resume(r) for r in unfinished))
        # In both modes: the hello also says which versions this sidecar serves. An initiator
        # waits (briefly) for the answers, so its first sessions start at a version every role
        # serves rather than at one a peer it has not heard from yet may lack.
        took: dict[str, bool] = {}
        self.spawn_background(announce(self, took), "accompanist-hello")
        if any(c.initiator.name == self.role for c in self.app):
            await heard_back(self, took, min(self.config.deliver_timeout, _HELLO_WAIT))
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
        if self.wakeups.restore(record):
            return  # sleeps on: its timer resumes it at the deadline
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
        self.timers.close()
        if self.relay is not None:
            await self.relay.stop()
        with contextlib.suppress(AccompanistError):
            await self.guard.flush()  # the deferred writes (acknowledgement marks, outcomes)
        await self.transport.close()
        await self.store.close()
        self.tracing.close()

    @property
    def live_sessions(self) -> int:
        """Sessions with a run in memory now (running, or awaiting the outcome)."""
        return len(self.live)

    @property
    def started_at(self) -> float:
        """UNIX time the engine started."""
        return self._started_at

    @property
    def accepting(self) -> bool:
        """Whether new sessions are accepted."""
        return self._accepting

    def health(self) -> dict[str, Any]:
        """Whether the engine can take sessions: its store's state and what is blocked."""
        report: dict[str, Any] = {"ok": self.guard.healthy, **self.guard.health()}
        report["blocked_sessions"] = len(self.blocked)
        report["code_changed_sessions"] = sum(c.count for c in self.code_changed)
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
            version: its version (default: the highest version that every role of the
                choreography serves, as their hellos said; see :mod:`accompanist.engine.versions`).
            session_id: an id chosen by the caller, making the start idempotent: if a session
                of this choreography with this id exists already, nothing new starts and its
                id is returned.

        Raises:
            UnknownChoreographyError: no such choreography or version.
            VersionUnavailableError: a role is known not to serve ``version`` (or, without it,
                any version served here); nothing was started.
            DefinitionError: this role is not the initiator, the argument count is wrong, or
                ``session_id`` is malformed.
            SessionConflictError: ``session_id`` is taken by a session of another choreography.
            CodecError: an argument cannot be stored.
            OverloadedError: too many sessions run already, or the sidecar is not accepting.
            StoreError: the store is failing (try again later; nothing was started).
        """
        if not self._accepting:
            raise OverloadedError("the sidecar is not accepting sessions (starting or shutting down)")
        if session_id is not None and not valid_session_id(session_id):
            raise DefinitionError(f"invalid session_id {session_id!r}: use {SESSION_ID_RULE}")
        choreography = self.app.get(name, version)
        if session_id is not None and await self._taken(session_id, choreography):
            return session_id
        if choreography.initiator.name != self.role:
            raise DefinitionError(
                f"choreography {choreography.name!r} starts at role '{choreography.initiator.name}', "
                f"not at '{self.role}': start it through that role's sidecar"
            )
        choreography = self.versions.start_version(name, version)  # what every role serves
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
                seed=seed_with(choreography.fingerprint, self.versions.patches_everywhere(choreography)),
            )
            run = SessionRun(self, record, choreography)
            starts = [self.control(run, r, EnvelopeKind.START, b"") for r in await self._eager_roles(choreography)]
            run.contacts.update(e.dst for e in starts)
            if not self.durable:
                await self.guard.commit_once(WriteBatch(sessions=[msgspec.structs.replace(record)]))
                await self.emit(starts)
                self.spawn(run)
                self.event(record, "start")
                return sid
            # The record goes with the session's first commit, made before its first step with
            # an effect (often with its first sends): the id is returned once it is durable, and
            # if the store fails then, the start is refused with nothing run.
            run.unsaved.record()
            for envelope in starts:
                run.unsaved.hold(envelope)
            run.starting = asyncio.get_running_loop().create_future()
            self.spawn(run)
        await run.starting
        self.event(run.record, "start")
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
        waiter: asyncio.Future[SessionRecord] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(session_id, []).append(waiter)
        try:
            record = await self.get(session_id)
            if record is None:
                raise UnknownSessionError(f"no session {session_id} at role '{self.role}'", session_id=session_id)
            if record.status in TERMINAL_STATUSES:
                return record
            async with asyncio.timeout(timeout):
                return await waiter  # the record as it ended (it may be pruned since)
        finally:
            waiters = self._waiters.get(session_id)
            if waiters is not None:
                with contextlib.suppress(ValueError):
                    waiters.remove(waiter)
                if not waiters:
                    self._waiters.pop(session_id, None)

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

    def result_of(self, record: SessionRecord) -> Any:
        """The decoded result of a completed session (None if it has none)."""
        if record.result is None:
            return None
        return self.app.get(record.choreography, record.version).codec.decode(record.result)

    async def cancel(self, session_id: str, *, reason: str | None = None) -> SessionRecord:
        """Ask to cancel a session: its saga compensates everywhere, unless the initiator has
        declared the outcome already. At the initiator the decision is taken now; at another
        role the request goes to the initiator. Returns the record as it is now. ``reason``
        replaces "cancelled by an operator" in the failure (a saga deadline says so).

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
            choreography = self.choreography_of(record)
            target = run or SessionRun(self, record, choreography)
            failure = outcome.cancel_failure(self.role, reason)
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
