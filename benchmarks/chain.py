"""Chain latency: a token through N services and back, as a choreography of sidecars (default
and fault-tolerant mode), against a raw-socket floor and an orchestrator, with a delay proxy
on every link.

Why: it is the Java original's microbenchmark and the cleanest view of what the runtime costs
per hop. Every variant uses the same N service processes (``chainparts.py service``: one
loopback RPC each) and the same delay proxy (``chainparts.py proxy``), which holds each chunk
``d`` ms per direction on every link between nodes (the kernel has no netem).

- ``floor``: N+1 processes of raw asyncio streams and msgpack, nothing durable: the least a
  choreography of N+1 hops can cost on this machine;
- ``default``/``fault-tolerant``: one sidecar per role (``chainapp.py``), started over the
  initiator's HTTP API with ``?wait=true``; fault-tolerant on SQLite ``synchronous=FULL``;
- ``orchestrator``: one process calling the N services in turn through the proxy and
  answering its client through the proxy too: 2(N+1) one-way hops where the choreography
  needs N+1.

Latency is measured one token at a time; throughput (sessions/s) with 64 in flight on the
3-role chain (N=2) at 0 ms. The fault-tolerant variant also reports durable commits per
session, read from every sidecar's ``accompanist_store_commits``. Variants take turns.

Usage::

    python benchmarks/chain.py [--quick] [--n 1 3 5] [--delay 0 1 3 9] [--samples 200]

Writes ``benchmarks/results/chain.json`` and ``chain.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
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
sys.path[:0] = [str(ROOT / "src"), str(ROOT), str(ROOT / "benchmarks")]

from chainparts import read_frame, write_frame  # noqa: E402
from examples.warehouse.cluster import Proc, free_port, wait_healthy  # noqa: E402

__all__ = ["main"]

RESULTS = ROOT / "benchmarks" / "results"
ROLES = ["start", *(f"s{i}" for i in range(1, 6))]
VARIANTS = ("floor", "default", "fault-tolerant", "orchestrator")
PARTS = str(ROOT / "benchmarks" / "chainparts.py")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "benchmarks")])}
_COMMITS = re.compile(rb"^accompanist_store_commits(?:_total)? (\S+)$", re.MULTILINE)


def _progress(text: str) -> None:
    print(f"\r[chain] {text:<100}", end="", file=sys.stderr, flush=True)


class Setup:
    """Every process of the benchmark: services, proxy, floor nodes, orchestrators, sidecars."""

    def __init__(self, workdir: Path, ns: list[int]) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []
        self.services = {f"s{i}": free_port() for i in range(1, 6)}
        self.links: dict[int, int] = {}  # proxy port -> target port
        self.control = free_port()
        self.floor_entry: dict[int, int] = {}
        self.orchestrator_entry: dict[int, int] = {}
        self.sidecars: dict[str, dict[str, Proc]] = {}
        for role, port in self.services.items():
            self._proc(f"service-{role}", ["service", str(port)])
        for n in ns:
            self._floor(n)
            self._orchestrator(n)
        for mode in ("default", "fault-tolerant"):
            self._sidecars(mode)

    def _link(self, target: int) -> int:
        port = free_port()
        self.links[port] = target
        return port

    def _proc(self, name: str, args: list[str], health: str = "") -> Proc:
        proc = Proc(name, [sys.executable, PARTS, *args], ENV, self.workdir / f"{name}.log", health, cwd=self.workdir)
        self.procs.append(proc)
        return proc

    def _floor(self, n: int) -> None:
        ports = [free_port() for _ in range(n + 1)]
        for i in range(n + 1):
            service = self.services.get(f"s{i}", 0)
            nxt = self._link(ports[(i + 1) % (n + 1)])
            self._proc(f"floor{n}-node{i}", ["node", str(i), str(n), str(ports[i]), str(service), str(nxt)])
        self.floor_entry[n] = ports[0]

    def _orchestrator(self, n: int) -> None:
        port = free_port()
        via = [str(self._link(self.services[f"s{i}"])) for i in range(1, n + 1)]
        self._proc(f"orchestrator{n}", ["orchestrator", str(port), *via])
        self.orchestrator_entry[n] = self._link(port)

    def _sidecars(self, mode: str) -> None:
        listen = {role: free_port() for role in ROLES}
        self.sidecars[mode] = {}
        for role in ROLES:
            api = free_port()
            command = [
                sys.executable, "-m", "accompanist", "sidecar", "--app", "chainapp:app", "--role", role,
                "--listen", f"127.0.0.1:{listen[role]}", "--api", f"127.0.0.1:{api}", "--log-level", "WARNING",
                "--mode", mode,
            ]  # fmt: skip
            if mode == "fault-tolerant":
                command += ["--store", f"sqlite:///{self.workdir / f'ft-{role}.db'}"]
            for other in ROLES:
                if other != role:
                    command += ["--peer", f"{other}=127.0.0.1:{self._link(listen[other])}"]
            env = {**ENV, "CHAIN_SERVICE_PORT": str(self.services.get(role, 0))}
            log = self.workdir / f"{mode}-{role}.log"
            proc = Proc(f"{mode}-{role}", command, env, log, f"http://127.0.0.1:{api}", cwd=self.workdir)
            self.procs.append(proc)
            self.sidecars[mode][role] = proc

    async def start(self, http: aiohttp.ClientSession) -> None:
        proxy = Proc(
            "proxy",
            [sys.executable, PARTS, "proxy", str(self.control), *(f"{p}={t}" for p, t in self.links.items())],
            ENV,
            self.workdir / "proxy.log",
            "",
            cwd=self.workdir,
        )
        self.procs.insert(0, proxy)
        for proc in self.procs:
            proc.start()
        for by_role in self.sidecars.values():
            for proc in by_role.values():
                await wait_healthy(http, proc, 60)
        await self.set_delay(0)

    async def set_delay(self, ms: float) -> None:
        for _ in range(200):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.control)
                break
            except OSError:
                await asyncio.sleep(0.05)
        writer.write(f"{ms}\n".encode())
        await writer.drain()
        await reader.readline()
        writer.close()

    async def stop(self) -> None:
        await asyncio.gather(*(p.terminate(10) for p in self.procs))

    def cpu(self, mode: str) -> dict[str, float]:
        """CPU seconds (user + system) each sidecar of ``mode`` has used so far."""
        ticks = os.sysconf("SC_CLK_TCK")
        used = {}
        for role, proc in self.sidecars[mode].items():
            assert proc.proc is not None
            fields = Path(f"/proc/{proc.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            used[role] = (int(fields[11]) + int(fields[12])) / ticks
        return used

    async def commits(self, http: aiohttp.ClientSession) -> float:
        total = 0.0
        for proc in self.sidecars["fault-tolerant"].values():
            async with http.get(f"{proc.health}/metrics") as r:
                match = _COMMITS.search(await r.read())
            total += float(match.group(1)) if match else 0.0
        return total


class RawClient:
    """The floor's and the orchestrator's client: one msgpack connection per worker."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.ids = itertools.count()

    async def call(self, value: int) -> int:
        if self.conns:
            conn = self.conns.pop()
        else:
            for _ in range(200):
                try:
                    conn = await asyncio.open_connection("127.0.0.1", self.port)
                    break
                except OSError:
                    await asyncio.sleep(0.05)
        write_frame(conn[1], [0, next(self.ids), value])
        answer = int(await read_frame(conn[0]))
        self.conns.append(conn)
        return answer


async def _session(http: aiohttp.ClientSession, api: str, n: int, value: int) -> int:
    body = {"choreography": f"chain{n}", "args": [value]}
    async with http.post(f"{api}/sessions?wait=true&timeout=60", json=body) as r:
        answer = await r.json()
    if answer.get("status") != "completed":
        raise RuntimeError(f"chain{n} session did not complete: {answer}")
    return int(answer["result"])


async def _measure(call: Any, n: int, count: int, concurrency: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    values = iter(range(count))

    async def worker() -> None:
        for value in values:
            t0 = time.perf_counter()
            got = await call(value)
            latencies.append(time.perf_counter() - t0)
            if got != value + n:
                raise RuntimeError(f"chain{n}: {value} came back as {got}, expected {value + n}")

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - began


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    setup = Setup(workdir, sorted(set(args.n) | {2}))
    results: dict[str, Any] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        await setup.start(http)
        try:
            apis = {mode: setup.sidecars[mode]["start"].health for mode in ("default", "fault-tolerant")}

            def caller(variant: str, n: int) -> Any:
                if variant == "floor":
                    return RawClient(setup.floor_entry[n]).call
                if variant == "orchestrator":
                    return RawClient(setup.orchestrator_entry[n]).call
                return lambda value: _session(http, apis[variant], n, value)

            grid = [(n, d) for n in args.n for d in args.delay]
            for k, (n, d) in enumerate(grid):
                await setup.set_delay(d)
                samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
                commits: list[float] = []
                for round_ in range(args.rounds):
                    order = VARIANTS if round_ % 2 == 0 else tuple(reversed(VARIANTS))
                    for variant in order:
                        _progress(f"N={n} d={d} ms ({k + 1}/{len(grid)}) round {round_ + 1}: {variant}")
                        call = caller(variant, n)
                        await _measure(call, n, args.warmup, 1)
                        before = await setup.commits(http)
                        lat, _ = await _measure(call, n, args.samples, 1)
                        if variant == "fault-tolerant":
                            commits.append((await setup.commits(http) - before) / len(lat))
                        samples[variant] += lat
                for variant, lat in samples.items():
                    results[f"N{n}/d{d}/{variant}"] = {
                        "n": n,
                        "delay_ms": d,
                        "variant": variant,
                        "samples": len(lat),
                        "p50_ms": statistics.median(lat) * 1000,
                        "p99_ms": _pct(lat, 0.99) * 1000,
                        **({"commits_per_session": statistics.mean(commits)} if variant == "fault-tolerant" else {}),
                    }
            throughput: dict[str, Any] = {}
            await setup.set_delay(0)
            for variant in ("floor", "default", "fault-tolerant"):
                _progress(f"throughput: chain2 (3 roles), 64 in flight: {variant}")
                call = caller(variant, 2)
                await _measure(call, 2, 200, 64)
                before = await setup.commits(http)
                cpu = setup.cpu(variant) if variant != "floor" else {}
                lat, wall = await _measure(call, 2, args.throughput, 64)
                cpu_after = setup.cpu(variant) if variant != "floor" else {}
                throughput[variant] = {
                    "sessions_per_s": len(lat) / wall,
                    "p50_ms": statistics.median(lat) * 1000,
                    "cpu_ms_per_session": {
                        role: (cpu_after[role] - cpu[role]) * 1000 / len(lat) for role in ("start", "s1", "s2")
                    }
                    if cpu
                    else {},
                    **(
                        {"commits_per_session": (await setup.commits(http) - before) / len(lat)}
                        if variant == "fault-tolerant"
                        else {}
                    ),
                }
        finally:
            print(file=sys.stderr)
            await setup.stop()
    ratios: dict[str, float] = {}
    for n in args.n:
        for d in args.delay:
            row = {v: results[f"N{n}/d{d}/{v}"]["p50_ms"] for v in VARIANTS}
            ratios[f"N={n} d={d}: default / floor"] = row["default"] / row["floor"]
            ratios[f"N={n} d={d}: fault-tolerant / floor"] = row["fault-tolerant"] / row["floor"]
            ratios[f"N={n} d={d}: orchestrator / default"] = row["orchestrator"] / row["default"]
            ratios[f"N={n} d={d}: orchestrator / fault-tolerant"] = row["orchestrator"] / row["fault-tolerant"]
    return {"results": results, "throughput": throughput, "ratios": ratios}


def _plot(data: dict[str, Any], ns: list[int], delays: list[float], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, len(ns), figsize=(max(7.5, 4.5 * len(ns)), 4.2), squeeze=False)
    for ax, n in zip(axes[0], ns, strict=True):
        for variant in VARIANTS:
            ys = [data["results"][f"N{n}/d{d}/{variant}"]["p50_ms"] for d in delays]
            ax.plot(delays, ys, marker="o", label=variant)
        ax.set_title(f"N = {n} services: p50 per token, ms")
        ax.set_xlabel("one-way delay per link, ms")
        ax.legend()
    fig.suptitle("chain: choreography vs raw-socket floor and orchestrator")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and write its results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1, 3, 5], help="services in the chain (1-5)")
    parser.add_argument("--delay", type=float, nargs="+", default=[0, 1, 3, 9], help="one-way ms per link")
    parser.add_argument("--samples", type=int, default=200, help="tokens per variant, point and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--throughput", type=int, default=3000, help="sessions in the 64-in-flight run")
    parser.add_argument("--quick", action="store_true", help="N=5, d=0 and 9, fewer samples (under 2 minutes)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.delay, args.samples, args.rounds, args.warmup, args.throughput = [5], [0, 9], 60, 2, 10, 1500
    with tempfile.TemporaryDirectory(prefix="chain-bench-") as tmp:
        data = asyncio.run(_run(args, Path(tmp)))
    data["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    data["settings"] = {k: v for k, v in vars(args).items()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "chain.json").write_text(json.dumps(data, indent=2) + "\n")
    _plot(data, args.n, args.delay, RESULTS / "chain.png")
    for name, row in data["results"].items():
        extra = f"  {row['commits_per_session']:.2f} commits/session" if "commits_per_session" in row else ""
        print(f"{name:<28} p50 {row['p50_ms']:8.2f} ms  p99 {row['p99_ms']:8.2f} ms{extra}")
    for variant, row in data["throughput"].items():
        cpu = ", ".join(f"{role} {ms:.2f}" for role, ms in row["cpu_ms_per_session"].items())
        print(
            f"3-role chain, 64 in flight, {variant:<15} {row['sessions_per_s']:8.1f} sessions/s  CPU ms/session: {cpu}"
        )
    for name, ratio in data["ratios"].items():
        print(f"{name:<44} {ratio:5.2f}x")


if __name__ == "__main__":
    main()
