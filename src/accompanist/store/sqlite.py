"""``SQLiteStore``: the embedded default store, one SQLite file per sidecar.

WAL mode with ``synchronous=FULL`` by default: a committed batch survives power loss, and
readers (a second connection) never wait for the writer. Writes go through the group
committer, so concurrent sessions share one fsync.

Before touching a file, :meth:`SQLiteStore.open` inspects it read-only (header, page count,
``PRAGMA quick_check``, the ``acc_meta`` table) and refuses, with :class:`StoreCorruptError`,
anything that is not an intact Accompanist store of this role and of a schema version this
code knows. Such a file is never modified, so nothing is lost by a misconfigured path.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from accompanist.errors import ConfigError, StoreCorruptError, StoreError
from accompanist.store.group_commit import DEFAULT_MAX_BATCH, DEFAULT_MAX_DELAY
from accompanist.store.sql import SCHEMA_VERSION, SQLStore, SQLTx, check_meta
from accompanist.store.sql_statements import Statements
from accompanist.store.sqlite_writer import SQLiteWriter, WriteTx

__all__ = ["SQLiteStore"]

_SYNCHRONOUS = ("FULL", "NORMAL", "OFF")
_MAGIC = b"SQLite format 3\x00"
_ENV_DDL = """session_id TEXT NOT NULL, choreography TEXT NOT NULL, version INTEGER NOT NULL,
    src TEXT NOT NULL, dst TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL,
    payload BLOB NOT NULL, headers TEXT NOT NULL, auth TEXT NOT NULL"""

_V1 = (
    "CREATE TABLE acc_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE acc_sessions (session_id TEXT PRIMARY KEY, choreography TEXT NOT NULL,
        version INTEGER NOT NULL, role TEXT NOT NULL, status TEXT NOT NULL, args BLOB NOT NULL,
        result BLOB, error TEXT, attempts INTEGER NOT NULL, created_at REAL NOT NULL,
        updated_at REAL NOT NULL)""",
    "CREATE INDEX acc_sessions_status ON acc_sessions (status, updated_at)",
    "CREATE INDEX acc_sessions_created ON acc_sessions (created_at, session_id)",
    f"""CREATE TABLE acc_inbox (id INTEGER PRIMARY KEY, {_ENV_DDL}, received_at REAL NOT NULL,
        UNIQUE (session_id, src, dst, seq))""",
    f"""CREATE TABLE acc_outbox (id INTEGER PRIMARY KEY, {_ENV_DDL}, acked INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL, UNIQUE (session_id, src, dst, seq))""",
    "CREATE INDEX acc_outbox_acked ON acc_outbox (acked, id)",
    """CREATE TABLE acc_journal (session_id TEXT NOT NULL, step INTEGER NOT NULL, kind TEXT NOT NULL,
        name TEXT NOT NULL, value BLOB, PRIMARY KEY (session_id, step))""",
    """CREATE TABLE acc_txlog (key TEXT PRIMARY KEY, session_id TEXT NOT NULL, name TEXT NOT NULL,
        step INTEGER NOT NULL, status TEXT NOT NULL, result BLOB, updated_at REAL NOT NULL)""",
    "CREATE INDEX acc_txlog_session ON acc_txlog (session_id, step)",
)


# Version 2: the engine's failure, seed and state of a session; a commit's arguments and
# Lamport clock. Added columns have constant defaults, so SQLite rewrites no rows. The index
# serves prune's "has this session an unacknowledged outbox row?" probe: without it (and
# without ANALYZE statistics, which a store never gathers) SQLite answers it through
# acc_outbox_acked, scanning every unacknowledged row once per prunable session.
_V2 = (
    "ALTER TABLE acc_sessions ADD COLUMN failure BLOB",
    "ALTER TABLE acc_sessions ADD COLUMN seed BLOB NOT NULL DEFAULT x''",
    "ALTER TABLE acc_sessions ADD COLUMN state BLOB",
    "ALTER TABLE acc_txlog ADD COLUMN args BLOB",
    "ALTER TABLE acc_txlog ADD COLUMN clock INTEGER NOT NULL DEFAULT 0",
    "CREATE INDEX acc_outbox_session ON acc_outbox (session_id, acked)",
    # The relay scans each destination's unacknowledged rows apart (so a dead peer's backlog
    # never starves the others), and its cost must not grow with the rows already acknowledged.
    "CREATE INDEX acc_outbox_pending ON acc_outbox (dst, id) WHERE acked = 0",
)


def _migrate_to_1(db: sqlite3.Connection) -> None:
    for ddl in _V1:
        db.execute(ddl)


def _migrate_to_2(db: sqlite3.Connection) -> None:
    for ddl in _V2:
        db.execute(ddl)


# One function per schema version: MIGRATIONS[n] turns a version n-1 store into version n; a
# new store runs them all. They run in the writer thread, inside the transaction that also
# updates acc_meta, so a failed migration leaves the store at its old version.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _migrate_to_1, 2: _migrate_to_2}


class SQLiteStore(SQLStore):
    """A :class:`~accompanist.store.base.Store` in one SQLite file.

    Args:
        path: the database file (created if missing; its directory must exist).
        role: the role this store belongs to; a file of another role is refused.
        synchronous: ``FULL`` (default: durable across power loss), ``NORMAL`` (durable
            across process crashes only) or ``OFF`` (tests).
        group_delay: seconds the group committer may wait for more batches under load.
        group_max_batch: most batches per transaction (1 disables group commit).
        busy_timeout: seconds to wait for a lock held by another process.

    Raises:
        ConfigError: an unknown ``synchronous`` level or bad group commit settings.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        role: str,
        *,
        synchronous: str = "FULL",
        group_delay: float = DEFAULT_MAX_DELAY,
        group_max_batch: int = DEFAULT_MAX_BATCH,
        busy_timeout: float = 5.0,
    ) -> None:
        level = str(synchronous).upper()
        if level not in _SYNCHRONOUS:
            raise ConfigError(f"SQLite synchronous must be one of {', '.join(_SYNCHRONOUS)}, got {synchronous!r}")
        self.path = Path(path)
        super().__init__(
            role=role,
            name=f"SQLite store {str(self.path)!r}",
            statements=Statements.build(lambda name: name, lambda sql: sql),
            group_delay=group_delay,
            group_max_batch=group_max_batch,
        )
        self._synchronous = level
        self._busy_ms = int(busy_timeout * 1000)
        self._wconn: SQLiteWriter | None = None
        self._rconn: aiosqlite.Connection | None = None

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r}, role={self.role!r})"

    def _corrupt(self, what: str) -> StoreCorruptError:
        name = self.path.name
        return StoreCorruptError(
            f"{self._name} cannot be used by role '{self.role}': {what}. The files were left unchanged. "
            f"It may hold sessions that are still running: keep a copy of {name}, {name}-wal and {name}-shm "
            f"together (copy all three) before anything else; `sqlite3 {name} .recover` can rescue the rows "
            "of a damaged file into a new one. To serve meanwhile, point the sidecar at another path."
        )

    def _error(self, exc: BaseException) -> StoreError:
        text = str(exc)
        if isinstance(exc, sqlite3.DatabaseError) and ("malformed" in text or "not a database" in text):
            return self._corrupt(f"the database is damaged ({text})")
        if isinstance(exc, sqlite3.OperationalError) and ("readonly" in text or "unable to open" in text):
            return StoreError(f"{self._name}: {text}: {self._access_problem()}")
        return StoreError(f"{self._name}: {type(exc).__name__}: {text}")

    def _access_problem(self) -> str:
        """Why SQLite could not open or write the store, as far as the file system tells."""
        directory = self.path.parent
        uid = os.geteuid() if hasattr(os, "geteuid") else "?"
        if not directory.is_dir():
            return f"directory {str(directory)!r} does not exist; create it or choose another store path"
        if self.path.exists() and not os.access(self.path, os.W_OK):
            return (
                f"the file is read-only for this process (uid {uid}); make it writable (chmod u+w) or run as its owner"
            )
        if not os.access(directory, os.W_OK):
            return (
                f"directory {str(directory)!r} is not writable by this process (uid {uid}): SQLite must create "
                f"{self.path.name}-wal and {self.path.name}-shm beside the store; fix its permissions"
            )
        return (
            "the file system refused the write (mounted read-only, immutable, or full); "
            "make it writable, or choose another store path"
        )

    async def open(self) -> None:
        """Check the file read-only, then create or migrate the schema and start the writer.

        Raises:
            StoreCorruptError: the file is truncated, damaged, not an Accompanist store,
                belongs to another role, or has a newer schema version; it is left unchanged.
            StoreError: the file cannot be opened (missing directory, permissions, locks).
        """
        if self._committer is not None:
            return
        fresh = self._inspect_header()
        if not fresh:
            await self._inspect_contents()
        writer = SQLiteWriter()
        try:
            await writer.open(self.path, self._setup)
            self._wconn = writer
            self._rconn = await aiosqlite.connect(self.path, isolation_level=None)
            await self._pragmas(self._rconn)
            await self._rconn.execute("PRAGMA query_only=ON")
        except (sqlite3.Error, OSError) as exc:
            await writer.close()
            await self._close_connections()
            raise self._error(exc) from exc
        except BaseException:
            await writer.close()
            await self._close_connections()
            raise
        self._start_writer()

    def _setup(self, db: sqlite3.Connection) -> None:
        """In the writer thread: pragmas, WAL, then create or migrate the schema."""
        db.execute(f"PRAGMA busy_timeout={self._busy_ms}")
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            raise StoreError(f"{self._name}: cannot switch to WAL mode (got {mode!r})")
        db.execute(f"PRAGMA synchronous={self._synchronous}")
        self._migrate(db)

    async def _pragmas(self, conn: aiosqlite.Connection) -> None:
        await conn.execute(f"PRAGMA busy_timeout={self._busy_ms}")

    def _inspect_header(self) -> bool:
        """Check the file's header and size; True when there is no file yet."""
        if not self.path.exists():
            if not self.path.parent.is_dir():
                raise StoreError(f"{self._name}: directory {str(self.path.parent)!r} does not exist")
            return True
        if not self.path.is_file():
            raise self._corrupt("the path is not a regular file")
        try:
            size = self.path.stat().st_size
            with self.path.open("rb") as f:
                header = f.read(100)
        except OSError as exc:
            raise StoreError(f"{self._name}: cannot read the file: {exc}") from exc
        if size == 0:
            raise self._corrupt("the file is empty (0 bytes): truncated, or created by something else")
        if not header.startswith(_MAGIC[: min(len(header), 16)]) or len(header) < 16:
            raise self._corrupt("it is not a SQLite database (no SQLite header)")
        if len(header) < 100:
            raise self._corrupt(f"the file is truncated ({size} bytes, shorter than a SQLite header)")
        page_size = int.from_bytes(header[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        if page_size < 512 or page_size & (page_size - 1):
            raise self._corrupt(f"the SQLite header is damaged (page size {page_size})")
        if size % page_size:
            raise self._corrupt(f"the file is truncated ({size} bytes is not a whole number of {page_size}-byte pages)")
        pages = int.from_bytes(header[28:32], "big")
        wal = self.path.with_name(self.path.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            return False  # a checkpoint was cut short: the WAL holds the rest; quick_check judges
        if pages and header[24:28] == header[92:96] and size < pages * page_size:
            raise self._corrupt(f"the file is truncated (its header says {pages} pages, it holds {size // page_size})")
        return False

    async def _inspect_contents(self) -> None:
        """Read-only: integrity, and that this is our schema, role and a version we know."""
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        try:
            conn = await aiosqlite.connect(uri, uri=True, isolation_level=None)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        try:
            await self._pragmas(conn)
            problems = [" ".join(str(r[0]).split()) for r in await conn.execute_fetchall("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                raise self._corrupt("PRAGMA quick_check found damage: " + "; ".join(problems))
            rows = await conn.execute_fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
            tables = sorted(str(r[0]) for r in rows)
            if not tables:
                return  # an empty database: ours to initialize
            if "acc_meta" not in tables:
                listing = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
                raise self._corrupt(f"it is not an Accompanist store (it holds other tables: {listing})")
            meta = {str(k): str(v) for k, v in await conn.execute_fetchall("SELECT key, value FROM acc_meta")}
            self._check_meta(meta, tables)
        except sqlite3.Error as exc:
            # Damage ("malformed", "not a database") is StoreCorruptError; a lock or a
            # permission problem stays a plain StoreError.
            raise self._error(exc) from exc
        finally:
            await conn.close()

    def _check_meta(self, meta: dict[str, str], tables: Sequence[str]) -> int:
        return check_meta(meta, tables, role=self.role, corrupt=self._corrupt)

    def _migrate(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            tables = [str(r[0]) for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            version = 0
            if "acc_meta" in tables:
                meta = {str(k): str(v) for k, v in db.execute("SELECT key, value FROM acc_meta")}
                version = self._check_meta(meta, tables)
            elif tables:
                raise self._corrupt("it is not an Accompanist store")
            for target in range(version + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[target](db)
            if version < SCHEMA_VERSION:
                meta_rows = [("app", "accompanist"), ("role", self.role), ("schema_version", str(SCHEMA_VERSION))]
                if version == 0:
                    meta_rows.append(("created_at", repr(time.time())))
                db.executemany(
                    "INSERT INTO acc_meta (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    meta_rows,
                )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        """Commit what is queued, then close both connections. Idempotent."""
        await self._stop_writer()
        await self._close_connections()

    async def _close_connections(self) -> None:
        reader, self._rconn = self._rconn, None
        writer, self._wconn = self._wconn, None
        if reader is not None:
            with contextlib.suppress(sqlite3.Error):
                await reader.close()
        if writer is not None:
            with contextlib.suppress(sqlite3.Error):
                await writer.close()

    async def _fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Sequence[Any]]:
        conn = self._rconn
        if conn is None or self._committer is None:
            raise StoreError(f"{self._name}: the store is not open")
        try:
            return [tuple(r) for r in await conn.execute_fetchall(sql, tuple(args))]
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[SQLTx]:
        writer = self._wconn
        if writer is None:
            raise StoreError(f"{self._name}: the store is not open")
        tx = WriteTx(writer)
        try:
            yield tx
            await tx.commit()
        except BaseException as exc:
            if tx.begun:
                with contextlib.suppress(sqlite3.Error, RuntimeError):
                    await writer.rollback()
            if isinstance(exc, sqlite3.Error):
                raise self._error(exc) from exc
            raise
