"""Failures are the same structured record in every interpreter; step indices agree; the
code walk finds transactions however they are reached."""

from __future__ import annotations

import functools
from typing import Any

import pytest

import accompanist as ac
from accompanist.language.reach import reach

A, B, C = ac.roles("a", "b", "c")


def make(seen: list[tuple[str, int]]) -> ac.Choreography:
    async def undo(ctx: ac.TxContext, value: int, result: int) -> None:
        seen.append(("undo", ctx.step))

    @ac.transaction(compensate=undo, name="book")
    async def book(ctx: ac.TxContext, value: int) -> int:
        seen.append(("book", ctx.step))
        return value

    @ac.transaction(compensate=undo, name="charge")
    async def charge(ctx: ac.TxContext, value: int) -> int:
        if value > 10:
            raise ac.Abort(f"{value} is too much")
        return value

    @ac.choreography("steps", roles=(A, B, C))
    async def steps(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        at_b = await ch.comm(A, [B, C], x)  # a: 2 sends; b, c: a receive each
        doubled = await ch.locally(B, lambda v: v * 2, at_b)  # b: step 1
        await ch.transaction(B, book, doubled)  # b: step 2
        at_c = await ch.comm(B, C, doubled)  # b: step 3, c: step 1
        await ch.transaction(C, charge, at_c)  # c: step 2
        return await ch.comm(C, A, at_c)

    return steps


@pytest.mark.parametrize("run", [ac.run_central, ac.testing.run_projected], ids=["central", "projected"])
async def test_steps_and_failures_are_the_same_in_both_interpreters(run: Any) -> None:
    seen: list[tuple[str, int]] = []
    assert await run(make(seen), 2) == 4
    assert seen == [("book", 2)]  # ctx.step counts every step of the role, in both
    seen.clear()
    with pytest.raises(ac.SessionFailedError) as info:
        await run(make(seen), 6)
    err = info.value
    assert err.status == "compensated"
    assert err.role == "c"  # the role that aborted, not the initiator
    assert err.failure == ac.Failure(
        role="c", step=2, transaction="charge", error_type="Abort", message="12 is too much"
    )
    assert seen == [("book", 2), ("undo", 2)]


@pytest.mark.parametrize("run", [ac.run_central, ac.testing.run_projected], ids=["central", "projected"])
async def test_a_failing_local_step_names_its_role_and_step(run: Any) -> None:
    async def undo(ctx: ac.TxContext, value: int, result: int) -> None:
        pass

    @ac.transaction(compensate=undo)
    async def book(ctx: ac.TxContext, value: int) -> int:
        return value

    def boom(v: int) -> int:
        raise ValueError(f"no {v}")

    @ac.choreography("local-fails", roles=(A, B))
    async def local_fails(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        at_b = await ch.comm(A, B, x)
        await ch.transaction(B, book, at_b)
        bad = await ch.locally(B, boom, at_b)
        return await ch.comm(B, A, bad)

    with pytest.raises(ac.SessionFailedError) as info:
        await run(local_fails, 3)
    assert info.value.failure == ac.Failure(role="b", step=2, transaction=None, error_type="ValueError", message="no 3")


def test_failures_encode_and_describe() -> None:
    f = ac.Failure(role="pay", step=4, transaction="charge", error_type="Abort", message="card declined")
    assert ac.Failure.decode(f.encode()) == f
    assert f.describe() == "failed at role 'pay', step 4 (transaction charge): Abort: card declined"
    assert f.to_json()["transaction"] == "charge"
    with pytest.raises(ac.CodecError):
        ac.Failure.decode(b'{"role": 1}')


async def _commit(ctx: ac.TxContext) -> None:
    return None


HIDDEN = ac.Transaction("hidden", _commit)


class Service:
    def __init__(self) -> None:
        self.tx = ac.Transaction("on-an-object", _commit)

    async def book(self, ch: ac.Choreo) -> None:
        await ch.locally(A, str)


def test_the_code_walk_finds_transactions_however_they_are_reached() -> None:
    def factory(tx: ac.Transaction) -> Any:
        async def helper(ch: ac.Choreo, value: ac.Located[int]) -> Any:
            return await ch.transaction(B, tx, value)

        async def body(ch: ac.Choreo, x: ac.Located[int]) -> Any:
            return await helper(ch, x)  # the transaction is a closure of a closure

        return body

    closed = ac.Transaction("closed-over", _commit)
    found = reach(factory(closed))
    assert found.saga and set(found.transactions) == {"closed-over"}

    def with_default(tx: ac.Transaction = HIDDEN) -> None: ...

    assert set(reach(with_default).transactions) == {"hidden"}
    assert set(reach(functools.partial(with_default, ac.Transaction("partial", _commit))).transactions) == {
        "partial",
        "hidden",
    }
    svc = Service()

    async def uses_object(ch: ac.Choreo) -> None:
        await svc.book(ch)

    assert set(reach(uses_object).transactions) == {"on-an-object"}

    async def plain(ch: ac.Choreo, x: ac.Located[int]) -> Any:
        return await ch.comm(A, B, x)

    assert not reach(plain).saga


@pytest.mark.parametrize("run", [ac.run_central, ac.testing.run_projected], ids=["central", "projected"])
async def test_each_run_has_its_own_session_so_keys_never_repeat(run: Any) -> None:
    """A service idempotent by key must never take one run's transaction for another's."""
    keys: list[str] = []

    async def undo(ctx: ac.TxContext, value: int, result: int) -> None:
        pass

    @ac.transaction(compensate=undo, name="charge")
    async def charge(ctx: ac.TxContext, value: int) -> int:
        keys.append(ctx.idempotency_key)
        return value

    @ac.choreography("keys", roles=(A, B))
    async def keyed(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        at_b = await ch.comm(A, B, x)
        await ch.transaction(B, charge, at_b)
        return await ch.comm(B, A, at_b)

    assert [await run(keyed, n) for n in (1, 2)] == [1, 2]
    assert len(keys) == 2 and keys[0] != keys[1], keys
    assert all(k.endswith("/b/charge/0") for k in keys), keys
