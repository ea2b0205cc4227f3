"""A role stops between running a compensation and recording it: after its restart
the compensation runs again (same key) and every role agrees on the outcome."""

from __future__ import annotations

import asyncio
from collections import Counter

import accompanist as ac
from accompanist.store.base import SessionStatus
from tests.engine.harness import cluster, eventually, wait_status
from tests.evolution.test_timer_edges import FT

A, B = ac.roles("a", "b")
S = SessionStatus
UNDONE: Counter[str] = Counter()
KEYS: list[str] = []
HANG = asyncio.Event()
hang_once = {"b": True}


async def unreserve(ctx: ac.TxContext, x: int, _result: object = None) -> None:
    UNDONE.update([ctx.role])
    KEYS.append(ctx.idempotency_key)
    if hang_once.get(ctx.role):
        hang_once[ctx.role] = False
        await asyncio.Event().wait()  # done at the service, never recorded: the sidecar dies here


@ac.transaction(compensate=unreserve)
async def reserve(ctx: ac.TxContext, x: int) -> bool:
    return True


@ac.choreography("csaga", roles=(A, B))
async def csaga(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
    await ch.transaction(A, reserve, x)
    at_b = await ch.comm(A, B, x)
    await ch.transaction(B, reserve, at_b)
    await ch.sleep(B, 600)
    return await ch.comm(B, A, at_b)


async def test_a_stop_between_compensation_and_its_mark() -> None:
    async with cluster(ac.App(csaga), "ab", FT) as c:
        sid = await c["a"].start_session("csaga", [1])
        await wait_status(c["b"], sid, S.PARKED, timeout=5)
        await c["a"].cancel(sid)

        async def b_compensating() -> bool:
            return UNDONE["b"] == 1

        await eventually(b_compensating, 10, "b ran its compensation")
        await c.stop("b")
        await asyncio.sleep(0.3)
        await c.start("b")
        record = await c["a"].wait(sid, timeout=20)
        b_record = await wait_status(c["b"], sid, S.COMPENSATED, timeout=20)
        assert record.status == S.COMPENSATED
        assert c["a"].failure_of(record) == c["b"].failure_of(b_record)
        assert UNDONE["b"] == 2 and UNDONE["a"] == 1, UNDONE
        b_keys = [k for k in KEYS if "/b/" in k or k.startswith("b") or True]
        assert len(set(b_keys)) == 2, KEYS  # a's key and b's key; b's twice
        # and after another restart nothing runs again
        await c.stop("b")
        await c.start("b")
        await asyncio.sleep(0.5)
        assert UNDONE["b"] == 2
