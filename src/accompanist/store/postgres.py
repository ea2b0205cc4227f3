"""``PostgresStore``: the store contract on PostgreSQL, through asyncpg.

Each role's tables live in their own PostgreSQL schema (``acc_<role>`` unless the URL says
``?schema=NAME``), so sidecars can share one database (and one server) or have one each; the
schema's ``acc_meta`` names its role, so a sidecar of another role pointed at it refuses it
(two sidecars of one role must never share a schema: one sidecar per role). Every connection
says ``application_name=accompanist-<role>`` (unless the URL sets its own), so
``pg_stat_activity`` shows what each sidecar holds. ``open()`` creates and migrates that
schema under a transaction-scoped advisory lock, so sidecars starting together cannot race. Writes go through
the group committer: one transaction (one WAL flush) per group, rows sent with ``executemany``.

A lost connection (server restart, network cut) surfaces as :class:`StoreError`; the pool
replaces dead connections, so the store works again as soon as the server is back. Because
every write is idempotent (inserts ignore duplicates, upserts rewrite the same row), a group
whose connection died before the commit was confirmed is retried once on a fresh connection.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

from accompanist.errors import ConfigError, StoreCorruptError, StoreError
from accompanist.store.base import WriteBatch
from accompanist.store.group_commit import DEFAULT_MAX_BATCH, DEFAULT_MAX_DELAY
from accompanist.store.sql import SCHEMA_VERSION, SQLStore, SQLTx, check_meta
from accompanist.store.sql_statements import Row, Statements

__all__ = ["PostgresStore", "redact_dsn", "schema_for_role"]

T = TypeVar("T")

_LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.InterfaceError,
    # What asyncpg raises when the server's "terminating connection" notice lands while a
    # query starts: the connection is broken, not the statement.
    asyncpg.exceptions.InternalClientError,
    OSError,
    TimeoutError,
)
_DB_ERRORS = (asyncpg.PostgresError, *_LOST)
_MARK = re.compile(r"\?")


class _ConnectionLostError(StoreError):
    """The server could not be reached or dropped the connection (retryable)."""


def schema_for_role(role: str) -> str:
    """The PostgreSQL schema holding ``role``'s tables: ``acc_<role>``.

    Characters other than ``[a-z0-9_]`` become ``_``; when that changed the name (or it is
    long), a short hash of the exact role is appended so two roles never share a schema.
    """
    base = re.sub(r"[^a-z0-9_]", "_", role.lower())
    if base == role and len(base) <= 40:
        return f"acc_{base}"
    digest = hashlib.blake2b(role.encode(), digest_size=4).hexdigest()
    return f"acc_{base[:40]}_{digest}"


def redact_dsn(dsn: str) -> str:
    """``dsn`` without its password, for error messages and logs."""
    try:
        parts = urllib.parse.urlsplit(dsn)
        if parts.password is None:
            return dsn
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "postgresql://(unparseable DSN)"


def _dollar(sql: str) -> str:
    counter = iter(range(1, 10_000))
    return _MARK.sub(lambda _: f"${next(counter)}", sql)


def _v1(s: str) -> tuple[str, ...]:
    env = """session_id TEXT COLLATE "C" NOT NULL, choreography TEXT NOT NULL, version BIGINT NOT NULL,
        src TEXT COLLATE "C" NOT NULL, dst TEXT COLLATE "C" NOT NULL, seq BIGINT NOT NULL, kind TEXT NOT NULL,
        payload BYTEA NOT NULL, headers TEXT NOT NULL, auth TEXT NOT NULL"""
    return (
        f"CREATE TABLE {s}.acc_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        f"""CREATE TABLE {s}.acc_sessions (session_id TEXT COLLATE "C" PRIMARY KEY, choreography TEXT NOT NULL,
            version BIGINT NOT NULL, role TEXT NOT NULL, status TEXT NOT NULL, args BYTEA NOT NULL, result BYTEA,
            error TEXT, attempts BIGINT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL)""",
        f"CREATE INDEX acc_sessions_status ON {s}.acc_sessions (status, updated_at)",
        f"CREATE INDEX acc_sessions_created ON {s}.acc_sessions (created_at, session_id)",
        f"""CREATE TABLE {s}.acc_inbox (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, {env},
            received_at DOUBLE PRECISION NOT NULL, UNIQUE (session_id, src, dst, seq))""",
        f"""CREATE TABLE {s}.acc_outbox (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, {env},
            acked SMALLINT NOT NULL DEFAULT 0, created_at DOUBLE PRECISION NOT NULL,
            UNIQUE (session_id, src, dst, seq))""",
        f"CREATE INDEX acc_outbox_acked ON {s}.acc_outbox (acked, id)",
        f"""CREATE TABLE {s}.acc_journal (session_id TEXT COLLATE "C" NOT NULL, step BIGINT NOT NULL,
            kind TEXT NOT NULL, name TEXT NOT NULL, value BYTEA, PRIMARY KEY (session_id, step))""",
        f"""CREATE TABLE {s}.acc_txlog (key TEXT COLLATE "C" PRIMARY KEY, session_id TEXT COLLATE "C" NOT NULL,
            name TEXT NOT NULL, step BIGINT NOT NULL, status TEXT NOT NULL, result BYTEA,
            updated_at DOUBLE PRECISION NOT NULL)""",
        f"CREATE INDEX acc_txlog_session ON {s}.acc_txlog (session_id, step)",
    )


def _v2(s: str) -> tuple[str, ...]:
    # The engine's failure, seed and state of a session; a commit's arguments and Lamport
    # clock. Constant defaults, so PostgreSQL (11+) adds the columns without rewriting rows.
    # Unlike SQLite, no outbox (session_id, acked) index: PostgreSQL answers prune's
    # unacknowledged-row probe with one hash anti join over acc_outbox_acked, with or without
    # statistics, so another index would only slow every outbox write and ack.
    return (
        f"""ALTER TABLE {s}.acc_sessions ADD COLUMN failure BYTEA,
            ADD COLUMN seed BYTEA NOT NULL DEFAULT ''::bytea, ADD COLUMN state BYTEA""",
        f"ALTER TABLE {s}.acc_txlog ADD COLUMN args BYTEA, ADD COLUMN clock BIGINT NOT NULL DEFAULT 0",
        # The relay scans each destination's unacknowledged rows apart (see SQLite's).
        f"CREATE INDEX acc_outbox_pending ON {s}.acc_outbox (dst, id) WHERE acked = 0",
    )


async def _migrate_to_1(conn: asyncpg.Connection, schema: str) -> None:
    for ddl in _v1(schema):
        await conn.execute(ddl)


async def _migrate_to_2(conn: asyncpg.Connection, schema: str) -> None:
    for ddl in _v2(schema):
        await conn.execute(ddl)


# One function per schema version: MIGRATIONS[n] turns a version n-1 schema into version n; a
# new schema runs them all, inside the transaction (and advisory lock) that updates acc_meta.
MIGRATIONS: dict[int, Callable[[asyncpg.Connection, str], Awaitable[None]]] = {1: _migrate_to_1, 2: _migrate_to_2}


class _Tx:
    """Adapts a pooled connection, inside a transaction, to :class:`SQLTx`."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def executemany(self, sql: str, rows: list[Row]) -> None:
        await self._conn.executemany(sql, rows)

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        """Run the query ``sql`` in the transaction; return its rows."""
        return [tuple(r) for r in await self._conn.fetch(sql, *args)]

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        status = await self._conn.execute(sql, *args)
        tail = str(status).rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0


class PostgresStore(SQLStore):
    """A :class:`~accompanist.store.base.Store` in a PostgreSQL schema of its own.

    Args:
        dsn: a libpq URL, ``postgresql://user:pass@host:port/db`` (``postgres://`` too).
        role: the role this store belongs to.
        schema: the schema holding its tables; None for ``acc_<role>``
            (:func:`schema_for_role`).
        min_pool: connections opened at start.
        max_pool: most connections (the writer uses one at a time; readers share the rest).
        group_delay: seconds the group committer may wait for more batches under load.
        group_max_batch: most batches per transaction (1 disables group commit).
        connect_timeout: seconds to wait when connecting.
        command_timeout: seconds one statement may take before the call fails.

    Raises:
        ConfigError: bad pool sizes or group commit settings.
    """

    _exclusive_atomic = False  # each atomic scope gets its own pooled connection

    def __init__(
        self,
        dsn: str,
        role: str,
        *,
        schema: str | None = None,
        min_pool: int = 1,
        max_pool: int = 4,
        group_delay: float = DEFAULT_MAX_DELAY,
        group_max_batch: int = DEFAULT_MAX_BATCH,
        connect_timeout: float = 5.0,
        command_timeout: float = 30.0,
    ) -> None:
        if not 0 <= min_pool <= max_pool or max_pool < 1:
            raise ConfigError(f"need 0 <= min_pool <= max_pool and max_pool >= 1, got {min_pool}, {max_pool}")
        self.dsn = dsn
        self.schema = schema or schema_for_role(role)
        quoted = '"' + self.schema.replace('"', '""') + '"'
        self._quoted = quoted
        super().__init__(
            role=role,
            name=f"PostgreSQL store {redact_dsn(dsn)} schema {self.schema}",
            statements=Statements.build(lambda name: f"{quoted}.{name}", _dollar),
            group_delay=group_delay,
            group_max_batch=group_max_batch,
        )
        self._min_pool = min_pool
        self._max_pool = max_pool
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._pool: asyncpg.Pool | None = None

    def __repr__(self) -> str:
        return f"PostgresStore({redact_dsn(self.dsn)!r}, role={self.role!r})"

    def _corrupt(self, what: str) -> StoreCorruptError:
        return StoreCorruptError(
            f"{self._name} cannot be used by role '{self.role}': {what}. Nothing was changed; "
            "use another database, or drop that schema to start with an empty store."
        )

    def _error(self, exc: BaseException) -> StoreError:
        if isinstance(exc, StoreError):
            return exc
        detail = f"{type(exc).__name__}: {exc}".rstrip(": ")
        if isinstance(exc, _LOST):
            return _ConnectionLostError(f"{self._name}: the database is unreachable ({detail})")
        return StoreError(f"{self._name}: {detail}")

    async def open(self) -> None:
        """Connect, then create or migrate this role's schema and start the writer.

        Raises:
            StoreCorruptError: the schema holds foreign tables, another role's store, or a
                newer schema version; nothing is changed.
            StoreError: the server cannot be reached or refused the connection.
        """
        if self._committer is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self._min_pool,
                max_size=self._max_pool,
                timeout=self._connect_timeout,
                command_timeout=self._command_timeout,
                server_settings=self._server_settings(),
            )
            async with self._pool.acquire() as conn:
                await self._migrate(conn)
        except BaseException as exc:
            await self._close_pool()
            if isinstance(exc, _DB_ERRORS):
                raise self._error(exc) from exc
            raise
        self._start_writer()

    def _server_settings(self) -> dict[str, str]:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.dsn).query)
        if "application_name" in query:  # the operator's own name wins
            return {}
        return {"application_name": f"accompanist-{self.role}"[:63]}

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            lock = int.from_bytes(hashlib.blake2b(self.schema.encode(), digest_size=8).digest(), "big", signed=True)
            await conn.execute("SELECT pg_advisory_xact_lock($1)", lock)
            rows = await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", self.schema
            )
            tables = sorted(str(r[0]) for r in rows)
            version = 0
            if "acc_meta" in tables:
                meta_rows = await conn.fetch(f"SELECT key, value FROM {self._quoted}.acc_meta")
                version = check_meta(
                    {str(k): str(v) for k, v in meta_rows}, tables, role=self.role, corrupt=self._corrupt
                )
            elif tables:
                listing = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
                raise self._corrupt(f"the schema holds other tables ({listing}): not an Accompanist store")
            if version == SCHEMA_VERSION:
                return
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self._quoted}")
            for target in range(version + 1, SCHEMA_VERSION + 1):
                await MIGRATIONS[target](conn, self._quoted)
            meta = [("app", "accompanist"), ("role", self.role), ("schema_version", str(SCHEMA_VERSION))]
            if version == 0:
                meta.append(("created_at", repr(time.time())))
            await conn.executemany(
                f"INSERT INTO {self._quoted}.acc_meta (key, value) VALUES ($1, $2) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                meta,
            )

    async def close(self) -> None:
        """Commit what is queued, then close the pool. Idempotent."""
        try:
            await self._stop_writer()
        finally:
            await self._close_pool()

    async def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await pool.close()
            except Exception:
                pool.terminate()

    def _live_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError(f"{self._name}: the store is not open")
        return self._pool

    async def _retry_once(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn``; after a lost connection, once more on fresh connections.

        One dead connection usually means all pooled ones died (a server restart), so the
        pool is told to replace every connection before the retry.
        """
        try:
            return await fn()
        except _ConnectionLostError:
            if self._pool is not None:
                with contextlib.suppress(Exception):
                    await self._pool.expire_connections()
            return await fn()

    async def _apply(self, batches: list[WriteBatch]) -> None:
        # Safe to repeat: every write in a batch is idempotent.
        await self._retry_once(lambda: super(PostgresStore, self)._apply(batches))

    async def _fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Sequence[Any]]:
        if self._committer is None:
            raise StoreError(f"{self._name}: the store is not open")
        pool = self._live_pool()

        async def once() -> list[Sequence[Any]]:
            try:
                return list(await pool.fetch(sql, *args))
            except _DB_ERRORS as exc:
                raise self._error(exc) from exc

        return await self._retry_once(once)

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[SQLTx]:
        pool = self._live_pool()
        try:
            async with pool.acquire() as conn, conn.transaction():
                yield _Tx(conn)
        except _DB_ERRORS as exc:
            raise self._error(exc) from exc
