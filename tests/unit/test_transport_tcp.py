"""TcpTransport over real loopback sockets: delivery, pipelining, reconnects, failures (what every
transport does is in test_transport_contract.py)."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from examples.warehouse.cluster import free_port
from tests.support.meshes import LOCAL, env

from accompanist.envelope import Envelope
from accompanist.errors import ConfigError, TransportError
from accompanist.transport import TcpTransport, Transport


class Inbox:
    """A handler that records what it got."""

    def __init__(self, work: Callable[[Envelope], Awaitable[None]] | None = None) -> None:
        self.got: list[Envelope] = []
        self.active = 0
        self.max_active = 0
        self._work = work
        self._changed = asyncio.Condition()

    async def reached(self, active: int) -> None:
        """Wait until ``active`` handler calls are in progress at once."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: self.active >= active), 2)

    async def __call__(self, envelope: Envelope) -> None:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        async with self._changed:
            self._changed.notify_all()
        try:
            if self._work is not None:
                await self._work(envelope)
            self.got.append(envelope)
        finally:
            self.active -= 1


@pytest.fixture
async def made() -> AsyncIterator[list[TcpTransport]]:
    transports: list[TcpTransport] = []
    yield transports
    for t in transports:
        await t.close()


@pytest.fixture
def make(made: list[TcpTransport]) -> Callable[..., TcpTransport]:
    def _make(role: str, listen: tuple[str, int] = LOCAL, **kw: object) -> TcpTransport:
        t = TcpTransport(role, listen, **kw)  # type: ignore[arg-type]
        made.append(t)
        return t

    return _make


async def serving(make: Callable[..., TcpTransport], handler: Inbox, **kw: object) -> tuple[TcpTransport, TcpTransport]:
    """A started server ``b`` and a client ``a`` that knows it."""
    b = make("b", **kw)
    await b.start(handler)
    a = make("a", peers={"b": b.address}, **kw)
    return a, b


def test_it_is_a_transport() -> None:
    transport: Transport = TcpTransport("a", LOCAL)
    assert transport.stats.sent == 0


async def test_round_trip_with_ack(make: Callable[..., TcpTransport]) -> None:
    inbox = Inbox()
    a, b = await serving(make, inbox)
    assert b.address[1] != 0
    await a.send(env())
    assert inbox.got == [env()]
    assert (a.stats.sent, a.stats.acked, b.stats.received) == (1, 1, 1)
    assert not a.stats.rejected and not b.stats.rejected


async def test_a_send_without_waiting_gets_no_answer_frame(make: Callable[..., TcpTransport]) -> None:
    a, b = await serving(make, Inbox())
    await a.send(env(1))  # connected, with one answer
    await a.send(env(2), wait=False)
    await a.send(env(3))
    assert (a.stats.sent, a.stats.acked, b.stats.received) == (3, 2, 3)
    assert not a.stats.rejected  # the answer to #2 was not sent, not dropped as unexpected


async def test_posts_resolve_with_their_answers_without_a_task_each(make: Callable[..., TcpTransport]) -> None:
    async def refuse_odd(e: Envelope) -> None:
        if e.seq % 2:
            raise ValueError(f"odd seq {e.seq}")

    a, b = await serving(make, Inbox(refuse_odd))
    first = a.post(env(2))  # no connection yet: it connects in a task
    await first
    tasks_before = len(asyncio.all_tasks())
    answers = [a.post(env(seq), timeout=5) for seq in range(3, 203)]
    assert len(asyncio.all_tasks()) == tasks_before  # on a live connection, nothing but futures
    results = await asyncio.gather(*answers, return_exceptions=True)
    refused = [r for r in results if isinstance(r, TransportError)]
    assert len(refused) == 100 and all("odd seq" in str(r) for r in refused)
    assert results[1::2] == [None] * 100  # even seqs accepted
    assert (a.stats.sent, a.stats.acked, b.stats.received) == (201, 101, 201)


async def test_a_post_without_an_answer_fails_at_its_deadline(make: Callable[..., TcpTransport]) -> None:
    gate = asyncio.Event()

    async def stall(_: Envelope) -> None:
        await gate.wait()

    a, _ = await serving(make, Inbox(stall))
    await a.send(env(1), wait=False)  # connect
    with pytest.raises(TransportError, match="no answer from role 'b'"):
        await a.post(env(2), timeout=0.2)
    gate.set()


async def test_1000_pipelined_sends_are_each_handled_exactly_once(make: Callable[..., TcpTransport]) -> None:
    async def work(_: Envelope) -> None:
        await asyncio.sleep(0)

    inbox = Inbox(work)
    a, b = await serving(make, inbox)
    await asyncio.gather(*(a.send(env(seq)) for seq in range(1, 1001)))
    counts = collections.Counter(e.seq for e in inbox.got)
    assert set(counts) == set(range(1, 1001))
    assert set(counts.values()) == {1}
    assert (a.stats.sent, a.stats.acked, b.stats.received) == (1000, 1000, 1000)
    assert inbox.max_active > 1  # handled concurrently, not one round trip at a time
    assert len(b._connections) == 1  # one shared connection
    assert a.stats.reconnects == 0


async def test_handler_concurrency_is_bounded_per_connection(make: Callable[..., TcpTransport]) -> None:
    gate = asyncio.Event()

    async def blocked(_: Envelope) -> None:
        await gate.wait()

    inbox = Inbox(blocked)
    a, _ = await serving(make, inbox, max_concurrency=8)
    sends = asyncio.gather(*(a.send(env(seq)) for seq in range(1, 41)))
    await inbox.reached(8)
    await asyncio.sleep(0.01)  # give a ninth call the chance it must not get
    assert inbox.active == 8
    gate.set()
    await sends
    assert inbox.max_active == 8 and len(inbox.got) == 40


async def test_reconnects_after_the_peer_restarts_on_the_same_port(make: Callable[..., TcpTransport]) -> None:
    first, second = Inbox(), Inbox()
    a, b = await serving(make, first)
    await a.send(env(1))
    await b.close()
    restarted = make("b", b.address)
    await restarted.start(second)
    await a.send(env(2))
    await a.send(env(3))
    assert [e.seq for e in first.got] == [1]
    assert [e.seq for e in second.got] == [2, 3]
    assert a.stats.reconnects == 1


async def test_peer_down_fails_within_the_timeout(make: Callable[..., TcpTransport]) -> None:
    a = make("a", peers={"b": ("127.0.0.1", free_port())}, backoff_min=0.01, backoff_max=0.05)
    started = time.monotonic()
    with pytest.raises(TransportError, match=r"cannot reach peer 'b' at 127\.0\.0\.1:\d+"):
        await a.send(env(), timeout=0.3)
    assert time.monotonic() - started < 0.6


async def test_backoff_fails_fast_instead_of_hammering_a_down_peer(make: Callable[..., TcpTransport]) -> None:
    a = make("a", peers={"b": ("127.0.0.1", free_port())}, backoff_min=5.0, backoff_max=5.0)
    with pytest.raises(TransportError):
        await a.send(env(), timeout=1.0)
    started = time.monotonic()
    with pytest.raises(TransportError, match="next attempt in"):
        await a.send(env(), timeout=1.0)
    assert time.monotonic() - started < 0.1


async def test_an_envelope_from_a_backed_off_peer_ends_the_backoff(make: Callable[..., TcpTransport]) -> None:
    port = free_port()
    a = make("a", peers={"b": ("127.0.0.1", port)}, backoff_min=5.0, backoff_max=5.0)
    await a.start(Inbox())
    with pytest.raises(TransportError):
        await a.send(env(1), timeout=0.5)  # b is down: a backs off for seconds
    inbox = Inbox()
    b = make("b", ("127.0.0.1", port), peers={"a": a.address})
    await b.start(inbox)
    await b.send(env(src="b", dst="a"))  # b announces itself (as HELLO does) ...
    await a.send(env(2), timeout=0.5)  # ... so a retries at once instead of waiting 5 s
    assert [e.seq for e in inbox.got] == [2]


async def test_a_send_waiting_out_backoff_goes_as_soon_as_the_peer_is_back(
    make: Callable[..., TcpTransport],
) -> None:
    port = free_port()
    a = make("a", peers={"b": ("127.0.0.1", port)}, backoff_min=20.0, backoff_max=20.0)
    await a.start(Inbox())
    with pytest.raises(TransportError):
        await a.send(env(1), timeout=0.5)  # b is down: the next attempt is 10-20 s away
    waiting = asyncio.create_task(a.send(env(2), timeout=60))  # a relay's retry, waiting it out
    await asyncio.sleep(0.2)
    assert not waiting.done()
    inbox = Inbox()
    b = make("b", ("127.0.0.1", port), peers={"a": a.address})
    await b.start(inbox)
    started = time.monotonic()
    await b.send(env(src="b", dst="a"))  # b's hello after its restart
    await asyncio.wait_for(waiting, 8)  # well before the 10 s the backoff would have taken
    assert [e.seq for e in inbox.got] == [2]
    assert time.monotonic() - started < 8


async def test_a_silent_peer_times_out_and_leaves_no_pending_send(made: list[TcpTransport]) -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    a = TcpTransport("a", LOCAL, {"b": ("127.0.0.1", port)})
    made.append(a)
    try:
        started = time.monotonic()
        with pytest.raises(TransportError, match="no answer from role 'b'"):
            await a.send(env(), timeout=0.2)
        assert 0.2 <= time.monotonic() - started < 0.5
        link = a._links["b"]
        assert link._conn is not None and link._conn.pending == {}
    finally:
        server.close()


async def test_a_dead_connection_fails_pending_sends_at_once(make: Callable[..., TcpTransport]) -> None:
    never = asyncio.Event()

    async def stuck(_: Envelope) -> None:
        await never.wait()

    inbox = Inbox(stuck)
    a, b = await serving(make, inbox)
    sends = [asyncio.create_task(a.send(env(seq), timeout=10)) for seq in (1, 2, 3)]
    await inbox.reached(3)
    started = time.monotonic()
    await b.close()
    results = await asyncio.gather(*sends, return_exceptions=True)
    assert time.monotonic() - started < 1.0
    assert all(isinstance(r, TransportError) and "may or may not have been handled" in str(r) for r in results)
    assert a._links["b"]._conn is None


async def test_close_fails_pending_sends_and_later_sends(make: Callable[..., TcpTransport]) -> None:
    never = asyncio.Event()

    async def stuck(_: Envelope) -> None:
        await never.wait()

    inbox = Inbox(stuck)
    a, _ = await serving(make, inbox)
    pending = asyncio.create_task(a.send(env(), timeout=10))
    await inbox.reached(1)
    await a.close()
    with pytest.raises(TransportError):
        await pending
    with pytest.raises(TransportError, match="closed"):
        await a.send(env(2))


async def test_handler_error_reaches_the_sender_with_its_message(make: Callable[..., TcpTransport]) -> None:
    async def refuse(e: Envelope) -> None:
        raise ValueError(f"unknown choreography {e.choreography!r} v{e.version}")

    a, b = await serving(make, Inbox(refuse))
    with pytest.raises(TransportError, match="unknown choreography 'order' v1"):
        await a.send(env())
    assert b.stats.rejected["handler"] == 1
    await a.send(env(2), wait=False)  # the connection is still usable


async def test_wrong_destination_is_rejected(make: Callable[..., TcpTransport]) -> None:
    inbox = Inbox()
    b = make("b")
    await b.start(inbox)
    a = make("a", peers={"c": b.address})  # c's address points at b by mistake
    with pytest.raises(TransportError, match="for role 'c' reached role 'b'"):
        await a.send(env(dst="c"))
    assert b.stats.rejected["wrong-dst"] == 1 and inbox.got == []


async def test_unknown_destination_names_the_role_and_the_known_peers(make: Callable[..., TcpTransport]) -> None:
    a = make("a", peers={"b": ("127.0.0.1", 1), "c": ("127.0.0.1", 2)})
    with pytest.raises(TransportError, match="no address for role 'zed'; known peers: b, c"):
        await a.send(env(dst="zed"))


async def test_start_twice_and_bad_config_are_refused(make: Callable[..., TcpTransport]) -> None:
    b = make("b")
    await b.start(Inbox())
    with pytest.raises(TransportError, match="already started"):
        await b.start(Inbox())
    taken = make("c", b.address)
    with pytest.raises(TransportError, match="cannot listen"):
        await taken.start(Inbox())
    with pytest.raises(ConfigError):
        TcpTransport("a", LOCAL, backoff_min=2, backoff_max=1)
    with pytest.raises(ConfigError, match="at least 16"):
        TcpTransport("a", LOCAL, keys={"k1": b"short"})


def test_round_trip_on_uvloop_when_the_caller_installs_it() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> list[Envelope]:
        inbox = Inbox()
        b = TcpTransport("b", LOCAL, keys={"k1": b"k" * 32})
        await b.start(inbox)
        a = TcpTransport("a", LOCAL, {"b": b.address}, keys={"k1": b"k" * 32})
        try:
            await asyncio.gather(*(a.send(env(seq)) for seq in range(1, 51)))
        finally:
            await a.close()
            await b.close()
        return inbox.got

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        got = runner.run(main())
    assert sorted(e.seq for e in got) == list(range(1, 51))
