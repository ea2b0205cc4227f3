"""One session seen from every role at once: the steps of all roles merged in causal order.

Why causal order and not timestamps alone: the roles run on different machines whose clocks
disagree, and steps read back from a store have no times at all. What cannot disagree is
causality: a role's steps happen in their order, and a message is sent before it is received
(matched by ``(src, dst, seq)``). The merge is a topological sort of that order; among the
steps it leaves free, the earlier known time goes first, so a session with good clocks reads
as it ran, and one without still reads as it *could* have run.

:class:`SessionView` is what ``accompanist show``, ``accompanist diagram``, the web view and
``accompanist demo`` draw; :func:`build_view` makes one from the API's answers.
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TERMINAL", "Event", "SessionView", "agreement", "build_view", "seconds"]

TERMINAL = frozenset({"completed", "compensated", "failed", "cancelled"})


def seconds(stamp: str | None) -> float | None:
    """An ISO 8601 time as UNIX seconds (None for None or garbage)."""
    if not stamp:
        return None
    try:
        return dt.datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None


def agreement(statuses: list[str]) -> str:
    """``yes`` when every role ended the same, ``NO`` when they ended differently, else ``in progress``."""
    if any(s not in TERMINAL for s in statuses):
        return "in progress"
    return "yes" if len(set(statuses)) == 1 else "NO"


@dataclass
class Event:
    """One step of one role, at its place in the merged order.

    Attributes:
        role: the role that made the step.
        step: the step as ``GET /sessions/{id}/steps`` shows it.
        pair: for a message, the position of its other end in :attr:`SessionView.events`.
    """

    role: str
    step: dict[str, Any]
    pair: int | None = None

    @property
    def kind(self) -> str:
        """The step's kind (``send``, ``receive``, ``local``, ``transaction``, ``compensation`` ...)."""
        return str(self.step["kind"])

    @property
    def time(self) -> float | None:
        """When the step happened, in UNIX seconds: a receive when it ended (its start is only
        when the role began to wait), any other step when it began (or ended, if that is all
        that is known)."""
        if self.step["kind"] == "receive":
            return seconds(self.step.get("ended_at")) or seconds(self.step.get("started_at"))
        return seconds(self.step.get("started_at")) or seconds(self.step.get("ended_at"))


@dataclass
class SessionView:
    """A session across its roles.

    Attributes:
        session_id: the session.
        choreography: its name (None if no role knows the session).
        version: its version.
        roles: the participants, in the choreography's order where known.
        records: each role's session record as the API shows it (status, failure, times).
        waiting: where each role that has not ended waits now.
        events: every role's steps merged in causal order.
    """

    session_id: str
    choreography: str | None
    version: int | None
    roles: list[str]
    records: dict[str, dict[str, Any]]
    waiting: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)

    @property
    def agree(self) -> str:
        """Whether the roles agree on the outcome (``yes``, ``NO``, ``in progress``)."""
        return agreement([str(r["status"]) for r in self.records.values()])

    @property
    def status(self) -> str:
        """The outcome when every role agrees on it, else ``in progress`` or ``disagreement``."""
        agree = self.agree
        if agree == "yes":
            return str(next(iter(self.records.values()))["status"])
        return "disagreement" if agree == "NO" else "in progress"

    @property
    def failure(self) -> dict[str, Any] | None:
        """The session's failure, as any role recorded it."""
        return next((r["failure"] for r in self.records.values() if r.get("failure")), None)

    @property
    def started(self) -> float | None:
        """The earliest known time of the session (UNIX seconds)."""
        times = [seconds(r.get("created_at")) for r in self.records.values()]
        times += [e.time for e in self.events]
        known = [t for t in times if t is not None]
        return min(known) if known else None

    def to_json(self) -> dict[str, Any]:
        """The view as JSON (what the web view's session page polls)."""
        return {
            "session_id": self.session_id,
            "choreography": self.choreography,
            "version": self.version,
            "roles": self.roles,
            "status": self.status,
            "agree": self.agree,
            "failure": self.failure,
            "records": self.records,
            "waiting": self.waiting,
            "events": [{"role": e.role, "pair": e.pair, **e.step} for e in self.events],
        }


def _merge(steps: Mapping[str, list[dict[str, Any]]], roles: list[str]) -> list[Event]:
    """A topological order of every step: each role's in its order, each send before its receive."""
    rank = {r: i for i, r in enumerate(roles)}
    nodes = {(role, k): Event(role, s) for role, items in steps.items() for k, s in enumerate(items)}
    after: dict[tuple[str, int], list[tuple[str, int]]] = {n: [] for n in nodes}
    needs = dict.fromkeys(nodes, 0)
    receives = {
        (s["peer"], role, s["seq"]): (role, k)
        for (role, k), e in nodes.items()
        if (s := e.step)["kind"] == "receive" and s["seq"] is not None
    }
    sends: dict[tuple[str, int], tuple[str, int]] = {}
    for (role, k), event in nodes.items():
        if (role, k + 1) in nodes:
            after[(role, k)].append((role, k + 1))
            needs[(role, k + 1)] += 1
        s = event.step
        if s["kind"] == "send" and s["seq"] is not None:
            target = receives.get((role, s["peer"], s["seq"]))
            if target is not None:
                after[(role, k)].append(target)
                needs[target] += 1
                sends[target] = (role, k)
    floor: dict[tuple[str, int], float] = {}

    def key(node: tuple[str, int]) -> tuple[float, int, int]:
        own = nodes[node].time
        at = max(floor.get(node, float("-inf")), own if own is not None else float("-inf"))
        floor[node] = at
        return (at, rank.get(node[0], len(rank)), node[1])

    ready = [(key(n), n) for n, count in needs.items() if count == 0]
    heapq.heapify(ready)
    order: list[tuple[str, int]] = []
    while ready:
        _, node = heapq.heappop(ready)
        order.append(node)
        for nxt in after[node]:
            floor[nxt] = max(floor.get(nxt, float("-inf")), floor[node])
            needs[nxt] -= 1
            if needs[nxt] == 0:
                heapq.heappush(ready, (key(nxt), nxt))
    placed = set(order)  # inconsistent answers (a cycle) must not lose steps: the rest in role order
    order += sorted((n for n in nodes if n not in placed), key=lambda n: (rank.get(n[0], len(rank)), n[1]))
    position = {n: i for i, n in enumerate(order)}
    events = [nodes[n] for n in order]
    for receive, send in sends.items():
        events[position[send]].pair = position[receive]
        events[position[receive]].pair = position[send]
    return events


def build_view(
    session_id: str, records: Mapping[str, dict[str, Any]], steps: Mapping[str, dict[str, Any] | None]
) -> SessionView:
    """Merge what each role's sidecar (or store) says of a session into one view.

    Args:
        session_id: the session.
        records: by role, the session as ``GET /sessions/{id}`` answers it.
        steps: by role, ``GET /sessions/{id}/steps`` (None where it is not available).
    """
    known = [s for s in steps.values() if s is not None]
    declared = next((s["roles"] for s in known if s.get("roles")), None)
    roles = list(declared) if declared else []
    for role in records:
        if role not in roles:
            roles.append(role)
    for answer in known:
        for s in answer["steps"]:
            if s.get("peer") and s["peer"] not in roles:
                roles.append(s["peer"])
    taking_part = set(records) | {s["peer"] for a in known for s in a["steps"] if s.get("peer")}
    roles = [r for r in roles if r in taking_part]
    first = next(iter(records.values()), None)
    events = _merge({role: list(a["steps"]) for role, a in steps.items() if a is not None}, roles)
    waiting = {role: a["waiting"] for role, a in steps.items() if a is not None and a.get("waiting")}
    return SessionView(
        session_id=session_id,
        choreography=first["choreography"] if first else None,
        version=first["version"] if first else None,
        roles=roles,
        records=dict(records),
        waiting=waiting,
        events=events,
    )
