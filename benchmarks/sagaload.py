"""The saga benchmark's load: the orders, placing them at a given concurrency, and the small
line protocol through which ``saga.py`` drives a system that runs in its own process.

Why a protocol: Temporal's Python processes sometimes crash at interpreter exit and DBOS runs
inside its application process, so each runs in a subprocess of its own; the benchmark sends
it one JSON line per phase (``{"orders": [...], "concurrency": c}``) and reads one JSON line
back (latencies, wall time, each order's outcome). Accompanist's driver is an HTTP client and
runs the same :func:`place_all` in the benchmark's own process.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

__all__ = ["Driver", "make_orders", "place_all", "place_open", "serve_stdio"]

Place = Callable[[dict[str, Any]], Awaitable[str]]


def make_orders(prefix: str, start: int, count: int, *, fail_every: int = 10) -> list[dict[str, Any]]:
    """``count`` orders; every ``fail_every``-th is declined, alternately at charge and at ship
    (so every system compensates one and two steps), the same orders for every system."""
    items, customers = ("widget", "gadget", "gizmo"), ("alice", "bob", "carol")
    orders = []
    for i in range(start, start + count):
        fail = None
        if fail_every and i % fail_every == fail_every - 1:
            fail = ("charge", "ship")[(i // fail_every) % 2]
        orders.append(
            {
                "order_id": f"{prefix}-{i:06d}",
                "item": items[i % 3],
                "qty": 1,
                "customer": customers[(i // 3) % 3],
                "amount": 25,
                "fail_at": fail,
            }
        )
    return orders


async def place_all(
    place: Place, orders: list[dict[str, Any]], concurrency: int, tick: Callable[..., None] | None = None
) -> dict[str, Any]:
    """Place ``orders`` with ``concurrency`` callers, each waiting for its order's outcome.

    Returns ``{"latencies": [s, ...], "wall": s, "outcomes": {order_id: status}}``; an order
    whose placing raised is recorded as ``"error: ..."``.
    """
    latencies: list[float] = []
    outcomes: dict[str, str] = {}
    queue = list(reversed(orders))

    async def worker() -> None:
        while queue:
            order = queue.pop()
            t0 = time.perf_counter()
            try:
                outcomes[order["order_id"]] = await place(order)
            except Exception as exc:
                outcomes[order["order_id"]] = f"error: {type(exc).__name__}: {exc}"[:300]
            latencies.append(time.perf_counter() - t0)
            if tick is not None:
                tick(advance=1)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"latencies": latencies, "wall": time.perf_counter() - began, "outcomes": outcomes}


async def place_open(place: Place, orders: list[dict[str, Any]], rate: float, t0: float) -> dict[str, Any]:
    """Open loop: order ``i`` is placed at wall-clock ``t0 + i / rate`` whatever the others
    are doing, and awaited. Returns ``{"timeline": {order_id: [start, end, status]}}`` in
    wall-clock seconds (``time.time()``, so another process can line its events up with it)."""
    timeline: dict[str, list[Any]] = {}

    async def one(i: int, order: dict[str, Any]) -> None:
        await asyncio.sleep(max(0.0, t0 + i / rate - time.time()))
        began = time.time()
        try:
            status = await place(order)
        except Exception as exc:
            status = f"error: {type(exc).__name__}: {exc}"[:300]
        timeline[order["order_id"]] = [began, time.time(), status]

    await asyncio.gather(*(one(i, order) for i, order in enumerate(orders)))
    return {"timeline": timeline}


async def serve_stdio(place: Place) -> None:
    """Answer phases from stdin until ``{"quit": true}`` or end of input (stdout: one JSON
    line per phase; ``ready`` first). Logs belong on stderr."""
    loop = asyncio.get_running_loop()
    print(json.dumps({"ready": True}), flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line.strip():
            return
        command = json.loads(line)
        if command.get("quit"):
            return
        if "open" in command:
            result = await place_open(place, command["orders"], command["open"]["rate"], command["open"]["t0"])
        else:
            result = await place_all(place, command["orders"], int(command["concurrency"]))
        print(json.dumps(result), flush=True)


class Driver:
    """A system's driver process, spoken to with :func:`serve_stdio`'s protocol."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path, cwd: Path) -> None:
        self.command, self.env, self.log, self.cwd = command, env, log, cwd
        self.proc: asyncio.subprocess.Process | None = None
        self._log_file: Any = None

    async def start(self, timeout: float = 120) -> None:
        """Start it and wait for ``ready``.

        Raises:
            RuntimeError: it exited or did not get ready in time (its log tail says why).
        """
        self._log_file = self.log.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log_file,
            env=self.env,
            cwd=self.cwd,
            limit=64 * 1024 * 1024,
        )
        answer = await self._answer(timeout)
        if not answer.get("ready"):
            raise RuntimeError(f"driver did not get ready: {answer}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def _answer(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except TimeoutError:
            raise RuntimeError(f"driver silent for {timeout:g} s; log tail:\n{self.tail()}") from None
        if not line:
            raise RuntimeError(f"driver exited ({await self.proc.wait()}); log tail:\n{self.tail()}")
        return dict(json.loads(line))

    async def run(self, orders: list[dict[str, Any]], concurrency: int, timeout: float = 600) -> dict[str, Any]:
        """One phase: place ``orders`` at ``concurrency``; its :func:`place_all` result."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"orders": orders, "concurrency": concurrency}) + "\n").encode())
        await self.proc.stdin.drain()
        return await self._answer(timeout)

    async def run_open(self, orders: list[dict[str, Any]], rate: float, t0: float, timeout: float) -> dict[str, Any]:
        """An open-loop phase (see :func:`place_open`)."""
        assert self.proc is not None and self.proc.stdin is not None
        command = {"orders": orders, "open": {"rate": rate, "t0": t0}}
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        await self.proc.stdin.drain()
        return await self._answer(timeout)

    async def stop(self, *, ask: bool = True) -> None:
        """Ask it to quit (``ask``) or SIGTERM it; kill it if it does not go (temporalio may
        crash at exit: ignored)."""
        if self.proc is not None and self.proc.returncode is None:
            try:
                if ask:
                    assert self.proc.stdin is not None
                    self.proc.stdin.write(b'{"quit": true}\n')
                    await self.proc.stdin.drain()
                else:
                    self.proc.terminate()
                await asyncio.wait_for(self.proc.wait(), 15)
            except (TimeoutError, ConnectionError):
                self.proc.kill()
                await self.proc.wait()
        if self._log_file is not None:
            self._log_file.close()

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""
