"""``accompanist demo``: the boutique as real processes, a stream of orders, a crash, a verdict.

It starts the eight services and seven sidecars (:mod:`.cluster`), fills the shoppers' carts,
places the orders through the frontend's choreographed checkout with a live progress bar,
SIGKILLs the payment sidecar and the shipping service a third of the way through and starts
them again, places the same orders through the orchestrated checkout, waits until every
session has ended at every sidecar, checks everything against the services' own databases
(:mod:`.verify`), stops every process, and prints what happened. The exit status is 0 only if
every check held and every process stopped.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from accompanist.demo._proto import boutique_pb2 as pb
from accompanist.demo._proto import boutique_pb2_grpc as pb_grpc
from accompanist.demo.cluster import ROLES, Cluster
from accompanist.demo.orders import DemoOrder, make_orders
from accompanist.demo.verify import Outcome, Verdict, verify
from accompanist.demo.wire import item_to_pb, request_to_pb

__all__ = ["DemoOptions", "DemoReport", "fill_carts", "place", "run_demo"]

VICTIMS = ("payment", "shipping-service")
"""What the demo SIGKILLs mid-run: one sidecar and one service."""

TERMINAL = {"completed", "compensated", "failed", "cancelled", "diverged"}


@dataclass(frozen=True)
class DemoOptions:
    """What ``accompanist demo`` was asked for."""

    orders: int = 200
    crash: bool = True
    mode: str = "fault-tolerant"
    workdir: Path = Path(".")
    concurrency: int = 16
    delay_ms: float = 0.0
    kept: bool = False  # the workdir stays after the run (--keep)
    diagram_dir: Path | None = None  # where the sessions' HTML diagrams go (None: none drawn)


@dataclass
class DemoReport:
    """What a run measured and found."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {"choreography": [], "orchestrator": []})
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    replays: int = 0
    resumed: int = 0
    killed: list[str] = field(default_factory=list)
    verdict: Verdict | None = None
    left_running: list[int] = field(default_factory=list)
    diagrams: dict[str, Path] = field(default_factory=dict)
    diagrams_missing: str = ""
    exit_codes: dict[str, int | None] = field(default_factory=dict)


def _progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description:<26}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[green]{task.fields[n_completed]} completed"),
        TextColumn("[yellow]{task.fields[n_compensated]} compensated"),
        TimeElapsedColumn(),
        console=console,
    )


async def fill_carts(cluster: Cluster, orders: list[DemoOrder]) -> None:
    """Put each order's lines in its shopper's cart, as the shoppers would before checking out."""
    async with grpc.aio.insecure_channel(cluster.address("cart")) as channel:
        cart = pb_grpc.CartServiceStub(channel)
        gate = asyncio.Semaphore(32)

        async def fill(order: DemoOrder) -> None:
            async with gate:
                for item in order.items:
                    await cart.AddItem(pb.AddItemRequest(user_id=order.user_id, item=item_to_pb(item)), timeout=30)

        await asyncio.gather(*(fill(o) for o in orders))


async def place(
    cluster: Cluster,
    orders: list[DemoOrder],
    via: int,
    report: DemoReport,
    progress: Progress,
    concurrency: int,
    at_third: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Place ``orders`` through the frontend (``via`` a checkout), ``concurrency`` at a time,
    recording each latency and answer in ``report``; ``at_third`` runs when a third are placed."""
    name = "choreography" if via == pb.CHOREOGRAPHY else "orchestrator"
    task = progress.add_task(f"{name} checkout", total=len(orders), n_completed=0, n_compensated=0)
    counts = {"completed": 0, "compensated": 0}
    queue = list(reversed(orders))
    third = asyncio.Event()
    async with grpc.aio.insecure_channel(cluster.address("frontend")) as channel:
        frontend = pb_grpc.FrontendServiceStub(channel)

        async def worker() -> None:
            while queue:
                order = queue.pop()
                if len(queue) <= 2 * len(orders) // 3:
                    third.set()
                request = pb.CheckoutRequest(order=request_to_pb(order.request, order.request_id), via=via)  # type: ignore[arg-type]
                began = time.perf_counter()
                try:
                    answer = await frontend.Checkout(request, timeout=300, wait_for_ready=True)
                except grpc.aio.AioRpcError as exc:  # reported (and failed by the verification), not fatal
                    answer = pb.CheckoutResponse(status=f"no answer: {exc.code().name}", error=exc.details() or "")
                report.latencies[name].append(time.perf_counter() - began)
                report.outcomes[order.request_id] = Outcome(
                    name, answer.status, answer.order.order_id, answer.session_id, answer.error
                )
                if answer.status in counts:
                    counts[answer.status] += 1
                progress.update(task, advance=1, n_completed=counts["completed"], n_compensated=counts["compensated"])

        async def chaos() -> None:
            await third.wait()
            if at_third is not None:
                await at_third()

        began = time.perf_counter()
        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        side = asyncio.create_task(chaos())
        try:
            await asyncio.gather(*workers)
            await side
        finally:
            side.cancel()
            for w in workers:
                w.cancel()
        report.seconds[name] = time.perf_counter() - began


async def _sessions(cluster: Cluster) -> dict[str, dict[str, dict[str, Any]]]:
    assert cluster.http is not None
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for role in ROLES:
        async with cluster.http.get(f"{cluster.api(role)}/sessions?limit=100000") as r:
            r.raise_for_status()
            found[role] = {s["session_id"]: s for s in (await r.json())["sessions"]}
    return found


async def _settle(cluster: Cluster, timeout: float = 60) -> dict[str, dict[str, dict[str, Any]]]:
    """Every sidecar's sessions once none is still open anywhere (or ``timeout`` passed)."""
    deadline = time.monotonic() + timeout
    while True:
        sessions = await _sessions(cluster)
        open_ = [s for by_id in sessions.values() for s in by_id.values() if s["status"] not in TERMINAL]
        if not open_ or time.monotonic() > deadline:
            return sessions
        await asyncio.sleep(0.2)


async def _replays(cluster: Cluster) -> int:
    assert cluster.http is not None
    total = 0.0
    for role in ROLES:
        async with cluster.http.get(f"{cluster.api(role)}/metrics") as r:
            text = await r.text()
        for match in re.finditer(r"^accompanist_replays_total (\S+)$", text, re.M):
            total += float(match.group(1))
    return int(total)


async def run_demo(options: DemoOptions, console: Console) -> tuple[int, DemoReport]:
    """Run the demo in ``options.workdir``; return the exit status and what was measured."""
    report = DemoReport()
    cluster = Cluster(options.workdir, mode=options.mode, delay_ms=options.delay_ms)
    chosen = make_orders(options.orders, prefix="chor")
    orchestrated = make_orders(options.orders, prefix="orch")
    began = time.perf_counter()
    try:
        with _progress(console) as progress:
            task = progress.add_task("starting processes", total=len(cluster.procs), n_completed=0, n_compensated=0)
            await cluster.start(on_ready=lambda _name: progress.advance(task))
            await fill_carts(cluster, chosen + orchestrated)

            async def crash() -> None:
                if not options.crash:
                    return
                for victim in VICTIMS:
                    cluster.kill(victim)
                    report.killed.append(victim)
                progress.console.print(
                    f"[red]SIGKILL[/] the {VICTIMS[0]} sidecar and the {VICTIMS[1]} (orders in flight wait)"
                )
                await asyncio.sleep(0.5)
                await asyncio.gather(*(cluster.restart(v) for v in VICTIMS))
                progress.console.print("[green]restarted[/] both on the same ports, store and database")

            await place(cluster, chosen, pb.CHOREOGRAPHY, report, progress, options.concurrency, crash)
            await place(cluster, orchestrated, pb.ORCHESTRATOR, report, progress, options.concurrency)
        with console.status("waiting for every sidecar to end every session, then checking the books"):
            sessions = await _settle(cluster)
            report.replays = await _replays(cluster)
            report.resumed = sum(1 for by_id in sessions.values() for r in by_id.values() if r.get("attempts"))
            report.verdict = verify(
                chosen + orchestrated, report.outcomes, sessions, {s: cluster.db(s) for s in cluster.service_ports}
            )
        if options.diagram_dir is not None:
            with console.status("drawing a completed and a compensated session"):
                await _diagrams(cluster, report, options.diagram_dir)
    finally:
        with console.status("stopping every process"):
            report.exit_codes = await asyncio.shield(cluster.stop())
            cluster.kill_all()
            report.left_running = cluster.pids()
    report.seconds["total"] = time.perf_counter() - began
    _summary(console, options, report)
    ok = report.verdict is not None and report.verdict.ok and not report.left_running
    return (0 if ok else 1), report


async def _diagrams(cluster: Cluster, report: DemoReport, out: Path) -> None:
    """Draw one completed and one compensated choreographed session, each as one HTML page,
    from the sidecars while they run (the renderer is :mod:`accompanist.diagram`'s)."""
    try:
        from accompanist.diagram import render_html  # type: ignore[attr-defined, unused-ignore]
        from accompanist.inspection.sources import (  # type: ignore[import-not-found, unused-ignore]
            HttpSource,
            session_view,
        )
    except ImportError as exc:
        report.diagrams_missing = f"this version cannot draw them ({exc})"
        return
    picks: dict[str, str] = {}
    for rid, outcome in report.outcomes.items():
        if outcome.via != "choreography":
            continue
        if outcome.status == "completed":
            picks.setdefault("completed", rid)
        elif outcome.status == "compensated" and "carrier" in outcome.error:
            picks.setdefault("compensated", rid)  # a refund and a restored cart: the fuller story
    sources = [HttpSource(cluster.api(role)) for role in ROLES]
    try:
        for label, sid in sorted(picks.items()):
            view = await session_view(sources, sid)
            if view is not None:
                path = out / f"accompanist-demo-{label}.html"
                path.write_text(render_html(view), encoding="utf-8")
                report.diagrams[label] = path
    finally:
        for source in sources:
            await source.close()


def _ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.0f} ms"


def _summary(console: Console, options: DemoOptions, report: DemoReport) -> None:
    verdict = report.verdict
    delay = f", {options.delay_ms:g} ms one-way between hosts" if options.delay_ms else ""
    title = f"{options.orders} orders per checkout, {options.mode} mode, {options.concurrency} in flight{delay}"
    table = Table(title=title, title_justify="left")
    for col in ("checkout", "completed", "compensated", "failed", "p50", "p99", "orders/s"):
        table.add_column(col, justify="left" if col == "checkout" else "right")
    for via in ("choreography", "orchestrator"):
        counts = verdict.by_status if verdict else {}
        lat = report.latencies[via]
        rate = len(lat) / report.seconds[via] if report.seconds.get(via) else 0.0
        table.add_row(
            via,
            str(counts.get((via, "completed"), 0)),
            str(counts.get((via, "compensated"), 0)),
            str(counts.get((via, "failed"), 0)),
            _ms(lat, 0.5),
            _ms(lat, 0.99),
            f"{rate:.0f}",
        )
    console.print(table)
    chor, orch = report.latencies["choreography"], report.latencies["orchestrator"]
    if chor and orch:
        ratio = statistics.median(orch) / statistics.median(chor)
        console.print(
            f"p50: the choreography {statistics.median(chor) * 1000:.1f} ms, the orchestrated checkout "
            f"{statistics.median(orch) * 1000:.1f} ms ({ratio:.2f}x)",
            highlight=False,
        )
    killed = " and ".join(report.killed) if report.killed else "nothing (--no-crash)"
    console.print(
        f"killed with SIGKILL and restarted: {killed}; sessions resumed from a store after a restart: "
        f"{report.resumed} ({report.replays} of them replayed from their journal)",
        highlight=False,
    )
    unclean = {n: c for n, c in report.exit_codes.items() if c not in (0, None)}
    if unclean:
        console.print(f"[yellow]exited uncleanly on SIGTERM:[/] {unclean}", highlight=False)
    if report.left_running:
        console.print(f"[bold red]processes left running: {report.left_running}[/]")
    if verdict is None:
        console.print("[bold red]not verified[/]: the run did not get that far")
    elif verdict.ok:
        console.print(
            f"[bold green]verified[/]: {verdict.checked} orders agree with the services' databases "
            "(money, stock, carts, shipments, emails) and every sidecar agrees on every outcome",
            highlight=False,
        )
    else:
        console.print(f"[bold red]{len(verdict.problems)} problem(s):[/]")
        for problem in verdict.problems[:40]:
            console.print(f"  [red]-[/] {problem}", highlight=False)
        if options.mode == "default" and report.killed:
            console.print(
                "default mode keeps no state: the SIGKILL lost the sessions in flight at the killed sidecar, "
                "and what they had done stays done; that is what fault-tolerant mode is for",
                highlight=False,
            )
    if report.diagrams:
        drawn = ", ".join(f"{label} {path}" for label, path in sorted(report.diagrams.items()))
        console.print(f"sequence diagrams (HTML): {drawn}", highlight=False)
    elif report.diagrams_missing:
        console.print(f"sequence diagrams not drawn: {report.diagrams_missing}", highlight=False)
    where = f"; databases, stores and logs: {options.workdir}" if options.kept else ""
    console.print(f"took {report.seconds['total']:.1f} s{where}", highlight=False)
