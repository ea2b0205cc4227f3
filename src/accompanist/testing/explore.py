"""``explore``: run a choreography once per fault schedule and check the saga invariants.

Why: a team writing a choreography cannot reason through every moment a sidecar may die.
The schedules are drawn from a baseline run with no fault, so they follow the choreography's
own shape: one run per (role, step) crashing that role just before the step; one per
committed transaction crashing its role right after the service call returned (before the
commit was recorded: the call runs again on replay, with the same idempotency key); one per
transaction with that transaction failing; and, for each of those, one per compensation that
ran, crashing its role right after the compensation returned (it runs again). Every run starts
fresh engines on fresh stores, and the central interpreter runs the same inputs with the same
failing transaction, so each run is compared with the reference semantics (see
:mod:`accompanist.testing.checks` for the invariants).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from accompanist.engine.config import EngineConfig, Mode
from accompanist.errors import ConfigError, SessionFailedError
from accompanist.ids import new_session_id
from accompanist.interpreters.central import CentralRunner
from accompanist.interpreters.common import maybe_sync
from accompanist.language.choreography import App, Choreography
from accompanist.testing.checks import (
    CentralOutcome,
    ExploreError,
    ExploreReport,
    RunReport,
    Violation,
    check_run,
)
from accompanist.testing.clock import poll_interval, run_virtual, virtual_clock, virtual_time_available
from accompanist.testing.cluster import Cluster, quick_config
from accompanist.testing.ledger import EffectLog
from accompanist.testing.probe import Crash, Probe, Schedule, instrument

__all__ = ["explore", "explore_async", "schedules_after"]

Target = Choreography | Callable[[], Choreography]


def _build(target: Target) -> Choreography:
    c = target if isinstance(target, Choreography) else target()
    if not isinstance(c, Choreography):
        raise ConfigError(f"explore takes a choreography or a function that builds one, got {c!r}")
    return c


async def _central(target: Target, args: tuple[Any, ...], schedule: Schedule) -> CentralOutcome:
    probe = Probe(Schedule(fail=schedule.fail))
    try:
        run = await CentralRunner(instrument(_build(target), probe)).run(*args)
    except SessionFailedError as exc:
        return CentralOutcome(False, error=f"{exc.status}: {exc.reason}")
    except Exception as exc:  # a business failure before anything committed
        return CentralOutcome(False, error=f"failed: {type(exc).__name__}: {exc}")
    return CentralOutcome(True, run.result)


def schedules_after(probe: Probe, durable: bool) -> list[Schedule]:
    """The schedules a baseline run (``probe``) suggests, without the failure runs' crashes."""
    out: list[Schedule] = []
    if durable:
        for role, steps in sorted(probe.steps.items()):
            out += [Schedule(crash=Crash(role, "step", k)) for k in range(steps)]
        for tid in dict.fromkeys(probe.committed):
            out.append(Schedule(crash=Crash(tid.role, "commit", tx=tid)))
    out += [Schedule(fail=tid) for tid in dict.fromkeys(probe.attempted)]
    return out


class _Explorer:
    def __init__(
        self,
        target: Target,
        args: tuple[Any, ...],
        *,
        config: EngineConfig,
        effects: EffectLog | None,
        timeout: float,
        progress: Callable[[RunReport], None] | None,
    ) -> None:
        self.target = target
        self.args = args
        self.config = config
        self.effects = effects
        self.timeout = timeout
        self.progress = progress
        self.report = ExploreReport(_build(target).name)

    async def run(self, schedule: Schedule) -> tuple[RunReport, Probe]:
        report = RunReport(len(self.report.runs) + 1, schedule)
        report.central = await _central(self.target, self.args, schedule)
        probe = Probe(schedule)
        choreography = instrument(_build(self.target), probe)
        cluster = Cluster(choreography, config=self.config)
        try:
            await cluster.start()
            sid = report.session_id = new_session_id()

            def begin() -> asyncio.Task[str]:
                return asyncio.create_task(cluster.start_session(choreography, *self.args, session_id=sid))

            start = begin()
            deadline = time.monotonic() + self.timeout
            records = None
            while records is None:
                if probe.crashing is not None:
                    role, probe.crashing = probe.crashing, None
                    await cluster.crash(role)
                    probe.trace.append(f"'{role}' restarted on its store")
                    await cluster.restart(role)
                    if not start.done():  # the start was not durable yet: the client starts it again
                        start.cancel()
                        await asyncio.gather(start, return_exceptions=True)
                        probe.trace.append("the client starts the session again with the same id")
                        start = begin()
                if start.done() and start.exception() is not None:
                    report.trace = probe.trace
                    report.violations.append(Violation("start-failed", f"the start failed: {start.exception()!r}"))
                    return report, probe
                try:
                    records = await cluster.settle(sid, timeout=0) if start.done() else None
                except TimeoutError as exc:
                    if time.monotonic() > deadline:
                        report.trace = probe.trace
                        report.violations.append(check_stuck(str(exc), self.timeout))
                        return report, probe
                if records is None:
                    await asyncio.sleep(poll_interval(0.005, 0.5))
            for role, record in records.items():
                if record is None:
                    continue
                report.statuses[role] = record.status
                if record.error:
                    report.errors[role] = record.error
            init = records[choreography.initiator.name]
            if init is not None and init.status == "completed" and init.result is not None:
                report.result = choreography.codec.decode(init.result)
            effects = self.effects.entries_of(sid) if self.effects is not None else []
            report.effects, report.trace = effects, probe.trace
            report.violations = check_run(report, records, probe, effects)
            return report, probe
        finally:
            await cluster.stop()

    def note(self, report: RunReport) -> None:
        self.report.runs.append(report)
        if self.progress is not None:
            self.progress(report)


def check_stuck(why: str, timeout: float) -> Violation:
    """The violation of a run that did not end everywhere in time."""
    return Violation("stuck", f"{why} (explore's timeout: {timeout:g}s)")


@contextlib.asynccontextmanager
async def _maybe_virtual(virtual: bool) -> AsyncIterator[None]:
    if not virtual:
        yield
        return
    async with virtual_clock():
        yield


async def explore_async(
    target: Target,
    *args: Any,
    app: App | None = None,
    mode: Mode | str = Mode.FAULT_TOLERANT,
    effects: EffectLog | None = None,
    config: EngineConfig | None = None,
    max_runs: int = 400,
    timeout: float = 20.0,
    virtual_time: bool | None = None,
    stop_at_first: bool = True,
    progress: Callable[[RunReport], None] | None = None,
) -> ExploreReport:
    """Explore in the running event loop; see :func:`explore`."""
    mode = Mode(mode)
    virtual = virtual_time_available() if virtual_time is None else virtual_time
    loop = asyncio.get_running_loop()
    if virtual_time is None and (not isinstance(loop, asyncio.BaseEventLoop) or not hasattr(loop, "_selector")):
        virtual = False  # uvloop: real time
    config = config or quick_config(mode, virtual=virtual)
    if config.mode is not mode:
        raise ConfigError(f"explore(mode={mode.value!r}) was given an EngineConfig with mode {config.mode.value!r}")
    explorer = _Explorer(target, args, config=config, effects=effects, timeout=timeout, progress=progress)
    durable = mode is Mode.FAULT_TOLERANT
    if not durable:
        explorer.report.skipped.append("default mode keeps no state across a crash: only failing transactions run")
    roles = [r.name for r in _build(target).roles]
    quiet = logging.getLogger("accompanist")
    level = quiet.level
    quiet.setLevel(max(level, logging.ERROR))  # crashes on purpose are not news
    lifecycle = app.lifecycle.running(roles) if app is not None else contextlib.nullcontext()
    try:
        async with lifecycle, _maybe_virtual(virtual):
            baseline, probe = await explorer.run(Schedule())
            explorer.note(baseline)
            queue = schedules_after(probe, durable) if baseline.ok else []
            seen: set[Schedule] = {Schedule()}
            while queue and len(explorer.report.runs) < max_runs:
                schedule = queue.pop(0)
                if schedule in seen:
                    continue
                seen.add(schedule)
                report, found = await explorer.run(schedule)
                explorer.note(report)
                if not report.ok and stop_at_first:
                    break
                if durable and schedule.crash is None and schedule.fail is not None:
                    for tid in dict.fromkeys(found.compensated):
                        queue.append(Schedule(Crash(tid.role, "compensate", tx=tid), schedule.fail))
            if queue and len(explorer.report.runs) >= max_runs:
                explorer.report.skipped.append(f"stopped at max_runs={max_runs}: {len(queue)} schedules not run")
    finally:
        quiet.setLevel(level)
    return explorer.report


def explore(
    target: Target,
    *args: Any,
    app: App | None = None,
    mode: Mode | str = Mode.FAULT_TOLERANT,
    effects: EffectLog | None = None,
    config: EngineConfig | None = None,
    max_runs: int = 400,
    timeout: float = 20.0,
    virtual_time: bool | None = None,
    raise_on_failure: bool = True,
    stop_at_first: bool = True,
    progress: Callable[[RunReport], None] | None = None,
) -> Any:
    """Run ``target`` under every fault schedule its shape suggests and check the invariants.

    Called from plain code it runs to completion (on a virtual clock when ``looptime`` is
    installed); inside a running event loop it returns an awaitable.

    Args:
        target: the choreography, or a function building it afresh (with fresh service
            doubles), called once per run for the engines and once for the central
            interpreter, so that state one run leaves behind never changes the next.
        *args: the initiator's arguments.
        app: an ``App`` whose startup and shutdown hooks run for every role around the
            exploration (the clients the transactions use).
        mode: ``fault-tolerant`` (crashes and failures) or ``default`` (failures only).
        effects: where the user's code records its effects (a :class:`Ledger`, or any object
            with ``entries_of(session_id)``), to check that none was applied twice.
        config: engine settings (default: :func:`quick_config` for ``mode``).
        max_runs: stop after this many runs (the report says how many were left).
        timeout: wall-clock seconds one run may take to end at every role.
        virtual_time: run on a virtual clock (default: when ``looptime`` is installed and the
            loop allows it).
        raise_on_failure: raise :class:`ExploreError` when a run broke an invariant.
        stop_at_first: stop at the first run that broke an invariant.
        progress: called with each run's report as it ends (a progress bar, a log line).

    Returns:
        The :class:`ExploreReport` (or an awaitable of it).

    Raises:
        ExploreError: a run broke an invariant (its readable trace is the message).
        ConfigError: a bad ``mode``/``config`` pair, or virtual time asked for and unavailable.
    """

    async def go() -> ExploreReport:
        report = await explore_async(
            target,
            *args,
            app=app,
            mode=mode,
            effects=effects,
            config=config,
            max_runs=max_runs,
            timeout=timeout,
            virtual_time=virtual_time,
            stop_at_first=stop_at_first,
            progress=progress,
        )
        if raise_on_failure and not report.ok:
            raise ExploreError(report)
        return report

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        if virtual_time is not False and virtual_time_available():
            return run_virtual(go)
    return maybe_sync(go)
