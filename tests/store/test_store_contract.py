"""The ``Store`` contract, run against MemoryStore, SQLiteStore and PostgresStore alike."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from accompanist.envelope import CONTROL_SEQ, EnvelopeKind
from accompanist.errors import StoreError, StoreInputError
from accompanist.store.base import (
    TERMINAL_STATUSES,
    OutboxRow,
    SessionStatus,
    Store,
    StoreCounts,
    WriteBatch,
)
from tests.store.conftest import Backend
from tests.store.rows import env, full_batch, journal, session, tx


async def test_not_open_and_closed_raise(backend: Backend) -> None:
    s: Store = backend.make()
    with pytest.raises(StoreError, match="not open"):
        await s.get_session("x")
    await s.open()
    await s.open()  # idempotent
    await s.close()
    with pytest.raises(StoreError):
        await s.commit(full_batch("s1"))
    with pytest.raises(StoreError):
        await s.counts()
    await s.close()  # idempotent


async def test_empty_store(store: Store) -> None:
    assert await store.get_session("nope") is None
    assert await store.list_sessions() == []
    assert await store.nonterminal_sessions() == []
    assert await store.inbox_load("nope") == []
    assert await store.outbox_load("nope") == []
    assert await store.outbox_pending() == []
    assert await store.journal_load("nope") == []
    assert await store.txlog_load("nope") == []
    assert await store.counts() == StoreCounts(0, 0, 0, 0, 0, 0)
    await store.commit(WriteBatch())  # an empty batch is a no-op


async def test_session_upsert_replaces_whole_row(store: Store) -> None:
    first = session(args=b"\x00args", created_at=1.0, updated_at=1.0)
    await store.commit(WriteBatch(sessions=[first]))
    assert await store.get_session("s1") == first
    second = session(
        status=SessionStatus.COMPLETED,
        args=b"",
        result=b"\xffres",
        error="bad thing \u00e9",
        attempts=3,
        created_at=1.0,
        updated_at=2.5,
        version=2,
        choreography="order2",
        failure=b'{"role":"pay","step":3}',
        seed=bytes(range(16)),
        state=b'{"acks":[]}',
    )
    await store.commit(WriteBatch(sessions=[second]))
    assert await store.get_session("s1") == second
    third = session(created_at=1.0, updated_at=3.0, failure=b"", state=b"\x00")  # empty is not None
    await store.commit(WriteBatch(sessions=[third]))
    got = await store.get_session("s1")
    assert got == third and got.seed == b"" and got.failure == b"" and got.state == b"\x00"
    assert (await store.counts()).sessions == 1


async def test_engine_fields_default_and_round_trip_through_every_read(store: Store) -> None:
    plain = session("plain")
    rich = session("rich", created_at=200.0, failure=b"{}", seed=b"\xff" * 16, state=b"[1]")
    await store.commit(WriteBatch(sessions=[plain, rich]))
    got = await store.get_session("plain")
    assert got is not None and (got.failure, got.seed, got.state) == (None, b"", None)
    assert await store.list_sessions() == [rich, plain]
    assert await store.list_sessions(SessionStatus.RUNNING, limit=1) == [rich]
    assert await store.nonterminal_sessions() == [plain, rich]


async def test_records_are_copied(store: Store) -> None:
    rec = session()
    await store.commit(WriteBatch(sessions=[rec]))
    rec.status = SessionStatus.FAILED  # the caller mutates its object afterwards
    got = await store.get_session("s1")
    assert got is not None and got.status == SessionStatus.RUNNING
    assert got.seed == b""
    got.status = SessionStatus.CANCELLED
    again = await store.get_session("s1")
    assert again is not None and again.status == SessionStatus.RUNNING


async def test_list_sessions_newest_first_with_filter_and_limit(store: Store) -> None:
    recs = [
        session("a", SessionStatus.RUNNING, created_at=1.0),
        session("b", SessionStatus.COMPLETED, created_at=3.0),
        session("c", SessionStatus.RUNNING, created_at=2.0),
        session("d", SessionStatus.PARKED, created_at=2.0),
    ]
    await store.commit(WriteBatch(sessions=recs))
    assert [r.session_id for r in await store.list_sessions()] == ["b", "d", "c", "a"]
    assert [r.session_id for r in await store.list_sessions(limit=2)] == ["b", "d"]
    assert [r.session_id for r in await store.list_sessions(SessionStatus.RUNNING)] == ["c", "a"]
    assert [r.session_id for r in await store.list_sessions("completed")] == ["b"]
    assert await store.list_sessions("cancelled") == []
    assert await store.list_sessions(limit=0) == []


async def test_nonterminal_sessions(store: Store) -> None:
    recs = [session(f"s-{st.value}", st, created_at=float(i)) for i, st in enumerate(SessionStatus)]
    await store.commit(WriteBatch(sessions=recs))
    got = await store.nonterminal_sessions()
    assert [r.status for r in got] == [st for st in SessionStatus if st not in TERMINAL_STATUSES]
    # A diverged session waits for an operator (cancel or resume): it is replayed, not ended.
    assert SessionStatus.DIVERGED in {r.status for r in got}
    assert {
        SessionStatus.COMPLETED,
        SessionStatus.FAILED,
        SessionStatus.COMPENSATED,
        SessionStatus.CANCELLED,
    } == TERMINAL_STATUSES
    assert {r.session_id for r in got} == {f"s-{st.value}" for st in SessionStatus if st not in TERMINAL_STATUSES}


async def test_inbox_ignores_duplicates_and_orders_by_src_seq(store: Store) -> None:
    failure = env("s1", "pay", "wh", CONTROL_SEQ[EnvelopeKind.FAILURE], kind=EnvelopeKind.FAILURE, payload=b"why")
    rows = [env("s1", "pay", "wh", 2), env("s1", "cli", "wh", 1), env("s1", "pay", "wh", 1), failure]
    await store.commit(WriteBatch(inbox=rows))
    dup = env("s1", "pay", "wh", 2, payload=b"different")  # same key: ignored, first write wins
    await store.commit(WriteBatch(inbox=[dup, env("s2", "pay", "wh", 1)]))
    got = await store.inbox_load("s1")
    assert [(e.src, e.seq) for e in got] == [("cli", 1), ("pay", -1), ("pay", 1), ("pay", 2)]
    assert got[3].payload == b"p"
    assert got[1] == failure
    assert (await store.counts()).inbox == 5


async def test_envelope_fields_round_trip(store: Store) -> None:
    e = env(
        "0190f3a2-7b1c-7d2e-9f00-abcdef012345",
        "wh",
        "pay",
        7,
        version=12,
        kind=EnvelopeKind.SELECT,
        payload=bytes(range(256)),
        headers={"traceparent": "00-abc-def-01", "tracestate": "k=v,\u00e9=\u2603"},
        auth="key-1",
    )
    await store.commit(WriteBatch(inbox=[e], outbox=[e]))
    assert await store.inbox_load(e.session_id) == [e]
    assert await store.outbox_load(e.session_id) == [OutboxRow(e, False)]


async def test_outbox_duplicates_acks_and_pending_order(store: Store) -> None:
    await store.commit(WriteBatch(outbox=[env("s2", seq=1), env("s1", seq=1)]))
    await store.commit(WriteBatch(outbox=[env("s1", seq=2), env("s1", dst="cli", seq=1)]))
    await store.commit(WriteBatch(outbox=[env("s2", seq=1, payload=b"dup")]))  # ignored
    pending = await store.outbox_pending()
    assert [(e.session_id, e.dst, e.seq) for e in pending] == [
        ("s2", "pay", 1),
        ("s1", "pay", 1),
        ("s1", "pay", 2),
        ("s1", "cli", 1),
    ]
    assert pending[0].payload == b"p"
    assert [(e.session_id, e.seq) for e in await store.outbox_pending(limit=2)] == [("s2", 1), ("s1", 1)]

    await store.commit(WriteBatch(acks=[("s1", "pay", 1), ("s1", "pay", 99), ("nope", "pay", 1)]))
    rows = await store.outbox_load("s1")
    assert [(r.envelope.dst, r.envelope.seq, r.acked) for r in rows] == [
        ("pay", 1, True),
        ("pay", 2, False),
        ("cli", 1, False),
    ]
    assert [(e.session_id, e.dst, e.seq) for e in await store.outbox_pending()] == [
        ("s2", "pay", 1),
        ("s1", "pay", 2),
        ("s1", "cli", 1),
    ]
    await store.commit(WriteBatch(acks=[("s1", "pay", 1)]))  # acking twice is harmless
    await store.commit(WriteBatch(outbox=[env("s1", seq=1)]))  # re-sending an acked row keeps it acked
    assert (await store.outbox_load("s1"))[0].acked
    counts = await store.counts()
    assert (counts.outbox, counts.outbox_unacked) == (4, 3)


async def test_ack_in_same_batch_as_insert(store: Store) -> None:
    await store.commit(WriteBatch(outbox=[env(seq=1)], acks=[("s1", "pay", 1)]))
    assert await store.outbox_load("s1") == [OutboxRow(env(seq=1), True)]
    assert await store.outbox_pending() == []


async def test_journal_ignores_duplicates_in_step_order(store: Store) -> None:
    await store.commit(WriteBatch(journal=[journal(step=2, value=None, kind="send", name="comm"), journal(step=0)]))
    await store.commit(WriteBatch(journal=[journal(step=0, value=b"other"), journal(step=1, value=b"")]))
    got = await store.journal_load("s1")
    assert [(j.step, j.value) for j in got] == [(0, b"v"), (1, b""), (2, None)]
    assert got[2] == journal(step=2, value=None, kind="send", name="comm")
    assert await store.journal_load("s2") == []


async def test_txlog_upserts_by_key_in_step_order(store: Store) -> None:
    await store.commit(WriteBatch(txlog=[tx(name="charge", step=5), tx(name="reserve", step=1, result=b"r")]))
    await store.commit(WriteBatch(txlog=[tx(name="reserve", step=1, status="compensated", updated_at=9.0)]))
    got = await store.txlog_load("s1")
    assert [(t.name, t.status, t.result) for t in got] == [
        ("reserve", "compensated", None),
        ("charge", "committed", None),
    ]
    assert got[0].updated_at == 9.0
    assert (got[0].args, got[0].clock) == (None, 0)
    assert (await store.counts()).txlog == 2


async def test_txlog_keeps_args_clock_and_every_status(store: Store) -> None:
    rows = [
        tx(name="reserve", step=1, args=b"\x00args", clock=7, result=b"r"),
        tx(name="charge", step=2, status="uncertain", args=b"", clock=2**63 - 1),
        tx(name="ship", step=3, status="compensated", clock=-1),
    ]
    await store.commit(WriteBatch(txlog=rows))
    assert await store.txlog_load("s1") == rows
    later = tx(name="charge", step=2, status="compensated", args=b"", clock=2**63 - 1, updated_at=5.0)
    await store.commit(WriteBatch(txlog=[later]))  # an uncertain commit, compensated
    assert (await store.txlog_load("s1"))[1] == later


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (WriteBatch(sessions=[session(status="exploded")]), "status"),
        (WriteBatch(sessions=[session("")]), "session_id"),
        (WriteBatch(inbox=[env(src="w\x00h")]), "src"),
        (WriteBatch(outbox=[env(seq=2**63)]), "seq"),
        (WriteBatch(outbox=[env(headers={"k": "\ud800"})]), "headers"),
        (WriteBatch(journal=[journal(value="text")]), "value"),  # type: ignore[arg-type]
        (WriteBatch(txlog=[tx(step="1")]), "step"),  # type: ignore[arg-type]
        (WriteBatch(acks=[("s1", "pay")]), "acks"),  # type: ignore[list-item]
        (WriteBatch(sessions=[session(created_at=float("nan"))]), "created_at"),
        (WriteBatch(sessions=[session(failure="{}")]), r"sessions\[0\]\.failure"),
        (WriteBatch(sessions=[session(seed=None)]), r"sessions\[0\]\.seed"),
        (WriteBatch(sessions=[session(state=bytearray(b"{}"))]), r"sessions\[0\]\.state"),
        (WriteBatch(txlog=[tx(status="done")]), r"txlog\[0\]\.status must be one of"),
        (WriteBatch(txlog=[tx(status="")]), r"txlog\[0\]\.status"),
        (WriteBatch(txlog=[tx(args="x")]), r"txlog\[0\]\.args"),
        (WriteBatch(txlog=[tx(clock=2**63)]), r"txlog\[0\]\.clock must fit in 64 bits"),
        (WriteBatch(txlog=[tx(clock=-(2**63) - 1)]), r"txlog\[0\]\.clock"),
        (WriteBatch(txlog=[tx(clock=1.0)]), r"txlog\[0\]\.clock must be an int"),
        (WriteBatch(txlog=[tx(clock=True)]), r"txlog\[0\]\.clock"),
    ],
)
async def test_invalid_batch_is_rejected_and_writes_nothing(store: Store, bad: WriteBatch, field: str) -> None:
    bad.extend(full_batch("s9"))  # valid rows in the same batch must not land either
    with pytest.raises(StoreInputError, match=field):
        await store.commit(bad)
    assert await store.counts() == StoreCounts(0, 0, 0, 0, 0, 0)
    await store.commit(full_batch("s1"))  # the store is still usable
    assert (await store.counts()).sessions == 1


async def test_not_a_batch_is_an_input_error(store: Store) -> None:
    with pytest.raises(StoreInputError, match="needs a WriteBatch"):
        await store.commit([session()])  # type: ignore[arg-type]
    assert await store.counts() == StoreCounts(0, 0, 0, 0, 0, 0)


async def test_invalid_batch_fails_only_its_caller_in_a_group(backend: Backend) -> None:
    store = backend.make(group_delay=0.05)
    await store.open()
    try:
        bad = full_batch("bad")
        bad.txlog.append(tx("bad", name="charge", status="maybe"))
        bad.acks.append(("s0", "pay", 1))
        await store.commit(full_batch("s0"))
        results = await asyncio.gather(
            *(store.commit(full_batch(f"s{i}")) for i in range(1, 6)), store.commit(bad), return_exceptions=True
        )
        assert results[:-1] == [None] * 5  # the group committed without the bad batch
        assert isinstance(results[-1], StoreInputError) and "txlog[1].status" in str(results[-1])
        assert store.commit_stats.failed_transactions == 0
        assert await store.get_session("bad") is None
        assert await store.txlog_load("bad") == []
        assert [r.acked for r in await store.outbox_load("s0")] == [False]
        assert await store.counts() == StoreCounts(6, 6, 6, 6, 6, 6)
    finally:
        await store.close()


async def test_failed_transaction_leaves_nothing(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    await store.commit(WriteBatch(outbox=[env("s0", seq=1)]))
    calls = 0

    def boom(*args: Any) -> None:  # raises when called, so it fails sync and async writers alike
        nonlocal calls
        calls += 1
        raise RuntimeError("disk on fire")

    # The journal is written after sessions, inbox, outbox and acks: all of them must roll back.
    monkeypatch.setattr(store, "_write_journal", boom)
    batch = full_batch("s1")
    batch.acks.append(("s0", "pay", 1))
    with pytest.raises(StoreError, match="disk on fire"):
        await store.commit(batch)
    assert calls >= 1
    assert await store.counts() == StoreCounts(0, 0, 1, 1, 0, 0)
    assert await store.get_session("s1") is None
    assert await store.outbox_pending() == [env("s0", seq=1)]
    monkeypatch.undo()
    await store.commit(full_batch("s1"))
    assert await store.counts() == StoreCounts(1, 1, 2, 2, 1, 1)


async def test_row_rejected_by_the_database_rolls_back_the_group(backend: Backend) -> None:
    if backend.poison is None:
        pytest.skip("no database to reject rows")
    store = backend.make(group_delay=0.05)
    await store.open()
    try:
        await backend.poison()
        await store.commit(full_batch("s0"))
        bad = full_batch("bad")
        bad.journal.append(journal("bad", step=1, name="poison"))
        bad.acks.append(("s0", "pay", 1))
        results = await asyncio.gather(
            *(store.commit(full_batch(f"s{i}")) for i in range(1, 6)), store.commit(bad), return_exceptions=True
        )
        assert isinstance(results[-1], StoreError) and "poisoned row" in str(results[-1])
        assert store.commit_stats.failed_transactions >= 1
        assert await store.get_session("bad") is None
        assert [r.acked for r in await store.outbox_load("s0")] == [False]
        # Batches that failed only because they shared the transaction can be retried.
        for i, r in enumerate(results[:-1], start=1):
            if isinstance(r, StoreError):
                await store.commit(full_batch(f"s{i}"))
        assert await store.counts() == StoreCounts(6, 6, 6, 6, 6, 6)
    finally:
        await store.close()


async def test_failed_group_fails_every_caller(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    if not backend.grouped:
        pytest.skip("no group transactions in this store")
    store = backend.make(group_delay=0.05)
    await store.open()
    try:
        gate = asyncio.Event()
        original = store._write_journal

        async def slow_then_fail(*args: Any) -> None:
            await gate.wait()
            raise RuntimeError("injected")

        monkeypatch.setattr(store, "_write_journal", slow_then_fail)
        first = asyncio.ensure_future(store.commit(full_batch("s0")))  # holds the writer
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(store.commit(full_batch(f"s{i}"))) for i in range(1, 20)]
        await asyncio.sleep(0.01)
        gate.set()
        results = await asyncio.gather(first, *rest, return_exceptions=True)
        assert all(isinstance(r, StoreError) for r in results)
        assert store.commit_stats.largest_group > 1  # they really shared a transaction
        assert await store.counts() == StoreCounts(0, 0, 0, 0, 0, 0)
        monkeypatch.setattr(store, "_write_journal", original)
        await store.commit(full_batch("s1"))
        assert (await store.counts()).sessions == 1
    finally:
        await store.close()


async def test_concurrent_commits_all_land_in_fewer_transactions(backend: Backend) -> None:
    store = backend.make()
    await store.open()
    try:
        before = store.commit_stats

        async def one_session(i: int) -> None:
            await store.commit(WriteBatch(sessions=[session(f"s{i:03d}")], outbox=[env(f"s{i:03d}")]))
            await store.commit(WriteBatch(journal=[journal(f"s{i:03d}", step=1)], acks=[(f"s{i:03d}", "pay", 1)]))

        await asyncio.gather(*(one_session(i) for i in range(200)))
        counts = await store.counts()
        assert counts == StoreCounts(sessions=200, inbox=0, outbox=200, outbox_unacked=0, journal=200, txlog=0)
        stats = store.commit_stats
        batches = stats.batches - before.batches
        transactions = stats.transactions - before.transactions
        assert batches == 400
        if backend.grouped:
            assert transactions < batches / 4, stats
    finally:
        await store.close()


async def test_group_commit_off_is_one_transaction_per_batch(backend: Backend) -> None:
    if not backend.grouped:
        pytest.skip("no group transactions in this store")
    store = backend.make(group_delay=0, group_max_batch=1)
    await store.open()
    try:
        await asyncio.gather(*(store.commit(full_batch(f"s{i}")) for i in range(30)))
        assert store.commit_stats.transactions == store.commit_stats.batches == 30
        assert (await store.counts()).sessions == 30
    finally:
        await store.close()


async def test_durable_across_close_and_reopen(backend: Backend) -> None:
    if not backend.durable:
        pytest.skip("not a durable store")
    store = backend.make()
    await store.open()
    pending = [asyncio.ensure_future(store.commit(full_batch(f"s{i}"))) for i in range(50)]
    await asyncio.sleep(0)
    await store.close()  # close flushes what was queued
    await asyncio.gather(*pending)
    again = backend.make()
    await again.open()
    try:
        assert (await again.counts()) == StoreCounts(50, 50, 50, 50, 50, 50)
        assert await again.get_session("s7") == session("s7")
        assert await again.journal_load("s7") == [journal("s7")]
        assert await again.txlog_load("s7") == [tx("s7")]
    finally:
        await again.close()


async def test_pending_rows_per_destination_and_acks_by_key(store: Store) -> None:
    rows = [env(f"s{i}", src="wh", dst=("pay" if i % 3 else "dead"), seq=1) for i in range(30)]
    await store.commit(WriteBatch(sessions=[session(f"s{i}") for i in range(30)], outbox=rows))
    to_pay = await store.outbox_pending(limit=100, dst="pay")
    assert [e.session_id for e in to_pay] == [f"s{i}" for i in range(30) if i % 3]  # oldest first
    assert len(await store.outbox_pending(limit=5, dst="dead")) == 5
    assert len(await store.outbox_pending(limit=100)) == 30
    await store.commit(WriteBatch(acks=[("s1", "pay", 1), ("s1", "dead", 1), ("s0", "pay", 1)]))
    assert [e.session_id for e in await store.outbox_pending(limit=2, dst="pay")] == ["s2", "s4"]
    assert len(await store.outbox_pending(limit=100, dst="dead")) == 10  # s0 goes to 'dead', not 'pay'
    assert await store.outbox_pending(limit=100, dst="nobody") == []
