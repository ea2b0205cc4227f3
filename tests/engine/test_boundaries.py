"""What enters the engine is checked once, where it enters, so that what it stores needs no
second check at commit time (the engine's batches skip the store's row validation).

Each case would otherwise reach the store inside a group commit and fail it for every session
that shares it, or fail the session's own commit in a loop."""

from __future__ import annotations

import asyncio

import pytest

import accompanist as ac
from accompanist.engine.config import EngineConfig, Mode
from accompanist.envelope import Envelope
from accompanist.errors import EnvelopeRejectedError
from accompanist.store.base import SessionStatus, WriteBatch
from accompanist.store.sqlite import SQLiteStore
from tests.engine.harness import cluster

A, B = ac.roles("a", "b")

FT = EngineConfig(mode=Mode.FAULT_TOLERANT, receive_timeout=2, retry_min=0.01, retry_max=0.1, relay_interval=0.05)


def _raise(message: str) -> None:
    raise ValueError(message + " and \udc80 text")  # a lone surrogate: no codec sends one


@ac.choreography("echo", roles=(A, B))
async def echo(ch: ac.Choreo, value: ac.Located[int]) -> ac.Located[int]:
    return await ch.comm(B, A, await ch.locally(B, lambda v: v + 1, await ch.comm(A, B, value)))


@ac.choreography("shout", roles=(A, B))
async def shout(ch: ac.Choreo, message: ac.Located[str]) -> ac.Located[None]:
    """b fails with an error message made of whatever a sent it."""
    await ch.locally(B, _raise, await ch.comm(A, B, message))
    return await ch.locally(A, lambda: None)


APP = ac.App(echo, shout)


def _envelope(session_id: str = "0190f0f0-0000-7000-8000-000000000001", **fields: object) -> Envelope:
    base: dict[str, object] = {
        "session_id": session_id,
        "choreography": "echo",
        "version": 1,
        "src": "a",
        "dst": "b",
        "seq": 1,
        "kind": "value",
        "payload": b"\x01",
    }
    return Envelope(**{**base, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("envelope", "why"),
    [
        (_envelope("no spaces/allowed"), "invalid session id"),
        (_envelope("x" * 129), "invalid session id"),
        (_envelope(""), "invalid session id"),
        (_envelope(headers={"traceparent": "00-\x00"}), "must not contain NUL"),
        (_envelope(auth="k\x00"), "must not contain NUL"),
        (_envelope(seq=2**63), "must fit in 64 bits"),
    ],
    ids=["slash", "too-long", "empty", "nul-header", "nul-auth", "seq-overflow"],
)
async def test_a_peer_envelope_that_could_not_be_stored_is_refused_for_good_and_nothing_is_stored(
    tmp_path: object, envelope: Envelope, why: str
) -> None:
    async with cluster(APP, ["a", "b"], config=FT) as c:
        with pytest.raises(EnvelopeRejectedError, match=why) as refused:
            await c["b"].handle(envelope)
        assert refused.value.permanent and refused.value.code == "invalid"
        counts = await c.stores["b"].counts()
        assert (counts.sessions, counts.inbox) == (0, 0)
        assert c["b"].metrics.rejected.labels(reason="invalid").get() == 1
        assert await c["a"].run("echo", 1, timeout=10) == 2  # and the role goes on serving


async def test_an_error_message_no_store_could_hold_ends_its_session_like_any_other(tmp_path: object) -> None:
    # NUL and a lone surrogate: SQLite cannot encode the one, PostgreSQL text cannot hold the other.
    stores = {r: SQLiteStore(f"{tmp_path}/{r}.db", r, synchronous="OFF") for r in "ab"}
    async with cluster(APP, ["a", "b"], config=FT, stores=stores) as c:
        sid = await c["a"].start_session("shout", ["bad \x00"])
        at_a = await c["a"].wait(sid, 10)
        at_b = await c["b"].wait(sid, 10)
        for record in (at_a, at_b):
            assert record.status == SessionStatus.FAILED
            assert "ValueError: bad \ufffd and ? text" in (record.error or "")
        stored = await stores["b"].get_session(sid)
        assert stored is not None and stored.error == at_b.error  # what was stored is what was meant


def test_a_transaction_name_no_store_could_hold_is_refused_at_definition() -> None:
    async def commit(ctx: ac.TxContext) -> None:
        return None

    for name in ("bad\x00name", "bad\udc80name", "tab\tname"):
        with pytest.raises(ac.DefinitionError, match="use non-empty printable text"):
            ac.transaction(name=name)(commit)
    with pytest.raises(ac.DefinitionError, match="use non-empty printable text"):
        ac.Transaction("", commit)
    assert ac.transaction(name="réserve stock")(commit).name == "réserve stock"


async def test_batches_from_outside_the_engine_are_still_checked_row_by_row(tmp_path: object) -> None:
    store = SQLiteStore(f"{tmp_path}/s.db", "s", synchronous="OFF")
    await store.open()
    try:
        with pytest.raises(ac.StoreError, match=r"inbox\[0\]\.session_id must not contain NUL"):
            await store.commit(WriteBatch(inbox=[_envelope("a\x00b")]))
        assert (await store.counts()).inbox == 0
    finally:
        await store.close()


async def test_a_store_lookup_answers_on_the_event_loop_and_sees_every_commit(tmp_path: object) -> None:
    store = SQLiteStore(f"{tmp_path}/s.db", "s", synchronous="OFF")
    await store.open()
    try:
        sid = "0190f0f0-0000-7000-8000-000000000002"
        assert await store.get_session(sid) is None
        record = ac.store.SessionRecord(session_id=sid, choreography="echo", version=1, role="s", status="running")
        await store.commit(WriteBatch(sessions=[record]))
        found = await store.get_session(sid)
        assert found is not None and found.status == "running"
        await asyncio.gather(*(store.commit(WriteBatch(sessions=[record])) for _ in range(3)))
        assert (await store.get_session(sid)) == found
    finally:
        await store.close()
