"""``explore`` on the warehouse saga with its real HTTP services (in this process, each on a
free loopback port with its own SQLite database): every crash and every failing step keeps
the invariants, and the services' books show no compensation without its commit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from examples.warehouse import saga
from examples.warehouse.saga import Order
from examples.warehouse.services import SEED, SERVICES, Ledger, build_app

from accompanist.testing import explore


@pytest.fixture
async def services(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[dict[str, str]]:
    runners, urls = [], {}
    for name in SERVICES:
        books = Ledger(tmp_path / f"{name}.db", name)
        books.seed(SEED[name])
        runner = web.AppRunner(build_app(name, books))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        urls[name] = f"http://127.0.0.1:{port}"
        monkeypatch.setenv(f"{name.upper()}_SERVICE_URL", urls[name])
        runners.append(runner)
    yield urls
    for runner in runners:
        await runner.cleanup()


async def test_the_warehouse_saga_keeps_every_invariant(services: dict[str, str]) -> None:
    order = Order("o-1", "widget", 2, "alice", 30, 3)
    report = await explore(saga.order, order, app=saga.app, virtual_time=False)
    assert report.ok, str(report)
    kinds = {r.schedule.crash.at if r.schedule.crash else "fail" for r in report.runs[1:]}
    assert kinds == {"step", "commit", "compensate", "fail"}
    assert report.runs[0].result == "shipped o-1"
    async with aiohttp.ClientSession() as http:
        for name, url in services.items():
            async with http.get(f"{url}/state") as answer:
                state = await answer.json()
            assert state["orphans"] == [], (name, state["orphans"])  # no undo without its commit
