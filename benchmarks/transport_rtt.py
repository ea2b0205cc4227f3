"""Round-trip latency of TcpTransport against a raw asyncio length-prefixed echo.

Why: the sidecar-to-sidecar hop is on every step of every session, so the transport's cost
over the bare socket round trip must stay small. Each variant (raw echo, TcpTransport,
TcpTransport with HMAC; on asyncio's loop and on uvloop) runs in its own client process
against its own server process, measuring N sequential round trips (``send(wait=True)`` for
the transport, write + read back for the echo) after a warm-up. The variants take turns in
several rounds, so a machine whose load drifts (a shared VM) skews them alike; numbers from
one run on one machine are only comparable side by side, hence the ratios.

Usage::

    python benchmarks/transport_rtt.py [--n 5000] [--payload 256]

Writes ``benchmarks/results/transport_rtt.json`` and ``transport_rtt.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results"
TRANSPORTS = ("raw", "tcp", "tcp+hmac")
LOOPS = ("asyncio", "uvloop")
WARMUP = 300
HMAC_KEYS = {"k1": b"benchmark-key-0123456789abcdef!!"}
_LEN = struct.Struct(">I")


# --- the measured processes ----------------------------------------------------------------


def _run(loop: str, coro: Awaitable[Any]) -> Any:
    if loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)  # type: ignore[arg-type]
    return asyncio.run(coro)  # type: ignore[arg-type]


async def _raw_server() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                header = await reader.readexactly(4)
                body = await reader.readexactly(_LEN.unpack(header)[0])
                writer.write(header + body)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    await _announce_and_wait(server.sockets[0].getsockname()[1])


async def _tcp_server(keys: dict[str, bytes] | None) -> None:
    from accompanist.transport import TcpTransport

    async def accept(_: Any) -> None:
        return None

    transport = TcpTransport("b", ("127.0.0.1", 0), keys=keys)
    await transport.start(accept)
    await _announce_and_wait(transport.address[1])


async def _announce_and_wait(port: int) -> None:
    print(port, flush=True)
    # Serve until the client closes our stdin (it owns this process).
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def _measure(send: Callable[[int], Awaitable[None]], n: int) -> list[float]:
    for i in range(WARMUP):
        await send(i)
    samples: list[float] = []
    clock = time.perf_counter_ns
    for i in range(n):
        started = clock()
        await send(i)
        samples.append((clock() - started) / 1000.0)
        if i % 250 == 249:
            print(f"progress {i + 1}", flush=True)
    return samples


async def _raw_client(port: int, n: int, payload: int) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    frame = _LEN.pack(payload) + os.urandom(payload)

    async def send(_: int) -> None:
        writer.write(frame)
        header = await reader.readexactly(4)
        await reader.readexactly(_LEN.unpack(header)[0])

    try:
        return await _measure(send, n)
    finally:
        writer.close()


async def _tcp_client(port: int, n: int, payload: int, keys: dict[str, bytes] | None) -> list[float]:
    from accompanist.envelope import Envelope
    from accompanist.transport import TcpTransport

    transport = TcpTransport("a", ("127.0.0.1", 0), {"b": ("127.0.0.1", port)}, keys=keys)
    body = os.urandom(payload)

    async def send(seq: int) -> None:
        await transport.send(Envelope("0190f0f0-bench", "bench", 1, "a", "b", seq + 1, "value", body))

    try:
        return await _measure(send, n)
    finally:
        await transport.close()


def _child(transport: str, loop: str, n: int, payload: int) -> None:
    """Start this variant's server process, measure against it, print one JSON line."""
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", transport, "--loop", loop],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        keys = HMAC_KEYS if transport == "tcp+hmac" else None
        client = _raw_client(port, n, payload) if transport == "raw" else _tcp_client(port, n, payload, keys)
        samples = _run(loop, client)
    finally:
        if server.stdin is not None:
            server.stdin.close()
        server.wait(timeout=10)
    print("samples " + json.dumps([round(x, 2) for x in samples]), flush=True)


def _serve(transport: str, loop: str) -> None:
    keys = HMAC_KEYS if transport == "tcp+hmac" else None
    _run(loop, _raw_server() if transport == "raw" else _tcp_server(keys))


# --- the parent: run every variant, report, plot --------------------------------------------


def _run_variants(n: int, payload: int, rounds: int) -> list[dict[str, Any]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    variants = [(t, lp) for lp in LOOPS for t in TRANSPORTS]
    samples: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
    per_round = [n // rounds + (1 if i < n % rounds else 0) for i in range(rounds)]
    with Progress(
        TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    ) as progress:
        tasks = {v: progress.add_task(f"{v[0]} on {v[1]}", total=n) for v in variants}
        for count in per_round:
            for variant in variants:
                transport, loop = variant
                done = len(samples[variant])
                cmd = [sys.executable, __file__, "--child", transport, "--loop", loop, "--n", str(count)]
                cmd += ["--payload", str(payload)]
                child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
                assert child.stdout is not None
                for line in child.stdout:
                    if line.startswith("progress "):
                        progress.update(tasks[variant], completed=done + int(line.split()[1]))
                    elif line.startswith("samples "):
                        samples[variant].extend(json.loads(line[len("samples ") :]))
                        progress.update(tasks[variant], completed=len(samples[variant]))
                if child.wait() != 0:
                    raise SystemExit(f"variant {variant} failed with exit code {child.returncode}")
    results = []
    for (transport, loop), values in samples.items():
        values.sort()
        results.append(
            {
                "transport": transport,
                "loop": loop,
                "n": len(values),
                "median_us": statistics.median(values),
                "p90_us": values[int(0.9 * len(values))],
                "p99_us": values[int(0.99 * len(values))],
                "mean_us": statistics.fmean(values),
            }
        )
    return results


def _report(results: list[dict[str, Any]], n: int, payload: int) -> dict[str, Any]:
    by = {(r["transport"], r["loop"]): r for r in results}
    ratios = {
        f"{t}/raw on {lp}": by[(t, lp)]["median_us"] / by[("raw", lp)]["median_us"]
        for lp in LOOPS
        for t in TRANSPORTS
        if t != "raw"
    }
    ratios |= {
        f"{t}: uvloop/asyncio": by[(t, "uvloop")]["median_us"] / by[(t, "asyncio")]["median_us"] for t in TRANSPORTS
    }
    print(f"\nmedian round trip, {payload}-byte payload, N={n} (µs; p90 and p99 in brackets)")
    print(f"{'transport':<10}" + "".join(f"{lp:>30}" for lp in LOOPS))
    for t in TRANSPORTS:
        cells = [by[(t, lp)] for lp in LOOPS]
        print(f"{t:<10}" + "".join(f"{c['median_us']:>12.1f} [{c['p90_us']:6.1f}, {c['p99_us']:6.1f}]" for c in cells))
    print()
    for name, value in ratios.items():
        print(f"  {name:<26} {value:5.2f}x")
    return {
        "benchmark": "transport_rtt",
        "n": n,
        "payload_bytes": payload,
        "warmup": WARMUP,
        "python": platform.python_version(),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "results": results,
        "ratios": ratios,
    }


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {(r["transport"], r["loop"]): r for r in report["results"]}
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.38
    for i, loop in enumerate(LOOPS):
        xs = [j + (i - 0.5) * width for j in range(len(TRANSPORTS))]
        med = [by[(t, loop)]["median_us"] for t in TRANSPORTS]
        p90 = [by[(t, loop)]["p90_us"] - m for t, m in zip(TRANSPORTS, med, strict=True)]
        bars = ax.bar(xs, med, width, yerr=[[0] * len(med), p90], capsize=3, label=loop)
        ax.bar_label(bars, fmt="%.0f", padding=2, fontsize=8)
    ax.set_xticks(range(len(TRANSPORTS)), ["raw echo", "TcpTransport", "TcpTransport + HMAC"])
    ax.set_ylabel("median round trip (µs), whisker: p90")
    ax.set_title(f"Loopback round trip, {report['payload_bytes']}-byte payload, N={report['n']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (or, with the internal flags, one of its processes)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000, help="measured round trips per variant")
    parser.add_argument("--payload", type=int, default=256, help="payload bytes per envelope")
    parser.add_argument("--rounds", type=int, default=5, help="turns each variant takes (N is split among them)")
    parser.add_argument("--loop", choices=LOOPS, default="asyncio", help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=TRANSPORTS, help=argparse.SUPPRESS)
    parser.add_argument("--serve", choices=TRANSPORTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _serve(args.serve, args.loop)
        return
    if args.child:
        _child(args.child, args.loop, args.n, args.payload)
        return
    report = _report(_run_variants(args.n, args.payload, args.rounds), args.n, args.payload)
    report["rounds"] = args.rounds
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "transport_rtt.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot(report, RESULTS / "transport_rtt.png")
    print(f"\nwrote {RESULTS / 'transport_rtt.json'} and {RESULTS / 'transport_rtt.png'}")


if __name__ == "__main__":
    main()
