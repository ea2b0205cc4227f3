"""The session engine: one asyncio task per session, behind a ``Store`` and a ``Transport``.

Sessions start at the initiator through :meth:`Engine.start_session` and lazily at other roles
when the first envelope of an unknown session arrives. The engine knows no sockets and no SQL:
default and fault-tolerant mode differ only in what the session runner writes to the store
and in whether the relay redelivers the outbox.
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

from accompanist.engine import saga
from accompanist.engine.config import EngineConfig, Mode
from accompanist.engine.ids import new_session_id
from accompanist.engine.locks import KeyedLocks
from accompanist.engine.metrics import Metrics
from accompanist.engine.relay import Relay
from accompanist.engine.session import DONE_HEADER, Park, SessionRun
from accompanist.envelope import MESSAGE_KINDS, Envelope, EnvelopeKind
from accompanist.errors import (
    AccompanistError,
    BufferOverflowError,
    CodecError,
    DefinitionError,
    NondeterminismError,
    OverloadedError,
    SessionError,
    SessionFailedError,
    UnknownSessionError,
)
from accompanist.interpreters.common import check_args, session_result
from accompanist.interpreters.projected import project
from accompanist.language.choreography import App, Choreography
from accompanist.store.base import TERMINAL_STATUSES, SessionRecord, SessionStatus, Store, TxRecord, WriteBatch
from accompanist.transport.base import Transport

__all__ = ["Engine", "UnknownSessionError"]


_KNOWN_KINDS = frozenset(k.value for k in EnvelopeKind)
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
        self.relay = Relay(store, transport, self.config, self.metrics, self.log) if self.durable else None
        self._live: dict[str, SessionRun] = {}
        self._opening: dict[str, asyncio.Future[SessionRun | None]] = {}
        self._starting: set[str] = set()
        self._open_locks = KeyedLocks()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._accepting = False
        self._stopping = False
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
        await self.transport.start(self.handle)
        if self.relay is not None:
            await self.relay.start()
            for record in await self.store.nonterminal_sessions():
                await self.activate(record.session_id, record)
            self._announce()
        self._accepting = True
        self._spawn_background(self._prune_loop(), "accompanist-prune")

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting sessions, give running ones ``grace`` seconds, then stop the rest.

        In fault-tolerant mode, sessions stopped here stay unfinished in the store and are
        replayed at the next start; in default mode they are marked failed.
        """
        self._accepting = False
        grace = self.config.grace if grace is None else grace
        tasks = [r.task for r in self._live.values() if r.task is not None]
        if tasks and grace > 0:
            await asyncio.wait(tasks, timeout=grace)
        self._stopping = True
        for run in list(self._live.values()):
            if run.task is not None:
                run.task.cancel()
        await asyncio.gather(*(r.task for r in list(self._live.values()) if r.task), return_exceptions=True)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.relay is not None:
            await self.relay.stop()
        await self.transport.close()
        await self.store.close()

    @property
    def live_sessions(self) -> int:
        """Sessions running now."""
        return len(self._live)

    def session_lock(self, session_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Held while a session is looked up and opened (or cancelled): one at a time."""
        return self._open_locks.hold(session_id)

    def live_run(self, session_id: str) -> SessionRun | None:
        """The running session's run at this role, if it runs now."""
        return self._live.get(session_id)

    @property
    def started_at(self) -> float:
        """UNIX time the engine started."""
        return self._started_at

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
                with this id exists already, nothing new starts and its id is returned. A
                client that retries a start whose answer it lost then cannot start a second
                saga for the same order.

        Raises:
            UnknownChoreographyError: no such choreography or version.
            DefinitionError: this role is not the initiator, the argument count is wrong, or
                ``session_id`` is malformed.
            SessionError: ``session_id`` is taken by a session of another choreography.
            CodecError: an argument cannot be stored.
            OverloadedError: too many sessions run already.
        """
        if not self._accepting:
            raise OverloadedError("the sidecar is not accepting sessions (starting or shutting down)")
        if session_id is not None:
            if not isinstance(session_id, str) or not _SESSION_ID.match(session_id):
                raise DefinitionError(
                    f"invalid session_id {session_id!r}: use 1-128 letters, digits and '._:-', starting with "
                    "a letter or digit"
                )
            existing = await self._existing(session_id, name)
            if existing is not None:
                return existing
        choreography = self.app.get(name, version)
        if choreography.initiator.name != self.role:
            raise DefinitionError(
                f"choreography {choreography.name!r} starts at role '{choreography.initiator.name}', "
                f"not at '{self.role}': start it through that role's sidecar"
            )
        check_args(choreography, args)
        if len(self._live) >= self.config.max_inflight:
            raise OverloadedError(f"{len(self._live)} sessions are running (max_inflight={self.config.max_inflight})")
        now = time.time()
        record = SessionRecord(
            session_id=session_id or new_session_id(),
            choreography=choreography.name,
            version=choreography.version,
            role=self.role,
            status=SessionStatus.RUNNING,
            args=choreography.codec.encode(list(args)),
            created_at=now,
            updated_at=now,
        )
        if session_id is not None:
            if session_id in self._starting:  # the same id raced itself: one start wins
                return session_id
            self._starting.add(session_id)
        try:
            if session_id is not None and await self._existing(session_id, name) is not None:
                return session_id
            await self.store.commit(WriteBatch(sessions=[record]))
            self._spawn(record, choreography)
        finally:
            if session_id is not None:
                self._starting.discard(session_id)
        return record.session_id

    async def _existing(self, session_id: str, name: str) -> str | None:
        record = await self.store.get_session(session_id)
        if record is None:
            return None
        if record.choreography != name or record.role != self.role:
            raise SessionError(
                f"session_id {session_id!r} is taken by a session of {record.choreography!r} at role "
                f"'{record.role}'",
                session_id=session_id,
            )
        return session_id

    async def wait(self, session_id: str, timeout: float | None = None) -> SessionRecord:
        """Wait until the session ends at this role and return its record.

        Raises:
            UnknownSessionError: no such session here.
            TimeoutError: it did not end within ``timeout``.
        """
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(session_id, []).append(waiter)
        try:
            record = await self.store.get_session(session_id)
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
        record = await self.store.get_session(session_id)
        assert record is not None
        return record

    async def run(self, name: str, *args: Any, version: int | None = None, timeout: float | None = None) -> Any:
        """Start a session, wait for it, and return its result.

        Raises:
            SessionFailedError: the session did not complete (its status and reason attached).
        """
        session_id = await self.start_session(name, args, version)
        record = await self.wait(session_id, timeout)
        if record.status != SessionStatus.COMPLETED:
            raise SessionFailedError(session_id, record.role, record.error or record.status, record.status)
        return self.result_of(record)

    async def get(self, session_id: str) -> SessionRecord | None:
        """The session's record at this role, or None."""
        return await self.store.get_session(session_id)

    def result_of(self, record: SessionRecord) -> Any:
        """The decoded result of a completed session (None if it has none)."""
        if record.result is None:
            return None
        return self.app.get(record.choreography, record.version).codec.decode(record.result)

    async def cancel(self, session_id: str) -> SessionRecord:
        """Cancel a session as an operator: it fails everywhere, and in a saga every role
        compensates what it committed. Returns the record as it is now.

        Raises:
            UnknownSessionError: no such session here.
            SessionError: this role finished its part of a saga; only the initiator, which
                decides the outcome, can still cancel it.
        """
        record: SessionRecord = await saga.cancel(self, session_id)
        return record

    # -- peer-facing -------------------------------------------------------------------------
    async def handle(self, envelope: Envelope) -> None:
        """Accept one envelope from a peer. Returning acknowledges it; raising rejects it.

        In fault-tolerant mode the envelope is in the inbox before this returns.

        Raises:
            UnknownChoreographyError: the named choreography/version is not served here.
            DefinitionError: the sender or kind does not belong to that choreography.
        """
        if envelope.kind == EnvelopeKind.HELLO:
            if self.relay is not None:
                self.relay.wake(envelope.src)
            return
        if envelope.kind not in _KNOWN_KINDS:
            raise DefinitionError(f"unknown envelope kind {envelope.kind!r}")
        choreography = self.app.get(envelope.choreography, envelope.version)
        names = {r.name for r in choreography.roles}
        if envelope.src not in names or envelope.dst != self.role or self.role not in names:
            raise DefinitionError(
                f"envelope {envelope.src}->{envelope.dst} does not fit choreography {choreography.name!r} "
                f"(roles: {', '.join(sorted(names))}) at role '{self.role}'"
            )
        if envelope.kind in MESSAGE_KINDS and envelope.seq < 1:
            raise DefinitionError(f"message envelope with invalid seq {envelope.seq}")
        if envelope.kind == EnvelopeKind.OUTCOME and envelope.payload != SessionStatus.COMPLETED.encode():
            raise DefinitionError(f"outcome envelope with unknown outcome {envelope.payload[:40]!r}")
        self.metrics.messages_received.inc()
        run = self._live.get(envelope.session_id)
        if run is not None and self.durable:
            await self.store.commit(WriteBatch(inbox=[envelope]))
            if self._live.get(envelope.session_id) is not run:  # it parked or ended meanwhile
                run = None
        if run is None:
            run = await self._open_for(envelope, choreography)
            if run is None:
                return
        self._dispatch(run, envelope)

    # -- internals ---------------------------------------------------------------------------
    async def deliver_now(self, envelope: Envelope) -> None:
        """Default mode: hand the envelope to the transport without waiting for the ack."""
        self.metrics.messages_sent.inc()
        await self.transport.send(envelope, wait=False)

    def relay_kick(self, envelope: Envelope) -> None:
        """Fault-tolerant mode: a new outbox row is durable; deliver it now."""
        self.metrics.messages_sent.inc()
        if self.relay is not None:
            self.relay.kick(envelope)

    def _dispatch(self, run: SessionRun, envelope: Envelope) -> None:
        kind = envelope.kind
        if kind in MESSAGE_KINDS:
            done = envelope.headers.get(DONE_HEADER)
            if done is not None:  # the sender's last envelope to us: it finished its part
                self._note_done(run, envelope.src, done.encode())
            try:
                if not run.mailbox.offer(envelope):
                    self.metrics.duplicates.inc()
            except BufferOverflowError as exc:
                run.fail_from_peer(exc, remote=False)
        elif kind == EnvelopeKind.FAILURE:
            reason = _text(envelope.payload)
            run.fail_from_peer(run.remote_failure(envelope.src, reason), reason=reason)
        elif kind == EnvelopeKind.DONE:
            self._note_done(run, envelope.src, envelope.payload)
        elif kind == EnvelopeKind.OUTCOME:
            run.outcome = _text(envelope.payload)
            run.signal.set()

    def _note_done(self, run: SessionRun, src: str, contacts_json: bytes) -> None:
        try:
            contacts: list[str] = msgspec.json.decode(contacts_json, type=list[str])
        except msgspec.DecodeError:
            self.log.warning("ignoring malformed 'done' from '%s' for %s", src, run.session_id)
            return
        run.dones[src] = contacts
        run.signal.set()

    async def _open_for(self, envelope: Envelope, choreography: Choreography) -> SessionRun | None:
        """The session an envelope belongs to: started lazily, resumed, or None if it ended.

        Envelopes of one session are opened one at a time: a ``failure`` and the first message
        of an unknown session may arrive together, and must not both decide "unknown" (a
        tombstone then overwritten by a fresh run that never hears of the failure).
        """
        async with self.session_lock(envelope.session_id):
            return await self._open_alone(envelope, choreography)

    async def _open_alone(self, envelope: Envelope, choreography: Choreography) -> SessionRun | None:
        session_id = envelope.session_id
        run = self._live.get(session_id)
        if run is not None:  # opened by the envelope before this one
            if self.durable:
                await self.store.commit(WriteBatch(inbox=[envelope]))
            return run
        record = await self.store.get_session(session_id)
        if record is not None and record.status in TERMINAL_STATUSES:
            self.metrics.ignored.inc()
            return None
        kind = envelope.kind
        inbox = [envelope] if self.durable else []
        if record is None:
            if kind in (EnvelopeKind.DONE, EnvelopeKind.OUTCOME) or self.role == choreography.initiator.name:
                # Control for a session we never took part in, or a message for a session the
                # initiator never started (sessions start there only through its API): drop it.
                self.metrics.ignored.inc()
                return None
            now = time.time()
            record = SessionRecord(
                session_id=session_id,
                choreography=choreography.name,
                version=choreography.version,
                role=self.role,
                status=SessionStatus.RUNNING,
                created_at=now,
                updated_at=now,
            )
            if kind == EnvelopeKind.FAILURE:  # failed before it reached us: nothing to undo here
                record.status = SessionStatus.COMPENSATED if choreography.saga else SessionStatus.FAILED
                record.error = _text(envelope.payload)
                await self.store.commit(WriteBatch(sessions=[record], inbox=inbox))
                await self.ended(record)
                return None
            return await self.activate(session_id, record, WriteBatch(sessions=[record], inbox=inbox))
        if kind == EnvelopeKind.OUTCOME and record.status == SessionStatus.FINISHED:
            record.status, record.updated_at = SessionStatus(_text(envelope.payload)), time.time()
            await self.store.commit(WriteBatch(sessions=[record], inbox=inbox))
            await self.ended(record)
            return None
        if not self.durable:
            # Default mode keeps no journal: a session whose task ended cannot be resumed.
            if kind == EnvelopeKind.FAILURE:
                record.status = SessionStatus.FAILED
                record.error = f"{_text(envelope.payload)} (not compensated here: default mode lost its state)"
                record.updated_at = time.time()
                await self.store.commit(WriteBatch(sessions=[record]))
                await self.ended(record)
            return None
        await self.store.commit(WriteBatch(inbox=inbox))
        return await self.activate(session_id, record)

    async def activate(
        self, session_id: str, record: SessionRecord, first_write: WriteBatch | None = None
    ) -> SessionRun | None:
        """Start (fresh, or by replay) the run of a session, exactly once."""
        if session_id in self._live:
            return self._live[session_id]
        if session_id in self._opening:
            return await asyncio.shield(self._opening[session_id])
        future: asyncio.Future[SessionRun | None] = asyncio.get_running_loop().create_future()
        self._opening[session_id] = future
        try:
            choreography = self.app.get(record.choreography, record.version)
            if first_write is not None:
                if not self.durable:
                    first_write.inbox.clear()
                await self.store.commit(first_write)
                run = self._spawn(record, choreography)
            else:
                run = await self._replay(record, choreography)
            future.set_result(run)
            return run
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            self._opening.pop(session_id, None)

    async def _replay(self, record: SessionRecord, choreography: Choreography) -> SessionRun:
        journal = await self.store.journal_load(record.session_id)
        outbox = await self.store.outbox_load(record.session_id)
        inbox = await self.store.inbox_load(record.session_id)
        txlog = {t.key: t for t in await self.store.txlog_load(record.session_id)}
        sent = {(row.envelope.dst, row.envelope.seq) for row in outbox if row.envelope.kind in MESSAGE_KINDS}
        record.attempts += 1
        failing = record.status == SessionStatus.COMPENSATING
        if not failing:
            record.status = SessionStatus.RUNNING
        self.metrics.replays.inc()
        run = self._spawn(record, choreography, journal=journal, sent=sent, inbox=inbox, txlog=txlog)
        if failing:  # it was compensating: replay rebuilds what committed, then compensates
            reason = record.error or "failed"
            run.fail_from_peer(SessionFailedError(record.session_id, self.role, reason, "compensating"), reason=reason)
        return run

    def _spawn(
        self,
        record: SessionRecord,
        choreography: Choreography,
        *,
        journal: list[Any] | None = None,
        sent: set[tuple[str, int]] | None = None,
        inbox: Sequence[Envelope] = (),
        txlog: dict[str, TxRecord] | None = None,
    ) -> SessionRun:
        run = SessionRun(self, record, choreography, journal=journal, sent=sent, txlog=txlog)
        self._live[record.session_id] = run
        for envelope in inbox:
            self._dispatch(run, envelope)
        run.task = asyncio.create_task(self._drive(run), name=f"session-{record.session_id}")
        self.metrics.sessions_started.inc()
        self.metrics.sessions_live.set(len(self._live))
        return run

    async def _drive(self, run: SessionRun) -> None:
        record = run.record
        choreography = run.choreography
        me = choreography.role(self.role)
        initiator = me == choreography.initiator
        started = time.monotonic()
        try:
            try:
                args = choreography.codec.decode(record.args) if initiator else []
                returned = await project(choreography, me, run, args)
                run.raise_if_failed()  # a failure that arrived while this role finished its part
                if initiator:
                    record.result = choreography.codec.encode(session_result(choreography, returned))
                if choreography.saga:
                    await saga.agree(self, run, initiator)
                else:
                    record.status, record.error = SessionStatus.COMPLETED, None
            except (Park, NondeterminismError):
                raise
            except Exception as exc:
                reason, tell = saga.failure_of(self, run, exc)
                failures = saga.failure_envelopes(self, run, reason) if tell else []
                if not isinstance(exc, (AccompanistError, asyncio.TimeoutError)):
                    self.log.warning("session %s failed at '%s'", record.session_id, self.role, exc_info=exc)
                if choreography.saga:
                    record.status, record.error = SessionStatus.COMPENSATING, reason
                    await self.write(run, failures)
                    failures = []
                    await saga.compensate(self, run)
                    record.status = SessionStatus.COMPENSATED
                else:
                    record.status, record.error = SessionStatus.FAILED, reason
                await self._finish(run, failures, time.monotonic() - started)
                return
        except Park as park:
            record.status = SessionStatus.FINISHED if park.finished else SessionStatus.PARKED
            if not park.finished:
                record.error = str(park)
        except NondeterminismError as exc:
            record.status, record.error = SessionStatus.DIVERGED, str(exc)
        except asyncio.CancelledError:
            if self.durable:
                self._forget(run)
                return  # stays unfinished in the store; replayed at the next start
            record.status, record.error = SessionStatus.FAILED, "the sidecar stopped while the session ran"
        except AccompanistError as exc:  # the store failed while the session ended
            self.log.error("session %s at '%s' could not be recorded: %s", record.session_id, self.role, exc)
            self._forget(run)
            return
        except Exception:  # a bug here must not leave a silent, stuck session behind
            self.log.exception("internal error running session %s at '%s'", record.session_id, self.role)
            self._forget(run)  # it stays unfinished in the store: a restart replays it
            return
        await self._finish(run, [], time.monotonic() - started)

    async def write(self, run: SessionRun, envelopes: list[Envelope]) -> None:
        """Store the session's row and pending journal (and, durably, ``envelopes`` in the
        outbox) in one transaction, then send ``envelopes``."""
        run.record.updated_at = time.time()
        batch = WriteBatch(sessions=[run.record], journal=run.take_pending())
        if self.durable:
            batch.outbox.extend(envelopes)
        await self.store.commit(batch)
        for envelope in envelopes:
            if self.relay is not None:
                self.relay.kick(envelope)
            else:
                with contextlib.suppress(AccompanistError, OSError):
                    await self.transport.send(envelope, wait=False)

    async def _finish(self, run: SessionRun, failures: list[Envelope], seconds: float) -> None:
        record = run.record
        try:
            await self.write(run, failures)
        except AccompanistError as exc:
            self.log.error("could not record the end of session %s: %s", record.session_id, exc)
            self._forget(run)
            return
        self._forget(run)
        if record.status in (SessionStatus.PARKED, SessionStatus.FINISHED):
            # What arrived while the task was parking would find no task: go on by replay.
            arrived = run.mailbox.buffered or run.failure is not None or run.outcome is not None
            if self.durable and (arrived or (run.dones and run.all_done())):
                await self.activate(record.session_id, record)
            return
        self.metrics.session_seconds.observe(seconds)
        await self.ended(record)

    async def ended(self, record: SessionRecord) -> None:
        """A session reached a terminal status here: wake waiters, count, run hooks."""
        self.metrics.sessions_ended.labels(status=record.status).inc()
        for waiter in self._waiters.pop(record.session_id, []):
            if not waiter.done():
                waiter.set_result(None)
        for hook in self.on_session_end:
            result = hook(record)
            if result is not None:
                await result

    def _forget(self, run: SessionRun) -> None:
        if self._live.get(run.session_id) is run:
            del self._live[run.session_id]
        self.metrics.sessions_live.set(len(self._live))

    def _announce(self) -> None:
        """Tell every peer this sidecar (re)started, so their relays retry at once."""
        peers = {r.name for c in self.app for r in c.roles if r.name != self.role}
        for peer in sorted(peers):
            hello = Envelope(
                session_id="", choreography="", version=0, src=self.role, dst=peer, seq=0, kind=EnvelopeKind.HELLO
            )
            self._spawn_background(self._send_quietly(hello), f"hello-{peer}")

    async def _send_quietly(self, envelope: Envelope) -> None:
        with contextlib.suppress(AccompanistError, OSError, TimeoutError):
            await self.transport.send(envelope, wait=True, timeout=self.config.deliver_timeout)

    def _spawn_background(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.prune_interval)
            now = time.time()
            try:
                removed = await self.store.prune(now - self.config.retention, now - self.config.tombstone_retention)
            except AccompanistError as exc:
                self.log.warning("retention pruning failed: %s", exc)
                continue
            if removed:
                self.log.info("pruned %d rows of ended sessions", removed)


def _text(payload: bytes) -> str:
    try:
        return payload.decode("utf-8", errors="replace")
    except CodecError:  # pragma: no cover
        return "<unreadable reason>"
