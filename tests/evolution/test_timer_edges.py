"""Durable timers in composite steps, across restarts, racing cancels and deadlines."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

import accompanist as ac
from accompanist.engine.config import EngineConfig, Mode
from accompanist.store.base import SessionStatus
from tests.engine.harness import cluster, wait_status
from tests.engine.test_timers import DONE, UNDONE, saga_app

A, B, C = ac.roles("a", "b", "c")
S = SessionStatus

FT = EngineConfig(
    mode=Mode.FAULT_TOLERANT,
    receive_timeout=10,
    retry_min=0.01,
    retry_max=0.1,
    deliver_timeout=0.5,
    relay_interval=0.05,
    outcome_query_after=0.2,
    sleep_in_task=0.2,
)

Sub1, Sub2 = ac.roles("s1", "s2")


@ac.choreography("napper", roles=(Sub1, Sub2))
async def napper(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
    there = await ch.comm(Sub1, Sub2, x)
    await ch.sleep(Sub2, 0.6)
    return await ch.comm(Sub2, Sub1, await ch.locally(Sub2, lambda v: v * 2, there))


@ac.choreography("composite", roles=(A, B, C))
async def composite(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
    # a sleep inside cond with among (an enclave of a and b)
    async def branch(ch2: ac.Choreo, v: int) -> ac.Located[int]:
        await ch2.sleep(B, 0.6)
        return await ch2.locally(B, lambda: v + 1)

    at_b = await ch.cond(A, x, branch, among=[B])
    # a sleep in a sub-choreography between b and c
    doubled = await ch.call(napper, at_b, roles={Sub1: B, Sub2: C})

    # a sleep in a fanout, one per role
    async def each(ch3: ac.Choreo, r: ac.Role) -> ac.Located[None]:
        return await ch3.sleep(r, 0.4)

    await ch.fanout([B, C], each)
    return await ch.comm(B, A, doubled)


async def test_sleeps_inside_cond_call_and_fanout_park_and_wake() -> None:
    assert await ac.run_central(composite, 3) == 8
    async with cluster(ac.App(composite), "abc", FT) as c:
        sid = await c["a"].start_session("composite", [3])
        record = await c["a"].wait(sid, timeout=20)
        assert (record.status, c["a"].result_of(record)) == (S.COMPLETED, 8)


async def test_sleeps_inside_cond_call_and_fanout_survive_restarts_while_parked() -> None:
    async with cluster(ac.App(composite), "abc", FT) as c:
        sid = await c["a"].start_session("composite", [3])
        await wait_status(c["b"], sid, S.PARKED, timeout=5)  # asleep in the cond
        await c.stop("b")
        await asyncio.sleep(0.8)
        await c.start("b")
        await wait_status(c["c"], sid, S.PARKED, timeout=10)  # asleep in the sub-choreography
        await c.stop("c")
        await asyncio.sleep(0.3)
        await c.start("c")
        record = await c["a"].wait(sid, timeout=20)
        assert (record.status, c["a"].result_of(record)) == (S.COMPLETED, 8)
        for r in "bc":
            await wait_status(c[r], sid, S.COMPLETED)


@ac.choreography("past", roles=(A, B))
async def past(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
    at_b = await ch.comm(A, B, x)
    await ch.sleep_until(B, dt.datetime(2001, 1, 1, tzinfo=dt.UTC))
    await ch.sleep(B, 0)
    return await ch.comm(B, A, at_b)


async def test_sleep_until_a_literal_past_datetime_and_sleep_zero() -> None:
    async with cluster(ac.App(past), "ab", FT) as c:
        sid = await c["a"].start_session("past", [4])
        record = await c["a"].wait(sid, timeout=5)
        assert (record.status, c["a"].result_of(record)) == (S.COMPLETED, 4)


async def _agreed(c, sid: str) -> tuple[str, str]:
    a = await c["a"].wait(sid, timeout=20)
    for _ in range(200):
        b = await c["b"].get(sid)
        if b is not None and b.status in (S.COMPLETED, S.COMPENSATED, S.FAILED):
            break
        await asyncio.sleep(0.05)
    assert b is not None
    return a.status, b.status


@pytest.mark.parametrize("gap", [-0.05, -0.01, 0.0, 0.01, 0.05])
async def test_a_deadline_racing_the_end_of_the_session(gap: float) -> None:
    """The sleep ends around the deadline: whichever wins, the roles agree and compensations
    match what committed."""
    DONE.clear()
    UNDONE.clear()
    async with cluster(saga_app(0.5, 0.5 + gap), "ab", FT) as c:
        sid = await c["a"].start_session("sleepy_saga", [1])
        a_status, b_status = await _agreed(c, sid)
        assert a_status == b_status, (a_status, b_status)
        if a_status == S.COMPENSATED:
            assert UNDONE == DONE
        else:
            assert a_status == S.COMPLETED and not UNDONE
        assert len(c["a"].timers) == 0 and len(c["b"].timers) == 0


@pytest.mark.parametrize("delay", [0.45, 0.5, 0.55])
@pytest.mark.parametrize("at", ["a", "b"])
async def test_a_cancel_racing_the_wake(delay: float, at: str) -> None:
    DONE.clear()
    UNDONE.clear()
    async with cluster(saga_app(0.5, None), "ab", FT) as c:
        sid = await c["a"].start_session("sleepy_saga", [1])
        await wait_status(c["b"], sid, S.PARKED, timeout=5)
        await asyncio.sleep(delay - 0.2)
        try:
            await c[at].cancel(sid)
        except Exception as exc:
            print("cancel:", type(exc).__name__, exc)
        a_status, b_status = await _agreed(c, sid)
        assert a_status == b_status, (a_status, b_status)
        if a_status == S.COMPENSATED:
            assert UNDONE == DONE
        else:
            assert not UNDONE
