"""A schema version 1 store, built with the version 1 DDL, migrates in place at ``open()``.

The DDL below is a frozen copy of what Accompanist wrote at version 1: it must not follow
later changes to the stores, or these tests would stop testing what is really on users' disks.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from accompanist.envelope import Envelope, EnvelopeKind
from accompanist.errors import StoreCorruptError, StoreError
from accompanist.store import sqlite as sqlite_module
from accompanist.store.base import JournalEntry, OutboxRow, SessionRecord, Store, StoreCounts, TxRecord, WriteBatch
from accompanist.store.postgres import PostgresStore
from accompanist.store.sql import SCHEMA_VERSION
from accompanist.store.sqlite import SQLiteStore

V1_ENV = """session_id TEXT NOT NULL, choreography TEXT NOT NULL, version INTEGER NOT NULL,
    src TEXT NOT NULL, dst TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL,
    payload BLOB NOT NULL, headers TEXT NOT NULL, auth TEXT NOT NULL"""
SQLITE_V1 = (
    "CREATE TABLE acc_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE acc_sessions (session_id TEXT PRIMARY KEY, choreography TEXT NOT NULL,
        version INTEGER NOT NULL, role TEXT NOT NULL, status TEXT NOT NULL, args BLOB NOT NULL,
        result BLOB, error TEXT, attempts INTEGER NOT NULL, created_at REAL NOT NULL,
        updated_at REAL NOT NULL)""",
    "CREATE INDEX acc_sessions_status ON acc_sessions (status, updated_at)",
    "CREATE INDEX acc_sessions_created ON acc_sessions (created_at, session_id)",
    f"""CREATE TABLE acc_inbox (id INTEGER PRIMARY KEY, {V1_ENV}, received_at REAL NOT NULL,
        UNIQUE (session_id, src, dst, seq))""",
    f"""CREATE TABLE acc_outbox (id INTEGER PRIMARY KEY, {V1_ENV}, acked INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL, UNIQUE (session_id, src, dst, seq))""",
    "CREATE INDEX acc_outbox_acked ON acc_outbox (acked, id)",
    """CREATE TABLE acc_journal (session_id TEXT NOT NULL, step INTEGER NOT NULL, kind TEXT NOT NULL,
        name TEXT NOT NULL, value BLOB, PRIMARY KEY (session_id, step))""",
    """CREATE TABLE acc_txlog (key TEXT PRIMARY KEY, session_id TEXT NOT NULL, name TEXT NOT NULL,
        step INTEGER NOT NULL, status TEXT NOT NULL, result BLOB, updated_at REAL NOT NULL)""",
    "CREATE INDEX acc_txlog_session ON acc_txlog (session_id, step)",
)

# The rows of the version 1 store, as version 1 wrote them (column order of the v1 tables).
META = [("app", "accompanist"), ("role", "wh"), ("schema_version", "1"), ("created_at", "1700000000.5")]
SESSIONS = [
    ("s1", "order", 1, "wh", "completed", b"\x00args", b"\xffres", None, 0, 10.0, 20.0),
    ("s2", "order", 2, "wh", "diverged", b"", None, "replay went elsewhere \u00e9", 3, 11.0, 21.0),
]
ENVELOPE = ("s1", "order", 1, "pay", "wh", 1, "value", b"p", '{"traceparent":"00-abc-01"}', "key-1")
OUTBOX = [
    ("s1", "order", 1, "wh", "pay", 1, "value", b"o1", "{}", "", 1, 12.0),
    ("s1", "order", 1, "wh", "pay", -1, "failure", b"why", "{}", "", 0, 13.0),
]
JOURNAL = [("s1", 0, "locally", "price", b"v"), ("s1", 1, "send", "comm", None)]
TXLOG = [("s1/wh/reserve/0", "s1", "reserve", 2, "committed", b"r", 14.0)]

# What the store reads back after the migration: v1 fields as they were, new ones at defaults.
EXPECTED_SESSIONS = [
    SessionRecord(
        session_id="s1",
        choreography="order",
        version=1,
        role="wh",
        status="completed",
        args=b"\x00args",
        result=b"\xffres",
        created_at=10.0,
        updated_at=20.0,
    ),
    SessionRecord(
        session_id="s2",
        choreography="order",
        version=2,
        role="wh",
        status="diverged",
        error="replay went elsewhere \u00e9",
        attempts=3,
        created_at=11.0,
        updated_at=21.0,
    ),
]
EXPECTED_INBOX = [
    Envelope(
        session_id="s1",
        choreography="order",
        version=1,
        src="pay",
        dst="wh",
        seq=1,
        kind=EnvelopeKind.VALUE,
        payload=b"p",
        headers={"traceparent": "00-abc-01"},
        auth="key-1",
    )
]


def _out(seq: int, kind: str, payload: bytes) -> Envelope:
    return Envelope(
        session_id="s1", choreography="order", version=1, src="wh", dst="pay", seq=seq, kind=kind, payload=payload
    )


EXPECTED_OUTBOX = [OutboxRow(_out(1, "value", b"o1"), True), OutboxRow(_out(-1, "failure", b"why"), False)]
EXPECTED_JOURNAL = [
    JournalEntry(session_id="s1", step=0, kind="locally", name="price", value=b"v"),
    JournalEntry(session_id="s1", step=1, kind="send", name="comm", value=None),
]
EXPECTED_TXLOG = [
    TxRecord(
        session_id="s1", key="s1/wh/reserve/0", name="reserve", step=2, status="committed", result=b"r", updated_at=14.0
    )
]


def _marks(row: tuple[Any, ...], mark: str) -> str:
    return ", ".join(mark.format(n=i + 1) for i in range(len(row)))


def build_sqlite_v1(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        for ddl in SQLITE_V1:
            conn.execute(ddl)
        conn.executemany("INSERT INTO acc_meta VALUES (?, ?)", META)
        conn.executemany(f"INSERT INTO acc_sessions VALUES ({_marks(SESSIONS[0], '?')})", SESSIONS)
        conn.execute(f"INSERT INTO acc_inbox VALUES (NULL, {_marks(ENVELOPE, '?')}, 12.5)", ENVELOPE)
        conn.executemany(f"INSERT INTO acc_outbox VALUES (NULL, {_marks(OUTBOX[0], '?')})", OUTBOX)
        conn.executemany(f"INSERT INTO acc_journal VALUES ({_marks(JOURNAL[0], '?')})", JOURNAL)
        conn.executemany(f"INSERT INTO acc_txlog VALUES ({_marks(TXLOG[0], '?')})", TXLOG)
        conn.commit()
    finally:
        conn.close()


async def assert_v1_rows_intact(store: Store) -> None:
    assert await store.counts() == StoreCounts(2, 1, 2, 1, 2, 1)
    assert [await store.get_session(s.session_id) for s in EXPECTED_SESSIONS] == EXPECTED_SESSIONS
    assert await store.list_sessions() == EXPECTED_SESSIONS[::-1]
    assert await store.nonterminal_sessions() == [EXPECTED_SESSIONS[1]]  # diverged waits for an operator
    assert await store.inbox_load("s1") == EXPECTED_INBOX
    assert await store.outbox_load("s1") == EXPECTED_OUTBOX
    assert await store.outbox_pending() == [EXPECTED_OUTBOX[1].envelope]
    assert await store.journal_load("s1") == EXPECTED_JOURNAL
    assert await store.txlog_load("s1") == EXPECTED_TXLOG


async def assert_v2_fields_work(store: Store) -> None:
    """The migrated store takes the new fields, and a v1 row can be rewritten with them."""
    rec = EXPECTED_SESSIONS[0]
    richer = SessionRecord(**{**{f: getattr(rec, f) for f in rec.__struct_fields__}, "seed": b"\x01" * 16})
    richer.failure, richer.state = b'{"role":"pay"}', b"{}"
    tx = TxRecord(session_id="s1", key="s1/wh/charge/0", name="charge", step=3, status="uncertain", args=b"a", clock=9)
    await store.commit(WriteBatch(sessions=[richer], txlog=[tx]))
    assert await store.get_session("s1") == richer
    assert await store.txlog_load("s1") == [*EXPECTED_TXLOG, tx]


def sqlite_schema(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Each table's columns (name, type, not null, default) and indexes."""
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        out = {t: [tuple(c[1:5]) for c in conn.execute(f"PRAGMA table_info({t})")] for t in tables}
        out["indexes"] = sorted(conn.execute("SELECT name, tbl_name FROM sqlite_master WHERE type = 'index'"))
        return out
    finally:
        conn.close()


def sqlite_meta(path: Path) -> tuple[dict[str, str], int]:
    """``acc_meta`` and SQLite's schema cookie, which every DDL statement bumps."""
    conn = sqlite3.connect(path)
    try:
        meta = dict(conn.execute("SELECT key, value FROM acc_meta"))
        return meta, int(conn.execute("PRAGMA schema_version").fetchone()[0])
    finally:
        conn.close()


async def test_sqlite_v1_store_migrates_in_place(tmp_path: Path) -> None:
    path = tmp_path / "wh.db"
    build_sqlite_v1(path)
    store = SQLiteStore(path, "wh", synchronous="OFF")
    await store.open()
    try:
        await assert_v1_rows_intact(store)
    finally:
        await store.close()
    meta, cookie = sqlite_meta(path)
    assert meta == {**dict(META), "schema_version": str(SCHEMA_VERSION)}  # created_at kept
    assert SCHEMA_VERSION == 2

    # Reopening is a no-op: no DDL, no meta rewrite, not one byte of the file changed.
    before = path.read_bytes()
    again = SQLiteStore(path, "wh", synchronous="OFF")
    await again.open()
    try:
        await assert_v1_rows_intact(again)
    finally:
        await again.close()
    assert sqlite_meta(path) == (meta, cookie)
    assert path.read_bytes() == before

    # The migrated schema is exactly a new store's, and takes the new fields.
    fresh = tmp_path / "fresh.db"
    await SQLiteStore(fresh, "wh").open()
    assert sqlite_schema(path) == sqlite_schema(fresh)
    store = SQLiteStore(path, "wh", synchronous="OFF")
    await store.open()
    try:
        await assert_v2_fields_work(store)
    finally:
        await store.close()


async def test_sqlite_failed_migration_leaves_the_v1_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "wh.db"
    build_sqlite_v1(path)
    before = sqlite_schema(path)

    def half_then_fail(db: sqlite3.Connection) -> None:
        db.execute("ALTER TABLE acc_sessions ADD COLUMN failure BLOB")
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setitem(sqlite_module.MIGRATIONS, 2, half_then_fail)
    with pytest.raises(StoreError, match="disk I/O error"):
        await SQLiteStore(path, "wh").open()
    assert sqlite_schema(path) == before
    assert sqlite_meta(path)[0]["schema_version"] == "1"
    monkeypatch.undo()
    store = SQLiteStore(path, "wh")
    await store.open()
    try:
        await assert_v1_rows_intact(store)
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("edit", "role", "match"),
    [
        ("DROP TABLE acc_txlog", "wh", "tables are missing: acc_txlog"),
        ("SELECT 1", "pay", "belongs to role 'wh'"),
    ],
)
async def test_sqlite_v1_store_refused_unchanged(tmp_path: Path, edit: str, role: str, match: str) -> None:
    path = tmp_path / "wh.db"
    build_sqlite_v1(path)
    conn = sqlite3.connect(path)
    conn.execute(edit)
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreCorruptError, match=match):
        await SQLiteStore(path, role).open()
    assert path.read_bytes() == before


# PostgreSQL: the version 1 DDL, frozen, for schema "acc_wh".
PG_V1_ENV = """session_id TEXT COLLATE "C" NOT NULL, choreography TEXT NOT NULL, version BIGINT NOT NULL,
    src TEXT COLLATE "C" NOT NULL, dst TEXT COLLATE "C" NOT NULL, seq BIGINT NOT NULL, kind TEXT NOT NULL,
    payload BYTEA NOT NULL, headers TEXT NOT NULL, auth TEXT NOT NULL"""
PG_V1 = (
    'CREATE SCHEMA "acc_wh"',
    'CREATE TABLE "acc_wh".acc_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)',
    """CREATE TABLE "acc_wh".acc_sessions (session_id TEXT COLLATE "C" PRIMARY KEY, choreography TEXT NOT NULL,
        version BIGINT NOT NULL, role TEXT NOT NULL, status TEXT NOT NULL, args BYTEA NOT NULL, result BYTEA,
        error TEXT, attempts BIGINT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL)""",
    'CREATE INDEX acc_sessions_status ON "acc_wh".acc_sessions (status, updated_at)',
    'CREATE INDEX acc_sessions_created ON "acc_wh".acc_sessions (created_at, session_id)',
    f"""CREATE TABLE "acc_wh".acc_inbox (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, {PG_V1_ENV},
        received_at DOUBLE PRECISION NOT NULL, UNIQUE (session_id, src, dst, seq))""",
    f"""CREATE TABLE "acc_wh".acc_outbox (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, {PG_V1_ENV},
        acked SMALLINT NOT NULL DEFAULT 0, created_at DOUBLE PRECISION NOT NULL,
        UNIQUE (session_id, src, dst, seq))""",
    'CREATE INDEX acc_outbox_acked ON "acc_wh".acc_outbox (acked, id)',
    """CREATE TABLE "acc_wh".acc_journal (session_id TEXT COLLATE "C" NOT NULL, step BIGINT NOT NULL,
        kind TEXT NOT NULL, name TEXT NOT NULL, value BYTEA, PRIMARY KEY (session_id, step))""",
    """CREATE TABLE "acc_wh".acc_txlog (key TEXT COLLATE "C" PRIMARY KEY, session_id TEXT COLLATE "C" NOT NULL,
        name TEXT NOT NULL, step BIGINT NOT NULL, status TEXT NOT NULL, result BYTEA,
        updated_at DOUBLE PRECISION NOT NULL)""",
    'CREATE INDEX acc_txlog_session ON "acc_wh".acc_txlog (session_id, step)',
)
ENV_NAMES = "session_id, choreography, version, src, dst, seq, kind, payload, headers, auth"


async def build_postgres_v1(conn: Any) -> None:
    async with conn.transaction():
        for ddl in PG_V1:
            await conn.execute(ddl)
        await conn.executemany('INSERT INTO "acc_wh".acc_meta VALUES ($1, $2)', META)
        await conn.executemany(f'INSERT INTO "acc_wh".acc_sessions VALUES ({_marks(SESSIONS[0], "${n}")})', SESSIONS)
        await conn.execute(
            f'INSERT INTO "acc_wh".acc_inbox ({ENV_NAMES}, received_at) VALUES ({_marks((*ENVELOPE, 0), "${n}")})',
            *ENVELOPE,
            12.5,
        )
        await conn.executemany(
            f'INSERT INTO "acc_wh".acc_outbox ({ENV_NAMES}, acked, created_at) VALUES ({_marks(OUTBOX[0], "${n}")})',
            OUTBOX,
        )
        await conn.executemany(f'INSERT INTO "acc_wh".acc_journal VALUES ({_marks(JOURNAL[0], "${n}")})', JOURNAL)
        await conn.executemany(f'INSERT INTO "acc_wh".acc_txlog VALUES ({_marks(TXLOG[0], "${n}")})', TXLOG)


async def postgres_schema(conn: Any, schema: str) -> list[tuple[Any, ...]]:
    cols = await conn.fetch(
        "SELECT table_name, column_name, data_type, is_nullable, column_default FROM information_schema.columns "
        "WHERE table_schema = $1 ORDER BY table_name, ordinal_position",
        schema,
    )
    indexes = await conn.fetch(
        "SELECT tablename, indexname FROM pg_indexes WHERE schemaname = $1 ORDER BY indexname", schema
    )
    return [tuple(r) for r in cols] + [tuple(r) for r in indexes]


@pytest.mark.postgres
async def test_postgres_v1_schema_migrates_in_place(postgres_dsn: str) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await build_postgres_v1(conn)
        store = PostgresStore(postgres_dsn, "wh")
        await store.open()
        try:
            await assert_v1_rows_intact(store)
        finally:
            await store.close()
        meta_sql = 'SELECT key, value, xmin::text FROM "acc_wh".acc_meta ORDER BY key'
        meta = await conn.fetch(meta_sql)
        assert {r[0]: r[1] for r in meta} == {**dict(META), "schema_version": str(SCHEMA_VERSION)}
        schema = await postgres_schema(conn, "acc_wh")

        again = PostgresStore(postgres_dsn, "wh")  # a no-op: meta rows untouched (same xmin), same schema
        await again.open()
        try:
            await assert_v1_rows_intact(again)
        finally:
            await again.close()
        assert await conn.fetch(meta_sql) == meta
        assert await postgres_schema(conn, "acc_wh") == schema

        fresh = PostgresStore(postgres_dsn, "fresh")  # schema "acc_fresh", built new at version 2
        await fresh.open()
        await fresh.close()
        assert await postgres_schema(conn, "acc_fresh") == schema

        store = PostgresStore(postgres_dsn, "wh")
        await store.open()
        try:
            await assert_v2_fields_work(store)
        finally:
            await store.close()
    finally:
        await conn.close()


@pytest.mark.postgres
async def test_postgres_v1_schema_missing_a_table_is_refused_unchanged(postgres_dsn: str) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await build_postgres_v1(conn)
        await conn.execute('DROP TABLE "acc_wh".acc_journal')
        before = await postgres_schema(conn, "acc_wh")
        with pytest.raises(StoreCorruptError, match="tables are missing: acc_journal"):
            await PostgresStore(postgres_dsn, "wh").open()
        assert await postgres_schema(conn, "acc_wh") == before
        assert await conn.fetchval("SELECT value FROM \"acc_wh\".acc_meta WHERE key = 'schema_version'") == "1"
    finally:
        await conn.close()
