"""``open_store``: a store from a URL, as sidecar configs and the CLI name it.

Accepted forms::

    memory:                                  in-process, not durable (default mode)
    sqlite:///relative/path.db               relative to the working directory
    sqlite:///./relative/path.db             the same, spelled explicitly
    sqlite:////absolute/path.db              an absolute path (four slashes)
    postgresql://user:pass@host:port/dbname  PostgreSQL (also postgres://)

A PostgreSQL URL may carry two options of ours, taken out before the URL reaches the driver
(every other query parameter, ``sslmode=require`` say, goes to it unchanged)::

    ?schema=NAME      the schema holding this role's tables (default ``acc_<role>``)
    ?pool_max=N       at most N connections from this sidecar (default 4, at least 2)

Why in the URL: the same URL then reaches the same tables from a sidecar and from
``accompanist sessions --store ROLE=URL``, and one ``ACCOMPANIST_STORE`` says it all.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from accompanist.errors import ConfigError
from accompanist.store.base import Store
from accompanist.store.group_commit import DEFAULT_MAX_BATCH, DEFAULT_MAX_DELAY

__all__ = ["ACCEPTED_FORMS", "DEFAULT_POOL_MAX", "PostgresURL", "open_store", "parse_postgres_url"]

ACCEPTED_FORMS = (
    "memory:",
    "sqlite:///relative/path.db",
    "sqlite:////absolute/path.db",
    "postgresql://user:password@host:port/database[?schema=NAME&pool_max=N] (or postgres://)",
)

DEFAULT_POOL_MAX = 4
"""Connections one sidecar opens to PostgreSQL at most, unless its URL says ``pool_max``."""

_MIN_POOL_MAX = 2  # the group committer's one, and one for reads and atomic scopes
_MAX_POOL_MAX = 1000
# A name PostgreSQL accepts unquoted and would not fold, and not one of its reserved ``pg_*``.
_SCHEMA = re.compile(r"(?!pg_)[a-z_][a-z0-9_]{0,62}")


@dataclass(frozen=True)
class PostgresURL:
    """A PostgreSQL store URL taken apart.

    Attributes:
        dsn: the URL for the driver: ours options removed, every other one kept.
        schema: the schema the URL names, or None for the default (``acc_<role>``).
        pool_max: the most connections the URL allows, or None for the default.
    """

    dsn: str
    schema: str | None
    pool_max: int | None


def parse_postgres_url(url: str) -> PostgresURL:
    """Take ``?schema=`` and ``?pool_max=`` out of a PostgreSQL URL, checking them.

    Raises:
        ConfigError: a malformed URL or port, an option given twice or empty, a schema name
            PostgreSQL would fold or refuse, or a ``pool_max`` that is not an integer in 2..1000.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError as exc:
        raise _bad(url, str(exc)) from None
    if not url.partition(":")[2].startswith("//"):
        raise _bad(url, "a PostgreSQL URL starts with postgresql://")
    kept: list[tuple[str, str]] = []
    ours: dict[str, str] = {}
    for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if key not in ("schema", "pool_max"):
            kept.append((key, value))
            continue
        if key in ours:
            raise _bad(url, f"{key} is given twice")
        if not value:
            raise _bad(url, f"{key} is empty")
        ours[key] = value
    schema = ours.get("schema")
    if schema is not None and not _SCHEMA.fullmatch(schema):
        raise _bad(
            url,
            f"schema {schema!r} is not a plain PostgreSQL name: lowercase letters, digits and _, "
            "not starting with a digit or pg_, at most 63 characters",
        )
    pool_max = None
    if "pool_max" in ours:
        text = ours["pool_max"]
        if not text.isdigit() or not _MIN_POOL_MAX <= int(text) <= _MAX_POOL_MAX:
            raise _bad(
                url,
                f"pool_max must be an integer from {_MIN_POOL_MAX} to {_MAX_POOL_MAX} (one connection commits, "
                f"the others read), got {text!r}",
            )
        pool_max = int(text)
    dsn = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(kept)))
    return PostgresURL(dsn, schema, pool_max)


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
    max_pool: int = DEFAULT_POOL_MAX,
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
        max_pool: PostgreSQL pool size at most (a ``pool_max`` in the URL wins).

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
        parsed = parse_postgres_url(url)
        try:
            from accompanist.store.postgres import PostgresStore
        except ImportError as exc:  # asyncpg is an optional extra
            raise ConfigError(f"store URL {url!r} needs asyncpg: pip install 'accompanist[postgres]' ({exc})") from None
        pool_max = parsed.pool_max or max_pool
        return PostgresStore(
            parsed.dsn,
            role,
            schema=parsed.schema,
            min_pool=min(min_pool, pool_max),
            max_pool=pool_max,
            group_delay=group_delay,
            group_max_batch=group_max_batch,
        )
    raise _bad(url, f"unknown scheme {scheme!r}")
