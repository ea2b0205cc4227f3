"""An embedded fault-tolerant pair built only from ``ac.SidecarConfig(mode=..., store=...)``."""

from __future__ import annotations

import asyncio
from pathlib import Path

from examples.app import app as examples_app

import accompanist as ac
from accompanist.store.url import open_store
from tests.integration.procs import free_port

KEY = "embedded-fault-tolerant-secret"


async def test_an_embedded_fault_tolerant_pair_from_keywords_only(tmp_path: Path) -> None:
    ports = {"buyer": free_port(), "seller": free_port()}

    def config(role: str, peer: str) -> ac.SidecarConfig:
        return ac.SidecarConfig(
            role=role,
            listen=("127.0.0.1", ports[role]),
            peers={peer: ("127.0.0.1", ports[peer])},
            mode="fault-tolerant",
            store=f"sqlite:///{tmp_path / role}.db",
            hmac_key=KEY,
            receive_timeout=30,
            retry_max=0.2,
        )

    buyer = ac.Sidecar(config("buyer", "seller"), examples_app)
    await buyer.start()
    try:
        # The seller is not running yet: the buyer's first envelope waits in its durable
        # outbox (default mode would have nowhere to keep it) and is delivered once it is up.
        session_id = await buyer.start_session("bookseller", "SICP")
        await asyncio.sleep(0.5)
        async with ac.Sidecar(config("seller", "buyer"), examples_app) as seller:
            done = await buyer.wait(session_id, timeout=60)
            assert done.status == "completed"
            assert (await seller.wait(session_id, timeout=60)).status == "completed"
    finally:
        await buyer.stop()
    for role in ports:  # both stores are the SQLite files named, and hold the session
        store = open_store(f"sqlite:///{tmp_path / role}.db", role)
        await store.open()
        try:
            record = await store.get_session(session_id)
        finally:
            await store.close()
        assert record is not None and record.status == "completed", (role, record)
