"""A two-role app whose lifecycle hooks a test can watch and break, for real sidecar processes.

Each hook appends ``phase hook role`` to the file ``HOOKS_LOG`` names. ``HOOKS_FAIL=hook``
makes that startup hook raise. ``open_http`` opens an aiohttp session that the ``ping`` step
uses and ``close_http`` closes it; when the process exits, an exit handler records whether
the session was closed (``exit http-closed=True``), which is what aiohttp's "Unclosed client
session" warning is about.
"""

from __future__ import annotations

import atexit
import os

import aiohttp

import accompanist as ac

__all__ = ["app"]

Pinger, Ponger = ac.roles("pinger", "ponger")


def _record(line: str) -> None:
    path = os.environ.get("HOOKS_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


class _Http:
    """The role's HTTP session: opened and closed by hooks."""

    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None
        atexit.register(lambda: _record(f"exit http-closed={self.session is None or self.session.closed}"))

    async def open(self, role: str) -> None:
        _record(f"startup open_http {role}")
        if os.environ.get("HOOKS_FAIL") == "open_http":
            raise ConnectionRefusedError("the service is not there")
        self.session = aiohttp.ClientSession()

    async def check(self, role: str) -> None:
        _record(f"startup check {role}")
        if os.environ.get("HOOKS_FAIL") == "check":
            raise RuntimeError("the check failed")

    async def close(self, role: str) -> None:
        _record(f"shutdown close_http {role}")
        if self.session is not None:
            await self.session.close()


_http = _Http()


def ping(n: int) -> int:
    if _http.session is None or _http.session.closed:
        raise RuntimeError("the HTTP session is not open")
    return n + 1


@ac.choreography("ping", roles=(Pinger, Ponger))
async def ping_pong(ch: ac.Choreo, n: ac.Located[int]) -> ac.Located[int]:
    at_ponger = await ch.comm(Pinger, Ponger, n)
    answer = await ch.locally(Ponger, ping, at_ponger)
    return await ch.comm(Ponger, Pinger, answer)


app = ac.App(ping_pong)
app.on_startup(_http.open)
app.on_startup(_http.check)
app.on_shutdown(_http.close)
