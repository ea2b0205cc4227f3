"""Durable timers on the virtual clock: an hour's sleep (or saga deadline) in a moment of wall
time, in the central and projected interpreters, a ``Cluster``, and under ``explore``."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest

import accompanist as ac
from accompanist.testing import Cluster, Ledger, explore, quick_config, run_projected, virtual_clock
from accompanist.testing import virtual_time_available as _available

pytestmark = pytest.mark.skipif(not _available(), reason="needs looptime (pip install '.[testing]')")

SHOP, BANK = ac.roles("shop", "bank")
HOUR = 3600.0


def make_reminder(ledger: Ledger, *, deadline: float | None = None, hold: float = HOUR) -> ac.Choreography:
    """The shop reserves, waits an hour (until a located time at the bank, too), the bank charges."""

    async def reserve_it(ctx: ac.TxContext, item: str) -> str:
        ledger.once(ctx, "reserve")
        return item

    async def unreserve(ctx: ac.TxContext, item: str, _result: object = None) -> None:
        ledger.once(ctx, "unreserve")

    async def charge_it(ctx: ac.TxContext, item: str) -> str:
        ledger.once(ctx, "charge")
        return f"paid for {item}"

    async def refund(ctx: ac.TxContext, item: str, _result: object = None) -> None:
        ledger.once(ctx, "refund")

    reserve = ac.Transaction("reserve", reserve_it, unreserve)
    charge = ac.Transaction("charge", charge_it, refund)

    @ac.choreography("reminder", roles=(SHOP, BANK))
    async def reminder(ch: ac.Choreo, item: ac.Located[str]) -> ac.Located[str]:
        if deadline is not None:
            await ch.cancel_after(deadline, reason="the bank took too long")
        await ch.transaction(SHOP, reserve, item)
        await ch.sleep(SHOP, hold)
        at_bank = await ch.comm(SHOP, BANK, item)
        start = await ch.now(BANK)
        when = await ch.locally(BANK, lambda t: t + dt.timedelta(seconds=hold), start)
        await ch.sleep_until(BANK, when)
        paid = await ch.transaction(BANK, charge, at_bank)
        return await ch.comm(BANK, SHOP, paid)

    return reminder


@pytest.mark.parametrize("mode", ["fault-tolerant", "default"])
async def test_two_hours_of_sleep_in_a_cluster_take_a_moment(mode: str) -> None:
    ledger = Ledger()
    loop = asyncio.get_running_loop()
    wall = time.monotonic()
    # In default mode a receive that waits for a sleeping peer times out as any receive does:
    # it must wait longer than the sleep. In fault-tolerant mode it parks and resumes.
    config = quick_config(mode, virtual=True, receive_timeout=3 * HOUR if mode == "default" else 60.0)
    async with virtual_clock(), Cluster(make_reminder(ledger), config=config) as c:
        began = loop.time()
        assert await c.run("reminder", "book", timeout=3 * HOUR) == "paid for book"
        virtual = loop.time() - began
    assert virtual >= 2 * HOUR - 1  # floating point: an hour of loop time may be 3599.99999...
    assert time.monotonic() - wall < 60


async def test_the_central_and_projected_interpreters_sleep_on_the_loop_clock() -> None:
    ledger = Ledger()
    loop = asyncio.get_running_loop()
    async with virtual_clock():
        began = loop.time()
        assert await ac.run_central(make_reminder(ledger), "book") == "paid for book"
        assert loop.time() - began >= 2 * HOUR - 1
        began = loop.time()
        assert await run_projected(make_reminder(ledger), "book", timeout=3 * HOUR) == "paid for book"
        assert loop.time() - began >= 2 * HOUR - 1


async def test_a_saga_deadline_cancels_the_central_run_and_compensates() -> None:
    ledger = Ledger()
    async with virtual_clock():
        with pytest.raises(ac.SessionFailedError) as failed:
            await ac.run_central(make_reminder(ledger, deadline=HOUR / 2), "book")
    assert failed.value.status == "compensated"
    assert failed.value.failure is not None and failed.value.failure.error_type == "SessionCancelledError"
    assert "the bank took too long" in str(failed.value)
    assert [e.label for e in ledger.entries] == ["reserve", "unreserve"]


@pytest.mark.parametrize("mode", ["fault-tolerant", "default"])
async def test_a_saga_deadline_cancels_a_cluster_session_on_every_role(mode: str) -> None:
    ledger = Ledger()
    config = quick_config(mode, virtual=True, receive_timeout=3 * HOUR)
    async with virtual_clock(), Cluster(make_reminder(ledger, deadline=HOUR / 2), config=config) as c:
        with pytest.raises(ac.SessionFailedError) as failed:
            await c.run("reminder", "book", timeout=3 * HOUR)
    assert failed.value.status == "compensated"
    assert failed.value.failure is not None and failed.value.failure.error_type == "SessionCancelledError"
    assert [e.label for e in ledger.entries] == ["reserve", "unreserve"]


def test_explore_crashes_each_role_at_its_sleep_steps_and_passes() -> None:
    ledger = Ledger()
    # explore looks at the cluster every half second of virtual time: minutes, not hours, here
    report = explore(lambda: make_reminder(ledger, hold=30.0), "book", effects=ledger)
    assert report.ok, str(report)
    crashed = {(r.schedule.crash.role, r.schedule.crash.step) for r in report.runs if r.schedule.crash}
    assert ("shop", 1) in crashed  # before the shop's sleep (after its reserve)
    assert ("shop", 2) in crashed  # right after it (its deadline journaled)
    assert ("bank", 3) in crashed and ("bank", 4) in crashed  # around the bank's sleep_until
    assert all(r.result == "paid for book" for r in report.runs if r.schedule.fail is None)
