"""The engine's access to its store: an outage is waited out, never turned into an outcome.

A lost PostgreSQL connection, a full disk or a locked file are infrastructure errors: a saga
must not compensate because of them. Writes and reads a session depends on are therefore
retried here with backoff until the store answers (the session waits meanwhile, as if parked),
while :attr:`StoreGuard.healthy` says whether the store works, for ``/healthz`` and for
refusing new sessions with 503. An invalid batch (``StoreInputError``) is a bug or bad input,
not an outage: it is raised at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec

from accompanist.errors import StoreCorruptError, StoreError, StoreInputError
from accompanist.store.base import SessionRecord, Store, WriteBatch

__all__ = ["StoreGuard"]

T = TypeVar("T")

_FIRST_DELAY = 0.01
_PROBE_EVERY = 1.0


class StoreGuard:
    """Retries the store's writes and reads through outages and tracks its health.

    Args:
        store: the store.
        retry_max: the longest pause between two tries, in seconds.
        log: where outages and recoveries are logged (once each, not per try).
    """

    def __init__(self, store: Store, retry_max: float, log: logging.Logger, lazy_interval: float = 1.0) -> None:
        self.store = store
        self._retry_max = max(retry_max, _FIRST_DELAY)
        self._log = log
        self._lazy_interval = lazy_interval
        self._riders = WriteBatch()
        self._deferred: dict[str, SessionRecord] = {}
        self._flush: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None
        self.failing_since: float | None = None
        self.last_error = ""
        self.failures = 0
        self._last_failure = 0.0
        self._waiting = 0  # operations in a retry loop: until they pass, the store is failing
        self.on_commit: Callable[[float], None] | None = None  # told each commit's seconds (a histogram)

    @property
    def healthy(self) -> bool:
        """Whether the last store operation succeeded."""
        return self.failing_since is None

    def worth_trying(self) -> bool:
        """Whether a caller that could be told "later" should try the store now: it works, or
        it failed over a second ago (each such try probes whether it is back)."""
        return self.failing_since is None or time.monotonic() - self._last_failure >= _PROBE_EVERY

    def health(self) -> dict[str, object]:
        """``{"store": "ok"}``, or since when and why the store fails."""
        if self.failing_since is None:
            return {"store": "ok"}
        return {"store": "failing", "since": self.failing_since, "error": self.last_error}

    def _failed(self, exc: StoreError) -> None:
        self.failures += 1
        self._last_failure = time.monotonic()
        self.last_error = str(exc)
        if self.failing_since is None:
            self.failing_since = time.time()
            self._log.warning("the store failed; retrying until it answers: %s", exc)

    def _worked(self) -> None:
        # A read that passes while a write waits for space (a full disk still serves reads)
        # does not make the store healthy: /healthz would flap between 200 and 503.
        if self.failing_since is not None and not self._waiting:
            self._log.warning("the store works again after %.1fs", time.time() - self.failing_since)
            self.failing_since = None

    async def commit(self, batch: WriteBatch) -> None:
        """Make ``batch`` durable, trying until the store takes it (with any deferred writes
        riding along: they cost no commit of their own then).

        Raises:
            StoreInputError: the batch is invalid (nothing written).
        """
        riders = self._take_riders()
        if riders:
            batch.extend(riders)
        batch.trusted = True  # built by the engine from checked inputs (see WriteBatch.trusted)
        began = time.perf_counter()
        await self.retry(lambda: self.store.commit(batch))
        if self.on_commit is not None:
            self.on_commit(time.perf_counter() - began)
        self._written(batch)

    def defer(self, batch: WriteBatch) -> None:
        """Writes that may be lost without harm (acknowledgement marks, a role's record of an
        outcome it can ask for again): they ride on the next commit, or are flushed within
        ``lazy_interval`` seconds."""
        self._riders.extend(batch)
        for record in batch.sessions:
            self._deferred[record.session_id] = record
        if self._flush is None and self._flushing is None:
            self._flush = asyncio.get_running_loop().call_later(self._lazy_interval, self._start_flush)

    def deferred(self, session_id: str) -> SessionRecord | None:
        """A record written with :meth:`defer` and not yet in the store."""
        record = self._deferred.get(session_id)
        return None if record is None else msgspec.structs.replace(record)

    async def flush(self) -> None:
        """Write what was deferred now (before closing the store)."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        riders = self._take_riders()
        if riders:
            riders.trusted = True
            await self.retry(lambda: self.store.commit(riders))
            self._written(riders)

    def _take_riders(self) -> WriteBatch | None:
        if not self._riders:
            return None
        riders, self._riders = self._riders, WriteBatch()
        return riders

    def _written(self, batch: WriteBatch) -> None:
        for record in batch.sessions:
            if self._deferred.get(record.session_id) is record:
                del self._deferred[record.session_id]

    def _start_flush(self) -> None:
        self._flush = None
        self._flushing = asyncio.ensure_future(self._flush_quietly())

    async def _flush_quietly(self) -> None:
        try:
            await self.flush()
        except Exception as exc:  # lost deferred writes are harmless by definition
            self._log.warning("could not write deferred rows: %s", exc)
        finally:
            self._flushing = None
            if self._riders:
                self._flush = asyncio.get_running_loop().call_later(self._lazy_interval, self._start_flush)

    async def commit_once(self, batch: WriteBatch) -> None:
        """Try ``batch`` once (for callers that can answer "try again later" instead).

        Raises:
            StoreError: the store failed (the health says so too).
        """
        batch.trusted = True
        await self.once(lambda: self.store.commit(batch))

    async def once(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op`` once, noting the store's health.

        Raises:
            StoreError: it failed.
        """
        try:
            result = await op()
        except (StoreInputError, StoreCorruptError):
            raise
        except StoreError as exc:
            self._failed(exc)
            raise
        self._worked()
        return result

    async def retry(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op`` until it succeeds, backing off between tries (cancellable). While it
        waits, the store counts as failing, whatever other operations succeed meanwhile.

        Raises:
            StoreInputError: ``op`` was refused as invalid; not retried.
            StoreCorruptError: the store is damaged; not retried.
        """
        delay = _FIRST_DELAY
        waiting = False
        try:
            while True:
                try:
                    result = await op()
                except (StoreInputError, StoreCorruptError):
                    raise
                except StoreError as exc:
                    self._failed(exc)
                    if not waiting:
                        waiting = True
                        self._waiting += 1
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._retry_max)
                    continue
                if waiting:
                    waiting = False
                    self._waiting -= 1
                self._worked()
                return result
        finally:
            if waiting:
                self._waiting -= 1
