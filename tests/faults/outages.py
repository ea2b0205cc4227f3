"""Helpers of the store-outage and outcome tests: a steady load of sessions through a real
sidecar's HTTP API, a watcher of ``/healthz``, and checks of the saga invariants at the end.

Everything here talks HTTP to real ``accompanist sidecar`` processes and tolerates what an
outage makes them answer (503, a refused connection): a test decides what it may see.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.faults.faultapp import read_ledger, saga_outcome
from tests.integration.procs import ProcessCluster

TERMINAL = frozenset({"completed", "compensated", "failed", "cancelled"})
"""The statuses a session ends in (``diverged`` waits for an operator, so it is not one)."""

INFRA_WORDS = re.compile(r"store|connection|disk|full|postgres|sqlite|database|StoreError|OSError", re.IGNORECASE)
"""Words no business failure of the fault app contains: a reason with one was decided by
an infrastructure error."""


@dataclass
class Answer:
    """One HTTP answer (``status`` 0: no answer, the connection failed)."""

    status: int
    body: Any
    headers: Mapping[str, str]
    content_type: str


async def call(cluster: ProcessCluster, method: str, role: str, path: str, **kwargs: Any) -> Answer:
    """One request to ``role``'s API; a connection error or timeout is ``status`` 0."""
    assert cluster.http is not None
    try:
        async with cluster.http.request(
            method, f"{cluster[role].api}{path}", timeout=aiohttp.ClientTimeout(total=10), **kwargs
        ) as r:
            body: Any = await r.json() if r.content_type == "application/json" else await r.text()
            return Answer(r.status, body, dict(r.headers), r.content_type)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Answer(0, repr(exc), {}, "")


def refusal_problem(answer: Answer) -> str | None:
    """What is wrong with a refusal (``None``: a JSON 429/503 with ``Retry-After``, as the
    API promises while the store fails or the sidecar is busy)."""
    if answer.status not in (429, 503):
        return f"answered {answer.status}: {answer.body!r}"
    if answer.content_type != "application/json" or not isinstance(answer.body, dict) or "error" not in answer.body:
        return f"{answer.status} without a JSON error body: {answer.body!r}"
    if "Retry-After" not in answer.headers:
        return f"{answer.status} without Retry-After: {answer.body!r}"
    return None


@dataclass
class Load:
    """Starts ``total`` sessions of ``choreography`` at ``role`` with ``concurrency`` in flight.

    Session ``i`` gets the id ``{prefix}-{i}`` and the argument ``args[i]``, so a POST whose
    answer an outage swallowed is repeated without starting a second session. A worker
    waits for its session to end at the initiator before it starts the next one.
    """

    cluster: ProcessCluster
    args: list[int]
    prefix: str = "s"
    role: str = "a"
    choreography: str = "saga"
    concurrency: int = 16
    deadline: float = float("inf")  # time.monotonic() by which every session must have ended
    started: dict[str, int] = field(default_factory=dict)
    ended: dict[str, str] = field(default_factory=dict)
    answers: Counter[int] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def sid(self, i: int) -> str:
        return f"{self.prefix}-{i:04d}"

    async def run(self) -> None:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(self.args)):
            queue.put_nowait(i)
        await asyncio.gather(*(self._worker(queue) for _ in range(self.concurrency)))

    async def _worker(self, queue: asyncio.Queue[int]) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            if await self._start(i):
                await self._until_ended(self.sid(i))

    async def _start(self, i: int) -> bool:
        body = {"choreography": self.choreography, "args": [self.args[i]], "session_id": self.sid(i)}
        while time.monotonic() < self.deadline:
            answer = await call(self.cluster, "POST", self.role, "/sessions", json=body)
            self.answers[answer.status] += 1
            if answer.status in (200, 202):
                self.started[self.sid(i)] = self.args[i]
                return True
            if answer.status != 0:
                problem = refusal_problem(answer)
                if problem is not None:
                    self.problems.append(f"POST {self.sid(i)}: {problem}")
                    return False
            await asyncio.sleep(0.1)
        self.problems.append(f"POST {self.sid(i)} never accepted")
        return False

    async def _until_ended(self, sid: str) -> None:
        while time.monotonic() < self.deadline:
            answer = await call(self.cluster, "GET", self.role, f"/sessions/{sid}")
            if answer.status == 200 and answer.body["status"] in TERMINAL:
                self.ended[sid] = answer.body["status"]
                return
            if answer.status not in (0, 200):
                problem = refusal_problem(answer)
                if problem is not None:
                    self.problems.append(f"GET {sid}: {problem}")
            await asyncio.sleep(0.05)


@dataclass
class HealthWatch:
    """Polls every role's ``/healthz`` until stopped; keeps what each answered, when."""

    cluster: ProcessCluster
    roles: Iterable[str]
    seen: list[tuple[float, str, int, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def start(self) -> HealthWatch:
        self._task = asyncio.ensure_future(self._poll())
        return self

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _poll(self) -> None:
        while True:
            for role in self.roles:
                answer = await call(self.cluster, "GET", role, "/healthz")
                self.seen.append((time.monotonic(), role, answer.status, answer.body))
                if answer.status not in (0, 200) and (
                    answer.status != 503 or not isinstance(answer.body, dict) or answer.body.get("store") != "failing"
                ):
                    self.problems.append(f"{role} /healthz answered {answer.status}: {answer.body!r}")
            await asyncio.sleep(0.05)

    def unhealthy(self, role: str, after: float = 0.0, before: float = float("inf")) -> int:
        """How often ``role`` answered 503 between ``after`` and ``before``."""
        return sum(1 for t, r, s, _ in self.seen if r == role and s == 503 and after <= t <= before)


async def wait_health(cluster: ProcessCluster, role: str, status: int, timeout: float) -> float:
    """Poll ``/healthz`` until it answers ``status``; return how long that took."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if (await call(cluster, "GET", role, "/healthz")).status == status:
            return time.monotonic() - began
        await asyncio.sleep(0.05)
    raise AssertionError(f"{role} /healthz did not answer {status} within {timeout}s")


async def wait_status(cluster: ProcessCluster, role: str, sid: str, statuses: set[str], timeout: float = 20) -> str:
    """Poll ``GET /sessions/{sid}`` at ``role`` until its status is one of ``statuses``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        answer = await call(cluster, "GET", role, f"/sessions/{sid}")
        if answer.status == 200:
            last = answer.body
            if last["status"] in statuses:
                return str(last["status"])
        await asyncio.sleep(0.05)
    raise AssertionError(f"{sid} at {role} not {sorted(statuses)} within {timeout}s: {last!r}")


async def records(cluster: ProcessCluster, role: str) -> dict[str, dict[str, Any]]:
    """Every session record ``role`` holds, by id."""
    answer = await call(cluster, "GET", role, "/sessions?limit=10000")
    assert answer.status == 200, (role, answer.status, answer.body)
    return {r["session_id"]: r for r in answer.body["sessions"]}


async def settled(
    cluster: ProcessCluster, roles: Iterable[str], sids: Iterable[str], timeout: float
) -> dict[str, dict[str, dict[str, Any]]]:
    """Wait until every session of ``sids`` has ended at every role; return the records
    (``role -> sid -> record``). Fails naming the sessions still open at the deadline."""
    roles, sids = list(roles), list(sids)
    deadline = time.monotonic() + timeout
    while True:
        seen = {role: await records(cluster, role) for role in roles}
        open_ = [
            f"{sid}@{role}={seen[role].get(sid, {}).get('status')}"
            for sid in sids
            for role in roles
            if seen[role].get(sid, {}).get("status") not in TERMINAL
        ]
        if not open_:
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(open_)} session roles not ended after {timeout}s: {open_[:20]}")
        await asyncio.sleep(0.2)


def saga_problems(
    seen: Mapping[str, Mapping[str, Mapping[str, Any]]], started: Mapping[str, int], effects_dir: Path
) -> list[str]:
    """Every broken promise of the ``saga`` sessions ``started`` (``sid -> argument``): roles
    that disagree or end otherwise than the argument decides, a failure whose reason is an
    infrastructure error, and service effects that are missing, extra or repeated."""
    problems = []
    for sid, n in started.items():
        outcome, _ = saga_outcome(n)
        for role, by_sid in seen.items():
            record = by_sid[sid]
            if record["status"] != outcome:
                problems.append(f"{sid} (n={n}) is {record['status']} at {role}, expected {outcome}: {record}")
            reason = f"{record.get('error') or ''} {record.get('failure') or ''}"
            if INFRA_WORDS.search(reason):
                problems.append(f"{sid} at {role} was decided by an infrastructure error: {reason}")
            if outcome == "compensated" and (record.get("failure") or {}).get("error_type") != "Abort":
                problems.append(f"{sid} at {role}: the failure is not the business abort: {record.get('failure')}")
    for role in seen:
        booked: dict[str, list[str]] = {}
        for sid, what, name, calls in read_ledger(effects_dir, role):
            booked.setdefault(sid, []).append(f"{what}:{name}")
            if calls != 1:
                problems.append(f"{role} ran {what} {name} of {sid} {calls} times")
        for sid in set(booked) - set(started):
            problems.append(f"{role} booked effects for a session nobody started: {sid} {booked[sid]}")
        for sid, n in started.items():
            expected = sorted(saga_outcome(n)[1][role])
            if sorted(booked.get(sid, [])) != expected:
                problems.append(f"{sid} (n={n}) effects at {role}: {sorted(booked.get(sid, []))}, expected {expected}")
    return problems


def sqlite_rows(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Read a (running) sidecar's SQLite store; WAL mode lets a reader in beside the writer."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return [tuple(r) for r in db.execute(sql, args).fetchall()]
    finally:
        db.close()


async def metric(cluster: ProcessCluster, role: str, name: str) -> float:
    """One unlabelled value of ``role``'s ``/metrics`` (0 when absent)."""
    answer = await call(cluster, "GET", role, "/metrics")
    match = re.search(rf"^{re.escape(name)} (\S+)$", str(answer.body), re.MULTILINE)
    return float(match.group(1)) if match else 0.0
