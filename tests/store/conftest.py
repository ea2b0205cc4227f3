"""One contract, every store: the ``backend`` fixture builds stores of each kind."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from accompanist.store.base import Store
from accompanist.store.memory import MemoryStore
from accompanist.store.sqlite import SQLiteStore


@dataclass
class Backend:
    """Makes stores of one kind that all point at the same underlying data."""

    name: str
    make: Callable[..., Any]
    durable: bool
    grouped: bool  # merges concurrent batches into one transaction
    poison: Callable[[], Awaitable[None]] | None = None  # makes the database reject journal name 'poison'


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "memory":
        shared: dict[str, MemoryStore] = {}

        def make_memory(role: str = "wh", **_: Any) -> MemoryStore:
            return shared.setdefault(role, MemoryStore(role))

        return Backend("memory", make_memory, durable=False, grouped=False)
    if request.param == "sqlite":

        def make_sqlite(role: str = "wh", **opts: Any) -> SQLiteStore:
            opts.setdefault("synchronous", "NORMAL")  # keeps the suite fast; FULL is benchmarked
            return SQLiteStore(tmp_path / "store.db", role, **opts)

        async def poison_sqlite() -> None:
            conn = sqlite3.connect(tmp_path / "store.db")
            conn.execute(
                "CREATE TRIGGER poison BEFORE INSERT ON acc_journal WHEN NEW.name = 'poison' "
                "BEGIN SELECT RAISE(ABORT, 'poisoned row'); END"
            )
            conn.commit()
            conn.close()

        return Backend("sqlite", make_sqlite, durable=True, grouped=True, poison=poison_sqlite)
    dsn = request.getfixturevalue("postgres_dsn")
    from accompanist.store.postgres import PostgresStore

    def make_postgres(role: str = "wh", **opts: Any) -> PostgresStore:
        return PostgresStore(dsn, role, **opts)

    async def poison_postgres() -> None:
        import asyncpg  # type: ignore[import-untyped]

        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                """CREATE FUNCTION acc_wh.poison() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN RAISE EXCEPTION 'poisoned row'; END $$;
                CREATE TRIGGER poison BEFORE INSERT ON acc_wh.acc_journal
                FOR EACH ROW WHEN (NEW.name = 'poison') EXECUTE FUNCTION acc_wh.poison();"""
            )
        finally:
            await conn.close()

    return Backend("postgres", make_postgres, durable=True, grouped=True, poison=poison_postgres)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    s: Store = backend.make()
    await s.open()
    try:
        yield s
    finally:
        await s.close()
