"""Which roles must be started by the initiator because nothing would ever start them.

Roles start lazily, when the first envelope of a session reaches them. A role whose part
begins with a send, a local step or a transaction (it *speaks first*) would never start, while
both interpreters run it. Its first step cannot depend on anything it received (it received
nothing yet) nor on the initiator's arguments (they live at the initiator), so running its
projection until its first step, with a runner that stops there, tells once per choreography
whether it must be started: the initiator then sends it a ``start`` envelope with the first
write of every session.
"""

from __future__ import annotations

import asyncio
from typing import Any, NoReturn

from accompanist.interpreters.projected import project
from accompanist.language.choreo import LocalThunk
from accompanist.language.choreography import Choreography
from accompanist.language.steps import Step, StepKind
from accompanist.language.transaction import Transaction

__all__ = ["eager_roles"]

_PROBE_TIMEOUT = 2.0


class _FirstStep(Exception):  # noqa: N818 - a signal
    def __init__(self, kind: StepKind) -> None:
        self.kind = kind
        super().__init__(str(kind))


class _StopAtFirstStep:
    """A step runner that stops the projection at its first step and says what it was."""

    def _stop(self, step: Step) -> NoReturn:
        raise _FirstStep(step.kind)

    async def send(self, step: Step, value: Any) -> None:
        self._stop(step)

    async def recv(self, step: Step) -> Any:
        self._stop(step)

    async def local(self, step: Step, thunk: LocalThunk) -> Any:
        self._stop(step)

    async def transaction(self, step: Step, tx: Transaction, args: list[Any]) -> Any:
        self._stop(step)


async def _first_step(choreography: Choreography, role_name: str) -> StepKind | None:
    """The kind of ``role``'s first step, or None when its part has no step at all."""
    role = choreography.role(role_name)
    args = [None] * choreography.arity
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT):
            await project(choreography, role, _StopAtFirstStep(), args)
    except _FirstStep as first:
        return first.kind
    return None


async def eager_roles(choreography: Choreography) -> tuple[str, ...]:
    """The non-initiator roles of ``choreography`` whose part does not begin with a receive.

    A probe that fails (the code raises before the role's first step, or waits on something
    else) counts as eager: starting a role that did not need it costs one envelope, missing
    one loses its part of the session.
    """
    eager: list[str] = []
    for role in choreography.roles[1:]:
        try:
            kind = await _first_step(choreography, role.name)
        except Exception:
            kind = StepKind.LOCAL
        if kind is not None and kind is not StepKind.RECV:
            eager.append(role.name)
    return tuple(eager)
