"""The per-peer inbox gauges move through a real run of the engine: envelopes that arrive
before their session asks for them, and envelopes not yet durable (so not acknowledged), by the
peer they came from."""

from __future__ import annotations

import asyncio
import re

import accompanist as ac
from accompanist.engine.config import EngineConfig, Mode
from tests.engine.harness import cluster, eventually

A, B = ac.roles("a", "b")


def _app(opened: asyncio.Event) -> ac.App:
    async def busy(v: int) -> int:
        await opened.wait()  # b is busy while a's second message arrives
        return v

    @ac.choreography("burst", roles=(A, B))
    async def burst(ch: ac.Choreo, n: ac.Located[int]) -> ac.Located[int]:
        first = await ch.comm(A, B, n)
        await ch.locally(B, busy, first)
        second = await ch.comm(A, B, await ch.locally(A, lambda v: v + 1, n))
        return await ch.comm(B, A, second)

    return ac.App(burst)


def _gauge(text: str, name: str, peer: str) -> float:
    found = re.search(rf'^{name}{{peer="{peer}"}} (\S+)$', text, re.MULTILINE)
    assert found is not None, f"{name}{{peer={peer}}} is not exported"
    return float(found[1])


async def test_inbox_depths_per_peer_move_and_return_to_zero() -> None:
    opened = asyncio.Event()
    # A long ack_linger keeps the received envelopes' rows waiting for b's next commit.
    config = EngineConfig(mode=Mode.FAULT_TOLERANT, receive_timeout=10, ack_linger=30)
    async with cluster(_app(opened), ["a", "b"], config) as c:
        sid = await c["a"].start_session("burst", [4])
        b = c["b"]

        async def early() -> bool:
            return _gauge(b.metrics.render().decode(), "accompanist_peer_inbox_waiting", "a") == 1

        await eventually(early, what="a's second envelope waiting at b")
        text = b.metrics.render().decode()
        assert _gauge(text, "accompanist_peer_inbox_unacked", "a") == 2  # both wait for b's next commit
        await asyncio.sleep(0.3)
        text = b.metrics.render().decode()
        assert _gauge(text, "accompanist_peer_inbox_oldest_unacked_seconds", "a") >= 0.3
        assert _gauge(text, "accompanist_peer_outbox_unacked", "a") == 0
        opened.set()
        assert (await c["a"].wait(sid, 10)).status == "completed"

        async def drained() -> bool:
            text = b.metrics.render().decode()
            return all(
                _gauge(text, name, "a") == 0
                for name in ("accompanist_peer_inbox_waiting", "accompanist_peer_inbox_unacked")
            )

        await eventually(drained, what="b's inbox gauges back at zero")
