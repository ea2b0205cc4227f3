"""GroupCommitter on its own, with a fake transaction whose timing the tests control."""

from __future__ import annotations

import asyncio
import time

import pytest

from accompanist.errors import ConfigError, StoreError
from accompanist.store.base import JournalEntry, WriteBatch
from accompanist.store.group_commit import GroupCommitter


def batch(i: int) -> WriteBatch:
    return WriteBatch(journal=[JournalEntry(session_id=f"s{i}", step=0, kind="k", name="n")])


class FakeDb:
    """Records each transaction's batches; a transaction takes ``latency`` seconds."""

    def __init__(self, latency: float = 0.005) -> None:
        self.latency = latency
        self.transactions: list[list[WriteBatch]] = []
        self.fail_next: Exception | None = None

    async def apply(self, batches: list[WriteBatch]) -> None:
        exc, self.fail_next = self.fail_next, None  # decided when the transaction starts
        await asyncio.sleep(self.latency)
        if exc is not None:
            raise exc
        self.transactions.append(list(batches))


async def test_single_commit_does_not_wait_the_delay() -> None:
    db = FakeDb(latency=0)
    gc = GroupCommitter(db.apply, max_delay=0.5)
    for i in range(5):  # sequential, no load: never waits for company
        t0 = time.perf_counter()
        await gc.commit(batch(i))
        assert time.perf_counter() - t0 < 0.1
    await gc.close()
    assert gc.stats.transactions == 5


async def test_concurrent_commits_share_transactions() -> None:
    db = FakeDb()
    gc = GroupCommitter(db.apply)
    await asyncio.gather(*(gc.commit(batch(i)) for i in range(100)))
    await gc.close()
    assert sum(len(t) for t in db.transactions) == 100
    assert len(db.transactions) <= 3
    assert gc.stats.batches == 100 and gc.stats.batches_per_transaction > 30


async def test_batches_arriving_during_a_flush_wait_for_company() -> None:
    db = FakeDb(latency=0.01)
    gc = GroupCommitter(db.apply, max_delay=0.02)

    async def trickle(i: int) -> None:
        await asyncio.sleep(i * 0.002)  # one new commit every 2 ms
        await gc.commit(batch(i))

    await asyncio.gather(*(trickle(i) for i in range(40)))
    await gc.close()
    assert len(db.transactions) < 20


async def test_max_batch_caps_a_transaction() -> None:
    db = FakeDb()
    gc = GroupCommitter(db.apply, max_batch=7)
    await asyncio.gather(*(gc.commit(batch(i)) for i in range(50)))
    await gc.close()
    assert max(len(t) for t in db.transactions) == 7
    assert gc.stats.largest_group == 7


async def test_off_means_one_transaction_per_commit() -> None:
    db = FakeDb(latency=0)
    gc = GroupCommitter(db.apply, max_delay=0, max_batch=1)
    await asyncio.gather(*(gc.commit(batch(i)) for i in range(20)))
    await gc.close()
    assert gc.stats.transactions == gc.stats.batches == 20


async def test_order_of_batches_is_kept() -> None:
    db = FakeDb()
    gc = GroupCommitter(db.apply)
    await asyncio.gather(*(gc.commit(batch(i)) for i in range(30)))
    await gc.close()
    flat = [b.journal[0].session_id for t in db.transactions for b in t]
    assert flat == [f"s{i}" for i in range(30)]


async def test_a_failed_transaction_fails_every_caller_in_it() -> None:
    db = FakeDb()
    gc = GroupCommitter(db.apply)
    first = asyncio.ensure_future(gc.commit(batch(0)))
    await asyncio.sleep(0.001)  # the writer takes batch 0 alone
    db.fail_next = RuntimeError("boom")
    rest = [asyncio.ensure_future(gc.commit(batch(i))) for i in range(1, 10)]
    assert (await asyncio.gather(first)) == [None]
    results = await asyncio.gather(*rest, return_exceptions=True)
    assert all(isinstance(r, StoreError) and "boom" in str(r) for r in results)
    assert len({id(r) for r in results}) == 1  # the same exception for all
    await gc.commit(batch(99))  # the writer goes on
    await gc.close()
    assert gc.stats.failed_transactions == 1


async def test_store_errors_pass_through_unwrapped() -> None:
    db = FakeDb()
    gc = GroupCommitter(db.apply)
    db.fail_next = StoreError("db down")
    with pytest.raises(StoreError, match="^db down$"):
        await gc.commit(batch(0))
    await gc.close()


async def test_close_drains_then_refuses() -> None:
    db = FakeDb()
    gc = GroupCommitter(db.apply)
    pending = [asyncio.ensure_future(gc.commit(batch(i))) for i in range(10)]
    await asyncio.sleep(0)
    await gc.close()
    await asyncio.gather(*pending)
    assert sum(len(t) for t in db.transactions) == 10
    with pytest.raises(StoreError, match="closed"):
        await gc.commit(batch(11))
    await gc.close()


async def test_run_exclusive_runs_between_transactions() -> None:
    db = FakeDb()
    gc = GroupCommitter(db.apply)
    seen: list[int] = []

    async def job() -> int:
        seen.append(len(db.transactions))
        return 42

    commits = [asyncio.ensure_future(gc.commit(batch(i))) for i in range(5)]
    assert await gc.run_exclusive(job) == 42
    await asyncio.gather(*commits)

    async def bad() -> None:
        raise ValueError("nope")

    with pytest.raises(ValueError, match="nope"):
        await gc.run_exclusive(bad)
    await gc.close()
    assert gc.stats.jobs == 2


async def test_cancelled_caller_does_not_break_the_writer() -> None:
    db = FakeDb(latency=0.02)
    gc = GroupCommitter(db.apply)
    first = asyncio.ensure_future(gc.commit(batch(0)))
    await asyncio.sleep(0.005)
    second = asyncio.ensure_future(gc.commit(batch(1)))
    await asyncio.sleep(0)
    second.cancel()
    await first
    await gc.commit(batch(2))
    await gc.close()
    assert sum(len(t) for t in db.transactions) == 3  # a queued batch is still written


@pytest.mark.parametrize(("delay", "size"), [(-1.0, 1), (0.0, 0)])
def test_bad_settings(delay: float, size: int) -> None:
    with pytest.raises(ConfigError):
        GroupCommitter(FakeDb().apply, max_delay=delay, max_batch=size)
