"""Binding the service-facing API: a TCP ``host:port``, or a Unix socket guarded by file permissions.

Why a Unix socket: on a TCP port, any local process (of any user) can call the API unless a
token is set. A Unix socket is a file: only users the file's permissions let in can connect,
which is what a sidecar beside one service needs (Dapr offers the same). The socket is bound,
given its permission bits (``api_socket_mode``, 0600 by default: the sidecar's own user only)
and only then starts listening, so there is no moment in which another user could connect: a
socket that is bound but not listening refuses every connection.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from pathlib import Path

from aiohttp import web

from accompanist.errors import TransportError
from accompanist.sidecar.api import API_TOKEN_SET
from accompanist.sidecar.config_values import ApiAddress, is_loopback

__all__ = ["bind_unix_socket", "is_loopback", "serve"]  # is_loopback: re-exported from config_values

log = logging.getLogger("accompanist.api")


async def serve(
    app: web.Application, address: ApiAddress, *, socket_mode: int = 0o600
) -> tuple[web.AppRunner, ApiAddress]:
    """Start serving ``app`` on ``address``; return the runner (to clean up) and the bound address.

    Args:
        app: the API application (not yet set up).
        address: ``(host, port)`` (port 0 picks one), or the ``Path`` of a Unix socket.
        socket_mode: permission bits of the Unix socket file.

    Raises:
        TransportError: the address cannot be bound (taken, not this host's, a live socket of
            another process, a path that is not a socket).
    """
    sock: socket.socket | None = None
    if isinstance(address, Path):
        sock = bind_unix_socket(address, socket_mode)
        identity = os.stat(address)

        async def remove_socket(_: web.Application) -> None:
            with contextlib.suppress(OSError):  # only our own file: another sidecar may own the path now
                now = os.stat(address)
                if (now.st_dev, now.st_ino) == (identity.st_dev, identity.st_ino):
                    address.unlink()

        app.on_cleanup.append(remove_socket)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    if isinstance(address, Path):
        assert sock is not None
        try:
            await web.SockSite(runner, sock).start()  # listens only now, with the permissions set
        except OSError as exc:
            sock.close()
            await runner.cleanup()
            raise TransportError(f"the API cannot listen on unix:{address}: {exc}") from exc
        return runner, address
    host, port = address
    if not app.get(API_TOKEN_SET) and not is_loopback(host):
        log.warning(
            "the service-facing API listens on %s without a token: anyone who can reach it can start, list and "
            "cancel sessions; set api_token (--api-token, ACCOMPANIST_API_TOKEN) or use a Unix socket "
            "(--api unix:/path/api.sock)",
            host,
        )
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise TransportError(f"the API cannot listen on {host}:{port}: {exc}") from exc
    bound: ApiAddress = (host, port)
    for name in runner.addresses:  # the real port when 0 was asked for
        if isinstance(name, tuple) and len(name) >= 2:
            bound = (str(name[0]), int(name[1]))
            break
    return runner, bound


def bind_unix_socket(path: Path, mode: int) -> socket.socket:
    """A Unix stream socket bound at ``path`` with permission bits ``mode``, not yet listening.

    A file left at ``path`` by a sidecar that died is replaced; a socket some process still
    listens on, or a file that is not a socket, is refused (never deleted).

    Raises:
        TransportError: the path is taken, its directory is missing, or it cannot be bound.
    """
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, mode)  # before listen(): until then nobody can connect at all
    except OSError as exc:
        sock.close()
        if exc.errno is not None and not path.parent.is_dir():
            raise TransportError(
                f"the API cannot listen on unix:{path}: the directory {str(path.parent)!r} does not exist; create "
                "it (readable only by the users that may call the API)"
            ) from exc
        raise TransportError(f"the API cannot listen on unix:{path}: {exc.strerror or exc}") from exc
    sock.setblocking(False)
    return sock


def _clear_stale(path: Path) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise TransportError(f"the API cannot listen on unix:{path}: {exc.strerror or exc}") from exc
    if not stat.S_ISSOCK(info.st_mode):
        raise TransportError(
            f"the API cannot listen on unix:{path}: the path exists and is not a socket; it was left alone: "
            "point --api at another path"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # nobody listens: left by a sidecar that died
        return
    except OSError as exc:
        raise TransportError(f"the API cannot listen on unix:{path}: cannot check the socket there: {exc}") from exc
    finally:
        probe.close()
    raise TransportError(
        f"the API cannot listen on unix:{path}: address already in use (another process listens on that socket)"
    )
