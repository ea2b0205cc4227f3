"""Faults the explorer injects, drawn from the seed: the schedule, and a store that fails.

Faults fire at *progress points* (the n-th write to any store or call to the service since
the sessions started) rather than at wall-clock times, so a schedule hits the middle of a
session however fast the machine is; a point that is never reached fires at its time cap.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

from accompanist.errors import StoreError
from accompanist.store.base import WriteBatch

__all__ = ["Action", "FlakyStore", "Incarnation", "NetFaults", "Progress", "draw_schedule"]


class Progress:
    """Counts events of one run (store commits, service calls) and wakes who waits for one."""

    def __init__(self) -> None:
        self.count = 0
        self.calls: dict[str, int] = {}
        self.commits: dict[str, int] = {}
        self.began = time.monotonic()
        self._changed = asyncio.Event()

    def tick(self) -> None:
        self.count += 1
        self._changed.set()

    def commit(self, role: str) -> None:
        """``role``'s store committed a write."""
        self.commits[role] = self.commits.get(role, 0) + 1
        self.tick()

    def call(self, role: str) -> None:
        """The service was called from ``role`` (a local effect, a commit, a compensation)."""
        self.calls[role] = self.calls.get(role, 0) + 1
        self.tick()

    def elapsed(self) -> float:
        return time.monotonic() - self.began

    def counter(self, on: str, role: str) -> int:
        if on == "call":
            return self.calls.get(role, 0)
        if on == "commit":
            return self.commits.get(role, 0)
        return self.count

    async def reach(self, n: int, cap: float, on: str = "progress", role: str = "") -> None:
        """Wait until ``n`` events happened (all of them, or ``role``'s service calls or store
        commits, as ``on`` says) or ``cap`` seconds passed since the start."""
        while self.counter(on, role) < n:
            left = cap - self.elapsed()
            if left <= 0:
                return
            self._changed.clear()
            try:
                async with asyncio.timeout(left):
                    await self._changed.wait()
            except TimeoutError:
                return


class FlakyStore:
    """A ``Store`` that raises ``StoreError("connection lost")`` while an outage is on.

    With ``ambiguous`` outages a commit is applied and *then* reported lost, as when a
    database connection drops while the commit's answer is on its way. Reads fail too. Any
    method the store protocol grows later is passed through the same way.
    """

    def __init__(self, inner: Any, progress: Progress) -> None:
        self.inner = inner
        self.progress = progress
        self.down = False
        self.ambiguous = False
        self.failed_calls = 0

    def _check(self) -> None:
        if self.down:
            self.failed_calls += 1
            raise StoreError("connection lost")

    async def open(self) -> None:
        self._check()
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def commit(self, batch: WriteBatch) -> None:
        await asyncio.sleep(0)  # a real store yields here; faults get their moment between writes
        if self.down and self.ambiguous:
            await self.inner.commit(batch)
            self.failed_calls += 1
            raise StoreError("connection lost")
        self._check()
        await self.inner.commit(batch)
        self.progress.commit(self.inner.role)

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if name == "atomic" or not callable(target) or not asyncio.iscoroutinefunction(target):
            return target

        async def call(*args: Any, **kwargs: Any) -> Any:
            self._check()
            return await target(*args, **kwargs)

        return call


class Incarnation:
    """One engine's view of its role's store, dead once that engine crashed.

    A crashed process cannot write any more; if a task of a stopped engine still runs, its
    store calls fail here instead of landing in the store the restarted engine uses.
    """

    def __init__(self, store: FlakyStore) -> None:
        self.store = store
        self.dead = False
        self.calls_after_death = 0

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.store, name)
        if not callable(target) or not asyncio.iscoroutinefunction(target):
            return target

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.dead:
                self.calls_after_death += 1
                raise StoreError("this process crashed")
            return await target(*args, **kwargs)

        return call


@dataclass(frozen=True)
class NetFaults:
    """A ``FaultPlan`` in force from the start until ``until`` seconds."""

    drop: float
    duplicate: float
    delay: tuple[float, float]
    reorder: bool
    until: float

    def __str__(self) -> str:
        return (
            f"network until {self.until:.2f}s: drop={self.drop:.2f} duplicate={self.duplicate:.2f} "
            f"delay={self.delay[0] * 1000:.0f}-{self.delay[1] * 1000:.0f}ms reorder={self.reorder}"
        )


@dataclass
class Action:
    """One fault, fired at progress point ``at`` (or at ``cap`` seconds, whichever first).

    Kinds: ``crash`` (``role`` stops with grace 0, stays down ``duration``, and restarts on
    the same store; with ``code_change`` it restarts with the changed code), ``cancel`` (an
    operator cancels session ``session`` at ``role``), ``outage`` (``role``'s store fails for
    ``duration``; ``ambiguous``: commits apply but report failure), ``partition`` (``role`` and
    ``other`` cannot talk for ``duration``).
    """

    kind: str
    role: str
    at: int
    cap: float
    duration: float = 0.0
    other: str = ""
    code_change: bool = False
    ambiguous: bool = False
    session: int = 0
    on: str = "progress"  # what ``at`` counts: all progress, or ``role``'s service calls or commits
    fired_at: float | None = None
    fired_progress: int | None = None
    outcome: str = ""
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        what = {
            "crash": f"crash {self.role}, down {self.duration:.2f}s"
            + (", restart with CHANGED CODE" if self.code_change else ""),
            "cancel": f"operator cancel of session {self.session} at {self.role}",
            "outage": f"store outage at {self.role} for {self.duration:.2f}s"
            + (" (ambiguous commits)" if self.ambiguous else ""),
            "partition": f"partition {self.role} <-> {self.other} for {self.duration:.2f}s",
        }[self.kind]
        fired = (
            f"fired at progress {self.fired_progress}, {self.fired_at:.3f}s"
            if self.fired_at is not None
            else "not fired"
        )
        extra = f" -> {self.outcome}" if self.outcome else ""
        notes = "".join(f"; {n}" for n in self.notes)
        moment = {
            "call": f"right after service call #{self.at} from {self.role}",
            "commit": f"right after store commit #{self.at} at {self.role}",
        }.get(self.on, f"progress {self.at}")
        return f"{what} @ {moment} (cap {self.cap:.2f}s); {fired}{extra}{notes}"


def draw_schedule(
    rng: random.Random,
    kinds: set[str],
    roles: tuple[str, ...],
    sessions: int,
    span: int,
    participants: tuple[str, ...] | None = None,
    calls: dict[str, int] | None = None,
) -> tuple[list[Action], NetFaults | None]:
    """The faults of one run.

    Args:
        rng: the run's random source.
        kinds: which fault kinds to use (``crash``, ``code_change``, ``cancel``, ``outage``,
            ``net``, ``lossy``, ``partition``).
        roles: the choreography's roles (the first is the initiator).
        sessions: sessions in the run.
        span: progress points a run is expected to last (faults fire in ``1..span``).
        participants: the roles the program uses (default: every role).
        calls: service calls (effects, commits) each role makes at least once per session.
    """
    participants = participants or roles
    calls = calls or {}

    def point() -> int:
        return rng.randint(1, max(2, span))

    def cap() -> float:
        return rng.uniform(0.05, 1.5)

    actions: list[Action] = []
    if "crash" in kinds:
        for _ in range(rng.choice([1, 1, 2, 3])):
            crash = Action("crash", rng.choice(participants), point(), cap(), duration=rng.choice([0.0, 0.05, 0.3]))
            if calls and rng.random() < 0.4:  # between a service call and the next durable write
                crash.role = rng.choice(sorted(calls))
                crash.at, crash.on = rng.randint(1, calls[crash.role]), "call"
            elif rng.random() < 0.3:  # in the middle of this role's part
                crash.at, crash.on = rng.randint(1, 8), "commit"
            actions.append(crash)
    if "code_change" in kinds:  # late enough that the role has journaled steps to replay
        role = rng.choice(participants)
        at = rng.randint(2, 6)
        actions.append(Action("crash", role, at, rng.uniform(0.2, 1.0), duration=0.05, code_change=True, on="commit"))
    if "cancel" in kinds:
        role = roles[0] if rng.random() < 0.5 else rng.choice(roles)
        actions.append(Action("cancel", role, point(), cap(), session=rng.randrange(sessions)))
    if "outage" in kinds:
        for _ in range(rng.choice([1, 2])):
            actions.append(
                Action(
                    "outage",
                    rng.choice(roles),
                    point(),
                    cap(),
                    duration=rng.uniform(0.02, 0.5),
                    ambiguous=rng.random() < 0.3,
                )
            )
    if "partition" in kinds:
        a, b = rng.sample(roles, 2)
        actions.append(Action("partition", a, point(), cap(), duration=rng.uniform(0.05, 0.8), other=b))
    net = None
    if "net" in kinds or "lossy" in kinds:
        lossy = "lossy" in kinds
        net = NetFaults(
            drop=rng.uniform(0.05, 0.3) if lossy else 0.0,
            duplicate=rng.choice([0.0, 0.1, 0.3]),
            delay=(0.0, rng.choice([0.0, 0.002, 0.01, 0.03])),
            reorder=rng.random() < 0.6,
            until=rng.uniform(0.3, 2.0),
        )
    return actions, net
