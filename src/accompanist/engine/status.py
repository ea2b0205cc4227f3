"""The one table of how a session's status may change at a role.

Two writers of one session's status (its own task finishing, a peer's failure, an operator's
cancel) used to race and leave two truths. Now every change goes through
``Engine.transition``, under the session's lock, and is checked here first: a change the
table does not allow is refused with a clear reason, so the race has one winner.

::

    running ──> parked ──> running              (a receive timed out; the envelope came)
       │  └───> finished ──> completed          (this role's part is done; the initiator agreed)
       │           │
       ├───────────┴──> compensating ──> compensated | failed
       └──> diverged ──> running | compensating | completed

A role may go to ``compensating`` from anywhere before the outcome (a failure decided at the
initiator, or its own); ``compensated`` and ``failed`` are what the initiator then declares.
``diverged`` waits for an operator (cancel, or deploy fixed code and resume).
"""

from __future__ import annotations

from accompanist.errors import TransitionRefusedError
from accompanist.store.base import TERMINAL_STATUSES, SessionStatus

__all__ = ["ALLOWED", "DECIDED", "check_transition", "is_decided"]

S = SessionStatus

ALLOWED: dict[str, frozenset[str]] = {
    S.RUNNING: frozenset({S.PARKED, S.FINISHED, S.COMPENSATING, S.DIVERGED, S.FAILED, S.COMPLETED}),
    S.PARKED: frozenset({S.RUNNING, S.COMPENSATING, S.DIVERGED, S.FAILED}),
    S.FINISHED: frozenset({S.COMPLETED, S.COMPENSATING, S.DIVERGED, S.FAILED}),
    S.DIVERGED: frozenset({S.RUNNING, S.COMPENSATING, S.COMPLETED, S.DIVERGED}),
    S.COMPENSATING: frozenset({S.COMPENSATED, S.FAILED}),
    **{s: frozenset() for s in TERMINAL_STATUSES},
}
"""``ALLOWED[current]``: the statuses a session may move to from ``current``. ``running ->
completed`` is for choreographies declared to skip the outcome round; ``-> failed`` from an
unfinished status is for a default-mode sidecar that stops with sessions still running."""

DECIDED = frozenset({S.COMPENSATING, *TERMINAL_STATUSES})
"""At the initiator, statuses in which the outcome is decided: a cancel comes too late."""


def is_decided(status: str) -> bool:
    """Whether the initiator in ``status`` has decided the session's outcome."""
    return status in DECIDED


def check_transition(session_id: str, current: str, wanted: str) -> None:
    """Refuse a status change the table does not allow.

    Raises:
        TransitionRefusedError: ``current -> wanted`` is not in :data:`ALLOWED`.
    """
    if current == wanted and current != S.DIVERGED:
        raise TransitionRefusedError(session_id, current, wanted, "it has that status already")
    allowed = ALLOWED.get(current)
    if allowed is None:
        raise TransitionRefusedError(session_id, current, wanted, f"unknown status {current!r}")
    if wanted not in allowed:
        raise TransitionRefusedError(session_id, current, wanted)
