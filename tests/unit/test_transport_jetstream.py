"""JetStreamTransport on a real nats-server: what only a broker does (the shared contract is in
test_transport_contract.py).

Envelopes for a role that is down wait in the broker; an envelope its handler had not accepted
when it stopped comes back at its next start; whatever is published to a role's subject is
checked like any frame from the wire and terminated when it fails; a broker restart is waited
out, and the relay hears of it as it would hear a peer's hello.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from tests.support.meshes import Inbox, env, until
from tests.support.nats_server import NatsServer

from accompanist.envelope import Envelope, EnvelopeKind
from accompanist.errors import ConfigError, FrameError, TransportError
from accompanist.transport.frames import HEADER_SIZE, Frame, FrameType, KeyRing, encode_frame

nats = pytest.importorskip("nats", reason="the jetstream transport needs nats-py (pip install 'accompanist[nats]')")

from accompanist.transport.jetstream import JetStreamTransport  # noqa: E402 - after the skip

K1 = b"1" * 32
Make = Callable[..., Any]


@pytest.fixture
async def make(nats_server: NatsServer) -> AsyncIterator[Make]:
    """Started transports on the session's broker, on a stream of this test's own."""
    stream = f"T{uuid.uuid4().hex[:12]}"
    made: list[JetStreamTransport] = []

    async def _make(role: str, handler: Any = None, url: str | None = None, **kw: Any) -> JetStreamTransport:
        kw.setdefault("ack_wait", 0.5)
        t = JetStreamTransport(role, url or nats_server.url, stream=stream, keys={"k1": K1}, **kw)
        made.append(t)
        await t.start(handler or Inbox())
        return t

    yield _make
    for t in made:
        await t.close()


async def test_envelopes_for_a_role_that_is_down_wait_in_the_broker(make: Make) -> None:
    b = await make("b")
    await b.close()  # b is down
    a = await make("a")
    for seq in range(1, 6):
        await a.send(env(seq))  # answered by the broker: stored
    inbox = Inbox()
    await make("b", inbox)  # b comes back
    await inbox.wait_for(5)
    assert sorted(e.seq for e in inbox.got) == [1, 2, 3, 4, 5]


async def test_an_envelope_not_yet_accepted_when_its_role_stopped_comes_back_at_the_next_start(make: Make) -> None:
    never = asyncio.Event()
    stuck = Inbox(lambda _: never.wait())
    b = await make("b", stuck, ack_wait=60)  # the broker alone would wait a minute to redeliver
    a = await make("a")
    await a.send(env())
    await until(lambda: stuck.active == 1)
    await b.close()  # a crash before the inbox write: no ack
    inbox = Inbox()
    await make("b", inbox, ack_wait=60)
    await inbox.wait_for(1, timeout=15)  # at once, not after ack_wait
    assert [e.seq for e in inbox.got] == [1]


async def test_a_slow_handler_is_not_given_the_envelope_twice(make: Make) -> None:
    async def slow(_: Envelope) -> None:
        await asyncio.sleep(2.5)  # over twice ack_wait: the transport says it is still at it

    inbox = Inbox(slow)
    await make("b", inbox, ack_wait=1.0)
    a = await make("a")
    await a.send(env())
    await inbox.wait_for(1)
    await asyncio.sleep(1.2)
    assert inbox.calls == 1


async def test_whatever_is_published_to_a_subject_is_checked_and_terminated(
    make: Make, nats_server: NatsServer
) -> None:
    inbox = Inbox()
    b = await make("b", inbox)
    ring = KeyRing({"k1": K1})
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        subject = b.layout.subject("b")
        signed_for_c = encode_frame(Frame(FrameType.ENVELOPE, 0, env(dst="c")), ring=ring)[HEADER_SIZE:]
        an_ack = encode_frame(Frame(FrameType.ACK, 0), ring=ring)[HEADER_SIZE:]
        for body in (b"\xc1\xc1 not msgpack", signed_for_c, an_ack):
            await js.publish(subject, body)
        await until(lambda: sum(b.stats.rejected.values()) == 3)
        assert dict(b.stats.rejected) == {"malformed": 1, "wrong-dst": 1, "unexpected": 1}
        await asyncio.sleep(1.5)  # three ack_waits: nothing comes back
        assert sum(b.stats.rejected.values()) == 3 and inbox.got == []
        info = await js.consumer_info(b.layout.stream, b.layout.consumer)
        assert info.num_ack_pending == 0 and info.num_redelivered == 0
    finally:
        await nc.close()


async def test_hello_is_not_published(make: Make, nats_server: NatsServer) -> None:
    inbox = Inbox()
    b = await make("b", inbox)
    await b.close()
    a = await make("a")
    await a.send(Envelope("", "", 0, "a", "b", 0, EnvelopeKind.HELLO))
    nc = await nats.connect(nats_server.url)
    try:
        info = await nc.jetstream().stream_info(a.layout.stream)
        assert info.state.messages == 0  # nothing waits for b: a hello means nothing to a broker
    finally:
        await nc.close()
    assert a.stats.sent == 0


async def test_a_broker_restart_is_waited_out_and_the_relay_told(own_nats: NatsServer, make: Make) -> None:
    inbox = Inbox()
    await make("b", inbox, url=own_nats.url)
    heard: list[Envelope] = []

    async def a_handler(e: Envelope) -> None:
        heard.append(e)

    a = await make("a", a_handler, url=own_nats.url)
    await a.send(env(1))
    await inbox.wait_for(1)
    own_nats.kill()
    with pytest.raises(TransportError, match="may or may not be stored, retry it"):
        await a.send(env(2), timeout=0.5)
    own_nats.start()  # same port, same store
    await until(lambda: bool(heard), timeout=30)
    hellos = [(e.kind, e.src, e.dst) for e in heard]
    assert hellos == [(EnvelopeKind.HELLO, "b", "a")], (hellos, a.stats)  # the relay retries b now
    await a.send(env(2))
    # 1 may come twice: b's ack of it may have died with the broker (the engine deduplicates).
    await until(lambda: {e.seq for e in inbox.got} == {1, 2}, timeout=30)
    assert a.stats.reconnects >= 1


async def test_a_broker_that_lost_its_store_gets_the_stream_and_consumers_back(
    own_nats: NatsServer, make: Make
) -> None:
    inbox = Inbox()
    await make("b", inbox, url=own_nats.url)
    a = await make("a", url=own_nats.url)
    own_nats.kill()
    shutil.rmtree(own_nats.store / "jetstream")  # the broker's disk is gone
    own_nats.start()
    await until(lambda: a.stats.reconnects >= 1, timeout=30)
    deadline = asyncio.get_running_loop().time() + 30
    while True:  # until the sidecars have put the stream back
        try:
            await a.send(env(1), timeout=1)
            break
        except TransportError:
            assert asyncio.get_running_loop().time() < deadline, "the stream never came back"
            await asyncio.sleep(0.2)
    await inbox.wait_for(1, timeout=30)
    assert [e.seq for e in inbox.got] == [1]


async def test_an_unreachable_broker_fails_the_start_within_the_connect_timeout(make: Make) -> None:
    with pytest.raises(TransportError, match=r"cannot reach the NATS broker at nats://127\.0\.0\.1:1 within 1s"):
        await make("a", url="nats://127.0.0.1:1", connect_timeout=1)


async def test_a_stream_of_that_name_that_is_no_work_queue_is_refused(nats_server: NatsServer) -> None:
    name = f"T{uuid.uuid4().hex[:12]}"
    nc = await nats.connect(nats_server.url)
    try:
        await nc.jetstream().add_stream(name=name, subjects=[f"{name}.*"])  # limits retention
        t = JetStreamTransport("a", nats_server.url, stream=name)
        with pytest.raises(TransportError, match=f"stream '{name}' exists but cannot carry envelopes.*workqueue"):
            await t.start(Inbox())
    finally:
        await nc.close()


async def test_a_frame_over_the_brokers_max_payload_fails_at_the_sender(make: Make) -> None:
    a = await make("a", max_frame=8 * 1024 * 1024)
    with pytest.raises(FrameError, match="max_payload"):
        await a.send(env(payload=b"x" * (2 * 1024 * 1024)))  # the broker's default limit is 1 MiB


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="jetstream_stream 'a.b'"):
        JetStreamTransport("a", "nats://127.0.0.1:4222", stream="a.b")
    with pytest.raises(ConfigError, match="retry_min"):
        JetStreamTransport("a", "nats://127.0.0.1:4222", retry_min=2, retry_max=1)
    with pytest.raises(ConfigError, match="ack_wait"):
        JetStreamTransport("a", "nats://127.0.0.1:4222", ack_wait=0)
