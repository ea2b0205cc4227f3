"""ch.cancel_after inside a sub-choreography whose first role is not the initiator."""

from __future__ import annotations

from collections import Counter

import accompanist as ac
from accompanist.store.base import SessionStatus
from tests.engine.harness import cluster, wait_status
from tests.evolution.test_timer_edges import FT

A, B = ac.roles("a", "b")
S1, S2 = ac.roles("s1", "s2")
S = SessionStatus
UNDONE: Counter[str] = Counter()


async def unreserve(ctx: ac.TxContext, x: int, _result: object = None) -> None:
    UNDONE.update([ctx.role])


@ac.transaction(compensate=unreserve)
async def reserve(ctx: ac.TxContext, x: int) -> bool:
    return True


@ac.choreography("sub", roles=(S1, S2))
async def sub(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
    await ch.cancel_after(0.5, reason="sub deadline")
    await ch.transaction(S1, reserve, x)
    there = await ch.comm(S1, S2, x)
    await ch.sleep(S2, 30)
    return await ch.comm(S2, S1, there)


@ac.choreography("outer", roles=(A, B))
async def outer(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
    at_b = await ch.comm(A, B, x)
    back = await ch.call(sub, at_b, roles={S1: B, S2: A})  # s1 (the sub's first) is b
    return await ch.comm(B, A, back)


async def test_a_deadline_in_a_call_is_the_initiators() -> None:
    UNDONE.clear()
    async with cluster(ac.App(outer), "ab", FT) as c:
        sid = await c["a"].start_session("outer", [1])
        record = await c["a"].wait(sid, timeout=10)
        assert record.status == S.COMPENSATED, (record.status, record.error)
        await wait_status(c["b"], sid, S.COMPENSATED)
        assert Counter({"b": 1}) == UNDONE
