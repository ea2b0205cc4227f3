"""SQLiteStore refuses damaged or foreign files at open(), clearly, and never modifies them."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from accompanist.errors import StoreCorruptError, StoreError
from accompanist.store.base import SessionRecord, WriteBatch
from accompanist.store.sqlite import SQLiteStore


async def make_store(path: Path, role: str = "wh", sessions: int = 200) -> None:
    """A real store with enough rows to span many pages."""
    store = SQLiteStore(path, role, synchronous="OFF")
    await store.open()
    recs = [
        SessionRecord(session_id=f"s{i}", choreography="order", version=1, role=role, status="running", args=b"x" * 200)
        for i in range(sessions)
    ]
    await store.commit(WriteBatch(sessions=recs))
    await store.close()


async def refused(path: Path, role: str = "wh", match: str = "") -> StoreCorruptError:
    before = path.read_bytes()
    store = SQLiteStore(path, role)
    with pytest.raises(StoreCorruptError, match=match) as info:
        await store.open()
    assert path.read_bytes() == before, "a refused file must be left unchanged"
    assert str(path) in str(info.value)
    with pytest.raises(StoreError, match="not open"):
        await store.commit(WriteBatch())
    return info.value


async def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "wh.db"
    await make_store(path)
    data = path.read_bytes()
    assert len(data) >= 4 * 4096
    path.write_bytes(data[: len(data) // 2 + 100])
    await refused(path, match="truncated")


async def test_truncated_on_page_boundary(tmp_path: Path) -> None:
    path = tmp_path / "wh.db"
    await make_store(path)
    data = path.read_bytes()
    path.write_bytes(data[: 2 * 4096])
    await refused(path, match="truncated")


async def test_truncated_below_header(tmp_path: Path) -> None:
    path = tmp_path / "wh.db"
    await make_store(path)
    path.write_bytes(path.read_bytes()[:50])
    await refused(path, match="truncated")


async def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "wh.db"
    path.write_bytes(b"")
    await refused(path, match="empty")


async def test_random_garbage(tmp_path: Path) -> None:
    path = tmp_path / "wh.db"
    path.write_bytes(os.urandom(3 * 4096))
    await refused(path, match="not a SQLite database")


async def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "wh.db"
    path.write_text("role = 'warehouse'\n")
    await refused(path, match="not a SQLite database")


async def test_damaged_pages(tmp_path: Path) -> None:
    path = tmp_path / "wh.db"
    await make_store(path)
    data = bytearray(path.read_bytes())
    for page in range(2, len(data) // 4096):  # scribble over every b-tree page header but the first
        data[page * 4096 : page * 4096 + 12] = b"\xde\xad\xbe\xef" * 3
    path.write_bytes(bytes(data))
    await refused(path, match="damage|damaged|malformed|cannot be read")


async def test_another_apps_sqlite_database(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers (name) VALUES ('ada')")
    conn.commit()
    conn.close()
    error = await refused(path, match="not an Accompanist store")
    assert "customers" in str(error)


async def test_foreign_acc_meta(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE acc_meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.commit()
    conn.close()
    await refused(path, match="not Accompanist's")


async def test_store_of_another_role(tmp_path: Path) -> None:
    path = tmp_path / "wh.db"
    await make_store(path, role="warehouse")
    error = await refused(path, role="payment", match="belongs to role 'warehouse'")
    assert "payment" in str(error)


def _edit_meta(path: Path, sql: str) -> None:
    conn = sqlite3.connect(path)
    conn.execute(sql)
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ("UPDATE acc_meta SET value = '99' WHERE key = 'schema_version'", "schema version 99 is newer"),
        ("UPDATE acc_meta SET value = 'one' WHERE key = 'schema_version'", "unreadable"),
        ("DROP TABLE acc_journal", "tables are missing: acc_journal"),
    ],
)
async def test_schema_problems(tmp_path: Path, edit: str, match: str) -> None:
    path = tmp_path / "wh.db"
    await make_store(path)
    _edit_meta(path, edit)
    await refused(path, match=match)


async def test_good_store_reopens_and_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "wh.db"
    await make_store(path, sessions=10)
    store = SQLiteStore(path, "wh")
    await store.open()
    try:
        assert (await store.counts()).sessions == 10
    finally:
        await store.close()


async def test_existing_empty_sqlite_database_is_initialized(tmp_path: Path) -> None:
    path = tmp_path / "wh.db"
    sqlite3.connect(path).execute("PRAGMA user_version = 0").close()
    store = SQLiteStore(path, "wh")
    await store.open()
    await store.close()


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        (lambda p: p.mkdir(), "not a regular file"),
        (lambda p: None, "does not exist"),
    ],
)
async def test_bad_paths(tmp_path: Path, setup: Callable[[Path], None], match: str) -> None:
    path = tmp_path / "x.db" if "regular" in match else tmp_path / "missing-dir" / "x.db"
    setup(path)
    with pytest.raises(StoreError, match=match):
        await SQLiteStore(path, "wh").open()


def _cut_checkpoint(path: Path) -> None:
    """Leave ``path`` as a crash in the middle of a WAL checkpoint does: page 1 (the header,
    with the new page count) already written to the main file, the file not yet extended,
    the WAL still holding every page. Nothing is lost: SQLite reads the pages from the WAL."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.executemany("INSERT INTO t (v) VALUES (?)", [(b"y" * 300,) for _ in range(400)])
    old_main = path.read_bytes()
    wal = path.with_name(path.name + "-wal").read_bytes()
    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    new_main = path.read_bytes()
    db.close()
    page = int.from_bytes(new_main[16:18], "big")
    assert len(new_main) > len(old_main), "the checkpoint grew the file"
    path.write_bytes(new_main[:page] + old_main[page:])  # header says more pages than the file holds
    path.with_name(path.name + "-wal").write_bytes(wal)


async def test_a_store_cut_mid_checkpoint_opens_with_every_row(tmp_path: Path) -> None:
    path = tmp_path / "wh.db"
    await make_store(path, sessions=50)
    _cut_checkpoint(path)
    header = path.read_bytes()[:100]
    pages, page = int.from_bytes(header[28:32], "big"), int.from_bytes(header[16:18], "big")
    assert path.stat().st_size < pages * page, "the main file is shorter than its header says"
    store = SQLiteStore(path, "wh")
    await store.open()  # before the fix: refused as "truncated"
    try:
        assert len(await store.list_sessions(limit=1000)) == 50
    finally:
        await store.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM t").fetchone() == (400,)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()


async def test_a_refusal_never_advises_discarding_the_store(tmp_path: Path) -> None:
    path = tmp_path / "wh.db"
    await make_store(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    error = await refused(path, match="truncated")
    assert "move this file away" not in str(error)
    assert "Keep a copy of" in str(error) and "-wal" in str(error) and ".recover" in str(error)
