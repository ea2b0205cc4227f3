"""The central interpreter: every role in one process, the reference semantics."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from accompanist.errors import SessionCancelledError
from accompanist.ids import new_session_id
from accompanist.interpreters.common import SagaLog, check_args, initiator_args, maybe_sync, session_result
from accompanist.language.choreo import Choreo, LocalThunk
from accompanist.language.choreography import App, Choreography
from accompanist.language.located import Located, make_located
from accompanist.language.patches import check_patch_found
from accompanist.language.roles import Role
from accompanist.language.steps import StepKind
from accompanist.language.timers import DeadlineOf
from accompanist.language.transaction import Transaction

__all__ = ["CentralRun", "CentralRunner", "TraceEvent", "run_central"]


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One event of a central run, for diagrams: a local step or a message.

    Attributes:
        kind: ``local``, ``now``/``uuid``/``random``, or the message kind (``value``/``select``).
        src: the role acting (or sending).
        dsts: the receivers of a message (empty for a local step).
        name: the local function's name.
        value: a short text form of the value (for the diagram only).
    """

    kind: str
    src: str
    dsts: tuple[str, ...]
    name: str
    value: str


@dataclass
class CentralRun:
    """The outcome of a central run: the result and every event in order."""

    result: Any = None
    trace: list[TraceEvent] = field(default_factory=list)


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class _CentralState:
    choreography: Choreography
    run: CentralRun
    saga: SagaLog = field(default_factory=lambda: SagaLog(new_session_id()))
    steps: dict[str, int] = field(default_factory=dict)
    body: asyncio.Future[Any] | None = None  # the choreography's body, cancelled by a saga deadline
    deadline: asyncio.TimerHandle | None = None
    cancelled: str | None = None  # why the saga deadline cancelled the body

    def expire(self, reason: str) -> None:
        """The saga deadline passed before the body ended: cancel it (the runner compensates)."""
        if self.body is not None and not self.body.done() and self.cancelled is None:
            self.cancelled = reason
            self.body.cancel()

    def step(self, role: Role) -> int:
        """The next step index at ``role``, counted as that role's projection counts them."""
        index = self.steps.get(role.name, 0)
        self.steps[role.name] = index + 1
        return index


class CentralChoreo(Choreo):
    """Runs every role: local steps run in place, messages go through the codec and back."""

    def __init__(self, state: _CentralState, census: Sequence[Role], mapping: Mapping[Role, Role] | None = None):
        super().__init__(census, mapping)
        self._state = state

    def _here(self, role: Role) -> bool:
        return True

    def _derive(self, census: Sequence[Role], mapping: Mapping[Role, Role]) -> Choreo:
        return CentralChoreo(self._state, census, mapping)

    def _session_initiator(self) -> Role:
        return self._state.choreography.initiator

    async def _cancel_at(self, role: Role, deadline_of: DeadlineOf, reason: str) -> None:
        """Journal the deadline as a step and arm a loop timer that cancels the body."""
        await super()._cancel_at(role, deadline_of, reason)
        state = self._state
        loop = asyncio.get_running_loop()
        delay = max(0.0, deadline_of(self._clock()) - self._clock())
        if state.deadline is not None:
            state.deadline.cancel()
        state.deadline = loop.call_later(delay, state.expire, reason)

    def _failing_at(self, role: Role, step: int) -> None:
        if self._state.saga.failed_at is None:
            self._state.saga.failed_at = (role.name, step)

    async def _run_local(self, role: Role, kind: StepKind, name: str, thunk: LocalThunk) -> Any:
        step = self._state.step(role)
        try:
            value = await thunk()
        except Exception:
            self._failing_at(role, step)
            raise
        self._state.run.trace.append(TraceEvent(str(kind), role.name, (), name, _short(value)))
        return value

    def _patch(self, name: str, *, deprecated: bool) -> bool:
        """New code: a patch is taken, a marker step at every role running this body (as each
        role's projection counts it in a new session); a deprecated one takes no step.

        Raises:
            DefinitionError: ``name`` is not a string literal the scan of the code found.
        """
        code = self._state.choreography.code
        operation = "deprecate_patch" if deprecated else "patched"
        check_patch_found(
            name, code.deprecated if deprecated else code.patches, operation, self._state.choreography.name
        )
        if deprecated:
            return False
        for role in self.census:
            self._state.step(self._real(role))
        return True

    async def _run_tx(self, role: Role, tx: Transaction, args: list[Any]) -> Any:
        step = self._state.step(role)
        try:
            value = await self._state.saga.commit(role, tx, args, step)
        except Exception:
            self._failing_at(role, step)
            raise
        self._state.run.trace.append(TraceEvent("tx", role.name, (), tx.name, _short(value)))
        return value

    async def _transfer(self, src: Role, dsts: tuple[Role, ...], value: Located[Any], msg_kind: str) -> Located[Any]:
        opened = value._open(src, "comm" if msg_kind == "value" else msg_kind)
        state = self._state
        first = state.step(src)  # the send to the first receiver encodes the value
        try:
            received = state.choreography.codec.roundtrip(opened)
        except Exception:
            self._failing_at(src, first)
            raise
        for _ in dsts[1:]:
            state.step(src)
        for d in dsts:
            state.step(d)
        state.run.trace.append(TraceEvent(msg_kind, src.name, tuple(d.name for d in dsts), "", _short(received)))
        return make_located(dsts, received)


class CentralRunner:
    """Runs a choreography with every role in this process (tests, ``accompanist check``)."""

    def __init__(self, choreography: Choreography) -> None:
        self.choreography = choreography

    async def run(self, *args: Any) -> CentralRun:
        """Run with plain ``args`` placed at the initiator; return result and trace.

        Raises:
            DefinitionError: wrong argument count or a badly written choreography.
            ProjectionError: a value was opened at a role that does not own it.
        """
        c = self.choreography
        check_args(c, args)
        run = CentralRun()
        state = _CentralState(c, run)
        ch = CentralChoreo(state, c.roles)
        state.body = asyncio.ensure_future(c.fn(ch, *initiator_args(c, None, args)))
        try:
            returned = await state.body
        except asyncio.CancelledError:
            if state.cancelled is None:
                raise
            cancel = SessionCancelledError(f"cancelled: {state.cancelled}", session_id=state.saga.session_id)
            await state.saga.fail(cancel, c.initiator.name)
        except Exception as exc:
            await state.saga.fail(exc, c.initiator.name)
        finally:
            if state.deadline is not None:
                state.deadline.cancel()
        run.result = session_result(c, returned)
        return run


def run_central(choreography: Choreography, *args: Any, app: App | None = None) -> Any:
    """Run every role in one process and return the session's plain result.

    Called from plain code it runs to completion; inside a running event loop it returns an
    awaitable: ``await ac.run_central(...)``. With ``app``, its startup hooks run for every
    role of the choreography before the run and its shutdown hooks after it.

    Raises:
        DefinitionError: wrong argument count or a badly written choreography.
        ProjectionError: a value was opened at a role that does not own it.
        LifecycleError: a hook of ``app`` failed.
    """

    async def go() -> Any:
        if app is None:
            return (await CentralRunner(choreography).run(*args)).result
        async with app.lifecycle.running([r.name for r in choreography.roles]):
            return (await CentralRunner(choreography).run(*args)).result

    return maybe_sync(go)
