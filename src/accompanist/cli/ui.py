"""``accompanist ui``: the live web view over running sidecars (or stores), on a port of its own.

Why a separate server: it reads every sidecar of a cluster, which no single sidecar knows, and
it keeps the sidecars' API token on the server side: the browser never needs it. It listens on
loopback by default; anyone who can reach it sees what the sidecars' APIs show.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Annotated

import typer

from accompanist.cli.targets import ClusterOpt, SidecarOpt, StoreOpt, TokenOpt, open_sources
from accompanist.errors import AccompanistError
from accompanist.inspection.sources import Source

__all__ = ["ui"]

log = logging.getLogger("accompanist.ui")


async def _serve(host: str, port: int, sources: list[Source]) -> None:
    from aiohttp import web

    from accompanist.sidecar.api_serve import is_loopback
    from accompanist.ui.server import ui_application

    app = ui_application(sources)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise AccompanistError(f"the web view cannot listen on {host}:{port}: {exc}") from None
    bound = next((a for a in runner.addresses if isinstance(a, tuple)), (host, port))
    if not is_loopback(host):
        log.warning("the web view listens on %s: anyone who can reach it sees every session the sidecars show", host)
    print(f"accompanist ui ready on http://{bound[0]}:{bound[1]}/ui/", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def ui(
    sidecar: SidecarOpt = None,
    store: StoreOpt = None,
    cluster: ClusterOpt = None,
    api_token: TokenOpt = None,
    listen: Annotated[str, typer.Option(help="HOST:PORT to serve the web view on (port 0: any free one).")] = (
        "127.0.0.1:8090"
    ),
) -> None:
    """Serve the live web view: the sessions table and each session's sequence diagram."""
    from accompanist.sidecar.config import parse_address

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        host, port = parse_address(listen, "listen address")
        sources = open_sources(sidecar, store, cluster, api_token)
        asyncio.run(_serve(host, port, sources))
    except AccompanistError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
