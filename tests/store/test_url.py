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


def test_postgres_schema_and_pool_come_out_of_the_url_and_the_rest_stays() -> None:
    from accompanist.store.postgres import PostgresStore
    from accompanist.store.url import open_store

    store = open_store("postgresql://u:pw@db:5432/shop?sslmode=require&schema=shop_payment&pool_max=3", "payment")
    assert isinstance(store, PostgresStore)
    assert store.schema == "shop_payment"
    assert store.dsn == "postgresql://u:pw@db:5432/shop?sslmode=require"  # the driver never sees ours
    assert store._max_pool == 3
    default = open_store("postgresql://u@db/shop", "payment", max_pool=6)
    assert isinstance(default, PostgresStore)
    assert (default.schema, default._max_pool) == ("acc_payment", 6)


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ("schema=Payment", "not a plain PostgreSQL name"),
        ("schema=pg_pay", "not a plain PostgreSQL name"),
        ("schema=1pay", "not a plain PostgreSQL name"),
        ("schema=" + "x" * 64, "not a plain PostgreSQL name"),
        ("schema=a;drop", "not a plain PostgreSQL name"),
        ("schema=", "schema is empty"),
        ("schema=a&schema=b", "schema is given twice"),
        ("pool_max=1", "pool_max must be an integer from 2"),
        ("pool_max=many", "pool_max must be an integer from 2"),
        ("pool_max=1001", "pool_max must be an integer from 2"),
    ],
)
def test_bad_postgres_options_are_named_at_config_time(query: str, why: str) -> None:
    import accompanist as ac

    with pytest.raises(ConfigError, match=why):
        ac.SidecarConfig(role="payment", mode="fault-tolerant", store=f"postgresql://u@db/shop?{query}")
