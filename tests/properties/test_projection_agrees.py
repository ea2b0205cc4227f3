"""Property: on random choreographies, every role's projection together computes exactly what
the central interpreter computes, and fails with exactly the same error when the program is
wrong.

Hypothesis builds a small program over 2-4 roles (a tree of operations: local arithmetic,
comm and multicast, broadcast + if, cond with and without ``among``, enclaves of random
subsets, select, fanin, a sub-choreography call, journaled helpers, and now and then one
mistake), turns it into an ``async def`` body, and runs it under both interpreters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import accompanist as ac

M = 1_000_003  # keeps numbers small however long the program


# -- the program AST ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Local:
    role: int
    op: str
    k: int


@dataclass(frozen=True)
class Comm:
    src: int
    dsts: tuple[int, ...]


@dataclass(frozen=True)
class Select:
    src: int
    dsts: tuple[int, ...]


@dataclass(frozen=True)
class Branch:
    """``broadcast`` a parity, then an ordinary Python ``if`` on the plain value."""

    src: int
    then: tuple[Any, ...]
    orelse: tuple[Any, ...]


@dataclass(frozen=True)
class Cond:
    src: int
    among: tuple[int, ...] | None
    then: tuple[Any, ...]
    orelse: tuple[Any, ...]


@dataclass(frozen=True)
class Enclave:
    members: tuple[int, ...]
    body: tuple[Any, ...]


@dataclass(frozen=True)
class Fanin:
    srcs: tuple[int, ...]
    dst: int


@dataclass(frozen=True)
class Call:
    boss: int
    helper: int


@dataclass(frozen=True)
class Helper:
    role: int
    kind: str  # now | uuid | random


@dataclass(frozen=True)
class Mistake:
    kind: str
    role: int
    other: int


# -- strategies ---------------------------------------------------------------------------------
def subsets(census: tuple[int, ...], min_size: int = 1) -> st.SearchStrategy[tuple[int, ...]]:
    return st.lists(st.sampled_from(census), min_size=min_size, max_size=len(census), unique=True).map(tuple)


@st.composite
def operation(draw: st.DrawFn, census: tuple[int, ...], depth: int) -> Any:
    kinds = ["local", "local", "fanin", "helper"]
    if len(census) >= 2:
        kinds += ["comm", "comm", "select", "call"]
    if depth > 0:
        kinds += ["branch", "cond", "enclave"]
    kind = draw(st.sampled_from(kinds))
    role = draw(st.sampled_from(census))
    others = tuple(r for r in census if r != role)
    if kind == "local":
        return Local(role, draw(st.sampled_from(["add", "mul", "sub", "neg", "mod"])), draw(st.integers(-50, 50)))
    if kind == "comm":
        return Comm(role, draw(subsets(others)))
    if kind == "select":
        return Select(role, draw(subsets(others)))
    if kind == "fanin":
        return Fanin(draw(subsets(census)), role)
    if kind == "call":
        return Call(role, draw(st.sampled_from(others)))
    if kind == "helper":
        return Helper(role, draw(st.sampled_from(["now", "uuid", "random"])))
    if kind == "branch":
        return Branch(role, draw(program(census, depth - 1)), draw(program(census, depth - 1)))
    if kind == "cond":
        among = draw(st.none() | subsets(census))
        inner = census if among is None else tuple(dict.fromkeys((role, *among)))
        return Cond(role, among, draw(program(inner, depth - 1)), draw(program(inner, depth - 1)))
    members = draw(subsets(census))
    return Enclave(members, draw(program(members, depth - 1)))


def program(census: tuple[int, ...], depth: int) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.lists(operation(census, depth), max_size=5).map(tuple)


MISTAKES = ["wrong_owner", "self_comm", "outside_census", "fanin_not_at_dst", "located_if", "enclave_escape"]


@st.composite
def choreographies(draw: st.DrawFn) -> tuple[int, tuple[Any, ...]]:
    n = draw(st.integers(2, 4))
    census = tuple(range(n))
    ops = list(draw(program(census, depth=2)))
    # Most programs are correct; the rest make one mistake somewhere at the top level.
    mistake = draw(st.sampled_from([None] * len(MISTAKES) + MISTAKES))
    if mistake is not None:
        a, b = draw(st.permutations(census))[:2]
        ops.insert(draw(st.integers(0, len(ops))), Mistake(mistake, a, b))
    return n, tuple(ops)


# -- the interpreter of the AST (itself a choreography body) ----------------------------------
def apply(op: str, k: int) -> Any:
    def local_op(a: int) -> int:
        result = {"add": a + k, "mul": a * k, "sub": a - k, "neg": -a, "mod": a % (abs(k) + 1)}[op]
        return result % M

    return local_op


def absorb(a: int, b: int) -> int:
    return (a + 2 * b + 1) % M


def parity(a: int) -> bool:
    return a % 2 == 0


def label_of(a: int) -> str:
    return "even" if a % 2 == 0 else "odd-" + str(a % 7)


def absorb_label(a: int, label: str) -> int:
    return (a * 3 + len(label)) % M


def absorb_all(a: int, gathered: dict[str, int]) -> int:
    return (a + sum((i + 1) * gathered[name] for i, name in enumerate(sorted(gathered)))) % M


def tick(a: int, helper_value: Any) -> int:
    return (a + 1 + (helper_value is not None)) % M


P, Q = ac.roles("p", "q")


def _triple_plus_one(v: int) -> int:
    return (3 * v + 1) % M


@ac.choreography("ping", roles=(P, Q))
async def ping(ch: ac.Choreo, v: ac.Located[int]) -> ac.Located[int]:
    at_q = await ch.comm(P, Q, v)
    done = await ch.locally(Q, _triple_plus_one, at_q)
    return await ch.comm(Q, P, done)


async def run_ops(ch: ac.Choreo, roles: Sequence[ac.Role], ops: tuple[Any, ...], acc: dict[int, Any]) -> None:
    for op in ops:
        await run_op(ch, roles, op, acc)


async def run_op(ch: ac.Choreo, roles: Sequence[ac.Role], op: Any, acc: dict[int, Any]) -> None:
    match op:
        case Local(role, name, k):
            acc[role] = await ch.locally(roles[role], apply(name, k), acc[role])
        case Comm(src, dsts):
            sent = await ch.comm(roles[src], [roles[d] for d in dsts], acc[src])
            for d in dsts:
                acc[d] = await ch.locally(roles[d], absorb, acc[d], sent)
        case Select(src, dsts):
            label = await ch.locally(roles[src], label_of, acc[src])
            told = await ch.select(roles[src], [roles[d] for d in dsts], label)
            for d in dsts:
                acc[d] = await ch.locally(roles[d], absorb_label, acc[d], told)
        case Fanin(srcs, dst):

            async def to_dst(ch: ac.Choreo, r: ac.Role) -> Any:
                i = roles.index(r)
                return acc[i] if i == dst else await ch.comm(r, roles[dst], acc[i])

            gathered = await ch.fanin([roles[s] for s in srcs], roles[dst], to_dst)
            acc[dst] = await ch.locally(roles[dst], absorb_all, acc[dst], gathered)
        case Call(boss, helper):
            acc[boss] = await ch.call(ping, acc[boss], roles={P: roles[boss], Q: roles[helper]})
        case Helper(role, kind):
            value = await getattr(ch, kind)(roles[role])
            acc[role] = await ch.locally(roles[role], tick, acc[role], value)
        case Branch(src, then, orelse):
            even = await ch.broadcast(roles[src], await ch.locally(roles[src], parity, acc[src]))
            await run_ops(ch, roles, then if even else orelse, acc)
        case Cond(src, among, then, orelse):
            flag = await ch.locally(roles[src], parity, acc[src])

            async def branch(ch: ac.Choreo, even: bool) -> None:
                await run_ops(ch, roles, then if even else orelse, acc)

            await ch.cond(roles[src], flag, branch, among=None if among is None else [roles[a] for a in among])
        case Enclave(members, body):

            async def inner(ch: ac.Choreo) -> None:
                await run_ops(ch, roles, body, acc)

            await ch.enclave([roles[m] for m in members], inner)
        case Mistake(kind, a, b):
            await make_mistake(ch, roles, kind, a, b, acc)
        case _:  # pragma: no cover
            raise AssertionError(op)


async def make_mistake(ch: ac.Choreo, roles: Sequence[ac.Role], kind: str, a: int, b: int, acc: dict[int, Any]) -> None:
    if kind == "wrong_owner":
        await ch.locally(roles[a], apply("add", 1), acc[b])
    elif kind == "self_comm":
        await ch.comm(roles[a], [roles[b], roles[a]], acc[a])
    elif kind == "outside_census":

        async def inner(ch: ac.Choreo) -> None:
            await ch.locally(roles[b], apply("neg", 0))

        await ch.enclave([roles[a]], inner)
    elif kind == "fanin_not_at_dst":
        await ch.fanin([roles[b]], roles[a], lambda ch, r: _as_awaitable(acc[b]))
    elif kind == "located_if" and acc[a]:  # pragma: no branch - bool() raises
        raise AssertionError("bool() of a Located value must raise")
    elif kind == "enclave_escape":
        # b never runs the enclave, so it could not know the value comes back to it.

        async def escape(ch: ac.Choreo) -> Any:
            return acc[b]

        acc[b] = await ch.enclave([roles[a]], escape)


async def _as_awaitable(value: Any) -> Any:
    return value


def build(n: int, ops: tuple[Any, ...]) -> ac.Choreography:
    roles = ac.roles(*(f"r{i}" for i in range(n)))

    async def body(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[dict[str, int]]:
        acc: dict[int, Any] = {0: x}  # one accumulator per role, located at that role
        for i in range(1, n):
            acc[i] = await ch.locally(roles[i], apply("add", 10 * i), await ch.locally(roles[i], _zero))
        await run_ops(ch, roles, ops, acc)

        async def home(ch: ac.Choreo, r: ac.Role) -> Any:
            i = roles.index(r)
            return acc[i] if i == 0 else await ch.comm(r, roles[0], acc[i])

        return await ch.fanin(roles, roles[0], home)

    return ac.choreography("random-program", roles=roles)(body)


def _zero() -> int:
    return 0


def outcome(run: Any, c: ac.Choreography, x: int) -> tuple[str, Any]:
    """The result, or the error's type and the facts both interpreters must agree on."""
    try:
        return "ok", run(c, x)
    except ac.ProjectionError as exc:
        # Not the owners: a role that skipped an enclave or call only knows that its result
        # lives somewhere among the roles that ran it, so it may name more owners.
        return "ProjectionError", (exc.role, exc.operation)
    except ac.AccompanistError as exc:
        return type(exc).__name__, str(exc)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(choreographies(), st.integers(-(10**6), 10**6))
def test_projected_run_equals_central_run(shape: tuple[int, tuple[Any, ...]], x: int) -> None:
    n, ops = shape
    c = build(n, ops)
    central = outcome(ac.run_central, c, x)
    projected = outcome(lambda c, x: ac.testing.run_projected(c, x, timeout=10), c, x)
    event(f"outcome: {central[0]}")
    for kind in sorted(_kinds(ops)):
        event(f"uses {kind}")
    if any(isinstance(op, Mistake) and op.kind == "enclave_escape" for op in ops):
        # Only the enclave's members detect this mistake; a role outside it goes on with a
        # value it cannot have and fails on its own. Which failure is reported first is a race.
        assert central[0] == "DefinitionError" and projected[0] in ("DefinitionError", "ProjectionError")
        return
    assert projected == central
    # A correct program runs; a mistake always fails.
    assert (central[0] == "ok") == (not any(isinstance(op, Mistake) for op in ops)), central


def _kinds(ops: tuple[Any, ...]) -> set[str]:
    found: set[str] = set()
    for op in ops:
        found.add(type(op).__name__ + (f"({op.kind})" if isinstance(op, Mistake) else ""))
        if isinstance(op, Cond) and op.among is not None:
            found.add("Cond(among)")
        for nested in ("then", "orelse", "body"):
            found |= _kinds(getattr(op, nested, ()))
    return found
