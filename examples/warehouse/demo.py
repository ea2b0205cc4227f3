"""The warehouse saga, end to end: six real processes and a stream of orders.

::

    python -m examples.warehouse.demo [--orders 50] [--workdir DIR] [--chaos]

starts the warehouse, payment and loyalty services (each with its own SQLite database) and
their three sidecars in fault-tolerant mode (each with its own SQLite store), places the
orders through the warehouse sidecar's HTTP API, and checks what happened: every fifth order
is declined on purpose at a rotating step (reserve, charge, award, ship), so its saga
compensates everywhere. The summary shows the outcomes, the latencies, and the final stock,
balances and points, which must add up to the live reservations, charges and awards. The exit
status is 0 only if every invariant holds. ``--chaos`` SIGKILLs the payment sidecar and the
loyalty service halfway through and starts them again: the orders in flight still finish.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from examples.warehouse.audit import Audit, audit, settle
from examples.warehouse.cluster import WarehouseCluster
from examples.warehouse.saga import STEPS, Order

__all__ = ["PRICES", "main", "make_orders", "run"]

PRICES = {"widget": 25, "gadget": 40, "gizmo": 15, "doohickey": 60}
CUSTOMERS = ("alice", "bob", "carol", "dave")


def make_orders(n: int, *, fail_every: int = 5, seed: int = 7) -> list[Order]:
    """``n`` orders; every ``fail_every``-th fails on purpose, at reserve, charge, award, ship in turn."""
    rng = random.Random(seed)
    orders = []
    for i in range(n):
        item = rng.choice(list(PRICES))
        qty = rng.randint(1, 3)
        fail_at = STEPS[(i // fail_every) % len(STEPS)] if fail_every and i % fail_every == fail_every - 1 else None
        amount = qty * PRICES[item]
        orders.append(
            Order(f"order-{i + 1:04d}", item, qty, CUSTOMERS[i % len(CUSTOMERS)], amount, amount // 10, fail_at)
        )
    return orders


CHAOS_VICTIMS = ("payment", "loyalty-service")
"""What ``--chaos`` kills halfway through: the payment sidecar and the loyalty service."""


async def run(n: int, workdir: Path, console: Console, *, concurrency: int = 8, chaos: bool = False) -> int:
    """Run the demo in ``workdir``; return the exit status.

    With ``chaos``, the payment sidecar and the loyalty service are SIGKILLed when half the
    orders are placed and started again a second later; the orders in flight still finish.
    """
    orders = make_orders(n)
    by_id = {o.order_id: o for o in orders}
    placed: dict[str, str] = {}
    latency: dict[str, list[float]] = {"completed": [], "compensated": []}
    answers: Counter[str] = Counter()
    cluster = WarehouseCluster(workdir)
    with console.status("starting 3 services and 3 sidecars (fault-tolerant mode, SQLite)"):
        await cluster.start()
    began = time.monotonic()
    try:
        columns = (
            SpinnerColumn(),
            TextColumn("placing orders"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[green]{task.fields[n_completed]} completed"),
            TextColumn("[yellow]{task.fields[n_compensated]} compensated"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("orders", total=n, n_completed=0, n_compensated=0)
            queue: asyncio.Queue[Order] = asyncio.Queue()
            for order in orders:
                queue.put_nowait(order)

            halfway = asyncio.Event()

            async def killer() -> None:
                await halfway.wait()
                for name in CHAOS_VICTIMS:
                    cluster.kill(name)
                progress.console.print(f"[red]SIGKILL[/] {' and '.join(CHAOS_VICTIMS)} (orders in flight wait)")
                await asyncio.sleep(1.0)
                await asyncio.gather(*(cluster.restart(name) for name in CHAOS_VICTIMS))
                progress.console.print(f"[green]restarted[/] {' and '.join(CHAOS_VICTIMS)} on the same stores")

            async def worker() -> None:
                while not queue.empty():
                    order = queue.get_nowait()
                    if queue.qsize() <= n // 2:
                        halfway.set()
                    t0 = time.monotonic()
                    try:
                        status, answer = await cluster.place(order, wait=True, timeout=60)
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        answers[f"error: {type(exc).__name__}"] += 1
                        progress.advance(task)
                        continue
                    outcome = str(answer.get("status", f"HTTP {status}"))
                    answers[outcome] += 1
                    if "session_id" in answer:
                        placed[answer["session_id"]] = order.order_id
                    if outcome in latency:
                        latency[outcome].append(time.monotonic() - t0)
                    progress.update(
                        task, advance=1, n_completed=answers["completed"], n_compensated=answers["compensated"]
                    )

            await asyncio.gather(*(worker() for _ in range(concurrency)), *([killer()] if chaos and n > 1 else []))
        seconds = time.monotonic() - began
        with console.status("waiting for every sidecar to finish and reading the services' books"):
            snap = await settle(cluster, timeout=60)
            verdict = audit(snap, by_id, placed)
    finally:
        with console.status("stopping (SIGTERM)"):
            codes = await cluster.stop()
    unclean = {name: code for name, code in codes.items() if code not in (0, None)}
    if unclean:
        verdict.problems.append(f"processes exited uncleanly on SIGTERM: {unclean}")
    if sum(answers[s] for s in latency) != n:
        verdict.problems.append(f"not every order got an answer: {dict(answers)}")
    _summary(console, orders, verdict, latency, seconds)
    if verdict.ok:
        console.print("[bold green]all invariants hold[/]")
        return 0
    console.print(f"[bold red]{len(verdict.problems)} problem(s):[/]")
    for problem in verdict.problems[:50]:
        console.print(f"  [red]-[/] {problem}", highlight=False)
    console.print(f"logs and databases: {workdir}")
    return 1


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f} ms" if values else "-"


def _summary(console: Console, orders: list[Order], v: Audit, latency: dict[str, list[float]], seconds: float) -> None:
    expected = Counter(o.fail_at or "" for o in orders)
    outcomes = Table(title=f"{len(orders)} orders in {seconds:.1f} s", title_justify="left")
    for col in ("outcome", "sessions", "expected", "median latency"):
        outcomes.add_column(col, justify="left" if col == "outcome" else "right")
    outcomes.add_row("completed", str(v.completed), str(expected[""]), _ms(latency["completed"]))
    outcomes.add_row("compensated", str(v.compensated), str(len(orders) - expected[""]), _ms(latency["compensated"]))
    for step in STEPS:
        outcomes.add_row(f"  failed at {step}", str(v.compensated_by_step[step]), str(expected[step]), "")
    console.print(outcomes)

    books = Table(title="the services' books: final - initial == the live rows", title_justify="left")
    for col in ("service", "of", "initial", "final", "change", "live rows", ""):
        books.add_column(col, justify="left" if col in ("service", "of") else "right")
    sign = {"warehouse": -1, "payment": -1, "loyalty": +1}
    label = {"warehouse": "stock", "payment": "balance", "loyalty": "points"}
    for service, totals in v.totals.items():
        for name, (initial, final, live) in totals.items():
            ok = final - initial == sign[service] * live
            books.add_row(
                f"{service} {label[service]}",
                name,
                str(initial),
                str(final),
                f"{final - initial:+d}",
                f"{sign[service] * live:+d}",
                "[green]ok[/]" if ok else "[red]MISMATCH[/]",
            )
    console.print(books)
    agreed = v.completed + v.compensated
    console.print(
        f"sessions agreed at all three sidecars: {agreed}/{v.sessions}; orphan compensations: "
        f"{v.orphans}; repeated service calls absorbed by "
        f"idempotency keys: {v.repeats}",
        highlight=False,
    )


def main(argv: list[str] | None = None) -> int:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m examples.warehouse.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=50, help="how many orders to place (default 50)")
    parser.add_argument("--workdir", type=Path, help="keep databases, stores and logs here (default: a temp dir)")
    parser.add_argument("--concurrency", type=int, default=8, help="orders in flight at once (default 8)")
    parser.add_argument(
        "--chaos", action="store_true", help="SIGKILL the payment sidecar and the loyalty service halfway through"
    )
    args = parser.parse_args(argv)
    console = Console()
    if args.workdir is not None:
        return asyncio.run(run(args.orders, args.workdir, console, concurrency=args.concurrency, chaos=args.chaos))
    with tempfile.TemporaryDirectory(prefix="warehouse-demo-") as tmp:
        return asyncio.run(run(args.orders, Path(tmp), console, concurrency=args.concurrency, chaos=args.chaos))


if __name__ == "__main__":
    sys.exit(main())
