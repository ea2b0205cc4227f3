"""Where a session is read from: a running sidecar's API, or a store after the fact.

Why one protocol: the commands, the web view and the demo ask the same three questions (which
sessions, one session's record, its steps) of running sidecars and of stores left behind, and
get the API's JSON shapes either way. A store is only read (never written), and opened once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

from accompanist.engine.upgrades import stored_report
from accompanist.errors import AccompanistError
from accompanist.failure import Failure
from accompanist.inspection.steps import StoreRows, iso, role_steps
from accompanist.inspection.view import SessionView, build_view
from accompanist.language.choreography import App
from accompanist.store.base import SessionRecord, Store

__all__ = ["HttpSource", "Source", "StoreSource", "collect_sessions", "session_view"]


class Source(Protocol):
    """One role's view of sessions: a sidecar or a store."""

    @property
    def name(self) -> str:
        """What it is, for messages (a URL or ``ROLE=URL``)."""

    async def sessions(self, status: str | None, limit: int) -> list[dict[str, Any]]:
        """Its sessions (newest first) as ``GET /sessions`` lists them."""

    async def session(self, session_id: str) -> dict[str, Any] | None:
        """One session as ``GET /sessions/{id}`` shows it, or None."""

    async def steps(self, session_id: str) -> dict[str, Any] | None:
        """One session's steps as ``GET /sessions/{id}/steps`` shows them, or None."""

    async def close(self) -> None:
        """Release what it holds (an HTTP session, an open store)."""


class HttpSource:
    """A running sidecar, over its service-facing API.

    Args:
        url: the API's base URL (``http://127.0.0.1:8001``), or ``unix:/path/api.sock`` for an
            API on a Unix socket.
        token: the API token, when the sidecar requires one.
        timeout: seconds one request may take.
    """

    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._socket = url.removeprefix("unix:") if url.startswith("unix:") else None
        self._base = "http://sidecar" if self._socket else self.url
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = timeout
        self._http: Any = None

    @property
    def name(self) -> str:
        """The URL."""
        return self.url

    async def _get(self, path: str) -> Any:
        import aiohttp

        if self._http is None:
            connector = aiohttp.UnixConnector(path=self._socket) if self._socket else None
            self._http = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=self._timeout))
        try:
            async with self._http.get(self._base + path, headers=self._headers) as r:
                body = await r.json(content_type=None)
                if r.status == 404 and isinstance(body, dict) and body.get("code") == "unknown-session":
                    return None
                if r.status != 200:
                    what = body.get("error", body) if isinstance(body, dict) else body
                    raise AccompanistError(f"{self.url}{path}: {r.status} {what}")
                return body
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise AccompanistError(f"cannot read {self.url}{path}: {type(exc).__name__}: {exc}") from None

    async def versions(self) -> dict[str, Any]:
        """``GET /versions``: what it and its peers serve, and what unfinished sessions need."""
        found: dict[str, Any] = await self._get("/versions")
        return found

    async def sessions(self, status: str | None, limit: int) -> list[dict[str, Any]]:
        """``GET /sessions``."""
        query = f"?limit={limit}" + (f"&status={status}" if status else "")
        return list((await self._get("/sessions" + query))["sessions"])

    async def session(self, session_id: str) -> dict[str, Any] | None:
        """``GET /sessions/{id}``."""
        found: dict[str, Any] | None = await self._get(f"/sessions/{session_id}")
        return found

    async def steps(self, session_id: str) -> dict[str, Any] | None:
        """``GET /sessions/{id}/steps``."""
        found: dict[str, Any] | None = await self._get(f"/sessions/{session_id}/steps")
        return found

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._http is not None:
            await self._http.close()
            self._http = None


def record_json(record: SessionRecord) -> dict[str, Any]:
    """A stored record as the API shows it, without the app (the result is not decoded)."""
    failure = Failure.decode(record.failure).to_json() if record.failure else None
    return {
        "session_id": record.session_id,
        "choreography": record.choreography,
        "version": record.version,
        "role": record.role,
        "status": record.status,
        "result": None,
        "error": record.error,
        "failure": failure,
        "attempts": record.attempts,
        "created_at": iso(record.created_at),
        "updated_at": iso(record.updated_at),
    }


class StoreSource:
    """A role's store, read after the fact (a post-mortem): opened once, never written.

    Args:
        spec: ``ROLE=STORE_URL`` (``a=sqlite:///a.db``, ``a=postgresql://...``).

    Raises:
        AccompanistError: ``spec`` is not ``ROLE=URL``.
    """

    def __init__(self, spec: str) -> None:
        role, sep, url = spec.partition("=")
        if not sep or not role or not url:
            raise AccompanistError(f"--store takes ROLE=STORE_URL, got {spec!r}")
        self.role, self.url = role, url
        self._store: Store | None = None
        self._lock = asyncio.Lock()

    @property
    def name(self) -> str:
        """``ROLE=URL``."""
        return f"{self.role}={self.url}"

    async def _open(self) -> Store:
        async with self._lock:
            if self._store is None:
                from accompanist.store.url import open_store

                store = open_store(self.url, self.role)
                await store.open()
                self._store = store
            return self._store

    async def versions(self, app: App | None = None) -> dict[str, Any]:
        """Unfinished sessions per version, as the store says (see ``engine.upgrades``)."""
        store = await self._open()
        return stored_report(self.role, await store.nonterminal_sessions(), app)

    async def sessions(self, status: str | None, limit: int) -> list[dict[str, Any]]:
        """The store's sessions."""
        store = await self._open()
        return [record_json(r) for r in await store.list_sessions(status, limit)]

    async def session(self, session_id: str) -> dict[str, Any] | None:
        """One stored session."""
        record = await (await self._open()).get_session(session_id)
        return record_json(record) if record is not None else None

    async def steps(self, session_id: str) -> dict[str, Any] | None:
        """One session's steps from the journal, transaction log, inbox and outbox."""
        store = await self._open()
        record = await store.get_session(session_id)
        if record is None:
            return None
        rows = StoreRows(
            await store.journal_load(session_id),
            await store.txlog_load(session_id),
            await store.inbox_load(session_id),
            await store.outbox_load(session_id),
        )
        return role_steps(record, rows=rows)

    async def close(self) -> None:
        """Close the store."""
        if self._store is not None:
            await self._store.close()
            self._store = None


async def collect_sessions(
    sources: Sequence[Source], status: str | None = None, limit: int = 100
) -> dict[str, dict[str, dict[str, Any]]]:
    """Every source's sessions, by session id and then by role (all sources read at once)."""
    answers = await asyncio.gather(*(s.sessions(status, limit) for s in sources))
    by_session: dict[str, dict[str, dict[str, Any]]] = {}
    for answer in answers:
        for record in answer:
            by_session.setdefault(record["session_id"], {})[record["role"]] = record
    return by_session


async def session_view(sources: Sequence[Source], session_id: str) -> SessionView | None:
    """One session across every source, merged (None if no source knows it)."""

    async def one(source: Source) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        record = await source.session(session_id)
        return record, (await source.steps(session_id) if record is not None else None)

    found = await asyncio.gather(*(one(s) for s in sources))
    records = {r["role"]: r for r, _ in found if r is not None}
    if not records:
        return None
    steps = {r["role"]: s for r, s in found if r is not None}
    return build_view(session_id, records, steps)
