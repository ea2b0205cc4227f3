"""The processes of the chain benchmark, each run as ``python chainparts.py KIND ...``.

- ``service PORT``: the local service beside a node: one RPC, ``value -> value + 1``, over a
  length-prefixed msgpack connection (what a service's own API costs, kept tiny so the runtime
  around it shows);
- ``node INDEX N LISTEN SERVICE NEXT``: one node of the raw-socket floor: asyncio streams and
  msgpack, no durability, no retries, nothing but the hop (the least any runtime can do);
- ``orchestrator LISTEN SERVICE...``: one process that calls the services in turn and answers
  its client (the orchestrated baseline);
- ``proxy CONTROL LISTEN=TARGET...``: the delay proxy, one listening port per link, holding each
  chunk for the current one-way delay per direction (the kernel here has no netem; this is
  what Toxiproxy does for the Java harness); ``CONTROL`` takes ``DELAY_MS\\n`` lines.

The choreography's sidecars call the same ``service`` processes from :mod:`chainapp`.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import sys
import time
from typing import Any

import msgspec

__all__ = ["RpcClient", "read_frame", "write_frame"]

_HEADER = struct.Struct(">I")
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder()


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """One length-prefixed msgpack value."""
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    return _DECODER.decode(await reader.readexactly(size))


def write_frame(writer: asyncio.StreamWriter, value: Any) -> None:
    body = _ENCODER.encode(value)
    writer.write(_HEADER.pack(len(body)) + body)


class RpcClient:
    """Calls one service; a small pool of connections so concurrent calls do not queue."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def call(self, value: int) -> int:
        conn = self.idle.pop() if self.idle else await asyncio.open_connection(self.host, self.port)
        reader, writer = conn
        write_frame(writer, value)
        answer = int(await read_frame(reader))
        self.idle.append(conn)
        return answer


def _set_nodelay(writer: asyncio.StreamWriter) -> None:
    import socket

    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _serve(port: int, handle: Any) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


async def service(port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _set_nodelay(writer)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                write_frame(writer, int(await read_frame(reader)) + 1)

    await _serve(port, handle)


async def node(index: int, n: int, listen: int, service_port: int, next_port: int) -> None:
    """Node 0 takes ``[id, value]`` from its client and sends the token on; nodes 1..n call
    their service and pass it on; the hop back to node 0 answers the client."""
    rpc = RpcClient("127.0.0.1", service_port) if index else None
    waiting: dict[int, asyncio.StreamWriter] = {}
    out: asyncio.StreamWriter | None = None
    lock = asyncio.Lock()

    async def forward(message: list[int]) -> None:
        nonlocal out
        async with lock:
            if out is None:
                _, out = await asyncio.open_connection("127.0.0.1", next_port)
                _set_nodelay(out)
        write_frame(out, message)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _set_nodelay(writer)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                kind, rid, value = await read_frame(reader)
                if kind == 0:  # a client's request, at node 0
                    waiting[rid] = writer
                    await forward([1, rid, value])
                elif index == 0:  # the token is back
                    client = waiting.pop(rid)
                    write_frame(client, value)
                else:
                    assert rpc is not None
                    await forward([1, rid, await rpc.call(value)])

    await _serve(listen, handle)


async def orchestrator(listen: int, services: list[int]) -> None:
    """Takes ``[0, id, value]``, calls every service in turn, answers ``value``."""
    rpcs = [RpcClient("127.0.0.1", port) for port in services]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _set_nodelay(writer)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                _, _, value = await read_frame(reader)
                for rpc in rpcs:
                    value = await rpc.call(value)
                write_frame(writer, value)

    await _serve(listen, handle)


async def proxy(control: int, links: list[tuple[int, int]]) -> None:
    delay = [0.0]

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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
                if delay[0] <= 0 and queue.empty():
                    writer.write(data)
                else:
                    queue.put_nowait((time.monotonic() + delay[0], data))
        except ConnectionError:
            pass
        finally:
            while not queue.empty():  # noqa: ASYNC110 - let the delayed tail go out
                await asyncio.sleep(0.001)
            task.cancel()
            writer.close()

    def link(target: int) -> Any:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            _set_nodelay(writer)
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
            except OSError:
                writer.close()
                return
            _set_nodelay(up_writer)
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

        return handle

    async def set_delay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            delay[0] = float(line) / 1000
            writer.write(b"ok\n")
            await writer.drain()

    servers = [await asyncio.start_server(link(target), "127.0.0.1", port) for port, target in links]
    servers.append(await asyncio.start_server(set_delay, "127.0.0.1", control))
    await asyncio.gather(*(s.serve_forever() for s in servers))


def _main(argv: list[str]) -> None:
    kind, args = argv[0], argv[1:]
    try:
        import uvloop

        run: Any = uvloop.run
    except ImportError:
        run = asyncio.run
    if kind == "service":
        run(service(int(args[0])))
    elif kind == "node":
        run(node(*(int(a) for a in args)))  # type: ignore[call-arg]
    elif kind == "orchestrator":
        run(orchestrator(int(args[0]), [int(a) for a in args[1:]]))
    elif kind == "proxy":
        links = [(int(a.split("=")[0]), int(a.split("=")[1])) for a in args[1:]]
        run(proxy(int(args[0]), links))
    else:
        raise SystemExit(f"unknown part {kind!r}")


if __name__ == "__main__":
    _main(sys.argv[1:])
