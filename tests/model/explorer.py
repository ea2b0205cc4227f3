"""Run one seed: the central reference, then the engines under the seed's faults, then checks.

Every role runs in its own :class:`~accompanist.engine.engine.Engine` on one
:class:`~accompanist.transport.memory.MemoryNetwork`, each with a :class:`FlakyStore` over a
``MemoryStore`` that outlives the engine, so a crashed role restarts on the same store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import accompanist as ac
from accompanist.engine.engine import Engine
from accompanist.errors import AccompanistError, OutcomeDecidedError, SessionError, StoreError, UnknownSessionError
from accompanist.store.memory import MemoryStore
from accompanist.transport.memory import FaultPlan, MemoryNetwork
from tests.model.checks import FINAL, CentralOutcome, SessionView, Violation, check_session
from tests.model.faults import Action, FlakyStore, Incarnation, Progress
from tests.model.ledger import Ledger, local_functions, make_transaction, run_tx
from tests.model.program import Boom, Program, Tx, build, walk
from tests.model.scenario import Scenario, draw_scenario

__all__ = ["RunResult", "explore"]

_REPLAYED = frozenset({"running", "parked"})
_ENDED = frozenset({"completed", "compensated", "failed", "cancelled"})  # no replay after these


@dataclass
class RunResult:
    scenario: Scenario
    source: str
    drift_source: str | None = None
    central: list[CentralOutcome] = field(default_factory=list)
    sids: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    mailboxes: list[dict[str, str]] = field(default_factory=list)
    tasks: list[dict[str, str]] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)
    ledger: Ledger = field(default_factory=Ledger)
    violations: list[Violation] = field(default_factory=list)
    divergences: list[dict[str, Any] | None] = field(default_factory=list)
    extra_cancels: list[Action] = field(default_factory=list)
    errors_logged: list[str] = field(default_factory=list)
    seconds: float = 0.0
    settle_seconds: float = 0.0
    saga: bool = False  # whether the choreography was detected as a saga (it runs the outcome round)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


async def central_outcome(program: Program, x: int) -> CentralOutcome:
    """Run ``program`` on ``x`` in the central interpreter, with a ledger of its own."""
    ledger = Ledger()
    choreo, _ = build(
        program, local_functions(ledger, program.role_names), lambda t: make_transaction(ledger, t), run_tx
    )
    out = CentralOutcome(ok=True)
    try:
        run = await ac.CentralRunner(choreo).run(x)
        out.result = run.result
    except (ac.DefinitionError, ac.ProjectionError) as exc:
        raise AssertionError(f"the generator drew a wrong program: {exc}") from exc
    except ac.SessionFailedError as exc:
        out.ok, out.status, out.error = False, exc.status, str(exc)
        trace = None
    except Exception as exc:  # the business failure itself: nothing had committed
        out.ok, out.status, out.error = False, "failed", f"{type(exc).__name__}: {exc}"
    else:
        trace = run.trace
        out.roles = {e.src for e in trace} | {d for e in trace for d in e.dsts}
    if not out.ok:
        bad = next(op for op in walk(program.ops) if isinstance(op, Boom) or (isinstance(op, Tx) and op.abort))
        out.failing_role = program.role_names[bad.role]
        out.failing_tx = bad.label if isinstance(bad, Tx) else None
        out.message = f"{bad.label} declined" if isinstance(bad, Tx) else f"boom at {bad.label}"
    out.effects = {(e.role, e.label, e.logical[1]) for e in ledger.events if e.kind == "effect"}
    out.commits = {(e.role, e.label, e.logical) for e in ledger.events if e.kind == "commit"}
    return out


class _Cluster:
    """The engines of one run, restartable, each behind a per-role lock."""

    def __init__(self, sc: Scenario, apps: dict[str, ac.App], progress: Progress, log_name: str) -> None:
        self.sc = sc
        self.config = sc.config()
        self.apps = apps
        self.network = MemoryNetwork(send_timeout=0.5)
        self.stores = {r: FlakyStore(MemoryStore(r), progress) for r in sc.program.role_names}
        self.engines: dict[str, Engine] = {}
        self.lives: dict[str, Incarnation] = {}
        self.dead: list[tuple[str, Action, Incarnation, int]] = []
        self.locks = {r: asyncio.Lock() for r in sc.program.role_names}
        self.disturbed: set[str] = set()
        self.log_name = log_name

    async def start(self, role: str, deadline: float) -> None:
        """Start ``role``'s engine, retrying while its store is out (as a supervisor would)."""
        while True:
            life = Incarnation(self.stores[role])
            engine = Engine(
                self.apps[role],
                role,
                store=life,  # type: ignore[arg-type]
                transport=self.network.transport(role),
                config=self.config,
                log=logging.getLogger(f"{self.log_name}.{role}"),
            )
            try:
                await engine.start()
            except AccompanistError:
                with contextlib.suppress(Exception):
                    await engine.stop(grace=0)
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
                continue
            self.engines[role] = engine
            self.lives[role] = life
            return

    async def crash(self, action: Action, sids: list[str], changed: ac.App | None) -> list[dict[str, Any] | None]:
        """Stop ``action.role`` at once, keep it down, restart it (maybe with changed code).

        Returns, per session, what a restart with changed code must report (or None)."""
        role = action.role
        expect: list[dict[str, Any] | None] = [None] * len(sids)
        async with self.locks[role]:
            self.disturbed.add(role)
            engine = self.engines.pop(role, None)
            if engine is not None:
                await engine.stop(grace=0)
                life = self.lives[role]
                life.dead = True
                # What still runs after stop() returned would be dead with the process: end it
                # (so it cannot call the service either), and report it.
                zombies = [run.task for sid in sids if (run := engine.live_run(sid)) is not None and run.task]
                zombies = [t for t in zombies if not t.done()]
                for task in zombies:
                    task.cancel()
                await asyncio.gather(*zombies, return_exceptions=True)
                self.dead.append((role, action, life, len(zombies)))
            await asyncio.sleep(action.duration)
            if changed is not None:
                self.apps[role] = changed
                inner = self.stores[role].inner
                await inner.open()  # closed by stop(); the data is still there
                for i, sid in enumerate(sids):
                    record = await inner.get_session(sid)
                    journal = await inner.journal_load(sid)
                    # Only a part that has still to run replays its journal (and can diverge): a
                    # finished or compensating one goes on from its records without the code.
                    if record is not None and record.status in _REPLAYED and journal:
                        expect[i] = {"role": role, "journal": len(journal), "status_before": record.status}
                        action.notes.append(f"session {i}: {len(journal)} journaled steps, status {record.status}")
            await self.start(role, time.monotonic() + 30)
        return expect

    async def cancel(self, action: Action, sid: str) -> None:
        async with self.locks[action.role]:
            engine = self.engines.get(action.role)
            if engine is None:
                action.outcome = "skipped:role down"
                return
            try:
                record = await engine.cancel(sid)
                action.outcome = f"returned:{record.status}"
            except OutcomeDecidedError as exc:
                action.outcome = f"decided:{exc}"
            except UnknownSessionError:
                action.outcome = "unknown:no session there yet"
            except SessionError as exc:
                action.outcome = f"refused:{exc}"
            except StoreError as exc:
                action.outcome = f"store-error:{exc}"
            except Exception as exc:
                action.outcome = f"error:{type(exc).__name__}: {exc}"

    async def outage(self, action: Action) -> None:
        store = self.stores[action.role]
        self.disturbed.add(action.role)
        store.down, store.ambiguous = True, action.ambiguous
        await asyncio.sleep(action.duration)
        store.down = False

    async def partition(self, action: Action) -> None:
        self.network.partition(action.role, action.other)
        await asyncio.sleep(action.duration)
        self.network.heal(action.role, action.other)

    async def calm(self) -> None:
        """Faults stop: a perfect network, no partitions, stores up, every role running."""
        self.network.plan = FaultPlan()
        self.network.heal()
        for store in self.stores.values():
            store.down = False
        for role in self.sc.program.role_names:
            async with self.locks[role]:
                if role not in self.engines:
                    await self.start(role, time.monotonic() + 10)

    async def mailboxes(self, sid: str) -> dict[str, str]:
        """Per role, the session's inbox and its unacknowledged outbox, compactly."""
        out = {}
        for role, store in self.stores.items():
            inner = store.inner
            await inner.open()
            inbox = await inner.inbox_load(sid)
            outbox = await inner.outbox_load(sid)
            got = " ".join(f"{e.src}#{e.seq}" if e.seq > 0 else f"{e.src}:{e.kind}" for e in inbox)
            unacked = " ".join(
                f"{row.envelope.dst}#{row.envelope.seq}"
                if row.envelope.seq > 0
                else f"{row.envelope.dst}:{row.envelope.kind}"
                for row in outbox
                if not row.acked
            )
            if got or unacked:
                out[role] = f"inbox [{got}] unacked outbox [{unacked}]"
        return out

    def tasks(self, sid: str) -> dict[str, str]:
        """Per role, where the session's task waits now (for reports of stuck sessions)."""
        out = {}
        for role, engine in self.engines.items():
            run = engine.live_run(sid)
            if run is None or run.task is None:
                continue
            if run.task.done():
                out[role] = "task done, run still registered"
                continue
            frames = run.task.get_stack(limit=40)
            where = [f"{f.f_code.co_name}:{f.f_lineno}" for f in frames if "accompanist" in f.f_code.co_filename]
            out[role] = "waits in " + " < ".join(reversed(where[-4:])) if where else "running"
        return out

    async def records(self, sid: str) -> dict[str, Any]:
        out = {}
        for role, store in self.stores.items():
            out[role] = await store.inner.get_session(sid)
        return out

    async def close(self) -> None:
        for engine in list(self.engines.values()):
            with contextlib.suppress(Exception):
                await engine.stop(grace=0)


_LOOP_ERRORS: list[str] = []


def _catch_loop_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Unhandled exceptions of engine tasks (an exception nobody retrieved), by task name."""
    task = context.get("task") or context.get("future")
    name = task.get_name() if isinstance(task, asyncio.Task) else ""
    exc = context.get("exception")
    _LOOP_ERRORS.append(f"{context.get('message', '')} in task {name}: {exc!r}")
    loop.default_exception_handler(context)


async def explore(seed: int, *, settle: float = 20.0, plain: bool = False) -> RunResult:
    """Run ``seed`` and return what happened and which invariants broke."""
    began = time.monotonic()
    loop = asyncio.get_running_loop()
    if loop.get_exception_handler() is not _catch_loop_errors:
        loop.set_exception_handler(_catch_loop_errors)
    sc = draw_scenario(seed, plain=plain)
    program = sc.program
    names = program.role_names
    result = RunResult(sc, "")
    ledger = result.ledger
    progress = Progress()
    ledger.ticks.append(progress.call)
    env = local_functions(ledger, names)

    def make(drift: int | None) -> tuple[ac.Choreography, str]:
        return build(
            program,
            env,
            lambda t: make_transaction(ledger, t),
            run_tx,
            drift_role=drift,
            filename=f"<model seed {seed}{' changed' if drift is not None else ''}>",
        )

    choreo, result.source = make(None)
    has_tx = any(isinstance(op, Tx) for op in walk(program.ops))
    result.saga = choreo.saga
    kind = "" if choreo.saga else ":undetected-saga" if has_tx else ":no-transactions"
    result.central = [await central_outcome(program, x) for x in sc.inputs]
    changed: dict[str, ac.App] = {}
    for a in sc.actions:
        if a.code_change and a.role not in changed:
            drifted, result.drift_source = make(names.index(a.role))
            changed[a.role] = ac.App(drifted)
    log_name = f"accompanist.model.seed{seed}"
    capture = _Capture()
    logger = logging.getLogger(log_name)
    logger.addHandler(capture)
    cluster = _Cluster(sc, {r: ac.App(choreo) for r in names}, progress, log_name)
    divergence: list[dict[str, Any] | None] = [None] * len(sc.inputs)
    try:
        for role in names:
            await cluster.start(role, time.monotonic() + 5)
        if sc.net is not None:
            n = sc.net
            cluster.network.plan = FaultPlan(n.drop, n.duplicate, n.delay, n.reorder, seed=seed)
        sessions_started = asyncio.Event()

        async def fire(a: Action) -> None:
            await sessions_started.wait()
            await progress.reach(a.at, a.cap, a.on, a.role)
            a.fired_at, a.fired_progress = progress.elapsed(), progress.count
            if a.kind == "crash":
                expected = await cluster.crash(a, result.sids, changed.get(a.role) if a.code_change else None)
                for i, e in enumerate(expected):
                    if e is not None and divergence[i] is None:
                        divergence[i] = e
            elif a.kind == "cancel":
                await cluster.cancel(a, result.sids[a.session])
            elif a.kind == "outage":
                await cluster.outage(a)
            elif a.kind == "partition":
                await cluster.partition(a)

        async def net_window() -> None:
            assert sc.net is not None
            await asyncio.sleep(max(0.0, sc.net.until - progress.elapsed()))
            cluster.network.plan = FaultPlan()

        tasks = [asyncio.create_task(fire(a)) for a in sc.actions]
        await asyncio.sleep(0)  # every fault waits for its moment before the first session starts
        progress.began, progress.count = time.monotonic(), 0
        if sc.net is not None:
            tasks.append(asyncio.create_task(net_window()))
        for x in sc.inputs:
            result.sids.append(await cluster.engines[names[0]].start_session("model", [x]))
        sessions_started.set()
        await asyncio.gather(*tasks)
        await cluster.calm()
        settle_began = time.monotonic()
        deadline = settle_began + (3.0 if sc.lossy else settle)
        for i, d in enumerate(divergence):
            if d is not None:
                await _resolve_divergence(cluster, sc, result, i, d, deadline)
        settled = await _settle(cluster, sc, result, divergence, deadline)
        result.settle_seconds = time.monotonic() - settle_began
        await asyncio.sleep(0.2)  # anything still moving shows up as a change of record
        for i, sid in enumerate(result.sids):
            records = await cluster.records(sid)
            result.records.append(records)
            if sc.durable:
                result.mailboxes.append(await cluster.mailboxes(sid))
            tasks = cluster.tasks(sid)
            result.tasks.append(tasks if not settled[i] else {})
            init = records.get(names[0])
            value = None
            if init is not None and init.status == "completed" and init.result is not None:
                value = choreo.codec.decode(init.result)
            result.results.append(value)
            cancels = [a for a in sc.actions if a.kind == "cancel" and a.session == i and a.outcome]
            cancels = [a for a in cancels if not a.outcome.startswith(("unknown", "skipped"))]
            cancels += [a for a in result.extra_cancels if a.session == i]
            view = SessionView(
                index=i,
                sid=sid,
                durable=sc.durable,
                lossy=sc.lossy,
                initiator=names[0],
                central=result.central[i],
                records=records,
                result=value,
                settled=settled[i],
                events=ledger.of(sid),
                raw=ledger.raw_of(sid),
                cancels=cancels,
                disturbed=set(cluster.disturbed),
                ordered_compensation=sc.compensation == "ordered",
                divergence=divergence[i],
                told=(" ".join(result.mailboxes[i].values()) if sc.durable and i < len(result.mailboxes) else ""),
                kind=kind,
                live={r for r, t in tasks.items() if not t.startswith("task done")},
            )
            result.violations += check_session(view)
        result.divergences = divergence
    except Exception as exc:
        result.violations.append(Violation("harness-error", "".join(traceback.format_exception(exc)).rstrip()))
    finally:
        await cluster.close()
        logger.removeHandler(capture)
    for role, action, life, zombies in cluster.dead:
        if zombies or life.calls_after_death:
            result.violations.append(
                Violation(
                    "zombie-after-stop",
                    f"{role}: after stop(grace=0) returned (crash at {action.fired_at:.3f}s) {zombies} session task(s) "
                    f"still ran, and the stopped engine called its store {life.calls_after_death} more time(s)",
                )
            )
    crashed_tasks = [e for e in _LOOP_ERRORS if any(sid in e for sid in result.sids)]
    for line in crashed_tasks[:3]:
        result.violations.append(Violation("engine-task-crashed", line))
    internal = [line for line in capture.lines if "internal error" in line]
    result.errors_logged = capture.lines
    if internal:
        result.violations.append(Violation("engine-internal-error", internal[0]))
    result.seconds = time.monotonic() - began
    return result


async def _resolve_divergence(
    cluster: _Cluster, sc: Scenario, result: RunResult, i: int, d: dict[str, Any], deadline: float
) -> None:
    """Wait for the changed role to report the divergence, note what the others show, and
    have an operator cancel the session at the initiator."""
    sid = result.sids[i]
    role = d["role"]
    d["seen"] = False
    while time.monotonic() < deadline:
        records = await cluster.records(sid)
        if records[role] is not None and records[role].status == "diverged":
            d["seen"] = True
            break
        if records[role] is not None and records[role].status in FINAL:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # the others hear of it
    records = await cluster.records(sid)
    d["status_then"] = records[role].status if records[role] is not None else None
    d["others"] = {r: rec.status for r, rec in records.items() if rec is not None and r != role}
    cancel = Action("cancel", sc.program.role_names[0], 0, 0.0, session=i)
    cancel.notes.append("operator cancel after the divergence")
    cancel.fired_at = time.monotonic() - cluster.stores[role].progress.began
    await cluster.cancel(cancel, sid)
    result.extra_cancels.append(cancel)


async def _settle(
    cluster: _Cluster, sc: Scenario, result: RunResult, divergence: list[Any], deadline: float
) -> list[bool]:
    """Wait (until ``deadline``) for every session to be terminal at every participant."""
    names = sc.program.role_names
    done = [False] * len(result.sids)
    while True:
        for i, sid in enumerate(result.sids):
            if done[i]:
                continue
            records = await cluster.records(sid)
            present = {r: rec.status for r, rec in records.items() if rec is not None}
            if names[0] not in present or any(s not in FINAL for s in present.values()):
                continue
            central = result.central[i]
            if set(present.values()) == {"completed"} and central.ok and central.roles - set(present):
                continue  # a participant has not even started
            done[i] = True
        if all(done) or time.monotonic() > deadline:
            return done
        await asyncio.sleep(0.05)
