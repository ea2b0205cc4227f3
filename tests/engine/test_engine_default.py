"""The session engine in default mode, over an in-memory network with injected faults."""

from __future__ import annotations

import asyncio
import random

import pytest
from examples.bookseller import bookseller
from examples.merge_sort import merge_sort

import accompanist as ac
from accompanist.engine.config import EngineConfig
from accompanist.envelope import Envelope
from accompanist.errors import OverloadedError, ReceiveTimeoutError, UnknownChoreographyError
from accompanist.store.base import SessionRecord, SessionStatus
from accompanist.store.memory import MemoryStore
from accompanist.transport.memory import FaultPlan
from tests.engine.harness import cluster

A, B, C = ac.roles("a", "b", "c")


@ac.choreography("burst", roles=(A, B, C))
async def burst(ch: ac.Choreo, n: ac.Located[int]) -> ac.Located[int]:
    """A sends n values to B before B looks at any; B sums them and tells A."""
    count = await ch.broadcast(A, n)
    values = []
    for i in range(count):
        v = await ch.locally(A, lambda i=i: i)
        values.append(await ch.comm(A, B, v))
    await ch.locally(B, asyncio.sleep, await ch.locally(B, lambda: 0.05))
    total = await ch.locally(B, lambda: 0)
    for v in values:
        total = await ch.locally(B, lambda t, x: t + x, total, v)
    return await ch.comm(B, A, total)


@ac.choreography("waits-forever", roles=(A, B))
async def waits_forever(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
    """B waits for a message that A only sends after a long local step."""
    x = await ch.locally(A, asyncio.sleep, x, await ch.locally(A, lambda _: 10, x))
    y = await ch.comm(A, B, await ch.locally(A, lambda: 1))
    return await ch.comm(B, A, y)


@ac.choreography("crashes", roles=(A, B, C))
async def crashes(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
    """B fails in a local step while A and C wait for it."""
    at_b = await ch.comm(A, B, x)
    await ch.comm(A, C, x)
    bad = await ch.locally(B, lambda v: 1 // (v - v), at_b)
    await ch.comm(B, C, bad)
    return await ch.comm(B, A, bad)


@ac.choreography("pair", roles=(A, B, C))
async def pair(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
    """Only A and B talk; C is a role of the choreography that takes no part in this run."""
    doubled = await ch.locally(B, lambda v: v * 2, await ch.comm(A, B, x))
    return await ch.comm(B, A, doubled)


APP = ac.App(bookseller, merge_sort, burst, waits_forever, crashes, pair)


async def test_bookseller_across_engines() -> None:
    async with cluster(APP, ["buyer", "seller"]) as c:
        assert await c["buyer"].run("bookseller", "SICP") == "bought at 30"
        assert await c["buyer"].run("bookseller", "HtDP") == "too expensive"
        seller_sessions = await c.stores["seller"].list_sessions()
        assert len(seller_sessions) == 2
        ended = [await c["seller"].wait(s.session_id, 5) for s in seller_sessions]
        assert {s.status for s in ended} == {SessionStatus.COMPLETED}
        assert all(s.role == "seller" and s.result is None for s in ended)


async def test_many_concurrent_sessions_reordered_and_duplicated() -> None:
    plan = FaultPlan(duplicate=0.3, delay=(0.0, 0.003), reorder=True, seed=7)
    async with cluster(APP, ["primary", "worker1", "worker2"], plan=plan) as c:
        rng = random.Random(1)
        inputs = [[rng.randint(-50, 50) for _ in range(rng.randint(0, 20))] for _ in range(300)]
        results = await asyncio.gather(*(c["primary"].run("merge-sort", xs) for xs in inputs))
        assert results == [sorted(xs) for xs in inputs]
        dropped = sum(e.metrics.duplicates.get() for e in c.engines.values())
        assert dropped > 0, "the fault plan duplicated envelopes, so some must have been dropped"


async def test_early_envelopes_wait_in_order() -> None:
    plan = FaultPlan(delay=(0.0, 0.004), reorder=True, seed=3)
    async with cluster(APP, ["a", "b", "c"], plan=plan) as c:
        assert await c["a"].run("burst", 30) == sum(range(30))


async def test_buffer_overflow_fails_only_that_session() -> None:
    config = EngineConfig(buffer_limit=5, receive_timeout=5)
    async with cluster(APP, ["a", "b", "c"], config=config) as c:
        big = await c["a"].start_session("burst", [20])
        small = await c["a"].start_session("burst", [3])
        assert (await c["a"].wait(small, 5)).status == SessionStatus.COMPLETED
        at_b = await c["b"].wait(big, 5)
        assert at_b.status == SessionStatus.FAILED
        assert "BufferOverflowError" in (at_b.error or "") and "more than 5" in (at_b.error or "")
        at_a = await c["a"].wait(big, 5)
        assert at_a.status == SessionStatus.FAILED  # told by b's failure envelope, not a timeout


async def test_receive_timeout_fails_the_session_naming_src_and_seq() -> None:
    config = EngineConfig(receive_timeout=0.2)
    async with cluster(APP, ["a", "b"], config=config) as c:
        c.network.partition("a", "b")
        sid = await c["a"].start_session("waits-forever", [0])
        # b never started (nothing reached it): the initiator times out waiting for b, and in
        # default mode does not wait for an unreachable role to confirm it compensated.
        record = await c["a"].wait(sid, 15)
        assert record.status == SessionStatus.FAILED
        assert "not confirmed by b" in (record.error or "")
        assert await c["b"].get(sid) is None
    async with cluster(APP, ["a", "b"], config=EngineConfig(receive_timeout=0.2, outcome_query_after=0.1)) as c:
        c.network.partition("a", "b")
        # b starts lazily from an envelope of ours, then waits for #1 from a that never comes.
        env = Envelope("0190f0f0-0000-7000-8000-000000000001", "waits-forever", 1, "a", "b", 2, "value", b"\x01")
        await c["b"].handle(env)
        await asyncio.sleep(0.5)
        record = await c["b"].get(env.session_id)
        assert record is not None and record.status == SessionStatus.COMPENSATING  # only the initiator decides
        c.network.heal("a", "b")
        # b asks the initiator, which never started this session: presumed abort, with b's reason.
        record = await c["b"].wait(env.session_id, 5)
        assert record.status == SessionStatus.FAILED
        assert ReceiveTimeoutError.__name__ in (record.error or "")
        assert "#1 from 'a'" in (record.error or "")


async def test_failure_wakes_waiting_roles() -> None:
    async with cluster(APP, ["a", "b", "c"], config=EngineConfig(receive_timeout=30)) as c:
        loop = asyncio.get_running_loop()
        started = loop.time()
        sid = await c["a"].start_session("crashes", [4])
        records = [await c[r].wait(sid, 10) for r in "abc"]
        assert loop.time() - started < 5, "roles must be woken by the failure, not by the 30 s timeout"
        assert [r.status for r in records] == [SessionStatus.FAILED] * 3
        assert "ZeroDivisionError" in (records[1].error or "")
        assert "role 'b'" in (records[0].error or "") and "ZeroDivisionError" in (records[0].error or "")
        with pytest.raises(ac.SessionFailedError) as info:
            await c["a"].run("crashes", 1)
        assert info.value.status == "failed"


async def test_roles_that_receive_nothing_never_start() -> None:
    async with cluster(APP, ["a", "b", "c"]) as c:
        assert await c["a"].run("pair", 21) == 42
        assert len(await c.stores["b"].list_sessions()) == 1
        assert await c.stores["c"].list_sessions() == []


async def test_unknown_choreography_and_bad_envelopes_are_rejected() -> None:
    async with cluster(APP, ["a", "b", "c"]) as c:
        with pytest.raises(ac.EnvelopeRejectedError, match="nope") as info:
            await c["b"].handle(Envelope("s", "nope", 1, "a", "b", 1, "value"))
        assert (info.value.code, info.value.permanent) == ("unknown-choreography", False)  # may be deployed later
        with pytest.raises(ac.EnvelopeRejectedError, match="version 9"):
            await c["b"].handle(Envelope("s", "burst", 9, "a", "b", 1, "value"))
        with pytest.raises(ac.EnvelopeRejectedError, match="does not fit") as info:
            await c["b"].handle(Envelope("s", "burst", 1, "zed", "b", 1, "value"))
        assert (info.value.code, info.value.permanent) == ("invalid", True)
        with pytest.raises(ac.EnvelopeRejectedError, match="kind"):
            await c["b"].handle(Envelope("s", "burst", 1, "a", "b", 1, "bogus"))
        assert await c.stores["b"].list_sessions() == []
        assert await c["a"].run("burst", 2) == 1


async def test_start_errors_are_clear() -> None:
    async with cluster(APP, ["a", "b", "c"], config=EngineConfig(max_inflight=1, receive_timeout=5)) as c:
        with pytest.raises(UnknownChoreographyError):
            await c["a"].start_session("missing")
        with pytest.raises(ac.DefinitionError, match="starts at role 'a'"):
            await c["b"].start_session("burst", [1])
        with pytest.raises(ac.DefinitionError, match="takes 1 argument"):
            await c["a"].start_session("burst", [1, 2])
        await c["a"].start_session("waits-forever", [0])
        with pytest.raises(OverloadedError):
            await c["a"].start_session("burst", [1])


async def test_thousands_of_concurrent_sessions() -> None:
    # Default mode fails a session whose peer stays silent for the receive timeout; on a loaded
    # machine 5,000 sessions sharing one event loop can keep a peer silent for longer than the
    # harness's 5 s, and the test is about concurrency, not timeouts.
    async with cluster(APP, ["buyer", "seller"], config=EngineConfig(receive_timeout=120)) as c:
        titles = ["SICP" if i % 2 else "HtDP" for i in range(5000)]
        results = await asyncio.gather(*(c["buyer"].run("bookseller", t, timeout=120) for t in titles))
        assert results == ["bought at 30" if t == "SICP" else "too expensive" for t in titles]


async def test_a_start_with_a_chosen_session_id_is_idempotent() -> None:
    async with cluster(APP, ["a", "b", "c"]) as c:
        first = await c["a"].start_session("pair", [4], session_id="order-17")
        again = await asyncio.gather(*(c["a"].start_session("pair", [4], session_id="order-17") for _ in range(5)))
        assert first == "order-17" and set(again) == {"order-17"}
        assert (await c["a"].wait("order-17", 5)).status == SessionStatus.COMPLETED
        assert len(await c.stores["a"].list_sessions()) == 1 and len(await c.stores["b"].list_sessions()) == 1
        with pytest.raises(ac.SessionError, match="taken by a session of 'pair'"):
            await c["a"].start_session("burst", [1], session_id="order-17")
        with pytest.raises(ac.DefinitionError, match="invalid session_id"):
            await c["a"].start_session("pair", [1], session_id="no spaces/allowed")


class SlowReadStore(MemoryStore):
    """A store whose reads take a while, so that concurrent envelopes interleave."""

    async def get_session(self, session_id: str) -> SessionRecord | None:
        record = await super().get_session(session_id)
        await asyncio.sleep(0.02)  # the answer is already stale when it arrives
        return record


async def test_a_failure_racing_the_first_message_is_not_lost() -> None:
    config = EngineConfig(receive_timeout=5, outcome_query_after=0.1)
    async with cluster(APP, ["a", "b", "c"], config=config, stores={"b": SlowReadStore("b")}) as c:
        sid = "0190f0f0-0000-7000-8000-00000000beef"
        value = Envelope(sid, "pair", 1, "a", "b", 1, "value", ac.PayloadCodec().encode(5))
        failure = Envelope(sid, "pair", 1, "a", "b", -1, "failure", b"failed at role 'a': boom")
        # Both look the session up before either writes: the failure's tombstone must win.
        await asyncio.gather(c["b"].handle(failure), c["b"].handle(value))
        # b never took part: it acknowledges the failure at once and, the initiator being silent
        # (it never started this session), asks it for the outcome: failed, with that reason.
        record = await c["b"].wait(sid, 5)
        assert record.status == SessionStatus.FAILED and "boom" in (record.error or "")
        assert c["b"].live_sessions == 0


async def test_a_message_for_a_session_the_initiator_never_started_is_dropped() -> None:
    async with cluster(APP, ["a", "b", "c"]) as c:
        stray = Envelope("0190f0f0-0000-7000-8000-00000000f00d", "pair", 1, "b", "a", 1, "value", b"\x05")
        await c["a"].handle(stray)
        assert await c.stores["a"].list_sessions() == []


async def test_default_mode_keeps_a_bounded_number_of_ended_sessions() -> None:
    config = EngineConfig(receive_timeout=5, memory_keep=50, prune_interval=0.05)
    async with cluster(APP, ["a", "b", "c"], config=config) as c:
        for _ in range(3):
            assert await asyncio.gather(*(c["a"].run("pair", i) for i in range(100))) == [2 * i for i in range(100)]
        await asyncio.sleep(0.3)  # a few retention passes
        for role in "ab":
            kept = len(await c.stores[role].list_sessions(limit=10_000))
            assert kept <= 50, (role, kept)
            assert c[role].metrics.sessions_kept.get() <= 50
