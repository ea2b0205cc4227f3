"""The SQLite store's writer: one thread, one connection, one thread hop per transaction.

Why not aiosqlite for writes: it hops to its thread once per statement, and a group
transaction is BEGIN, up to six ``executemany`` and COMMIT; measured here, four hops cost
about 370 µs against 190 µs for the same transaction run in one hop, which is what a single
unloaded commit pays. So :class:`WriteTx` buffers the statements and the whole transaction
runs in the writer thread at once; reads stay on an aiosqlite connection.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["SQLiteWriter", "WriteTx"]

T = TypeVar("T")
Row = tuple[Any, ...]
Statement = tuple[str, list[Row]]


def _run(
    db: sqlite3.Connection,
    begin: bool,
    pending: list[Statement],
    single: tuple[str, Sequence[Any]] | None,
    commit: bool,
) -> int:
    """Runs in the writer thread; on any error the transaction is rolled back before raising."""
    try:
        if begin:
            db.execute("BEGIN IMMEDIATE")
        for sql, rows in pending:
            db.executemany(sql, rows)
        changed = max(db.execute(single[0], tuple(single[1])).rowcount, 0) if single else 0
        if commit:
            db.execute("COMMIT")
        return changed
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _query(db: sqlite3.Connection, begin: bool, pending: list[Statement], sql: str, args: Sequence[Any]) -> list[Row]:
    """Like :func:`_run`, but the last statement is a query whose rows are returned."""
    try:
        if begin:
            db.execute("BEGIN IMMEDIATE")
        for statement, rows in pending:
            db.executemany(statement, rows)
        return [tuple(r) for r in db.execute(sql, tuple(args)).fetchall()]
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _rollback(db: sqlite3.Connection) -> None:
    if db.in_transaction:
        db.execute("ROLLBACK")


class SQLiteWriter:
    """Owns the write connection and the thread it lives in."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the writer thread (serialized with every other call)."""
        if self._pool is None:
            raise sqlite3.ProgrammingError("the SQLite writer is closed")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def open(self, path: Path, setup: Callable[[sqlite3.Connection], None]) -> None:
        """Connect in the writer thread and run ``setup`` (pragmas, migrations) there."""
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="accompanist-sqlite-writer")

        def connect() -> None:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            try:
                setup(db)
            except BaseException:
                db.close()
                raise
            self._db = db

        await self.call(connect)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.ProgrammingError("the SQLite writer is not open")
        return self._db

    async def run(
        self, begin: bool, pending: list[Statement], single: tuple[str, Sequence[Any]] | None, commit: bool
    ) -> int:
        """Run buffered statements (and one more whose row count is returned) in one hop."""
        return await self.call(_run, self._conn(), begin, pending, single, commit)

    async def query(self, begin: bool, pending: list[Statement], sql: str, args: Sequence[Any]) -> list[Row]:
        """Run buffered statements and one query in one hop; return the query's rows."""
        return await self.call(_query, self._conn(), begin, pending, sql, args)

    async def rollback(self) -> None:
        """Roll back an open transaction, if any."""
        if self._db is not None:
            await self.call(_rollback, self._db)

    async def close(self) -> None:
        """Close the connection and stop the thread. Idempotent."""
        db, self._db = self._db, None
        if db is not None and self._pool is not None:
            await self.call(db.close)
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)


class WriteTx:
    """A write transaction that sends its statements to the writer thread in as few hops as it can.

    ``executemany`` only buffers; ``execute`` (which must return a row count) and the final
    commit each run everything buffered so far in one hop.
    """

    def __init__(self, writer: SQLiteWriter) -> None:
        self._writer = writer
        self._pending: list[Statement] = []
        self.begun = False

    async def executemany(self, sql: str, rows: list[Row]) -> None:
        """Buffer ``sql`` for every row; it runs with the next ``execute`` or the commit."""
        self._pending.append((sql, rows))

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run what is buffered, then ``sql``, in one hop; return the rows ``sql`` changed."""
        pending, self._pending = self._pending, []
        begin, self.begun = not self.begun, True
        return await self._writer.run(begin, pending, (sql, args), False)

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        """Run what is buffered, then the query ``sql``, in one hop; return its rows."""
        pending, self._pending = self._pending, []
        begin, self.begun = not self.begun, True
        return await self._writer.query(begin, pending, sql, args)

    async def commit(self) -> None:
        """Run what is buffered and COMMIT (BEGIN first if nothing ran yet)."""
        pending, self._pending = self._pending, []
        begin, self.begun = not self.begun, True
        await self._writer.run(begin, pending, None, True)
