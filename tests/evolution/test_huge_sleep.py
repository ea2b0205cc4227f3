"""Absurd but accepted durations (finite, >= 0)."""

from __future__ import annotations

import asyncio

import pytest

import accompanist as ac
from accompanist.store.base import SessionStatus
from tests.engine.harness import cluster, wait_status
from tests.evolution.test_timer_edges import FT

A, B = ac.roles("a", "b")
S = SessionStatus


def app(seconds: float) -> ac.App:
    @ac.choreography("huge", roles=(A, B))
    async def huge(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        at_b = await ch.comm(A, B, x)
        await ch.sleep(B, seconds)
        return await ch.comm(B, A, at_b)

    return ac.App(huge)


@pytest.mark.parametrize("seconds", [1e10, 1e12, 1e300])
async def test_a_huge_sleep_parks_cancels_and_survives_a_restart(seconds: float) -> None:
    async with cluster(app(seconds), "ab", FT) as c:
        sid = await c["a"].start_session("huge", [1])
        await wait_status(c["b"], sid, S.PARKED, timeout=5)
        await c.stop("b")
        await c.start("b")
        await asyncio.sleep(0.3)
        await c["a"].cancel(sid)
        record = await c["a"].wait(sid, timeout=10)
        assert record.status in (S.FAILED, S.COMPENSATED)
