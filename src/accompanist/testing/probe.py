"""Instrumenting a choreography for one explored run: see its steps, fail or crash on cue.

Why here and not in the engine: the engine must not know it is being tested. The projected
interpreter hands every step of a role to a ``StepRunner`` (the engine's session run), and
both interpreters commit transactions through objects the choreography passes them; so a
wrapper around the choreography's function can put a watching runner in front of the
engine's, and swap each transaction for one that reports its commit and compensation, fails
it on purpose, or stops ("crashes") the role right after the service call returned, before
the runtime recorded it. A crash blocks the role's session task; the explorer then stops the
whole engine (as a SIGKILL would) and starts it again on the same store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from accompanist.errors import Abort
from accompanist.interpreters.central import CentralChoreo
from accompanist.interpreters.projected import ProjectedChoreo
from accompanist.language.choreo import LocalThunk
from accompanist.language.choreography import Choreography
from accompanist.language.steps import Step
from accompanist.language.transaction import Transaction, TxContext

__all__ = ["Crash", "Probe", "Schedule", "TxId", "instrument"]


@dataclass(frozen=True, order=True)
class TxId:
    """One transaction of a session: its role, name and occurrence (as in its idempotency key)."""

    role: str
    name: str
    occurrence: int = 0

    def __str__(self) -> str:
        return f"{self.name}#{self.occurrence} at {self.role}"


@dataclass(frozen=True)
class Crash:
    """Where a role crashes: before its step ``step`` (``at="step"``), or right after the
    service call of ``tx``'s commit or compensation returned (``at="commit"``/``"compensate"``),
    before the runtime recorded it."""

    role: str
    at: str = "step"
    step: int = -1
    tx: TxId | None = None

    def __str__(self) -> str:
        if self.at == "step":
            return f"crash '{self.role}' before its step {self.step}"
        return f"crash '{self.role}' right after the {self.at} of {self.tx} returned (before it was recorded)"


@dataclass(frozen=True)
class Schedule:
    """The faults of one explored run: at most one crash, at most one failing transaction."""

    crash: Crash | None = None
    fail: TxId | None = None

    def __str__(self) -> str:
        parts = []
        if self.fail is not None:
            parts.append(f"transaction {self.fail} fails (Abort)")
        if self.crash is not None:
            parts.append(str(self.crash))
        return ", ".join(parts) or "no fault (the baseline run)"


@dataclass
class Probe:
    """What one run did, and its schedule's faults.

    Attributes:
        schedule: the faults to inject.
        steps: per role, how many steps its projection made (the highest index + 1).
        attempted: transactions whose commit was called (repeats included).
        committed: transactions whose commit returned (repeats included).
        compensated: transactions whose compensation returned (repeats included).
        uncertain: transactions whose commit raised an infrastructure error (it may have
            taken effect: the runtime compensates it if its retries run out).
        trace: readable lines, in order.
        crashing: the role that hit the crash point (set once), waiting to be crashed.
    """

    schedule: Schedule = field(default_factory=Schedule)
    steps: dict[str, int] = field(default_factory=dict)
    attempted: list[TxId] = field(default_factory=list)
    committed: list[TxId] = field(default_factory=list)
    compensated: list[TxId] = field(default_factory=list)
    uncertain: list[TxId] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)
    crashing: str | None = None
    fired: bool = False
    _wrapped: dict[int, Transaction] = field(default_factory=dict)

    async def _maybe_crash(self, role: str, at: str, step: int = -1, tx: TxId | None = None) -> None:
        crash = self.schedule.crash
        if crash is None or self.fired or crash.role != role or crash.at != at:
            return
        if (at == "step" and crash.step != step) or (at != "step" and crash.tx != tx):
            return
        self.fired = True
        self.crashing = role
        self.trace.append(f"CRASH {crash}")
        await asyncio.get_running_loop().create_future()  # never resolves: the engine stops this task

    async def step(self, role: str, step: Step) -> None:
        """``role`` is about to run ``step``."""
        self.steps[role] = max(self.steps.get(role, 0), step.index + 1)
        await self._maybe_crash(role, "step", step.index)

    def wrap(self, tx: Transaction) -> Transaction:
        """``tx`` reporting to this probe (the same wrapper for the same transaction)."""
        if id(tx) in self._wrapped:
            return self._wrapped[id(tx)]
        if any(w is tx for w in self._wrapped.values()):
            return tx  # wrapped already
        probe = self

        async def commit(ctx: TxContext, *args: Any) -> Any:
            tid = TxId(ctx.role, ctx.name, ctx.occurrence)
            probe.attempted.append(tid)
            if probe.schedule.fail == tid:
                probe.trace.append(f"{ctx.role}: commit of {tid} declined on purpose")
                raise Abort(f"explore: {tid} fails on purpose")
            try:
                result = await tx.commit(ctx, *args)
            except BaseException as exc:
                if not isinstance(exc, tx.business_errors):  # retried; if retries run out, it is undone too
                    probe.uncertain.append(tid)
                raise
            if result is not False:
                probe.committed.append(tid)
                probe.trace.append(f"{ctx.role}: commit of {tid} returned (attempt {ctx.attempt})")
                await probe._maybe_crash(ctx.role, "commit", tx=tid)
            return result

        undo: Callable[..., Any] | None = None
        if tx.compensate is not None:
            original = tx.compensate

            async def compensate(ctx: TxContext, *args: Any) -> Any:
                tid = TxId(ctx.role, ctx.name, ctx.occurrence)
                result = await original(ctx, *args)
                probe.compensated.append(tid)
                probe.trace.append(f"{ctx.role}: compensation of {tid} returned")
                await probe._maybe_crash(ctx.role, "compensate", tx=tid)
                return result

            undo = compensate
        wrapped = Transaction(
            tx.name, commit, undo, retry=tx.retry, business_errors=tx.business_errors[1:], atomic=tx.atomic
        )
        self._wrapped[id(tx)] = wrapped
        return wrapped


class _WatchingRunner:
    """A ``StepRunner`` in front of the engine's: tells the probe of each step first."""

    def __init__(self, inner: Any, probe: Probe, role: str) -> None:
        self.inner = inner
        self.probe = probe
        self.role = role

    async def send(self, step: Step, value: Any) -> None:
        await self.probe.step(self.role, step)
        await self.inner.send(step, value)

    async def recv(self, step: Step) -> Any:
        await self.probe.step(self.role, step)
        return await self.inner.recv(step)

    async def local(self, step: Step, thunk: LocalThunk) -> Any:
        await self.probe.step(self.role, step)
        return await self.inner.local(step, thunk)

    async def transaction(self, step: Step, tx: Transaction, args: list[Any]) -> Any:
        await self.probe.step(self.role, step)
        return await self.inner.transaction(step, self.probe.wrap(tx), args)


def _watch(ch: Any, probe: Probe) -> None:
    # The two interpreters keep their per-run state in one object shared by every derived
    # view (enclaves, calls): the projection's runner, the central run's saga log.
    if isinstance(ch, ProjectedChoreo):
        projection = ch._p
        if not isinstance(projection.runner, _WatchingRunner):
            projection.runner = _WatchingRunner(projection.runner, probe, projection.role.name)
    elif isinstance(ch, CentralChoreo):
        saga = ch._state.saga
        if not getattr(saga, "_probed", False):
            commit = saga.commit

            async def probed(role: Any, tx: Transaction, args: list[Any], step: int) -> Any:
                return await commit(role, probe.wrap(tx), args, step)

            saga.commit = probed  # type: ignore[method-assign]
            saga._probed = True  # type: ignore[attr-defined]


def instrument(choreography: Choreography, probe: Probe) -> Choreography:
    """The same choreography (name, version, roles, codec), watched by ``probe``."""
    inner = choreography.fn

    @functools.wraps(inner)
    async def watched(ch: Any, *args: Any) -> Any:
        _watch(ch, probe)
        return await inner(ch, *args)

    return dataclasses.replace(
        choreography,
        fn=watched,
        transactions=tuple(probe.wrap(t) for t in choreography.transactions),
        _cache={},
    )
