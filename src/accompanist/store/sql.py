"""``SQLStore``: the store contract written once in SQL, for SQLite and PostgreSQL.

The two databases accept the same statements here (``INSERT ... ON CONFLICT``, ``excluded``),
so the statements, the row encoding and every read live in this one abstract class; the thin
subclasses only connect, create and check the schema, and run a write transaction. Envelope
fields are stored as columns and headers as JSON text: nothing is pickled.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from accompanist.envelope import Envelope
from accompanist.errors import ConfigError, StoreCorruptError, StoreError
from accompanist.store.base import (
    TERMINAL_STATUSES,
    AtomicScope,
    JournalEntry,
    OutboxRow,
    SessionRecord,
    StoreCounts,
    TxRecord,
    WriteBatch,
)
from accompanist.store.group_commit import DEFAULT_MAX_BATCH, DEFAULT_MAX_DELAY, GroupCommitStats, GroupCommitter
from accompanist.store.validation import validate_batch

__all__ = ["SCHEMA_VERSION", "TABLES", "SQLStore", "SQLTx", "Statements", "check_meta"]

SCHEMA_VERSION = 1
"""The schema version this code writes; ``open()`` migrates older stores up to it."""

TABLES = ("acc_meta", "acc_sessions", "acc_inbox", "acc_outbox", "acc_journal", "acc_txlog")
"""The tables of a current store, in creation order."""

Row = tuple[Any, ...]

_SESSION_COLS = "session_id, choreography, version, role, status, args, result, error, attempts, created_at, updated_at"
_ENV_COLS = "session_id, choreography, version, src, dst, seq, kind, payload, headers, auth"
_JOURNAL_COLS = "session_id, step, kind, name, value"
_TX_COLS = "key, session_id, name, step, status, result, updated_at"
_TERMINAL = ", ".join(f"'{s.value}'" for s in sorted(TERMINAL_STATUSES))
_HEADERS: msgspec.json.Decoder[dict[str, str]] = msgspec.json.Decoder(dict[str, str])


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
            another role's store, or a current-version store with tables missing.
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
    if version == SCHEMA_VERSION:
        missing = [t for t in TABLES if t not in tables]
        if missing:
            raise corrupt(f"tables are missing: {', '.join(missing)}")
    return version


def _upsert(table: str, cols: str, key: str) -> str:
    names = [c.strip() for c in cols.split(",")]
    updates = ", ".join(f"{c} = excluded.{c}" for c in names if c != key)
    marks = ", ".join("?" for _ in names)
    return f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON CONFLICT ({key}) DO UPDATE SET {updates}"


def _insert_ignore(table: str, cols: str, key: str) -> str:
    marks = ", ".join("?" for _ in cols.split(","))
    return f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON CONFLICT ({key}) DO NOTHING"


@dataclass(frozen=True)
class Statements:
    """Every statement the store runs, with tables named and parameters marked per dialect."""

    upsert_session: str
    insert_inbox: str
    insert_outbox: str
    ack: str
    insert_journal: str
    upsert_tx: str
    get_session: str
    list_sessions: str
    list_sessions_status: str
    nonterminal: str
    inbox_load: str
    outbox_load: str
    outbox_pending: str
    journal_load: str
    txlog_load: str
    prune_children: tuple[str, ...]
    prune_sessions: str
    counts: str

    @classmethod
    def build(cls, table: Callable[[str], str], params: Callable[[str], str]) -> Statements:
        """Statements for tables named by ``table(name)``; ``params`` rewrites ``?`` marks."""
        s, i, o, j, t = (table(n) for n in ("acc_sessions", "acc_inbox", "acc_outbox", "acc_journal", "acc_txlog"))
        key = "session_id, src, dst, seq"
        doomed = f"SELECT session_id FROM {s} WHERE status IN ({_TERMINAL}) AND updated_at < ?"
        raw = cls(
            upsert_session=_upsert(s, _SESSION_COLS, "session_id"),
            insert_inbox=_insert_ignore(i, f"{_ENV_COLS}, received_at", key),
            insert_outbox=_insert_ignore(o, f"{_ENV_COLS}, acked, created_at", key),
            ack=f"UPDATE {o} SET acked = 1 WHERE session_id = ? AND dst = ? AND seq = ? AND acked = 0",
            insert_journal=_insert_ignore(j, _JOURNAL_COLS, "session_id, step"),
            upsert_tx=_upsert(t, _TX_COLS, "key"),
            get_session=f"SELECT {_SESSION_COLS} FROM {s} WHERE session_id = ?",
            list_sessions=f"SELECT {_SESSION_COLS} FROM {s} ORDER BY created_at DESC, session_id DESC LIMIT ?",
            list_sessions_status=(
                f"SELECT {_SESSION_COLS} FROM {s} WHERE status = ? ORDER BY created_at DESC, session_id DESC LIMIT ?"
            ),
            nonterminal=(
                f"SELECT {_SESSION_COLS} FROM {s} WHERE status NOT IN ({_TERMINAL}) ORDER BY created_at, session_id"
            ),
            inbox_load=f"SELECT {_ENV_COLS} FROM {i} WHERE session_id = ? ORDER BY src, seq, dst",
            outbox_load=f"SELECT {_ENV_COLS}, acked FROM {o} WHERE session_id = ? ORDER BY id",
            outbox_pending=f"SELECT {_ENV_COLS} FROM {o} WHERE acked = 0 ORDER BY id LIMIT ?",
            journal_load=f"SELECT {_JOURNAL_COLS} FROM {j} WHERE session_id = ? ORDER BY step",
            txlog_load=f"SELECT {_TX_COLS} FROM {t} WHERE session_id = ? ORDER BY step, key",
            prune_children=tuple(f"DELETE FROM {x} WHERE session_id IN ({doomed})" for x in (i, o, j, t)),
            prune_sessions=f"DELETE FROM {s} WHERE status IN ({_TERMINAL}) AND updated_at < ?",
            counts=(
                f"SELECT (SELECT count(*) FROM {s}), (SELECT count(*) FROM {i}), (SELECT count(*) FROM {o}), "
                f"(SELECT count(*) FROM {o} WHERE acked = 0), (SELECT count(*) FROM {j}), (SELECT count(*) FROM {t})"
            ),
        )
        fields = {name: _rewrite(getattr(raw, name), params) for name in raw.__dataclass_fields__}
        return cls(**fields)


def _rewrite(value: str | tuple[str, ...], params: Callable[[str], str]) -> Any:
    return tuple(params(x) for x in value) if isinstance(value, tuple) else params(value)


def _env_row(env: Envelope) -> Row:
    headers = msgspec.json.encode(env.headers).decode() if env.headers else "{}"
    return (
        env.session_id,
        env.choreography,
        env.version,
        env.src,
        env.dst,
        env.seq,
        env.kind,
        env.payload,
        headers,
        env.auth,
    )


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
            await tx.executemany(
                self._q.upsert_session,
                [
                    (
                        r.session_id,
                        r.choreography,
                        r.version,
                        r.role,
                        r.status,
                        r.args,
                        r.result,
                        r.error,
                        r.attempts,
                        float(r.created_at),
                        float(r.updated_at),
                    )
                    for r in rows
                ],
            )

    async def _write_inbox(self, tx: SQLTx, rows: list[Envelope], now: float) -> None:
        if rows:
            await tx.executemany(self._q.insert_inbox, [(*_env_row(e), now) for e in rows])

    async def _write_outbox(self, tx: SQLTx, rows: list[Envelope], now: float) -> None:
        if rows:
            await tx.executemany(self._q.insert_outbox, [(*_env_row(e), 0, now) for e in rows])

    async def _write_acks(self, tx: SQLTx, acks: list[tuple[str, str, int]]) -> None:
        if acks:
            await tx.executemany(self._q.ack, [tuple(a) for a in acks])

    async def _write_journal(self, tx: SQLTx, rows: list[JournalEntry]) -> None:
        if rows:
            await tx.executemany(
                self._q.insert_journal, [(e.session_id, e.step, e.kind, e.name, e.value) for e in rows]
            )

    async def _write_txlog(self, tx: SQLTx, rows: list[TxRecord]) -> None:
        if rows:
            await tx.executemany(
                self._q.upsert_tx,
                [(r.key, r.session_id, r.name, r.step, r.status, r.result, float(r.updated_at)) for r in rows],
            )

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
                result=None if row[6] is None else bytes(row[6]),
                error=row[7],
                attempts=int(row[8]),
                created_at=float(row[9]),
                updated_at=float(row[10]),
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

    async def outbox_pending(self, limit: int = 1000) -> list[Envelope]:
        """Unacknowledged outbox envelopes of every session, oldest first."""
        return [self._envelope(r) for r in await self._fetch(self._q.outbox_pending, (max(int(limit), 0),))]

    async def journal_load(self, session_id: str) -> list[JournalEntry]:
        """The session's journal in step order."""
        rows = await self._fetch(self._q.journal_load, (session_id,))
        return [
            JournalEntry(
                session_id=r[0], step=int(r[1]), kind=r[2], name=r[3], value=None if r[4] is None else bytes(r[4])
            )
            for r in rows
        ]

    async def txlog_load(self, session_id: str) -> list[TxRecord]:
        """The session's transaction records in step order (then key)."""
        rows = await self._fetch(self._q.txlog_load, (session_id,))
        return [
            TxRecord(
                key=r[0],
                session_id=r[1],
                name=r[2],
                step=int(r[3]),
                status=r[4],
                result=None if r[5] is None else bytes(r[5]),
                updated_at=float(r[6]),
            )
            for r in rows
        ]

    async def prune(self, before: float, tombstones_before: float | None = None) -> int:
        """Delete terminal sessions' rows in one transaction run by the writer.

        Inbox, outbox, journal and transaction rows go for terminal sessions updated before
        ``before``; session rows (tombstones, kept so late duplicates are recognized) go when
        updated before ``tombstones_before``, and their other rows with them. Non-terminal
        sessions are never touched.

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
