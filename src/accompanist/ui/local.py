"""The web view's source for the sidecar that serves it: its own engine, read in process.

Why not over HTTP: the sidecar's API may require a token the browser does not send, and the
engine is right here; the answers have the API's shapes all the same.
"""

from __future__ import annotations

from typing import Any

from accompanist.engine.engine import Engine
from accompanist.inspection.engine_steps import steps_of
from accompanist.sidecar.api import record_json

__all__ = ["EngineSource"]


class EngineSource:
    """An engine in this process, as a :class:`~accompanist.inspection.sources.Source`.

    Args:
        engine: the sidecar's engine.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def name(self) -> str:
        """``this sidecar (ROLE)``."""
        return f"this sidecar ({self.engine.role})"

    async def sessions(self, status: str | None, limit: int) -> list[dict[str, Any]]:
        """The engine's sessions, newest first."""
        engine = self.engine
        records = await engine.guard.once(lambda: engine.store.list_sessions(status, limit))
        return [record_json(engine, r) for r in records]

    async def session(self, session_id: str) -> dict[str, Any] | None:
        """One session's record."""
        record = await self.engine.get(session_id)
        return record_json(self.engine, record) if record is not None else None

    async def steps(self, session_id: str) -> dict[str, Any] | None:
        """One session's steps."""
        return await steps_of(self.engine, session_id)

    async def close(self) -> None:
        """Nothing to release: the sidecar owns the engine."""
