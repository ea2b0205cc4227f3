"""Three sidecars on ONE PostgreSQL server and database, a schema each, through a server crash.

Issue 15, "PostgreSQL as the shared production store": real ``accompanist sidecar`` processes
in fault-tolerant mode keep their stores in one database: ``a`` in a schema its URL names
(``?schema=shop_a``), ``b`` and ``c`` in the default ``acc_<role>``, each with its own bound on
connections (``?pool_max=``). Under a steady saga load the server is killed the hard way
(SIGKILL to the postmaster and every backend, as a machine crash would) and started again,
so it recovers from its WAL. Every session must still end with every role agreeing, each
effect once, and no sidecar may ever hold more connections than its bound (sampled from
``pg_stat_activity`` throughout, by the ``application_name`` each sidecar sets). At the end
the test measures the rows and bytes a session leaves per role: the README's sizing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections import defaultdict
from pathlib import Path

import pytest

from tests.faults.outages import Load, saga_problems, settled, wait_health
from tests.integration.procs import ProcessCluster
from tests.support.postgres import PostgresServer

asyncpg = pytest.importorskip("asyncpg", reason="the PostgreSQL store needs asyncpg (the test extra has it)")

ROLES = ("a", "b", "c")
BOUNDS = {"a": 2, "b": 3, "c": 4}  # c says nothing: the default, 4
SCHEMAS = {"a": "shop_a", "b": "acc_b", "c": "acc_c"}
FT = ["--mode", "fault-tolerant", "--receive-timeout", "1"]
TABLES = ("acc_sessions", "acc_inbox", "acc_outbox", "acc_journal", "acc_txlog")


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def crash(server: PostgresServer) -> None:
    """SIGKILL the postmaster and every backend at once: no shutdown checkpoint, WAL recovery next."""
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    victims = [postmaster, *_children(postmaster)]
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in victims):
        assert time.monotonic() < deadline, "the killed PostgreSQL processes did not go away"
        time.sleep(0.02)
    # The postmaster's parent (init here) reaps it in its own time; until then it is a zombie,
    # which PostgreSQL takes for a live postmaster holding postmaster.pid and refuses to start.
    # Every process of the old server is dead, so the lock file is stale, as after a power cut.
    deadline = time.monotonic() + 2
    while Path(f"/proc/{postmaster}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if Path(f"/proc/{postmaster}").exists():
        (server.data / "postmaster.pid").unlink(missing_ok=True)
    server.running = False


class ConnectionWatch:
    """Samples ``pg_stat_activity`` of one database: the most connections each sidecar held."""

    def __init__(self, dsn: str, database: str) -> None:
        self.dsn = dsn
        self.database = database
        self.most: dict[str, int] = defaultdict(int)
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> ConnectionWatch:
        self._task = asyncio.ensure_future(self._run())
        return self

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            try:
                conn = await asyncpg.connect(self.dsn, server_settings={"application_name": "test-watch"})
            except (OSError, asyncpg.PostgresError):  # the server is down: try again
                await asyncio.sleep(0.05)
                continue
            try:
                while True:
                    rows = await conn.fetch(
                        "SELECT application_name, count(*) FROM pg_stat_activity WHERE datname = $1 GROUP BY 1",
                        self.database,
                    )
                    for name, count in rows:
                        self.most[name] = max(self.most[name], count)
                    self.samples += 1
                    await asyncio.sleep(0.05)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await asyncio.sleep(0.05)
            finally:
                with contextlib.suppress(Exception):
                    conn.terminate()


async def sizing(dsn: str, sessions: int) -> dict[str, dict[str, float]]:
    """Rows per session of each table, and bytes per session (tables and indexes), per role."""
    conn = await asyncpg.connect(dsn)
    try:
        out: dict[str, dict[str, float]] = {}
        for role, schema in SCHEMAS.items():
            row: dict[str, float] = {}
            for table in TABLES:
                row[table] = await conn.fetchval(f'SELECT count(*) FROM "{schema}".{table}') / sessions
            size = await conn.fetchval(
                "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'",
                schema,
            )
            row["bytes"] = float(size) / sessions
            row["session_row_bytes"] = await conn.fetchval(
                f'SELECT avg(pg_column_size(s.*)) FROM "{schema}".acc_sessions s'
            )
            out[role] = row
        return out
    finally:
        await conn.close()


@pytest.mark.slow
@pytest.mark.postgres
async def test_three_sidecars_share_one_server_through_a_crash(tmp_path: Path, own_postgres: PostgresServer) -> None:
    server = own_postgres
    dsn = server.create_database("shop")
    urls = {
        "a": f"{dsn}?schema=shop_a&pool_max={BOUNDS['a']}",
        "b": f"{dsn}?pool_max={BOUNDS['b']}",
        "c": dsn,
    }
    args = {role: [*FT, "--store", urls[role]] for role in ROLES}
    rng = random.Random(15)
    work = [rng.randrange(1, 10_000) for _ in range(240)]
    async with ProcessCluster(ROLES, "tests.faults.faultapp:app", tmp_path, args, FAULT_EFFECTS_DIR=str(tmp_path)) as c:
        watch = ConnectionWatch(dsn, "shop").start()
        load = Load(c, work, concurrency=16)
        running = asyncio.ensure_future(load.run())
        try:
            while len(load.started) < 80 and not running.done():  # noqa: ASYNC110 - polls the load's progress
                await asyncio.sleep(0.02)
            in_flight = len(load.started) - len(load.ended)
            await asyncio.to_thread(crash, server)
            down = time.monotonic()
            await asyncio.sleep(1.5)  # longer than the receive timeout: waiting sessions park
            await asyncio.to_thread(server.start)  # crash recovery from the WAL, the same port
            back = time.monotonic()
            load.deadline = back + 90
            await running
            seen = await settled(c, ROLES, load.started, timeout=max(1.0, load.deadline - time.monotonic()))
            ended_after = time.monotonic() - back
            for role in ROLES:
                await wait_health(c, role, 200, timeout=30)
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
            await watch.stop()
    sized = await sizing(dsn, len(load.started))

    assert load.problems == [], load.problems[:20]
    assert len(load.started) == len(work) and len(load.ended) == len(work)
    problems = saga_problems(seen, load.started, tmp_path)
    assert problems == [], "\n".join(problems[:30])
    assert {seen["a"][sid]["status"] for sid in load.started} == {"completed", "compensated"}
    assert watch.samples > 20
    for role, bound in BOUNDS.items():
        held = watch.most.get(f"accompanist-{role}", 0)
        assert 1 <= held <= bound, f"sidecar {role} held {held} connections at once, its bound is {bound}"
    for role in ROLES:  # every table of every role's schema in the one database
        assert sized[role]["acc_sessions"] == 1.0, sized
    print(
        f"\n{len(work)} sessions, {in_flight} in flight at the crash, server down {back - down:.1f}s, all ended "
        f"{ended_after:.1f}s after its return; most connections held: "
        + ", ".join(f"{r} {watch.most.get(f'accompanist-{r}', 0)}/{b}" for r, b in BOUNDS.items())
    )
    for role, row in sized.items():
        print(f"per session at {role}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()))
