"""Definition mistakes and located-value mistakes: caught early, with messages a user can act on.

Where a mistake can only show while the choreography runs, both interpreters must report it
with the same error type, so a test against ``run_central`` predicts a sidecar's behaviour.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import accompanist as ac
from accompanist.errors import DefinitionError, ProjectionError

Runner = Callable[..., Any]
RUNNERS = {"central": ac.run_central, "projected": ac.testing.run_projected}

A, B, C = ac.roles("a", "b", "c")
Stranger = ac.Role("stranger")


@pytest.fixture(params=sorted(RUNNERS))
def run(request: pytest.FixtureRequest) -> Runner:
    """Each runtime test runs under both interpreters."""
    return RUNNERS[request.param]


def chor(body: Callable[..., Any], roles: tuple[ac.Role, ...] = (A, B, C)) -> ac.Choreography:
    """Declare ``body`` as a throwaway choreography over ``roles``."""
    return ac.choreography("t", roles=roles)(body)


# -- roles ------------------------------------------------------------------------------------
def test_roles_are_values() -> None:
    buyer, seller = ac.roles("buyer", "seller")
    assert buyer == ac.Role("buyer") and buyer != seller
    assert str(buyer) == "buyer" and repr(buyer) == "Role('buyer')"
    assert len({buyer, ac.Role("buyer"), seller}) == 2


def test_duplicate_role_names_in_roles() -> None:
    with pytest.raises(DefinitionError, match="duplicate role name 'a'"):
        ac.roles("a", "b", "a")


def test_roles_needs_a_name() -> None:
    with pytest.raises(DefinitionError, match="at least one"):
        ac.roles()


@pytest.mark.parametrize("name", ["Buyer", "1st", "", "has space", "x" * 64, "café", "_a"])
def test_invalid_role_names(name: str) -> None:
    with pytest.raises(DefinitionError, match="invalid role name"):
        ac.Role(name)


def test_role_name_limits_accepted() -> None:
    assert ac.Role("a" * 63).name == "a" * 63
    assert ac.Role("bank_a-2").name == "bank_a-2"


# -- declaring a choreography -----------------------------------------------------------------
async def _noop(ch: ac.Choreo) -> None:
    return None


def test_duplicate_roles_in_declaration() -> None:
    with pytest.raises(DefinitionError, match="duplicate role\\(s\\) a"):
        ac.choreography("t", roles=(A, B, ac.Role("a")))


def test_declaration_needs_role_values() -> None:
    with pytest.raises(DefinitionError, match="needs at least one role"):
        ac.choreography("t", roles=())
    with pytest.raises(DefinitionError, match="must hold Role values, got 'a'"):
        ac.choreography("t", roles=("a",))


@pytest.mark.parametrize("name", ["", "1abc", "has space", "x" * 129, "a/b", None])
def test_bad_choreography_names(name: Any) -> None:
    with pytest.raises(DefinitionError, match="invalid choreography name"):
        ac.choreography(name, roles=(A,))


@pytest.mark.parametrize("version", [0, -1, True, "1", 1.5])
def test_bad_versions(version: Any) -> None:
    with pytest.raises(DefinitionError, match="version must be a positive integer"):
        ac.choreography("t", roles=(A,), version=version)


def test_sync_choreography_is_rejected() -> None:
    def body(ch: ac.Choreo) -> None:
        return None

    with pytest.raises(DefinitionError, match="must be an 'async def' function"):
        ac.choreography("t", roles=(A,))(body)


def test_choreography_must_take_the_choreo() -> None:
    async def body() -> None:
        return None

    with pytest.raises(DefinitionError, match="first parameter"):
        ac.choreography("t", roles=(A,))(body)


def test_choreography_metadata() -> None:
    async def body(ch: ac.Choreo, x: Any, y: Any, *, option: int = 0) -> None:
        return None

    c = ac.choreography("orders.v2", roles=(B, A), version=3)(body)
    assert (c.name, c.version, c.roles, c.initiator, c.arity) == ("orders.v2", 3, (B, A), B, 2)
    assert c.role("a") is A
    with pytest.raises(DefinitionError, match="has no role 'z'"):
        c.role("z")


def test_wrong_argument_count(run: Runner) -> None:
    async def body(ch: ac.Choreo, x: ac.Located[int]) -> None:
        return None

    c = chor(body)
    with pytest.raises(DefinitionError, match="takes 1 argument\\(s\\), got 2"):
        run(c, 1, 2)
    with pytest.raises(DefinitionError, match="takes 1 argument\\(s\\), got 0"):
        run(c)


# -- mistakes found while running ------------------------------------------------------------
def test_role_not_in_declaration(run: Runner) -> None:
    async def body(ch: ac.Choreo) -> None:
        await ch.locally(Stranger, lambda: 1)

    with pytest.raises(DefinitionError, match="role 'stranger' is not in the census \\(a, b, c\\)"):
        run(chor(body))


def test_comm_to_itself(run: Runner) -> None:
    async def body(ch: ac.Choreo) -> None:
        x = await ch.locally(A, lambda: 1)
        await ch.comm(A, [B, A], x)

    with pytest.raises(DefinitionError, match="role 'a' cannot send to itself"):
        run(chor(body))


def test_comm_needs_role_values(run: Runner) -> None:
    async def body(ch: ac.Choreo) -> None:
        x = await ch.locally(A, lambda: 1)
        await ch.comm(A, "b", x)

    with pytest.raises(DefinitionError, match="expected a Role, got 'b'"):
        run(chor(body))


def test_plain_values_are_not_communicated(run: Runner) -> None:
    async def body(ch: ac.Choreo) -> None:
        await ch.comm(A, B, 42)

    with pytest.raises(DefinitionError, match="expected a Located value, got int"):
        run(chor(body))


@pytest.mark.parametrize(
    ("members", "message"),
    [([A, Stranger], "not in the census"), ([], "needs at least one role"), ([A, B, A], "listed twice")],
)
def test_enclave_role_mistakes(run: Runner, members: list[ac.Role], message: str) -> None:
    async def inner(ch: ac.Choreo) -> None:
        return None

    async def body(ch: ac.Choreo) -> None:
        await ch.enclave(members, inner)

    with pytest.raises(DefinitionError, match=message):
        run(chor(body))


def test_enclave_roles_outside_it_are_unknown_inside(run: Runner) -> None:
    async def inner(ch: ac.Choreo) -> None:
        await ch.locally(C, lambda: 1)

    async def body(ch: ac.Choreo) -> None:
        await ch.enclave([A, B], inner)

    with pytest.raises(DefinitionError, match="role 'c' is not in the census \\(a, b\\)"):
        run(chor(body))


def test_enclave_body_must_be_async(run: Runner) -> None:
    def inner(ch: ac.Choreo) -> None:
        return None

    async def body(ch: ac.Choreo) -> None:
        await ch.enclave([A, B], inner)

    with pytest.raises(DefinitionError, match="must be an 'async def' function"):
        run(chor(body))


def test_enclave_cannot_return_a_value_located_outside_it(run: Runner) -> None:
    async def inner(ch: ac.Choreo, v: ac.Located[int]) -> ac.Located[int]:
        return v

    async def body(ch: ac.Choreo) -> None:
        at_c = await ch.locally(C, lambda: 1)
        # c skips the enclave and cannot tell; only if it used `out` afterwards would it fail
        # too (with a ProjectionError), racing the members' DefinitionError.
        await ch.enclave([A, B], inner, at_c)

    with pytest.raises(DefinitionError, match="located at c, outside the roles that ran it \\(a, b\\)"):
        run(chor(body))


# -- located values ---------------------------------------------------------------------------
def test_opening_at_a_non_owner_names_role_owners_and_operation(run: Runner) -> None:
    def price_of(title: str) -> int:
        return len(title)

    async def body(ch: ac.Choreo, title: ac.Located[str]) -> None:
        await ch.locally(B, price_of, title)

    with pytest.raises(ProjectionError) as info:
        run(chor(body), "SICP")
    err = info.value
    assert (err.role, err.owners) == ("b", ("a",))
    assert err.operation == f"locally({price_of.__qualname__})"
    assert str(err) == f"locally({price_of.__qualname__}): role 'b' cannot open a value located at a"


def test_sending_what_you_do_not_own(run: Runner) -> None:
    async def body(ch: ac.Choreo, x: ac.Located[int]) -> None:
        await ch.comm(B, C, x)

    with pytest.raises(ProjectionError, match="comm: role 'b' cannot open a value located at a") as info:
        run(chor(body), 1)
    assert info.value.operation == "comm"


def test_broadcasting_what_you_do_not_own(run: Runner) -> None:
    async def body(ch: ac.Choreo, x: ac.Located[int]) -> None:
        await ch.broadcast(C, x)

    with pytest.raises(ProjectionError, match="role 'c' cannot open a value located at a"):
        run(chor(body), 1)


def test_the_result_must_be_located_at_the_initiator(run: Runner) -> None:
    async def body(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        return await ch.comm(A, B, x)

    with pytest.raises(ProjectionError, match="session result: role 'a' cannot open a value located at b"):
        run(chor(body), 1)


def test_a_located_value_cannot_decide_a_branch(run: Runner) -> None:
    async def body(ch: ac.Choreo, x: ac.Located[bool]) -> int:
        if x:  # the mistake: only a knows x
            return 1
        return 0

    with pytest.raises(ProjectionError, match="bool\\(\\).*ch.broadcast") as info:
        run(chor(body), True)
    assert info.value.owners == ("a",)


def test_fanin_results_must_be_located_at_the_destination(run: Runner) -> None:
    async def body(ch: ac.Choreo) -> None:
        # The mistake: each part stays at its own role instead of being sent to a.
        await ch.fanin([B, C], A, lambda ch, r: ch.locally(r, lambda: 1))

    with pytest.raises(ProjectionError, match="fanin: role 'a' cannot open a value located at b") as info:
        run(chor(body))
    assert "for role 'b' must be located at the destination" in str(info.value)


async def test_located_is_opaque() -> None:
    seen: list[ac.Located[Any]] = []

    async def body(ch: ac.Choreo, x: ac.Located[int]) -> None:
        seen.append(await ch.comm(A, [B, C], x))

    await ac.run_central(chor(body), 5)
    (loc,) = seen
    assert {n for n in dir(loc) if not n.startswith("_")} == {"owners"}
    assert not hasattr(loc, "value")
    assert loc.owners == frozenset({B, C})
    assert repr(loc) == "Located(at b,c)"
    with pytest.raises(ProjectionError):
        bool(loc)
    with pytest.raises(TypeError, match="created by the choreography primitives"):
        ac.Located([A], 1)


def test_errors_from_local_code_propagate_unchanged(run: Runner) -> None:
    def explode(x: int) -> int:
        raise ValueError(f"bad input {x}")

    async def body(ch: ac.Choreo, x: ac.Located[int]) -> None:
        at_b = await ch.comm(A, B, x)
        await ch.locally(B, explode, at_b)

    with pytest.raises(ValueError, match="bad input 7"):
        run(chor(body), 7)
