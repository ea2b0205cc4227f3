"""Review 14: ch.patched edge cases on the engine."""

from __future__ import annotations

import accompanist as ac
from accompanist.store.base import SessionStatus
from tests.engine.test_patches import Mesh, hears_all, mesh  # noqa: F401 - the fixture

A, B, C = ac.roles("a", "b", "c")
S = SessionStatus
DOUBLE = "double"


@ac.choreography("calc", roles=(A, B, C))
async def by_constant(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
    at_c = await ch.comm(A, C, x)
    y = await ch.locally(C, (lambda v: v * 2) if ch.patched(DOUBLE) else (lambda v: v + 1), at_c)
    return await ch.comm(C, A, y)


async def test_a_patch_named_by_a_constant_is_taken_by_new_sessions(mesh: Mesh) -> None:  # noqa: F811
    """Every role runs the same code with ch.patched(DOUBLE): a new session should take the
    new branch, as the central run does. It silently takes the old one: the name is not a
    literal, so the code walk never saw it and no role announced it."""
    assert await ac.run_central(by_constant, 5) == 10
    for role in "cba":
        await mesh.start(role, by_constant)
    a = mesh.engines["a"]
    await hears_all(a)
    sid = await a.start_session("calc", [5])
    record = await a.wait(sid, 20)
    assert (record.status, a.result_of(record)) == (S.COMPLETED, 10)


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


async def test_a_role_that_joins_with_code_lacking_the_sessions_patch_does_not_silently_run_the_old_branch(
    mesh: Mesh,  # noqa: F811
) -> None:
    """a, b, c serve the patched code; the session takes the patch. c is rolled back to code
    without the patch before the session reaches it. c must not run the old branch while a ran
    the new one (a mixed session): it should refuse/park/fail visibly, not complete with 6."""
    for role in "cba":
        await mesh.start(role, new)
    a = mesh.engines["a"]
    await hears_all(a)
    await mesh.stop("c")  # c goes down for a rollback: a last heard that c knows the patch
    sid = await a.start_session("calc", [5])
    assert ("patch", "double") in await mesh.kinds("a", sid)  # the session takes the patch
    await mesh.start("c", old)  # rolled back: its code has no such patch
    record = await a.wait(sid, 20)
    print("a journal:", await mesh.kinds("a", sid), "c journal:", await mesh.kinds("c", sid))
    assert not (record.status == S.COMPLETED and a.result_of(record) == 6), "a mixed session completed"


async def test_patched_twice_with_the_same_name_and_in_a_loop(mesh: Mesh) -> None:  # noqa: F811
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


async def test_a_rolling_deploy_of_a_deprecation_does_not_mix_branches(mesh: Mesh) -> None:  # noqa: F811
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
