"""Saga transactions in the engine: commits, compensations, failure broadcast, agreement."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

import accompanist as ac
from accompanist.engine.config import EngineConfig, Mode
from accompanist.engine.session import DONE_HEADER
from accompanist.store.base import SessionStatus
from tests.engine.harness import cluster, wait_status

A, B, C = ac.roles("a", "b", "c")

FT = EngineConfig(
    mode=Mode.FAULT_TOLERANT, receive_timeout=2, retry_min=0.01, retry_max=0.1, deliver_timeout=0.5, relay_interval=0.05
)
DEFAULT = EngineConfig(receive_timeout=2, retry_max=0.1)


@dataclass
class Service:
    """A service with idempotent commits and compensations, logging what really happened."""

    log: list[str] = field(default_factory=list)
    done: set[str] = field(default_factory=set)
    flaky_compensations: int = 0
    flaky_commits: int = 0
    block_compensation: asyncio.Event | None = None
    blocked: asyncio.Event = field(default_factory=asyncio.Event)

    def once(self, what: str, key: str) -> None:
        if (what, key) not in self.done:  # the idempotency key makes repeats harmless
            self.done.add((what, key))  # type: ignore[arg-type]
            self.log.append(f"{what}:{key}")

    def committed(self, prefix: str = "commit") -> list[str]:
        return [e for e in self.log if e.startswith(prefix)]


def make_app(svc: Service) -> ac.App:
    async def undo(ctx: ac.TxContext, value: int, result: int) -> None:
        if svc.block_compensation is not None and ctx.name == "step2":
            svc.blocked.set()
            await svc.block_compensation.wait()
        if svc.flaky_compensations > 0:
            svc.flaky_compensations -= 1
            raise ConnectionError("service unavailable")
        svc.once("undo", ctx.idempotency_key)

    def tx(name: str) -> ac.Transaction:
        async def commit(ctx: ac.TxContext, value: int) -> int:
            if svc.flaky_commits > 0:
                svc.flaky_commits -= 1
                raise ConnectionError("connection refused")
            if value < 0 and name == "risky":
                raise ac.Abort(f"cannot take {value}")
            svc.once("commit", ctx.idempotency_key)
            return value * 10

        return ac.Transaction(name, commit, undo, retry=ac.Retry(attempts=5, initial=0.01))

    step1, step2, step3, risky = tx("step1"), tx("step2"), tx("step3"), tx("risky")

    @ac.choreography("three-then-risky", roles=(A, B, C))
    async def three_then_risky(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        """B commits three steps and finishes; then C commits a risky step that may abort."""
        at_b = await ch.comm(A, B, x)
        for t in (step1, step2, step3):
            await ch.transaction(B, t, at_b)
        ack = await ch.comm(B, A, at_b)
        at_c = await ch.comm(A, C, ack)
        r = await ch.transaction(C, risky, at_c)
        return await ch.comm(C, A, r)

    @ac.choreography("loop", roles=(A, B))
    async def loop(ch: ac.Choreo, n: ac.Located[int]) -> ac.Located[int]:
        """The same transaction in a loop: each occurrence has its own key."""
        count = await ch.broadcast(A, n)
        at_b = await ch.comm(A, B, n)
        for _ in range(count):
            await ch.transaction(B, step1, at_b)
        return await ch.comm(B, A, at_b)

    @ac.choreography("waits", roles=(A, B))
    async def waits(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        """A commits, then waits a long time for B, which never answers by itself."""
        await ch.transaction(A, step1, x)
        at_b = await ch.comm(A, B, x)
        slow = await ch.locally(B, asyncio.sleep, await ch.locally(B, lambda: 3))
        return await ch.comm(B, A, await ch.locally(B, lambda _s, v: v, slow, at_b))

    return ac.App(three_then_risky, loop, waits)


@pytest.mark.parametrize("config", [DEFAULT, FT], ids=["default", "fault-tolerant"])
async def test_success_completes_everywhere(config: EngineConfig) -> None:
    svc = Service()
    async with cluster(make_app(svc), "abc", config=config) as c:
        assert await c["a"].run("three-then-risky", 4, timeout=10) == 40
        sid = (await c.stores["a"].list_sessions())[0].session_id
        statuses = [(await c[r].wait(sid, 10)).status for r in "abc"]
        assert statuses == [SessionStatus.COMPLETED] * 3
        assert len(svc.committed()) == 4 and svc.committed("undo") == []
        if config.mode is Mode.FAULT_TOLERANT:
            # b's and c's last envelopes to a carried their 'done': no separate one was sent.
            inbox = await c.stores["a"].inbox_load(sid)
            assert [e.kind for e in inbox if e.kind == "done"] == []
            carried = {e.src: e.headers[DONE_HEADER] for e in inbox if DONE_HEADER in e.headers}
            assert carried == {"b": '["a"]', "c": '["a"]'}


@pytest.mark.parametrize("config", [DEFAULT, FT], ids=["default", "fault-tolerant"])
async def test_abort_compensates_in_reverse_even_at_a_finished_role(config: EngineConfig) -> None:
    svc = Service()
    async with cluster(make_app(svc), "abc", config=config) as c:
        with pytest.raises(ac.SessionFailedError) as info:
            await c["a"].run("three-then-risky", -1, timeout=10)
        assert info.value.status == "compensated"
        sid = info.value.session_id
        assert sid is not None
        records = [await c[r].wait(sid, 10) for r in "abc"]
        assert [r.status for r in records] == [SessionStatus.COMPENSATED] * 3
        reasons = {r.error for r in records}
        assert len(reasons) == 1, "every role shows the same failing step and reason"
        (reason,) = reasons
        assert "role 'c'" in (reason or "") and "risky" in (reason or "") and "cannot take -1" in (reason or "")
        # b had finished its part when c aborted: it compensated anyway, last commit first.
        undone = [e.split("/")[2] for e in svc.committed("undo")]
        assert undone == ["step3", "step2", "step1"]
        assert all(not e.endswith("/risky/0") for e in svc.committed("undo")), "risky never committed"


async def test_flaky_compensation_is_retried_until_it_succeeds() -> None:
    svc = Service(flaky_compensations=4)
    async with cluster(make_app(svc), "abc", config=FT) as c:
        with pytest.raises(ac.SessionFailedError):
            await c["a"].run("three-then-risky", -2, timeout=20)
        sid = (await c.stores["b"].list_sessions())[0].session_id
        assert (await c["b"].wait(sid, 20)).status == SessionStatus.COMPENSATED
        assert svc.flaky_compensations == 0 and len(svc.committed("undo")) == 3
        logged = await c.stores["b"].txlog_load(sid)
        assert sorted(t.status for t in logged) == ["compensated"] * 3


async def test_infrastructure_errors_of_a_commit_are_retried() -> None:
    svc = Service(flaky_commits=3)
    async with cluster(make_app(svc), "abc", config=FT) as c:
        assert await c["a"].run("three-then-risky", 2, timeout=10) == 20
        assert len(svc.committed()) == 4


async def test_crash_in_the_middle_of_compensating_resumes_after_restart() -> None:
    svc = Service(block_compensation=asyncio.Event())
    async with cluster(make_app(svc), "abc", config=FT) as c:
        sid = await c["a"].start_session("three-then-risky", [-3])
        await asyncio.wait_for(svc.blocked.wait(), 10)  # b undid step3 and is stuck in step2
        assert [e.split("/")[2] for e in svc.committed("undo")] == ["step3"]
        await c.stop("b")  # b goes down mid-rollback, its session still 'compensating'
        svc.block_compensation.set()
        await c.start("b")
        record = await c["b"].wait(sid, 10)
        assert record.status == SessionStatus.COMPENSATED and record.attempts == 1  # resumed by one replay
        assert [e.split("/")[2] for e in svc.committed("undo")] == ["step3", "step2", "step1"]
        assert (await c["a"].wait(sid, 10)).status == SessionStatus.COMPENSATED


async def test_failure_wakes_a_role_waiting_on_a_receive() -> None:
    svc = Service()
    config = EngineConfig(**{**FT.__dict__, "receive_timeout": 60})
    async with cluster(make_app(svc), "ab", config=config) as c:
        sid = await c["a"].start_session("waits", [1])
        for _ in range(100):
            if svc.committed() and await c["b"].get(sid):
                break
            await asyncio.sleep(0.02)
        loop = asyncio.get_running_loop()
        began = loop.time()
        await c["b"].cancel(sid)  # b is busy in a long local step; a waits for b
        # The cancel goes to a, which decides at once (it is woken from its receive)...
        await wait_status(c["a"], sid, SessionStatus.COMPENSATING, timeout=2)
        assert loop.time() - began < 2, "a was woken by the failure at once, not by b's next step or a timeout"
        # ...but 'compensated' waits until b, after its step, has compensated its part too.
        at_a = await c["a"].wait(sid, 10)
        records = [at_a, await c["b"].wait(sid, 10)]
        assert [r.status for r in records] == [SessionStatus.COMPENSATED] * 2
        assert "cancelled by an operator at role 'b'" in (records[0].error or "")
        assert len(svc.committed("undo")) == 1


async def test_cancel_at_the_initiator_compensates_everywhere() -> None:
    svc = Service()
    config = EngineConfig(**{**FT.__dict__, "receive_timeout": 60})
    async with cluster(make_app(svc), "ab", config=config) as c:
        sid = await c["a"].start_session("waits", [2])
        for _ in range(100):
            if await c["b"].get(sid):
                break
            await asyncio.sleep(0.02)
        await c["a"].cancel(sid)
        assert [(await c[r].wait(sid, 10)).status for r in "ab"] == [SessionStatus.COMPENSATED] * 2
        with pytest.raises(ac.SessionError, match="no session"):
            await c["a"].cancel("no-such-session")


async def test_transactions_in_loops_have_one_key_per_occurrence() -> None:
    svc = Service()
    async with cluster(make_app(svc), "ab", config=FT) as c:
        assert await c["a"].run("loop", 3, timeout=10) == 3
        keys = svc.committed()
        assert [k.rsplit("/", 1)[1] for k in keys] == ["0", "1", "2"]


async def test_central_and_projected_interpreters_compensate_too() -> None:
    svc = Service()
    app = make_app(svc)
    choreo = app.get("three-then-risky")
    assert choreo.saga and not ac.choreography("plain", roles=(A,))(_plain).saga
    assert await ac.run_central(choreo, 3) == 30
    with pytest.raises(ac.SessionFailedError) as info:
        await ac.run_central(choreo, -5)
    assert info.value.status == "compensated" and "cannot take -5" in str(info.value)
    assert [e.split("/")[2] for e in svc.committed("undo")] == ["step3", "step2", "step1"]
    svc.log.clear()
    svc.done.clear()
    with pytest.raises(ac.SessionFailedError) as info:
        await ac.testing.run_projected(choreo, -5)
    assert [e.split("/")[2] for e in svc.committed("undo")] == ["step3", "step2", "step1"]


async def _plain(ch: ac.Choreo) -> None:
    return None


async def test_a_commit_that_ran_out_of_retries_is_compensated_too() -> None:
    applied: dict[str, str] = {}

    async def undo(ctx: ac.TxContext, value: int, result: object) -> None:
        assert result is None, "an uncertain commit has no result"
        applied[ctx.idempotency_key] = "undone"

    @ac.transaction(compensate=undo, retry=ac.Retry(attempts=2, initial=0.01))
    async def reserve(ctx: ac.TxContext, value: int) -> int:
        applied[ctx.idempotency_key] = "reserved"  # the service applied it...
        raise ConnectionError("...but the answer never came back")

    @ac.choreography("uncertain", roles=(A, B))
    async def uncertain(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        r = await ch.transaction(B, reserve, await ch.comm(A, B, x))
        return await ch.comm(B, A, r)

    for config in (DEFAULT, FT):
        applied.clear()
        async with cluster(ac.App(uncertain), "ab", config=config) as c:
            with pytest.raises(ac.SessionFailedError) as info:
                await c["a"].run("uncertain", 1, timeout=10)
            assert info.value.status == "compensated" and "gave up after 2 attempts" in str(info.value)
            assert sid_state(applied) == ["undone"], "the possibly-applied reservation was undone"
    applied.clear()
    with pytest.raises(ac.SessionFailedError):
        await ac.run_central(uncertain, 1)
    assert sid_state(applied) == ["undone"]


def sid_state(applied: dict[str, str]) -> list[str]:
    return sorted(applied.values())
