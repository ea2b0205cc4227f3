"""Chain latency: a token through N services and back, as a choreography of sidecars (default
and fault-tolerant mode) against an orchestrator and a raw-socket floor, with a delay proxy on
every link.

Why: it is the Java original's microbenchmark and the paper's first question: how much latency
does a choreography save against an orchestrator as network delay grows, and what does the
runtime cost per hop. Every variant uses the same N service processes (``chainparts.py
service``: one loopback RPC each) and the same delay proxy (``chainparts.py proxy``), which
holds each chunk ``d`` ms per direction on **every** link between nodes (the kernel has no
netem; Toxiproxy did this for the Java harness):

- ``floor``: N+1 processes of raw asyncio streams and msgpack, nothing durable: the least a
  choreography of N+1 one-way hops can cost on this machine;
- ``default`` / ``fault-tolerant``: one sidecar per role (``chainapp.py``), started over the
  initiator's HTTP API with ``?wait=true``; fault-tolerant on SQLite ``synchronous=FULL``;
- ``orchestrator``: one process calling the N services in turn through the proxy and
  answering its client through the proxy too: 2(N+1) one-way hops where the choreography
  needs N+1.

One token at a time; variants take turns within each (N, d) point, in alternating order over
rounds, so a machine whose load drifts skews them alike. Only ratios measured side by side
mean anything on a shared machine.

Rows: ``n, d_ms, mode, chor_p50_ms, chor_p99_ms, orch_p50_ms, orch_p99_ms`` plus
``floor_p50_ms, floor_p99_ms``, ``orch_over_chor`` (p50 ratio), ``chor_over_floor`` and, in
fault-tolerant mode, ``commits_per_session`` (every sidecar's ``accompanist_store_commits``).

Usage::

    python benchmarks/chain.py [--quick] [--json PATH] [--n 1 3 5] [--delay 0 1 3 9] [--samples 200]

Writes ``benchmarks/results/chain.json`` and ``chain.png``.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import harness  # noqa: E402
from chainsetup import ROLES, RawClient, Setup, Sidecars, chain_session, measure  # noqa: E402

__all__ = ["ROW_KEYS", "main", "run"]

MODES = ("default", "fault-tolerant")
VARIANTS = ("floor", *MODES, "orchestrator")
ROW_KEYS = ("n", "d_ms", "mode", "chor_p50_ms", "chor_p99_ms", "orch_p50_ms", "orch_p99_ms")


async def _run(args: Any, workdir: Path, tick: harness.Ticker) -> list[dict[str, Any]]:
    roles = tuple(ROLES[: max(args.n) + 1])  # only the roles the longest chain needs
    sets = [Sidecars(mode, mode, roles) for mode in MODES]
    setup = Setup(workdir, sorted(set(args.n)), sets)
    rows: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        tick(f"starting services, proxy, floor, orchestrators and {2 * len(roles)} sidecars")
        await setup.start(http)
        clients: list[RawClient] = []
        try:

            def caller(variant: str, n: int) -> Any:
                if variant in MODES:
                    api = setup.api(variant)
                    return lambda value: chain_session(http, api, n, value)
                client = RawClient((setup.floor_entry if variant == "floor" else setup.orchestrator_entry)[n])
                clients.append(client)
                return client.call

            grid = [(n, d) for n in args.n for d in args.delay]
            per_point = args.rounds * len(VARIANTS) * (args.warmup + args.samples)
            tick("measuring", total=len(grid) * per_point)
            for k, (n, d) in enumerate(grid):
                await setup.set_delay(d)
                samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
                commits: list[float] = []
                for round_ in range(args.rounds):
                    order = VARIANTS if round_ % 2 == 0 else tuple(reversed(VARIANTS))
                    for variant in order:
                        tick(f"N={n} d={d:g} ms ({k + 1}/{len(grid)}) round {round_ + 1}/{args.rounds}: {variant}")
                        call = caller(variant, n)
                        await measure(call, n, args.warmup, 1, tick)
                        before = await setup.commits(http, "fault-tolerant")
                        lat, _ = await measure(call, n, args.samples, 1, tick)
                        if variant == "fault-tolerant":
                            await asyncio.sleep(0.2)  # lazy writes (acks, outcomes) land
                            commits.append((await setup.commits(http, "fault-tolerant") - before) / len(lat))
                        samples[variant] += lat
                rows += _rows(n, d, samples, commits)
        finally:
            for client in clients:
                client.close()
            tick("stopping")
            await setup.stop()
    return rows


def _rows(n: int, d: float, samples: dict[str, list[float]], commits: list[float]) -> list[dict[str, Any]]:
    def p50(variant: str) -> float:
        return statistics.median(samples[variant]) * 1000

    def p99(variant: str) -> float:
        return harness.pct(samples[variant], 0.99) * 1000

    rows = []
    for mode in MODES:
        row: dict[str, Any] = {
            "n": n,
            "d_ms": d,
            "mode": mode,
            "chor_p50_ms": round(p50(mode), 3),
            "chor_p99_ms": round(p99(mode), 3),
            "orch_p50_ms": round(p50("orchestrator"), 3),
            "orch_p99_ms": round(p99("orchestrator"), 3),
            "floor_p50_ms": round(p50("floor"), 3),
            "floor_p99_ms": round(p99("floor"), 3),
            "orch_over_chor": round(p50("orchestrator") / p50(mode), 3),
            "chor_over_floor": round(p50(mode) / p50("floor"), 3),
            "samples": len(samples[mode]),
        }
        if mode == "fault-tolerant":
            row["commits_per_session"] = round(statistics.mean(commits), 2)
        rows.append(row)
    return rows


def _plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    rows = data["rows"]
    ns = sorted({r["n"] for r in rows})
    fig, axes = plt.subplots(1, len(ns), figsize=(max(7.5, 4.6 * len(ns)), 4.3), squeeze=False)
    for ax, n in zip(axes[0], ns, strict=True):
        mine = [r for r in rows if r["n"] == n]
        delays = sorted({r["d_ms"] for r in mine})
        by = {(r["d_ms"], r["mode"]): r for r in mine}
        series = {
            "floor (raw sockets)": [by[(d, "default")]["floor_p50_ms"] for d in delays],
            "choreography, default": [by[(d, "default")]["chor_p50_ms"] for d in delays],
            "choreography, fault-tolerant": [by[(d, "fault-tolerant")]["chor_p50_ms"] for d in delays],
            "orchestrator": [by[(d, "default")]["orch_p50_ms"] for d in delays],
        }
        for label, ys in series.items():
            ax.plot(delays, ys, marker="o", label=label)
        ax.set_title(f"N = {n} services: p50 per token, ms")
        ax.set_xlabel("one-way delay on every link, ms")
        ax.legend(fontsize=8)
    fig.suptitle("chain: choreography vs orchestrator (and the raw-socket floor)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, measure, write the JSON and the plot; return what was written."""
    parser = harness.parser(__doc__, "chain")
    parser.add_argument("--n", type=int, nargs="+", default=[1, 3, 5], help="services in the chain (1-5)")
    parser.add_argument("--delay", type=float, nargs="+", default=[0, 1, 3, 9], help="one-way ms on every link")
    parser.add_argument("--samples", type=int, default=200, help="tokens per variant, point and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.delay, args.samples, args.rounds, args.warmup = [5], [0, 9], 50, 2, 8
    started = harness.machine()
    with harness.progress("chain") as tick:
        for attempt in range(3):
            try:
                with tempfile.TemporaryDirectory(prefix="chain-bench-") as tmp:
                    rows = asyncio.run(_run(args, Path(tmp), tick))
                break
            except RuntimeError as exc:
                if attempt == 2 or not harness.bind_clash(exc):
                    raise
                tick("a port was taken while the processes started: again with fresh ports")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    data = harness.write_results(
        "chain", rows, path=args.json, extra={"settings": settings}, plot=_plot, started=started
    )
    for row in rows:
        extra = f"  {row['commits_per_session']:.2f} commits/session" if "commits_per_session" in row else ""
        print(
            f"N={row['n']} d={row['d_ms']:g} ms {row['mode']:<15} choreography p50 {row['chor_p50_ms']:7.2f} "
            f"p99 {row['chor_p99_ms']:7.2f} | orchestrator p50 {row['orch_p50_ms']:7.2f} "
            f"p99 {row['orch_p99_ms']:7.2f} | floor p50 {row['floor_p50_ms']:7.2f} | "
            f"orch/chor {row['orch_over_chor']:.2f}x  chor/floor {row['chor_over_floor']:.2f}x{extra}"
        )
    return data


def main() -> None:
    run()


if __name__ == "__main__":
    main()
