"""The warehouse order saga end to end: choreography (default and fault-tolerant mode) against
a plain orchestrator calling the same three services.

Why: the saga is the product's headline use. A user weighing it against an orchestrator (a
checkout service that calls reserve, charge, award and ship in turn and compensates on a
decline) wants to know what the sidecars cost per order, and what durability adds on top.

Variants, each placing orders over HTTP from this process and waiting for the outcome:

- ``orchestrator``: one extra process (started by this script) runs the saga itself: four
  HTTP calls to the services, compensations in reverse on a decline, nothing durable;
- ``default``: three sidecars in default mode (state in memory, at-most-once);
- ``fault-tolerant``: three sidecars with SQLite stores (``synchronous=FULL``): inbox/outbox,
  journal and transaction log durable, the outcome agreed by all three.

Every variant has its own three services (SQLite, ``synchronous=FULL``, each commit durable),
so the services' own fsyncs are in every variant. At concurrency 1 the numbers are latency;
at higher concurrency, throughput. The variants take turns in several rounds so a machine
whose load drifts skews them alike; numbers are only comparable side by side, hence ratios.

Usage::

    python benchmarks/warehouse_saga.py [--orders 200] [--rounds 3] [--concurrency 1 16]

Writes ``benchmarks/results/warehouse_saga.json`` and ``warehouse_saga.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from examples.warehouse.cluster import Proc, WarehouseCluster, free_port  # noqa: E402
from examples.warehouse.saga import Order  # noqa: E402

__all__ = ["main"]

RESULTS = ROOT / "benchmarks" / "results"
_COMMITS = re.compile(rb"^accompanist_store_commits(?:_total)? (\S+)$", re.MULTILINE)
VARIANTS = ("orchestrator", "default", "fault-tolerant")
WARMUP = 30


# --- the orchestrator process ----------------------------------------------------------------


def _serve_orchestrator(port: int, urls: dict[str, str]) -> None:
    """A checkout service that runs the saga itself: ``POST /orders`` with an order."""
    from aiohttp import web

    async def call(http: aiohttp.ClientSession, service: str, path: str, body: dict[str, Any]) -> int:
        async with http.post(f"{urls[service]}{path}", json=body) as r:
            await r.read()
            return r.status

    async def place(request: web.Request) -> web.Response:
        http: aiohttp.ClientSession = request.app["http"]
        o = await request.json()
        key = f"{o['order_id']}/{time.monotonic_ns()}"
        steps = [
            ("warehouse", "/reserve", "/release", {"item": o["item"], "qty": o["qty"]}),
            ("payment", "/charge", "/refund", {"customer": o["customer"], "amount": o["amount"]}),
            ("loyalty", "/award", "/revoke", {"customer": o["customer"], "points": o["points"]}),
            ("warehouse", "/ship", "/unship", {"reservation": f"{key}/reserve"}),
        ]
        done: list[tuple[str, str, str]] = []
        for service, commit, undo, fields in steps:
            step_key = f"{key}{commit}"
            status = await call(http, service, commit, {"key": step_key, "order_id": o["order_id"], **fields})
            if status >= 400:
                for s, u, k in reversed(done):
                    await call(http, s, u, {"key": k})
                return web.json_response({"status": "compensated"})
            done.append((service, undo, step_key))
        return web.json_response({"status": "completed", "result": f"shipped {o['order_id']}"})

    async def start(app: web.Application) -> None:
        app["http"] = aiohttp.ClientSession()

    async def stop(app: web.Application) -> None:
        await app["http"].close()

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/orders", place)
    app.router.add_get("/healthz", healthz)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# --- the driver --------------------------------------------------------------------------------


def _order(i: int) -> Order:
    customers = ("alice", "bob", "carol", "dave")
    items = ("widget", "gadget", "gizmo", "doohickey")  # 1000 of each: enough for 4000 orders
    return Order(f"b-{i:06d}", items[i % 4], 1, customers[(i // 4) % 4], 25, 2)


class Target:
    """Where one variant's orders go, and how."""

    def __init__(self, name: str, url: str, http: aiohttp.ClientSession) -> None:
        self.name = name
        self.url = url
        self.http = http

    async def place(self, order: Order) -> str:
        if self.name == "orchestrator":
            body: dict[str, Any] = {f: getattr(order, f) for f in order.__struct_fields__}
            async with self.http.post(f"{self.url}/orders", json=body) as r:
                return str((await r.json())["status"])
        body = {"choreography": "order", "args": [{f: getattr(order, f) for f in order.__struct_fields__}]}
        async with self.http.post(f"{self.url}/sessions?wait=true&timeout=60", json=body) as r:
            return str((await r.json())["status"])


async def _measure(target: Target, orders: list[Order], concurrency: int) -> tuple[list[float], float, int]:
    """Latencies (s), wall seconds, and how many did not complete."""
    latencies: list[float] = []
    failed = 0
    queue = list(reversed(orders))

    async def worker() -> None:
        nonlocal failed
        while queue:
            order = queue.pop()
            t0 = time.perf_counter()
            status = await target.place(order)
            latencies.append(time.perf_counter() - t0)
            failed += status != "completed"

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - began, failed


async def _commits(http: aiohttp.ClientSession, cluster: WarehouseCluster) -> float:
    """Durable commits so far across the cluster's sidecars (each one fsync with SQLite FULL)."""
    total = 0.0
    for role in ("warehouse", "payment", "loyalty"):
        async with http.get(f"{cluster.api(role)}/metrics") as r:
            match = _COMMITS.search(await r.read())
        total += float(match.group(1)) if match else 0.0
    return total


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _run(n: int, rounds: int, levels: list[int], workdir: Path) -> dict[str, Any]:
    default = WarehouseCluster(workdir / "default", mode="default")
    durable = WarehouseCluster(workdir / "fault-tolerant")
    port = free_port()
    urls = {s: default.service_url(s) for s in ("warehouse", "payment", "loyalty")}
    orchestrator = Proc(
        "orchestrator",
        [sys.executable, __file__, "--serve-orchestrator", str(port), json.dumps(urls)],
        {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])},
        workdir / "orchestrator.log",
        f"http://127.0.0.1:{port}",
    )
    orchestrator.start()
    await default.start()
    await durable.start()
    samples: dict[str, dict[int, list[float]]] = {v: {c: [] for c in levels} for v in VARIANTS}
    walls: dict[str, dict[int, float]] = {v: dict.fromkeys(levels, 0.0) for v in VARIANTS}
    failures: dict[str, int] = dict.fromkeys(VARIANTS, 0)
    commits: dict[int, list[float]] = {c: [] for c in levels}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            for _ in range(200):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
            targets = {
                "orchestrator": Target("orchestrator", f"http://127.0.0.1:{port}", http),
                "default": Target("default", default.api("warehouse"), http),
                "fault-tolerant": Target("fault-tolerant", durable.api("warehouse"), http),
            }
            counter = 0
            for variant in VARIANTS:  # warm-up: connections, imports, SQLite caches
                await _measure(targets[variant], [_order(counter + i) for i in range(WARMUP)], 4)
                counter += WARMUP
            for round_ in range(rounds):
                for concurrency in levels:
                    for variant in VARIANTS if round_ % 2 == 0 else tuple(reversed(VARIANTS)):
                        orders = [_order(counter + i) for i in range(n)]
                        counter += n
                        before = await _commits(http, durable) if variant == "fault-tolerant" else 0.0
                        lat, wall, failed = await _measure(targets[variant], orders, concurrency)
                        if variant == "fault-tolerant":
                            await asyncio.sleep(0.5)  # let the lazy writes (acks, completions) land
                            commits[concurrency].append((await _commits(http, durable) - before) / n)
                        samples[variant][concurrency] += lat
                        walls[variant][concurrency] += wall
                        failures[variant] += failed
                        print(
                            f"round {round_ + 1}/{rounds} c={concurrency:<3} {variant:<15} "
                            f"median {statistics.median(lat) * 1000:7.2f} ms  {n / wall:7.1f} orders/s",
                            file=sys.stderr,
                        )
    finally:
        await durable.stop()
        await default.stop()
        await orchestrator.terminate()
    results: dict[str, Any] = {}
    for variant in VARIANTS:
        for concurrency in levels:
            lat = samples[variant][concurrency]
            results[f"{variant}/c{concurrency}"] = {
                "variant": variant,
                "concurrency": concurrency,
                "orders": len(lat),
                "median_ms": statistics.median(lat) * 1000,
                "p95_ms": _pct(lat, 0.95) * 1000,
                "p99_ms": _pct(lat, 0.99) * 1000,
                "orders_per_s": len(lat) / walls[variant][concurrency],
            }
            if variant == "fault-tolerant":
                results[f"{variant}/c{concurrency}"]["commits_per_order"] = statistics.mean(commits[concurrency])
    ratios: dict[str, float] = {}
    for concurrency in levels:
        ft, df, orch = (results[f"{v}/c{concurrency}"] for v in ("fault-tolerant", "default", "orchestrator"))
        ratios[f"c{concurrency}: median fault-tolerant / default"] = ft["median_ms"] / df["median_ms"]
        ratios[f"c{concurrency}: median fault-tolerant / orchestrator"] = ft["median_ms"] / orch["median_ms"]
        ratios[f"c{concurrency}: median default / orchestrator"] = df["median_ms"] / orch["median_ms"]
        ratios[f"c{concurrency}: throughput fault-tolerant / orchestrator"] = ft["orders_per_s"] / orch["orders_per_s"]
    return {"results": results, "ratios": ratios, "failed_orders": failures}


def _plot(data: dict[str, Any], levels: list[int], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(VARIANTS)
    for i, variant in enumerate(VARIANTS):
        xs = [j + i * width for j in range(len(levels))]
        rows = [data["results"][f"{variant}/c{c}"] for c in levels]
        axes[0].bar(xs, [r["median_ms"] for r in rows], width, label=variant)
        axes[0].errorbar(
            xs,
            [r["median_ms"] for r in rows],
            yerr=[[0] * len(rows), [r["p95_ms"] - r["median_ms"] for r in rows]],
            fmt="none",
            ecolor="black",
            capsize=3,
        )
        axes[1].bar(xs, [r["orders_per_s"] for r in rows], width, label=variant)
    for ax, title in zip(axes, ("latency per order, ms (median, bar to p95)", "orders per second"), strict=True):
        ax.set_xticks([j + width for j in range(len(levels))], [f"{c} in flight" for c in levels])
        ax.set_title(title)
        ax.legend()
    fig.suptitle("warehouse saga: choreography (default, fault-tolerant) vs orchestrator")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and write its results."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve-orchestrator"]:
        _serve_orchestrator(int(argv[1]), json.loads(argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=200, help="orders per variant, level and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="warehouse-bench-") as tmp:
        data = asyncio.run(_run(args.orders, args.rounds, args.concurrency, Path(tmp)))
    data["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    data["settings"] = {"orders": args.orders, "rounds": args.rounds, "concurrency": args.concurrency}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "warehouse_saga.json").write_text(json.dumps(data, indent=2) + "\n")
    _plot(data, args.concurrency, RESULTS / "warehouse_saga.png")
    for name, row in data["results"].items():
        extra = f"  {row['commits_per_order']:.2f} durable commits/order" if "commits_per_order" in row else ""
        print(
            f"{name:<22} median {row['median_ms']:7.2f} ms  p95 {row['p95_ms']:7.2f} ms  "
            f"{row['orders_per_s']:7.1f} orders/s{extra}"
        )
    for name, ratio in data["ratios"].items():
        print(f"{name:<48} {ratio:5.2f}x")
    if any(data["failed_orders"].values()):
        sys.exit(f"orders that did not complete, by variant: {data['failed_orders']} (results not valid)")


if __name__ == "__main__":
    main()
