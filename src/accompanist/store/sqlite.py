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
import errno
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from accompanist.errors import ConfigError, StoreCorruptError, StoreError
from accompanist.store.base import SessionRecord
from accompanist.store.group_commit import DEFAULT_MAX_BATCH, DEFAULT_MAX_DELAY
from accompanist.store.sql import SCHEMA_VERSION, SQLStore, SQLTx, check_meta
from accompanist.store.sql_statements import Statements
from accompanist.store.sqlite_writer import SQLiteWriter, WriteTx

__all__ = ["SQLiteStore"]

_SYNCHRONOUS = ("FULL", "NORMAL", "OFF")
_MAGIC = b"SQLite format 3\x00"
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)
# Below this many free bytes, an I/O error while opening is the file system being full.
_FULL_BELOW = 1024 * 1024
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
        self._point: sqlite3.Connection | None = None  # point reads on the event loop's thread

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r}, role={self.role!r})"

    def _corrupt(self, what: str, *, damaged: bool = False) -> StoreCorruptError:
        """The refusal; ``damaged``: the file looks like a damaged store (not a wrong path)."""
        if damaged:
            p = str(self.path)
            advice = (
                f"Keep a copy of {p!r} together with {p + '-wal'!r} and {p + '-shm'!r} (if present), "
                f"taken while no sidecar uses them; its rows can often be salvaged with "
                f"'sqlite3 {p} .recover > recovered.sql', and the role's peers still hold their side "
                "of its sessions"
            )
        else:
            advice = "point the sidecar at this role's own store (--store)"
        return StoreCorruptError(
            f"{self._name} cannot be used by role '{self.role}': {what}. The file was left unchanged; {advice}."
        )

    def _error(self, exc: BaseException) -> StoreError:
        text = str(exc)
        if isinstance(exc, sqlite3.DatabaseError) and ("malformed" in text or "not a database" in text):
            return self._corrupt(f"the database is damaged ({text})", damaged=True)
        if isinstance(exc, sqlite3.OperationalError) and ("unable to open" in text or "readonly" in text):
            return StoreError(
                f"{self._name}: SQLite cannot open it for writing ({text}): the file, its -wal and -shm "
                f"files and the directory {str(self.path.parent)!r} must be writable by this process; "
                "the file was left unchanged"
            )
        return StoreError(f"{self._name}: {type(exc).__name__}: {text}")

    def _companions(self) -> list[Path]:
        return [self.path.with_name(self.path.name + suffix) for suffix in ("-wal", "-shm")]

    def _has_wal(self) -> bool:
        wal = self._companions()[0]
        try:
            return wal.is_file() and wal.stat().st_size > 0
        except OSError:
            return False

    def _unwritable(self, path: Path, what: str) -> StoreError:
        """The error for a path this process cannot write, naming why and what to do."""
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            reason = exc
        else:
            os.close(fd)
            reason = OSError(errno.EACCES, "cannot write it")
        return self._open_problem(path, what, reason)

    def _open_problem(self, path: Path, what: str, exc: OSError) -> StoreError:
        code = exc.errno
        if code == errno.EROFS:
            why, fix = "it is on a read-only file system", "remount it read-write or point --store at a writable path"
        elif code == errno.EPERM:
            why = "the operating system does not permit writing it (an immutable or append-only attribute?)"
            fix = f"check 'lsattr {path}' and clear the attribute (chattr -i), or point --store elsewhere"
        elif code == errno.EACCES:
            user = os.getuid()
            why = f"permission denied for this process (uid {user})"
            fix = "give this user write permission (chown/chmod) or point --store at a writable path"
        else:
            why, fix = f"{exc.strerror or exc}", "fix it or point --store at another path"
        return StoreError(
            f"{self._name}: cannot write {what} {str(path)!r}: {why}. SQLite needs to write the file, its "
            f"-wal and -shm files and to create them in its directory; {fix}. The file was left unchanged"
        )

    def _check_writable(self) -> None:
        """Refuse, naming the cause, a store this process could read but not write."""
        parent = self.path.parent
        for path in (self.path, *self._companions()):
            if path.exists() and not os.access(path, os.R_OK | os.W_OK):
                raise self._unwritable(path, "the file" if path == self.path else "the companion file")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise self._open_problem(parent, "in the directory", _why_not_writable(parent))

    async def open(self) -> None:
        """Check the file read-only, then create or migrate the schema and start the writer.

        A failed open leaves the store's files as it found them: the companion files SQLite
        created on the way are removed, and so is a new store file that never held anything
        (else a start on a full disk would leave an empty file that the next start must refuse).

        Raises:
            StoreCorruptError: the file is truncated, damaged, not an Accompanist store,
                belongs to another role, or has a newer schema version; it is left unchanged.
            StoreError: the file cannot be opened (missing directory, permissions, locks, a
                full file system).
        """
        if self._committer is not None:
            return
        found = {p for p in (self.path, *self._companions()) if p.exists()}
        try:
            await self._open_checked()
        except StoreError as exc:
            self._remove_created(found)
            full = self._full_disk(exc)
            if full is not None:
                raise full from exc
            raise

    def _remove_created(self, found: set[Path]) -> None:
        fresh = self.path not in found
        for path in (self.path, *self._companions()):
            if path in found:
                continue
            with contextlib.suppress(OSError):
                # A -shm is an index rebuilt from the -wal; an empty -wal holds nothing; a new
                # store file that failed to open never held a session.
                if fresh or path.name.endswith("-shm") or path.stat().st_size == 0:
                    path.unlink()

    def _full_disk(self, exc: StoreError) -> StoreError | None:
        """The accurate error when ``exc`` came from a full file system, else None."""
        text = str(exc).lower()
        if not any(sign in text for sign in ("disk i/o error", "disk is full", "no space left")):
            return None
        try:
            info = os.statvfs(self.path.parent)
        except OSError:
            return None
        free = info.f_bavail * info.f_frsize
        if free >= _FULL_BELOW:
            return None
        return StoreError(
            f"{self._name} cannot be opened: the file system holding {str(self.path.parent)!r} is full ({free} bytes "
            "free), and SQLite must create or grow the -wal and -shm files beside the store to open it. Free some "
            "space (or give its volume more room) and start again; nothing of the store was changed"
        )

    async def _open_checked(self) -> None:
        fresh = self._inspect_header()
        self._check_writable()
        if not fresh:
            await self._inspect_contents()
        writer = SQLiteWriter()
        try:
            await writer.open(self.path, self._setup)
            self._wconn = writer
            self._rconn = await aiosqlite.connect(self.path, isolation_level=None)
            await self._pragmas(self._rconn)
            await self._rconn.execute("PRAGMA query_only=ON")
            self._point = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._point.execute("PRAGMA busy_timeout=0")  # never wait on the loop: fall back instead
            self._point.execute("PRAGMA query_only=ON")
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
        """Check the file's header and size; True when there is no file yet.

        The size is judged only without a -wal file: with one, the main file may legitimately
        be shorter than its header says (a checkpoint cut short by a kill or a full disk, the
        rest of its pages still in the WAL), so SQLite's ``quick_check`` judges it instead.
        """
        if not self.path.exists():
            if not self.path.parent.is_dir():
                what = "is not a directory" if self.path.parent.exists() else "does not exist"
                raise StoreError(
                    f"{self._name}: directory {str(self.path.parent)!r} {what}; create it (or mount its volume) "
                    "or point --store at a path in an existing directory"
                )
            return True
        if not self.path.is_file():
            kind = "a directory" if self.path.is_dir() else "not a regular file"
            raise StoreError(
                f"{self._name}: the path is {kind} (not a regular file), so it cannot be the store; point --store "
                "at a file path (it is created when missing). Nothing was changed"
            )
        try:
            size = self.path.stat().st_size
            with self.path.open("rb") as f:
                header = f.read(100)
        except OSError as exc:
            raise (
                self._open_problem(self.path, "the file", exc)
                if exc.errno in _DENIED
                else StoreError(f"{self._name}: cannot read the file: {exc}")
            ) from exc
        wal = self._has_wal()
        if size == 0 and not wal:
            raise self._corrupt("the file is empty (0 bytes): truncated, or created by something else", damaged=True)
        if size == 0:
            return False  # SQLite judges a WAL with an empty main file
        if not header.startswith(_MAGIC[: min(len(header), 16)]) or len(header) < 16:
            raise self._corrupt("it is not a SQLite database (no SQLite header)")
        if len(header) < 100:
            raise self._corrupt(f"the file is truncated ({size} bytes, shorter than a SQLite header)", damaged=True)
        page_size = int.from_bytes(header[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        if page_size < 512 or page_size & (page_size - 1):
            raise self._corrupt(f"the SQLite header is damaged (page size {page_size})", damaged=True)
        if wal:
            return False
        if size % page_size:
            raise self._corrupt(
                f"the file is truncated ({size} bytes is not a whole number of {page_size}-byte pages, "
                "and there is no -wal file)",
                damaged=True,
            )
        pages = int.from_bytes(header[28:32], "big")
        if pages and header[24:28] == header[92:96] and size < pages * page_size:
            raise self._corrupt(
                f"the file is truncated (its header says {pages} pages, it holds {size // page_size}, "
                "and there is no -wal file holding the rest)",
                damaged=True,
            )
        return False

    async def _inspect_contents(self) -> None:
        """Read-only: integrity, and that this is our schema, role and a version we know."""
        absent = [p for p in self._companions() if not p.exists()]
        try:
            await self._read_contents()
        except StoreCorruptError:
            # Reading a WAL-mode store makes SQLite create the -shm index (a cache, rebuilt from
            # the -wal) and an empty -wal. A refused store must be left as it was found.
            for created in absent:
                with contextlib.suppress(OSError):
                    if created.name.endswith("-shm") or created.stat().st_size == 0:
                        created.unlink()
            raise

    async def _read_contents(self) -> None:
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        try:
            conn = await aiosqlite.connect(uri, uri=True, isolation_level=None)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        try:
            await self._pragmas(conn)
            problems = [" ".join(str(r[0]).split()) for r in await conn.execute_fetchall("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                raise self._corrupt("PRAGMA quick_check found damage: " + "; ".join(problems), damaged=True)
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
        point, self._point = self._point, None
        if point is not None:
            with contextlib.suppress(sqlite3.Error):
                point.close()
        reader, self._rconn = self._rconn, None
        writer, self._wconn = self._wconn, None
        if reader is not None:
            with contextlib.suppress(sqlite3.Error):
                await reader.close()
        if writer is not None:
            with contextlib.suppress(sqlite3.Error):
                await writer.close()

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """The session, or None.

        Read on the event loop's own thread: a lookup by primary key takes microseconds in a
        WAL database (readers never wait for the writer), while a hop to the reader thread
        costs a few hundred microseconds of CPU across two threads, and every session a peer
        opens here is looked up once. If SQLite cannot answer at once (a lock held by another
        process), the read goes to the reader thread as any other.
        """
        point = self._point
        if point is not None and self._committer is not None:
            try:
                rows = point.execute(self._q.get_session, (session_id,)).fetchall()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise self._error(exc) from exc
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
            else:
                return self._session(rows[0]) if rows else None
        return await super().get_session(session_id)

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


def _why_not_writable(directory: Path) -> OSError:
    """Why a file cannot be created in ``directory``, learnt by trying (permissions, an
    immutable attribute or a read-only file system each give their own errno, whoever we are)."""
    probe = directory / f".accompanist-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError as exc:
        return exc
    os.close(fd)  # os.access said no, but it could: remove the probe, report permissions
    with contextlib.suppress(OSError):
        probe.unlink()
    return OSError(errno.EACCES, os.strerror(errno.EACCES))
