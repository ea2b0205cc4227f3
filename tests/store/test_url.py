"""open_store: URLs to stores, and clear errors for bad ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from accompanist.errors import ConfigError
from accompanist.store.memory import MemoryStore
from accompanist.store.sqlite import SQLiteStore


def test_memory() -> None:
    from accompanist.store.url import open_store

    store = open_store("memory:", "wh", synchronous="NORMAL")
    assert isinstance(store, MemoryStore) and store.role == "wh"


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///wh.db", "wh.db"),
        ("sqlite:///./data/wh.db", "data/wh.db"),
        ("sqlite:////var/lib/acc/wh.db", "/var/lib/acc/wh.db"),
        ("SQLITE:///my%20store.db", "my store.db"),
    ],
)
def test_sqlite(url: str, path: str) -> None:
    from accompanist.store.url import open_store

    store = open_store(url, "wh", synchronous="normal")
    assert isinstance(store, SQLiteStore)
    assert store.path == Path(path)


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_postgres(scheme: str) -> None:
    from accompanist.store.postgres import PostgresStore
    from accompanist.store.url import open_store

    store = open_store(f"{scheme}://u:pw@db.example:5433/acc", "pay", synchronous="FULL", max_pool=8)
    assert isinstance(store, PostgresStore)
    assert store.schema == "acc_pay"
    assert "pw" not in repr(store)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("", "empty"),
        ("wh.db", "no scheme"),
        ("mysql://localhost/db", "unknown scheme 'mysql'"),
        ("sqlite://wh.db", "three slashes"),
        ("sqlite:///", "no file name"),
        ("sqlite:///data/", "no file name"),
        ("sqlite:///wh.db?mode=ro", "no query"),
        ("memory:/x", "no path"),
        ("postgresql://host:notaport/db", "port"),
        ("postgresql:db", "postgresql://"),
    ],
)
def test_bad_urls(url: str, why: str) -> None:
    from accompanist.store.url import open_store

    with pytest.raises(ConfigError, match=why) as info:
        open_store(url, "wh")
    message = str(info.value)
    assert repr(url) in message and "sqlite:///relative/path.db" in message and "memory:" in message


def test_bad_option() -> None:
    from accompanist.store.url import open_store

    with pytest.raises(ConfigError, match="synchronous"):
        open_store("sqlite:///wh.db", "wh", synchronous="SOMETIMES")
