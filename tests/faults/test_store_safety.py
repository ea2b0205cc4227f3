"""Store safety at start, with real sidecar processes and real files.

An intact SQLite store whose main file is shorter than its header says, because a checkpoint
was cut short and the rest of its pages are still in the ``-wal`` file, is accepted with every
session; a really damaged one, a read-only or unopenable one, one the sidecar's user may not
write, or one on a full disk, is refused with one accurate line and its files are left
byte-identical. A sidecar whose port is taken exits non-zero at once, in both modes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from accompanist.store.sqlite import SQLiteStore
from tests.faults.store_files import APP, fill, make_store, refuse, sidecar, sidecar_env, snapshot, tmpfs, unprivileged
from tests.integration.procs import ProcessCluster, free_port

FT = ["--mode", "fault-tolerant", "--receive-timeout", "1", "--store", "sqlite:///./b.db"]
PAGE = 4096


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
    await make_store(src, 300)
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
    await make_store(path, 2000)  # checkpointed and closed: every page is in the main file
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
    before = snapshot(copy)
    line = await asyncio.to_thread(refuse, tmp_path, damaged)
    assert snapshot(copy) == before, "a refused store's files must be byte-identical"
    assert "damage" in line or "malformed" in line, line
    assert f"{damaged}-wal" in line and ".recover" in line and "Keep a copy" in line, line


async def test_truncated_without_a_wal_is_still_refused_with_advice_that_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    await make_store(path, 2000)
    os.truncate(path, (path.stat().st_size // PAGE // 2) * PAGE)
    before = snapshot(tmp_path)
    line = await asyncio.to_thread(refuse, tmp_path, path)
    assert snapshot(tmp_path) == before
    assert "truncated" in line and "no -wal file" in line and ".recover" in line, line


async def test_another_roles_store_is_refused_with_advice_about_the_path(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    store = SQLiteStore(path, "a")
    await store.open()
    await store.close()
    before = snapshot(tmp_path)
    line = await asyncio.to_thread(refuse, tmp_path, path)
    assert snapshot(tmp_path) == before
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


async def test_an_immutable_store_file_is_refused_naming_the_attribute(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    await make_store(path, 10)
    before = snapshot(tmp_path)
    with _immutable(path):
        line = await asyncio.to_thread(refuse, tmp_path, path)
    assert snapshot(tmp_path) == before
    if os.geteuid() == 0:
        assert "immutable" in line and "chattr -i" in line, line
    else:
        assert "permission denied" in line, line


async def test_a_read_only_directory_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    directory.mkdir()
    with _immutable(directory):
        line = await asyncio.to_thread(refuse, tmp_path, directory / "b.db")
        assert list(directory.iterdir()) == []
    assert "in the directory" in line and str(directory) in line, line


async def test_a_store_on_a_read_only_file_system_is_refused(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    with tmpfs(mnt):
        path = mnt / "b.db"
        await make_store(path, 10)
        done = await asyncio.to_thread(subprocess.run, ["mount", "-o", "remount,ro", str(mnt)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot remount the tmpfs read-only: {done.stderr.decode().strip()}")
        before = snapshot(mnt)
        line = await asyncio.to_thread(refuse, tmp_path, path)
        assert snapshot(mnt) == before
    assert "read-only file system" in line and "remount" in line, line


async def test_a_file_without_write_permission_is_refused(tmp_path: Path) -> None:
    """Run bound by file permissions (as root: without root's override of them)."""
    prefix = unprivileged()
    path = tmp_path / "b.db"
    await make_store(path, 10)
    path.chmod(0o444)
    before = snapshot(tmp_path)
    line = await asyncio.to_thread(refuse, tmp_path, path, prefix=prefix)
    assert snapshot(tmp_path) == before
    assert "permission denied" in line and "chmod" in line, line


async def test_a_directory_without_write_permission_is_refused(tmp_path: Path) -> None:
    """SQLite must create the -wal and -shm beside the store: a directory it may not write is
    named as such (not as an immutable attribute), and nothing is created in it."""
    prefix = unprivileged()
    directory = tmp_path / "data"
    directory.mkdir()
    await make_store(directory / "b.db", 10)
    directory.chmod(0o555)
    try:
        before = snapshot(directory)
        line = await asyncio.to_thread(refuse, tmp_path, directory / "b.db", prefix=prefix)
        assert snapshot(directory) == before
    finally:
        directory.chmod(0o755)
    assert "in the directory" in line and "permission denied" in line and "immutable" not in line, line


# (c) a full disk at start


async def test_a_full_disk_at_start_is_refused_accurately_and_changes_nothing(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "4m") as disk:
        store = disk / "b.db"
        await make_store(store, 2000)
        await asyncio.to_thread(fill, disk / "filler")
        before = snapshot(disk)
        line = await asyncio.to_thread(refuse, tmp_path, store)
        assert "is full" in line and "Free some space" in line, line
        assert snapshot(disk) == before, "a refused store's files must be byte-identical, with nothing added"
        fresh = disk / "new.db"  # a new store on a full disk leaves no empty file behind
        line = await asyncio.to_thread(refuse, tmp_path, fresh)
        assert "is full" in line and snapshot(disk) == before, line
        (disk / "filler").unlink()
        node = tmp_path / "node"
        node.mkdir()
        args = ["--mode", "fault-tolerant", "--store", f"sqlite:///{store}"]
        async with ProcessCluster(["b"], APP, node, args) as cluster:
            status, body = await cluster.request("GET", "b", "/sessions?status=completed&limit=10000")
            assert status == 200 and len(body["sessions"]) == 2000


_KILLED_WRITER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA wal_autocheckpoint=0")
db.execute("BEGIN")
db.executemany(
    "INSERT INTO acc_sessions (session_id, choreography, version, role, status, args, attempts, created_at, "
    "updated_at) VALUES (?, 'chain', 1, 'b', 'completed', x'00', 0, 0, 0)",
    [(f"k{i}",) for i in range(300)],
)
db.execute("COMMIT")
print("ready", flush=True)
time.sleep(60)
"""


async def test_a_full_disk_under_a_store_a_kill_left_with_a_wal(tmp_path: Path) -> None:
    """Rows only in the -wal of a writer killed with SIGKILL, then the disk fills: the sidecar
    starts with every session, or refuses accurately leaving every byte as it was."""
    with tmpfs(tmp_path / "disk", "4m") as disk:
        store = disk / "b.db"
        await make_store(store, 500)
        writer = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _KILLED_WRITER, str(store), stdout=asyncio.subprocess.PIPE
        )
        assert writer.stdout is not None
        assert (await writer.stdout.readline()).strip() == b"ready"
        writer.kill()
        await writer.wait()
        assert (disk / "b.db-wal").stat().st_size > 0
        expected = {f"a{i}" for i in range(500)} | {f"k{i}" for i in range(300)}
        await asyncio.to_thread(fill, disk / "filler")
        before = snapshot(disk)
        api = free_port()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "accompanist", "sidecar", "--app", APP, "--role", "b", "--log-level", "WARNING",
            "--listen", "127.0.0.1:0", "--api", f"127.0.0.1:{api}", "--mode", "fault-tolerant",
            "--store", f"sqlite:///{store}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=sidecar_env(),
        )  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        try:
            first = await asyncio.wait_for(proc.stdout.readline(), 60)
            if b"ready" in first:  # it started: every session is there
                async with aiohttp.ClientSession() as http:
                    url = f"http://127.0.0.1:{api}/sessions?status=completed&limit=10000"
                    async with http.get(url) as r:
                        assert r.status == 200
                        assert {x["session_id"] for x in (await r.json())["sessions"]} == expected
                outcome = "started"
            else:  # it refused: with the reason, and the files as they were
                await proc.wait()
                err = (await proc.stderr.read()).decode()
                assert proc.returncode == 1 and "is full" in err and "Traceback" not in err, err
                assert snapshot(disk) == before
                outcome = "refused"
        finally:
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()
        print(f"a full disk under a store with a -wal: {outcome}")


async def test_a_missing_directory_is_refused(tmp_path: Path) -> None:
    line = await asyncio.to_thread(refuse, tmp_path, tmp_path / "missing" / "b.db")
    assert "does not exist" in line and "create it" in line, line
    assert not (tmp_path / "missing").exists()


async def test_a_directory_where_the_file_should_be_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    path.mkdir()
    line = await asyncio.to_thread(refuse, tmp_path, path)
    assert "is a directory" in line, line
    assert list(path.iterdir()) == []


# (d) a taken port


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
        result, elapsed = sidecar(tmp_path, *args, timeout=30)
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
        await make_store(path, 0)
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
