"""Time skipping: an hour of waiting (a slow step, a receive that parks and resumes, a commit
retried with backoff) passes on the virtual clock in a moment of wall time."""

from __future__ import annotations

import asyncio
import time

import pytest

import accompanist as ac
from accompanist.testing import Cluster, quick_config, run_virtual, virtual_clock, virtual_time_available

pytestmark = pytest.mark.skipif(not virtual_time_available(), reason="needs looptime (pip install '.[testing]')")

CLERK, VAULT = ac.roles("clerk", "vault")
HOUR = 3600.0


def make_slow(hiccups: list[int]) -> ac.Choreography:
    async def open_vault(code: int) -> int:
        await asyncio.sleep(HOUR)  # a local step that takes an hour (a batch job, a human)
        return code * 2

    async def store_it(ctx: ac.TxContext, value: int) -> int:
        if len(hiccups) < 3:  # the service is down for the first three tries: retried with backoff
            hiccups.append(ctx.attempt)
            raise ConnectionError("service restarting")
        return value + 1

    deposit = ac.Transaction("deposit", store_it, retry=ac.Retry(attempts=5, initial=600.0, maximum=1800.0))

    @ac.choreography("slow", roles=(CLERK, VAULT))
    async def slow(ch: ac.Choreo, code: ac.Located[int]) -> ac.Located[int]:
        at_vault = await ch.comm(CLERK, VAULT, code)
        opened = await ch.locally(VAULT, open_vault, at_vault)
        stored = await ch.transaction(VAULT, deposit, opened)
        return await ch.comm(VAULT, CLERK, stored)

    return slow


async def _hour_long_session(receive_timeout: float) -> tuple[int, float]:
    hiccups: list[int] = []
    loop = asyncio.get_running_loop()
    config = quick_config(receive_timeout=receive_timeout, virtual=True)
    async with virtual_clock(), Cluster(make_slow(hiccups), config=config) as c:
        began = loop.time()
        result = await c.run("slow", 21, timeout=60)
        virtual = loop.time() - began
    assert hiccups == [1, 2, 3]
    return result, virtual


@pytest.mark.parametrize("receive_timeout", [2 * HOUR, 60.0], ids=["waits", "parks-and-resumes"])
async def test_an_hour_of_waiting_takes_a_moment(receive_timeout: float) -> None:
    wall = time.monotonic()
    result, virtual = await _hour_long_session(receive_timeout)
    wall = time.monotonic() - wall
    assert result == 43
    # an hour of sleep plus 600 + 1200 + 1800 s of backoff, on the virtual clock
    assert virtual >= HOUR + 3600
    assert wall < virtual / 100, f"{wall:.1f}s of wall time for {virtual:.0f}s of virtual time"


def test_run_virtual_from_plain_code() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        began = loop.time()
        await asyncio.sleep(HOUR)
        return loop.time() - began

    wall = time.monotonic()
    assert run_virtual(main) >= HOUR
    assert time.monotonic() - wall < 60
