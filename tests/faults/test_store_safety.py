"""Store safety at start, with real sidecar processes and real files.

An intact SQLite store whose main file is shorter than its header says, because a checkpoint
was cut short and the rest of its pages are still in the ``-wal`` file, is accepted with every
session; a really damaged one, a read-only or unopenable one, is refused with one accurate line
and its files are left byte-identical. A sidecar whose port is taken exits non-zero at once,
in both modes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from accompanist.store.base import SessionRecord, WriteBatch
from accompanist.store.sqlite import SQLiteStore
from tests.integration.procs import ROOT, ProcessCluster

APP = "tests.faults.faultapp:app"
FT = ["--mode", "fault-tolerant", "--receive-timeout", "1", "--store", "sqlite:///./b.db"]
PAGE = 4096


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _sidecar(cwd: Path, *args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
    cmd = [sys.executable, "-m", "accompanist", "sidecar", "--app", APP, "--role", "b", "--log-level", "WARNING", *args]
    started = time.monotonic()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_env())
    return result, time.monotonic() - started


def _refuse(cwd: Path, store: Path) -> str:
    """Start a fault-tolerant sidecar on ``store``; it must exit 1 with one error line."""
    result, _ = _sidecar(cwd, "--listen", "127.0.0.1:0", "--mode", "fault-tolerant", "--store", f"sqlite:///{store}")
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    line = errors[0]
    assert str(store) in line, line
    assert "unable to open database file" not in line
    assert "move" not in line.lower() and "delete" not in line.lower(), line
    return line


def _snapshot(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
        for p in sorted(directory.iterdir())
    }


def _records(prefix: str, n: int) -> list[SessionRecord]:
    return [
        SessionRecord(
            session_id=f"{prefix}{i}", choreography="chain", version=1, role="b", status="completed", args=b"x" * 100
        )
        for i in range(n)
    ]


async def _make_store(path: Path, n: int) -> None:
    store = SQLiteStore(path, "b", synchronous="OFF")
    await store.open()
    await store.commit(WriteBatch(sessions=_records("a", n)))
    await store.close()


def _insert(db: sqlite3.Connection, prefix: str, n: int) -> None:
    db.executemany(
        "INSERT INTO acc_sessions (session_id, choreography, version, role, status, args, attempts, created_at, "
        "updated_at) VALUES (?, 'chain', 1, 'b', 'completed', ?, 0, 0, 0)",
        [(f"{prefix}{i}", b"y" * 100) for i in range(n)],
    )


def _header_bytes(path: Path) -> int:
    header = path.read_bytes()[:100]
    return int.from_bytes(header[28:32], "big") * PAGE


async def _cut_checkpoint(work: Path, dest: Path, *, grown: int) -> tuple[Path, set[str]]:
    """A store as a checkpoint cut short leaves it: the main file holds the new header (its
    page count) but not the pages past its old end; the -wal holds every page.

    Made by writing ``grown`` sessions in WAL mode with ``wal_autocheckpoint=0``, running a
    checkpoint, then copying the main file cut to its size before the checkpoint and the -wal
    (no -shm: the process that held it died), while the writer is still open.
    """
    src = work / "src.db"
    await _make_store(src, 300)
    old_size = src.stat().st_size
    db = sqlite3.connect(src, isolation_level=None)
    try:
        db.execute("PRAGMA wal_autocheckpoint=0")
        _insert(db, "b", grown)
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest / "b.db")
        shutil.copyfile(work / "src.db-wal", dest / "b.db-wal")
    finally:
        db.close()
    os.truncate(dest / "b.db", old_size)
    return dest / "b.db", {f"a{i}" for i in range(300)} | {f"b{i}" for i in range(grown)}


async def test_a_checkpoint_cut_short_is_accepted_with_every_session(tmp_path: Path) -> None:
    work = tmp_path / "node"
    path, expected = await _cut_checkpoint(tmp_path, work, grown=700)
    size, says = path.stat().st_size, _header_bytes(path)
    assert size < says, "the main file must be shorter than its header says (the state under test)"
    assert (work / "b.db-wal").stat().st_size > says - size
    async with ProcessCluster(["b"], APP, work, FT) as cluster:
        status, body = await cluster.request("GET", "b", "/sessions?status=completed&limit=10000")
        assert status == 200, body
        assert {s["session_id"] for s in body["sessions"]} == expected
    store = SQLiteStore(path, "b")
    await store.open()
    try:
        assert {r.session_id for r in await store.list_sessions(limit=10_000)} == expected
    finally:
        await store.close()
    check = sqlite3.connect(path)
    try:
        assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        check.close()


async def test_a_truncated_main_file_whose_pages_are_not_in_the_wal_is_refused_unchanged(tmp_path: Path) -> None:
    work = tmp_path / "node"
    work.mkdir()
    path = work / "b.db"
    await _make_store(path, 2000)  # checkpointed and closed: every page is in the main file
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA wal_autocheckpoint=0")
        _insert(db, "late", 3)  # a small -wal holding a few pages only
        copy = tmp_path / "copy"
        copy.mkdir()
        shutil.copyfile(path, copy / "b.db")
        shutil.copyfile(work / "b.db-wal", copy / "b.db-wal")
    finally:
        db.close()
    damaged = copy / "b.db"
    os.truncate(damaged, (damaged.stat().st_size // PAGE // 2) * PAGE)
    assert (copy / "b.db-wal").stat().st_size > 0
    before = _snapshot(copy)
    line = await asyncio.to_thread(_refuse, tmp_path, damaged)
    assert _snapshot(copy) == before, "a refused store's files must be byte-identical"
    assert "damage" in line or "malformed" in line, line
    assert f"{damaged}-wal" in line and ".recover" in line and "Keep a copy" in line, line


async def test_truncated_without_a_wal_is_still_refused_with_advice_that_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    await _make_store(path, 2000)
    os.truncate(path, (path.stat().st_size // PAGE // 2) * PAGE)
    before = _snapshot(tmp_path)
    line = await asyncio.to_thread(_refuse, tmp_path, path)
    assert _snapshot(tmp_path) == before
    assert "truncated" in line and "no -wal file" in line and ".recover" in line, line


async def test_another_roles_store_is_refused_with_advice_about_the_path(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    store = SQLiteStore(path, "a")
    await store.open()
    await store.close()
    before = _snapshot(tmp_path)
    line = await asyncio.to_thread(_refuse, tmp_path, path)
    assert _snapshot(tmp_path) == before
    assert "belongs to role 'a'" in line and "--store" in line, line


# (b) read-only and unopenable stores


def _chattr(flag: str, path: Path) -> bool:
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


@contextlib.contextmanager
def _immutable(path: Path) -> Iterator[None]:
    if not _chattr("+i", path):
        pytest.skip("chattr +i is not available here (not root, or the file system has no attributes)")
    try:
        yield
    finally:
        _chattr("-i", path)


@contextlib.contextmanager
def _tmpfs(mountpoint: Path) -> Iterator[None]:
    mountpoint.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mountpoint)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


async def test_an_immutable_store_file_is_refused_naming_the_attribute(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    await _make_store(path, 10)
    before = _snapshot(tmp_path)
    with _immutable(path):
        line = await asyncio.to_thread(_refuse, tmp_path, path)
    assert _snapshot(tmp_path) == before
    if os.geteuid() == 0:
        assert "immutable" in line and "chattr -i" in line, line
    else:
        assert "permission denied" in line, line


async def test_a_read_only_directory_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    directory.mkdir()
    with _immutable(directory):
        line = await asyncio.to_thread(_refuse, tmp_path, directory / "b.db")
        assert list(directory.iterdir()) == []
    assert "in the directory" in line and str(directory) in line, line


async def test_a_store_on_a_read_only_file_system_is_refused(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    with _tmpfs(mnt):
        path = mnt / "b.db"
        await _make_store(path, 10)
        done = await asyncio.to_thread(subprocess.run, ["mount", "-o", "remount,ro", str(mnt)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot remount the tmpfs read-only: {done.stderr.decode().strip()}")
        before = _snapshot(mnt)
        line = await asyncio.to_thread(_refuse, tmp_path, path)
        assert _snapshot(mnt) == before
    assert "read-only file system" in line and "remount" in line, line


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions; the immutable case covers root")
async def test_a_file_without_write_permission_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    await _make_store(path, 10)
    path.chmod(0o444)
    before = _snapshot(tmp_path)
    line = await asyncio.to_thread(_refuse, tmp_path, path)
    assert _snapshot(tmp_path) == before
    assert "permission denied" in line and "chmod" in line, line


async def test_a_missing_directory_is_refused(tmp_path: Path) -> None:
    line = await asyncio.to_thread(_refuse, tmp_path, tmp_path / "missing" / "b.db")
    assert "does not exist" in line and "create it" in line, line
    assert not (tmp_path / "missing").exists()


async def test_a_directory_where_the_file_should_be_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    path.mkdir()
    line = await asyncio.to_thread(_refuse, tmp_path, path)
    assert "is a directory" in line, line
    assert list(path.iterdir()) == []


# (c) a taken port


@pytest.mark.parametrize("mode", ["default", "fault-tolerant"])
@pytest.mark.parametrize("which", ["listen", "api"])
def test_a_taken_port_exits_non_zero_at_once(tmp_path: Path, mode: str, which: str) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        args = ["--mode", mode, "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"]
        args[args.index(f"--{which}") + 1] = f"127.0.0.1:{port}"
        if mode == "fault-tolerant":
            args += ["--store", "sqlite:///./b.db"]
        result, elapsed = _sidecar(tmp_path, *args, timeout=30)
    finally:
        holder.close()
    assert result.returncode == 1, result
    assert elapsed < 10, f"took {elapsed:.1f}s to give up"
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(port) in errors[0] and "in use" in errors[0], result.stderr
    assert ("listen" if which == "listen" else "API") in errors[0]
    if mode == "fault-tolerant":
        # The store was released (closed cleanly: no -wal left behind) and opens again at once.
        assert (tmp_path / "b.db").exists() and not (tmp_path / "b.db-wal").exists()


_WRITER = """
import os, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA wal_autocheckpoint=0")
db.execute("PRAGMA synchronous=OFF")
db.executemany(
    "INSERT INTO acc_sessions (session_id, choreography, version, role, status, args, attempts, created_at, "
    "updated_at) VALUES (?, 'chain', 1, 'b', 'completed', ?, 0, 0, 0)",
    [(f"k{i}", os.urandom(300)) for i in range(int(sys.argv[2]))],
)
print("ready", flush=True)
db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
print("done", flush=True)
"""


async def test_a_writer_killed_during_a_checkpoint_leaves_a_store_that_starts_intact(tmp_path: Path) -> None:
    """SIGKILL a real writer process during ``PRAGMA wal_checkpoint`` until it lands mid-way."""
    import random

    sessions = 40_000
    for attempt in range(30):
        work = tmp_path / f"try{attempt}"
        work.mkdir()
        path = work / "b.db"
        await _make_store(path, 0)
        writer = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _WRITER, str(path), str(sessions), stdout=asyncio.subprocess.PIPE
        )
        assert writer.stdout is not None
        assert (await writer.stdout.readline()).strip() == b"ready"
        await asyncio.sleep(random.uniform(0, 0.03))
        writer.kill()
        await writer.wait()
        wal = work / "b.db-wal"
        if wal.exists() and wal.stat().st_size > 0 and path.stat().st_size < _header_bytes(path):
            break
    else:
        pytest.skip("30 kills never landed inside a checkpoint on this machine")
    async with ProcessCluster(["b"], APP, work, FT) as cluster:
        for sid in ("k0", f"k{sessions // 2}", f"k{sessions - 1}"):
            record = await cluster.session("b", sid)
            assert record is not None and record["status"] == "completed", (sid, record)
    store = SQLiteStore(path, "b")
    await store.open()
    try:
        assert (await store.counts()).sessions == sessions
    finally:
        await store.close()
