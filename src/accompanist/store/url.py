"""``open_store``: a store from a URL, as sidecar configs and the CLI name it.

Accepted forms::

    memory:                                  in-process, not durable (default mode)
    sqlite:///relative/path.db               relative to the working directory
    sqlite:///./relative/path.db             the same, spelled explicitly
    sqlite:////absolute/path.db              an absolute path (four slashes)
    postgresql://user:pass@host:port/dbname  PostgreSQL (also postgres://)
"""

from __future__ import annotations

import urllib.parse

from accompanist.errors import ConfigError
from accompanist.store.base import Store
from accompanist.store.group_commit import DEFAULT_MAX_BATCH, DEFAULT_MAX_DELAY

__all__ = ["ACCEPTED_FORMS", "open_store"]

ACCEPTED_FORMS = (
    "memory:",
    "sqlite:///relative/path.db",
    "sqlite:////absolute/path.db",
    "postgresql://user:password@host:port/database (or postgres://)",
)


def _bad(url: str, why: str) -> ConfigError:
    forms = ", ".join(ACCEPTED_FORMS)
    return ConfigError(f"bad store URL {url!r}: {why}. Accepted forms: {forms}")


def open_store(
    url: str,
    role: str,
    *,
    synchronous: str = "FULL",
    group_delay: float = DEFAULT_MAX_DELAY,
    group_max_batch: int = DEFAULT_MAX_BATCH,
    busy_timeout: float = 5.0,
    min_pool: int = 1,
    max_pool: int = 4,
) -> Store:
    """Build (not open) the store ``url`` names, for ``role``; call ``await store.open()`` next.

    Options that do not apply to the URL's kind of store are ignored (``synchronous`` means
    nothing to PostgreSQL), so one sidecar config can switch stores by URL alone.

    Args:
        url: see the module docstring.
        role: the role whose state the store holds.
        synchronous: SQLite durability level (``FULL``, ``NORMAL``, ``OFF``).
        group_delay: group commit ``max_delay`` in seconds (SQL stores).
        group_max_batch: group commit ``max_batch`` (SQL stores).
        busy_timeout: SQLite lock wait in seconds.
        min_pool: PostgreSQL pool size at start.
        max_pool: PostgreSQL pool size at most.

    Raises:
        ConfigError: the URL is malformed or of an unknown kind, or an option is invalid.
    """
    if not isinstance(url, str) or not url.strip():
        raise _bad(str(url), "it is empty")
    url = url.strip()
    scheme, sep, rest = url.partition(":")
    scheme = scheme.lower()
    if not sep:
        raise _bad(url, "it has no scheme")
    if scheme == "memory":
        if rest.strip("/"):
            raise _bad(url, "a memory store takes no path")
        from accompanist.store.memory import MemoryStore

        return MemoryStore(role)
    if scheme == "sqlite":
        if not rest.startswith("///"):
            raise _bad(url, "a SQLite URL needs three slashes before the path (sqlite:///path.db)")
        raw, query, _ = rest[3:].partition("?")
        if query:
            raise _bad(url, "SQLite URLs take no query parameters (pass options to the sidecar instead)")
        path = urllib.parse.unquote(raw)
        if not path or path.endswith("/"):
            raise _bad(url, "the SQLite URL has no file name")
        from accompanist.store.sqlite import SQLiteStore

        return SQLiteStore(
            path,
            role,
            synchronous=synchronous,
            group_delay=group_delay,
            group_max_batch=group_max_batch,
            busy_timeout=busy_timeout,
        )
    if scheme in ("postgresql", "postgres"):
        try:
            parts = urllib.parse.urlsplit(url)
            _ = parts.port  # raises ValueError on a malformed port
        except ValueError as exc:
            raise _bad(url, str(exc)) from None
        if not rest.startswith("//"):
            raise _bad(url, "a PostgreSQL URL starts with postgresql://")
        try:
            from accompanist.store.postgres import PostgresStore
        except ImportError as exc:  # asyncpg is an optional extra
            raise ConfigError(f"store URL {url!r} needs asyncpg: pip install 'accompanist[postgres]' ({exc})") from None
        return PostgresStore(
            url, role, min_pool=min_pool, max_pool=max_pool, group_delay=group_delay, group_max_batch=group_max_batch
        )
    raise _bad(url, f"unknown scheme {scheme!r}")
