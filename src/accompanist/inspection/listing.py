"""Sessions across roles, filtered and summed up: what ``accompanist sessions`` and the web
view's table show.

Why apart from the command: the web view's table must say exactly what the command says, with
the same filters and the same counts.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from accompanist.inspection.view import agreement, seconds

__all__ = ["filter_sessions", "session_counts", "updated_of"]


def updated_of(roles: dict[str, dict[str, Any]]) -> float:
    """When any role last updated the session (UNIX seconds)."""
    return max((seconds(r.get("updated_at")) or 0.0) for r in roles.values())


def _created(roles: dict[str, dict[str, Any]]) -> float:
    return min((seconds(r.get("created_at")) or 0.0) for r in roles.values())


def filter_sessions(
    by_session: dict[str, dict[str, dict[str, Any]]],
    *,
    status: str | None = None,
    choreography: str | None = None,
    since: float | None = None,
    until: float | None = None,
) -> list[tuple[str, dict[str, dict[str, Any]]]]:
    """The sessions that pass the filters, most recently updated first.

    A session passes ``status`` when some role has it, ``since`` when some role updated it at or
    after that time, and ``until`` when it was created at or before that time.
    """

    kept = []
    for sid, roles in by_session.items():
        first = next(iter(roles.values()))
        if choreography is not None and first["choreography"] != choreography:
            continue
        if status is not None and all(r["status"] != status for r in roles.values()):
            continue
        if since is not None and updated_of(roles) < since:
            continue
        if until is not None and _created(roles) > until:
            continue
        kept.append((sid, roles))
    kept.sort(key=lambda kv: updated_of(kv[1]), reverse=True)
    return kept


def session_counts(rows: list[tuple[str, dict[str, dict[str, Any]]]]) -> dict[str, int]:
    """How many sessions ended with each outcome (where every role agrees), how many are in
    progress, and how many ended differently at different roles (``disagree``)."""
    counts: Counter[str] = Counter()
    for _, roles in rows:
        agree = agreement([r["status"] for r in roles.values()])
        if agree == "yes":
            counts[str(next(iter(roles.values()))["status"])] += 1
        else:
            counts["in progress" if agree == "in progress" else "disagree"] += 1
    return dict(sorted(counts.items()))
