"""ch.patched at the edges: names the code scan cannot see, a role that lacks a session's patch,
patches in loops, a deprecation deployed one sidecar at a time."""

from __future__ import annotations

import pytest

import accompanist as ac
from accompanist.errors import DefinitionError
from accompanist.store.base import SessionStatus
from tests.engine.harness import Deployments, eventually
from tests.engine.test_patches import hears_all

A, B, C = ac.roles("a", "b", "c")
S = SessionStatus
DOUBLE = "double"


@ac.choreography("calc", roles=(A, B, C))
async def by_constant(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
    at_c = await ch.comm(A, C, x)
    y = await ch.locally(C, (lambda v: v * 2) if ch.patched(DOUBLE) else (lambda v: v + 1), at_c)
    return await ch.comm(C, A, y)


async def test_a_patch_named_by_a_constant_is_refused_with_a_clear_error(mesh: Deployments) -> None:
    """ch.patched(DOUBLE): the code scan cannot see the name, so no sidecar could announce it
    and new sessions would silently never take it. It is an error, in the central run as in
    the engine, naming the call and what to write instead."""
    with pytest.raises(DefinitionError, match=r"patched\('double'\) in choreography 'calc': write the patch name"):
        await ac.run_central(by_constant, 5)
    for role in "cba":
        await mesh.start(role, by_constant)
    a = mesh.engines["a"]
    await hears_all(a)
    sid = await a.start_session("calc", [5])
    record = await a.wait(sid, 20)
    assert record.status in (S.FAILED, S.COMPENSATED) and "string literal" in (record.error or ""), record


@ac.choreography("calc", roles=(A, B, C))
async def old(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
    at_c = await ch.comm(A, C, x)
    y = await ch.locally(C, lambda v: v + 1, at_c)
    return await ch.comm(C, A, y)


@ac.choreography("calc", roles=(A, B, C))
async def new(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
    double = ch.patched("double")
    at_c = await ch.comm(A, C, x)
    y = await ch.locally(C, (lambda v: v * 2) if double else (lambda v: v + 1), at_c)
    if double:
        y = await ch.locally(C, lambda v: v, y)
    return await ch.comm(C, A, y)


async def test_a_role_that_joins_with_code_lacking_the_sessions_patch_waits_for_it(mesh: Deployments) -> None:
    """a, b, c serve the patched code; the session takes the patch. c comes back rolled back to
    code without the patch before the session reaches it: c refuses the session's envelope
    (``patch-missing``) instead of running the old branch where a ran the new one; once code
    with the patch is back at c, the session completes on the new branch everywhere."""
    for role in "cba":
        await mesh.start(role, new)
    a = mesh.engines["a"]
    await hears_all(a)
    await mesh.stop("c")  # c goes down for a rollback: a last heard that c knows the patch
    sid = await a.start_session("calc", [5])
    assert ("patch", "double") in await mesh.kinds("a", sid)  # the session takes the patch
    c = await mesh.start("c", old)  # rolled back: its code has no such patch

    async def refused() -> bool:
        return c.metrics.rejected.labels(reason="patch-missing").value > 0

    await eventually(refused, 10, "c refused the session's envelope")
    assert await c.get(sid) is None  # it never joined with the old branch
    await mesh.stop("c")
    await mesh.start("c", new)  # the fixed deployment
    record = await a.wait(sid, 30)
    assert (record.status, a.result_of(record)) == (S.COMPLETED, 10)
    assert ("patch", "double") in await mesh.kinds("c", sid)


async def test_patched_twice_with_the_same_name_and_in_a_loop(mesh: Deployments) -> None:
    @ac.choreography("loop", roles=(A, B, C))
    async def looped(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        v = x
        for _ in range(3):
            if ch.patched("p"):
                v = await ch.locally(A, lambda n: n * 2, v)
            at_b = await ch.comm(A, B, v)
            v = await ch.comm(B, A, at_b)
        if ch.patched("p"):
            v = await ch.locally(A, lambda n: n + 1, v)
        at_c = await ch.comm(A, C, v)
        return await ch.comm(C, A, at_c)

    assert await ac.run_central(looped, 1) == 9
    for role in "cba":
        await mesh.start(role, looped)
    a = mesh.engines["a"]
    await hears_all(a)
    sid = await a.start_session("loop", [1])
    record = await a.wait(sid, 20)
    assert (record.status, a.result_of(record)) == (S.COMPLETED, 9)
    # replay at a restarted a gives the same
    await mesh.stop("a")
    a = await mesh.start("a", looped)
    again = await a.get(sid)
    assert again is not None and a.result_of(again) == 9


async def test_a_rolling_deploy_of_a_deprecation_does_not_mix_branches(mesh: Deployments) -> None:
    """The README's deprecation step, deployed one sidecar at a time: a and c already run
    ``deprecate_patch("double")`` + the new code, b still runs ``if ch.patched("double")``.
    Every role's code knows the patch, so a new session must run the new code everywhere
    (v * 2 at b, 10). It takes no patch (the deprecating initiator announces no patch), so b
    runs the old branch (v + 1) under a session whose other roles run the new code: 6."""
    from tests.engine.test_patches import deprecated, patched

    await mesh.start("b", patched)
    await mesh.start("c", deprecated)
    a = await mesh.start("a", deprecated)
    await hears_all(a)
    sid = await a.start_session("ship", [5])
    record = await a.wait(sid, 20)
    assert (record.status, a.result_of(record)) == (S.COMPLETED, 10)
