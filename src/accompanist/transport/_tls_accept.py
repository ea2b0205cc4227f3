"""Accepting TLS connections one by one, so a failed handshake is seen (and counted).

Why not ``asyncio.start_server(ssl=...)``: the event loop runs the handshake itself and drops a
connection whose handshake fails without telling anyone (it logs only in debug mode), so a peer
presenting a certificate of another CA, or none, would go uncounted. Here an accept loop takes
each connection and hands it to ``loop.connect_accepted_socket(ssl=...)``, which raises when
the handshake fails: the failure can be classified and counted. On success it yields the same
``StreamReader``/``StreamWriter`` pair ``start_server`` would have, so the read loop and every
frame after the handshake are unchanged. (Upgrading an accepted plain connection with
``start_tls`` would race with uvloop, which starts reading before the upgrade can pause it.)
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable

__all__ = ["TlsListener"]

ConnectedCallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
FailureCallback = Callable[[BaseException, str], None]

# accept() errors that mean "out of descriptors or memory for now": wait, then accept again
# (asyncio's own server does the same), instead of spinning or giving up listening.
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_RESOURCE_PAUSE = 0.2

log = logging.getLogger("accompanist.transport")


class TlsListener:
    """A TCP listener whose connections each complete a TLS handshake before being served.

    Args:
        connected: called with the stream pair of each connection whose handshake succeeded.
        failed: called with the exception and the peer's ``host:port`` of each one that failed.
        context: the server's TLS context.
        handshake_timeout: seconds a handshake may take.
        limit: the ``StreamReader`` buffer limit.
        max_connections: connections (in their handshake or served) open at once; one more is
            closed at once and reported to ``over_limit`` with its peer's ``host:port``.
    """

    def __init__(
        self,
        connected: ConnectedCallback,
        failed: FailureCallback,
        context: ssl.SSLContext,
        *,
        handshake_timeout: float,
        limit: int,
        max_connections: int,
        over_limit: Callable[[str], None],
    ) -> None:
        self._connected = connected
        self._failed = failed
        self._context = context
        self._timeout = handshake_timeout
        self._limit = limit
        self._max_connections = max_connections
        self._over_limit = over_limit
        self._sockets: list[socket.socket] = []
        self._acceptors: list[asyncio.Task[None]] = []
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int, *, backlog: int) -> tuple[str, int]:
        """Listen on every address ``host`` resolves to (as ``start_server`` does); return the
        first address bound (the real port for port 0).

        Raises:
            OSError: an address cannot be bound.
        """
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):
                if self._sockets and port == 0:  # the other addresses take the port the first got
                    address = (address[0], self._sockets[0].getsockname()[1], *address[2:])
                sock = socket.socket(family, kind, proto)
                self._sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(backlog)
                sock.setblocking(False)
        except OSError:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()
            raise
        self._acceptors = [
            loop.create_task(self._accept_loop(sock), name="accompanist-tls-accept") for sock in self._sockets
        ]
        name = self._sockets[0].getsockname()
        return str(name[0]), int(name[1])

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, address = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRORS:
                    log.warning("cannot accept a TLS peer connection now (%s); retrying shortly", exc)
                    await asyncio.sleep(_RESOURCE_PAUSE)
                    continue
                if sock.fileno() == -1:
                    return  # closed
                raise
            if len(self._connections) >= self._max_connections:
                # Handshakes hold a descriptor each until their deadline: cap them with the rest.
                conn.close()
                self._over_limit(_format(address))
                continue
            task = loop.create_task(self._handshake(conn, _format(address)))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    async def _handshake(self, conn: socket.socket, peer: str) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=self._limit, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, conn, ssl=self._context, ssl_handshake_timeout=self._timeout
            )
        except asyncio.CancelledError:
            conn.close()
            return  # the listener is closing
        except (OSError, TimeoutError, EOFError) as exc:  # ssl.SSLError is an OSError
            conn.close()
            self._failed(exc, peer)
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        await self._connected(reader, writer)

    async def close(self) -> None:
        """Stop listening and abandon the handshakes in progress (served connections are the
        caller's to close)."""
        acceptors, self._acceptors = self._acceptors, []
        for acceptor in acceptors:
            acceptor.cancel()
        await asyncio.gather(*acceptors, return_exceptions=True)
        sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _format(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)
