"""Store outages with real processes and real servers: an infrastructure error never decides
a saga (issue 8, case 8).

Real ``accompanist sidecar`` processes in fault-tolerant mode run the fault app's ``saga``
(b reserves, c charges, a ships; some arguments fail a step on purpose) under a steady load,
while the store really fails: the PostgreSQL server is restarted, or the disk under a SQLite
store fills up. No sidecar is restarted: each must ride the outage out by itself, refuse new
sessions with ``503`` + ``Retry-After`` meanwhile, say so on ``/healthz``, and finish every
session with the outcome its arguments decide, every effect once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.outages import (
    HealthWatch,
    Load,
    call,
    refusal_problem,
    saga_problems,
    settled,
    sqlite_rows,
    wait_health,
)
from tests.integration.procs import ProcessCluster
from tests.support.postgres import PostgresServer, PostgresUnavailableError

ROLES = ("a", "b", "c")
FT = ["--mode", "fault-tolerant", "--receive-timeout", "2"]


def _arguments(n: int, seed: int) -> list[int]:
    """``n`` saga arguments: about a third fail a step on purpose (multiples of 5 or 7)."""
    rng = random.Random(seed)
    return [rng.randrange(1, 10_000) for _ in range(n)]


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own: the test restarts it."""
    try:
        server = PostgresServer.launch()
    except PostgresUnavailableError as exc:
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    try:
        yield server
    finally:
        server.destroy()


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
        for after in (50, 120):  # two restarts, a third and two thirds into the load
            while len(load.started) < after and not running.done():  # noqa: ASYNC110 - polls the load's progress
                await asyncio.sleep(0.02)
            down = time.monotonic()
            await asyncio.to_thread(server.stop)  # pg_ctl stop -m fast: every connection is cut
            await asyncio.sleep(0.5)
            await asyncio.to_thread(server.start)  # the same port and data
            outages.append((down, time.monotonic()))
        back = outages[-1][1]
        load.deadline = back + 60  # every session ends within a minute of the server's return
        await running
        seen = await settled(c, ROLES, load.started, timeout=max(1.0, load.deadline - time.monotonic()))
        for role in ROLES:  # healthy again by itself
            await wait_health(c, role, 200, timeout=30)
        await watch.stop()

    assert load.problems == [], load.problems[:20]
    assert watch.problems == [], watch.problems[:20]
    assert len(load.started) == len(load.args) and len(load.ended) == len(load.args)
    assert 500 not in load.answers, load.answers
    unhealthy = {role: watch.unhealthy(role, after=outages[0][0]) for role in ROLES}
    refused = load.answers[503]
    assert refused or any(
        unhealthy.values()
    ), f"the outages were seen nowhere: /healthz 503s {unhealthy}, POST answers {dict(load.answers)}"
    problems = saga_problems(seen, load.started, tmp_path)
    assert problems == [], "\n".join(problems[:30])
    outcomes = {seen["a"][sid]["status"] for sid in load.started}
    assert outcomes == {"completed", "compensated"}, outcomes
    print(f"POST answers {dict(load.answers)}; /healthz 503s {unhealthy}")


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


@pytest.mark.slow
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
            filler = disk / "filler"
            await asyncio.to_thread(_fill, filler)
            full_at = time.monotonic()
            await wait_health(c, "a", 503, timeout=30)  # the store's writes fail: unhealthy
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
            await asyncio.sleep(1.0)  # the disk stays full a while: nothing may be decided meanwhile
            filler.unlink()  # space is back: the sidecar recovers by itself
            freed = time.monotonic()
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
            f"after space was freed; POST answers {dict(load.answers)}"
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
