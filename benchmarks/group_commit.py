"""Group commit on vs off: commits per second of N concurrent sessions, SQLite and PostgreSQL.

Each session does K commits in a row, each a small batch like the engine's send (one outbox
row and one journal entry). "on" is the stores' default group commit; "off" is one
transaction per commit (``group_delay=0, group_max_batch=1``). Both run in this process, one
after the other, on the same machine, so their ratio is what to look at.

    python benchmarks/group_commit.py                  # N in 1,16,64,256; K = 3000 / N (at least 20)
    python benchmarks/group_commit.py -n 1 -n 64 -k 100 --no-postgres

Writes benchmarks/results/group_commit.json and group_commit.png (needs matplotlib: the
``bench`` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from accompanist.envelope import Envelope
from accompanist.store.base import JournalEntry, Store, WriteBatch
from accompanist.store.sqlite import SQLiteStore

__all__ = ["Result", "main"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODES = {"on": {}, "off": {"group_delay": 0.0, "group_max_batch": 1}}


@dataclass
class Result:
    """One run: a store kind, a mode, N sessions of K commits."""

    store: str
    mode: str
    sessions: int
    commits_per_session: int
    seconds: float
    commits_per_second: float
    transactions: int
    batches: int
    batches_per_transaction: float
    latency_p50_ms: float
    latency_p99_ms: float


def small_batch(session: int, step: int) -> WriteBatch:
    sid = f"bench-{session:05d}"
    envelope = Envelope(sid, "order", 1, "wh", "pay", step + 1, "value", b"\x92\x01\xa3abc", {"traceparent": "00-x"})
    return WriteBatch(
        outbox=[envelope], journal=[JournalEntry(session_id=sid, step=step, kind="comm", name="wh->pay", value=b"1")]
    )


async def run_one(store: Store, sessions: int, commits: int, advance: Any) -> tuple[float, list[float]]:
    latencies: list[float] = []

    async def session(i: int) -> None:
        for k in range(commits):
            t0 = time.perf_counter()
            await store.commit(small_batch(i, k))
            latencies.append(time.perf_counter() - t0)
            advance()

    t0 = time.perf_counter()
    await asyncio.gather(*(session(i) for i in range(sessions)))
    return time.perf_counter() - t0, latencies


async def measure(name: str, make: Any, mode: str, sessions: int, commits: int, progress: Progress) -> Result:
    store = make(**MODES[mode])
    await store.open()
    for k in range(20):  # warm up: page allocation, statement caches, pool connections
        await store.commit(small_batch(99_999, k))
    before = store.commit_stats
    task = progress.add_task(f"{name:<16} {mode:<3} N={sessions:<4}", total=sessions * commits)
    try:
        seconds, latencies = await run_one(store, sessions, commits, lambda: progress.advance(task))
        after = store.commit_stats
    finally:
        await store.close()
    latencies.sort()
    total = sessions * commits
    return Result(
        store=name,
        mode=mode,
        sessions=sessions,
        commits_per_session=commits,
        seconds=round(seconds, 4),
        commits_per_second=round(total / seconds, 1),
        transactions=after.transactions - before.transactions,
        batches=after.batches - before.batches,
        batches_per_transaction=round((after.batches - before.batches) / (after.transactions - before.transactions), 2),
        latency_p50_ms=round(statistics.median(latencies) * 1000, 3),
        latency_p99_ms=round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 3),
    )


def start_postgres(console: Console) -> Any:
    sys.path.insert(0, str(ROOT))
    try:
        from tests.support.postgres import PostgresServer, PostgresUnavailableError
    except ImportError as exc:
        console.print(f"[yellow]PostgreSQL skipped: cannot import the test server helper ({exc})")
        return None
    try:
        return PostgresServer.launch()  # fsync and synchronous_commit on, as in production
    except PostgresUnavailableError as exc:
        console.print(f"[yellow]PostgreSQL skipped: {exc}")
        return None


def plot(results: list[Result], path: Path, console: Console) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        console.print("[yellow]no plot: pip install 'accompanist[bench]' (matplotlib)")
        return
    series = sorted({(r.store, r.mode) for r in results})
    ns = sorted({r.sessions for r in results})
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(9, 5))
    for j, (store, mode) in enumerate(series):
        ys = [
            next((r.commits_per_second for r in results if (r.store, r.mode, r.sessions) == (store, mode, n)), 0)
            for n in ns
        ]
        ax.bar([i + j * width for i in range(len(ns))], ys, width, label=f"{store}, group commit {mode}")
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(ns))], [f"N={n}" for n in ns])
    ax.set_yscale("log")
    ax.set_ylabel("commits per second (log)")
    ax.set_title("Group commit: N concurrent sessions, one outbox row + one journal entry per commit")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    console.print(f"plot: {path}")


def report(results: list[Result], console: Console) -> None:
    table = Table(title="group commit on vs off (commits/s; ratio = on / off)")
    for col in ("store", "N", "on c/s", "off c/s", "ratio", "batches/tx on", "p50 ms on/off", "p99 ms on/off"):
        table.add_column(col, justify="right")
    for store in sorted({r.store for r in results}):
        for n in sorted({r.sessions for r in results if r.store == store}):
            on = next((r for r in results if (r.store, r.mode, r.sessions) == (store, "on", n)), None)
            off = next((r for r in results if (r.store, r.mode, r.sessions) == (store, "off", n)), None)
            if on is None or off is None:
                continue
            table.add_row(
                store,
                str(n),
                f"{on.commits_per_second:,.0f}",
                f"{off.commits_per_second:,.0f}",
                f"{on.commits_per_second / off.commits_per_second:.2f}x",
                f"{on.batches_per_transaction:.1f}",
                f"{on.latency_p50_ms:.2f} / {off.latency_p50_ms:.2f}",
                f"{on.latency_p99_ms:.2f} / {off.latency_p99_ms:.2f}",
            )
    console.print(table)


async def amain(args: argparse.Namespace) -> list[Result]:
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)  # keep the table on one line per row in logs
    results: list[Result] = []
    tmp = Path(tempfile.mkdtemp(prefix="acc-bench-"))
    backends: list[tuple[str, Any]] = []
    counter = iter(range(1_000_000))

    def make_sqlite(**opts: Any) -> SQLiteStore:
        return SQLiteStore(tmp / f"run{next(counter)}.db", "wh", synchronous="FULL", **opts)

    backends.append(("sqlite FULL", make_sqlite))
    server = None if args.no_postgres else start_postgres(console)
    if server is not None:
        from accompanist.store.postgres import PostgresStore

        def make_postgres(**opts: Any) -> PostgresStore:
            return PostgresStore(server.create_database(), "wh", **opts)

        backends.append(("postgres", make_postgres))
    try:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as progress:
            for name, make in backends:
                for n in args.sessions:
                    commits = args.commits or max(20, -(-args.total // n))
                    for mode in ("off", "on"):
                        results.append(await measure(name, make, mode, n, commits, progress))
    finally:
        if server is not None:
            server.destroy()
    report(results, console)
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "batch": "1 outbox row + 1 journal entry",
        "modes": {"on": "default group commit (max_delay 2 ms, max_batch 512)", "off": MODES["off"]},
        "sqlite": "WAL, synchronous=FULL",
        "postgres": "local server, fsync=on, synchronous_commit=on",
    }
    out = RESULTS / "group_commit.json"
    out.write_text(json.dumps({"meta": meta, "results": [asdict(r) for r in results]}, indent=2) + "\n")
    console.print(f"results: {out}")
    plot(results, RESULTS / "group_commit.png", console)
    return results


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark from the command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--sessions", type=int, action="append", help="concurrent sessions (repeatable)")
    parser.add_argument("-k", "--commits", type=int, default=0, help="commits per session (default: --total / N)")
    parser.add_argument("--total", type=int, default=3000, help="commits per run when -k is not given")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = parser.parse_args(argv)
    args.sessions = args.sessions or [1, 16, 64, 256]
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
