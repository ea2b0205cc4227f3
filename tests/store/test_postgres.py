"""PostgresStore specifics: server restarts, concurrent migration, schemas per role, refusals."""

from __future__ import annotations

import asyncio

import asyncpg  # type: ignore[import-untyped]
import pytest

from accompanist.errors import StoreCorruptError, StoreError
from accompanist.store.base import SessionRecord, StoreCounts, WriteBatch
from accompanist.store.postgres import PostgresStore, redact_dsn, schema_for_role
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.postgres


def rec(sid: str) -> SessionRecord:
    return SessionRecord(session_id=sid, choreography="order", version=1, role="wh", status="running")


async def test_survives_server_restart(own_postgres: PostgresServer) -> None:
    store = PostgresStore(own_postgres.dsn(), "wh", connect_timeout=2.0)
    await store.open()
    try:
        await store.commit(WriteBatch(sessions=[rec("before")]))
        await asyncio.to_thread(own_postgres.stop)
        with pytest.raises(StoreError, match="unreachable"):
            await store.commit(WriteBatch(sessions=[rec("while-down")]))
        with pytest.raises(StoreError):
            await store.get_session("before")
        await asyncio.to_thread(own_postgres.start)
        await store.commit(WriteBatch(sessions=[rec("after")]))  # the pool reconnects
        assert await store.get_session("before") is not None
        assert await store.get_session("while-down") is None
        assert (await store.counts()).sessions == 2
    finally:
        await store.close()


async def test_concurrent_opens_migrate_once(postgres_dsn: str) -> None:
    stores = [PostgresStore(postgres_dsn, role) for role in ("wh", "wh", "wh", "pay", "pay", "client")]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        await stores[0].commit(WriteBatch(sessions=[rec("s1")]))
        assert await stores[1].get_session("s1") is not None
        assert await stores[3].get_session("s1") is None  # another role's schema
        assert await stores[5].counts() == StoreCounts(0, 0, 0, 0, 0, 0)
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_refuses_foreign_tables_in_its_schema(postgres_dsn: str) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute("CREATE SCHEMA acc_wh; CREATE TABLE acc_wh.orders (id int)")
        with pytest.raises(StoreCorruptError, match="other tables.*orders"):
            await PostgresStore(postgres_dsn, "wh").open()
        tables = await conn.fetch("SELECT table_name FROM information_schema.tables WHERE table_schema = 'acc_wh'")
        assert [r[0] for r in tables] == ["orders"]  # nothing was created next to them
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ("UPDATE acc_wh.acc_meta SET value = '7' WHERE key = 'schema_version'", "schema version 7 is newer"),
        ("UPDATE acc_wh.acc_meta SET value = 'pay' WHERE key = 'role'", "belongs to role 'pay'"),
        ("DROP TABLE acc_wh.acc_txlog", "tables are missing: acc_txlog"),
    ],
)
async def test_refuses_damaged_schema(postgres_dsn: str, edit: str, match: str) -> None:
    store = PostgresStore(postgres_dsn, "wh")
    await store.open()
    await store.commit(WriteBatch(sessions=[rec("s1")]))
    await store.close()
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(edit)
        with pytest.raises(StoreCorruptError, match=match):
            await PostgresStore(postgres_dsn, "wh").open()
        assert await conn.fetchval("SELECT count(*) FROM acc_wh.acc_sessions") == 1
    finally:
        await conn.close()


async def test_odd_role_names_get_distinct_schemas(postgres_dsn: str) -> None:
    assert schema_for_role("warehouse") == "acc_warehouse"
    assert schema_for_role("a-b") != schema_for_role("a_b")
    assert len(schema_for_role("x" * 63)) <= 63
    a, b = PostgresStore(postgres_dsn, "a-b"), PostgresStore(postgres_dsn, "a_b")
    await a.open()
    await b.open()
    try:
        await a.commit(WriteBatch(sessions=[rec("s1")]))
        assert await b.get_session("s1") is None
    finally:
        await a.close()
        await b.close()


async def test_unreachable_server_is_a_store_error_without_password() -> None:
    dsn = "postgresql://acc:s3cret@127.0.0.1:1/db"
    with pytest.raises(StoreError, match="unreachable") as info:
        await PostgresStore(dsn, "wh", connect_timeout=1.0).open()
    assert "s3cret" not in str(info.value)
    assert redact_dsn(dsn) == "postgresql://acc:***@127.0.0.1:1/db"


async def test_killed_connections_are_replaced_transparently(postgres_dsn: str) -> None:
    store = PostgresStore(postgres_dsn, "wh", min_pool=2, max_pool=2)
    await store.open()
    admin = await asyncpg.connect(postgres_dsn)
    try:
        await store.commit(WriteBatch(sessions=[rec("s1")]))
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert killed >= 1
        await store.commit(WriteBatch(sessions=[rec("s2")]))  # retried once on a fresh connection
        assert (await store.counts()).sessions == 2
    finally:
        await admin.close()
        await store.close()
