"""The Online Boutique checkout: the choreography against the orchestrated checkout, by network delay.

Why: ``accompanist demo`` places the same orders through both checkouts on loopback, where
nothing costs a network round trip and the sidecars' own work decides. Between real hosts
every link costs latency. The choreography's critical path is seven sidecar-to-sidecar hops
(each service is called by its own sidecar, on its own host, at no network cost), with the
cart emptied while the catalog prices and shipping quotes; the orchestrated checkout makes
fifteen calls in turn, each a round trip from its host to a service's. So the orchestrator
wins at zero delay, and the choreography wins once a link costs a few milliseconds.

For each one-way delay (a proxy on every link between hosts, :mod:`accompanist.demo.delay`),
this starts the boutique (fault-tolerant sidecars, SQLite stores), places warm-up orders,
then ``--orders`` orders through each checkout one at a time (latency, not throughput) and
reports both medians and their ratio. Both checkouts run in the same cluster, one after the
other, so they share the machine's load.

Usage::

    python benchmarks/checkout.py [--orders 40] [--delays 0 2 5 10 20] [--mode fault-tolerant] [--quick]

Writes ``benchmarks/results/checkout.json`` and ``checkout.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src")]
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402

from accompanist.demo._proto import boutique_pb2 as pb  # noqa: E402
from accompanist.demo.cluster import Cluster  # noqa: E402
from accompanist.demo.orders import make_orders  # noqa: E402
from accompanist.demo.run import DemoReport, fill_carts, place  # noqa: E402

__all__ = ["main"]

RESULTS = ROOT / "benchmarks" / "results"
WARMUP = 10


async def measure(delay: float, n: int, mode: str, console: Console) -> dict[str, Any]:
    """Both checkouts' latencies at one delay."""
    with tempfile.TemporaryDirectory(prefix="checkout-bench-") as tmp:
        cluster = Cluster(Path(tmp), mode=mode, delay_ms=delay)
        try:
            await cluster.start()
            warm = make_orders(WARMUP, prefix="warm")
            chosen, orchestrated = make_orders(n, prefix="chor"), make_orders(n, prefix="orch")
            await fill_carts(cluster, warm + make_orders(WARMUP, prefix="warmo") + chosen + orchestrated)
            report = DemoReport()
            with Progress(console=console, transient=True) as progress:
                await place(cluster, warm, pb.CHOREOGRAPHY, report, progress, 1)
                await place(cluster, make_orders(WARMUP, prefix="warmo"), pb.ORCHESTRATOR, report, progress, 1)
                report = DemoReport()
                await place(cluster, chosen, pb.CHOREOGRAPHY, report, progress, 1)
                await place(cluster, orchestrated, pb.ORCHESTRATOR, report, progress, 1)
        finally:
            await cluster.stop()
    chor = statistics.median(report.latencies["choreography"]) * 1000
    orch = statistics.median(report.latencies["orchestrator"]) * 1000
    return {"delay_ms": delay, "choreography_p50_ms": round(chor, 2), "orchestrator_p50_ms": round(orch, 2)}


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Both medians against the delay."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plot")
        return
    delays = [r["delay_ms"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(delays, [r["choreography_p50_ms"] for r in rows], "o-", label="choreography (7 sidecars)")
    ax.plot(delays, [r["orchestrator_p50_ms"] for r in rows], "s-", label="orchestrated checkout")
    ax.set_xlabel("one-way delay between hosts (ms)")
    ax.set_ylabel("median checkout latency (ms)")
    ax.set_title("Online Boutique checkout, one order at a time")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=40)
    parser.add_argument("--delays", type=float, nargs="+", default=[0, 2, 5, 10, 20])
    parser.add_argument("--mode", default="fault-tolerant", choices=["fault-tolerant", "default"])
    parser.add_argument("--quick", action="store_true", help="10 orders at 0 and 5 ms (about a minute)")
    args = parser.parse_args(argv)
    if args.quick:
        args.orders, args.delays = 10, [0, 5]
    console = Console()
    rows = []
    for delay in args.delays:
        row = asyncio.run(measure(delay, args.orders, args.mode, console))
        row["orchestrator_over_choreography"] = round(row["orchestrator_p50_ms"] / row["choreography_p50_ms"], 2)
        rows.append(row)
        ratio = row["orchestrator_over_choreography"]
        console.print(
            f"delay {delay:g} ms: choreography p50 {row['choreography_p50_ms']:.1f} ms, orchestrated "
            f"{row['orchestrator_p50_ms']:.1f} ms (orchestrated / choreography = {ratio}x)",
            highlight=False,
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {
        "benchmark": "checkout",
        "mode": args.mode,
        "orders": args.orders,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
        "rows": rows,
    }
    (RESULTS / "checkout.json").write_text(json.dumps(data, indent=2) + "\n")
    plot(rows, RESULTS / "checkout.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
