"""Hosts apart (issue 15): each sidecar in a network namespace of its own, regions apart.

Three hosts ``a``, ``b`` and ``c``, each a Linux network namespace with its own address on a
bridge (``tests/support/netns.py``), and a fourth, ``wan``, holding the delay proxy
(``accompanist.demo.delay``): ``a`` is one region, ``b`` and ``c`` another, so every envelope
between ``a`` and the others crosses the proxy and waits ``DELAY_MS`` each way, while ``b``
and ``c`` talk directly. The sidecars are the real ``accompanist sidecar`` in fault-tolerant
mode, each reached only by its address (nothing is on a shared loopback), authenticated by
an HMAC key; each role's service is the fault app's effect store, called from inside its
sidecar's namespace. ``b`` is given ``--listen :7000`` without a host: with peers on other
hosts it must listen on every interface, not on a loopback nobody else can reach.

The saga load runs while ``c``'s sidecar is SIGKILLed and started again, and ends like every
campaign: every session has the same outcome at every role, each effect once.
Skipped, saying why, where namespaces cannot be made (not root, no ``ip``).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from examples.warehouse.cluster import Proc, wait_healthy

from tests.faults.outages import Load, saga_problems, settled
from tests.support.netns import Network, unavailable

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("a", "b", "c")
REGION = {"a": "west", "b": "east", "c": "east"}
DELAY_MS = 5
PEER_PORT, API_PORT = 7000, 8000
PROXY_PORT = {role: 7100 + i for i, role in enumerate(ROLES)}  # on wan: the way into each role's region


class Hosts:
    """The sidecars on their hosts, shaped like ``ProcessCluster`` for the load helpers."""

    def __init__(self, net: Network, workdir: Path, key: str) -> None:
        self.net = net
        self.http: aiohttp.ClientSession | None = None
        env = {
            **os.environ,
            "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "ACCOMPANIST_HMAC_KEY": key,
            "FAULT_EFFECTS_DIR": str(workdir),
        }
        wan = net.address("wan")
        links = [f"{wan}:{PROXY_PORT[r]}={net.address(r)}:{PEER_PORT}" for r in ROLES]
        self.proxy = Proc(
            "proxy",
            [*net.run_in("wan"), sys.executable, "-m", "accompanist.demo.delay", str(DELAY_MS), *links],
            env,
            workdir / "proxy.log",
            "",
            cwd=workdir,
        )
        self.sidecars: dict[str, Proc] = {}
        for role in ROLES:
            me = net.address(role)
            listen = f":{PEER_PORT}" if role == "b" else f"{me}:{PEER_PORT}"  # b: the host decided from its peers
            command = [*net.run_in(role), sys.executable, "-m", "accompanist", "sidecar"]
            command += ["--app", "tests.faults.faultapp:app", "--role", role, "--listen", listen]
            command += ["--api", f"{me}:{API_PORT}", "--log-level", "WARNING", "--mode", "fault-tolerant"]
            command += ["--store", f"sqlite:///./{role}.db", "--receive-timeout", "2"]
            for other in ROLES:
                if other != role:
                    across = REGION[other] != REGION[role]
                    where = f"{wan}:{PROXY_PORT[other]}" if across else f"{net.address(other)}:{PEER_PORT}"
                    command += ["--peer", f"{other}={where}"]
            self.sidecars[role] = Proc(role, command, env, workdir / f"{role}.log", f"http://{me}:{API_PORT}", workdir)

    class _Api:
        def __init__(self, api: str) -> None:
            self.api = api

    def __getitem__(self, role: str) -> Any:
        return self._Api(self.sidecars[role].health)

    async def start(self) -> None:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        self.proxy.start()
        for sidecar in self.sidecars.values():
            sidecar.start()
        for sidecar in self.sidecars.values():
            await wait_healthy(self.http, sidecar, timeout=60)

    async def restart(self, role: str) -> None:
        assert self.http is not None
        self.sidecars[role].kill()
        self.sidecars[role].start()
        await wait_healthy(self.http, self.sidecars[role], timeout=60)

    async def stop(self) -> None:
        for proc in [*self.sidecars.values(), self.proxy]:
            await proc.terminate()
        if self.http is not None:
            await self.http.close()


@pytest.mark.slow
async def test_a_saga_and_a_crash_across_hosts_and_regions(tmp_path: Path) -> None:
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    net = Network([*ROLES, "wan"])
    rng = random.Random(15)
    work = [rng.randrange(1, 10_000) for _ in range(90)]
    with net:
        hosts = Hosts(net, tmp_path, secrets.token_hex(16))
        try:
            await hosts.start()
            # One session at a time first: a and the others are a region apart, so a saga
            # (a -> b across, c -> a across at least) cannot end sooner than two crossings.
            assert hosts.http is not None
            took = []
            for n in (1, 2, 3):
                began = time.monotonic()
                body = {"choreography": "saga", "args": [n], "session_id": f"probe-{n}"}
                async with hosts.http.post(f"{hosts['a'].api}/sessions?wait=true", json=body) as r:
                    answer = await r.json()
                took.append(time.monotonic() - began)
                assert r.status == 200 and answer["status"] == "completed", answer
            assert min(took) >= 2 * DELAY_MS / 1000, f"the delay proxy is not on the path: {took}"
            load = Load(hosts, work, concurrency=8)  # type: ignore[arg-type]
            running = asyncio.ensure_future(load.run())
            while len(load.started) < 30 and not running.done():  # noqa: ASYNC110 - polls the load's progress
                await asyncio.sleep(0.02)
            hosts.sidecars["c"].kill()  # SIGKILL, in its namespace
            await asyncio.sleep(0.5)
            await hosts.restart("c")
            load.deadline = time.monotonic() + 120
            await running
            started = {**load.started, **{f"probe-{n}": n for n in (1, 2, 3)}}
            seen = await settled(hosts, ROLES, started, timeout=120)  # type: ignore[arg-type]
        finally:
            await hosts.stop()
        b_log = hosts.sidecars["b"].log_tail(100_000)
    assert net.leftovers() == [], "the namespaces or links were not removed"

    assert load.problems == [], load.problems[:20]
    assert len(load.ended) == len(work)
    # Each effect once by its idempotency key (the ledger holds one row per key). The killed
    # role may have been *called* twice for one key: a commit whose result was not durable
    # yet when c died runs again on replay, with the same key (README, "What each write
    # costs"); the service's idempotency absorbs it. Anywhere else a repeat is a bug.
    repeated_at_c = re.compile(r"^c ran (commit|undo) \w+ of \S+ \d+ times$")
    problems = [p for p in saga_problems(seen, started, tmp_path) if not repeated_at_c.match(p)]
    assert problems == [], "\n".join(problems[:30])
    assert {seen["a"][sid]["status"] for sid in load.started} == {"completed", "compensated"}
    assert hosts.sidecars["c"].starts == 2
    assert f"peer=0.0.0.0:{PEER_PORT}" in b_log, "b, with peers on other hosts, must listen beyond loopback"
    print(f"\none session one at a time across regions ({DELAY_MS} ms each way): {[round(t * 1000) for t in took]} ms")


def test_the_network_is_removed_even_when_the_test_fails() -> None:
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    net = Network(["x", "y"])
    with pytest.raises(RuntimeError, match="a failing test"), net:
        assert len(net.leftovers()) >= 5  # the bridge, two veth ends outside, two namespaces
        raise RuntimeError("a failing test")
    assert net.leftovers() == []


@pytest.mark.slow
async def test_the_saga_campaign_runs_unchanged_across_hosts(tmp_path: Path) -> None:
    """The warehouse saga campaign, with each role's service and sidecar on a host of its own.

    The same campaign as ``test_saga_campaign.py`` (SIGKILLs of sidecars and services at
    random, every saga invariant checked against the services' databases), only shorter; the
    warehouse is one region, payment and loyalty another, a delay proxy between them.
    """
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    from examples.warehouse.cluster import HOST_PORTS, Host
    from examples.warehouse.cluster import ROLES as SHOP

    from tests.faults.saga_campaign import run_saga_campaign

    region = {"warehouse": "west", "payment": "east", "loyalty": "east"}
    proxy_port = {role: 7100 + i for i, role in enumerate(SHOP)}
    with Network([*SHOP, "wan"]) as net:
        wan = net.address("wan")
        hosts = {role: Host(tuple(net.run_in(role)), net.address(role)) for role in SHOP}

        def route(src: str, dst: str) -> str:
            if region[src] != region[dst]:
                return f"{wan}:{proxy_port[dst]}"
            return f"{net.address(dst)}:{HOST_PORTS['peer']}"

        links = [f"{wan}:{proxy_port[r]}={net.address(r)}:{HOST_PORTS['peer']}" for r in SHOP]
        proxy = Proc(
            "proxy",
            [*net.run_in("wan"), sys.executable, "-m", "accompanist.demo.delay", str(DELAY_MS), *links],
            os.environ,
            tmp_path / "proxy.log",
            "",
            cwd=tmp_path,
        )
        proxy.start()
        try:
            report = await run_saga_campaign(
                tmp_path, orders=150, fail_ratio=0.2, kills=8, concurrency=16, seed=15, hosts=hosts, peer_route=route
            )
        finally:
            await proxy.terminate()
    assert net.leftovers() == []
    print(report.summary())
    assert report.problems == [], "\n".join(report.problems[:40])
    assert sum(report.kills.values()) >= 4
    assert report.sessions >= 150 and report.duplicates == 0
    assert report.completed + report.compensated == report.sessions
    assert report.compensated >= report.on_purpose
