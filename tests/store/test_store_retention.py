"""Retention (``Store.prune``), run against MemoryStore, SQLiteStore and PostgresStore alike.

Pruning removes ended sessions' rows, but never anything a peer may still need: a session
with an unacknowledged outbox row keeps every row, however old.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from accompanist.envelope import CONTROL_SEQ, EnvelopeKind
from accompanist.store.base import SessionStatus, Store, StoreCounts, WriteBatch
from accompanist.store.sql_statements import Statements
from accompanist.store.sqlite import SQLiteStore
from tests.store.conftest import Backend
from tests.store.rows import env, full_batch, journal, session, tx

FAILURE_SEQ = CONTROL_SEQ[EnvelopeKind.FAILURE]


async def test_prune_deletes_only_old_terminal_sessions(store: Store) -> None:
    statuses = {
        "old-done": SessionStatus.COMPLETED,
        "old-run": SessionStatus.RUNNING,
        "old-diverged": SessionStatus.DIVERGED,
        "new-done": SessionStatus.FAILED,
    }
    updated = {"old-done": 10.0, "old-run": 10.0, "old-diverged": 10.0, "new-done": 1000.0}
    for sid, status in statuses.items():
        batch = full_batch(sid)
        batch.sessions = [session(sid, status, updated_at=updated[sid])]
        if sid != "old-run":
            batch.acks = [(sid, "pay", 1)]  # the peer got everything
        await store.commit(batch)
    assert await store.prune(before=500.0) == 4  # inbox, outbox, journal and txlog rows of old-done
    assert await store.get_session("old-done") is not None  # the tombstone stays
    assert await store.inbox_load("old-done") == []
    assert await store.txlog_load("old-done") == []
    for sid in ("old-run", "old-diverged", "new-done"):  # a diverged session waits for an operator
        assert len(await store.inbox_load(sid)) == len(await store.outbox_load(sid)) == 1
        assert len(await store.journal_load(sid)) == len(await store.txlog_load(sid)) == 1
    assert await store.prune(before=500.0, tombstones_before=100.0) == 1
    assert await store.get_session("old-done") is None
    assert await store.get_session("old-run") is not None
    assert await store.get_session("old-diverged") is not None
    assert await store.prune(before=500.0, tombstones_before=100.0) == 0
    # Tombstones cut later than ``before`` take the session's other rows with them.
    assert await store.prune(before=0.0, tombstones_before=2000.0) == 5
    assert await store.counts() == StoreCounts(2, 2, 2, 1, 2, 2)


async def snapshot(store: Store, sid: str) -> list[object]:
    return [
        await store.get_session(sid),
        await store.inbox_load(sid),
        await store.outbox_load(sid),
        await store.journal_load(sid),
        await store.txlog_load(sid),
    ]


async def test_unacknowledged_outbox_row_keeps_the_whole_session(store: Store) -> None:
    # Both ended long ago; "waiting" still owes its peer a failure envelope.
    for sid in ("waiting", "delivered"):
        batch = full_batch(sid)
        batch.sessions = [session(sid, SessionStatus.COMPENSATED, created_at=0.0, updated_at=0.0)]
        batch.outbox.append(env(sid, dst="cli", seq=FAILURE_SEQ, kind=EnvelopeKind.FAILURE, payload=b"why"))
        batch.journal.append(journal(sid, step=1))
        batch.txlog.append(tx(sid, name="charge", status="compensated"))
        batch.acks = [(sid, "pay", 1)] + ([(sid, "cli", FAILURE_SEQ)] if sid == "delivered" else [])
        await store.commit(batch)
    assert [r.acked for r in await store.outbox_load("waiting")] == [True, False]
    before = await snapshot(store, "waiting")

    # One row unacknowledged is enough: not its inbox, acked outbox row, journal, txlog, nor tombstone.
    assert await store.prune(before=time.time(), tombstones_before=time.time()) == 8  # all of "delivered"
    assert await snapshot(store, "waiting") == before
    assert await store.get_session("delivered") is None
    assert await store.counts() == StoreCounts(1, 1, 2, 1, 2, 2)
    assert [e.seq for e in await store.outbox_pending()] == [FAILURE_SEQ]
    assert await store.prune(before=time.time(), tombstones_before=time.time()) == 0

    # Once the peer acknowledges it, the next prune removes the session like any other.
    await store.commit(WriteBatch(acks=[("waiting", "cli", FAILURE_SEQ)]))
    assert await store.prune(before=time.time()) == 7  # its rows; the tombstone stays
    assert await store.get_session("waiting") == before[0]
    assert await store.prune(before=time.time(), tombstones_before=time.time()) == 1
    assert await store.counts() == StoreCounts(0, 0, 0, 0, 0, 0)


async def test_unacknowledged_rows_of_other_sessions_do_not_hold_a_session(store: Store) -> None:
    await store.commit(full_batch("running"))  # unacked, but not this session's
    done = full_batch("done")
    done.sessions = [session("done", SessionStatus.CANCELLED, updated_at=1.0)]
    done.outbox = [env("done", dst="pay", seq=1)]
    done.acks = [("done", "pay", 1), ("done", "cli", 1)]  # an ack for a row it never had changes nothing
    await store.commit(done)
    assert await store.prune(before=2.0, tombstones_before=2.0) == 5
    assert await store.counts() == StoreCounts(1, 1, 1, 1, 1, 1)


async def test_prune_soak_keeps_row_counts_bounded(backend: Backend) -> None:
    store = backend.make(synchronous="OFF") if backend.name == "sqlite" else backend.make()
    await store.open()
    try:
        now = time.time()
        total, rounds = 5000, 5
        per_round = total // rounds
        for r in range(rounds):
            batches = []
            for i in range(r * per_round, (r + 1) * per_round):
                sid = f"soak-{i:05d}"
                # Every tenth session is still running; the rest finished long ago and their
                # peers acknowledged everything.
                running = i % 10 == 0
                status = SessionStatus.RUNNING if running else SessionStatus.COMPLETED
                b = full_batch(sid)
                b.sessions = [session(sid, status, created_at=now - 7200, updated_at=now - 3600)]
                b.outbox.append(env(sid, seq=2))
                b.journal.append(journal(sid, step=1))
                if not running:
                    b.acks = [(sid, "pay", 1), (sid, "pay", 2)]
                batches.append(b)
            await asyncio.gather(*(store.commit(b) for b in batches))
            await store.prune(before=now - 60, tombstones_before=now - 60 if r % 2 else None)
            counts = await store.counts()
            running_now = (r + 1) * per_round // 10
            assert counts.inbox == counts.txlog == running_now
            assert counts.outbox == counts.journal == 2 * running_now
            assert counts.outbox_unacked == 2 * running_now
            assert counts.sessions <= (r + 1) * per_round
            if r % 2:
                assert counts.sessions == running_now
        for i in range(0, total, 10):
            sid = f"soak-{i:05d}"
            assert len(await store.outbox_load(sid)) == 2 and len(await store.journal_load(sid)) == 2
        assert len(await store.nonterminal_sessions()) == total // 10
    finally:
        await store.close()


async def test_sqlite_prune_probes_the_outbox_by_session(tmp_path: Path) -> None:
    # Without statistics SQLite would probe through acc_outbox_acked, scanning every
    # unacknowledged row once per prunable session: quadratic in a large store.
    path = tmp_path / "wh.db"
    store = SQLiteStore(path, "wh")
    await store.open()
    await store.close()
    q = Statements.build(lambda name: name, lambda sql: sql)
    conn = sqlite3.connect(path)
    try:
        for sql in (*q.prune_children, q.prune_sessions):
            plan = [str(r[3]) for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", (0.0,))]
            probe = [step for step in plan if step.startswith("SEARCH pending")]
            assert probe == ["SEARCH pending USING COVERING INDEX acc_outbox_session (session_id=? AND acked=?)"], plan
    finally:
        conn.close()
