"""``SQLStore``: the store contract written once in SQL, for SQLite and PostgreSQL.

The two databases accept the same statements (``INSERT ... ON CONFLICT``, ``excluded``), so
the statements and row encoding (:mod:`accompanist.store.sql_statements`) and every read live
in this one abstract class; the thin subclasses only connect, create and check the schema,
and run a write transaction. Envelope fields are stored as columns and headers as JSON text:
nothing is pickled.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import msgspec

from accompanist.envelope import Envelope
from accompanist.errors import ConfigError, StoreCorruptError, StoreError
from accompanist.store.base import (
    AtomicScope,
    JournalEntry,
    OutboxRow,
    SessionRecord,
    StoreCounts,
    TxRecord,
    WriteBatch,
)
from accompanist.store.group_commit import DEFAULT_MAX_BATCH, DEFAULT_MAX_DELAY, GroupCommitStats, GroupCommitter
from accompanist.store.sql_statements import Row, Statements, env_row, journal_row, session_row, tx_row
from accompanist.store.validation import validate_batch

__all__ = ["SCHEMA_VERSION", "TABLES", "SQLStore", "SQLTx", "check_meta"]

SCHEMA_VERSION = 2
"""The schema version this code writes; ``open()`` migrates older stores up to it."""

TABLES = ("acc_meta", "acc_sessions", "acc_inbox", "acc_outbox", "acc_journal", "acc_txlog")
"""The tables of a store of any version (version 2 added columns, not tables), in creation order."""

_HEADERS: msgspec.json.Decoder[dict[str, str]] = msgspec.json.Decoder(dict[str, str])


def _opt_bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


class _RolledBack(Exception):  # noqa: N818 - internal signal
    """The atomic scope ended with an error: roll its transaction back."""


class SQLTx(Protocol):
    """One open write transaction, as the subclasses expose it."""

    async def executemany(self, sql: str, rows: list[Row]) -> None:
        """Run ``sql`` once per row."""

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run ``sql`` once; return the number of rows it changed."""

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        """Run the query ``sql``; return its rows."""


class AtomicConnection:
    """The store's database connection as lent to a service inside a saga transaction.

    Statements run inside the transaction that also records the saga step, so the service's
    write and the runtime's record commit (or roll back) together. Use the database's own
    placeholders: ``?`` for SQLite, ``$1`` for PostgreSQL. After a statement fails, the
    transaction is rolled back and every further statement is refused.
    """

    def __init__(self, tx: SQLTx, store: str) -> None:
        self._tx = tx
        self._store = store
        self._broken: BaseException | None = None

    async def _guard(self, op: Callable[[], Any]) -> Any:
        if self._broken is not None:
            raise StoreError(f"{self._store}: the transaction was rolled back after: {self._broken}")
        try:
            return await op()
        except BaseException as exc:
            self._broken = exc
            raise

    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; return how many rows it changed."""
        result: int = await self._guard(lambda: self._tx.execute(sql, args))
        return result

    async def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """Run one statement per row."""
        await self._guard(lambda: self._tx.executemany(sql, rows))

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Run a query; return its rows as tuples."""
        rows: list[tuple[Any, ...]] = await self._guard(lambda: self._tx.fetch(sql, args))
        return rows


def check_meta(
    meta: dict[str, str], tables: Sequence[str], *, role: str, corrupt: Callable[[str], StoreCorruptError]
) -> int:
    """Check a store's ``acc_meta`` rows; return its schema version.

    Args:
        meta: the ``acc_meta`` key/value rows.
        tables: the names of the tables present next to it.
        role: the role that wants to use the store.
        corrupt: builds the error from a reason, naming the store.

    Raises:
        StoreCorruptError: not Accompanist's meta table, an unreadable or newer schema version,
            another role's store, or a store with tables missing.
    """
    if meta.get("app") != "accompanist":
        raise corrupt("its acc_meta table is not Accompanist's (no app=accompanist marker)")
    try:
        version = int(meta.get("schema_version", ""))
    except ValueError:
        raise corrupt(f"its schema version {meta.get('schema_version')!r} is unreadable") from None
    if version > SCHEMA_VERSION:
        raise corrupt(
            f"its schema version {version} is newer than this Accompanist supports ({SCHEMA_VERSION}); "
            "upgrade Accompanist"
        )
    if version < 1:
        raise corrupt(f"its schema version {version} is invalid")
    if meta.get("role") != role:
        raise corrupt(f"it belongs to role '{meta.get('role')}'")
    # Every version so far has all of TABLES, so an older store missing one is refused here,
    # before its migration would fail on it halfway.
    missing = [t for t in TABLES if t not in tables]
    if missing:
        raise corrupt(f"tables are missing: {', '.join(missing)}")
    return version


class SQLStore(abc.ABC):
    """The :class:`~accompanist.store.base.Store` protocol over a SQL database.

    Subclasses implement :meth:`open`, :meth:`close`, :meth:`_fetch` and :meth:`_transaction`;
    every write goes through one :class:`GroupCommitter`, created by :meth:`_start_writer`.

    Args:
        role: the role whose state this store holds.
        name: how error messages name the store (a path, or a DSN without its password).
        statements: the dialect's statements.
        group_delay: the group committer's ``max_delay`` (seconds; 0 allowed).
        group_max_batch: the group committer's ``max_batch`` (1 disables merging).
    """

    def __init__(
        self,
        *,
        role: str,
        name: str,
        statements: Statements,
        group_delay: float = DEFAULT_MAX_DELAY,
        group_max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        if group_delay < 0 or group_max_batch < 1:
            raise ConfigError(f"need group_delay >= 0 and group_max_batch >= 1, got {group_delay}, {group_max_batch}")
        self.role = role
        self._name = name
        self._q = statements
        self._group_delay = group_delay
        self._group_max_batch = group_max_batch
        self._committer: GroupCommitter | None = None
        self._last_stats = GroupCommitStats()

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, check and migrate the schema, then start the writer."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush pending writes and disconnect."""

    @abc.abstractmethod
    async def _fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Sequence[Any]]:
        """Run a read; raise :class:`StoreError` on any database failure."""

    @abc.abstractmethod
    def _transaction(self) -> AbstractAsyncContextManager[SQLTx]:
        """A write transaction: committed on normal exit, rolled back on error.

        Raises :class:`StoreError` for any database failure, from entering to committing.
        """

    @property
    def commit_stats(self) -> GroupCommitStats:
        """Group commit counters (transactions, batches ...)."""
        return self._committer.stats if self._committer is not None else self._last_stats

    def _start_writer(self) -> None:
        self._committer = GroupCommitter(
            self._apply, max_delay=self._group_delay, max_batch=self._group_max_batch, name=self._name
        )

    async def _stop_writer(self) -> None:
        if self._committer is not None:
            committer, self._committer = self._committer, None
            await committer.close()
            self._last_stats = committer.stats

    def _writer(self) -> GroupCommitter:
        if self._committer is None:
            raise StoreError(f"{self._name}: the store is not open")
        return self._committer

    async def commit(self, batch: WriteBatch) -> None:
        """Make ``batch`` durable, all or nothing, in a transaction shared with concurrent callers.

        Raises:
            StoreError: the batch is invalid (nothing written, other callers unaffected), the
                store is not open, or the transaction failed (nothing of it was committed).
        """
        writer = self._writer()
        if not (isinstance(batch, WriteBatch) and batch.trusted):
            validate_batch(batch, store=self._name)
        if batch:
            await writer.commit(batch)

    #: Whether an atomic scope must hold the single writer (SQLite) or may run beside it.
    _exclusive_atomic = True

    @contextlib.asynccontextmanager
    async def atomic(self) -> AsyncIterator[AtomicScope]:
        """A transaction the caller writes in; ``scope.batch`` commits with it.

        SQLite has one writer, so the scope holds it (group commits wait meanwhile): keep the
        work inside short and local. PostgreSQL runs the scope on its own pooled connection.

        Raises:
            StoreError: the store failed; nothing of the scope was committed.
        """
        if not self._exclusive_atomic:
            async with self._transaction() as tx:
                scope = AtomicScope(AtomicConnection(tx, self._name))
                yield scope
                validate_batch(scope.batch, store=self._name)
                await self._write_batch(tx, scope.batch)
            return
        loop = asyncio.get_running_loop()
        entered: asyncio.Future[AtomicScope] = loop.create_future()
        release: asyncio.Future[bool] = loop.create_future()

        async def hold_the_writer() -> None:
            async with self._transaction() as tx:
                entered.set_result(AtomicScope(AtomicConnection(tx, self._name)))
                if not await release:
                    raise _RolledBack
                scope = entered.result()
                validate_batch(scope.batch, store=self._name)
                await self._write_batch(tx, scope.batch)

        job = asyncio.ensure_future(self._writer().run_exclusive(hold_the_writer))
        waiting: list[asyncio.Future[Any]] = [entered, job]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if not entered.done():
            await job  # it failed before the transaction opened: raise why
            raise StoreError(f"{self._name}: could not open a transaction")  # pragma: no cover
        try:
            yield entered.result()
        except BaseException:
            release.set_result(False)
            with contextlib.suppress(_RolledBack, StoreError):
                await job
            raise
        release.set_result(True)
        await job

    async def _apply(self, batches: list[WriteBatch]) -> None:
        merged = WriteBatch()
        for batch in batches:
            merged.extend(batch)
        async with self._transaction() as tx:
            await self._write_batch(tx, merged)

    async def _write_batch(self, tx: SQLTx, merged: WriteBatch) -> None:
        now = time.time()
        await self._write_sessions(tx, merged.sessions)
        await self._write_inbox(tx, merged.inbox, now)
        await self._write_outbox(tx, merged.outbox, now)
        await self._write_acks(tx, merged.acks)
        await self._write_journal(tx, merged.journal)
        await self._write_txlog(tx, merged.txlog)

    async def _write_sessions(self, tx: SQLTx, rows: list[SessionRecord]) -> None:
        if rows:
            await tx.executemany(self._q.upsert_session, [session_row(r) for r in rows])

    async def _write_inbox(self, tx: SQLTx, rows: list[Envelope], now: float) -> None:
        if rows:
            await tx.executemany(self._q.insert_inbox, [(*env_row(e), now) for e in rows])

    async def _write_outbox(self, tx: SQLTx, rows: list[Envelope], now: float) -> None:
        if rows:
            await tx.executemany(self._q.insert_outbox, [(*env_row(e), 0, now) for e in rows])

    async def _write_acks(self, tx: SQLTx, acks: list[tuple[str, str, int]]) -> None:
        if acks:
            await tx.executemany(self._q.ack, [(sid, self.role, dst, seq) for sid, dst, seq in acks])

    async def _write_journal(self, tx: SQLTx, rows: list[JournalEntry]) -> None:
        if rows:
            await tx.executemany(self._q.insert_journal, [journal_row(e) for e in rows])

    async def _write_txlog(self, tx: SQLTx, rows: list[TxRecord]) -> None:
        if rows:
            await tx.executemany(self._q.upsert_tx, [tx_row(r) for r in rows])

    # Reads. A row that cannot be decoded raises StoreError naming the store and session.

    def _session(self, row: Sequence[Any]) -> SessionRecord:
        try:
            return SessionRecord(
                session_id=row[0],
                choreography=row[1],
                version=int(row[2]),
                role=row[3],
                status=row[4],
                args=bytes(row[5]),
                result=_opt_bytes(row[6]),
                error=row[7],
                attempts=int(row[8]),
                created_at=float(row[9]),
                updated_at=float(row[10]),
                failure=_opt_bytes(row[11]),
                seed=bytes(row[12]),
                state=_opt_bytes(row[13]),
            )
        except (TypeError, ValueError) as exc:
            raise StoreError(f"{self._name}: unreadable session row {row[0]!r}: {exc}") from exc

    def _envelope(self, row: Sequence[Any]) -> Envelope:
        try:
            return Envelope(
                session_id=row[0],
                choreography=row[1],
                version=int(row[2]),
                src=row[3],
                dst=row[4],
                seq=int(row[5]),
                kind=row[6],
                payload=bytes(row[7]),
                headers=_HEADERS.decode(row[8]),
                auth=row[9],
            )
        except (TypeError, ValueError, msgspec.DecodeError) as exc:
            raise StoreError(f"{self._name}: unreadable envelope row of session {row[0]!r}: {exc}") from exc

    def _tx(self, row: Sequence[Any]) -> TxRecord:
        try:
            return TxRecord(
                key=row[0],
                session_id=row[1],
                name=row[2],
                step=int(row[3]),
                status=row[4],
                result=_opt_bytes(row[5]),
                updated_at=float(row[6]),
                args=_opt_bytes(row[7]),
                clock=int(row[8]),
            )
        except (TypeError, ValueError) as exc:
            raise StoreError(f"{self._name}: unreadable transaction row {row[0]!r}: {exc}") from exc

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """The session, or None."""
        rows = await self._fetch(self._q.get_session, (session_id,))
        return self._session(rows[0]) if rows else None

    async def list_sessions(self, status: str | None = None, limit: int = 1000) -> list[SessionRecord]:
        """Sessions, newest first (by ``created_at``, then ``session_id``)."""
        limit = max(int(limit), 0)
        if status is None:
            rows = await self._fetch(self._q.list_sessions, (limit,))
        else:
            rows = await self._fetch(self._q.list_sessions_status, (status, limit))
        return [self._session(r) for r in rows]

    async def nonterminal_sessions(self) -> list[SessionRecord]:
        """Every session not in a terminal status, oldest first."""
        return [self._session(r) for r in await self._fetch(self._q.nonterminal)]

    async def inbox_load(self, session_id: str) -> list[Envelope]:
        """The session's inbox ordered by (src, seq), then dst so the order is total."""
        return [self._envelope(r) for r in await self._fetch(self._q.inbox_load, (session_id,))]

    async def outbox_load(self, session_id: str) -> list[OutboxRow]:
        """The session's outbox rows in insertion order."""
        rows = await self._fetch(self._q.outbox_load, (session_id,))
        return [OutboxRow(self._envelope(r), bool(r[10])) for r in rows]

    async def outbox_pending(self, limit: int = 1000, dst: str | None = None) -> list[Envelope]:
        """Unacknowledged outbox envelopes of every session (or only to ``dst``), oldest first."""
        if dst is None:
            rows = await self._fetch(self._q.outbox_pending, (max(int(limit), 0),))
        else:
            rows = await self._fetch(self._q.outbox_pending_to, (dst, max(int(limit), 0)))
        return [self._envelope(r) for r in rows]

    async def journal_load(self, session_id: str) -> list[JournalEntry]:
        """The session's journal in step order."""
        rows = await self._fetch(self._q.journal_load, (session_id,))
        return [
            JournalEntry(session_id=r[0], step=int(r[1]), kind=r[2], name=r[3], value=_opt_bytes(r[4])) for r in rows
        ]

    async def txlog_load(self, session_id: str) -> list[TxRecord]:
        """The session's transaction records in step order (then key)."""
        rows = await self._fetch(self._q.txlog_load, (session_id,))
        return [self._tx(r) for r in rows]

    async def prune(self, before: float, tombstones_before: float | None = None) -> int:
        """Delete terminal sessions' rows in one transaction run by the writer.

        Inbox, outbox, journal and transaction rows go for terminal sessions updated before
        ``before``; session rows (tombstones, kept so late duplicates are recognized) go when
        updated before ``tombstones_before``, and their other rows with them. Non-terminal
        sessions are never touched, nor is any row of a session that still has an
        unacknowledged outbox row, however old: the peer may still need it.

        Returns:
            The number of rows deleted.

        Raises:
            StoreError: the store is not open or the database failed (nothing deleted).
        """
        cutoff = float(before if tombstones_before is None else max(before, tombstones_before))

        async def job() -> int:
            async with self._transaction() as tx:
                deleted = 0
                for sql in self._q.prune_children:
                    deleted += await tx.execute(sql, (cutoff,))
                if tombstones_before is not None:
                    deleted += await tx.execute(self._q.prune_sessions, (float(tombstones_before),))
                return deleted

        return await self._writer().run_exclusive(job)

    async def counts(self) -> StoreCounts:
        """Row counts."""
        row = (await self._fetch(self._q.counts))[0]
        return StoreCounts(*(int(x) for x in row))
