"""Recovery after an outage (the Java original's recovery benchmark): orders arrive open loop at
5 per second for 120 s; in the middle the payment service and what serves it (Accompanist's
payment sidecar, Temporal's payment activity worker) are SIGKILLed and stay down for 30 s.

Why: a saga runtime earns its keep when a participant is down. What matters then is that no
order is lost or applied twice, and how soon after the participant's return the orders that
arrived during the outage complete (the Java original took 19-85 s, Temporal 4-17 s there).

For each system (its own three services, ``sagasystems.py``; the same orders; none declined):

- ``orders``: placed, ``completed``: ended ``completed`` (after the load, the benchmark waits
  for stragglers up to a deadline);
- ``duplicates``: (order, step) pairs with more than one row in the services' databases (an
  effect applied twice); ``verified``: every order's effects are exactly one reservation,
  charge and shipment;
- ``recovery_s``: from the payment service's return (it and its sidecar/worker answer again)
  until every order that arrived during the outage (the *outage cohort*) completed;
  ``restart_to_ready_s`` is how long the processes took to start, and
  ``recovery_from_restart_s`` the sum (from the moment they were started again).

``--quick``: 30 s of load with a 7.5 s outage (the same proportions).

Usage::

    python benchmarks/recovery.py [--quick] [--json PATH] [--duration 120] [--outage 30] [--rate 5]

Writes ``benchmarks/results/recovery.json`` and ``recovery.png``.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import harness  # noqa: E402
from sagaload import make_orders  # noqa: E402
from sagaservices import check_orders  # noqa: E402
from sagasystems import System, make_system  # noqa: E402

__all__ = ["ROW_KEYS", "main", "run"]

ROW_KEYS = ("system", "orders", "completed", "duplicates", "recovery_s")
SYSTEMS = ("accompanist", "temporal")


async def _one(name: str, args: Any, workdir: Path, tick: harness.Ticker) -> dict[str, Any]:
    system: System | None = None
    try:
        for attempt in range(3):
            system = make_system(name, workdir / f"{name}-{attempt}")
            tick(f"{name}: starting")
            try:
                await system.start()
                break
            except RuntimeError as exc:
                await system.stop()
                system = None
                if attempt == 2 or not harness.bind_clash(exc):  # a port taken meanwhile: again
                    raise
        assert system is not None
        orders = make_orders(f"r-{name}", 0, int(args.duration * args.rate), fail_every=0)
        warm = make_orders(f"w-{name}", 0, 10, fail_every=0)
        await system.run(warm, 2)
        t0 = time.time() + 0.5
        down_at = t0 + (args.duration - args.outage) / 2
        events: dict[str, float] = {}

        async def outage() -> None:
            await asyncio.sleep(max(0.0, down_at - time.time()))
            assert system is not None
            await system.kill_payment()
            events["down"] = time.time()
            await asyncio.sleep(max(0.0, down_at + args.outage - time.time()))
            events["restart"] = time.time()
            await system.restart_payment()
            events["ready"] = time.time()

        async def clock() -> None:
            end = t0 + args.duration
            while (now := time.time()) < end + args.drain:
                phase = "load" if now < end else "waiting for stragglers"
                if "down" in events and "ready" not in events:
                    phase += ", payment DOWN"
                tick(f"{name}: {phase}", total=args.duration)
                tick(advance=min(args.duration, max(0.0, now - t0)))
                await asyncio.sleep(0.5)

        ticker = asyncio.create_task(clock())
        try:
            load = system.run_open(orders, args.rate, t0, args.duration + args.drain + 60)
            result, _ = await asyncio.gather(load, outage())
        finally:
            ticker.cancel()
        timeline: dict[str, list[Any]] = result["timeline"]
        tick(f"{name}: checking every order in the services' databases")
        outcomes = {oid: str(status) for oid, (_, _, status) in timeline.items()}
        check = check_orders(system.services.dbs, outcomes, orders)
        cohort = [v for v in timeline.values() if events["down"] <= v[0] < events["restart"]]
        done = [v for v in cohort if v[2] == "completed"]
        last = max((v[1] for v in done), default=float("nan"))
        lat = [v[1] - v[0] for v in timeline.values() if v[2] == "completed"]
        calm = [v[1] - v[0] for v in timeline.values() if v[2] == "completed" and v[0] < events["down"]]
        return {
            "system": name,
            "orders": len(orders),
            "completed": sum(1 for v in timeline.values() if v[2] == "completed"),
            "duplicates": check["duplicates"],
            "recovery_s": round(last - events["ready"], 2) if len(done) == len(cohort) else None,
            "recovery_from_restart_s": round(last - events["restart"], 2) if len(done) == len(cohort) else None,
            "restart_to_ready_s": round(events["ready"] - events["restart"], 2),
            "outage_cohort": len(cohort),
            "outage_cohort_completed": len(done),
            "outage_s": round(events["restart"] - events["down"], 2),
            "verified": check["verified"],
            "service_repeats": check["repeats"],
            "p50_before_outage_ms": round(statistics.median(calm) * 1000, 1) if calm else None,
            "max_latency_s": round(max(lat), 2) if lat else None,
            **({"problems": check["problems"]} if check["problems"] else {}),
            "timeline": [[round(v[0] - t0, 3), round(v[1] - v[0], 3), v[2] == "completed"] for v in timeline.values()],
            "events": {k: round(v - t0, 3) for k, v in events.items()},
        }
    except Exception as exc:
        return {"system": name, "error": harness.error_text(exc)}
    finally:
        if system is not None:
            try:
                await system.stop()
            except Exception as exc:
                print(f"while stopping {name}: {harness.error_text(exc)}", file=sys.stderr)


async def _measure(args: Any, workdir: Path, tick: harness.Ticker) -> list[dict[str, Any]]:
    return [await _one(name, args, workdir, tick) for name in args.systems]


def _plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    rows = [r for r in data["rows"] if "timeline" in r]
    fig, axes = plt.subplots(1, max(1, len(rows)), figsize=(6 * max(1, len(rows)), 4.2), squeeze=False)
    for ax, row in zip(axes[0], rows, strict=False):
        xs = [t[0] for t in row["timeline"]]
        ys = [t[1] for t in row["timeline"]]
        colors = ["tab:blue" if t[2] else "tab:red" for t in row["timeline"]]
        ax.scatter(xs, ys, s=6, c=colors)
        ev = row["events"]
        ax.axvspan(ev["down"], ev["ready"], color="tab:red", alpha=0.12, label="payment down")
        rec = row["recovery_s"]
        ax.set_title(
            f"{row['system']}: {row['completed']}/{row['orders']} completed, cohort done {rec} s after return",
            fontsize=10,
        )
        ax.set_xlabel("order placed at, s")
        ax.set_ylabel("latency, s")
        ax.legend(fontsize=8)
    fig.suptitle("recovery after a 'payment' outage: open loop")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, measure, write the JSON and the plot; return what was written."""
    parser = harness.parser(__doc__, "recovery")
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load")
    parser.add_argument("--outage", type=float, default=30.0, help="seconds payment is down, in the middle")
    parser.add_argument("--rate", type=float, default=5.0, help="orders per second, open loop")
    parser.add_argument("--drain", type=float, default=90.0, help="seconds to wait for stragglers after the load")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.outage, args.drain = 30.0, 7.5, 45.0
    started = harness.machine()
    with harness.progress("recovery") as tick, tempfile.TemporaryDirectory(prefix="recovery-bench-") as tmp:
        rows = asyncio.run(_measure(args, Path(tmp), tick))
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    data = harness.write_results(
        "recovery", rows, path=args.json, extra={"settings": settings}, plot=_plot, started=started
    )
    for row in rows:
        if "error" in row:
            print(f"{row['system']:<12} error: {row['error']}")
            continue
        print(
            f"{row['system']:<12} {row['completed']}/{row['orders']} completed, {row['duplicates']} duplicates, "
            f"outage cohort {row['outage_cohort_completed']}/{row['outage_cohort']} done "
            f"{row['recovery_s']} s after payment was back ({row['recovery_from_restart_s']} s after the "
            f"restart; starting took {row['restart_to_ready_s']} s), verified={row['verified']}"
        )
    return data


def main() -> None:
    run()


if __name__ == "__main__":
    main()
