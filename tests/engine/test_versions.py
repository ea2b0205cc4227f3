"""Versions in the hello: an initiator starts at the highest version every role serves, and
refuses at once a version a role is known to lack (``accompanist.engine.versions``)."""

from __future__ import annotations

import asyncio

import pytest

import accompanist as ac
from accompanist import App, VersionUnavailableError
from accompanist.engine.engine import Engine
from accompanist.engine.upgrades import versions_report
from accompanist.envelope import Envelope, EnvelopeKind
from accompanist.store.base import SessionStatus
from accompanist.store.memory import MemoryStore
from tests.engine.harness import Deployments, eventually, heard

A, B, C = ac.roles("a", "b", "c")


@ac.choreography("chain", roles=(A, B, C), version=1)
async def chain_v1(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
    at_b = await ch.comm(A, B, x)
    at_c = await ch.comm(B, C, at_b)
    return await ch.comm(C, A, at_c)


@ac.choreography("chain", roles=(A, B, C), version=2)
async def chain_v2(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
    at_b = await ch.comm(A, B, x)
    doubled = await ch.locally(B, lambda v: v * 2, at_b)
    at_c = await ch.comm(B, C, doubled)
    return await ch.comm(C, A, at_c)


OLD, NEW = App(chain_v1), App(chain_v1, chain_v2)


async def test_starts_at_the_highest_version_every_role_serves(mesh: Deployments) -> None:
    await mesh.start("b", OLD)
    await mesh.start("c", NEW)
    a = await mesh.start("a", NEW)  # started last: its hello is answered by b and c
    await heard(a, "b", "c")
    sid = await a.start_session("chain", [5])
    record = await a.wait(sid, 20)
    assert (record.status, record.version, a.result_of(record)) == (SessionStatus.COMPLETED, 1, 5)
    # b is upgraded: its hello tells a, which starts v2 from then on.
    await mesh.stop("b")
    await mesh.start("b", NEW)
    await eventually(lambda: _true(a.versions.serves("b", "chain", 2) is True), 10, "a heard b's new versions")
    sid = await a.start_session("chain", [5])
    record = await a.wait(sid, 20)
    assert (record.status, record.version, a.result_of(record)) == (SessionStatus.COMPLETED, 2, 10)


async def _true(value: bool) -> bool:
    return value


async def test_both_sides_learn_whoever_starts_first(mesh: Deployments) -> None:
    a = await mesh.start("a", NEW)
    b = await mesh.start("b", OLD)  # a's announcement went nowhere; b's reaches a, a answers
    await heard(a, "b")
    await heard(b, "a")
    assert b.versions.serves("a", "chain", 2) is True
    assert a.versions.serves("b", "chain", 2) is False
    assert a.versions.fingerprint_at("b", "chain", 1) == chain_v1.fingerprint


async def test_an_explicit_version_a_role_lacks_is_refused_at_once(mesh: Deployments) -> None:
    await mesh.start("b", OLD)
    await mesh.start("c", NEW)
    a = await mesh.start("a", NEW)
    await heard(a, "b", "c")
    with pytest.raises(VersionUnavailableError) as caught:
        await asyncio.wait_for(a.start_session("chain", [5], version=2), 1.0)
    assert caught.value.lacking == {"b": [1]}
    assert "role 'b' serves v1" in str(caught.value) and "'chain' v2" in str(caught.value)
    assert a.live_sessions == 0 and await a.store.nonterminal_sessions() == []


async def test_no_version_in_common_is_refused_naming_the_role(mesh: Deployments) -> None:
    only_v2 = App(chain_v2)
    await mesh.start("b", OLD)
    await mesh.start("c", only_v2)
    a = await mesh.start("a", only_v2)
    await heard(a, "b", "c")
    with pytest.raises(VersionUnavailableError) as caught:
        await a.start_session("chain", [5])
    assert caught.value.lacking == {"b": [1]} and caught.value.versions == [2]


async def test_an_unknown_peer_never_causes_a_refusal(mesh: Deployments) -> None:
    await mesh.start("c", NEW)
    a = await mesh.start("a", NEW)  # b never started: its versions are unknown
    await heard(a, "c")
    sid = await a.start_session("chain", [5])
    assert (await a.get(sid)) is not None and (await a.get(sid)).version == 2  # type: ignore[union-attr]
    assert a.metrics.unknown_versions.get() == 1
    b = await mesh.start("b", NEW)  # comes up later: the session completes
    record = await a.wait(sid, 20)
    assert record.status == SessionStatus.COMPLETED
    assert b.versions.peer("a") is not None


async def test_an_empty_or_garbled_hello_tells_nothing(mesh: Deployments) -> None:
    a = await mesh.start("a", NEW)
    empty = Envelope("", "", 0, "b", "a", 0, EnvelopeKind.HELLO)
    await a.handle(empty)
    assert a.versions.peer("b") is None
    await a.handle(Envelope("", "", 0, "b", "a", 0, EnvelopeKind.HELLO, payload=b"\xc1garbage"))
    assert a.versions.peer("b") is None
    b_hello = Engine(OLD, "b", store=MemoryStore("b"), transport=mesh.network.transport("x"), config=mesh.config)
    await a.handle(b_hello.versions.hello("a", reply=True))
    assert a.versions.serves("b", "chain", 1) is True
    await a.handle(empty)  # an older build's (or a transport's) hello keeps what is known
    assert a.versions.serves("b", "chain", 1) is True


async def test_a_session_started_while_a_peer_was_unknown_shows_what_it_waits_for(mesh: Deployments) -> None:
    await mesh.start("c", NEW)
    a = await mesh.start("a", NEW)  # b unknown: v2 starts
    await heard(a, "c")
    sid = await a.start_session("chain", [5])
    await mesh.start("b", OLD)  # b lacks v2: the session waits for it, and the report says so
    await eventually(lambda: _true(a.versions.serves("b", "chain", 2) is False), 10, "a heard b")
    (chain,) = (await versions_report(a))["choreographies"]
    assert chain["unfinished"] == {"2": 1} and chain["peers_lacking"] == {"2": ["b"]}
    assert chain["next_version"] == 1 and chain["peers"]["b"]["served"] == [1]
    await mesh.stop("b")
    await mesh.start("b", NEW)  # upgraded: the session completes
    record = await a.wait(sid, 20)
    assert (record.status, record.version) == (SessionStatus.COMPLETED, 2)
    assert (await versions_report(a))["choreographies"][0]["peers_lacking"] == {}
