"""The edges where the saga promises used to break (each case of the saga-edges issue), on the
session engine over the in-memory network: one outcome everywhere, each effect once, no
session left waiting."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

import accompanist as ac
from accompanist.engine.config import CompensationOrder, EngineConfig, Mode
from accompanist.store.base import SessionStatus, WriteBatch
from accompanist.store.memory import MemoryStore
from accompanist.transport.memory import FaultPlan
from tests.engine.harness import Cluster, cluster, eventually, wait_status

A, B, C, D = ac.roles("a", "b", "c", "d")
S = SessionStatus

FT = EngineConfig(
    mode=Mode.FAULT_TOLERANT,
    receive_timeout=1.0,
    retry_min=0.01,
    retry_max=0.1,
    deliver_timeout=0.5,
    relay_interval=0.05,
    outcome_query_after=0.2,
)
DEFAULT = EngineConfig(receive_timeout=2, retry_max=0.1, outcome_query_after=0.2)


@dataclass
class Ledger:
    """A service idempotent by key that logs what really happened, in order."""

    log: list[str] = field(default_factory=list)
    raw: Counter[str] = field(default_factory=Counter)
    gate: asyncio.Event | None = None  # holds compensations while set up

    def once(self, what: str, key: str) -> None:
        self.raw[f"{what}:{key}"] += 1
        if f"{what}:{key}" not in self.log:
            self.log.append(f"{what}:{key}")

    def names(self, what: str) -> list[str]:
        return [e.split("/")[2] for e in self.log if e.startswith(what + ":")]

    def tx(self, name: str, *, fail_below: int | None = None) -> ac.Transaction:
        async def commit(ctx: ac.TxContext, value: int) -> int:
            if fail_below is not None and value < fail_below:
                raise ac.Abort(f"{name} refuses {value}")
            self.once("commit", ctx.idempotency_key)
            return value

        async def undo(ctx: ac.TxContext, value: int, result: int) -> None:
            if self.gate is not None:
                await self.gate.wait()
            self.once("undo", ctx.idempotency_key)

        return ac.Transaction(name, commit, undo, retry=ac.Retry(attempts=3, initial=0.01))


async def statuses(c: Cluster, sid: str, roles: str, timeout: float = 15) -> list[str]:
    return [(await c[r].wait(sid, timeout)).status for r in roles]


# -- 1. long sessions replay ------------------------------------------------------------------
@ac.choreography("long", roles=(A, B))
async def long_session(ch: ac.Choreo, n: ac.Located[int]) -> ac.Located[int]:
    count = await ch.broadcast(A, n)
    total = await ch.locally(B, lambda: 0)
    for i in range(count):  # one at a time: never more than one envelope arrives early
        v = await ch.comm(A, B, await ch.locally(A, lambda i=i: i))
        total = await ch.locally(B, lambda t, x: t + x, total, v)
        await ch.comm(B, A, v)
    gate = await ch.locally(B, asyncio.sleep, await ch.locally(B, lambda: 0.3))
    return await ch.comm(B, A, await ch.locally(B, lambda t, _: t, total, gate))


async def test_a_session_longer_than_the_buffer_replays_after_a_restart() -> None:
    config = EngineConfig(**{**FT.__dict__, "buffer_limit": 8})
    async with cluster(ac.App(long_session), "ab", config=config) as c:
        sid = await c["a"].start_session("long", [40])  # 40 messages from a to b, 8 may wait early
        await eventually(lambda: _inbox_len(c, "b", sid, 40), 10, "b received every message")
        await c.stop("b")  # b is in its long local step with 40 envelopes in its inbox
        await c.start("b")  # the replay must not push its history through the early-envelope buffer
        record = await c["a"].wait(sid, 15)
        assert record.status == S.COMPLETED and c["a"].result_of(record) == sum(range(40))
        assert c["b"].metrics.replays.get() == 1  # one replay, not a replay loop


async def _inbox_len(c: Cluster, role: str, sid: str, n: int) -> bool:
    return len(await c.stores[role].inbox_load(sid)) >= n


# -- 2. cancels racing completion ---------------------------------------------------------------
def chain_app(ledger: Ledger) -> ac.App:
    reserve, charge, ship = ledger.tx("reserve"), ledger.tx("charge"), ledger.tx("ship")

    @ac.choreography("chain", roles=(A, B, C))
    async def chain(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        await ch.transaction(A, reserve, x)
        at_b = await ch.comm(A, B, x)
        await ch.transaction(B, charge, at_b)
        at_c = await ch.comm(B, C, at_b)
        await ch.transaction(C, ship, at_c)
        return await ch.comm(C, A, at_c)

    return ac.App(chain)


@pytest.mark.parametrize("config", [DEFAULT, FT], ids=["default", "fault-tolerant"])
async def test_random_cancels_never_leave_roles_disagreeing(config: EngineConfig) -> None:
    ledger = Ledger()
    rng = random.Random(7)
    async with cluster(chain_app(ledger), "abc", config=config, plan=FaultPlan(delay=(0, 0.003), seed=3)) as c:
        sids = [await c["a"].start_session("chain", [i]) for i in range(120)]
        lost = 0

        async def cancel_later(sid: str) -> None:
            nonlocal lost
            await asyncio.sleep(rng.uniform(0, 0.03))
            try:
                await c[rng.choice("abc")].cancel(sid)
            except ac.OutcomeDecidedError:
                lost += 1
            except ac.UnknownSessionError:
                pass  # that role has not heard of it yet

        await asyncio.gather(*(cancel_later(s) for s in sids))
        outcomes = Counter()
        for sid in sids:
            seen = await statuses(c, sid, "abc")
            assert len(set(seen)) == 1, (sid, seen)
            outcomes[seen[0]] += 1
            keys = {f"{sid}/{r}/{n}/0" for r, n in (("a", "reserve"), ("b", "charge"), ("c", "ship"))}
            done = {e.split(":", 1)[1] for e in ledger.log if e.startswith("commit:") and e.split(":", 1)[1] in keys}
            undone = {e.split(":", 1)[1] for e in ledger.log if e.startswith("undo:") and e.split(":", 1)[1] in keys}
            if seen[0] == S.COMPLETED:
                assert done == keys and not undone
            else:
                assert undone == done, "everything committed was undone, nothing else"
        assert max(ledger.raw.values()) == 1, "no effect twice"
        assert outcomes[S.COMPLETED] + outcomes[S.COMPENSATED] == 120 and outcomes[S.COMPENSATED] > 0
        assert lost == 0 or outcomes[S.COMPLETED] >= lost


async def test_a_cancel_after_the_outcome_loses_with_409_semantics() -> None:
    ledger = Ledger()
    async with cluster(chain_app(ledger), "abc", config=FT) as c:
        sid = await c["a"].start_session("chain", [1])
        assert (await c["a"].wait(sid, 10)).status == S.COMPLETED
        for role in "abc":
            await c[role].wait(sid, 10)
            with pytest.raises(ac.OutcomeDecidedError) as info:
                await c[role].cancel(sid)
            assert info.value.status == S.COMPLETED


# -- 3. retention keeps what a peer has not acknowledged; waiting roles ask --------------------
async def test_a_peer_down_longer_than_the_retention_still_gets_its_failure() -> None:
    ledger = Ledger()
    config = EngineConfig(**{**FT.__dict__, "retention": 0.0, "prune_interval": 0.05, "receive_timeout": 0.3})
    reserve, charge = ledger.tx("reserve"), ledger.tx("charge", fail_below=0)
    go = asyncio.Event()

    @ac.choreography("late", roles=(A, B, C))
    async def late(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        at_b = await ch.comm(A, B, x)
        await ch.transaction(B, reserve, at_b)  # b commits and finishes its part
        at_c = await ch.comm(A, C, x)
        at_c = await ch.locally(C, lambda v, _: v, at_c, await ch.locally(C, go.wait))
        await ch.transaction(C, charge, at_c)  # then c aborts
        return await ch.comm(C, A, at_c)

    async with cluster(ac.App(late), "abc", config=config) as c:
        sid = await c["a"].start_session("late", [-1])
        await wait_status(c["b"], sid, S.FINISHED)
        await c.stop("b")  # b is down while the saga fails and long past the retention
        go.set()
        await wait_status(c["a"], sid, S.COMPENSATING)
        await asyncio.sleep(1.0)  # many pruning passes
        await c.start("b")
        assert await statuses(c, sid, "abc") == [S.COMPENSATED] * 3
        assert ledger.names("undo") == ["reserve"]


async def test_a_role_waiting_for_the_outcome_asks_the_initiator() -> None:
    ledger = Ledger()
    async with cluster(chain_app(ledger), "abc", config=FT) as c:
        sid = await c["a"].start_session("chain", [2])
        assert (await c["a"].wait(sid, 10)).status == S.COMPLETED
        await eventually(lambda: _finished_or_done(c, sid), 5, "b heard the outcome")
        # Make b forget the outcome it was told: its record is back at 'finished'.
        record = await c.stores["b"].get_session(sid)
        assert record is not None
        await c.stop("b")
        record.status = S.FINISHED
        await c.stores["b"].open()
        await c.stores["b"].commit(WriteBatch(sessions=[record]))
        await c.stores["b"].close()
        await c.start("b")
        assert (await c["b"].wait(sid, 5)).status == S.COMPLETED  # it asked, the initiator answered
        assert c["b"].metrics.queries.get() >= 1


async def _finished_or_done(c: Cluster, sid: str) -> bool:
    record = await c["b"].get(sid)
    return record is not None and record.status == S.COMPLETED


# -- 4. default mode keeps a finished role's commits until the outcome --------------------------
async def test_default_mode_keeps_what_a_finished_role_must_compensate() -> None:
    ledger = Ledger()
    reserve = ledger.tx("reserve")
    charge = ledger.tx("charge", fail_below=0)

    @ac.choreography("slow-failure", roles=(A, B, C))
    async def slow_failure(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        await ch.transaction(B, reserve, await ch.comm(A, B, x))  # b's part ends here
        at_c = await ch.comm(A, C, x)
        await ch.locally(C, asyncio.sleep, await ch.locally(C, lambda: 1.5))  # longer than b's wait used to be
        await ch.transaction(C, charge, at_c)
        return await ch.comm(C, A, at_c)

    config = EngineConfig(receive_timeout=3, outcome_query_after=0.1)
    async with cluster(ac.App(slow_failure), "abc", config=config) as c:
        sid = await c["a"].start_session("slow-failure", [-1])
        await wait_status(c["b"], sid, S.FINISHED)
        assert c["b"].metrics.awaiting_outcome.get() == 1  # kept, and counted
        assert await statuses(c, sid, "abc") == [S.COMPENSATED] * 3
        assert ledger.names("undo") == ["reserve"]
        assert c["b"].metrics.awaiting_outcome.get() == 0


# -- 5. a transaction reached through a closure or an argument ----------------------------------
def closure_app(ledger: Ledger) -> ac.App:
    def make(tx: ac.Transaction, risky: ac.Transaction) -> ac.Choreography:
        async def helper(ch: ac.Choreo, role: ac.Role, t: ac.Transaction, v: ac.Located[int]) -> Any:
            return await ch.transaction(role, t, v)  # the transaction is an argument

        @ac.choreography("closure", roles=(A, B, C))
        async def closure(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
            at_b = await ch.comm(A, B, x)
            await helper(ch, B, tx, at_b)
            at_c = await ch.comm(A, C, x)
            await helper(ch, C, risky, at_c)
            return await ch.comm(C, A, at_c)

        return closure

    return ac.App(make(ledger.tx("hold"), ledger.tx("risky", fail_below=0)))


@pytest.mark.parametrize("config", [DEFAULT, FT], ids=["default", "fault-tolerant"])
async def test_a_transaction_reached_through_a_closure_is_compensated_like_centrally(config: EngineConfig) -> None:
    central, sidecars = Ledger(), Ledger()
    with pytest.raises(ac.SessionFailedError):
        await ac.run_central(closure_app(central).get("closure"), -1)
    assert central.names("undo") == ["hold"]
    async with cluster(closure_app(sidecars), "abc", config=config) as c:
        sid = await c["a"].start_session("closure", [-1])
        assert await statuses(c, sid, "abc") == [S.COMPENSATED] * 3
    assert sidecars.names("undo") == ["hold"]


# -- 6. roles that speak first ------------------------------------------------------------------
def first_app(ledger: Ledger) -> ac.App:
    stock = ledger.tx("stock")

    @ac.choreography("speaks-first", roles=(A, B, C))
    async def speaks_first(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        offer = await ch.locally(B, lambda: 7)  # b begins with a local step and a send
        at_a = await ch.comm(B, A, offer)
        await ch.transaction(C, stock, await ch.locally(C, lambda: 1))  # c only commits
        return await ch.locally(A, lambda o, v: o + v, at_a, x)

    return ac.App(speaks_first)


@pytest.mark.parametrize("config", [DEFAULT, FT], ids=["default", "fault-tolerant"])
async def test_roles_that_speak_first_run_as_in_the_central_interpreter(config: EngineConfig) -> None:
    central, sidecars = Ledger(), Ledger()
    assert await ac.run_central(first_app(central).get("speaks-first"), 3) == 10
    async with cluster(first_app(sidecars), "abc", config=config) as c:
        assert await c["a"].run("speaks-first", 3, timeout=10) == 10
        sid = (await c.stores["a"].list_sessions())[0].session_id
        assert await statuses(c, sid, "abc") == [S.COMPLETED] * 3
    assert sidecars.names("commit") == central.names("commit") == ["stock"]


# -- 9. uuid and random survive a crash before their journal entry is durable ------------------
async def test_uuid_and_random_are_the_same_after_a_crash() -> None:
    drawn: list[tuple[str, str]] = []
    entered = asyncio.Event()
    release = asyncio.Event()

    async def use(key: uuid.UUID, r: float) -> str:
        drawn.append((str(key), repr(r)))  # the service sees the uuid as an idempotency key
        entered.set()
        await release.wait()
        return str(key)

    @ac.choreography("draws", roles=(A, B))
    async def draws(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[str]:
        at_b = await ch.comm(A, B, x)
        key = await ch.uuid(B)
        r = await ch.random(B)
        used = await ch.locally(B, use, key, r)  # not durable yet when b crashes in here
        await ch.locally(B, lambda _: None, at_b)
        return await ch.comm(B, A, used)

    async with cluster(ac.App(draws), "ab", config=FT) as c:
        sid = await c["a"].start_session("draws", [1])
        await asyncio.wait_for(entered.wait(), 5)
        await c.stop("b")
        release.set()
        await c.start("b")
        record = await c["a"].wait(sid, 10)
        assert record.status == S.COMPLETED
        assert len(drawn) == 2 and drawn[0] == drawn[1], "the re-run step saw the same uuid and random"
        assert c["a"].result_of(record) == drawn[0][0]


# -- 10./11. compensated means everyone compensated; global reverse order ----------------------
def order_app(ledger: Ledger) -> ac.App:
    t1, t2, t3 = ledger.tx("t1"), ledger.tx("t2"), ledger.tx("t3")
    fail = ledger.tx("fail", fail_below=0)

    @ac.choreography("ordered", roles=(A, B, C, D))
    async def ordered(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        at_b = await ch.comm(A, B, x)
        await ch.transaction(B, t1, at_b)
        at_c = await ch.comm(B, C, at_b)
        await ch.transaction(C, t2, at_c)
        at_b2 = await ch.comm(C, B, at_c)
        await ch.transaction(B, t3, at_b2)  # after t2, causally: undone before it
        at_d = await ch.comm(B, D, at_b2)
        await ch.transaction(D, fail, at_d)
        return await ch.comm(D, A, at_d)

    return ac.App(ordered)


@pytest.mark.parametrize("config", [DEFAULT, FT], ids=["default", "fault-tolerant"])
async def test_compensations_run_in_global_reverse_causal_order(config: EngineConfig) -> None:
    ledger = Ledger()
    async with cluster(order_app(ledger), "abcd", config=config) as c:
        sid = await c["a"].start_session("ordered", [-1])
        assert await statuses(c, sid, "abcd") == [S.COMPENSATED] * 4
    assert ledger.names("commit") == ["t1", "t2", "t3"]
    assert ledger.names("undo") == ["t3", "t2", "t1"], "an orchestrator's order: last step first, across roles"


async def test_parallel_compensation_is_an_option() -> None:
    ledger = Ledger()
    config = EngineConfig(**{**FT.__dict__, "compensation": CompensationOrder.PARALLEL})
    async with cluster(order_app(ledger), "abcd", config=config) as c:
        sid = await c["a"].start_session("ordered", [-1])
        assert await statuses(c, sid, "abcd") == [S.COMPENSATED] * 4
    assert sorted(ledger.names("undo")) == ["t1", "t2", "t3"]
    undone_at_b = [n for n in ledger.names("undo") if n in ("t1", "t3")]
    assert undone_at_b == ["t3", "t1"], "each role still undoes its own commits last first"


@pytest.mark.parametrize("order", list(CompensationOrder))
async def test_compensated_is_declared_only_when_every_role_compensated(order: CompensationOrder) -> None:
    ledger = Ledger(gate=asyncio.Event())
    config = EngineConfig(**{**FT.__dict__, "compensation": order})
    async with cluster(order_app(ledger), "abcd", config=config) as c:
        sid = await c["a"].start_session("ordered", [-1])
        await wait_status(c["a"], sid, S.COMPENSATING)
        await asyncio.sleep(0.5)  # compensations are held at the service
        assert (await c["a"].get(sid)).status == S.COMPENSATING  # type: ignore[union-attr]
        assert ledger.names("undo") == []
        ledger.gate.set()  # type: ignore[union-attr]
        assert (await c["a"].wait(sid, 10)).status == S.COMPENSATED
        assert sorted(ledger.names("undo")) == ["t1", "t2", "t3"], "every role had compensated before"


# -- 12. one failure, the same at every role ---------------------------------------------------
@pytest.mark.parametrize("config", [DEFAULT, FT], ids=["default", "fault-tolerant"])
async def test_two_concurrent_aborts_end_with_one_failure_everywhere(config: EngineConfig) -> None:
    ledger = Ledger()
    left, right = ledger.tx("left", fail_below=0), ledger.tx("right", fail_below=0)

    @ac.choreography("two-aborts", roles=(A, B, C))
    async def two_aborts(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        at = await ch.comm(A, [B, C], x)
        await ch.transaction(B, left, at)  # both abort at about the same time
        await ch.transaction(C, right, at)
        return await ch.comm(B, A, at)

    async with cluster(ac.App(two_aborts), "abc", config=config) as c:
        for _ in range(5):
            with pytest.raises(ac.SessionFailedError) as info:
                await c["a"].run("two-aborts", -1, timeout=10)
            sid = info.value.session_id
            assert sid is not None
            records = [await c[r].wait(sid, 10) for r in "abc"]
            failures = {r.failure for r in records}
            assert len(failures) == 1 and None not in failures, "one failure, the same bytes everywhere"
            failure = ac.Failure.decode(records[0].failure or b"")
            assert info.value.failure == failure and info.value.role == failure.role in ("b", "c")
            assert failure.transaction in ("left", "right") and failure.error_type == "Abort"


async def test_a_cancel_during_compensation_does_not_overwrite_the_failure() -> None:
    ledger = Ledger(gate=asyncio.Event())
    async with cluster(order_app(ledger), "abcd", config=FT) as c:
        sid = await c["a"].start_session("ordered", [-1])
        before = await wait_status(c["b"], sid, S.COMPENSATING)
        for role in "abcd":
            await c[role].cancel(sid)  # too late to change anything
        ledger.gate.set()  # type: ignore[union-attr]
        records = [await c[r].wait(sid, 10) for r in "abcd"]
        assert {r.failure for r in records} == {before.failure}
        assert ac.Failure.decode(before.failure or b"").transaction == "fail"


# -- 13. two choreographies under one session id ------------------------------------------------
async def test_two_choreographies_under_one_session_id_never_mix() -> None:
    ledger = Ledger()

    @ac.choreography("from-a", roles=(A, B))
    async def from_a(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        return await ch.comm(B, A, await ch.locally(B, lambda v: v + 1, await ch.comm(A, B, x)))

    @ac.choreography("from-c", roles=(C, B))
    async def from_c(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        return await ch.comm(B, C, await ch.locally(B, lambda v: v * 100, await ch.comm(C, B, x)))

    async with cluster(ac.App(from_a, from_c, *chain_app(ledger)), "abc", config=FT) as c:
        await c["a"].start_session("from-a", [1], session_id="order-7")
        assert (await c["a"].wait("order-7", 10)).status == S.COMPLETED
        await c["b"].wait("order-7", 10)
        # The same id at another initiator: b holds a session of another choreography under it.
        await c["c"].start_session("from-c", [1], session_id="order-7")
        record = await c["c"].wait("order-7", 10)
        assert record.status == S.FAILED and "two sessions share one id" in (record.error or "")
        assert c["b"].metrics.rejected.labels(reason="session-conflict").get() >= 1
        at_b = await c["b"].get("order-7")
        assert at_b is not None and at_b.choreography == "from-a" and c["b"].result_of(at_b) is None
        with pytest.raises(ac.SessionConflictError):
            await c["a"].start_session("chain", [1], session_id="order-7")


# -- 14. an envelope that can never be delivered ------------------------------------------------
@pytest.mark.parametrize("config", [DEFAULT, FT], ids=["default", "fault-tolerant"])
async def test_an_oversized_message_fails_its_own_session_at_the_send(config: EngineConfig) -> None:
    ledger = Ledger()
    hold = ledger.tx("hold")

    @ac.choreography("big", roles=(A, B))
    async def big(ch: ac.Choreo, n: ac.Located[int]) -> ac.Located[int]:
        at_b = await ch.comm(A, B, n)
        await ch.transaction(B, hold, at_b)
        blob = await ch.locally(B, lambda k: b"x" * k, at_b)
        got = await ch.comm(B, A, blob)
        return await ch.locally(A, len, got)

    small = EngineConfig(**{**config.__dict__, "max_payload": 64 * 1024})
    async with cluster(ac.App(big), "ab", config=small) as c:
        with pytest.raises(ac.SessionFailedError) as info:
            await c["a"].run("big", 200_000, timeout=10)
        assert info.value.failure is not None and info.value.failure.error_type == "PayloadTooLargeError"
        assert "over the limit" in info.value.failure.message and info.value.role == "b"
        assert ledger.names("undo") == ["hold"]
        results = await asyncio.gather(*(c["a"].run("big", 10, timeout=10) for _ in range(20)))
        assert results == [10] * 20  # nothing stuck behind it
        if config.mode is Mode.FAULT_TOLERANT:  # its acknowledgement marks are written lazily

            async def acked() -> bool:
                return (await c.stores["b"].counts()).outbox_unacked == 0

            await eventually(acked, 5, "b's outbox acknowledged")


async def test_a_refused_envelope_delays_no_other_session_to_that_peer() -> None:
    @ac.choreography("ping", roles=(A, B))
    async def ping(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        return await ch.comm(B, A, await ch.comm(A, B, x))

    @ac.choreography("ping", roles=(A, B), version=2)
    async def ping2(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        return await ch.comm(B, A, await ch.comm(A, B, x))

    stores = {r: MemoryStore(r) for r in "ab"}
    async with cluster(ac.App(ping, ping2), "a", config=FT, stores=stores) as c:
        c.app = ac.App(ping)  # b lacks version 2
        await c.start("b")
        stuck = await c["a"].start_session("ping", [1], version=2)
        await asyncio.sleep(0.3)  # b refuses it (may be deployed later): that envelope alone backs off
        loop = asyncio.get_running_loop()
        began = loop.time()
        runs = (c["a"].run("ping", i, version=1, timeout=5) for i in range(20))
        assert await asyncio.gather(*runs) == list(range(20))
        assert loop.time() - began < 2
        assert (await c["a"].get(stuck)).status in (S.RUNNING, S.PARKED)  # type: ignore[union-attr]
        assert c["b"].metrics.rejected.labels(reason="unknown-choreography").get() >= 1


# -- 15. a stored session of a version this sidecar no longer has -------------------------------
async def test_a_sidecar_starts_with_a_session_of_a_version_it_lacks_and_shows_it_blocked() -> None:
    @ac.choreography("v", roles=(A, B))
    async def v1(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        at_b = await ch.comm(A, B, x)
        at_b = await ch.locally(B, asyncio.sleep, await ch.locally(B, lambda: 0.3), at_b)
        return await ch.comm(B, A, at_b)

    @ac.choreography("other", roles=(A, B))
    async def other(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        return await ch.comm(B, A, await ch.comm(A, B, x))

    async with cluster(ac.App(v1, other), "ab", config=FT) as c:
        sid = await c["a"].start_session("v", [5])
        await wait_status(c["b"], sid, S.RUNNING)
        await asyncio.sleep(0.1)
        await c.stop("b")
        c.app = ac.App(other)  # deployed without version 1 of 'v'
        await c.start("b")  # starts anyway
        assert await c["a"].run("other", 3, timeout=5) == 3  # and serves everything else
        assert sid in c["b"].blocked and "deploy that version" in c["b"].blocked[sid]
        assert c["b"].metrics.blocked.get() == 1
        await c.stop("b")
        c.app = ac.App(v1, other)  # the version is back
        await c.start("b")
        assert (await c["a"].wait(sid, 10)).status == S.COMPLETED
        assert not c["b"].blocked


# -- 8. the store fails: infrastructure never decides -------------------------------------------
class FlakyStore(MemoryStore):
    """A store whose writes and reads fail while ``down`` (a lost connection, a full disk)."""

    down = False

    async def commit(self, batch: Any) -> None:
        if self.down:
            raise ac.StoreError("connection lost")
        await super().commit(batch)

    async def get_session(self, session_id: str) -> Any:
        if self.down:
            raise ac.StoreError("connection lost")
        return await super().get_session(session_id)


async def test_a_store_outage_never_decides_a_saga() -> None:
    ledger = Ledger()
    store = FlakyStore("b")
    async with cluster(chain_app(ledger), "abc", config=FT, stores={"b": store}) as c:
        sids = [await c["a"].start_session("chain", [i]) for i in range(30)]
        await asyncio.sleep(0.01)
        store.down = True
        await asyncio.sleep(1.5)  # longer than the receive timeout: roles park and wait
        assert not c["b"].guard.healthy and c["b"].health()["store"] == "failing"
        store.down = False  # the store is back: the sidecar recovers by itself
        for role in "abc":
            for s in sids:
                assert (await c[role].wait(s, 10)).status == S.COMPLETED
        assert ledger.names("undo") == [] and max(ledger.raw.values()) == 1

        async def healthy() -> bool:  # its next write (here the lazily written outcomes) says so
            return c["b"].guard.healthy

        await eventually(healthy, 5, "b's store health back to ok")


async def test_a_start_while_the_store_fails_is_refused_not_lost() -> None:
    store = FlakyStore("a")
    async with cluster(chain_app(Ledger()), "abc", config=FT, stores={"a": store}) as c:
        store.down = True
        with pytest.raises(ac.StoreError):
            await c["a"].start_session("chain", [1])
        with pytest.raises(ac.StoreError):
            await c["a"].start_session("chain", [1])  # the guard knows: refused before trying
        assert c["a"].health()["store"] == "failing"
        store.down = False
        await asyncio.sleep(1.1)  # a failing store is tried again once a second
        assert await c["a"].run("chain", 1, timeout=10) == 1
        assert c["a"].health()["store"] == "ok"


async def test_a_dead_peers_backlog_does_not_starve_a_healthy_peer() -> None:
    @ac.choreography("to-c", roles=(A, C))
    async def to_c(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        return await ch.comm(C, A, await ch.comm(A, C, x))

    @ac.choreography("to-b", roles=(A, B))
    async def to_b(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        return await ch.comm(B, A, await ch.comm(A, B, x))

    config = EngineConfig(**{**FT.__dict__, "retry_max": 0.05, "relay_interval": 0.02, "max_inflight": 20_000})
    async with cluster(ac.App(to_b, to_c), "abc", config=config) as c:
        await c.stop("b")  # b is down: everything for it piles up in a's outbox
        # More than one whole-outbox scan used to read (10,000 oldest rows).
        await asyncio.gather(*(c["a"].start_session("to-b", [i]) for i in range(10_100)))
        assert (await c.stores["a"].counts()).outbox_unacked >= 10_100
        loop = asyncio.get_running_loop()
        began = loop.time()
        c.network.plan = FaultPlan(drop=0.3, seed=5)  # c's deliveries need the relay's retries
        assert await asyncio.gather(*(c["a"].run("to-c", i, timeout=10) for i in range(20))) == list(range(20))
        assert loop.time() - began < 5, "retries to c waited behind b's backlog"
