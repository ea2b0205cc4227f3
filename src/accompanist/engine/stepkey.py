"""The stable key of the local step being run, for idempotent service calls."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

__all__ = ["StepKey", "current_step"]


@dataclass(frozen=True, slots=True)
class StepKey:
    """Identifies one local step of one session at one role, the same on every replay.

    Pass ``str(key)`` to a service as an idempotency key so that a step re-run after a crash
    does not repeat its effect.
    """

    session_id: str
    role: str
    step: int

    def __str__(self) -> str:
        return f"{self.session_id}/{self.role}/{self.step}"


_CURRENT: contextvars.ContextVar[StepKey | None] = contextvars.ContextVar("accompanist_step", default=None)


def current_step() -> StepKey | None:
    """The key of the local step running now (inside ``ch.locally`` in a sidecar), or None."""
    return _CURRENT.get()


def set_current_step(key: StepKey | None) -> contextvars.Token[StepKey | None]:
    """Set the running step's key (the session engine does this around each local step)."""
    return _CURRENT.set(key)


def reset_current_step(token: contextvars.Token[StepKey | None]) -> None:
    """Undo :func:`set_current_step`."""
    _CURRENT.reset(token)
