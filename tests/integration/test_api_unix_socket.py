"""The service-facing API on a Unix socket: real sidecar processes, a real socket file, and a
client of another user refused by the file's permissions."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.procs import ROOT, free_port

APP = "examples.app:app"
NOBODY = 65534


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _command(role: str, ports: dict[str, int], api: str | None, *extra: str) -> list[str]:
    peer = "seller" if role == "buyer" else "buyer"
    command = [
        sys.executable, "-m", "accompanist", "sidecar", "--app", APP, "--role", role, "--log-level", "WARNING",
        "--listen", f"127.0.0.1:{ports[role]}", "--peer", f"{peer}=127.0.0.1:{ports[peer]}", *extra,
    ]  # fmt: skip
    return command + (["--api", api] if api else [])


async def _start(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start a sidecar and wait for its ready line (on stdout, copied to ``log``)."""
    with log.open("ab") as err:
        proc = await asyncio.to_thread(subprocess.Popen, command, env=_env(), stdout=subprocess.PIPE, stderr=err)
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
    assert b"accompanist sidecar ready" in line, (line, log.read_text())
    return proc


async def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A directory other users may enter (pytest's tmp_path is private to its user), so the
    socket file's own permission bits are what decides."""
    path = Path(tempfile.mkdtemp(prefix="acc-api-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for child in path.iterdir():
            child.unlink()
        path.rmdir()


def _connects_as_nobody(path: Path) -> bool | None:
    """Whether a process of user ``nobody`` can connect to ``path``; None when we cannot switch."""
    if os.geteuid() != 0:
        return None
    pid = os.fork()
    if pid == 0:  # the child: only system calls, then _exit
        code = 2
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
                code = 0
            except PermissionError:
                code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 1), f"the probe as nobody failed otherwise (exit {code})"
    return code == 0


@contextlib.asynccontextmanager
async def _client(path: Path) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        connector=aiohttp.UnixConnector(path=str(path)), timeout=aiohttp.ClientTimeout(total=60)
    ) as http:
        yield http


async def _json(http: aiohttp.ClientSession, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with http.request(method, f"http://sidecar{path}", **kwargs) as r:
        return r.status, await r.json()


async def test_the_api_on_a_unix_socket_serves_its_user_only(tmp_path: Path, sockdir: Path) -> None:
    ports = {"buyer": free_port(), "seller": free_port()}
    sock = sockdir / "buyer.sock"
    seller = await _start(_command("seller", ports, None), tmp_path / "seller.log")
    buyer = await _start(_command("buyer", ports, f"unix:{sock}"), tmp_path / "buyer.log")
    try:
        info = os.stat(sock)
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
        assert info.st_uid == os.geteuid()
        async with _client(sock) as http:
            status, body = await _json(
                http, "POST", "/sessions?wait=true", json={"choreography": "bookseller", "args": ["SICP"]}
            )
            assert (status, body["status"], body["result"]) == (200, "completed", "bought at 30"), body
            assert (await _json(http, "GET", "/healthz"))[0] == 200
            status, listed = await _json(http, "GET", "/sessions")
            assert status == 200 and [s["session_id"] for s in listed["sessions"]] == [body["session_id"]]
        assert await asyncio.to_thread(_connects_as_nobody, sock) in (False, None)
        listing = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "accompanist", "sessions", "--sidecar", f"unix:{sock}"],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listing.returncode == 0 and body["session_id"] in listing.stdout, listing

        # A second sidecar on the same path refuses, leaving the live socket alone.
        other = await asyncio.to_thread(
            subprocess.run,
            _command("buyer", {**ports, "buyer": free_port()}, f"unix:{sock}"),
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert other.returncode == 1 and "already in use" in other.stderr, other.stderr
        assert "Traceback" not in other.stderr
        async with _client(sock) as http:
            assert (await _json(http, "GET", "/healthz"))[0] == 200

        # A SIGKILL leaves the socket file behind; the next start replaces it.
        buyer.kill()
        buyer.wait()
        assert sock.exists()
        buyer = await _start(_command("buyer", ports, f"unix:{sock}"), tmp_path / "buyer.log")
        async with _client(sock) as http:
            assert (await _json(http, "GET", "/healthz"))[0] == 200
    finally:
        assert await _stop(buyer) in (0, -signal.SIGKILL)
        await _stop(seller)
    assert not sock.exists(), "a clean stop removes the socket file"


async def test_a_wider_socket_mode_lets_other_users_in(tmp_path: Path, sockdir: Path) -> None:
    """The control for the test above: the same probe connects when the mode allows it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to probe the socket as another user")
    ports = {"buyer": free_port(), "seller": free_port()}
    sock = sockdir / "wide.sock"
    buyer = await _start(_command("buyer", ports, f"unix:{sock}", "--api-socket-mode", "0666"), tmp_path / "b.log")
    try:
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o666
        assert await asyncio.to_thread(_connects_as_nobody, sock) is True
    finally:
        await _stop(buyer)


def test_a_path_that_is_not_a_socket_is_never_replaced(tmp_path: Path) -> None:
    ports = {"buyer": free_port(), "seller": free_port()}
    taken = tmp_path / "api.sock"
    taken.write_text("precious")
    result = subprocess.run(
        _command("buyer", ports, f"unix:{taken}"), env=_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1 and "is not a socket" in result.stderr, result.stderr
    assert taken.read_text() == "precious"
    missing = tmp_path / "no-such-dir" / "api.sock"
    result = subprocess.run(
        _command("buyer", ports, f"unix:{missing}"), env=_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1 and "does not exist" in result.stderr, result.stderr
