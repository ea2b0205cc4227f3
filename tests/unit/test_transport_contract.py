"""The transport contract, run against every transport: memory, TCP and NATS JetStream.

What the engine relies on, whichever way envelopes travel: an envelope sent is handed to the
receiver's handler once, signed with the sender's key and checked against the receiver's ring;
``wait=True`` returns only once the envelope is safe (in the receiver's inbox, or in the
broker); what the receiver refuses for good is counted and never comes back, what it refuses
for now is not lost; frames over the size limit fail at the sender; a closed transport sends
nothing more. Behaviour of one transport alone (TCP's backoff, the memory network's fault
plans, JetStream's redelivery after a crash) is tested in that transport's own module.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator

import pytest
from tests.support.meshes import KINDS, Inbox, Mesh, env, make_mesh, until

from accompanist.envelope import Envelope
from accompanist.errors import EnvelopeRejectedError, FrameError, TransportError

K1 = b"1" * 32
K2 = b"2" * 32


@pytest.fixture(params=KINDS)
async def mesh(request: pytest.FixtureRequest) -> AsyncIterator[Mesh]:
    made = make_mesh(request.param, request)
    yield made
    await made.close()


async def test_an_envelope_sent_and_awaited_reaches_the_handler_signed(mesh: Mesh) -> None:
    inbox = Inbox()
    b = await mesh.transport("b", inbox, keys={"k1": K1})
    a = await mesh.transport("a", keys={"k1": K1})
    await a.send(env())
    await inbox.wait_for(1)
    assert [(e.key, e.auth, e.payload, e.headers) for e in inbox.got] == [
        (env().key, "k1", env().payload, env().headers)
    ]
    assert (a.stats.sent, a.stats.acked, b.stats.received) == (1, 1, 1)
    assert not a.stats.rejected and not b.stats.rejected


async def test_an_envelope_sent_without_waiting_is_delivered(mesh: Mesh) -> None:
    inbox = Inbox()
    await mesh.transport("b", inbox)
    a = await mesh.transport("a")
    await a.send(env(), wait=False)
    await inbox.wait_for(1)
    assert a.stats.acked == 0


async def test_post_ends_as_an_awaited_send_would(mesh: Mesh) -> None:
    inbox = Inbox()
    await mesh.transport("b", inbox)
    a = await mesh.transport("a")
    answers = [a.post(env(seq)) for seq in range(1, 21)]
    assert await asyncio.gather(*answers) == [None] * 20
    await inbox.wait_for(20)
    assert sorted(e.seq for e in inbox.got) == list(range(1, 21))
    await a.close()
    with pytest.raises(TransportError, match="closed"):
        await a.post(env(21))


async def test_both_directions_at_once(mesh: Mesh) -> None:
    got_a, got_b = Inbox(), Inbox()
    a = await mesh.transport("a", got_a)
    b = await mesh.transport("b", got_b)
    await asyncio.gather(a.send(env(src="a", dst="b")), b.send(env(src="b", dst="a")))
    await got_a.wait_for(1)
    await got_b.wait_for(1)
    assert [e.src for e in got_a.got] == ["b"] and [e.src for e in got_b.got] == ["a"]


async def test_concurrent_sends_are_each_handled_once_and_side_by_side(mesh: Mesh) -> None:
    together = asyncio.Event()

    async def work(_: Envelope) -> None:
        # The first calls wait (5 s at most) for a second one to run beside them: a transport
        # that handled one envelope at a time would never get there.
        if inbox.active >= 2:
            together.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await together.wait()
        together.set()

    inbox = Inbox(work)
    await mesh.transport("b", inbox)
    a = await mesh.transport("a")
    await asyncio.gather(*(a.send(env(seq)) for seq in range(1, 201)))
    await inbox.wait_for(200)
    counts = collections.Counter(e.seq for e in inbox.got)
    assert set(counts) == set(range(1, 201)) and set(counts.values()) == {1}
    assert inbox.max_active > 1  # one slow handler call does not hold up the others


async def _refused(mesh: Mesh, sender_keys: dict[str, bytes] | None, reason: str) -> None:
    """A frame the receiver (ring {k1: K1}) must refuse with ``reason``: counted, never handled,
    never redelivered; the receiver keeps serving well-signed senders."""
    inbox = Inbox()
    b = await mesh.transport("b", inbox, keys={"k1": K1})
    intruder = await mesh.transport("a", keys=sender_keys)
    if mesh.answers_refusals:
        with pytest.raises(TransportError, match=reason):
            await intruder.send(env(), timeout=5)
    else:
        await intruder.send(env())  # the broker took it; the receiver refuses it
    await until(lambda: b.stats.rejected[reason] == 1)
    friend = await mesh.transport("c", keys={"k1": K1})
    await friend.send(env(2, src="c"))
    await inbox.wait_for(1)
    await asyncio.sleep(mesh.redelivery_window)
    assert [e.src for e in inbox.got] == ["c"]
    assert b.stats.rejected[reason] == 1  # refused once: not delivered again and again


async def test_a_frame_signed_with_the_wrong_key_is_refused_and_counted(mesh: Mesh) -> None:
    await _refused(mesh, {"k1": K2}, "bad-mac")


async def test_an_unsigned_frame_is_refused_by_a_keyed_receiver(mesh: Mesh) -> None:
    await _refused(mesh, None, "unsigned")


async def test_a_key_still_in_the_ring_is_accepted_while_keys_rotate(mesh: Mesh) -> None:
    inbox = Inbox()
    await mesh.transport("b", inbox, keys={"k1": K1, "k2": K2}, current_key_id="k2")
    old = await mesh.transport("a", keys={"k1": K1})  # has not rotated yet
    new = await mesh.transport("c", keys={"k1": K1, "k2": K2}, current_key_id="k2")
    await old.send(env(1))
    await new.send(env(2, src="c"))
    await inbox.wait_for(2)
    assert sorted((e.seq, e.auth) for e in inbox.got) == [(1, "k1"), (2, "k2")]


async def test_a_refusal_for_good_is_counted_and_never_delivered_again(mesh: Mesh) -> None:
    calls: list[int] = []

    async def refuse(e: Envelope) -> None:
        calls.append(e.seq)
        raise EnvelopeRejectedError("no choreography 'order' v1 here", code="unknown", permanent=True)

    b = await mesh.transport("b", refuse)
    a = await mesh.transport("a")
    if mesh.answers_refusals:
        with pytest.raises(EnvelopeRejectedError, match="no choreography 'order' v1 here") as caught:
            await a.send(env())
        assert caught.value.permanent and caught.value.code == "unknown"
    else:
        await a.send(env())
    await until(lambda: b.stats.rejected["handler"] == 1)
    await asyncio.sleep(mesh.redelivery_window)
    assert calls == [1]


async def test_a_refusal_for_now_does_not_lose_the_envelope(mesh: Mesh) -> None:
    """The store is failing for a moment: the envelope is accepted once it is back (over TCP
    the sender's relay retries; through a broker the broker redelivers)."""
    failing = True

    async def store(e: Envelope) -> None:
        if failing:
            raise EnvelopeRejectedError("the store is failing", code="store-unavailable", permanent=False)

    inbox = Inbox(store)
    b = await mesh.transport("b", inbox)
    a = await mesh.transport("a")
    if mesh.answers_refusals:
        with pytest.raises(EnvelopeRejectedError) as caught:
            await a.send(env())
        assert not caught.value.permanent
    else:
        await a.send(env())
        await until(lambda: b.stats.rejected["handler"] >= 1)
    failing = False
    if mesh.answers_refusals:
        await a.send(env())  # what the relay does
    await inbox.wait_for(1)
    assert [e.seq for e in inbox.got] == [1]


async def test_a_frame_over_the_size_limit_fails_at_the_sender(mesh: Mesh) -> None:
    inbox = Inbox()
    b = await mesh.transport("b", inbox, max_frame=1024)
    a = await mesh.transport("a", max_frame=1024)
    with pytest.raises(FrameError, match="oversized"):
        await a.send(env(payload=b"x" * 2048))
    await a.send(env(2, payload=b"x" * 512))  # the transport still works
    await inbox.wait_for(1)
    assert [e.seq for e in inbox.got] == [2] and b.stats.received == 1


async def test_a_closed_transport_sends_nothing_more(mesh: Mesh) -> None:
    await mesh.transport("b")
    a = await mesh.transport("a")
    await a.close()
    with pytest.raises(TransportError, match="closed"):
        await a.send(env())
    await a.close()  # closing twice is harmless
