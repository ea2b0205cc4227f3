"""The live web view in a real headless browser (Debian's chromium driven by Playwright), over
a cluster of real sidecar processes: the sessions table lists them with live counts, a session
page draws the right messages and updates while the session runs (showing where a role waits),
and both pages are kept as screenshots for the README."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from examples.warehouse.cluster import Proc, free_port

from tests.integration.procs import ROOT, ProcessCluster

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip
IMAGES = ROOT / "docs" / "images"
FT = ["--mode", "fault-tolerant", "--receive-timeout", "20", "--store", "sqlite:///./{role}.db"]

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no /usr/bin/chromium (apt-get install -y chromium)"),
    pytest.mark.skipif(shutil.which("true") is None, reason="no POSIX tools"),
]
playwright_api = pytest.importorskip("playwright.async_api", reason="playwright is not installed (the test extra)")


@asynccontextmanager
async def web_view(tmp_path: Path, urls: list[str]) -> AsyncIterator[str]:
    """``accompanist ui`` over the sidecars at ``urls``, as a process; yields its page's URL."""
    port = free_port()
    command = [sys.executable, "-m", "accompanist", "ui", "--listen", f"127.0.0.1:{port}"]
    for url in urls:
        command += ["--sidecar", url]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = Proc("ui", command, env, tmp_path / "ui.log", f"http://127.0.0.1:{port}", cwd=tmp_path)
    proc.start()
    page = f"http://127.0.0.1:{port}/ui/"
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 30
            while True:
                assert proc.alive, proc.log_tail()
                try:
                    async with http.get(page) as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, "the web view did not start"
                await asyncio.sleep(0.1)
        yield page
    finally:
        await proc.terminate()


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "accompanist", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60, env=env)


async def _ended(cluster: ProcessCluster, sid: str, status: str) -> None:
    for role in "abc":
        for _ in range(200):
            seen = await cluster.session(role, sid)
            if seen is not None and seen["status"] == status:
                break
            await asyncio.sleep(0.05)


async def _texts(page: Any, selector: str) -> list[str]:
    return [t.strip() for t in await page.locator(selector).all_text_contents()]


async def test_the_web_view_in_a_real_browser(tmp_path: Path) -> None:
    cluster = ProcessCluster(
        ["a", "b", "c"], "tests.faults.faultapp:app", tmp_path, FT, FAULT_EFFECTS_DIR=str(tmp_path)
    )
    cluster["a"].command += ["--ui", "--ui-sidecar", cluster["b"].api, "--ui-sidecar", cluster["c"].api]
    async with cluster:
        ids = {}
        for n in (1, 5, 2):  # completed, compensated (c refuses multiples of 5), completed
            body = await cluster.start_session("a", "saga", n)
            ids[n] = body["session_id"]
        await _ended(cluster, ids[5], "compensated")
        await _ended(cluster, ids[2], "completed")
        # 'late': c commits and finishes, b waits at a gate (a file this test creates), a waits for b.
        slow = (await cluster.start_session("a", "late", 3, wait=False))["session_id"]
        async with web_view(tmp_path, [cluster[r].api for r in "abc"]) as url, playwright_api.async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = await browser.new_page(viewport={"width": 1280, "height": 720})
            await page.goto(url)
            # The table: every session, a status per role, live counts.
            for sid in [*ids.values(), slow]:
                await page.locator(f'tr[data-session="{sid}"]').wait_for(timeout=30_000)
            await page.locator('[data-count="in progress"]').wait_for(timeout=30_000)
            counts = await page.locator("#counts").inner_text()
            assert "2 completed" in counts and "1 compensated" in counts and "1 in progress" in counts, counts
            row = await _texts(page, f'tr[data-session="{ids[5]}"] td')
            assert row[1] == "saga v1" and row[2:5] == ["compensated"] * 3 and row[5] == "yes", row
            IMAGES.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(IMAGES / "ui-sessions.png"))
            # The running session: the page shows a waiting for b, then updates by itself to the end.
            await page.locator(f'tr[data-session="{slow}"] a').click()
            await page.wait_for_function(
                "document.querySelector('#s-roles tr[data-role=\"a\"] td.waiting')?.textContent.includes(\"from 'b'\")",
                timeout=30_000,
            )
            waits = {r: await page.locator(f'#s-roles tr[data-role="{r}"] td.waiting').inner_text() for r in "abc"}
            assert waits == {
                "a": "waiting for #1 from 'b'",
                "b": "running local gate",
                "c": "waiting for the outcome from 'a'",
            }, waits
            assert await page.locator("#diagram svg g.waiting").count() == 3  # marked on the diagram too
            assert await _texts(page, "#diagram svg g.arrow text") == ["3", "3"]  # a->c, a->b so far
            (tmp_path / "gate").touch()
            await page.wait_for_function(
                "document.querySelector('#s-title .badge')?.textContent === 'completed'", timeout=60_000
            )
            assert await _texts(page, "#diagram svg g.arrow text") == ["3", "3", "3"]  # and b->a
            assert await page.locator("#diagram svg g.waiting").count() == 0
            notes = await _texts(page, "#diagram svg g.note text")
            assert sorted(notes) == ["gate = 3", "⛁ hold = 3 (committed)", "⛁ risky = 3 (committed)"], notes
            assert notes.index("gate = 3") < notes.index("⛁ risky = 3 (committed)")  # b's own order
            # The compensated saga: the failure, the compensation, the right messages; a screenshot.
            await page.goto(f"{url}#/session/{ids[5]}")
            await page.locator("#diagram svg g.compensation").wait_for(timeout=30_000)
            notes = await _texts(page, "#diagram svg g.note text")
            assert "✗ charge: Abort: charge refuses 5" in notes and "↩ compensate reserve" in notes, notes
            assert await _texts(page, "#diagram svg g.arrow text") == ["5", "5"]
            assert (
                "failure: Abort at role c (transaction charge): charge refuses 5"
                in await page.locator("#s-failure").inner_text()
            )
            await page.screenshot(path=str(IMAGES / "ui-session.png"), full_page=True)
            # `accompanist diagram --format html`: one page that opens from a file, offline.
            urls = [arg for role in "abc" for arg in ("--sidecar", cluster[role].api)]
            drawn = await asyncio.to_thread(_cli, tmp_path, "diagram", ids[5], *urls, "-f", "html", "-o", "s.html")
            assert drawn.returncode == 0, drawn.stderr
            offline = await browser.new_page(viewport={"width": 1100, "height": 700}, offline=True)
            await offline.goto((tmp_path / "s.html").as_uri())
            assert await _texts(offline, "svg g.arrow text") == ["5", "5"]
            assert "compensated" in await offline.locator("h1 .badge").inner_text()
            assert await offline.locator("table.steps tbody tr").count() == 8
            await offline.screenshot(path=str(IMAGES / "diagram-html.png"), full_page=True)
            # The same web view served by sidecar a under /ui, reading b and c over their APIs.
            await page.goto(f"{cluster['a'].api}/ui/")
            await page.locator(f'tr[data-session="{ids[5]}"]').wait_for(timeout=30_000)
            head = await _texts(page, "#sessions-head th")
            assert head[2:5] == ["a", "b", "c"], head
            await browser.close()
