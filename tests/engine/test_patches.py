"""``ch.patched`` / ``ch.deprecate_patch`` against the central interpreter and the engine, and the
fingerprint warning for sessions whose code changed without a version bump."""

from __future__ import annotations

import logging

import pytest

import accompanist as ac
from accompanist import App, DefinitionError
from accompanist.engine.engine import Engine
from accompanist.engine.origin import origin_of
from accompanist.engine.upgrades import versions_report
from accompanist.store.base import SessionStatus
from accompanist.testing.replay import export_session, replay_session
from tests.engine.harness import Deployments, heard, wait_status

A, B, C = ac.roles("a", "b", "c")


@ac.choreography("ship", roles=(A, B, C))
async def old(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
    at_b = await ch.comm(A, B, x)
    y = await ch.locally(B, lambda v: v + 1, at_b)
    at_c = await ch.comm(B, C, y)
    return await ch.comm(C, A, at_c)


@ac.choreography("ship", roles=(A, B, C))
async def patched(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
    double = ch.patched("double")
    at_b = await ch.comm(A, B, x)
    y = await ch.locally(B, (lambda v: v * 2) if double else (lambda v: v + 1), at_b)
    at_c = await ch.comm(B, C, y)
    return await ch.comm(C, A, at_c)


@ac.choreography("ship", roles=(A, B, C))
async def deprecated(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
    ch.deprecate_patch("double")
    at_b = await ch.comm(A, B, x)
    y = await ch.locally(B, lambda v: v * 2, at_b)
    at_c = await ch.comm(B, C, y)
    return await ch.comm(C, A, at_c)


async def hears_all(engine: Engine) -> None:
    await heard(engine, *(r for r in "abc" if r != engine.role))


def test_the_code_knows_its_patches_and_the_fingerprint_ignores_lines_and_docs() -> None:
    assert patched.code.patches == {"double"} and deprecated.code.deprecated == {"double"}
    assert len({old.fingerprint, patched.fingerprint, deprecated.fingerprint}) == 3
    assert len(old.fingerprint) == 12

    plain = _compiled("")
    assert _compiled("\n\n\n").fingerprint == plain.fingerprint  # moved down: same code
    assert _compiled("", doc='"""Explained."""').fingerprint == plain.fingerprint
    assert _compiled("", step="v + 2").fingerprint != plain.fingerprint  # a changed step


_SOURCE = """{above}
async def body(ch, x):
    {doc}
    at_b = await ch.comm(A, B, x)
    y = await ch.locally(B, lambda v: {step}, at_b)
    return await ch.comm(B, A, y)
"""


def _compiled(above: str, doc: str = "", step: str = "v + 1") -> ac.Choreography:
    namespace: dict[str, object] = {"__name__": "fp_sample", "A": A, "B": B}
    exec(_SOURCE.format(above=above, doc=doc, step=step), namespace)
    return ac.choreography("fp", roles=(A, B))(namespace["body"])  # type: ignore[arg-type]


def test_a_patch_name_is_checked() -> None:
    @ac.choreography("bad-patch", roles=(A, B))
    async def bad(ch: ac.Choreo) -> None:
        ch.patched("a,b")

    with pytest.raises(DefinitionError, match="patch name"):
        ac.run_central(bad)  # outside an event loop: runs to completion


async def test_new_sessions_take_the_patch_at_every_role_as_the_central_run_does(mesh: Deployments) -> None:
    assert await ac.run_central(patched, 5) == 10  # the central interpreter runs new code
    for role in "cba":
        await mesh.start(role, patched)
    a = mesh.engines["a"]
    await hears_all(a)
    sid = await a.start_session("ship", [5])
    record = await a.wait(sid, 20)
    assert (record.status, a.result_of(record)) == (SessionStatus.COMPLETED, 10)
    for role in "abc":
        await wait_status(mesh.engines[role], sid, SessionStatus.COMPLETED)
        kinds = await mesh.kinds(role, sid)
        assert kinds[0] == ("patch", "double"), (role, kinds)  # the marker, step 0 at every role
        origin = origin_of((await mesh.engines[role].get(sid)).seed)  # type: ignore[union-attr]
        assert origin is not None and origin.patches == ["double"] and origin.fingerprint == patched.fingerprint
    # `accompanist replay` decides patches as the engine does: the record replays on the same
    # code and after the deprecation, and diverges on code that never heard of the patch.
    export = await export_session(mesh.stores["c"], sid)  # c: no local step named after its function
    assert (await replay_session(export, App(patched))).ok
    assert (await replay_session(export, App(deprecated))).ok
    diverged = await replay_session(export, App(old))
    assert diverged.divergence is not None and diverged.divergence.step == 0


async def test_a_patch_some_role_does_not_know_is_not_taken(mesh: Deployments) -> None:
    await mesh.start("b", patched)
    await mesh.start("c", old)  # c's code has no such patch: no role may take it
    a = await mesh.start("a", patched)
    await hears_all(a)
    sid = await a.start_session("ship", [5])
    record = await a.wait(sid, 20)
    assert (record.status, a.result_of(record)) == (SessionStatus.COMPLETED, 6)
    assert ("patch", "double") not in await mesh.kinds("a", sid)


async def _half_run(mesh: Deployments, code: ac.Choreography) -> str:
    """a and b run ``code`` while c is down: b's message to c waits in b's outbox."""
    await mesh.start("b", code)
    a = await mesh.start("a", code)
    sid = await a.start_session("ship", [5])
    await wait_status(mesh.engines["b"], sid, SessionStatus.FINISHED)
    await mesh.stop("a")
    await mesh.stop("b")
    return sid


async def test_an_old_session_replays_the_old_branch_after_the_upgrade(
    mesh: Deployments, caplog: pytest.LogCaptureFixture
) -> None:
    sid = await _half_run(mesh, old)
    caplog.set_level(logging.WARNING, logger="accompanist.engine.a")
    await mesh.start("b", patched)
    a = await mesh.start("a", patched)  # replays [send] under code that asks patched() first
    changed = [
        r.getMessage()
        for r in caplog.records
        if r.name == "accompanist.engine.a" and "changed without a version bump" in r.getMessage()
    ]
    assert len(changed) == 1 and sid in changed[0] and "'ship' v1" in changed[0], changed
    assert f"{old.fingerprint} -> {patched.fingerprint}" in changed[0]
    assert a.metrics.code_changed.get() == 1 and a.health()["code_changed_sessions"] == 1
    report = await versions_report(a)
    (ship,) = report["choreographies"]
    assert ship["unfinished"] == {"1": 1} and ship["code_changed"][0]["sessions"] == [sid]
    await mesh.start("c", patched)  # joins on b's message, which carries no patch
    record = await a.wait(sid, 20)
    assert (record.status, a.result_of(record)) == (SessionStatus.COMPLETED, 6)  # old branch everywhere
    for role in "abc":
        await wait_status(mesh.engines[role], sid, SessionStatus.COMPLETED)
        assert ("patch", "double") not in await mesh.kinds(role, sid)
    assert (await versions_report(a))["choreographies"][0]["unfinished"] == {}


async def test_a_patched_session_replays_its_marker_and_survives_deprecation(mesh: Deployments) -> None:
    first = await _half_run(mesh, patched)  # a and b know the patch, c unknown: not taken
    for role in "abc":
        await mesh.start(role, patched)
    a = mesh.engines["a"]
    assert ("patch", "double") not in await mesh.kinds("a", first)
    record = await a.wait(first, 20)
    assert a.result_of(record) == 6
    await hears_all(a)
    await mesh.stop("c")  # a remembers what c said: the patch is taken
    sid = await a.start_session("ship", [5])
    await wait_status(mesh.engines["b"], sid, SessionStatus.FINISHED)
    await mesh.stop("a")
    await mesh.stop("b")
    for role in "bca":
        await mesh.start(role, deprecated)  # replays a journal that starts with the marker
    assert (await mesh.kinds("a", sid))[0] == ("patch", "double")
    record = await mesh.engines["a"].wait(sid, 20)
    assert (record.status, mesh.engines["a"].result_of(record)) == (SessionStatus.COMPLETED, 10)
    for role in "abc":
        await wait_status(mesh.engines[role], sid, SessionStatus.COMPLETED)
