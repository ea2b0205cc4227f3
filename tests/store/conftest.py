"""One contract, every store: the ``backend`` fixture builds stores of each kind."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
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

        return Backend("sqlite", make_sqlite, durable=True, grouped=True)
    dsn = request.getfixturevalue("postgres_dsn")
    from accompanist.store.postgres import PostgresStore

    def make_postgres(role: str = "wh", **opts: Any) -> PostgresStore:
        return PostgresStore(dsn, role, **opts)

    return Backend("postgres", make_postgres, durable=True, grouped=True)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    s: Store = backend.make()
    await s.open()
    try:
        yield s
    finally:
        await s.close()
