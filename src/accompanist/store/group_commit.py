"""Group commit: many callers' write batches share one transaction, hence one fsync.

A durable commit costs one fsync (about 0.2 ms on a host-cached disk, several ms on a real
one), and that cost does not grow with the size of the transaction. So when many sessions
write at once, the cheapest thing is to let a single writer task take every batch queued so
far and apply them together. Callers still see "my batch is durable" semantics: each
``await commit(batch)`` returns only after the transaction holding its batch committed, and
raises if that transaction failed (in which case nothing of it was committed).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from accompanist.errors import AccompanistError, ConfigError, StoreError
from accompanist.store.base import WriteBatch

__all__ = ["DEFAULT_MAX_BATCH", "DEFAULT_MAX_DELAY", "GroupCommitStats", "GroupCommitter"]

T = TypeVar("T")

DEFAULT_MAX_DELAY = 0.002
DEFAULT_MAX_BATCH = 512

ApplyFn = Callable[[list[WriteBatch]], Awaitable[None]]


@dataclass(frozen=True)
class GroupCommitStats:
    """Counters of one committer, for metrics and the group commit benchmark.

    Attributes:
        transactions: transactions attempted for batches (one per flush).
        batches: batches those transactions carried.
        failed_transactions: transactions that raised (their batches' callers saw the error).
        jobs: exclusive jobs run (e.g. retention pruning).
        largest_group: the most batches one transaction carried.
    """

    transactions: int = 0
    batches: int = 0
    failed_transactions: int = 0
    jobs: int = 0
    largest_group: int = 0

    @property
    def batches_per_transaction(self) -> float:
        """Mean group size; 1.0 means group commit never merged anything."""
        return self.batches / self.transactions if self.transactions else 0.0


class _Job:
    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[], Awaitable[Any]], future: asyncio.Future[Any]) -> None:
        self.fn = fn
        self.future = future


class GroupCommitter:
    """Serializes every write of a store through one writer task that merges batches.

    Args:
        apply: applies a list of batches in ONE transaction, all or nothing; it raises
            :class:`StoreError` (or anything, which is wrapped into one) on failure.
        max_delay: seconds the writer may wait for more batches when there is load (0: never
            wait). Under no load a commit never waits: the writer only waits when the previous
            transaction carried several batches or commits arrived while it ran, and stops
            waiting as soon as as many batches are queued as the previous transaction carried
            or no new one arrived for half the delay.
        max_batch: most batches in one transaction (1 disables merging).
        name: used in error messages (e.g. the store's path).

    Raises:
        ConfigError: a negative delay or a max_batch below 1.
    """

    def __init__(
        self,
        apply: ApplyFn,
        *,
        max_delay: float = DEFAULT_MAX_DELAY,
        max_batch: int = DEFAULT_MAX_BATCH,
        name: str = "store",
    ) -> None:
        if max_delay < 0:
            raise ConfigError(f"group commit max_delay must be >= 0 seconds, got {max_delay!r}")
        if max_batch < 1:
            raise ConfigError(f"group commit max_batch must be >= 1, got {max_batch!r}")
        self._apply = apply
        self._max_delay = max_delay
        self._max_batch = max_batch
        self._name = name
        self._queue: collections.deque[tuple[WriteBatch, asyncio.Future[None]]] = collections.deque()
        self._jobs: collections.deque[_Job] = collections.deque()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._last_group = 1
        self._arrived_during_flush = False
        self._flushing = False
        self._stats = GroupCommitStats()

    @property
    def stats(self) -> GroupCommitStats:
        """A snapshot of the counters."""
        return self._stats

    @property
    def max_delay(self) -> float:
        """Seconds the writer may wait for more batches under load."""
        return self._max_delay

    @property
    def max_batch(self) -> int:
        """Most batches merged into one transaction."""
        return self._max_batch

    async def commit(self, batch: WriteBatch) -> None:
        """Queue ``batch`` and wait until the transaction holding it committed.

        If the caller is cancelled while waiting, the batch may still be committed: once
        queued it is part of the next transaction.

        Raises:
            StoreError: the committer is closed, or the transaction failed (nothing of it
                was committed).
        """
        if self._closing:
            raise StoreError(f"{self._name}: the store is closed; cannot commit")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((batch, future))
        if self._flushing:
            self._arrived_during_flush = True
        self._ensure_writer()
        self._wake.set()
        await future

    async def run_exclusive(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` in the writer task, between two group transactions.

        Used for writes that are not batches (retention pruning), so that a store has a
        single writer and SQLite never sees two write transactions at once.

        Raises:
            StoreError: the committer is closed; anything ``fn`` raises.
        """
        if self._closing:
            raise StoreError(f"{self._name}: the store is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.append(_Job(fn, future))
        self._ensure_writer()
        self._wake.set()
        return await future

    async def close(self) -> None:
        """Commit what is queued, then stop the writer task. Idempotent."""
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            await asyncio.shield(self._writer)

    def _ensure_writer(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._run(), name=f"group-commit:{self._name}")

    async def _run(self) -> None:
        try:
            while True:
                if self._jobs:
                    await self._run_job(self._jobs.popleft())
                    continue
                if not self._queue:
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                await self._gather()
                group = [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]
                await self._flush(group)
        except BaseException as exc:
            # The writer must never die silently with callers still waiting on it.
            error = StoreError(f"{self._name}: the store's writer stopped ({exc!r})")
            self._fail_all(error)
            raise

    async def _gather(self) -> None:
        """Wait briefly for more batches, but only when there is load (see the class doc)."""
        want = min(self._max_batch, max(self._last_group, 2 if self._arrived_during_flush else 1))
        if self._max_delay <= 0 or len(self._queue) >= want or self._closing:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_delay
        quiet = self._max_delay / 2
        while len(self._queue) < want and not self._jobs and not self._closing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), min(remaining, quiet))
            except TimeoutError:
                return  # nobody else is coming soon: do not make the queued callers wait

    async def _flush(self, group: list[tuple[WriteBatch, asyncio.Future[None]]]) -> None:
        self._flushing = True
        self._arrived_during_flush = False
        error: BaseException | None = None
        try:
            await self._apply([batch for batch, _ in group])
        except asyncio.CancelledError:
            for _, future in group:
                if not future.done():
                    future.set_exception(StoreError(f"{self._name}: the store's writer was cancelled mid-commit"))
            raise
        except Exception as exc:
            error = exc if isinstance(exc, AccompanistError) else StoreError(f"{self._name}: commit failed: {exc!r}")
            if error is not exc:
                error.__cause__ = exc
        finally:
            self._flushing = False
        s = self._stats
        self._stats = GroupCommitStats(
            transactions=s.transactions + 1,
            batches=s.batches + len(group),
            failed_transactions=s.failed_transactions + (error is not None),
            jobs=s.jobs,
            largest_group=max(s.largest_group, len(group)),
        )
        self._last_group = len(group)
        for _, future in group:
            if future.done():
                continue  # the caller was cancelled
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

    async def _run_job(self, job: _Job) -> None:
        try:
            result = await job.fn()
        except asyncio.CancelledError:
            if not job.future.done():
                job.future.cancel()
            raise
        except Exception as exc:
            if not job.future.done():
                job.future.set_exception(exc)
        else:
            if not job.future.done():
                job.future.set_result(result)
        s = self._stats
        self._stats = GroupCommitStats(
            transactions=s.transactions,
            batches=s.batches,
            failed_transactions=s.failed_transactions,
            jobs=s.jobs + 1,
            largest_group=s.largest_group,
        )

    def _fail_all(self, error: StoreError) -> None:
        self._closing = True
        while self._queue:
            _, future = self._queue.popleft()
            if not future.done():
                future.set_exception(error)
        while self._jobs:
            job = self._jobs.popleft()
            if not job.future.done():
                job.future.set_exception(error)
