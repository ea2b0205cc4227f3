"""The engine's small cheap helpers: per-session locks, one linger timer, plain-number metrics."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from accompanist.engine.instruments import Instruments
from accompanist.engine.linger import Lingering
from accompanist.engine.locks import KeyedLocks


async def test_a_key_is_held_by_one_holder_at_a_time_first_come_first_served() -> None:
    locks = KeyedLocks()
    order: list[str] = []
    inside = 0

    async def hold(name: str, key: str) -> None:
        nonlocal inside
        async with locks.hold(key):
            inside += 1
            assert inside == 1 or key != "s"
            order.append(name)
            await asyncio.sleep(0.01)
            inside -= 1

    await asyncio.gather(*(hold(f"h{i}", "s") for i in range(5)), hold("other", "t"))
    assert [n for n in order if n != "other"] == [f"h{i}" for i in range(5)]
    assert len(locks) == 0  # nothing kept for keys nobody holds


async def test_a_waiter_cancelled_while_waiting_or_just_as_it_got_the_key_blocks_nobody() -> None:
    locks = KeyedLocks()
    await locks.acquire("s")
    waiting = asyncio.ensure_future(locks.acquire("s"))
    handed = asyncio.ensure_future(locks.acquire("s"))
    last = asyncio.ensure_future(locks.acquire("s"))
    await asyncio.sleep(0)
    waiting.cancel()  # gives up while waiting
    await asyncio.sleep(0)
    locks.release("s")  # the key goes to `handed` ...
    handed.cancel()  # ... which is cancelled before it runs: it must pass the key on
    with pytest.raises(asyncio.CancelledError):
        await handed
    await asyncio.wait_for(last, 1)
    locks.release("s")
    assert len(locks) == 0


async def test_runs_waiting_for_a_commit_are_saved_in_order_once_they_waited_long_enough() -> None:
    fired: list[str] = []

    class Run:
        def __init__(self, name: str) -> None:
            self.name = name

        def lingered(self) -> None:
            fired.append(self.name)

    lingering = Lingering(0.05)
    first, second, committed = Run("first"), Run("second"), Run("committed")
    lingering.arm(first)
    lingering.arm(committed)
    await asyncio.sleep(0.02)
    lingering.arm(second)
    lingering.arm(first)  # already waiting: its deadline stays
    lingering.disarm(committed)  # it committed on its own
    await asyncio.sleep(0.04)
    assert fired == ["first"]
    await asyncio.sleep(0.04)
    assert fired == ["first", "second"]


def test_instruments_expose_what_prometheus_client_metrics_would() -> None:
    ours = Instruments()
    count = ours.counter("t_events", "Events")
    by = ours.counters("t_ended", "Ended", ["status"])
    level = ours.gauge("t_live", "Live")
    told = ours.gauge("t_told", "Told")
    timing = ours.histogram("t_seconds", "Seconds", (0.001, 0.01, 1))
    timings = ours.histograms("t_step_seconds", "Step seconds", ["kind"], (0.001, 0.01, 1))
    registry = CollectorRegistry()
    registry.register(ours)

    theirs = CollectorRegistry()
    t_count = Counter("t_events", "Events", registry=theirs)
    t_by = Counter("t_ended", "Ended", ["status"], registry=theirs)
    t_level = Gauge("t_live", "Live", registry=theirs)
    t_told = Gauge("t_told", "Told", registry=theirs)
    t_timing = Histogram("t_seconds", "Seconds", buckets=(0.001, 0.01, 1), registry=theirs)
    t_timings = Histogram("t_step_seconds", "Step seconds", ["kind"], buckets=(0.001, 0.01, 1), registry=theirs)

    for ours_, theirs_ in ((count, t_count), (by.labels(status="done"), t_by.labels(status="done"))):
        ours_.inc()
        ours_.inc(2)
        theirs_.inc()
        theirs_.inc(2)
    level.inc(3)
    level.dec()
    t_level.inc(3)
    t_level.dec()
    told.set_function(lambda: 7.0)
    t_told.set_function(lambda: 7.0)
    for seconds in (0.0005, 0.001, 0.002, 0.5, 2.0):
        timing.observe(seconds)
        t_timing.observe(seconds)
        timings.timing(kind="send").observe(seconds)
        t_timings.labels(kind="send").observe(seconds)

    def lines(text: bytes) -> list[str]:
        return sorted(line for line in text.decode().splitlines() if "_created" not in line)

    assert lines(generate_latest(registry)) == lines(generate_latest(theirs))
