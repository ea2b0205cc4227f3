"""The projected interpreter: one role's part of a choreography, as numbered local steps."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from accompanist.errors import DefinitionError
from accompanist.interpreters.common import check_args, initiator_args
from accompanist.language.choreo import Choreo, LocalThunk
from accompanist.language.choreography import Choreography
from accompanist.language.located import ABSENT, Located, make_located
from accompanist.language.roles import Role
from accompanist.language.steps import Step, StepKind
from accompanist.language.timers import DeadlineOf
from accompanist.language.transaction import Transaction

__all__ = ["PatchRunner", "ProjectedChoreo", "StepRunner", "TimerRunner", "project"]


class StepRunner(Protocol):
    """Carries out one role's steps. The session engine implements it (with journaling and
    replay in fault-tolerant mode); tests implement it over in-memory queues."""

    async def send(self, step: Step, value: Any) -> None:
        """Send ``value`` as the message ``step.src -> step.dst #step.seq``."""

    async def recv(self, step: Step) -> Any:
        """Return the value of the message ``step.src -> step.dst #step.seq``."""

    async def local(self, step: Step, thunk: LocalThunk) -> Any:
        """Run (or, on replay, recall) a local step."""

    async def transaction(self, step: Step, tx: Transaction, args: list[Any]) -> Any:
        """Commit (or, on replay, recall) a saga transaction."""


class TimerRunner(Protocol):
    """What a :class:`StepRunner` may add to carry out durable timers itself (the session
    engine does: it parks a sleeping session and cancels a session past its saga deadline).
    A runner without these methods journals the step with ``local`` and sleeps in place."""

    async def sleep(self, step: Step, deadline_of: DeadlineOf) -> None:
        """Journal (or, on replay, recall) the deadline, then wait until it."""

    async def cancel_at(self, step: Step, deadline_of: DeadlineOf, reason: str) -> None:
        """Journal (or recall) the saga deadline and arm the cancel."""


class PatchRunner(Protocol):
    """A :class:`StepRunner` that also decides ``ch.patched`` (the session engine does; see
    :mod:`accompanist.language.patches`)."""

    def patch(self, index: int, name: str, *, deprecated: bool) -> bool:
        """Whether the step at ``index`` is the marker of patch ``name`` (taken: the session
        runs the new branch; for a deprecated patch, only a replayed marker is taken)."""


class _Projection:
    """State shared by every view of one role's run: step counter and sequence numbers."""

    def __init__(self, role: Role, runner: StepRunner, initiator: Role | None = None) -> None:
        self.role = role
        self.initiator = initiator
        self.runner = runner
        self.steps = 0
        self.seqs: dict[tuple[str, str], int] = {}

    def step(self, kind: StepKind, name: str, **message: Any) -> Step:
        step = Step(self.steps, kind, name, **message)
        self.steps += 1
        return step

    def next_seq(self, src: Role, dst: Role) -> int:
        key = (src.name, dst.name)
        seq = self.seqs.get(key, 0) + 1
        self.seqs[key] = seq
        return seq


class ProjectedChoreo(Choreo):
    """Runs one role: its local steps run, its messages go to a :class:`StepRunner`, and
    everything that concerns only other roles is skipped."""

    def __init__(self, projection: _Projection, census: Sequence[Role], mapping: Mapping[Role, Role] | None = None):
        super().__init__(census, mapping)
        self._p = projection

    @property
    def role(self) -> Role:
        """The role this interpreter plays."""
        return self._p.role

    def _here(self, role: Role) -> bool:
        return role == self._p.role

    def _derive(self, census: Sequence[Role], mapping: Mapping[Role, Role]) -> Choreo:
        return ProjectedChoreo(self._p, census, mapping)

    async def _run_local(self, role: Role, kind: StepKind, name: str, thunk: LocalThunk) -> Any:
        return await self._p.runner.local(self._p.step(kind, name), thunk)

    def _patch(self, name: str, *, deprecated: bool) -> bool:
        """Ask the runner (see :class:`PatchRunner`) whether the session takes the patch here;
        a taken one is a marker step. A runner that does not say runs new code."""
        decide = getattr(self._p.runner, "patch", None)
        index = self._p.steps
        take = decide(index, name, deprecated=deprecated) if decide is not None else not deprecated
        if take:
            self._p.step(StepKind.PATCH, name)
        return bool(take)

    async def _run_tx(self, role: Role, tx: Transaction, args: list[Any]) -> Any:
        return await self._p.runner.transaction(self._p.step(StepKind.TX, tx.name), tx, args)

    def _session_initiator(self) -> Role:
        return self._p.initiator or super()._session_initiator()

    async def _wait_until(self, role: Role, name: str, deadline_of: DeadlineOf) -> None:
        runner = self._p.runner
        step = self._p.step(StepKind.SLEEP, name)
        sleep = getattr(runner, "sleep", None)
        if sleep is not None:
            await sleep(step, deadline_of)
            return

        async def thunk() -> float:
            return deadline_of(self._clock())

        deadline = await runner.local(step, thunk)
        await asyncio.sleep(max(0.0, float(deadline) - self._clock()))

    async def _cancel_at(self, role: Role, deadline_of: DeadlineOf, reason: str) -> None:
        runner = self._p.runner
        step = self._p.step(StepKind.DEADLINE, "cancel_after")
        arm = getattr(runner, "cancel_at", None)
        if arm is not None:
            await arm(step, deadline_of, reason)
            return

        async def thunk() -> float:
            return deadline_of(self._clock())

        await runner.local(step, thunk)  # journaled; a runner without sessions has none to cancel

    async def _transfer(self, src: Role, dsts: tuple[Role, ...], value: Located[Any], msg_kind: str) -> Located[Any]:
        me = self._p.role
        if me == src:
            opened = value._open(src, "comm" if msg_kind == "value" else msg_kind)
            for d in dsts:
                seq = self._p.next_seq(src, d)
                step = self._p.step(StepKind.SEND, d.name, src=src.name, dst=d.name, seq=seq, msg_kind=msg_kind)
                await self._p.runner.send(step, opened)
            return make_located(dsts, ABSENT)
        if me in dsts:
            seq = self._p.next_seq(src, me)
            step = self._p.step(StepKind.RECV, src.name, src=src.name, dst=me.name, seq=seq, msg_kind=msg_kind)
            return make_located(dsts, await self._p.runner.recv(step))
        return make_located(dsts, ABSENT)


async def project(choreography: Choreography, role: Role, runner: StepRunner, args: Sequence[Any] = ()) -> Any:
    """Run ``role``'s projection of ``choreography`` and return what its body returned.

    ``args`` are the plain arguments; they matter only at the initiator.

    Raises:
        DefinitionError: wrong argument count (at the initiator) or a badly written choreography.
    """
    if role not in choreography.roles:
        names = ", ".join(r.name for r in choreography.roles)
        raise DefinitionError(f"choreography {choreography.name!r} has no role '{role.name}' (roles: {names})")
    if role == choreography.initiator:
        check_args(choreography, args)
        located = initiator_args(choreography, role, args)
    else:
        located = initiator_args(choreography, role, [None] * choreography.arity)
    ch = ProjectedChoreo(_Projection(role, runner, choreography.initiator), choreography.roles)
    return await choreography.fn(ch, *located)
