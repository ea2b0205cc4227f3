"""``accompanist versions --store ROLE=URL --app M:APP``: what a store alone says of the versions
its unfinished sessions need, and of code that changed under them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.faults.upgradeapp import app_v2
from typer.testing import CliRunner

from accompanist.cli import app
from accompanist.engine.origin import seed_with
from accompanist.store.base import SessionRecord, WriteBatch
from accompanist.store.sqlite import SQLiteStore

runner = CliRunner()


def _stored(path: Path, *records: SessionRecord) -> None:
    async def write() -> None:
        store = SQLiteStore(path, "a", synchronous="OFF")
        await store.open()
        try:
            await store.commit(WriteBatch(sessions=list(records)))
        finally:
            await store.close()

    asyncio.run(write())


def _record(sid: str, version: int, seed: bytes, status: str = "running") -> SessionRecord:
    return SessionRecord(session_id=sid, choreography="order", version=version, role="a", status=status, seed=seed)


def test_a_store_tells_what_its_unfinished_sessions_need(tmp_path: Path) -> None:
    v1 = app_v2.get("order", 1).fingerprint
    db = tmp_path / "a.db"
    _stored(
        db,
        _record("s-same", 1, seed_with(v1)),
        _record("s-changed", 1, seed_with("0123456789ab")),
        _record("s-old", 1, b"\x00" * 16),  # stored before fingerprints were kept: unknown
        _record("s-v3", 3, seed_with("ffffffffffff")),  # a version the new code dropped
        _record("s-done", 2, seed_with("0123456789ab"), status="completed"),  # finished: needs nothing
    )
    args = ["versions", "--store", f"a=sqlite:///{db}", "--app", "tests.faults.upgradeapp:app_v2"]
    shown = runner.invoke(app, [*args, "--json"])
    assert shown.exit_code == 0, shown.output
    ((order,),) = [r["choreographies"] for r in json.loads(shown.output)]
    assert order["served"] == [1, 2] and order["unfinished"] == {"1": 3, "3": 1}
    assert order["needed_not_served"] == [3]
    assert order["recorded_fingerprints"]["1"] == {v1: 1, "0123456789ab": 1, "unknown": 1}
    (change,) = order["code_changed"]
    assert (change["version"], change["recorded"], change["current"], change["sessions"]) == (
        1,
        "0123456789ab",
        v1,
        ["s-changed"],
    )
    table = runner.invoke(app, args)
    assert table.exit_code == 0 and "changed without a version bump" in table.output and "s-changed" in table.output
