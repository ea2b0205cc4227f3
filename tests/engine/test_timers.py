"""Durable timers in the engine: journaled deadlines, parking, waking, cancel, saga deadlines."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections import Counter

import pytest

import accompanist as ac
from accompanist.engine.config import EngineConfig, Mode
from accompanist.engine.timers import timer_state
from accompanist.errors import DefinitionError
from accompanist.store.base import SessionStatus
from accompanist.store.memory import MemoryStore
from tests.engine.harness import cluster, eventually, wait_status

A, B = ac.roles("a", "b")
S = SessionStatus

FT = EngineConfig(
    mode=Mode.FAULT_TOLERANT,
    receive_timeout=5,
    retry_min=0.01,
    retry_max=0.1,
    deliver_timeout=0.5,
    relay_interval=0.05,
    outcome_query_after=0.2,
    sleep_in_task=0.5,
)


def make_app(seconds: float, effects: Counter[str]) -> ac.App:
    """a sends x to b; b sleeps, then applies its effect and answers."""

    def effect(x: int) -> int:
        effects["b"] += 1
        return x + 1

    @ac.choreography("nap", roles=(A, B))
    async def nap(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        at_b = await ch.comm(A, B, x)
        await ch.sleep(B, seconds)
        at_b = await ch.locally(B, effect, at_b)
        return await ch.comm(B, A, at_b)

    return ac.App(nap)


async def test_a_long_sleep_parks_without_a_task_and_wakes_at_its_deadline() -> None:
    effects: Counter[str] = Counter()
    async with cluster(make_app(1.5, effects), "ab", FT) as c:
        began = time.time()
        sid = await c["a"].start_session("nap", [1])
        parked = await wait_status(c["b"], sid, S.PARKED, timeout=5)
        assert parked.error is not None and parked.error.startswith("sleeping until ")
        assert c["b"].live_run(sid) is None  # no task while it sleeps
        assert c["b"].timers.deadline(sid, "wake") == pytest.approx(timer_state(parked.state)["wake_at"])
        record = await c["a"].wait(sid, timeout=20)
        assert record.status == S.COMPLETED
        assert c["a"].result_of(record) == 2
        assert time.time() - began >= 1.4
        assert effects["b"] == 1
        assert len(c["b"].timers) == 0
        b_record = await wait_status(c["b"], sid, S.COMPLETED)
        assert "wake_at" not in timer_state(b_record.state)


async def test_a_replay_reuses_the_journaled_deadline() -> None:
    """b is stopped while it sleeps and restarted: the deadline is the one journaled, not now + 2 s."""
    effects: Counter[str] = Counter()
    async with cluster(make_app(2.0, effects), "ab", FT) as c:
        sid = await c["a"].start_session("nap", [1])
        parked = await wait_status(c["b"], sid, S.PARKED, timeout=5)
        journaled = timer_state(parked.state)["wake_at"]
        journal = await c.stores["b"].journal_load(sid)
        sleep_entry = next(e for e in journal if e.kind == "sleep")
        assert sleep_entry.value is not None and c.app.get("nap").codec.decode(sleep_entry.value) == pytest.approx(
            journaled
        )
        await c.stop("b")
        await asyncio.sleep(0.5)
        b = await c.start("b")
        assert b.timers.deadline(sid, "wake") == pytest.approx(journaled)  # rebuilt from the record
        record = await c["a"].wait(sid, timeout=20)
        assert record.status == S.COMPLETED
        assert time.time() >= journaled
        assert time.time() < journaled + 1.5  # not restarted from "now" at the restart
        assert effects["b"] == 1


async def test_a_sidecar_down_past_the_deadline_fires_it_at_start() -> None:
    effects: Counter[str] = Counter()
    async with cluster(make_app(1.0, effects), "ab", FT) as c:
        sid = await c["a"].start_session("nap", [1])
        await wait_status(c["b"], sid, S.PARKED, timeout=5)
        await c.stop("b")
        await asyncio.sleep(1.5)
        b = await c.start("b")
        assert b.timers.deadline(sid, "wake") is None  # past: resumed at start instead
        assert (await c["a"].wait(sid, timeout=20)).status == S.COMPLETED
        assert effects["b"] == 1


async def test_a_message_for_a_sleeping_role_waits_in_the_inbox() -> None:
    """b sleeps while a's next message arrives: it is kept (not lost, no early wake) and
    received once b wakes."""

    @ac.choreography("ping2", roles=(A, B))
    async def ping2(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        first = await ch.comm(A, B, x)
        await ch.sleep(B, 1.5)
        second = await ch.comm(A, B, x)  # a sends at once: it arrives while b sleeps
        both = await ch.locally(B, lambda p, q: p + q, first, second)
        return await ch.comm(B, A, both)

    async with cluster(ac.App(ping2), "ab", FT) as c:
        sid = await c["a"].start_session("ping2", [5])
        await wait_status(c["b"], sid, S.PARKED, timeout=5)

        async def arrived() -> bool:
            return any(e.seq == 2 for e in await c.stores["b"].inbox_load(sid))

        await eventually(arrived, what="the second message in b's inbox")
        await asyncio.sleep(0.2)
        still = await c["b"].get(sid)
        assert still is not None and still.status == S.PARKED  # the message did not wake it
        record = await c["a"].wait(sid, timeout=20)
        assert record.status == S.COMPLETED and c["a"].result_of(record) == 10


DONE: Counter[str] = Counter()
UNDONE: Counter[str] = Counter()


async def unreserve(ctx: ac.TxContext, x: int, _result: object = None) -> None:
    UNDONE.update([ctx.role])


@ac.transaction(compensate=unreserve)
async def reserve(ctx: ac.TxContext, x: int) -> bool:
    DONE.update([ctx.role])
    return True


def saga_app(sleep: float, deadline: float | None) -> ac.App:
    @ac.choreography("sleepy_saga", roles=(A, B))
    async def sleepy_saga(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        if deadline is not None:
            await ch.cancel_after(deadline, reason="payment took too long")
        await ch.transaction(A, reserve, x)
        at_b = await ch.comm(A, B, x)
        await ch.transaction(B, reserve, at_b)
        await ch.sleep(B, sleep)
        return await ch.comm(B, A, at_b)

    return ac.App(sleepy_saga)


@pytest.mark.parametrize("at", ["a", "b"], ids=["at-the-initiator", "at-the-sleeping-role"])
async def test_an_operator_cancel_of_a_sleeping_session_compensates_and_clears_its_timer(at: str) -> None:
    DONE.clear()
    UNDONE.clear()
    async with cluster(saga_app(600, None), "ab", FT) as c:
        sid = await c["a"].start_session("sleepy_saga", [1])
        await wait_status(c["b"], sid, S.PARKED, timeout=5)
        assert c["b"].timers.deadline(sid, "wake") is not None
        await c[at].cancel(sid)
        record = await c["a"].wait(sid, timeout=20)
        assert record.status == S.COMPENSATED
        await wait_status(c["b"], sid, S.COMPENSATED)
        assert c["b"].timers.deadline(sid, "wake") is None
        assert Counter({"a": 1, "b": 1}) == DONE and Counter({"a": 1, "b": 1}) == UNDONE


async def test_a_saga_deadline_cancels_the_session_everywhere() -> None:
    DONE.clear()
    UNDONE.clear()
    async with cluster(saga_app(600, 1.0), "ab", FT) as c:
        sid = await c["a"].start_session("sleepy_saga", [1])
        assert c["a"].timers.deadline(sid, "cancel") is not None
        record = await c["a"].wait(sid, timeout=20)
        assert record.status == S.COMPENSATED
        failure = c["a"].failure_of(record)
        assert failure is not None and failure.error_type == "SessionCancelledError"
        assert "payment took too long" in failure.message
        b_record = await wait_status(c["b"], sid, S.COMPENSATED)
        assert c["b"].failure_of(b_record) == failure  # every role agrees
        assert Counter({"a": 1, "b": 1}) == UNDONE
        assert len(c["a"].timers) == 0 and len(c["b"].timers) == 0


async def test_a_saga_deadline_is_cleared_when_the_session_completes_first() -> None:
    DONE.clear()
    UNDONE.clear()
    async with cluster(saga_app(0.1, 30.0), "ab", FT) as c:
        sid = await c["a"].start_session("sleepy_saga", [1])
        record = await c["a"].wait(sid, timeout=20)
        assert record.status == S.COMPLETED
        assert c["a"].timers.deadline(sid, "cancel") is None
        assert not UNDONE


async def test_default_mode_sleeps_in_the_task_and_a_cancel_wakes_it() -> None:
    DONE.clear()
    UNDONE.clear()
    async with cluster(saga_app(600, None), "ab", EngineConfig(receive_timeout=30)) as c:
        sid = await c["a"].start_session("sleepy_saga", [1])

        async def sleeping() -> bool:
            return DONE["b"] == 1

        await eventually(sleeping, what="b sleeping")
        run = c["b"].live_run(sid)
        assert run is not None and run.record.status == S.RUNNING
        await c["a"].cancel(sid)
        assert (await c["a"].wait(sid, timeout=20)).status == S.COMPENSATED
        await wait_status(c["b"], sid, S.COMPENSATED)


async def test_two_thousand_sessions_sleep_at_once_without_tasks_and_all_wake() -> None:
    effects: Counter[str] = Counter()
    n = 2000
    # a's receives park too (after 1 s): then nothing of the 2,000 sessions holds a task.
    config = EngineConfig(**{**FT.__dict__, "receive_timeout": 1.0})
    async with cluster(make_app(8.0, effects), "ab", config) as c:
        sids = await asyncio.gather(*(c["a"].start_session("nap", [i]) for i in range(n)))

        async def all_parked() -> bool:
            return len(c["b"].timers) == n and c["a"].live_sessions == 0

        await eventually(all_parked, timeout=60, what="every session parked at a and b")
        assert c["b"].live_sessions == 0
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("session-")]
        records = await asyncio.gather(*(c["a"].wait(s, timeout=120) for s in sids))
        assert all(r.status == S.COMPLETED for r in records)
        assert effects["b"] == n
        assert len(c["b"].timers) == 0


async def test_sleep_until_a_naive_datetime_is_refused() -> None:
    @ac.choreography("naive", roles=(A, B))
    async def naive(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        await ch.sleep_until(B, dt.datetime(2030, 1, 1))
        return x

    with pytest.raises(DefinitionError, match="naive"):
        await ac.run_central(naive, 1)


async def test_sleep_until_an_aware_datetime_in_the_past_does_not_wait() -> None:
    @ac.choreography("past", roles=(A, B))
    async def past(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        when = await ch.locally(A, lambda: dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
        await ch.sleep_until(A, when)
        return x

    store = MemoryStore("a")
    async with cluster(ac.App(past), "ab", FT, stores={"a": store}) as c:
        sid = await c["a"].start_session("past", [7])
        record = await c["a"].wait(sid, timeout=10)
        assert record.status == S.COMPLETED and c["a"].result_of(record) == 7
        kinds = [e.kind for e in await store.journal_load(sid)]
        assert "sleep" in kinds


async def test_accompanist_replay_of_a_sleeping_session_checks_its_sleep_without_waiting() -> None:
    from accompanist.testing.replay import export_session, replay_session

    DONE.clear()
    async with cluster(saga_app(600, 900), "ab", FT) as c:
        sid = await c["a"].start_session("sleepy_saga", [1])
        await wait_status(c["b"], sid, S.PARKED, timeout=5)
        for role in ("a", "b"):
            report = await asyncio.wait_for(replay_session(await export_session(c.stores[role], sid), c.app), 5)
            assert report.ok, str(report)
        kinds = [e.kind for e in await c.stores["a"].journal_load(sid)]
        assert kinds[0] == "deadline"
        assert report.steps == 3 and "ends before step 3" in report.ended  # b: recv, tx, sleep


async def test_a_saga_deadline_holds_while_the_initiator_waits_finished_and_across_its_restart() -> None:
    """a's own part ends at once (it is only ``finished``); b sleeps past the deadline. The
    deadline, kept in a's record with its contacts, fires after a's restart too."""

    @ac.choreography("hand_off", roles=(A, B))
    async def hand_off(ch: ac.Choreo, x: ac.Located[int]) -> None:
        await ch.cancel_after(1.5, reason="b is too slow")
        await ch.transaction(A, reserve, x)
        at_b = await ch.comm(A, B, x)
        await ch.transaction(B, reserve, at_b)
        await ch.sleep(B, 600)

    DONE.clear()
    UNDONE.clear()
    async with cluster(ac.App(hand_off), "ab", FT) as c:
        sid = await c["a"].start_session("hand_off", [1])
        finished = await wait_status(c["a"], sid, S.FINISHED, timeout=5)
        assert finished.state is not None
        state = json.loads(finished.state)
        assert state["contacts"] == ["b"] and state["cancel_reason"] == "b is too slow"  # both kept
        await c.stop("a")
        a = await c.start("a")
        assert a.timers.deadline(sid, "cancel") is not None  # re-armed from the record, no replay
        record = await a.wait(sid, timeout=20)
        assert record.status == S.COMPENSATED and "b is too slow" in (record.error or "")
        await wait_status(c["b"], sid, S.COMPENSATED)
        assert Counter({"a": 1, "b": 1}) == UNDONE
