"""Property: any sequence of batches leaves MemoryStore and SQLiteStore reading the same."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accompanist.envelope import Envelope
from accompanist.errors import StoreError
from accompanist.store.base import JournalEntry, SessionRecord, SessionStatus, Store, TxRecord, WriteBatch
from accompanist.store.memory import MemoryStore
from accompanist.store.sqlite import SQLiteStore

sids = st.sampled_from(["s1", "s2", "s3"])
roles = st.sampled_from(["a", "b"])
seqs = st.integers(-3, 3)
times = st.sampled_from([1.0, 2.0, 3.0])

envelopes = st.builds(
    Envelope,
    session_id=sids,
    choreography=st.just("c"),
    version=st.just(1),
    src=roles,
    dst=roles,
    seq=seqs,
    kind=st.just("value"),
    payload=st.binary(max_size=4),
    headers=st.dictionaries(st.sampled_from(["traceparent", "x"]), st.text(max_size=3), max_size=2),
)
sessions = st.builds(
    SessionRecord,
    session_id=sids,
    choreography=st.just("c"),
    version=st.just(1),
    role=st.just("a"),
    status=st.sampled_from([s.value for s in SessionStatus]),
    result=st.none() | st.binary(max_size=3),
    created_at=times,
    updated_at=times,
    failure=st.none() | st.binary(max_size=3),
    seed=st.binary(max_size=16),
    state=st.none() | st.binary(max_size=3),
)
journal = st.builds(JournalEntry, session_id=sids, step=st.integers(0, 3), kind=st.just("k"), name=st.text(max_size=3))
txlog = st.builds(
    TxRecord,
    session_id=sids,
    key=st.sampled_from(["k1", "k2", "k3"]),
    name=st.just("t"),
    step=st.integers(0, 3),
    status=st.sampled_from(["committed", "uncertain", "compensated"]),
    args=st.none() | st.binary(max_size=3),
    clock=st.integers(-(2**63), 2**63 - 1),
)
batches = st.builds(
    WriteBatch,
    sessions=st.lists(sessions, max_size=2),
    inbox=st.lists(envelopes, max_size=3),
    outbox=st.lists(envelopes, max_size=3),
    acks=st.lists(st.tuples(sids, roles, seqs), max_size=2),
    journal=st.lists(journal, max_size=2),
    txlog=st.lists(txlog, max_size=2),
)
prunes = st.tuples(times, st.none() | times)
steps = st.lists(st.one_of(batches, prunes), min_size=1, max_size=8)


async def snapshot(store: Store) -> list[object]:
    out: list[object] = [await store.counts(), await store.list_sessions(), await store.nonterminal_sessions()]
    out.append(await store.outbox_pending())
    for sid in ("s1", "s2", "s3"):
        out += [await store.get_session(sid), await store.inbox_load(sid), await store.outbox_load(sid)]
        out += [await store.journal_load(sid), await store.txlog_load(sid)]
    return out


async def run(store: Store, program: list[WriteBatch | tuple[float, float | None]]) -> list[object]:
    await store.open()
    try:
        results: list[object] = []
        for step in program:
            if isinstance(step, WriteBatch):
                try:
                    await store.commit(step)
                    results.append("ok")
                except StoreError as exc:
                    results.append(f"error: {str(exc).split(': invalid write batch', 1)[-1]}")
            else:
                results.append(await store.prune(*step))
        return results + await snapshot(store)
    finally:
        await store.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_memory_and_sqlite_agree(program: list[WriteBatch | tuple[float, float | None]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        memory = asyncio.run(run(MemoryStore("a"), program))
        sqlite = asyncio.run(run(SQLiteStore(Path(tmp) / "a.db", "a", synchronous="OFF"), program))
    assert memory == sqlite
