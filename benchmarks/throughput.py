"""Throughput and the price of durability: sessions/s of the 3-role chain in default mode and in
fault-tolerant mode on SQLite ``FULL``, SQLite ``NORMAL`` and PostgreSQL; then the time to
replay 10,000 unfinished sessions after a SIGKILL.

Why: users choose fault-tolerant mode for durability and pay for it in throughput; this puts
the price of each store side by side (one run, the same processes, sets taking turns), and
how long a crashed sidecar with a full backlog needs before it serves again.

- Throughput: ``chain2`` of ``chainapp`` (``start -> s1 -> s2 -> start``, each ``s<i>`` calling
  its local service once), 64 sessions in flight started over the initiator's HTTP API with
  ``?wait=true``, no network delay. The raw-socket floor of the same chain is a row too
  (``mode: floor``), for scale. PostgreSQL is a throwaway server on loopback started as
  ``tests/support/postgres.py`` does (a row with ``error`` when it cannot be started).
- Replay (was ``recovery.py``): two fault-tolerant sidecars (``start`` and ``s1`` of
  ``chainapp.held``) on SQLite ``FULL``; N sessions run until ``s1`` has called its service
  and waits for ``start``, which waits at a gate. ``s1`` is SIGKILLed and started again on the
  same store: ``healthy_s`` until ``/healthz`` answers, ``replayed_s`` until
  ``accompanist_replays_total`` counts all N (this is ``replay_10k_s`` when N = 10,000), then
  the gate opens and ``drained_s`` until all N completed, each with the right result.

Rows: ``mode, store, sessions_per_s`` plus ``p50_ms``, ``commits_per_session`` and CPU ms per
session per sidecar. Top level: ``replay`` (the replay measurement) and ``replay_10k_s``.

Usage::

    python benchmarks/throughput.py [--quick] [--json PATH] [--sessions 3000] [--replay 10000]

Writes ``benchmarks/results/throughput.json`` and ``throughput.png``.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import harness  # noqa: E402
from chainsetup import ENV, PARTS, RawClient, Setup, Sidecars, chain_session, measure  # noqa: E402
from examples.warehouse.cluster import Proc, free_port, wait_healthy  # noqa: E402

__all__ = ["ROW_KEYS", "main", "run"]

ROW_KEYS = ("mode", "store", "sessions_per_s")
T = TypeVar("T")
ROLES = ("start", "s1", "s2")
IN_FLIGHT = 64
_REPLAYS = re.compile(rb"^accompanist_replays_total (\S+)$", re.MULTILINE)
_LIVE = re.compile(rb"^accompanist_sessions_live (\S+)$", re.MULTILINE)


def _sets(postgres_dsn: str | None) -> list[tuple[Sidecars, str]]:
    sets = [
        (Sidecars("default", "default", ROLES), "memory"),
        (Sidecars("sqlite-full", "fault-tolerant", ROLES, synchronous="FULL"), "sqlite FULL"),
        (Sidecars("sqlite-normal", "fault-tolerant", ROLES, synchronous="NORMAL"), "sqlite NORMAL"),
    ]
    if postgres_dsn is not None:
        stores = dict.fromkeys(ROLES, postgres_dsn)  # one database, a schema per role
        sets.append((Sidecars("postgres", "fault-tolerant", ROLES, store=stores), "postgresql"))
    return sets


async def _throughput(
    args: Any, workdir: Path, tick: harness.Ticker, postgres_dsn: str | None
) -> dict[str, dict[str, Any]]:
    sets = _sets(postgres_dsn)
    setup = Setup(workdir, [2], [s for s, _ in sets], orchestrator=False)
    found: dict[str, dict[str, Any]] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        tick(f"starting {3 * len(sets)} sidecars")
        await setup.start(http)
        floor = RawClient(setup.floor_entry[2])
        try:
            names = ["floor", *(s.name for s, _ in sets)]
            tick("throughput", total=args.rounds * len(names) * (args.warmup + args.sessions))
            runs: dict[str, list[tuple[list[float], float, float, dict[str, float]]]] = {n: [] for n in names}
            for round_ in range(args.rounds):
                for name in names if round_ % 2 == 0 else list(reversed(names)):
                    tick(f"round {round_ + 1}/{args.rounds}: {name}, {IN_FLIGHT} in flight")
                    if name == "floor":
                        call: Any = floor.call
                    else:
                        api = setup.api(name)

                        def call(value: int, api: str = api) -> Any:
                            return chain_session(http, api, 2, value)

                    await measure(call, 2, args.warmup, IN_FLIGHT, tick)
                    is_ft = name not in ("floor", "default")
                    before = await setup.commits(http, name) if is_ft else 0.0
                    cpu = setup.cpu(name) if name != "floor" else {}
                    lat, wall = await measure(call, 2, args.sessions, IN_FLIGHT, tick)
                    cpu_after = setup.cpu(name) if name != "floor" else {}
                    if is_ft:
                        await asyncio.sleep(0.3)  # lazy writes land
                    commits = (await setup.commits(http, name) - before) / len(lat) if is_ft else 0.0
                    used = {r: (cpu_after[r] - cpu[r]) * 1000 / len(lat) for r in cpu}
                    runs[name].append((lat, wall, commits, used))
            labels = {"floor": ("floor", "none (raw sockets)"), **{s.name: (s.mode, label) for s, label in sets}}
            for name, measured in runs.items():
                lat = [x for m in measured for x in m[0]]
                mode, store = labels[name]
                row: dict[str, Any] = {
                    "mode": mode,
                    "store": store,
                    "sessions_per_s": round(len(lat) / sum(m[1] for m in measured), 1),
                    "p50_ms": round(statistics.median(lat) * 1000, 3),
                    "sessions": len(lat),
                }
                if name != "floor":
                    row["cpu_ms_per_session"] = {
                        r: round(statistics.mean(m[3][r] for m in measured), 3) for r in measured[0][3]
                    }
                if mode == "fault-tolerant":
                    row["commits_per_session"] = round(statistics.mean(m[2] for m in measured), 2)
                found[name] = row
        finally:
            floor.close()
            tick("stopping the throughput sidecars")
            await setup.stop()
    return found


async def _metric(http: aiohttp.ClientSession, api: str, pattern: re.Pattern[bytes]) -> float:
    try:
        async with http.get(f"{api}/metrics") as r:
            match = pattern.search(await r.read())
    except (aiohttp.ClientError, TimeoutError):
        return -1.0
    return float(match.group(1)) if match else 0.0


async def _replay(n: int, workdir: Path, tick: harness.Ticker) -> dict[str, Any]:
    """SIGKILL ``s1`` holding ``n`` unfinished sessions, start it again: how long until it
    serves, has replayed them all, and (gate open) all completed with the right results."""
    workdir.mkdir(parents=True, exist_ok=True)
    gate = workdir / "gate"
    env = {**ENV, "CHAIN_GATE": str(gate)}
    service_port = free_port()
    service = Proc("service", [sys.executable, PARTS, "service", str(service_port)], env, workdir / "service.log", "")
    listen = {"start": free_port(), "s1": free_port()}
    procs: dict[str, Proc] = {}
    for role, other in (("start", "s1"), ("s1", "start")):
        api = free_port()
        command = [
            sys.executable, "-m", "accompanist", "sidecar", "--app", "chainapp:app", "--role", role,
            "--listen", f"127.0.0.1:{listen[role]}", "--api", f"127.0.0.1:{api}", "--log-level", "WARNING",
            "--peer", f"{other}=127.0.0.1:{listen[other]}", "--mode", "fault-tolerant",
            "--store", f"sqlite:///{workdir / f'{role}.db'}", "--receive-timeout", "3600",
            "--max-inflight", str(2 * n + 100),
        ]  # fmt: skip
        role_env = {**env, "CHAIN_SERVICE_PORT": str(service_port)}
        procs[role] = Proc(role, command, role_env, workdir / f"{role}.log", f"http://127.0.0.1:{api}", cwd=workdir)
    service.start()
    for proc in procs.values():
        proc.start()
    found: dict[str, Any] = {"sessions": n, "store": "sqlite FULL"}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
            for proc in procs.values():
                await wait_healthy(http, proc, 60)
            start_api, s1_api = procs["start"].health, procs["s1"].health
            ids: list[tuple[str, int]] = []
            values = iter(range(n))
            tick(f"replay: starting {n} sessions that stay unfinished", total=n)

            async def place() -> None:
                for value in values:
                    body = {"choreography": "held", "args": [value]}
                    async with http.post(f"{start_api}/sessions?wait=false", json=body) as r:
                        answer = await r.json()
                        if r.status != 202:
                            raise RuntimeError(f"start refused: {r.status} {answer}")
                    ids.append((answer["session_id"], value))
                    tick(advance=1)

            began = time.perf_counter()
            await asyncio.gather(*(place() for _ in range(32)))
            found["start_s"] = round(time.perf_counter() - began, 2)
            tick("replay: waiting for s1 to hold every session", total=n)
            while (live := await _metric(http, s1_api, _LIVE)) < n:
                tick(total=n)
                tick(advance=max(0.0, live))
                await asyncio.sleep(0.5)
            await asyncio.sleep(1.0)  # the last inbox and journal rows ride on a lingering commit
            tick(f"replay: SIGKILL s1 with {n} unfinished sessions and start it again", total=n)
            procs["s1"].kill()
            began = time.perf_counter()
            procs["s1"].start()
            await wait_healthy(http, procs["s1"], 600)
            found["healthy_s"] = round(time.perf_counter() - began, 2)
            while (replayed := await _metric(http, s1_api, _REPLAYS)) < n:
                tick(total=n)
                tick(advance=max(0.0, replayed))
                await asyncio.sleep(0.1)
            found["replayed_s"] = round(time.perf_counter() - began, 2)
            gate.touch()
            began = time.perf_counter()
            tick("replay: gate open, waiting for every session to complete", total=n)
            while (live := await _metric(http, start_api, _LIVE)) != 0:
                tick(total=n)
                tick(advance=max(0.0, n - live))
                await asyncio.sleep(0.1)
            found["drained_s"] = round(time.perf_counter() - began, 2)
            checks = iter(ids)

            async def check() -> None:
                for sid, value in checks:
                    async with http.get(f"{start_api}/sessions/{sid}") as r:
                        record = await r.json()
                    if record.get("status") != "completed" or record["result"] != 2 * value + 2:
                        raise RuntimeError(f"session {sid} ended {record}, expected completed with {2 * value + 2}")

            await asyncio.gather(*(check() for _ in range(16)))
            found["verified"] = True
            found["replays_counted"] = await _metric(http, s1_api, _REPLAYS)
    finally:
        await asyncio.gather(*(p.terminate(10) for p in procs.values()), service.terminate(5))
    return found


def _again_on_clash(measure: Callable[[Path], Coroutine[Any, Any, T]], tick: harness.Ticker) -> T:
    """Run ``measure`` in a fresh directory; again (fresh ports) if a port was taken meanwhile."""
    for attempt in range(3):
        try:
            with tempfile.TemporaryDirectory(prefix="throughput-bench-") as tmp:
                return asyncio.run(measure(Path(tmp)))
        except RuntimeError as exc:
            if attempt == 2 or not harness.bind_clash(exc):
                raise
            tick("a port was taken while the processes started: again with fresh ports")
    raise AssertionError("unreachable")


def _start_postgres() -> tuple[Any, str | None, str | None]:
    """A throwaway PostgreSQL server, its DSN, or why there is none."""
    try:
        from tests.support.postgres import PostgresServer

        server = PostgresServer.launch()
        return server, server.create_database("bench"), None
    except Exception as exc:
        return None, None, harness.error_text(exc)


def _plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    rows = [r for r in data["rows"] if "sessions_per_s" in r]
    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [f"{r['mode']}\n{r['store']}" for r in rows]
    ax.bar(labels, [r["sessions_per_s"] for r in rows], color="tab:blue")
    for i, r in enumerate(rows):
        ax.annotate(f"{r['sessions_per_s']:.0f}", (i, r["sessions_per_s"]), ha="center", va="bottom")
    replay = data.get("replay") or {}
    note = f"; replay of {replay['sessions']} sessions: {replay['replayed_s']} s" if "replayed_s" in replay else ""
    ax.set_title(f"3-role chain, {IN_FLIGHT} in flight: sessions/s{note}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, measure, write the JSON and the plot; return what was written."""
    parser = harness.parser(__doc__, "throughput")
    parser.add_argument("--sessions", type=int, default=3000, help="sessions per store and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--replay", type=int, default=10_000, help="unfinished sessions to replay (0: skip)")
    parser.add_argument("--no-postgres", action="store_true", help="leave PostgreSQL out (a row says so)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sessions, args.rounds, args.warmup, args.replay = 600, 1, 100, min(args.replay, 2000)
    started = harness.machine()
    server, dsn, why = (None, None, "left out (--no-postgres)") if args.no_postgres else _start_postgres()
    try:
        with harness.progress("throughput") as tick:
            found = _again_on_clash(lambda tmp: _throughput(args, tmp, tick, dsn), tick)
            replay: dict[str, Any] = {}
            if args.replay > 0:
                try:
                    replay = _again_on_clash(lambda tmp: _replay(args.replay, tmp, tick), tick)
                except Exception as exc:
                    replay = {"sessions": args.replay, "error": harness.error_text(exc)}
    finally:
        if server is not None:
            server.destroy()
    rows = list(found.values())
    if dsn is None:
        rows.append({"mode": "fault-tolerant", "store": "postgresql", "error": why})
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    extra = {
        "settings": settings,
        "replay": replay,
        "replay_10k_s": replay.get("replayed_s") if replay.get("sessions") == 10_000 else None,
    }
    data = harness.write_results("throughput", rows, path=args.json, extra=extra, plot=_plot, started=started)
    for row in rows:
        if "error" in row:
            print(f"{row['mode']:<15} {row['store']:<20} error: {row['error']}")
            continue
        commits = f"  {row['commits_per_session']:.2f} commits/session" if "commits_per_session" in row else ""
        cpu = ", ".join(f"{r} {ms:.2f}" for r, ms in row.get("cpu_ms_per_session", {}).items())
        print(
            f"{row['mode']:<15} {row['store']:<20} {row['sessions_per_s']:8.1f} sessions/s  p50 {row['p50_ms']:7.2f} ms"
            f"{commits}{'  CPU ms/session: ' + cpu if cpu else ''}"
        )
    if replay:
        print(f"replay: {replay}")
    return data


def main() -> None:
    run()


if __name__ == "__main__":
    main()
