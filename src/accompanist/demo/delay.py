"""A delay proxy: what a network between hosts adds, on loopback, for ``accompanist demo --delay``.

``python -m accompanist.demo.delay MS LISTEN=TARGET ...`` listens on each ``LISTEN`` and
forwards every connection to its ``TARGET``, holding each chunk ``MS`` milliseconds in each
direction. Each is ``[HOST:]PORT``, on 127.0.0.1 when no host is given; a proxy between hosts
(or network namespaces, ``tests/faults/test_hosts_apart.py``) names them. This kernel has no
``tc netem``; this is what Toxiproxy does. Chunks keep their order and are not slowed down
otherwise: only latency is added, not a bandwidth limit.

In the demo every service and its sidecar are one host; the links between hosts go through
the proxy: sidecar to sidecar for the choreography, and the orchestrated checkout (a host of
its own, as in the Online Boutique) to every service and from the frontend.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable

__all__ = ["main", "serve"]

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            if queue.empty():
                await writer.drain()

    task = asyncio.create_task(deliver())
    try:
        while data := await reader.read(65536):
            queue.put_nowait((time.monotonic() + delay, data))
    except ConnectionError:
        pass
    finally:
        while not queue.empty():  # noqa: ASYNC110 - the delayed tail still goes out
            await asyncio.sleep(0.001)
        task.cancel()
        writer.close()


Address = tuple[str, int]


def _link(target: Address, delay: float) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _nodelay(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            return
        _nodelay(up_writer)
        await asyncio.gather(_pipe(reader, up_writer, delay), _pipe(up_reader, writer, delay), return_exceptions=True)

    return handle


async def serve(delay_ms: float, links: list[tuple[Address, Address]]) -> None:
    """Forward each ``(listen, target)`` address pair with ``delay_ms`` each way until SIGTERM."""
    servers = [await asyncio.start_server(_link(t, delay_ms / 1000), *listen) for listen, t in links]
    print(f"delay proxy ready: {len(links)} links, {delay_ms:g} ms each way", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"bad address {text!r}")
    return (host.strip("[]") or "127.0.0.1", int(port))


def main(argv: list[str] | None = None) -> int:
    """``MS [HOST:]PORT=[HOST:]PORT ...``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2:
        print("usage: python -m accompanist.demo.delay MS [HOST:]PORT=[HOST:]PORT ...", file=sys.stderr)
        return 2
    try:
        links = [(_address(a), _address(b)) for a, _, b in (x.partition("=") for x in args[1:])]
    except ValueError as exc:
        print(f"error: {exc}; expected [HOST:]PORT=[HOST:]PORT", file=sys.stderr)
        return 2
    asyncio.run(serve(float(args[0]), links))
    return 0


if __name__ == "__main__":
    sys.exit(main())
