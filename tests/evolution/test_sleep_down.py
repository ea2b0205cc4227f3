"""A sleeping role is down while a message for it, or a cancel, arrives."""

from __future__ import annotations

import asyncio
from collections import Counter

import accompanist as ac
from accompanist.store.base import SessionStatus
from tests.engine.harness import cluster, wait_status
from tests.evolution.test_timer_edges import FT

A, B = ac.roles("a", "b")
S = SessionStatus
UNDONE: Counter[str] = Counter()


@ac.choreography("p2", roles=(A, B))
async def p2(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
    first = await ch.comm(A, B, x)
    await ch.sleep(B, 1.0)
    second = await ch.comm(A, B, x)  # sent at once by a: it arrives while b is down
    both = await ch.locally(B, lambda p, q: p + q, first, second)
    return await ch.comm(B, A, both)


async def test_a_message_sent_while_the_sleeper_is_down() -> None:
    async with cluster(ac.App(p2), "ab", FT) as c:
        sid = await c["a"].start_session("p2", [5])
        await wait_status(c["b"], sid, S.PARKED, timeout=5)
        await c.stop("b")
        await asyncio.sleep(1.5)  # a's second message waits in its outbox; the deadline passes
        await c.start("b")
        record = await c["a"].wait(sid, timeout=20)
        assert (record.status, c["a"].result_of(record)) == (S.COMPLETED, 10)


async def unreserve(ctx: ac.TxContext, x: int, _result: object = None) -> None:
    UNDONE.update([ctx.role])


@ac.transaction(compensate=unreserve)
async def reserve(ctx: ac.TxContext, x: int) -> bool:
    return True


@ac.choreography("dsaga", roles=(A, B))
async def dsaga(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
    await ch.cancel_after(0.8, reason="late")
    await ch.transaction(A, reserve, x)
    at_b = await ch.comm(A, B, x)
    await ch.transaction(B, reserve, at_b)
    await ch.sleep(B, 0.5)
    return await ch.comm(B, A, at_b)


async def test_a_deadline_passes_while_the_sleeper_is_down_and_its_wake_is_also_due() -> None:
    UNDONE.clear()
    async with cluster(ac.App(dsaga), "ab", FT) as c:
        sid = await c["a"].start_session("dsaga", [1])
        await wait_status(c["b"], sid, S.PARKED, timeout=5)
        await c.stop("b")
        await asyncio.sleep(1.5)  # both b's wake and a's deadline are past
        await c.start("b")
        record = await c["a"].wait(sid, timeout=20)
        b_record = None
        for _ in range(200):
            b_record = await c["b"].get(sid)
            if b_record is not None and b_record.status in (S.COMPLETED, S.COMPENSATED, S.FAILED):
                break
            await asyncio.sleep(0.05)
        assert b_record is not None and record.status == b_record.status == S.COMPENSATED, (
            record.status,
            b_record and b_record.status,
        )
        assert Counter({"a": 1, "b": 1}) == UNDONE


async def test_a_deadline_passes_while_the_initiator_is_down() -> None:
    UNDONE.clear()
    async with cluster(ac.App(dsaga), "ab", FT) as c:
        sid = await c["a"].start_session("dsaga", [1])
        await wait_status(c["b"], sid, S.PARKED, timeout=5)
        await c.stop("a")
        await asyncio.sleep(1.5)  # b wakes and answers while a is down; a's deadline passes too
        await c.start("a")
        record = await c["a"].wait(sid, timeout=20)
        b_record = None
        for _ in range(200):
            b_record = await c["b"].get(sid)
            if b_record is not None and b_record.status in (S.COMPLETED, S.COMPENSATED, S.FAILED):
                break
            await asyncio.sleep(0.05)
        assert b_record is not None and record.status == b_record.status, (record.status, b_record.status)
        print("outcome", record.status, UNDONE)
        if record.status == S.COMPENSATED:
            assert Counter({"a": 1, "b": 1}) == UNDONE
        else:
            assert not UNDONE
