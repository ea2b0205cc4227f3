"""The primitives and batteries at work: enclaves, multicast, cond, select, fan-out/in, call,
journaled helpers, and the steps a projection produces."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

import pytest

import accompanist as ac
from accompanist.errors import DefinitionError, ProjectionError
from accompanist.interpreters import ProjectedChoreo, project
from accompanist.language.steps import Step, StepKind

Runner = Callable[..., Any]
RUNNERS = {"central": ac.run_central, "projected": ac.testing.run_projected}

A, B, C = ac.roles("a", "b", "c")


@pytest.fixture(params=sorted(RUNNERS))
def run(request: pytest.FixtureRequest) -> Runner:
    """Each test runs under both interpreters."""
    return RUNNERS[request.param]


def chor(body: Callable[..., Any], roles: tuple[ac.Role, ...] = (A, B, C)) -> ac.Choreography:
    """Declare ``body`` as a throwaway choreography over ``roles``."""
    return ac.choreography("t", roles=roles)(body)


def test_multicast_value_is_usable_by_every_owner(run: Runner) -> None:
    async def body(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[list[int]]:
        both = await ch.comm(A, [B, C], x)
        assert both.owners == frozenset({B, C})
        at_b = await ch.locally(B, lambda v: v * 10, both)
        at_c = await ch.locally(C, lambda v: v + 1, both)
        back_b = await ch.comm(B, A, at_b)
        back_c = await ch.comm(C, A, at_c)
        return await ch.locally(A, lambda p, q, orig: [p, q, orig], back_b, back_c, x)

    assert run(chor(body), 4) == [40, 5, 4]


def test_sender_keeps_its_copy_but_does_not_own_the_received_one(run: Runner) -> None:
    async def body(ch: ac.Choreo, x: ac.Located[int]) -> None:
        sent = await ch.comm(A, B, x)
        await ch.locally(A, lambda v: v, sent)

    with pytest.raises(ProjectionError, match="role 'a' cannot open a value located at b"):
        run(chor(body), 1)


def test_broadcast_returns_a_plain_value_everywhere(run: Runner) -> None:
    async def body(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[str]:
        n = await ch.broadcast(A, x)
        # Every role takes the same branch because every role knows n.
        label = "big" if n > 10 else "small"
        at_c = await ch.locally(C, lambda: label)
        return await ch.comm(C, A, at_c)

    assert run(chor(body), 11) == "big"
    assert run(chor(body), 3) == "small"


async def test_enclave_non_members_skip_the_body() -> None:
    ran_at: list[str] = []

    async def inner(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        assert isinstance(ch, ProjectedChoreo)
        ran_at.append(ch.role.name)
        assert ch.census == (A, B)
        at_b = await ch.comm(A, B, x)
        return await ch.locally(B, lambda v: v + 1, at_b)

    async def body(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        out = await ch.enclave([A, B], inner, x)
        return await ch.comm(B, A, out)

    assert await ac.testing.run_projected(chor(body), 1) == 2
    assert sorted(ran_at) == ["a", "b"]  # c never ran it


async def test_enclave_plain_result_is_located_at_members() -> None:
    async def inner(ch: ac.Choreo) -> str:
        return "known to a and c"

    async def body(ch: ac.Choreo) -> ac.Located[str]:
        out = await ch.enclave([C, A], inner)
        assert out.owners == frozenset({A, C})
        return await ch.locally(A, lambda s: s.upper(), out)

    for runner in RUNNERS.values():
        assert await runner(chor(body)) == "KNOWN TO A AND C"


def test_cond_without_among_tells_everyone(run: Runner) -> None:
    async def body(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[str]:
        even = await ch.locally(A, lambda v: v % 2 == 0, x)

        async def branch(ch: ac.Choreo, is_even: bool) -> ac.Located[str]:
            word = await ch.locally(C, lambda: "even" if is_even else "odd")
            return await ch.comm(C, A, word)

        return await ch.cond(A, even, branch)

    assert run(chor(body), 2) == "even"
    assert run(chor(body), 3) == "odd"


async def test_cond_with_among_only_informs_those_roles() -> None:
    ran_at: list[str] = []

    async def body(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[str]:
        big = await ch.locally(A, lambda v: v > 100, x)

        async def branch(ch: ac.Choreo, is_big: bool) -> str:
            if isinstance(ch, ProjectedChoreo):
                ran_at.append(ch.role.name)
            return "review" if is_big else "auto"

        out = await ch.cond(A, big, branch, among=[B])
        assert out.owners == frozenset({A, B})
        return await ch.locally(A, str.upper, out)

    c = chor(body)
    assert await ac.run_central(c, 500) == "REVIEW"
    assert await ac.testing.run_projected(c, 5) == "AUTO"
    assert sorted(ran_at) == ["a", "b"]
    trace = (await ac.CentralRunner(c).run(5)).trace
    assert [(e.kind, e.src, e.dsts) for e in trace if e.dsts] == [("value", "a", ("b",))]


def test_cond_among_result_is_not_known_outside(run: Runner) -> None:
    async def body(ch: ac.Choreo, x: ac.Located[bool]) -> None:
        out = await ch.cond(A, x, lambda ch, v: _const(v), among=[B])
        await ch.locally(C, lambda v: v, out)

    with pytest.raises(ProjectionError, match="role 'c' cannot open a value located at a, b"):
        run(chor(body), True)


async def _const(v: Any) -> Any:
    return v


def test_select_delivers_a_label_the_receiver_acts_on(run: Runner) -> None:
    async def body(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[list[str]]:
        label = await ch.locally(A, lambda v: "refund" if v < 0 else "charge", x)
        told = await ch.select(A, [B, C], label)
        done_b = await ch.locally(B, lambda lab: f"b:{lab}", told)
        done_c = await ch.locally(C, lambda lab: f"c:{lab}", told)
        back_b = await ch.comm(B, A, done_b)
        back_c = await ch.comm(C, A, done_c)
        return await ch.locally(A, lambda p, q: [p, q], back_b, back_c)

    assert run(chor(body), -5) == ["b:refund", "c:refund"]
    assert run(chor(body), 5) == ["b:charge", "c:charge"]


async def test_select_is_a_select_message() -> None:
    async def body(ch: ac.Choreo, x: ac.Located[int]) -> None:
        await ch.select(A, B, x)

    trace = (await ac.CentralRunner(chor(body)).run(1)).trace
    assert [(e.kind, e.src, e.dsts, e.value) for e in trace] == [("select", "a", ("b",), "1")]
    steps = await project_steps(chor(body), 1)
    assert steps["a"] == [Step(0, StepKind.SEND, "b", src="a", dst="b", seq=1, msg_kind="select")]
    assert steps["b"] == [Step(0, StepKind.RECV, "a", src="a", dst="b", seq=1, msg_kind="select")]
    assert steps["c"] == []


def test_fanout_and_fanin(run: Runner) -> None:
    async def square_of_len(ch: ac.Choreo, r: ac.Role) -> ac.Located[int]:
        return await ch.locally(r, lambda: len(r.name) * 7)

    async def body(ch: ac.Choreo) -> ac.Located[dict[str, int]]:
        parts = await ch.fanout([A, B, C], square_of_len)
        assert {r: v.owners for r, v in parts.items()} == {A: {A}, B: {B}, C: {C}}

        async def to_a(ch: ac.Choreo, r: ac.Role) -> ac.Located[int]:
            plus = await ch.locally(r, lambda v: v + ord(r.name), parts[r])
            return plus if r == A else await ch.comm(r, A, plus)

        return await ch.fanin([A, B, C], A, to_a)

    assert run(chor(body)) == {"a": 7 + 97, "b": 7 + 98, "c": 7 + 99}


def test_fanin_to_several_destinations(run: Runner) -> None:
    async def body(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        at_c = await ch.comm(A, C, x)
        gathered = await ch.fanin([C], [A, B], lambda ch, r: ch.comm(C, [A, B], at_c))
        assert gathered.owners == frozenset({A, B})
        total_b = await ch.locally(B, lambda d: sum(d.values()), gathered)
        back = await ch.comm(B, A, total_b)
        return await ch.locally(A, lambda d, t: d["c"] + t, gathered, back)

    assert run(chor(body), 21) == 42


# -- call -------------------------------------------------------------------------------------
Asker, Answerer = ac.roles("asker", "answerer")


@ac.choreography("double", roles=(Asker, Answerer))
async def double(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
    there = await ch.comm(Asker, Answerer, x)
    doubled = await ch.locally(Answerer, lambda v: v * 2, there)
    return await ch.comm(Answerer, Asker, doubled)


def test_call_with_a_role_mapping(run: Runner) -> None:
    async def body(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        once = await ch.call(double, x, roles={Asker: A, Answerer: C})
        at_b = await ch.comm(A, B, once)
        twice = await ch.call(double, at_b, roles={Asker: B, Answerer: A})
        return await ch.comm(B, A, twice)

    assert run(chor(body), 5) == 20


def test_call_matches_roles_by_name_and_nests(run: Runner) -> None:
    async def body(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        return await ch.call(double, x)

    by_name = chor(body, roles=(Asker, Answerer))
    assert run(by_name, 4) == 8

    async def outer(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        # by_name calls double inside; both mappings compose onto a and b.
        return await ch.call(by_name, x, roles={Asker: A, Answerer: B})

    assert run(chor(outer), 4) == 8


def test_call_mapping_mistakes(run: Runner) -> None:
    async def unmapped(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        return await ch.call(double, x)

    with pytest.raises(DefinitionError, match="sub role 'asker' has no role mapped to it"):
        run(chor(unmapped), 1)

    async def collapsed(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        return await ch.call(double, x, roles={Asker: A, Answerer: A})

    with pytest.raises(DefinitionError, match="two sub roles are mapped to the same role"):
        run(chor(collapsed), 1)


# -- journaled helpers ------------------------------------------------------------------------
def test_now_uuid_random_are_located_at_the_role(run: Runner) -> None:
    async def body(ch: ac.Choreo) -> ac.Located[list[Any]]:
        now = await ch.now(B)
        ident = await ch.uuid(B)
        other = await ch.uuid(B)
        draw = await ch.random(B)
        for v in (now, ident, draw):
            assert v.owners == frozenset({B})
        facts = await ch.locally(B, lambda n, i, o, r: [n, i, i != o, r], now, ident, other, draw)
        return await ch.comm(B, A, facts)

    before = dt.datetime.now(dt.UTC)
    now, ident, distinct, draw = run(chor(body))
    assert before <= now <= dt.datetime.now(dt.UTC) and now.tzinfo is not None
    assert isinstance(ident, uuid.UUID) and ident.version == 4 and distinct
    assert isinstance(draw, float) and 0.0 <= draw < 1.0


@pytest.mark.parametrize("helper", ["now", "uuid", "random"])
def test_helper_values_cannot_be_opened_elsewhere(run: Runner, helper: str) -> None:
    async def body(ch: ac.Choreo) -> None:
        value = await getattr(ch, helper)(B)
        await ch.locally(A, lambda v: v, value)

    with pytest.raises(ProjectionError, match="role 'a' cannot open a value located at b"):
        run(chor(body))


# -- projection -------------------------------------------------------------------------------
class _Recorder:
    """A step runner over in-memory queues that records every step it is given."""

    def __init__(self, codec: ac.PayloadCodec, queues: dict[tuple[str, str], asyncio.Queue[bytes]]) -> None:
        self.codec, self.queues, self.steps = codec, queues, list[Step]()

    def _queue(self, step: Step) -> asyncio.Queue[bytes]:
        return self.queues.setdefault((str(step.src), str(step.dst)), asyncio.Queue())

    async def send(self, step: Step, value: Any) -> None:
        self.steps.append(step)
        self._queue(step).put_nowait(self.codec.encode(value))

    async def recv(self, step: Step) -> Any:
        self.steps.append(step)
        return self.codec.decode(await self._queue(step).get())

    async def local(self, step: Step, thunk: Any) -> Any:
        self.steps.append(step)
        return await thunk()


async def project_steps(c: ac.Choreography, *args: Any) -> dict[str, list[Step]]:
    """Run every role's projection and return the steps each one took."""
    queues: dict[tuple[str, str], asyncio.Queue[bytes]] = {}
    recorders = {r.name: _Recorder(c.codec, queues) for r in c.roles}
    await asyncio.gather(*(project(c, r, recorders[r.name], args) for r in c.roles))
    return {name: rec.steps for name, rec in recorders.items()}


async def test_projection_numbers_steps_and_messages() -> None:
    def price(title: str) -> int:
        return 30

    async def body(ch: ac.Choreo, title: ac.Located[str]) -> ac.Located[int]:
        at_b = await ch.comm(A, B, title)
        quote = await ch.locally(B, price, at_b)
        again = await ch.comm(A, B, title)
        await ch.locally(B, len, again)
        return await ch.comm(B, A, quote)

    steps = await project_steps(chor(body), "SICP")
    assert [s.signature for s in steps["a"]] == ["send(a->b#1 value)", "send(a->b#2 value)", "recv(b->a#1 value)"]
    assert [s.signature for s in steps["b"]] == [
        "recv(a->b#1 value)",
        f"local({price.__qualname__})",
        "recv(a->b#2 value)",
        "local(len)",
        "send(b->a#1 value)",
    ]
    assert [s.index for s in steps["b"]] == [0, 1, 2, 3, 4]
    assert steps["c"] == []


async def test_project_rejects_an_unknown_role() -> None:
    with pytest.raises(DefinitionError, match="has no role 'stranger' \\(roles: a, b, c\\)"):
        await project(chor(_noop_body), ac.Role("stranger"), _Recorder(ac.PayloadCodec(), {}))


async def _noop_body(ch: ac.Choreo) -> None:
    return None


# -- running ----------------------------------------------------------------------------------
async def test_runners_are_awaitable_inside_an_event_loop() -> None:
    async def body(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        return await ch.locally(A, lambda v: v + 1, x)

    c = chor(body)
    assert await ac.run_central(c, 1) == 2
    assert await ac.testing.run_projected(c, 1) == 2
    run = await ac.CentralRunner(c).run(1)
    assert run.result == 2
    assert [(e.kind, e.src, e.value) for e in run.trace] == [("local", "a", "2")]


def test_run_projected_times_out_a_stuck_role() -> None:
    async def body(ch: ac.Choreo) -> None:
        await ch.locally(B, asyncio.sleep, await ch.locally(B, lambda: 5))

    with pytest.raises(TimeoutError):
        ac.testing.run_projected(chor(body), timeout=0.05)


def test_plain_return_values_are_the_result(run: Runner) -> None:
    async def body(ch: ac.Choreo) -> dict[str, int]:
        return {"everyone": 1}

    assert run(chor(body)) == {"everyone": 1}
