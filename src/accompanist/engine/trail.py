"""What one role's sessions did, step by step, kept in memory for ``GET /sessions/{id}/steps``.

Why it is built this way: it sits on the engine's hot path. A live step extends its session's
flat list by five items: the :class:`~accompanist.language.steps.Step` the projection made
anyway, the two ``perf_counter`` readings taken anyway for ``accompanist_step_seconds``, the
value by reference (or, on the error path only, what went wrong, without its traceback), and the
commit attempts of a transaction. Nothing is encoded, copied, formatted or written to the store
while the session runs, and nothing is allocated that outlives the step but the list's growth;
wall-clock times, value summaries and the JSON are made only when someone asks
(:mod:`accompanist.inspection.steps`). Replayed steps are not recorded here (they did not run
again): their record is the store's journal.

When a session's projection stops here (it finished, failed or parked) its trail is *sealed*
into one flat tuple of plain strings and numbers, which the garbage collector stops tracking:
measured, every object a session kept after its end made every session dearer in CPU, all of
it in collections. A value that is not a small atom (a dict, a dataclass) is then shown by its
type only: summing it up at the end of every session would cost more CPU than the step itself;
in fault-tolerant mode the store still has every value, and the steps answer summarizes it
from there. Trails outlive their runs (a session parks, resumes, ends) and are kept for the
most recent sessions only; older sessions are read from the store in fault-tolerant mode.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from accompanist.errors import TransactionFailedError

__all__ = ["LIVE", "SEALED", "Compensation", "Raised", "Sealed", "TrailView", "Trails", "raised", "sealed_entry"]

LIVE = 5
"""Items per step in a live trail: ``step, began, ended, value or Raised, attempts`` (times
are ``time.perf_counter()``)."""

SEALED = 14
"""Items per step in a sealed trail (see :data:`Sealed`)."""

Compensation = tuple[str, str, int, float, float, int]
"""``(transaction name, idempotency key, step, began, ended, attempts)`` of one compensation."""

Sealed = tuple[int, str, str, str | None, str | None, int | None, str, float, float, Any, bool, int, str | None, str]
"""``(index, kind, name, src, dst, seq, message kind, began, ended, value, summed, attempts,
how it ended, why)``: one step in plain data; ``how it ended`` is None (done), ``parked``,
``stopped`` or ``failed``; ``value`` is the value itself when it is a small atom (a number, a
short string), else (``summed``) its summary or type (``<dict>``)."""

_ATOMS = frozenset({int, float, bool, str, type(None)})
_LONG = 80


class Raised:
    """How a step ended when it raised: ``parked``, ``stopped`` or ``failed``, and why.

    Kept instead of the exception, whose traceback would keep the session's frames alive.
    """

    __slots__ = ("how", "why")

    def __init__(self, how: str, why: str) -> None:
        self.how = how
        self.why = why


def raised(exc: BaseException) -> Raised:
    """What the trail keeps of a step that raised ``exc`` (the error path only)."""
    name = type(exc).__name__
    if name == "Park":
        return Raised("parked", str(exc))
    if name in ("SessionStopped", "CancelledError"):  # decided elsewhere, or the sidecar stopped
        return Raised("stopped", "")
    if isinstance(exc, TransactionFailedError):
        return Raised("failed", exc.reason)
    text = str(exc)
    return Raised("failed", f"{name}: {text}" if text else name)


def _plain(value: Any) -> str:
    """A value that is not a small atom, in a few characters and at no real cost."""
    if type(value) is str:
        return repr(value[:_LONG]) + "…"
    if type(value) in (bytes, bytearray):
        return f"<{len(value)} bytes>"
    return f"<{type(value).__name__}>"


def sealed_entry(live: tuple[Any, ...] | list[Any], summarize: Any = None) -> Sealed:
    """One live step (its :data:`LIVE` items) in plain data: a value is kept if it is a small
    atom, else replaced by ``summarize(value)`` or, by default, by its type (``<dict>``)."""
    step, began, ended, outcome, attempts = live
    how, why, value, summed = None, "", outcome, False
    if isinstance(outcome, Raised):
        how, why, value = outcome.how, outcome.why, None
    elif summarize is not None:
        value, summed = summarize(outcome), True
    elif type(outcome) not in _ATOMS or (type(outcome) is str and len(outcome) > _LONG):
        value, summed = _plain(outcome), True
    return (
        step.index, str(step.kind), step.name, step.src, step.dst, step.seq, step.msg_kind,
        began, ended, value, summed, attempts, how, why,
    )  # fmt: skip


@dataclass(frozen=True)
class TrailView:
    """A session's trail as read (never as the engine writes it).

    Attributes:
        steps: each step, sealed or live (:data:`LIVE` items), in the order they ran.
        undone: the compensations this process ran, in order.
    """

    steps: list[tuple[Any, ...]]
    undone: tuple[Compensation, ...]

    def sealed(self, summarize: Any = None) -> list[Sealed]:
        """Every step in plain data (live values summed up by ``summarize``)."""
        return [s if len(s) == SEALED else sealed_entry(s, summarize) for s in self.steps]


class Trails:
    """The trails of the sessions this engine ran, the most recent ``keep`` of them.

    Args:
        keep: how many sessions' trails are kept at most (the oldest go first; 0: none).
    """

    def __init__(self, keep: int) -> None:
        self.keep = max(0, keep)
        self._by_session: OrderedDict[str, list[Any] | tuple[Any, ...]] = OrderedDict()
        self._undone: dict[str, tuple[Compensation, ...]] = {}  # only sessions that compensated here

    def attach(self, session_id: str) -> list[Any]:
        """The session's live trail, to extend (once per run, not per step)."""
        found = self._by_session.get(session_id)
        if isinstance(found, list):
            return found
        trail: list[Any] = []
        if not self.keep:  # nothing is kept: the run writes its steps where nobody reads them
            return trail
        if found is not None:  # a run of a session whose earlier run was sealed (it parked)
            trail.append(found)  # one sealed chunk, kept whole until the next seal
        self._by_session[session_id] = trail
        if len(self._by_session) > self.keep:
            gone, _ = self._by_session.popitem(last=False)
            self._undone.pop(gone, None)
        return trail

    def seal(self, session_id: str) -> None:
        """The session's projection stopped here (it finished, failed or parked): keep its
        trail as one flat tuple of plain data (see the module's docstring)."""
        trail = self._by_session.get(session_id)
        if isinstance(trail, list):
            self._by_session[session_id] = tuple(_sealed_items(trail))

    def note_undone(self, session_id: str, compensation: Compensation) -> None:
        """One compensation ran here (the saga failed)."""
        if session_id in self._by_session:
            self._undone[session_id] = (*self._undone.get(session_id, ()), compensation)

    def get(self, session_id: str) -> TrailView | None:
        """The session's trail, if it is still kept."""
        found = self._by_session.get(session_id)
        if found is None:
            return None
        steps: list[tuple[Any, ...]] = []
        live = found
        if isinstance(found, tuple):
            steps, live = _chunks(found, SEALED), []
        elif found and isinstance(found[0], tuple):  # sealed by an earlier run, then live again
            steps, live = _chunks(found[0], SEALED), found[1:]
        steps += _chunks(tuple(live), LIVE)
        return TrailView(steps, self._undone.get(session_id, ()))

    def __len__(self) -> int:
        return len(self._by_session)


def _chunks(flat: tuple[Any, ...], width: int) -> list[tuple[Any, ...]]:
    return [flat[i : i + width] for i in range(0, len(flat), width)]


def _sealed_items(trail: list[Any] | tuple[Any, ...]) -> list[Any]:
    """The flat sealed items of a trail: a sealed chunk first (if a resumed run), then the live steps."""
    if isinstance(trail, tuple):
        return list(trail)
    items: list[Any] = []
    start = 0
    if trail and isinstance(trail[0], tuple):  # the chunk sealed by an earlier run
        items.extend(trail[0])
        start = 1
    for i in range(start, len(trail), LIVE):
        items.extend(sealed_entry(trail[i : i + LIVE]))
    return items
