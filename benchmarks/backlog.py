"""Cost of the durable path against a backlog: an acknowledgement mark and the relay's scan of
pending rows, with 1k, 10k and 100k unacknowledged rows waiting for a dead peer.

Why: a peer that is down lets its rows pile up in every other sidecar's outbox. If an ack had to
scan them, or the relay's scan for a healthy peer had to wade through them, one dead peer would
slow every other session (it once did: an ack took 15.6 ms at 100k rows, and a dead peer's
10,100-row backlog delayed a healthy peer's retries by 21 s). Both must stay flat.

For each backlog size, on SQLite ``synchronous=FULL`` (the store itself, no engine):

- ``ack_ms``: one commit that writes a new outbox row to the healthy peer and marks the previous
  one acknowledged (by its key), median of many;
- ``scan_ms``: ``outbox_pending(limit=256, dst="live")``, the relay's per-destination scan, with
  a few live rows pending beside the backlog;
- ``scan_all_ms``: ``outbox_pending(limit=256)`` over every destination (what a relay pass
  without a destination reads first).

Usage::

    python benchmarks/backlog.py [--sizes 1000 10000 100000] [--quick]

Writes ``benchmarks/results/backlog.json``.
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
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src")]

from accompanist.envelope import Envelope, EnvelopeKind  # noqa: E402
from accompanist.store.base import SessionRecord, WriteBatch  # noqa: E402
from accompanist.store.sqlite import SQLiteStore  # noqa: E402

__all__ = ["main"]

RESULTS = ROOT / "benchmarks" / "results"


def _envelope(sid: str, dst: str, seq: int) -> Envelope:
    return Envelope(
        session_id=sid, choreography="order", version=1, src="wh", dst=dst, seq=seq,
        kind=EnvelopeKind.VALUE, payload=b"x" * 200,
    )  # fmt: skip


def _session(sid: str) -> SessionRecord:
    return SessionRecord(session_id=sid, choreography="order", version=1, role="wh", status="running")


async def _measure(size: int, workdir: Path, samples: int) -> dict[str, Any]:
    store = SQLiteStore(workdir / f"backlog-{size}.db", "wh")
    await store.open()
    try:
        chunk = 5000
        for start in range(0, size, chunk):
            n = min(chunk, size - start)
            sids = [f"dead-{i}" for i in range(start, start + n)]
            batch = WriteBatch(sessions=[_session(s) for s in sids], outbox=[_envelope(s, "dead", 1) for s in sids])
            await store.commit(batch)
            print(f"\r[backlog] {size}: {start + n}/{size} rows for the dead peer", end="", file=sys.stderr)
        print(file=sys.stderr)
        await store.commit(WriteBatch(sessions=[_session("live")], outbox=[_envelope("live", "live", 0)]))
        acks, scans, scans_all = [], [], []
        for seq in range(1, samples + 1):
            batch = WriteBatch(outbox=[_envelope("live", "live", seq)], acks=[("live", "live", seq - 1)])
            t0 = time.perf_counter()
            await store.commit(batch)
            acks.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            pending = await store.outbox_pending(256, dst="live")
            scans.append(time.perf_counter() - t0)
            if [e.seq for e in pending] != [seq]:
                raise RuntimeError(f"expected only live #{seq} pending, got {[e.seq for e in pending]}")
            if seq % 10 == 0:
                t0 = time.perf_counter()
                await store.outbox_pending(256)
                scans_all.append(time.perf_counter() - t0)
        return {
            "backlog": size,
            "ack_ms": statistics.median(acks) * 1000,
            "scan_ms": statistics.median(scans) * 1000,
            "scan_all_ms": statistics.median(scans_all) * 1000,
        }
    finally:
        await store.close()


async def _run(sizes: list[int], samples: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="backlog-bench-", dir=ROOT / "benchmarks") as tmp:
        rows = [await _measure(size, Path(tmp), samples) for size in sizes]
    small, large = rows[0], rows[-1]
    ratios = {
        f"ack {large['backlog']} / {small['backlog']} rows": large["ack_ms"] / small["ack_ms"],
        f"per-destination scan {large['backlog']} / {small['backlog']} rows": large["scan_ms"] / small["scan_ms"],
    }
    return {"results": rows, "ratios": ratios}


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and write its results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    args = parser.parse_args(argv)
    data = asyncio.run(_run(args.sizes, 100 if args.quick else args.samples))
    data["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "backlog.json").write_text(json.dumps(data, indent=2) + "\n")
    for row in data["results"]:
        print(
            f"{row['backlog']:>7} rows waiting for a dead peer: ack {row['ack_ms']:.3f} ms, "
            f"scan for the healthy peer {row['scan_ms']:.3f} ms, scan of all {row['scan_all_ms']:.3f} ms"
        )
    for name, ratio in data["ratios"].items():
        print(f"{name:<44} {ratio:5.2f}x")


if __name__ == "__main__":
    main()
