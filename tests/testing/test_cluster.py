"""``ac.testing.Cluster``: a role crashed mid-session (its later writes lost) and restarted on
its store finishes the session, on the memory store and on SQLite."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from accompanist.store.sqlite import SQLiteStore
from accompanist.testing import Cluster, Ledger
from tests.testing.sample import make_shop


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_crashed_role_restarts_on_its_store_and_finishes(kind: str, tmp_path: Path) -> None:
    ledger = Ledger()
    stores = {r: SQLiteStore(tmp_path / f"{r}.db", role=r) for r in ("shop", "bank")} if kind == "sqlite" else None
    async with Cluster(make_shop(ledger), stores=stores) as c:
        sid = await c.start_session("shop", "book")
        for _ in range(10_000):  # crash the bank once its store has the session, before it ends
            if await c.engines["bank"].store.get_session(sid) is not None:
                break
            await asyncio.sleep(0.001)
        await c.crash("bank")
        assert "bank" not in c.engines and (await c.record(sid, "bank")) is not None  # read from its store
        await c.restart("bank")
        records = await c.settle(sid, timeout=60)
        assert {r.status for r in records.values() if r} == {"completed"}
        assert c.crashes == {"bank": 1}
    charges = [e for e in ledger.entries_of(sid) if e.label == "charge"]
    assert len(charges) == 1
