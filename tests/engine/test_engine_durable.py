"""The session engine in fault-tolerant mode: lossy networks, restarts, parking, divergence."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field

import accompanist as ac
from accompanist.engine.config import EngineConfig, Mode, ReplayPolicy
from accompanist.engine.stepkey import current_step
from accompanist.store.base import SessionStatus
from accompanist.transport.memory import FaultPlan
from tests.engine.harness import Cluster, cluster, eventually, wait_status

A, B, C = ac.roles("a", "b", "c")

FT = EngineConfig(
    mode=Mode.FAULT_TOLERANT,
    receive_timeout=0.5,
    retry_min=0.01,
    retry_max=0.1,
    deliver_timeout=0.2,
    relay_interval=0.05,
)


@dataclass
class Effects:
    """A service that counts its effects by the step key the runtime hands it."""

    calls: Counter[str] = field(default_factory=Counter)
    price: int = 10

    def apply(self, value: int) -> int:
        key = current_step()
        assert key is not None, "local steps in a sidecar carry a step key"
        self.calls[str(key)] += 1
        return value + 1

    async def think(self, value: int) -> int:
        await asyncio.sleep(0.3)
        return value

    def quote(self, _: int) -> int:
        self.calls["quote"] += 1
        return self.price


def make_app(effects: Effects, *, changed: bool = False) -> ac.App:
    @ac.choreography("relay3", roles=(A, B, C))
    async def relay3(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        at_b = await ch.comm(A, B, x)
        at_b = await ch.locally(B, effects.apply, at_b)
        if changed:  # a deployment that changed the code while sessions ran
            at_b = await ch.locally(B, lambda v: v * 100, at_b)
        at_c = await ch.comm(B, C, at_b)
        at_c = await ch.locally(C, effects.apply, at_c)
        return await ch.comm(C, A, at_c)

    @ac.choreography("quote", roles=(A, B))
    async def quote(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        at_b = await ch.comm(A, B, x)
        price = await ch.locally(B, effects.quote, at_b)
        if changed:
            price = await ch.locally(B, lambda p: p * 2, price)
        sent = await ch.comm(B, A, price)
        sent = await ch.locally(A, effects.think, sent)
        again = await ch.comm(A, B, sent)  # B waits here: a good moment to stop it
        return await ch.comm(B, A, again)

    return ac.App(relay3, quote)


async def test_lossy_network_every_session_completes_exactly_once() -> None:
    effects = Effects()
    plan = FaultPlan(drop=0.2, duplicate=0.1, delay=(0.0, 0.002), reorder=True, seed=42)
    async with cluster(make_app(effects), "abc", config=FT, plan=plan) as c:
        results = await asyncio.gather(*(c["a"].run("relay3", i, timeout=60) for i in range(200)))
        assert results == [i + 2 for i in range(200)]
        assert len(effects.calls) == 400 and set(effects.calls.values()) == {1}, "each step ran exactly once"
        for role in "abc":
            for record in await c.stores[role].list_sessions(limit=1000):
                assert (await c[role].wait(record.session_id, 30)).status == SessionStatus.COMPLETED
        for role in "abc":  # the relays record the last acknowledgements (some are lost, and retried)

            async def acked(role: str = role) -> bool:
                return (await c.stores[role].counts()).outbox_unacked == 0

            await eventually(acked, 10, f"every envelope of {role} acknowledged")
        assert c.network.stats.dropped > 0 and c.network.stats.duplicated > 0


async def test_restart_delivers_what_the_outbox_holds() -> None:
    effects = Effects()
    async with cluster(make_app(effects), "abc", config=FT) as c:
        c.network.partition("b", "c")
        sids = [await c["a"].start_session("relay3", [i]) for i in range(20)]
        await asyncio.sleep(0.3)  # b has applied its step and written its sends to the outbox
        await c.stop("b")  # b goes down with every session unfinished
        c.network.heal()
        await c.start("b")  # replay: nothing runs twice, outbox rows are delivered now
        records = [await c["a"].wait(s, 30) for s in sids]
        assert [r.status for r in records] == [SessionStatus.COMPLETED] * 20
        assert [c["a"].result_of(r) for r in records] == [i + 2 for i in range(20)]
        at_b = [await c["b"].wait(s, 5) for s in sids]  # the outcome reaches b after a ends
        # b's part ended before it stopped (its sends were durable in the outbox); after the
        # restart the relay delivered those rows, and nothing ran twice.
        assert all(r is not None and r.status == SessionStatus.COMPLETED for r in at_b)
        assert set(effects.calls.values()) == {1} and len(effects.calls) == 40


async def test_parked_session_resumes_when_the_envelope_arrives() -> None:
    effects = Effects()
    async with cluster(make_app(effects), "abc", config=FT) as c:
        c.network.partition("b", "c")
        sid = await c["a"].start_session("relay3", [1])
        for _ in range(100):
            record = await c["a"].get(sid)
            if record is not None and record.status == SessionStatus.PARKED:
                break
            await asyncio.sleep(0.05)
        assert record is not None and record.status == SessionStatus.PARKED
        c.network.heal()
        done = await c["a"].wait(sid, 30)
        assert done.status == SessionStatus.COMPLETED and c["a"].result_of(done) == 3
        assert done.attempts >= 1


async def _wait_for_outbox(c: Cluster, role: str, sid: str) -> None:
    for _ in range(200):
        if await c.stores[role].outbox_load(sid):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{role} never wrote its send for {sid}")


async def test_changed_choreography_is_reported_as_diverged() -> None:
    effects = Effects()
    async with cluster(make_app(effects), "ab", config=FT) as c:
        sid = await c["a"].start_session("quote", [5])
        await _wait_for_outbox(c, "b", sid)
        c.network.partition("a", "b")
        await c.stop("b")  # b stops while it waits for a's second message
        c.app = make_app(effects, changed=True)  # b restarts with different code, same version
        c.network.heal()
        await c.start("b")
        record = await wait_status(c["b"], sid, SessionStatus.DIVERGED)
        assert "diverged at step 2" in (record.error or ""), record.error
        assert "send(b->a#1/value)" in (record.error or "") and "local(" in (record.error or "")
        listed = await c.stores["b"].list_sessions(SessionStatus.DIVERGED)
        assert [r.session_id for r in listed] == [sid]
        # Every participant is told, and shows the session as needing an operator.
        at_a = await wait_status(c["a"], sid, SessionStatus.DIVERGED)
        assert at_a.failure is not None and ac.Failure.decode(at_a.failure).role == "b"
        # The operator deploys the fixed code (the old one) and resumes it: it completes.
        await c.stop("b")
        c.app = make_app(effects)
        await c.start("b")
        done = await c["a"].wait(sid, 10)
        assert done.status == SessionStatus.COMPLETED and c["a"].result_of(done) == 10
        assert (await c["b"].wait(sid, 10)).status == SessionStatus.COMPLETED


async def test_a_diverged_session_is_cancelled_by_an_operator_everywhere() -> None:
    effects = Effects()
    async with cluster(make_app(effects), "ab", config=FT) as c:
        sid = await c["a"].start_session("quote", [5])
        await _wait_for_outbox(c, "b", sid)
        c.network.partition("a", "b")
        await c.stop("b")
        c.app = make_app(effects, changed=True)
        c.network.heal()
        await c.start("b")
        await wait_status(c["a"], sid, SessionStatus.DIVERGED)
        await c["a"].cancel(sid)
        assert (await c["a"].wait(sid, 10)).status == SessionStatus.FAILED  # nothing had committed
        at_b = await c["b"].wait(sid, 10)
        assert at_b.status == SessionStatus.FAILED and "cancelled by an operator" in (at_b.error or "")


async def test_fewer_steps_than_the_journal_is_a_divergence_too() -> None:
    effects = Effects()
    async with cluster(make_app(effects, changed=True), "ab", config=FT) as c:
        sid = await c["a"].start_session("quote", [5])
        await _wait_for_outbox(c, "b", sid)  # b journaled quote, the changed step, its send
        c.network.partition("a", "b")
        await c.stop("b")
        c.app = make_app(effects)  # the new code has one step fewer before the send
        c.network.heal()
        await c.start("b")
        record = await wait_status(c["b"], sid, SessionStatus.DIVERGED)
        assert "diverged at step 2" in (record.error or "")


async def _quote_then_restart(policy: ReplayPolicy) -> tuple[int, Counter[str]]:
    effects = Effects()
    config = EngineConfig(**{**FT.__dict__, "replay_policy": policy})
    async with cluster(make_app(effects), "ab", config=config) as c:
        sid = await c["a"].start_session("quote", [0])
        await _wait_for_outbox(c, "b", sid)  # b sent its price (durable) and waits for a
        c.network.partition("a", "b")
        await c.stop("b")
        effects.price = 99  # the external read changed while b was down
        c.network.heal()
        await c.start("b")
        record = await c["a"].wait(sid, 30)
        assert record.status == SessionStatus.COMPLETED
        return c["a"].result_of(record), effects.calls


async def test_journal_policy_returns_recorded_local_results() -> None:
    result, calls = await _quote_then_restart(ReplayPolicy.JOURNAL)
    assert result == 10 and calls["quote"] == 1


async def test_rerun_policy_runs_local_steps_again_like_the_original() -> None:
    result, calls = await _quote_then_restart(ReplayPolicy.RERUN)
    # The price was re-read on replay, but the send was already durable: the delivered
    # value is the old one. The Java original behaves this way; the re-run is the cost.
    assert result == 10 and calls["quote"] == 2


async def test_envelopes_of_ended_sessions_are_acknowledged_and_ignored() -> None:
    effects = Effects()
    async with cluster(make_app(effects), "abc", config=FT) as c:
        assert await c["a"].run("relay3", 7, timeout=10) == 9
        record = (await c.stores["b"].list_sessions())[0]
        await c["b"].wait(record.session_id, 5)
        before = c["b"].metrics.ignored.get()
        from accompanist.envelope import Envelope

        late = Envelope(record.session_id, "relay3", 1, "a", "b", 1, "value", ac.PayloadCodec().encode(7))
        await c["b"].handle(late)  # returns normally: acknowledged
        assert c["b"].metrics.ignored.get() == before + 1
        assert (await c["b"].get(record.session_id)).status == SessionStatus.COMPLETED  # type: ignore[union-attr]


async def test_random_restarts_of_every_role() -> None:
    effects = Effects()
    rng = random.Random(9)
    async with cluster(make_app(effects), "abc", config=FT) as c:
        sids = []
        for wave in range(6):
            sids += [await c["a"].start_session("relay3", [wave * 100 + i]) for i in range(15)]
            await asyncio.sleep(rng.uniform(0.0, 0.05))
            victim = rng.choice("bc")
            await c.stop(victim)
            await asyncio.sleep(rng.uniform(0.0, 0.05))
            await c.start(victim)
        records = [await c["a"].wait(s, 60) for s in sids]
        assert all(r.status == SessionStatus.COMPLETED for r in records)
        assert all(v == 1 for v in effects.calls.values())


async def test_retention_keeps_a_long_running_store_bounded() -> None:
    effects = Effects()
    config = EngineConfig(**{**FT.__dict__, "retention": 0.0, "prune_interval": 0.2})
    async with cluster(make_app(effects), "abc", config=config) as c:
        for wave in range(5):  # a soak: 3000 sessions in waves, pruning as it goes
            results = await asyncio.gather(*(c["a"].run("relay3", i, timeout=60) for i in range(600)))
            assert results == [i + 2 for i in range(600)], f"wave {wave}"
        for role in "abc":  # the last outcomes and acknowledgements arrive, then a pruning pass

            async def pruned(role: str = role) -> bool:
                counts = await c.stores[role].counts()
                return (counts.inbox, counts.outbox, counts.journal) == (0, 0, 0)

            await eventually(pruned, 10, f"{role}'s rows of ended sessions pruned")
            assert (await c.stores[role].counts()).sessions == 3000, "ended sessions stay as tombstones"


async def test_a_restarted_peer_says_hello_and_retries_resume_at_once() -> None:
    effects = Effects()
    slow_retries = EngineConfig(**{**FT.__dict__, "retry_min": 20.0, "retry_max": 60.0, "relay_interval": 30.0})
    async with cluster(make_app(effects), "abc", config=slow_retries) as c:
        await c.stop("b")  # b is down: a's first delivery fails and backs off for ~10-20 s
        sid = await c["a"].start_session("relay3", [1])
        for _ in range(100):
            if c["a"].metrics.retries.get() >= 1:
                break
            await asyncio.sleep(0.02)
        assert c["a"].metrics.retries.get() >= 1
        loop = asyncio.get_running_loop()
        began = loop.time()
        await c.start("b")  # b announces itself; a's relay forgets its backoff towards b
        record = await c["a"].wait(sid, 10)
        assert record.status == SessionStatus.COMPLETED
        assert loop.time() - began < 5, "delivery resumed at b's hello, not after the backoff"
