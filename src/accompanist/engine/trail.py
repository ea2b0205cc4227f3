"""What one role's sessions did, step by step, kept in memory for ``GET /sessions/{id}/steps``.

Why it is this small: it sits on the engine's hot path. A live step appends one tuple to its
session's list: the :class:`~accompanist.language.steps.Step` the projection made anyway, the
two ``perf_counter`` readings taken anyway for ``accompanist_step_seconds``, the value (or the
exception) by reference, and the commit attempts of a transaction. Nothing is encoded, copied,
formatted or written to the store; wall-clock times, value summaries and the JSON are made
only when someone asks (:mod:`accompanist.inspection.steps`). Replayed steps are not recorded
here (they did not run again): their record is the store's journal.

Trails outlive their runs (a session parks, resumes, ends) and are kept for the most recent
sessions only, so a busy sidecar's memory stays bounded; older sessions are read from the
store in fault-tolerant mode.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from accompanist.language.steps import Step

__all__ = ["Compensation", "Entry", "Trail", "Trails"]

Entry = tuple[Step, float, float, Any, int]
"""``(step, began, ended, value or exception, attempts)``; times are ``time.perf_counter()``."""

Compensation = tuple[str, str, int, float, float, int]
"""``(transaction name, idempotency key, step, began, ended, attempts)`` of one compensation."""


class Trail:
    """The live steps of one session at this role, in the order they ran.

    Attributes:
        entries: one :data:`Entry` per live step that ended (or failed, or parked).
        current: the live step running now (a receive: the role waits there), or None.
        since: when ``current`` began (``perf_counter``).
        undone: the compensations this process ran, in order.
    """

    __slots__ = ("current", "entries", "since", "undone")

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.current: Step | None = None
        self.since = 0.0
        self.undone: list[Compensation] = []


class Trails:
    """The trails of the sessions this engine ran, the most recent ``keep`` of them.

    Args:
        keep: how many sessions' trails are kept at most (the oldest go first).
    """

    def __init__(self, keep: int) -> None:
        self.keep = max(1, keep)
        self._by_session: OrderedDict[str, Trail] = OrderedDict()

    def attach(self, session_id: str) -> Trail:
        """The session's trail, made when the session first runs here (once per run, not per step)."""
        trail = self._by_session.get(session_id)
        if trail is None:
            trail = self._by_session[session_id] = Trail()
            if len(self._by_session) > self.keep:
                self._by_session.popitem(last=False)
        return trail

    def get(self, session_id: str) -> Trail | None:
        """The session's trail, if it is still kept."""
        return self._by_session.get(session_id)

    def __len__(self) -> int:
        return len(self._by_session)
