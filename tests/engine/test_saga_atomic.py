"""Atomic saga transactions: the service's write and the runtime's log commit together."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

import accompanist as ac
from accompanist.engine.config import EngineConfig, Mode
from accompanist.store.base import SessionStatus, Store
from accompanist.store.postgres import PostgresStore
from accompanist.store.sqlite import SQLiteStore
from tests.engine.harness import cluster

A, B = ac.roles("a", "b")
FT = EngineConfig(mode=Mode.FAULT_TOLERANT, receive_timeout=5, retry_min=0.01, retry_max=0.1, relay_interval=0.05)


def make_app(placeholder: Callable[[int], str]) -> ac.App:
    p1, p2 = placeholder(1), placeholder(2)

    async def undo(ctx: ac.TxContext, amount: int, result: int) -> None:
        await ctx.connection.execute(f"DELETE FROM ledger WHERE key = {p1}", ctx.idempotency_key)

    @ac.transaction(compensate=undo, atomic=True, retry=ac.Retry(attempts=5, initial=0.01))
    async def book(ctx: ac.TxContext, amount: int) -> int:
        conn = ctx.connection
        await conn.execute("CREATE TABLE IF NOT EXISTS ledger (key TEXT, amount INTEGER)")
        # No idempotency check on purpose: atomicity alone must keep this write single.
        await conn.execute(f"INSERT INTO ledger (key, amount) VALUES ({p1}, {p2})", ctx.idempotency_key, amount)
        if ctx.attempt < 3:
            raise ConnectionError("the network failed after the write")  # retried: rolled back
        rows = await conn.fetch(f"SELECT count(*) FROM ledger WHERE key = {p1}", ctx.idempotency_key)
        return int(rows[0][0])

    @ac.transaction
    async def approve(ctx: ac.TxContext, amount: int) -> bool:
        if amount > 100:
            raise ac.Abort(f"{amount} is over the limit")
        return True

    @ac.choreography("booking", roles=(A, B))
    async def booking(ch: ac.Choreo, amount: ac.Located[int]) -> ac.Located[int]:
        seen = await ch.transaction(B, book, await ch.comm(A, B, amount))
        back = await ch.comm(B, A, seen)  # b commits before a decides: there is something to undo
        await ch.transaction(A, approve, amount)
        return back

    return ac.App(booking)


async def _ledger(store: Store) -> list[tuple[object, ...]]:
    async with store.atomic() as scope:  # type: ignore[attr-defined]
        return list(await scope.connection.fetch("SELECT key, amount FROM ledger"))


async def _check(store: Store, placeholder: Callable[[int], str]) -> None:
    async with cluster(make_app(placeholder), "ab", config=FT, stores={"b": store}) as c:
        assert await c["a"].run("booking", 40, timeout=10) == 1, "two failed attempts left no row behind"
        ok = (await c.stores["a"].list_sessions())[0].session_id
        with pytest.raises(ac.SessionFailedError) as info:
            await c["a"].run("booking", 500, timeout=10)
        failed = info.value.session_id
        assert failed is not None
        for _ in range(200):  # a aborted at once; b hears of the session a moment later
            if await c["b"].get(failed) is not None:
                break
            await asyncio.sleep(0.01)
        assert (await c["b"].wait(failed, 10)).status == SessionStatus.COMPENSATED
        assert (await c["b"].wait(ok, 10)).status == SessionStatus.COMPLETED
        rows = await _ledger(store)
        assert [r[1] for r in rows] == [40] and str(rows[0][0]).startswith(f"{ok}/b/")
        logged = {t.session_id: t.status for t in await store.txlog_load(ok) + await store.txlog_load(failed)}
        assert logged == {ok: "committed", failed: "compensated"}


async def test_atomic_transactions_on_sqlite(tmp_path: Path) -> None:
    await _check(SQLiteStore(tmp_path / "b.db", "b"), lambda n: "?")


async def test_atomic_transactions_on_postgres(postgres_dsn: str) -> None:
    await _check(PostgresStore(postgres_dsn, "b"), lambda n: f"${n}")
