"""Latency and throughput of the broker transport (NATS JetStream) beside the TCP transport.

Why: the broker transport buys durability in the broker and sidecars that need no peer
addresses; this measures what it costs on the hop every session step takes. Each variant moves
signed envelopes (HMAC, as in production) from role ``a`` to role ``b``, both transports in
this process, on uvloop when installed (so both variants pay the receiver's work on the same
loop); the broker is its own
``nats-server -js`` process on loopback, with the store in a temporary directory:

* ``tcp``: ``TcpTransport``; ``send(wait=True)`` returns once b's handler accepted it;
* ``jetstream``: the broker fsyncs every write before it acknowledges it
  (``sync_interval: always``, nats-server 2.10+), the durability of an SQLite store with
  ``synchronous=FULL``; ``send(wait=True)`` returns once the broker stored it;
* ``jetstream (no fsync)``: the broker's default, which leaves flushing to the OS: an envelope
  the broker acknowledged can be lost if the broker's machine loses power.

Per variant: the latency of ``send(wait=True)`` and of delivery (send to b's handler), over
sequential sends; and the throughput with 64 sends in flight until b accepted them all. The
variants take turns in ``--rounds`` rounds so that a drifting machine load skews them alike.

Usage::

    python benchmarks/transport.py [--quick] [--json PATH] [--n 3000] [--envelopes 10000]

Writes ``benchmarks/results/transport.json`` and ``transport.png``.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import harness  # noqa: E402

__all__ = ["ROW_KEYS", "main", "run"]

T = TypeVar("T")

ROW_KEYS = (
    "transport",
    "send_p50_us",
    "send_p99_us",
    "delivered_p50_us",
    "delivered_p99_us",
    "envelopes_per_s",
)
VARIANTS = ("tcp", "jetstream", "jetstream (no fsync)")
IN_FLIGHT = 64
KEYS = {"k1": b"benchmark-key-0123456789abcdef!!"}
PAYLOAD = 256


class _Receiver:
    """b's handler: notes when each seq arrived."""

    def __init__(self) -> None:
        self.arrived: dict[int, float] = {}
        self.changed = asyncio.Event()

    async def __call__(self, envelope: Any) -> None:
        self.arrived.setdefault(envelope.seq, time.perf_counter())
        self.changed.set()

    async def wait_for(self, seqs: range) -> None:
        while not all(s in self.arrived for s in seqs):
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 60)


async def _pair(variant: str, url: str | None) -> tuple[Any, Any, _Receiver]:
    from accompanist.transport import TcpTransport

    inbox = _Receiver()
    if variant == "tcp":
        b: Any = TcpTransport("b", ("127.0.0.1", 0), keys=KEYS)
        await b.start(inbox)
        a: Any = TcpTransport("a", ("127.0.0.1", 0), {"b": b.address}, keys=KEYS)
        return a, b, inbox
    from accompanist.transport.jetstream import JetStreamTransport

    assert url is not None
    stream = f"BENCH{uuid.uuid4().hex[:8]}"
    b = JetStreamTransport("b", url, stream=stream, keys=KEYS, max_inflight=IN_FLIGHT * 4)
    await b.start(inbox)
    a = JetStreamTransport("a", url, stream=stream, keys=KEYS)

    async def ignore(_: Any) -> None:
        return None

    await a.start(ignore)
    return a, b, inbox


def _envelope(seq: int, body: bytes) -> Any:
    from accompanist.envelope import Envelope

    return Envelope("0190f0f0-bench", "bench", 1, "a", "b", seq, "value", body)


async def _measure(
    variant: str, url: str | None, n: int, envelopes: int, tick: Callable[..., None]
) -> dict[str, list[float]]:
    a, b, inbox = await _pair(variant, url)
    body = os.urandom(PAYLOAD)
    send_us: list[float] = []
    delivered_us: list[float] = []
    try:
        seq = 0
        for _ in range(min(200, n)):  # warm-up: connections, the consumer, caches
            seq += 1
            await a.send(_envelope(seq, body))
        await inbox.wait_for(range(1, seq + 1))
        for _ in range(n):
            seq += 1
            began = time.perf_counter()
            await a.send(_envelope(seq, body))
            sent = time.perf_counter()
            await inbox.wait_for(range(seq, seq + 1))
            send_us.append((sent - began) * 1e6)
            delivered_us.append((inbox.arrived[seq] - began) * 1e6)
            tick(advance=1)
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def one(s: int) -> None:
            async with gate:
                await a.send(_envelope(s, body))

        first = seq + 1
        began = time.perf_counter()
        await asyncio.gather(*(one(s) for s in range(first, first + envelopes)))
        await inbox.wait_for(range(first, first + envelopes))
        rate = envelopes / (time.perf_counter() - began)
        tick(advance=envelopes)
    finally:
        await a.close()
        await b.close()
    return {"send": send_us, "delivered": delivered_us, "rate": [rate]}


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed, as ``accompanist sidecar`` does (``loop=auto``)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _row(variant: str, found: dict[str, list[float]]) -> dict[str, Any]:
    return {
        "transport": variant,
        "send_p50_us": round(statistics.median(found["send"]), 1),
        "send_p99_us": round(harness.pct(found["send"], 0.99), 1),
        "delivered_p50_us": round(statistics.median(found["delivered"]), 1),
        "delivered_p99_us": round(harness.pct(found["delivered"], 0.99), 1),
        "envelopes_per_s": round(statistics.median(found["rate"]), 1),
        "samples": len(found["send"]),
    }


def _plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    rows = [r for r in data["rows"] if "error" not in r]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    labels = [r["transport"].replace(" (", "\n(") for r in rows]
    x = range(len(rows))
    left.bar([i - 0.2 for i in x], [r["send_p50_us"] for r in rows], 0.4, label="send(wait=True) returns")
    left.bar([i + 0.2 for i in x], [r["delivered_p50_us"] for r in rows], 0.4, label="in b's handler")
    left.set_xticks(list(x), labels)
    left.set_ylabel("µs (median)")
    left.set_title("latency of one envelope, sequential sends", fontsize=10)
    left.legend(fontsize=8)
    right.bar(labels, [r["envelopes_per_s"] for r in rows], color="tab:green")
    for i, r in enumerate(rows):
        right.annotate(f"{r['envelopes_per_s']:.0f}", (i, r["envelopes_per_s"]), ha="center", va="bottom")
    right.set_title(f"throughput, {IN_FLIGHT} in flight: envelopes/s", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _brokers() -> tuple[dict[str, Any], str | None]:
    """A started server per JetStream variant, or the reason there is none."""
    try:
        import nats  # noqa: F401 - only whether the client is there
        from tests.support.nats_server import NatsServer

        return {
            "jetstream": NatsServer.launch(sync_always=True),
            "jetstream (no fsync)": NatsServer.launch(sync_always=False),
        }, None
    except Exception as exc:
        return {}, harness.error_text(exc)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, measure, write the JSON and the plot; return what was written."""
    parser = harness.parser(__doc__, "transport")
    parser.add_argument("--n", type=int, default=3000, help="sequential sends per variant (latency)")
    parser.add_argument("--envelopes", type=int, default=10_000, help="envelopes per variant and round (throughput)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.envelopes, args.rounds = 600, 3000, 1
    started = harness.machine()
    brokers, why = _brokers()
    variants = [v for v in VARIANTS if v == "tcp" or v in brokers]
    found: dict[str, dict[str, list[float]]] = {v: {"send": [], "delivered": [], "rate": []} for v in variants}
    per_round = max(1, args.n // args.rounds)
    try:
        with harness.progress("transport") as tick:
            tick("measuring", total=len(variants) * args.rounds * (per_round + args.envelopes))
            for _ in range(args.rounds):
                for variant in variants:
                    tick(f"{variant}")
                    url = brokers[variant].url if variant in brokers else None
                    got = _run(_measure(variant, url, per_round, args.envelopes, tick))
                    for key, values in got.items():
                        found[variant][key].extend(values)
    finally:
        for server in brokers.values():
            server.destroy()
    rows = [_row(v, found[v]) for v in variants]
    if why is not None:
        rows += [{"transport": v, "error": why} for v in VARIANTS if v not in variants]
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    data = harness.write_results("transport", rows, path=args.json, extra={"settings": settings}, plot=_plot)
    data["machine"] = started
    tcp = next((r for r in rows if r["transport"] == "tcp"), None)
    for row in rows:
        if "error" in row:
            print(f"{row['transport']:<22} error: {row['error']}")
            continue
        ratio = f"  ({row['delivered_p50_us'] / tcp['delivered_p50_us']:.1f}x tcp)" if tcp else ""
        print(
            f"{row['transport']:<22} send p50 {row['send_p50_us']:8.1f} µs  "
            f"delivered p50 {row['delivered_p50_us']:8.1f} µs{ratio}  p99 {row['delivered_p99_us']:8.1f} µs  "
            f"{row['envelopes_per_s']:8.0f} envelopes/s"
        )
    return data


def main() -> None:
    run()


if __name__ == "__main__":
    main()
