"""Durable timers: N sessions sleeping at once, parked (no task) against waiting in their tasks.

Why: a parked sleeper should cost a row in the store and a heap entry, not a task with its
session's state; and a sidecar restarted with thousands of sleepers should rebuild its timers
from the records, not replay every session. Both are measured side by side in one run, on the
same machine, with the same choreography (``a`` sends to ``b``; ``b`` sleeps, then answers),
two in-process engines over the memory network and SQLite stores (``synchronous=FULL``):

- ``parked``: fault-tolerant mode, ``sleep_in_task=1`` (the default): the sleep parks;
- ``in_task``: fault-tolerant mode, ``sleep_in_task`` larger than the sleep: every session
  waits in its task (a journaled deadline, but a task and its state held per session).

For each: ``tasks`` (asyncio tasks alive while all sleep), ``memory_mb`` (Python heap held
while all sleep, by tracemalloc, above the level before the sessions started),
``restart_s`` (stopping ``b`` and starting it again with every session asleep, until it
accepts), and ``woken_s`` (from the last session's deadline until every session completed
at ``a``).

Usage::

    python benchmarks/timers.py [--sessions 2000] [--quick]

Writes ``benchmarks/results/timers.json`` and ``timers.png`` (with matplotlib).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src")]

import accompanist as ac  # noqa: E402
from accompanist.engine.config import EngineConfig, Mode  # noqa: E402
from accompanist.engine.engine import Engine  # noqa: E402
from accompanist.store.sqlite import SQLiteStore  # noqa: E402
from accompanist.transport.memory import MemoryNetwork  # noqa: E402

__all__ = ["main"]

RESULTS = ROOT / "benchmarks" / "results"
A, B = ac.roles("a", "b")


def _app(seconds: float) -> ac.App:
    @ac.choreography("nap", roles=(A, B))
    async def nap(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        at_b = await ch.comm(A, B, x)
        await ch.sleep(B, seconds)
        return await ch.comm(B, A, at_b)

    return ac.App(nap)


def _progress(label: str, done: int, total: int) -> None:
    print(f"\r[timers] {label}: {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)


async def _measure(variant: str, n: int, workdir: Path) -> dict[str, Any]:
    sleep = max(10.0, n / 50)  # long enough for every session to fall asleep first
    config = EngineConfig(
        mode=Mode.FAULT_TOLERANT,
        receive_timeout=1.0,  # a's receives park too: what is left is b's part
        retry_min=0.01,
        retry_max=0.2,
        relay_interval=0.05,
        sleep_in_task=1.0 if variant == "parked" else 10 * sleep,
    )
    app = _app(sleep)
    network = MemoryNetwork()
    stores = {r: SQLiteStore(workdir / f"{variant}-{r}.db", r) for r in ("a", "b")}
    engines = {r: Engine(app, r, store=stores[r], transport=network.transport(r), config=config) for r in stores}
    for engine in engines.values():
        await engine.start()
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    sids: list[str] = []
    for i in range(0, n, 100):  # a hundred starts at a time, as a busy service would
        batch = range(i, min(n, i + 100))
        sids += await asyncio.gather(*(engines["a"].start_session("nap", [k]) for k in batch))
        _progress(f"{variant}: started", len(sids), n)
    last_deadline = time.time() + sleep  # the last session's sleep ends about then
    b = engines["b"]

    def asleep() -> int:
        if variant == "parked":
            return len(b.timers)
        return sum(1 for run in b.live.values() if run.steps >= 2)  # past its receive: in the sleep

    while (asleep() < n or engines["a"].live) and time.time() < last_deadline - 1:  # noqa: ASYNC110 - polling engines
        await asyncio.sleep(0.2)
    if asleep() < n:
        raise RuntimeError(f"only {asleep()} of {n} sessions fell asleep before the deadline: start fewer sessions")
    gc.collect()
    memory = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    tasks = len(asyncio.all_tasks())
    t0 = time.perf_counter()
    await engines["b"].stop(grace=0)
    engines["b"] = Engine(
        app, "b", store=SQLiteStore(workdir / f"{variant}-b.db", "b"), transport=network.transport("b"), config=config
    )
    await engines["b"].start()
    restart = time.perf_counter() - t0
    for ended, sid in enumerate(sids, 1):
        record = await engines["a"].wait(sid, timeout=10 * sleep)
        if record.status != "completed":
            raise RuntimeError(f"session {sid} ended {record.status}")
        if ended % 100 == 0 or ended == n:
            _progress(f"{variant}: completed", ended, n)
    woken = max(0.0, time.time() - last_deadline)
    for engine in engines.values():
        await engine.stop(grace=0)
    return {
        "variant": variant,
        "sessions": n,
        "sleep_s": sleep,
        "tasks": tasks,
        "memory_mb": memory / 1e6,
        "restart_s": restart,
        "woken_s": woken,
    }


async def _run(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="timers-bench-", dir=ROOT / "benchmarks") as tmp:
        rows = [await _measure(v, n, Path(tmp)) for v in ("parked", "in_task")]
    parked, in_task = rows
    ratios = {
        "tasks in_task / parked": in_task["tasks"] / max(1, parked["tasks"]),
        "memory in_task / parked": in_task["memory_mb"] / max(1e-9, parked["memory_mb"]),
        "restart in_task / parked": in_task["restart_s"] / max(1e-9, parked["restart_s"]),
    }
    return {"results": rows, "ratios": ratios}


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        print("matplotlib missing: no plot", file=sys.stderr)
        return
    keys = [("tasks", "asyncio tasks"), ("memory_mb", "Python heap (MB)"), ("restart_s", "restart (s)")]
    fig, axes = plt.subplots(1, len(keys), figsize=(11, 3.4))
    for ax, (key, title) in zip(axes, keys, strict=True):
        ax.bar([r["variant"] for r in rows], [r[key] for r in rows], color=["#4c72b0", "#dd8452"])
        ax.set_title(title)
    fig.suptitle(f"{rows[0]['sessions']} sessions sleeping at one sidecar: parked vs waiting in their tasks")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and write its results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="500 sessions")
    args = parser.parse_args(argv)
    data = asyncio.run(_run(500 if args.quick else args.sessions))
    data["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "timers.json").write_text(json.dumps(data, indent=2) + "\n")
    _plot(data["results"], RESULTS / "timers.png")
    for row in data["results"]:
        print(
            f"{row['variant']:>8}: {row['sessions']} asleep: {row['tasks']} tasks, {row['memory_mb']:.1f} MB heap, "
            f"restart {row['restart_s']:.2f} s, all done {row['woken_s']:.2f} s after the deadline"
        )
    for name, ratio in data["ratios"].items():
        print(f"{name:<28} {ratio:6.1f}x")


if __name__ == "__main__":
    main()
