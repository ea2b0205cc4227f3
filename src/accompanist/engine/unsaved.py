"""What one run has done but not yet made durable, written with its next commit.

Fault-tolerant mode costs one durable write per hop, not one per row: a receiver does not make
an envelope's inbox row durable before working on it, as long as nothing it produces becomes
visible first. So the inbox rows of received envelopes, the transaction-log rows of commits,
the session's own record when it is new, the journal, and the sends of the step just taken
all wait here and go into one commit, made when the run's next step starts (a send must be
out before the run waits for an answer), when its status changes, or, at the latest,
``ack_linger`` seconds after the first of them arrived. Each received envelope is acknowledged
to its sender only after the commit that holds its inbox row.

Why each relaxation is safe (the README's fault-tolerance section says the same):

- an inbox row that is lost in a crash was never acknowledged, so the sender delivers the
  envelope again and the replay receives it;
- a send is written (and leaves) before the run waits on anything, in the same commit as the
  inbox rows and journal entries it depends on: no peer sees an effect of an envelope this role
  could forget;
- a transaction-log row lost in a crash means the commit runs again after the replay, with the
  same idempotency key, which is what a service's idempotency is for (an ``atomic`` commit
  writes its row in the service's own transaction instead);
- a local step or a service call after the last durable point runs again after a crash, with
  the same step key and the same ``ch.uuid`` values, as before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import msgspec

from accompanist.envelope import Envelope
from accompanist.errors import EnvelopeRejectedError
from accompanist.store.base import JournalEntry, SessionRecord, TxRecord, WriteBatch

if TYPE_CHECKING:
    from accompanist.engine.host import Host


class Owner(Protocol):
    """The run the rows belong to (a :class:`~accompanist.engine.session.SessionRun`)."""

    record: SessionRecord
    pending: list[JournalEntry]

    @property
    def session_id(self) -> str:
        """The session's id."""

    def take_pending(self) -> list[JournalEntry]:
        """Journal entries not yet durable, for the caller's batch."""


__all__ = ["Owner", "Unsaved"]


class Unsaved:
    """The rows and sends of one run that wait for its next commit.

    Args:
        host: the engine (store guard, emit, settings).
        run: the run they belong to (its record and journal).
    """

    def __init__(self, host: Host, run: Owner) -> None:
        self._host = host
        self._run = run
        self._batch: WriteBatch | None = None  # made when a row arrives
        self._sends: list[Envelope] = []
        self._record = False
        self._savers: list[asyncio.Future[None]] = []

    def __bool__(self) -> bool:
        return bool(
            (self._batch is not None and self._batch)
            or self._sends
            or self._record
            or self._savers
            or self._run.pending
        )

    @property
    def record_pending(self) -> bool:
        """Whether the session's record (and so its seed) is not durable yet."""
        return self._record

    @property
    def waiting(self) -> bool:
        """Whether a sender waits for something here to be durable."""
        return bool(self._savers)

    @property
    def sends(self) -> int:
        """Sends waiting for the commit (they leave right after it)."""
        return len(self._sends)

    def record(self) -> None:
        """The session's record is new here: it is written with the next commit."""
        self._record = True
        self._arm()

    def arrived(self, envelope: Envelope) -> asyncio.Future[None]:
        """A received envelope: its inbox row goes with the next commit; the future is done when
        it is durable (then, and only then, the sender may be told)."""
        self._rows().inbox.append(envelope)
        return self.saver()

    def received(self, src: str, seq: int) -> Envelope | None:
        """A received envelope whose inbox row waits here, if it does."""
        batch = self._batch
        if batch is None:
            return None
        return next((e for e in batch.inbox if e.src == src and e.seq == seq), None)

    def saver(self) -> asyncio.Future[None]:
        """A future done once everything recorded so far is durable."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._savers.append(future)
        self._arm()
        return future

    def _rows(self) -> WriteBatch:
        batch = self._batch
        if batch is None:
            batch = self._batch = WriteBatch()
        return batch

    def txlog(self, entry: TxRecord) -> None:
        """A commit's log row: durable with the next commit (lost, the commit runs again)."""
        self._rows().txlog.append(entry)

    def hold(self, envelope: Envelope) -> None:
        """A durable send: written with the next commit, sent right after it."""
        self._sends.append(envelope)

    def take(self, batch: WriteBatch) -> tuple[list[Envelope], list[asyncio.Future[None]]]:
        """Move everything waiting into ``batch`` (the record first, so a status change in
        ``batch`` wins); returns the sends to emit and the savers to resolve after the commit."""
        # What waited was done first, so it is applied first: a row of ``batch`` (a status
        # change, a compensated mark) overwrites an older one of the same key, never the reverse.
        earlier, self._batch = self._batch, None
        pending = self._run.take_pending()
        if earlier is not None or self._record or pending:
            earlier = earlier or WriteBatch()
            if self._record:
                earlier.sessions.insert(0, msgspec.structs.replace(self._run.record))
                self._record = False
            earlier.journal.extend(pending)
            earlier.extend(batch)
            batch.sessions, batch.inbox, batch.outbox = earlier.sessions, earlier.inbox, earlier.outbox
            batch.acks, batch.journal, batch.txlog = earlier.acks, earlier.journal, earlier.txlog
        sends, self._sends = self._sends, []
        batch.outbox.extend(sends)
        savers, self._savers = self._savers, []
        self._disarm()
        return sends, savers

    async def save(
        self, batch: WriteBatch | None = None, sends: Sequence[Envelope] = (), *, once: bool = False
    ) -> None:
        """Commit what waits (with ``batch`` and, durably, ``sends``), then tell the senders
        their envelopes are safe and send what waited to be sent. ``once``: try the store once
        instead of waiting out an outage.

        Raises:
            StoreInputError: the commit was refused as invalid.
            StoreError: with ``once``, the store failed (nothing was written or sent).
        """
        write = batch or WriteBatch()
        held, savers = self.take(write)
        durable = self._host.durable
        if durable:
            write.outbox.extend(sends)
        try:
            if write and once:
                await self._host.guard.commit_once(write)
            elif write:
                await self._host.guard.commit(write)
        except BaseException as exc:
            _fail(savers, exc)
            raise
        for future in savers:
            if not future.done():
                future.set_result(None)
        await self._host.emit([*held, *sends])

    def fail(self, role: str) -> None:
        """The run stops (at ``role``) with rows unsaved: their senders are told to deliver again."""
        self._batch = None
        self._sends = []
        savers, self._savers = self._savers, []
        if savers:
            why = f"session {self._run.session_id} stopped at '{role}' before saving; deliver again"
            _fail(savers, EnvelopeRejectedError(why, code="stopping", permanent=False))
        self._disarm()

    def _arm(self) -> None:
        if self._host.durable:
            self._host.lingering.arm(self)

    def backlog(self) -> tuple[list[Envelope], float]:
        """The received envelopes waiting here for their commit (so not yet acknowledged), and
        since when (``time.monotonic()``) the oldest of them has waited at most (for metrics)."""
        waited = self._host.lingering.waited(self)
        return list(self._batch.inbox) if self._batch is not None else [], time.monotonic() - waited

    def _disarm(self) -> None:
        self._host.lingering.disarm(self)

    def lingered(self) -> None:
        """Its rows waited ``ack_linger`` seconds: commit them now (without the run)."""
        if self._savers or self._record:
            self._host.spawn_background(self._save_quietly(), f"linger-{self._run.session_id}")

    async def _save_quietly(self) -> None:
        try:
            await self.save()
        except Exception as exc:  # the savers were told; the run's own next commit retries
            self._host.log.warning("could not save session %s: %s", self._run.session_id, exc)


def _fail(savers: list[asyncio.Future[None]], exc: BaseException) -> None:
    for future in savers:
        if not future.done():
            future.set_exception(exc)
            future.exception()  # retrieved: a waiter that gave up must not log it
