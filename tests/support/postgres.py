"""A real, throwaway PostgreSQL server on loopback, for tests and benchmarks.

It follows shared/INFRA.md: ``initdb`` in a temporary directory (as the ``postgres`` user when
we are root, since initdb refuses root), ``pg_ctl start`` listening on 127.0.0.1 at a free
port with its socket in that directory, ``pg_ctl stop -m fast`` at the end. Nothing is
installed or left behind.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

__all__ = ["PostgresServer", "PostgresUnavailableError", "find_bin_dir"]


class PostgresUnavailableError(RuntimeError):
    """PostgreSQL cannot be started here; the message says why (tests skip with it)."""


def find_bin_dir() -> Path:
    """The newest ``/usr/lib/postgresql/*/bin`` holding initdb and pg_ctl.

    Raises:
        PostgresUnavailableError: no such directory.
    """
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: [int(x) if x.isdigit() else 0 for x in p.split("/")]
    )
    for cand in reversed(candidates):
        if os.access(os.path.join(cand, "initdb"), os.X_OK) and os.access(os.path.join(cand, "pg_ctl"), os.X_OK):
            return Path(cand)
    raise PostgresUnavailableError(
        "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory.

    Args:
        settings: extra ``-c name=value`` server settings (e.g. ``{"fsync": "off"}``).

    Raises:
        PostgresUnavailableError: binaries missing, or root without a ``postgres`` user or
            ``runuser`` to drop privileges.
    """

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        self.bin = find_bin_dir()
        self.settings = dict(settings or {})
        self._prefix: list[str] = []
        self._owner: tuple[int, int] | None = None
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailableError(
                    "running as root but there is no 'postgres' user to run initdb"
                ) from None
            if runuser is None:
                raise PostgresUnavailableError("running as root but 'runuser' is not available to drop privileges")
            self._prefix = [runuser, "-u", "postgres", "--"]
            self._owner = (pw.pw_uid, pw.pw_gid)
        self.dir = Path(tempfile.mkdtemp(prefix="acc-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "log"
        self.port = 0
        self.running = False
        if self._owner is not None:
            os.chown(self.dir, *self._owner)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._prefix, *args], cwd=self.dir, capture_output=True, text=True, check=check, timeout=120
        )

    def init(self) -> None:
        """Create the cluster (``initdb -A trust --no-sync``)."""
        try:
            self._run(
                str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                "--no-sync", "-E", "UTF8", "--locale=C",
            )  # fmt: skip
        except subprocess.CalledProcessError as exc:
            raise PostgresUnavailableError(f"initdb failed: {exc.stderr.strip() or exc.stdout.strip()}") from exc

    def start(self) -> None:
        """Start on 127.0.0.1 (a free port the first time, the same port afterwards)."""
        attempts = 3 if self.port == 0 else 1
        for _ in range(attempts):
            port = self.port or _free_port()
            opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {self.dir}"
            opts += "".join(f" -c {k}={v}" for k, v in self.settings.items())
            proc = self._run(
                str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                "-o", opts, "start", check=False,
            )  # fmt: skip
            if proc.returncode == 0:
                self.port = port
                self.running = True
                return
        log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        raise PostgresUnavailableError(f"pg_ctl start failed: {proc.stderr.strip()}\n{log}")

    def stop(self) -> None:
        """Stop with ``-m fast`` (clients are disconnected, nothing committed is lost)."""
        if self.running:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "stop", "-m", "fast", check=False)
            self.running = False

    def destroy(self) -> None:
        """Stop and delete the cluster's directory."""
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def dsn(self, database: str = "postgres") -> str:
        """A DSN for ``database`` as the superuser ``postgres``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """Create a fresh database; return its DSN."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        proc = subprocess.run(
            [str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"createdb {name} failed: {proc.stderr.strip()}")
        return self.dsn(name)

    @classmethod
    def launch(cls, settings: dict[str, str] | None = None) -> PostgresServer:
        """Init and start a server, or raise :class:`PostgresUnavailableError`."""
        server = cls(settings)
        try:
            server.init()
            server.start()
        except BaseException:
            server.destroy()
            raise
        return server
