"""Store outages with real processes and real servers: an infrastructure error never decides
a saga (issue 8, case 8).

Real ``accompanist sidecar`` processes in fault-tolerant mode run the fault app's ``saga``
(b reserves, c charges, a ships; some arguments fail a step on purpose) under a steady load,
while the store really fails: the PostgreSQL server is restarted, or the disk under a SQLite
store fills up. No sidecar is restarted: each must ride the outage out by itself, refuse new
sessions with ``503`` + ``Retry-After`` meanwhile, say so on ``/healthz``, and finish every
session with the outcome its arguments decide, every effect once.

The last two tests are the process-level cases 3 and 4 of that issue: a participant that was
down (SIGKILL) for many retention periods still gets the outcome, since nothing it has not
acknowledged is pruned; one that lost the outcome in a crash asks the initiator; and default
mode keeps a finished role's commits (past its memory retention) until the outcome is known.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import os
import random
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.faultapp import read_ledger
from tests.faults.outages import (
    HealthWatch,
    Load,
    call,
    metric,
    refusal_problem,
    saga_problems,
    settled,
    sqlite_rows,
    wait_health,
    wait_status,
)
from tests.integration.procs import ProcessCluster
from tests.support.postgres import PostgresServer

ROLES = ("a", "b", "c")
FT = ["--mode", "fault-tolerant", "--receive-timeout", "1"]


def _arguments(n: int, seed: int) -> list[int]:
    """``n`` saga arguments: about a third fail a step on purpose (multiples of 5 or 7)."""
    rng = random.Random(seed)
    return [rng.randrange(1, 10_000) for _ in range(n)]


@pytest.mark.slow
@pytest.mark.postgres
async def test_postgres_restarts_under_load_decide_nothing(tmp_path: Path, own_postgres: PostgresServer) -> None:
    server = own_postgres
    args = {role: [*FT, "--store", server.create_database(f"acc_{role}")] for role in ROLES}
    async with ProcessCluster(ROLES, "tests.faults.faultapp:app", tmp_path, args, FAULT_EFFECTS_DIR=str(tmp_path)) as c:
        load = Load(c, _arguments(200, seed=8), concurrency=16)
        watch = HealthWatch(c, ROLES).start()
        running = asyncio.ensure_future(load.run())
        outages: list[tuple[float, float]] = []
        # Two restarts, a third and two thirds into the load: a short one, and one longer than
        # the receive timeout (sessions waiting for a peer park meanwhile and must resume).
        for after, pause in ((50, 0.3), (120, 1.5)):
            while len(load.started) < after and not running.done():  # noqa: ASYNC110 - polls the load's progress
                await asyncio.sleep(0.02)
            down = time.monotonic()
            await asyncio.to_thread(server.stop)  # pg_ctl stop -m fast: every connection is cut
            await asyncio.sleep(pause)
            await asyncio.to_thread(server.start)  # the same port and data
            outages.append((down, time.monotonic()))
        back = outages[-1][1]
        load.deadline = back + 60  # every session ends within a minute of the server's return
        await running
        seen = await settled(c, ROLES, load.started, timeout=max(1.0, load.deadline - time.monotonic()))
        all_ended = time.monotonic() - back
        for role in ROLES:  # healthy again by itself
            await wait_health(c, role, 200, timeout=30)
        await watch.stop()
        # A restart while the sidecars are idle: their pooled connections are all dead, and
        # the next sessions must still run (a start may be refused with 503 once, no more).
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(server.start)
        idle = Load(c, _arguments(10, seed=9), prefix="idle", concurrency=5, deadline=time.monotonic() + 30)
        await idle.run()
        seen = await settled(c, ROLES, {**load.started, **idle.started}, timeout=30)

    assert load.problems == [], load.problems[:20]
    assert watch.problems == [], watch.problems[:20]
    assert len(load.started) == len(load.args) and len(load.ended) == len(load.args)
    assert 500 not in load.answers, load.answers
    unhealthy = {role: watch.unhealthy(role, after=outages[0][0]) for role in ROLES}
    for down, up in outages:  # every sidecar said so while the server was down
        said = {role: watch.unhealthy(role, after=down, before=up + 2) for role in ROLES}
        assert all(said.values()), f"/healthz 503s during the outage at {down:.1f}: {said}"
    assert load.answers[503] > 0, f"no start was refused during the outages: {dict(load.answers)}"
    assert idle.problems == [] and len(idle.ended) == len(idle.args), idle.problems
    problems = saga_problems(seen, {**load.started, **idle.started}, tmp_path)
    assert problems == [], "\n".join(problems[:30])
    outcomes = {seen["a"][sid]["status"] for sid in load.started}
    assert outcomes == {"completed", "compensated"}, outcomes
    print(
        f"POST answers {dict(load.answers)}; /healthz 503s {unhealthy}; all ended {all_ended:.1f}s after; "
        f"idle restart: {dict(idle.answers)}"
    )


# -- a full disk under a SQLite store ----------------------------------------------------------
@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("a full disk needs root to mount a small tmpfs")
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def _fill(path: Path) -> int:
    """Write ``path`` until the file system is full; return the bytes written."""
    written = 0
    with path.open("wb", buffering=0) as f:
        for chunk in (1 << 20, 1 << 14, 1 << 10, 1):
            try:
                while True:
                    written += f.write(b"\0" * chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    return written


async def test_a_full_disk_is_waited_out_and_recovered_from(tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "disk", "24m") as disk:
        store = disk / "a.db"
        args = {"a": [*FT, "--store", f"sqlite:///{store}"], "b": [*FT, "--store", "sqlite:///./b.db"]}
        args["c"] = [*FT, "--store", "sqlite:///./c.db"]
        async with ProcessCluster(
            ROLES, "tests.faults.faultapp:app", tmp_path, args, FAULT_EFFECTS_DIR=str(tmp_path)
        ) as c:
            warm = Load(c, _arguments(30, seed=1), prefix="warm", concurrency=8, deadline=time.monotonic() + 30)
            await warm.run()
            assert len(warm.ended) == 30, warm.problems
            load = Load(c, _arguments(150, seed=2), prefix="s", concurrency=16)
            running = asyncio.ensure_future(load.run())
            while len(load.started) < 20:  # noqa: ASYNC110 - polls the load's progress
                await asyncio.sleep(0.02)
            watch = HealthWatch(c, ["a"]).start()
            filler = disk / "filler"
            await asyncio.to_thread(_fill, filler)
            full_at = time.monotonic()
            await wait_health(c, "a", 503, timeout=30)  # the store's writes fail: unhealthy
            unhealthy_at = time.monotonic()
            # While it is full: the API answers, and refuses starts with a JSON 503 + Retry-After.
            refusal = await call(c, "POST", "a", "/sessions", json={"choreography": "saga", "args": [1]})
            assert refusal_problem(refusal) is None and refusal.status == 503, refusal
            assert refusal.body.get("code") == "store-unavailable", refusal.body
            health = await call(c, "GET", "a", "/healthz")
            assert health.status == 503 and health.body["store"] == "failing", health.body
            for path in ("/sessions?limit=5", f"/sessions/{load.sid(0)}", "/metrics"):
                answer = await call(c, "GET", "a", path)
                assert answer.status in (200, 503), (path, answer.status, answer.body)
                assert answer.status == 200 or refusal_problem(answer) is None, (path, answer)
            stalled = len(load.started) - len(load.ended)
            await asyncio.sleep(2.0)  # full for longer than the receive timeout: peers waiting for a park
            freed = time.monotonic()
            await watch.stop()
            during = [status for t, _, status, _ in watch.seen if unhealthy_at <= t < freed]
            assert set(during) == {503}, f"/healthz while the disk was full: {Counter(during)}"
            filler.unlink()  # space is back: the sidecar recovers by itself
            recovered = await wait_health(c, "a", 200, timeout=30)
            load.deadline = time.monotonic() + 60
            await running
            after = Load(c, _arguments(20, seed=3), prefix="after", concurrency=8, deadline=time.monotonic() + 30)
            await after.run()
            started = {**warm.started, **load.started, **after.started}
            seen = await settled(c, ROLES, started, timeout=30)
            for role in ROLES:
                await wait_health(c, role, 200, timeout=30)
        print(
            f"disk full for {freed - full_at:.1f}s with {stalled} sessions in flight; healthy {recovered:.1f}s "
            f"after space was freed; POST answers {dict(load.answers)}; /healthz while full {Counter(during)}"
        )
        assert load.problems == [] and after.problems == [], (load.problems + after.problems)[:20]
        assert 500 not in load.answers, load.answers
        assert load.answers[503] > 0, f"no start was refused while the disk was full: {dict(load.answers)}"
        assert len(load.ended) == len(load.args) and len(after.ended) == len(after.args)
        problems = saga_problems(seen, started, tmp_path)
        assert problems == [], "\n".join(problems[:30])
        assert sqlite_rows(store, "PRAGMA integrity_check") == [("ok",)]
        unfinished = sqlite_rows(store, "SELECT count(*) FROM acc_sessions WHERE status NOT IN "
                                        "('completed', 'compensated', 'failed', 'cancelled')")  # fmt: skip
        assert unfinished == [(0,)]


# -- a participant down longer than the retention; a role that lost its outcome asks -----------
def _config(path: Path, **settings: object) -> list[str]:
    """A TOML ``--config`` file with ``settings``."""
    path.write_text("".join(f"{k} = {v!r}\n" for k, v in settings.items()).replace("'", '"'))
    return ["--config", str(path)]


def _unacked_to_c(store: Path, sid: str) -> int:
    rows = sqlite_rows(store, "SELECT count(*) FROM acc_outbox WHERE session_id = ? AND dst = 'c' AND acked = 0", sid)
    return int(rows[0][0])


def _ledger(directory: Path, role: str, sid: str) -> list[str]:
    return sorted(f"{what}:{name}" for s, what, name, _ in read_ledger(directory, role) if s == sid)


@pytest.mark.slow
async def test_a_participant_down_longer_than_the_retention_still_gets_its_outcome(tmp_path: Path) -> None:
    ft = {"mode": "fault-tolerant", "receive_timeout": 2.0, "retention": 0.5, "prune_interval": 0.2}
    ft["outcome_query_after"] = 1.0
    args = {role: _config(tmp_path / f"{role}.toml", **ft, store=f"sqlite:///./{role}.db") for role in "ab"}
    # c makes a participant's record of the outcome durable only with its next commit: a
    # SIGKILL soon after it was told loses what it was told (it acknowledged it already).
    args["c"] = _config(tmp_path / "c.toml", **ft, store="sqlite:///./c.db", lazy_interval=600.0)
    stores = {role: tmp_path / f"{role}.db" for role in ROLES}
    async with ProcessCluster(ROLES, "tests.faults.faultapp:app", tmp_path, args, FAULT_EFFECTS_DIR=str(tmp_path)) as c:
        # 1. c loses the outcome in a crash; back, it asks the initiator.
        told = (await c.start_session("a", "saga", 1, wait=True))["session_id"]
        for role in ROLES:
            await wait_status(c, role, told, {"completed"})
        for role in "ab":  # nothing left to redeliver: c can only learn the outcome by asking
            await _until(lambda r=role: _zero(c, r), 10, f"{role}'s outbox acknowledged")
        assert sqlite_rows(stores["c"], "SELECT status FROM acc_sessions WHERE session_id = ?", told) == [("finished",)]
        c.kill("c")
        await c.restart("c")
        await wait_status(c, "c", told, {"completed"}, timeout=15)
        assert await metric(c, "c", "accompanist_outcome_queries_total") >= 1
        # Retention runs: the ended session's rows at a go (they owe nothing to anyone).
        await _until(lambda: _pruned(stores["a"], told), 10, "a's rows of the ended session pruned")

        # 2. c commits, its part ends, and it is killed; later b fails (one session) or the
        # initiator declares completed (another), while c stays down for many retentions.
        failing = (await c.start_session("a", "late", -1, wait=False))["session_id"]
        passing = (await c.start_session("a", "late", 2, wait=False))["session_id"]
        for sid in (failing, passing):
            await wait_status(c, "c", sid, {"finished"})
        c.kill("c")
        (tmp_path / "gate").touch()  # b goes on: it aborts `risky` for -1, commits it for 2
        await wait_status(c, "a", passing, {"completed"})  # ended at a, its outcome to c unsent
        await wait_status(c, "a", failing, {"compensating"})
        # (The API may show its status before the group commit holding those rows is done.)
        await _until(lambda: _unacked_to_c(stores["a"], passing) >= 1, 10, "a's outcome to c stored")
        await _until(lambda: _unacked_to_c(stores["a"], failing) >= 1, 10, "a's failure to c stored")
        down = time.monotonic()
        while time.monotonic() - down < 10 * ft["retention"]:
            assert _unacked_to_c(stores["a"], passing) >= 1, "a pruned its unacknowledged outcome to c"
            assert _unacked_to_c(stores["a"], failing) >= 1, "a pruned its unacknowledged failure to c"
            await asyncio.sleep(0.25)
        await c.restart("c")
        seen = await settled(c, ROLES, [failing, passing], timeout=30)
        # Everything a and b sent reached c. (c's own acknowledgement marks wait for its next
        # commit, by this test's lazy_interval: its gauge may count rows a already holds.)
        for role in "ab":
            await _until(lambda r=role: _zero(c, r), 15, f"{role}'s outbox acknowledged")
    assert {role: seen[role][failing]["status"] for role in ROLES} == dict.fromkeys(ROLES, "compensated")
    assert {role: seen[role][passing]["status"] for role in ROLES} == dict.fromkeys(ROLES, "completed")
    assert _ledger(tmp_path, "c", failing) == ["commit:hold", "undo:hold"]  # c undid its commit
    assert _ledger(tmp_path, "c", passing) == ["commit:hold"]
    assert _ledger(tmp_path, "b", failing) == [] and _ledger(tmp_path, "b", passing) == ["commit:risky"]
    assert all(calls == 1 for role in ROLES for *_, calls in read_ledger(tmp_path, role))


async def test_default_mode_keeps_a_finished_roles_commits_until_the_outcome(tmp_path: Path) -> None:
    settings = {"receive_timeout": 30.0, "memory_retention": 0.5, "prune_interval": 0.2, "outcome_query_after": 1.0}
    args = _config(tmp_path / "default.toml", **settings)
    async with ProcessCluster(ROLES, "tests.faults.faultapp:app", tmp_path, args, FAULT_EFFECTS_DIR=str(tmp_path)) as c:
        sid = (await c.start_session("a", "late", -1, wait=False))["session_id"]
        await wait_status(c, "c", sid, {"finished"})
        finished = time.monotonic()
        while time.monotonic() - finished < 6 * settings["memory_retention"]:
            assert await metric(c, "c", "accompanist_sessions_awaiting_outcome") == 1
            assert (await call(c, "GET", "c", f"/sessions/{sid}")).body["status"] == "finished"
            await asyncio.sleep(0.25)
        (tmp_path / "gate").touch()  # long after c finished, b's commit fails
        seen = await settled(c, ROLES, [sid], timeout=30)
        assert await metric(c, "c", "accompanist_sessions_awaiting_outcome") == 0
    assert {role: seen[role][sid]["status"] for role in ROLES} == dict.fromkeys(ROLES, "compensated")
    assert _ledger(tmp_path, "c", sid) == ["commit:hold", "undo:hold"]


async def _until(condition: Callable[[], Awaitable[bool] | bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if await result if inspect.isawaitable(result) else result:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")


async def _zero(c: ProcessCluster, role: str) -> bool:
    return await metric(c, role, "accompanist_outbox_unacked") == 0


def _pruned(store: Path, sid: str) -> bool:
    return sqlite_rows(store, "SELECT count(*) FROM acc_outbox WHERE session_id = ?", sid) == [(0,)]
