"""One session at one role: the step runner that the projected interpreter drives.

In default mode a send goes straight to the transport and a receive waits on the mailbox.
In fault-tolerant mode every step is checked against the session's journal: a replay
returns recorded values, skips sends that are already in the outbox, and stops with a
``NondeterminismError`` at the first step that differs from the record (or, at the end, when
the record holds steps the code no longer makes). New steps are journaled; their entries
become durable together with the next outbox row, commit or status change, so journaling costs
no extra fsync. ``ch.uuid`` and ``ch.random`` are derived from the session's seed (stored with
its first write), so a step re-run after a crash draws the same value even before its journal
entry was durable; ``ch.now`` is made durable before its value is used.

The run also holds what the outcome round learns from envelopes (see
:mod:`accompanist.engine.outcome`): ``done`` reports, the decided failure, the outcome.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from accompanist.engine.config import ReplayPolicy
from accompanist.engine.mailbox import Mailbox
from accompanist.engine.origin import PATCHES_HEADER, origin_of
from accompanist.engine.protocol import Compensate, Outcome, Report, Undone
from accompanist.engine.reach import Reach
from accompanist.engine.session_timers import TimerSteps
from accompanist.engine.session_tx import TransactionSteps
from accompanist.engine.signals import Park, Signal, StartRefused, expire
from accompanist.engine.stepkey import StepKey, reset_current_step, set_current_step
from accompanist.engine.trail import raised
from accompanist.engine.unsaved import Unsaved
from accompanist.envelope import Envelope
from accompanist.errors import (
    CodecError,
    NondeterminismError,
    PayloadTooLargeError,
    ReceiveTimeoutError,
    StoreError,
)
from accompanist.failure import Failure
from accompanist.interpreters.common import Committed
from accompanist.language.choreo import LocalThunk
from accompanist.language.choreography import Choreography
from accompanist.language.patches import check_patch_found
from accompanist.language.steps import Step, StepKind
from accompanist.language.transaction import Transaction
from accompanist.store.base import JournalEntry, SessionRecord, TxRecord
from accompanist.tracing import session_span_id, trace_id_of

T = TypeVar("T")

if TYPE_CHECKING:
    from accompanist.engine.host import Host

__all__ = [
    "CLOCK_HEADER",
    "DONE_HEADER",
    "SessionRun",
    "journal_name",
    "new_seed",
]

DONE_HEADER = "accompanist-done"
"""Header on a role's last envelope to the initiator: the role finished its part (its value:
the roles it sent to, as a JSON list), so no separate ``done`` envelope is sent."""

CLOCK_HEADER = "accompanist-clock"
"""Header carrying the sender's Lamport time: commits are ordered causally across roles by it."""


def journal_name(step: Step) -> str:
    """The name a step is journaled under; a replay must produce the same one."""
    if step.kind in (StepKind.SEND, StepKind.RECV):
        return f"{step.src}->{step.dst}#{step.seq}/{step.msg_kind}"
    return step.name


def new_seed() -> bytes:
    """A session's random seed: ``ch.uuid`` and ``ch.random`` values are derived from it."""
    return os.urandom(16)


_RESULT: Any = object()  # _live records the step's own result
_DURABLE_AT_ONCE = (StepKind.NOW, StepKind.SLEEP, StepKind.DEADLINE)  # read from the clock


def _traceparent(session_id: str, role: str) -> str:
    """W3C trace context of the envelopes a role sends: the session's trace, the role's
    session span (see :mod:`accompanist.tracing`), the same after a replay."""
    return f"00-{trace_id_of(session_id):032x}-{session_span_id(session_id, role):016x}-01"


def _derive(seed: bytes, kind: StepKind, step: int) -> Any:
    digest = hashlib.blake2b(seed + str(kind).encode() + step.to_bytes(8, "big"), digest_size=16).digest()
    if kind is StepKind.UUID:
        return uuid.UUID(bytes=digest, version=4)
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)


class SessionRun(TransactionSteps, TimerSteps):
    """Runs one session's projection at this role and records what it does.

    Args:
        host: the engine that owns the session (store, transport, relay, settings).
        record: the session's row.
        choreography: what it runs.
        journal: durable journal entries loaded for a replay (empty for a fresh run).
        sent: ``(dst, seq)`` of envelopes already in the outbox.
        txlog: the session's transaction records, by key.
    """

    trail: list[Any] | None = None  # its steps, LIVE items each: the engine's once it is spawned

    def __init__(
        self,
        host: Host,
        record: SessionRecord,
        choreography: Choreography,
        *,
        journal: list[JournalEntry] | None = None,
        sent: set[tuple[str, int]] | None = None,
        txlog: dict[str, TxRecord] | None = None,
    ) -> None:
        self.host = host
        self.record = record
        self.choreography = choreography
        self.codec = choreography.codec
        self.mailbox = Mailbox(record.session_id, host.config.buffer_limit, self._from_inbox if host.durable else None)
        self.durable = host.durable
        self.journal: list[JournalEntry] = journal or []
        self.pending: list[JournalEntry] = []
        self.unsaved = Unsaved(host, self)
        self.sent: set[tuple[str, int]] = sent or set()
        self.txlog: dict[str, TxRecord] = txlog or {}
        self.occurrences: dict[str, int] = {}
        self.draws: dict[str, int] = {}  # uuid/random values drawn so far, by kind
        self.committed: list[Committed] = []
        self.undone_keys: set[str] = set()  # compensated in this process
        self.contacts: set[str] = set()
        self.clock = 0
        self.steps = 0  # steps the projection made so far
        self.step_now: int | None = None  # the step running now, for failures
        self.task: asyncio.Task[None] | None = None
        self.stop: BaseException | None = None  # raised at the projection's next step
        self.accepting = True  # new envelopes may be handed to this run
        self.rearm = False  # something arrived that resumes the session once this run has stopped
        self.starting: asyncio.Future[None] | None = None  # set by an API start: done once durable
        self.projected = False  # the projection ran (to its end or its failure) in this life
        # What the outcome round learned (filled from envelopes, live or from the inbox).
        self.signal = Signal()
        self.arrivals = 0  # envelopes of the outcome round absorbed so far
        self.dones: dict[str, list[str]] = {}
        self.decision: Failure | None = None
        self.decisions = 0  # how many times the decision arrived (a repeat asks for our answer again)
        self.reports: dict[str, Failure] = {}
        self.cancels: dict[str, Failure] = {}
        self.outcome: Outcome | None = None
        self.undone: dict[str, Undone] = {}
        self.batches_done: dict[int, Undone] = {}
        self.commit_reports: dict[str, Report] = {}
        self.orders: dict[int, Compensate] = {}
        self.diverged: Failure | None = None
        self.resumed: dict[str, int] = {}  # role -> the last replay number it resumed with
        self.reach = Reach()  # whether the peers answer: a default-mode initiator waits for those that do
        initiator = choreography.initiator.name
        self._defer_to = initiator if record.role != initiator else None
        self._deferred: tuple[Step, Envelope, bool] | None = None
        self.replayed_steps = 0
        self.tx_attempts = 0  # commit attempts of the transaction running now
        self.doing: Step | None = None  # the live step running now (a receive: the role waits there)
        self.doing_since = 0.0  # when it began (perf_counter)

    async def _from_inbox(self, src: str, seq: int) -> Envelope | None:
        """An envelope left in the inbox because more than ``buffer_limit`` arrived early."""
        waiting = self.unsaved.received(src, seq)  # not durable yet: still here
        if waiting is not None:
            return waiting
        inbox = await self.host.guard.retry(lambda: self.host.guard.store.inbox_load(self.session_id))
        return next((e for e in inbox if e.src == src and e.seq == seq), None)

    @property
    def session_id(self) -> str:
        """The session's id."""
        return self.record.session_id

    @property
    def initiator(self) -> bool:
        """Whether this role starts the session and decides its outcome."""
        return self.record.role == self.choreography.initiator.name

    @property
    def replaying(self) -> bool:
        """Whether the run is still inside the recorded journal."""
        return self.replayed_steps < len(self.journal)

    # -- failure from outside ---------------------------------------------------------------
    def interrupt(self, exc: BaseException) -> None:
        """Stop the projection with ``exc``: the session failed (decided elsewhere, or this
        role's buffer overflowed, or its envelope can never be delivered). Pending receives
        wake with it; a replay raises it once past the end of the journal, after rebuilding
        what committed."""
        if self.stop is None:
            self.stop = exc
        self.mailbox.fail(exc)
        self.signal.set()

    def _start_step(self, step: Step) -> None:
        self.step_now = step.index
        self.steps = max(self.steps, step.index + 1)
        if self.stop is not None and step.index >= len(self.journal):
            raise self.stop

    async def wait_for(self, condition: Callable[[], bool], timeout: float | None) -> None:
        """Wait until ``condition()`` holds, checked whenever an envelope of the outcome round
        arrives.

        Raises:
            TimeoutError: not within ``timeout``.
        """
        if condition():
            return
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        signal = self.signal
        while not condition():
            signal.flag = False
            waiter: asyncio.Future[None] = loop.create_future()
            signal.waiter = waiter
            expiry = None if deadline is None else loop.call_at(deadline, expire, waiter)
            try:
                await waiter
            finally:
                signal.waiter = None
                if expiry is not None:
                    expiry.cancel()

    # -- journal -----------------------------------------------------------------------------
    def _replayed(self, step: Step) -> bool:
        """Whether ``step`` is replayed from the journal (checked against it by :meth:`_recorded`)."""
        return self.durable and step.index < len(self.journal)

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

    def check_replay_complete(self) -> None:
        """At the end of the projection: the journal must hold no step the code did not make.

        Raises:
            NondeterminismError: the record has more steps (the code was changed).
        """
        if self.durable and len(self.journal) > self.steps:
            entry = self.journal[self.steps]
            raise NondeterminismError(
                self.session_id, self.steps, f"{entry.kind}({entry.name})", "the end of the choreography"
            )

    def _entry(self, step: Step, value: bytes | None = None) -> JournalEntry:
        return JournalEntry(
            session_id=self.session_id, step=step.index, kind=str(step.kind), name=journal_name(step), value=value
        )

    def _note(self, step: Step, value: bytes | None = None) -> None:
        if self.durable:
            self.pending.append(self._entry(step, value))

    def patch(self, index: int, name: str, *, deprecated: bool) -> bool:
        """Whether the session takes the patch ``name`` at step ``index`` (then that step is
        its marker): from the journal when replaying, else from the patches the session was
        created with (see :mod:`accompanist.language.patches`).

        Raises:
            DefinitionError: ``name`` is not a string literal the scan of the code found.
        """
        code = self.choreography.code
        check_patch_found(
            name, code.deprecated if deprecated else code.patches, "deprecate_patch" if deprecated else "patched",
            self.choreography.name,
        )  # fmt: skip
        entry = self.journal[index] if self.durable and index < len(self.journal) else None
        if entry is not None:
            taken = entry.kind == StepKind.PATCH and entry.name == name
            if taken:
                self.replayed_steps = index + 1
                self.steps = max(self.steps, index + 1)
            return taken
        if deprecated or name not in self.patches:
            return False
        step = Step(index, StepKind.PATCH, name)
        self.steps = max(self.steps, index + 1)
        self._note(step)
        return True

    @property
    def patches(self) -> frozenset[str]:
        """The patch names this session takes (recorded with it when it was created here)."""
        found: frozenset[str] | None = getattr(self, "_patches", None)
        if found is None:
            origin = origin_of(self.record.seed)
            found = self._patches = frozenset(origin.patches if origin is not None else ())
        return found

    def take_pending(self) -> list[JournalEntry]:
        """Journal entries not yet durable; the caller writes them in its batch."""
        pending, self.pending = self.pending, []
        self.journal.extend(pending)
        return pending

    # -- StepRunner --------------------------------------------------------------------------
    async def _live(self, kind: str, step: Step, work: Awaitable[T], shown: Any = _RESULT, **attrs: Any) -> T:
        """Run a live step: its duration goes to ``accompanist_step_seconds``, one tuple to the
        session's trail (``shown``, or the step's result), and a span to the tracer when tracing
        is on (replayed steps get none of these: they did not run again)."""
        trail = self.trail
        if trail is None:  # a run the engine did not spawn (a probe): its steps are nobody's to see
            trail = self.trail = []
        self.doing = step
        began = self.doing_since = time.perf_counter()
        outcome: Any = shown
        try:
            tracing = self.host.tracing
            if not tracing.enabled:
                result = await work
            else:
                attempts = (lambda: self.tx_attempts) if kind == "transaction" else None
                with tracing.live_step(self.session_id, kind, attempts, step=step.index, **attrs):
                    result = await work
            if shown is _RESULT:
                outcome = result
            return result
        except BaseException as exc:
            outcome = raised(exc)  # the error path: what went wrong, not the traceback
            raise
        finally:
            ended = time.perf_counter()
            self.host.metrics.step(kind, ended - began)
            self.doing = None
            trail.extend((step, began, ended, outcome, self.tx_attempts if kind == "transaction" else 0))

    async def send(self, step: Step, value: Any) -> None:
        """Timed and traced (when tracing is on) unless replayed; see :meth:`_send`."""
        if self._replayed(step):
            await self._send(step, value)
            return
        await self._live("send", step, self._send(step, value), value, peer=step.dst, seq=step.seq)

    async def _send(self, step: Step, value: Any) -> None:
        """Send one message (durably through the outbox in fault-tolerant mode)."""
        await self.flush(sending=True)
        self._start_step(step)
        recorded = self._recorded(step)
        assert step.dst is not None and step.seq is not None
        self.contacts.add(step.dst)
        self.clock += 1
        if recorded is not None and (step.dst, step.seq) in self.sent:
            self.step_now = None
            return  # already in the outbox: the relay delivers it, never twice
        payload = self.codec.encode(value)
        limit = self.host.config.max_payload
        if len(payload) > limit:
            raise PayloadTooLargeError(
                f"the message {step.src}->{step.dst} #{step.seq} is {len(payload)} bytes, over the limit of {limit} "
                "(max_payload): no peer could accept it; send a reference to the data instead",
                size=len(payload),
                limit=limit,
            )
        headers = {CLOCK_HEADER: str(self.clock)}
        if self.patches:  # so a role that joins takes the same branches (language/patches.py)
            headers[PATCHES_HEADER] = ",".join(sorted(self.patches))
        if self.host.tracing.enabled:  # nothing reads it otherwise: not built per envelope
            headers["traceparent"] = _traceparent(self.session_id, self.record.role)
        envelope = Envelope(
            session_id=self.session_id,
            choreography=self.choreography.name,
            version=self.choreography.version,
            src=self.record.role,
            dst=step.dst,
            seq=step.seq,
            kind=step.msg_kind,
            payload=payload,
            headers=headers,
        )
        if step.dst == self._defer_to:
            # Held until this role's next step starts (microseconds): if there is none, the
            # envelope carries this role's 'done' to the initiator instead of a message of its own.
            self._deferred = (step, envelope, recorded is None)
        else:
            await self._emit(step, envelope, recorded is None)
        self.step_now = None

    async def _emit(self, step: Step, envelope: Envelope, new: bool) -> None:
        if not self.durable:
            await self.host.emit([envelope])
            return
        if new:
            self._note(step)
        self.sent.add((envelope.dst, envelope.seq))
        self.unsaved.hold(envelope)  # written with the next commit: at the latest when the next step starts

    async def flush(self, *, sending: bool = False) -> None:
        """Before the next step: the held envelope to the initiator goes out after all (this
        role has a next step); before any step but another send, every send held so far is
        written and sent, in one commit with whatever else waits (inbox rows, journal, log
        rows), and so is the initiator's new record, before anything with an effect runs."""
        if self._deferred is not None:
            step, envelope, new = self._deferred
            self._deferred = None
            await self._emit(step, envelope, new)
        if not sending and (self.unsaved.sends or (self.starting is not None and not self.starting.done())):
            await self.save()

    async def save(self) -> None:
        """Commit what waits. A session started through the API is durable before its first
        step with an effect: if that first commit fails, the start is refused (nothing ran)."""
        starting = self.starting
        if starting is None or starting.done():
            await self.unsaved.save()
            return
        try:
            await self.unsaved.save(once=True)
        except StoreError as exc:
            starting.set_exception(exc)
            starting.exception()
            raise StartRefused(str(exc)) from exc
        starting.set_result(None)

    def drop_deferred(self) -> None:
        """Forget the held envelope: the session failed before it went out."""
        self._deferred = None

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
        """Timed and traced (when tracing is on) unless replayed; see :meth:`_recv`."""
        if self._replayed(step):
            return await self._recv(step)
        return await self._live("receive", step, self._recv(step), peer=step.src, seq=step.seq)

    async def _recv(self, step: Step) -> Any:
        """Receive one message: from the mailbox, fed by the transport and (on replay) the inbox."""
        await self.flush()
        self._start_step(step)
        recorded = self._recorded(step)
        assert step.src is not None and step.seq is not None
        timeout = self.host.config.receive_timeout
        try:
            envelope = await self.mailbox.take(step.src, step.seq, timeout)
        except TimeoutError:
            if self.durable:
                raise Park(f"waiting for envelope #{step.seq} from '{step.src}'", (step.src, step.seq)) from None
            raise ReceiveTimeoutError(self.session_id, step.src, step.seq, timeout) from None
        if envelope.kind != step.msg_kind:
            raise NondeterminismError(
                self.session_id, step.index, f"{step.msg_kind} message", f"{envelope.kind} message"
            )
        stamp = envelope.headers.get(CLOCK_HEADER, "0")
        self.clock = max(self.clock, int(stamp) if stamp.isdigit() else 0) + 1
        if recorded is None:
            self._note(step)
        value = self.codec.decode(envelope.payload)
        self.step_now = None
        return value

    async def local(self, step: Step, thunk: LocalThunk) -> Any:
        """Timed and traced (when tracing is on) unless replayed; see :meth:`_local`."""
        if self._replayed(step):
            return await self._local(step, thunk)
        return await self._live("local", step, self._local(step, thunk))

    async def _local(self, step: Step, thunk: LocalThunk) -> Any:
        """Run a local step, or return its recorded result when replaying (journal policy)."""
        await self.flush()
        self._start_step(step)
        recorded = self._recorded(step)
        use_record = step.kind is not StepKind.LOCAL or self.host.config.replay_policy is ReplayPolicy.JOURNAL
        if recorded is not None and recorded.value is not None and use_record:
            if step.kind in (StepKind.UUID, StepKind.RANDOM):
                self._draw(step.kind)
            self.step_now = None
            return self.codec.decode(recorded.value)
        if step.kind in (StepKind.UUID, StepKind.RANDOM) and self.unsaved.record_pending:
            await self.save()  # the seed must be durable before a value drawn from it is used
        if step.kind in (StepKind.UUID, StepKind.RANDOM) and self.record.seed:
            # The n-th draw of its kind, not the step index: a value stays the same even if a
            # changed deployment added other steps before it.
            value: Any = _derive(self.record.seed, step.kind, self._draw(step.kind))
        else:
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
            if step.kind in _DURABLE_AT_ONCE:  # the clock cannot be derived: durable before it is used
                await self.save()
        self.step_now = None
        return value

    def _draw(self, kind: StepKind) -> int:
        number = self.draws.get(kind, 0)
        self.draws[kind] = number + 1
        return number

    async def transaction(self, step: Step, tx: Transaction, args: list[Any]) -> Any:
        """Timed and traced (when tracing is on) unless replayed; see :meth:`_transaction`."""
        if self._replayed(step):
            return await self._transaction(step, tx, args)
        self.tx_attempts = 0
        return await self._live("transaction", step, self._transaction(step, tx, args), transaction=tx.name)
