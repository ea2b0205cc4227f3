"""The fault campaign's app, in a sidecar whose engine fails unexpectedly on one session id.

``GET /sessions/boom-internal`` raises a ``RuntimeError`` inside the engine (a stand-in for
any bug), so a test can see what the API answers a failure that is nobody's fault but the
sidecar's: JSON 500 ``{"code": "internal"}``, logged once with its traceback.
"""

from __future__ import annotations

from typing import Any

from accompanist.engine.engine import Engine
from tests.faults.faultapp import app

__all__ = ["BOOM", "app"]

BOOM = "boom-internal"

_get = Engine.get


async def _get_or_fail(self: Engine, session_id: str) -> Any:
    """``Engine.get``, but a bug for :data:`BOOM`."""
    if session_id == BOOM:
        raise RuntimeError("an injected bug in the engine")
    return await _get(self, session_id)


Engine.get = _get_or_fail  # type: ignore[method-assign]
