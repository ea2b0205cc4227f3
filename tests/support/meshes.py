"""The transports under one interface, for the contract tests that every transport passes.

A *mesh* makes started transports by role that can reach each other: a
:class:`~accompanist.transport.MemoryNetwork`, TCP transports on loopback that learn each
other's addresses, or JetStream transports on one broker (a stream of the test's own).

Transports differ in one documented way: TCP and memory answer a sender with the receiver's
refusal (``answers_refusals``), while through a broker the sender's answer is the broker's
(the envelope is stored) and the receiver terminates what it refuses.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from accompanist.envelope import Envelope
from accompanist.transport import MemoryNetwork, TcpTransport, Transport
from accompanist.transport.frames import DEFAULT_MAX_FRAME

__all__ = ["KINDS", "Inbox", "Mesh", "env", "make_mesh"]

KINDS = ("memory", "tcp", "jetstream")
LOCAL = ("127.0.0.1", 0)


def env(seq: int = 1, *, src: str = "a", dst: str = "b", payload: bytes = b"x" * 32) -> Envelope:
    return Envelope("s-1", "order", 1, src, dst, seq, "value", payload, {"traceparent": "00-1"})


class Inbox:
    """A handler that records what it accepted and how many calls ran at once."""

    def __init__(self, work: Callable[[Envelope], Awaitable[None]] | None = None) -> None:
        self.got: list[Envelope] = []
        self.calls = 0
        self.active = 0
        self.max_active = 0
        self._work = work

    async def __call__(self, envelope: Envelope) -> None:
        self.calls += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self._work is not None:
                await self._work(envelope)
            self.got.append(envelope)
        finally:
            self.active -= 1

    async def wait_for(self, count: int, timeout: float = 20.0) -> None:
        """Until ``count`` envelopes were accepted (polls: a loaded machine is slow, never wrong)."""
        async with asyncio.timeout(timeout):
            while len(self.got) < count:  # noqa: ASYNC110 - the handler runs on the same loop
                await asyncio.sleep(0.005)


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - polls counters the transports bump
            await asyncio.sleep(0.01)


class Mesh:
    """Started transports by role that reach each other; closes them all at the end."""

    kind: str = ""
    answers_refusals = True
    #: seconds within which a receiver would have had a refused envelope again, were it redelivered
    redelivery_window = 0.0

    def __init__(self) -> None:
        self.made: list[Any] = []

    async def transport(
        self,
        role: str,
        handler: Callable[[Envelope], Awaitable[None]] | None = None,
        *,
        keys: dict[str, bytes] | None = None,
        current_key_id: str = "k1",
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> Transport:
        raise NotImplementedError

    async def close(self) -> None:
        for t in reversed(self.made):
            await t.close()


class MemoryMesh(Mesh):
    kind = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.net: MemoryNetwork | None = None

    async def transport(
        self,
        role: str,
        handler: Callable[[Envelope], Awaitable[None]] | None = None,
        *,
        keys: dict[str, bytes] | None = None,
        current_key_id: str = "k1",
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> Transport:
        if self.net is None:
            self.net = MemoryNetwork(max_frame=max_frame)
        t = self.net.transport(role, keys=keys, current_key_id=current_key_id)
        self.made.append(t)
        await t.start(handler or Inbox())
        return t


class TcpMesh(Mesh):
    kind = "tcp"

    async def transport(
        self,
        role: str,
        handler: Callable[[Envelope], Awaitable[None]] | None = None,
        *,
        keys: dict[str, bytes] | None = None,
        current_key_id: str = "k1",
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> Transport:
        t = TcpTransport(role, LOCAL, keys=keys, current_key_id=current_key_id, max_frame=max_frame)
        await t.start(handler or Inbox())
        for other in self.made:
            other.set_peer(role, t.address)
            t.set_peer(other.role, other.address)
        self.made.append(t)
        return t


class JetStreamMesh(Mesh):
    kind = "jetstream"
    answers_refusals = False
    redelivery_window = 2.0  # ack_wait 1 s below, twice over

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.stream = f"T{uuid.uuid4().hex[:12]}"

    async def transport(
        self,
        role: str,
        handler: Callable[[Envelope], Awaitable[None]] | None = None,
        *,
        keys: dict[str, bytes] | None = None,
        current_key_id: str = "k1",
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> Transport:
        from accompanist.transport.jetstream import JetStreamTransport

        t = JetStreamTransport(
            role,
            self.url,
            stream=self.stream,
            keys=keys,
            current_key_id=current_key_id,
            max_frame=max_frame,
            ack_wait=1.0,  # short, so a redelivery would show within the test; long enough for a loaded loop
            retry_min=0.05,
            retry_max=0.2,
        )
        self.made.append(t)
        await t.start(handler or Inbox())
        return t


def make_mesh(kind: str, request: pytest.FixtureRequest) -> Mesh:
    """The mesh of ``kind``; jetstream takes the session's NATS server (skips without one)."""
    if kind == "memory":
        return MemoryMesh()
    if kind == "tcp":
        return TcpMesh()
    pytest.importorskip("nats", reason="the jetstream transport needs nats-py (pip install 'accompanist[nats]')")
    server = request.getfixturevalue("nats_server")
    return JetStreamMesh(server.url)
