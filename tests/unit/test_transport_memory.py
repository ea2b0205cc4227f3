"""MemoryNetwork: delivery through the real codec, fault plans with seeded statistics, partitions."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from accompanist.envelope import Envelope
from accompanist.errors import ConfigError, FrameError, TransportError
from accompanist.transport import FaultPlan, MemoryNetwork, MemoryTransport

K1 = b"1" * 32
K2 = b"2" * 32


def env(seq: int = 1, *, src: str = "a", dst: str = "b", payload: bytes = b"x") -> Envelope:
    return Envelope("s-1", "order", 1, src, dst, seq, "value", payload, {})


class Inbox:
    def __init__(self) -> None:
        self.got: list[Envelope] = []

    async def __call__(self, envelope: Envelope) -> None:
        self.got.append(envelope)

    @property
    def seqs(self) -> list[int]:
        return [e.seq for e in self.got]


async def network_ab(net: MemoryNetwork) -> tuple[MemoryTransport, MemoryTransport, Inbox]:
    a, b = net.transport("a"), net.transport("b")
    inbox = Inbox()
    await a.start(Inbox())
    await b.start(inbox)
    return a, b, inbox


async def test_codec_limits_and_keys_apply() -> None:
    net = MemoryNetwork(keys={"k1": K1}, max_frame=256)
    a, b, inbox = await network_ab(net)
    with pytest.raises(FrameError, match="oversized"):
        await a.send(env(payload=b"x" * 300))
    intruder = net.transport("c", keys={"k1": K2})
    with pytest.raises(TransportError, match="bad-mac"):
        await intruder.send(env(src="c"))
    unsigned = net.transport("d", keys=None)
    with pytest.raises(TransportError, match="unsigned"):
        await unsigned.send(env(src="d"))
    assert inbox.got == []
    assert (b.stats.rejected["bad-mac"], b.stats.rejected["unsigned"]) == (1, 1)


async def test_unknown_stopped_and_closed_roles() -> None:
    net = MemoryNetwork()
    a = net.transport("a")
    net.transport("b")  # never started
    with pytest.raises(TransportError, match="no role 'zed' on this network; known roles: a, b"):
        await a.send(env(dst="zed"))
    with pytest.raises(TransportError, match="'b' is not listening"):
        await a.send(env())
    with pytest.raises(ConfigError, match="already has an open transport"):
        net.transport("a")


async def test_a_closed_role_can_be_restarted() -> None:
    net = MemoryNetwork()
    a, b, _ = await network_ab(net)
    await b.close()
    with pytest.raises(TransportError, match="not listening"):
        await a.send(env(1))
    restarted = net.transport("b")
    inbox = Inbox()
    await restarted.start(inbox)
    await a.send(env(2))
    assert inbox.seqs == [2]


async def test_handler_errors_and_timeouts_reach_the_sender() -> None:
    net = MemoryNetwork()
    a = net.transport("a")
    b = net.transport("b")

    async def picky(e: Envelope) -> None:
        if e.seq == 1:
            raise ValueError("no such choreography 'order' v1")
        await asyncio.sleep(1)

    await b.start(picky)
    with pytest.raises(TransportError, match="no such choreography 'order' v1"):
        await a.send(env(1))
    with pytest.raises(TransportError, match="no answer from role 'b'"):
        await a.send(env(2), timeout=0.02)
    assert b.stats.rejected["handler"] == 1
    await b.close()


# --- fault plans ---------------------------------------------------------------------------


async def test_drop_rate_follows_the_plan() -> None:
    net = MemoryNetwork(FaultPlan(drop=0.3, seed=1))
    a, _, inbox = await network_ab(net)
    for seq in range(1, 2001):
        await a.send(env(seq), wait=False)
    await net.idle()
    assert 0.25 < 1 - len(inbox.got) / 2000 < 0.35
    assert net.stats.dropped == 2000 - len(inbox.got) == 2000 - net.stats.delivered


async def test_a_waiting_sender_cannot_tell_a_lost_envelope_from_a_lost_ack() -> None:
    net = MemoryNetwork(FaultPlan(drop=0.3, seed=2))
    a, _, inbox = await network_ab(net)
    failed: dict[int, str] = {}
    for seq in range(1, 501):
        try:
            await a.send(env(seq))
        except TransportError as exc:
            failed[seq] = re.sub(r"\('s-1'.*?\)", "KEY", str(exc))
    handled = set(inbox.seqs)
    lost_envelope = {s for s in failed if s not in handled}
    lost_ack = {s for s in failed if s in handled}
    assert lost_envelope and lost_ack  # both happened ...
    assert len(set(failed.values())) == 1  # ... and read the same to the sender
    assert "may or may not have been handled" in next(iter(failed.values()))
    assert a.stats.acked == 500 - len(failed)


async def test_duplicates_follow_the_plan() -> None:
    net = MemoryNetwork(FaultPlan(duplicate=0.2, seed=3))
    a, _, inbox = await network_ab(net)
    for seq in range(1, 1001):
        await a.send(env(seq), wait=False)
    await net.idle()
    extra = len(inbox.got) - 1000
    assert extra == net.stats.duplicated
    assert 150 < extra < 250
    assert set(inbox.seqs) == set(range(1, 1001))


async def test_delays_hold_envelopes_but_keep_each_link_fifo() -> None:
    net = MemoryNetwork(FaultPlan(delay=(0.005, 0.02), seed=4))
    a, _, inbox = await network_ab(net)
    started = time.monotonic()
    await a.send(env(0))
    assert time.monotonic() - started >= 0.005
    for seq in range(1, 101):
        await a.send(env(seq), wait=False)
    await net.idle()
    assert inbox.seqs == list(range(101))
    assert net.stats.delayed == 101


async def test_reorder_lets_envelopes_overtake() -> None:
    net = MemoryNetwork(FaultPlan(reorder=True, seed=5))
    a, _, inbox = await network_ab(net)
    for seq in range(1, 201):
        await a.send(env(seq), wait=False)
    await net.idle()
    assert sorted(inbox.seqs) == list(range(1, 201))
    assert inbox.seqs != sorted(inbox.seqs)
    overtaken = sum(1 for i, later in enumerate(inbox.seqs) if any(s < later for s in inbox.seqs[i + 1 :]))
    assert overtaken > 50


async def test_same_seed_same_faults() -> None:
    async def dropped(seed: int) -> list[int]:
        net = MemoryNetwork(FaultPlan(drop=0.5, duplicate=0.2, seed=seed))
        a, _, inbox = await network_ab(net)
        for seq in range(1, 101):
            await a.send(env(seq), wait=False)
        await net.idle()
        return inbox.seqs

    assert await dropped(7) == await dropped(7)
    assert await dropped(7) != await dropped(8)


async def test_the_plan_can_change_at_runtime() -> None:
    net = MemoryNetwork(FaultPlan(drop=1.0))
    a, _, inbox = await network_ab(net)
    with pytest.raises(TransportError, match="lost in transit"):
        await a.send(env(1))
    net.plan = FaultPlan()
    await a.send(env(2))
    assert inbox.seqs == [2]


@pytest.mark.parametrize("kwargs", [{"drop": 1.5}, {"duplicate": -0.1}, {"delay": (0.2, 0.1)}, {"delay": (-1.0, 0.0)}])
def test_bad_plans_are_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        FaultPlan(**kwargs)  # type: ignore[arg-type]


# --- partitions ----------------------------------------------------------------------------


async def test_partition_cuts_both_ways_until_healed() -> None:
    net = MemoryNetwork()
    a, b, inbox_b = await network_ab(net)
    c = net.transport("c")
    inbox_c = Inbox()
    await c.start(inbox_c)
    net.partition("a", "b")
    with pytest.raises(TransportError, match="link a -> b is partitioned"):
        await a.send(env())
    with pytest.raises(TransportError, match="link b -> a is partitioned"):
        await b.send(env(src="b", dst="a"))
    await a.send(env(dst="c"))  # other links are unaffected
    net.heal("b", "a")
    await a.send(env(2))
    assert inbox_b.seqs == [2] and inbox_c.seqs == [1]
    assert net.stats.partitioned == 2


async def test_a_partition_loses_envelopes_already_in_flight() -> None:
    net = MemoryNetwork(FaultPlan(delay=(0.02, 0.02)))
    a, _, inbox = await network_ab(net)
    sending = asyncio.create_task(a.send(env()))
    await asyncio.sleep(0.005)
    net.partition("a", "b")
    with pytest.raises(TransportError, match="lost in transit"):
        await sending
    net.heal()
    assert inbox.got == [] and not net.partitioned("a", "b")
