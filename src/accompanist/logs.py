"""Structured logs: one line per session event, readable as text or as JSON.

Why: a session is spread over many sidecars, and an operator greps or ships their logs to
follow it. Every event a session goes through (start, replay, park, a step's failure, its
outcome) is logged once, by the engine, on the ``accompanist.sessions`` logger, with the same
fields everywhere (session id, role, choreography, version, event, status, failure), so a
log shipper can index them. ``--log-format json`` prints each record as one JSON object with
those fields at the top level; the text format keeps them in the message.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

__all__ = ["SESSION_LOGGER", "JsonFormatter", "session_event"]

SESSION_LOGGER = "accompanist.sessions"
_FIELDS = "accompanist"


def session_event(
    logger: logging.Logger,
    event: str,
    *,
    session_id: str,
    role: str,
    choreography: str,
    version: int,
    level: int = logging.INFO,
    **fields: Any,
) -> None:
    """Log one session event (nothing is built when the level is off: this is on the hot path)."""
    if not logger.isEnabledFor(level):
        return
    data = {
        "event": event,
        "session_id": session_id,
        "role": role,
        "choreography": choreography,
        "version": version,
        **{k: v for k, v in fields.items() if v is not None},
    }
    details = " ".join(f"{k}={v}" for k, v in data.items() if k not in ("event", "session_id"))
    logger.log(level, "session %s %s (%s)", session_id, event, details, extra={_FIELDS: data})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and a session event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, _FIELDS, None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)
