"""Real files for the store-safety tests: stores made on disk, a sidecar started on them as a
process (optionally unprivileged), a small tmpfs filled to the last byte, byte snapshots."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from accompanist.store.base import SessionRecord, WriteBatch
from accompanist.store.sqlite import SQLiteStore
from tests.integration.procs import ROOT

__all__ = [
    "APP",
    "fill",
    "make_store",
    "records",
    "refuse",
    "sidecar",
    "sidecar_env",
    "snapshot",
    "tmpfs",
    "unprivileged",
]

APP = "tests.faults.faultapp:app"
# As root, the sidecar runs without the capabilities that let root ignore file permissions, so
# the kernel checks them as for any user (the venv's interpreter may live where user nobody
# cannot reach it, so dropping root's powers is what works everywhere).
_SETPRIV = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]


def sidecar_env() -> dict[str, str]:
    """The environment a sidecar process of these tests runs with (the repository importable)."""
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def unprivileged() -> list[str]:
    """A command prefix that runs a process bound by file permissions (none when not root).

    Skips the test, saying why, when that is impossible here.
    """
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root, and setpriv (util-linux) is missing to drop root's file-permission override")
    probe = subprocess.run([*_SETPRIV, "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot drop root's file-permission override here: {probe.stderr.strip()}")
    return list(_SETPRIV)


def sidecar(
    cwd: Path, *args: str, timeout: float = 60, prefix: Sequence[str] = ()
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``accompanist sidecar`` as role ``b`` until it exits; return it and how long it took."""
    cmd = [sys.executable, "-m", "accompanist", "sidecar", "--app", APP, "--role", "b", "--log-level", "WARNING", *args]
    started = time.monotonic()
    result = subprocess.run(
        [*prefix, *cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=sidecar_env()
    )
    return result, time.monotonic() - started


def refuse(cwd: Path, store: Path, *, prefix: Sequence[str] = ()) -> str:
    """Start a fault-tolerant sidecar on ``store``; it must exit 1 with one error line, naming
    the store, never advising to move or delete it. Returns that line."""
    result, _ = sidecar(
        cwd, "--listen", "127.0.0.1:0", "--mode", "fault-tolerant", "--store", f"sqlite:///{store}", prefix=prefix
    )
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    line = errors[0]
    assert str(store) in line, line
    assert "unable to open database file" not in line
    assert "move" not in line.lower() and "delete" not in line.lower(), line
    return line


def snapshot(directory: Path) -> dict[str, str]:
    """Every file of ``directory`` by name, with the SHA-256 of its bytes."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
        for p in sorted(directory.iterdir())
    }


def records(prefix: str, n: int) -> list[SessionRecord]:
    """``n`` completed sessions of role ``b`` named ``prefix0``, ``prefix1`` ..."""
    return [
        SessionRecord(
            session_id=f"{prefix}{i}", choreography="chain", version=1, role="b", status="completed", args=b"x" * 100
        )
        for i in range(n)
    ]


async def make_store(path: Path, n: int, prefix: str = "a") -> None:
    """A closed SQLite store of role ``b`` holding ``n`` completed sessions."""
    store = SQLiteStore(path, "b", synchronous="OFF")
    await store.open()
    await store.commit(WriteBatch(sessions=records(prefix, n)))
    await store.close()


@contextlib.contextmanager
def tmpfs(mountpoint: Path, size: str = "8m") -> Iterator[Path]:
    """A small tmpfs mounted at ``mountpoint`` (skips without root)."""
    mountpoint.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


def fill(path: Path) -> int:
    """Write ``path`` until its file system is full, to the last byte; return the bytes written."""
    written = 0
    with path.open("wb", buffering=0) as f:
        for chunk in (1 << 20, 1 << 14, 1 << 10, 1):
            try:
                while True:
                    written += f.write(b"\0" * chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    return written
