"""The relay: delivers outbox envelopes until the peer acknowledges them.

A fresh send is delivered at once. A delivery that cannot reach its peer backs off per
destination (jittered exponential), and a periodic scan of the outbox picks up everything
unacknowledged, so rows written before a crash are delivered after the restart. A peer that
(re)starts says hello; its backoff is reset and its rows are retried at once.

A delivery that waits its whole timeout without an answer does not prove the envelope lost:
on a slow link (a loaded peer) it is still queued there, and a copy sent now would only queue
behind it, making the link slower still until every envelope is sent again and again and none
gets through. So a peer that leaves deliveries unanswered is given twice as long to answer the
next ones (up to a minute), and less again as its answers come back quicker, as TCP backs off
its retransmission timer. A long wait costs nothing when the peer is well (it answers at once)
nor when the connection breaks (the send fails at once); a short bound would keep an
overloaded peer overloaded with copies, for good.

A peer that answers but refuses one envelope is reachable: only that envelope backs off (a
refusal that may pass, such as a version not deployed yet), or, when the refusal is for good
(the envelope can never be accepted), the envelope is not retried and its session fails. One
poisoned row never delays other sessions' envelopes to the same peer.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from accompanist.engine.config import EngineConfig
from accompanist.engine.metrics import Metrics
from accompanist.envelope import Envelope
from accompanist.errors import AccompanistError, EnvelopeRejectedError, FrameError, TransportError
from accompanist.store.base import Store, WriteBatch
from accompanist.transport.base import Transport

__all__ = ["Relay"]

_ACKED_FOR = 10.0  # seconds a deferred acknowledgement mark keeps a row from being redelivered
_PATIENCE_LIMIT = 60.0  # seconds a delivery may wait for its answer, at most (or deliver_timeout if longer)
_PER_DESTINATION = 2_000  # rows per destination and scan; more wait for the next scan


@dataclass
class _Backoff:
    failures: int = 0
    due: float = 0.0


class Relay:
    """Redelivers unacknowledged outbox envelopes (fault-tolerant mode only).

    Args:
        store: where the outbox lives.
        transport: how envelopes travel.
        config: retry bounds, delivery timeout and concurrency, scan interval.
        metrics: counters for deliveries and retries.
        log: logger.
        on_refused: called (in a task of its own) with an envelope a peer refused for good.
        destinations: every role this sidecar may send to (the outbox is scanned per role).
        on_acked: takes acknowledgement marks to write when convenient (a lost one only means
            a duplicate delivery, which the receiver drops): they never cost a commit of their
            own. None: each is committed at once.
    """

    def __init__(
        self,
        store: Store,
        transport: Transport,
        config: EngineConfig,
        metrics: Metrics,
        log: logging.Logger,
        on_refused: Callable[[Envelope, EnvelopeRejectedError], Coroutine[Any, Any, None]] | None = None,
        destinations: Sequence[str] = (),
        on_acked: Callable[[WriteBatch], None] | None = None,
    ) -> None:
        self._store = store
        self._transport = transport
        self._config = config
        self._metrics = metrics
        self._log = log
        self._limit = max(1, config.delivery_concurrency)
        self._active = 0  # deliveries handed to the transport and not answered yet
        self._queued: collections.deque[Envelope] = collections.deque()  # waiting for a free slot
        self._stopped = False
        self._inflight: set[tuple[str, str, str, int]] = set()
        self._backoff: dict[str, _Backoff] = {}
        self._patience: dict[str, float] = {}  # dst -> how long a delivery waits for an answer, when slow
        self._row_backoff: dict[tuple[str, str, str, int], _Backoff] = {}
        self._pending_since: dict[tuple[str, str, str, int], float] = {}  # key -> first seen pending (monotonic)
        self._on_refused = on_refused
        self._destinations = sorted(set(destinations))
        self._on_acked = on_acked
        self._acked: dict[tuple[str, str, str, int], float] = {}  # acknowledged, the mark not yet durable
        self._wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._rng = random.Random()

    async def start(self) -> None:
        """Start the periodic outbox scan."""
        self._loop_task = asyncio.create_task(self._scan_loop(), name="accompanist-relay")

    async def stop(self) -> None:
        """Stop scanning and cancel deliveries in flight (they stay in the outbox)."""
        self._stopped = True
        self._queued.clear()
        tasks = [t for t in (self._loop_task, *self._tasks) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def kick(self, envelope: Envelope) -> None:
        """Deliver a freshly written outbox envelope now, unless its peer is backing off."""
        if self._due(envelope):
            self._spawn(envelope)

    def wake(self, dst: str) -> None:
        """``dst`` said hello: forget its backoff and rescan the outbox now."""
        self._backoff.pop(dst, None)
        self._patience.pop(dst, None)
        self._wakeup.set()

    def pending_by_peer(self) -> dict[str, tuple[int, float]]:
        """``{peer: (unacknowledged envelopes, seconds the oldest has been pending)}`` as of the
        last outbox scan (for metrics)."""
        now = time.monotonic()
        out: dict[str, tuple[int, float]] = {}
        for key, since in self._pending_since.items():
            count, oldest = out.get(key[2], (0, 0.0))
            out[key[2]] = (count + 1, max(oldest, now - since))
        return out

    @property
    def inflight(self) -> int:
        """Deliveries in flight."""
        return len(self._inflight)

    def _due(self, envelope: Envelope) -> bool:
        now = time.monotonic()
        if envelope.key in self._acked:
            return False
        b = self._backoff.get(envelope.dst)
        if b is not None and b.due > now:
            return False
        row = self._row_backoff.get(envelope.key)
        return row is None or row.due <= now

    def _spawn(self, envelope: Envelope) -> None:
        key = envelope.key
        if key in self._inflight:
            return
        self._inflight.add(key)
        if self._active >= self._limit:
            self._queued.append(envelope)  # started when a delivery in flight ends
            return
        self._start(envelope)

    def _start(self, envelope: Envelope) -> None:
        """Hand one envelope to the transport; :meth:`_answered` takes it from there. No task per
        envelope: the transport's answer future calls back."""
        if self._stopped or not self._due(envelope):
            self._inflight.discard(envelope.key)
            return
        self._active += 1
        patience = self._patience.get(envelope.dst, self._config.deliver_timeout)
        began = time.monotonic()
        try:
            answer = self._transport.post(envelope, patience)
        except Exception as exc:  # a transport that cannot even start: a failed try like any other
            answer = asyncio.get_running_loop().create_future()
            answer.set_exception(exc)
        answer.add_done_callback(lambda done: self._answered(envelope, done, patience, began))

    def _answered(self, envelope: Envelope, answer: asyncio.Future[None], patience: float, began: float) -> None:
        self._active -= 1
        key = envelope.key
        took = time.monotonic() - began
        exc = None if answer.cancelled() else answer.exception()
        recording = False  # a refusal for good is being recorded: the row stays ours until then
        try:
            if self._stopped:
                return
            if answer.cancelled():
                self._failed(envelope.dst, TransportError("the delivery was cancelled"))
            elif exc is None:
                self._quicker(envelope.dst, took)
                self._backoff.pop(envelope.dst, None)
                self._row_backoff.pop(key, None)
                self._metrics.delivered.inc()
                mark = WriteBatch(acks=[(envelope.session_id, envelope.dst, envelope.seq)], trusted=True)
                if self._on_acked is not None:
                    self._acked[key] = time.monotonic()
                    self._on_acked(mark)
                else:
                    self._task(self._commit_quietly(mark, envelope))
            elif isinstance(exc, EnvelopeRejectedError):
                self._backoff.pop(envelope.dst, None)  # the peer is up: it answered
                if not exc.permanent:
                    self._retry_row(envelope, exc)
                else:
                    recording = True
                    self._task(self._refused(envelope, exc))
            elif isinstance(exc, FrameError):  # it cannot even be framed (too large): never deliverable
                why = EnvelopeRejectedError(f"cannot be sent: {exc}", code="too-large", permanent=True)
                recording = True
                self._task(self._refused(envelope, why))
            elif isinstance(exc, (AccompanistError, OSError, TimeoutError)):
                if took >= patience:  # unanswered, not refused: maybe only slow
                    longest = max(_PATIENCE_LIMIT, self._config.deliver_timeout)
                    self._patience[envelope.dst] = min(2 * patience, longest)
                self._failed(envelope.dst, exc)
            else:  # pragma: no cover - a bug in a transport: log it, retry the row later
                self._log.error("delivery of %s failed unexpectedly", key, exc_info=exc)
        finally:
            if not recording:
                self._inflight.discard(key)
            self._next()

    def _next(self) -> None:
        while self._queued and self._active < self._limit:
            self._start(self._queued.popleft())

    def _task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _commit_quietly(self, mark: WriteBatch, envelope: Envelope) -> None:
        try:
            await self._store.commit(mark)
        except AccompanistError as exc:  # the ack could not be stored: the row is retried later
            self._log.warning("could not record acknowledgement of %s: %s", envelope.key, exc)

    def _retry_row(self, envelope: Envelope, exc: EnvelopeRejectedError) -> None:
        """A refusal that may pass: only this envelope backs off."""
        b = self._row_backoff.setdefault(envelope.key, _Backoff())
        b.failures += 1
        delay = min(self._config.retry_max * 4, self._config.retry_min * (2 ** min(b.failures - 1, 20)))
        b.due = time.monotonic() + delay * self._rng.uniform(0.5, 1.0)
        self._metrics.retries.inc()
        if b.failures in (10, 100) or b.failures % 1000 == 0:  # once or twice is routine
            self._log.warning("role '%s' refused %s (%d times): %s", envelope.dst, envelope.key, b.failures, exc)

    def _quicker(self, dst: str, seconds: float) -> None:
        """``dst`` answered a delivery in ``seconds``: wait four times that for the next answers
        (never less than the delivery timeout)."""
        patience = self._patience.get(dst)
        if patience is None:
            return
        calmer = 4 * seconds
        if calmer <= self._config.deliver_timeout:
            del self._patience[dst]
        elif calmer < patience:
            self._patience[dst] = calmer

    async def _refused(self, envelope: Envelope, exc: EnvelopeRejectedError) -> None:
        """Never deliverable: stop trying, and let the session fail with the reason."""
        key = envelope.key
        try:
            self._row_backoff.pop(key, None)
            await self._store.commit(WriteBatch(acks=[(envelope.session_id, envelope.dst, envelope.seq)], trusted=True))
            if self._on_refused is not None:
                self._task(self._on_refused(envelope, exc))
        except AccompanistError as exc_:
            self._log.warning("could not record the refusal of %s: %s", key, exc_)
        finally:
            self._inflight.discard(key)

    def _failed(self, dst: str, exc: BaseException) -> None:
        b = self._backoff.setdefault(dst, _Backoff())
        b.failures += 1
        delay = min(self._config.retry_max, self._config.retry_min * (2 ** min(b.failures - 1, 20)))
        b.due = time.monotonic() + delay * self._rng.uniform(0.5, 1.0)
        self._metrics.retries.inc()
        if b.failures in (1, 10) or b.failures % 100 == 0:
            self._log.info("delivery to '%s' failed (%d in a row): %s", dst, b.failures, exc)

    async def _scan_loop(self) -> None:
        while True:
            pending: list[Envelope] = []
            now = time.monotonic()
            failed = False
            # Each destination is scanned apart, up to its own share: a dead peer's backlog
            # (skipped while it backs off) never starves retries to a healthy one.
            for dst in self._destinations:
                b = self._backoff.get(dst)
                if b is not None and b.due > now:
                    continue
                try:
                    pending += await self._store.outbox_pending(limit=_PER_DESTINATION, dst=dst)
                except AccompanistError as exc:
                    if not failed:
                        self._log.warning("outbox scan failed: %s", exc)
                    failed = True
            for envelope in pending:
                if self._due(envelope):
                    self._spawn(envelope)
            self._wakeup.clear()
            keep = {e.key for e in pending}
            # Acknowledged rows whose mark is not durable yet are not waiting for their peer.
            unacked = {key for key in keep if key not in self._acked}
            self._metrics.outbox_unacked.set(len(unacked))
            for key in unacked:
                self._pending_since.setdefault(key, now)
            for key in [k for k in self._pending_since if k not in unacked]:
                del self._pending_since[key]
            oldest = min(self._pending_since.values(), default=now)
            self._metrics.outbox_oldest.set(now - oldest)
            for key in [k for k in self._row_backoff if k not in keep]:
                del self._row_backoff[key]
            for key in [k for k, at in self._acked.items() if k not in keep or at < now - _ACKED_FOR]:
                del self._acked[key]  # its mark is durable now (or it was lost: deliver again)
            soonest = min((b.due for b in (*self._backoff.values(), *self._row_backoff.values())), default=None)
            interval = self._config.relay_interval
            if soonest is not None:
                interval = max(0.005, min(interval, soonest - time.monotonic()))
            try:
                async with asyncio.timeout(interval):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
