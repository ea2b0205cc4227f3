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
import os
from typing import TYPE_CHECKING, Any

from accompanist.engine.config import Mode, ReplayPolicy
from accompanist.engine.mailbox import Mailbox
from accompanist.engine.stepkey import StepKey, reset_current_step, set_current_step
from accompanist.envelope import Envelope
from accompanist.errors import CodecError, NondeterminismError, ReceiveTimeoutError, SessionFailedError
from accompanist.language.choreo import LocalThunk
from accompanist.language.choreography import Choreography
from accompanist.language.steps import Step, StepKind
from accompanist.store.base import JournalEntry, SessionRecord, WriteBatch

if TYPE_CHECKING:
    from accompanist.engine.engine import Engine

__all__ = ["Park", "SessionRun", "journal_name"]


class Park(Exception):  # noqa: N818 - a signal, not an error
    """A receive timed out in fault-tolerant mode: the session waits (parked) for its envelope."""

    def __init__(self, src: str, seq: int) -> None:
        self.src = src
        self.seq = seq
        super().__init__(f"waiting for envelope #{seq} from '{src}'")


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
        self.task: asyncio.Task[None] | None = None
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
    def fail_from_peer(self, exc: BaseException) -> None:
        """A peer reported the session failed (or an operator cancelled it): wake and stop."""
        if self.failure is None:
            self.failure = exc
        self.mailbox.fail(exc)

    def _check_failed(self) -> None:
        if self.failure is not None:
            raise self.failure

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

    def _note(self, step: Step, value: bytes | None = None) -> JournalEntry | None:
        if not self.durable:
            return None
        entry = JournalEntry(
            session_id=self.session_id, step=step.index, kind=str(step.kind), name=journal_name(step), value=value
        )
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
        self._check_failed()
        recorded = self._recorded(step)
        assert step.dst is not None and step.seq is not None
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
        if not self.durable:
            await self.engine.deliver_now(envelope)
            return
        if recorded is None:
            self._note(step)
        await self.engine.store.commit(WriteBatch(outbox=[envelope], journal=self.take_pending()))
        self.sent.add((step.dst, step.seq))
        self.engine.relay_kick(envelope)

    async def recv(self, step: Step) -> Any:
        """Receive one message: from the mailbox, fed by the transport and (on replay) the inbox."""
        self._check_failed()
        recorded = self._recorded(step)
        assert step.src is not None and step.seq is not None
        timeout = self.engine.config.receive_timeout
        try:
            envelope = await self.mailbox.take(step.src, step.seq, timeout)
        except TimeoutError:
            if self.durable:
                raise Park(step.src, step.seq) from None
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
        self._check_failed()
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

    def remote_failure(self, src: str, reason: str) -> SessionFailedError:
        """The error a receive wakes with when ``src`` reports the session failed."""
        return SessionFailedError(self.session_id, src, reason)
