"""Durable timers of hours on the virtual clock, with a crash while parked."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import accompanist as ac
from accompanist.store.base import SessionStatus

A, B = ac.roles("a", "b")
S = SessionStatus
UNDONE: Counter[str] = Counter()


async def unreserve(ctx: ac.TxContext, x: int, _result: object = None) -> None:
    UNDONE.update([ctx.role])


@ac.transaction(compensate=unreserve)
async def reserve(ctx: ac.TxContext, x: int) -> bool:
    return True


@ac.choreography("hours", roles=(A, B))
async def hours(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
    await ch.cancel_after(5 * 3600, reason="five hours")
    await ch.transaction(A, reserve, x)
    at_b = await ch.comm(A, B, x)
    await ch.transaction(B, reserve, at_b)
    await ch.sleep(B, 3 * 3600)
    at_b = await ch.locally(B, lambda v: v + 1, at_b)
    await ch.sleep(B, 3 * 3600)  # past the deadline: cancelled while asleep
    return await ch.comm(B, A, at_b)


async def test_hours_of_sleep_and_a_deadline_with_a_crash_while_parked_on_a_virtual_clock() -> None:
    UNDONE.clear()
    began = time.monotonic()
    async with (
        ac.testing.virtual_clock(),
        ac.testing.Cluster(ac.App(hours), config=ac.testing.quick_config(virtual=True)) as cluster,
    ):
        sid = await cluster.start_session("hours", 1)
        for _ in range(100):
            record = await cluster["b"].get(sid)
            if record is not None and record.status == S.PARKED:
                break
            await asyncio.sleep(1)
        await cluster.crash("b")
        await asyncio.sleep(4 * 3600)  # b down past its first wake
        await cluster.restart("b")
        record = await cluster["a"].wait(sid, timeout=10 * 3600)
        assert record.status == S.COMPENSATED, record.status
        for _ in range(100):
            b = await cluster["b"].get(sid)
            if b is not None and b.status in (S.COMPENSATED, S.FAILED, S.COMPLETED):
                break
            await asyncio.sleep(1)
        assert b is not None and b.status == S.COMPENSATED
    assert Counter({"a": 1, "b": 1}) == UNDONE
    assert time.monotonic() - began < 20
