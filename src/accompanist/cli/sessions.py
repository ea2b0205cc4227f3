"""``accompanist sessions``: every session across sidecars or stores, one column per role.

Why: one session lives at many sidecars; whether its roles agree is the first question after
anything goes wrong, and the table answers it for many sessions at once.
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from accompanist.cli.targets import (
    ClusterOpt,
    SidecarOpt,
    StoreOpt,
    TokenOpt,
    open_sources,
    parse_time,
    run_reading,
    short_time,
)
from accompanist.errors import AccompanistError
from accompanist.inspection.sources import Source, collect_sessions
from accompanist.inspection.view import agreement, seconds

__all__ = ["filter_sessions", "sessions"]

_FETCH = 10_000  # sessions read per sidecar before the filters apply (the API's largest page)


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

    def updated(roles: dict[str, dict[str, Any]]) -> float:
        return max((seconds(r.get("updated_at")) or 0.0) for r in roles.values())

    def created(roles: dict[str, dict[str, Any]]) -> float:
        return min((seconds(r.get("created_at")) or 0.0) for r in roles.values())

    kept = []
    for sid, roles in by_session.items():
        first = next(iter(roles.values()))
        if choreography is not None and first["choreography"] != choreography:
            continue
        if status is not None and all(r["status"] != status for r in roles.values()):
            continue
        if since is not None and updated(roles) < since:
            continue
        if until is not None and created(roles) > until:
            continue
        kept.append((sid, roles))
    kept.sort(key=lambda kv: updated(kv[1]), reverse=True)
    return kept


def sessions(
    sidecar: SidecarOpt = None,
    store: StoreOpt = None,
    cluster: ClusterOpt = None,
    api_token: TokenOpt = None,
    status: Annotated[str | None, typer.Option(help="Only sessions with this status (at some role).")] = None,
    choreography: Annotated[str | None, typer.Option(help="Only sessions of this choreography.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Only sessions updated since: ISO 8601 time or an age (10m, 2h, 1d).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Only sessions created until: ISO 8601 time or an age.")] = None,
    limit: Annotated[int, typer.Option(help="Show at most this many.")] = 100,
) -> None:
    """List sessions with one status column per role, and whether the roles agree."""
    try:
        since_at = parse_time(since) if since else None
        until_at = parse_time(until) if until else None
    except AccompanistError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None

    async def read(sources: list[Source]) -> dict[str, dict[str, dict[str, Any]]]:
        return await collect_sessions(sources, None, _FETCH)

    by_session = run_reading(lambda: open_sources(sidecar, store, cluster, api_token), read)
    roles: list[str] = []
    for at in by_session.values():
        roles += [r for r in at if r not in roles]
    rows = filter_sessions(by_session, status=status, choreography=choreography, since=since_at, until=until_at)
    counts = Counter(agreement([r["status"] for r in at.values()]) for _, at in rows)
    outcomes = Counter(
        next(iter(at.values()))["status"] for _, at in rows if agreement([r["status"] for r in at.values()]) == "yes"
    )
    summary = ", ".join(f"{n} {s}" for s, n in sorted(outcomes.items()))
    title = f"{len(rows)} sessions" + (f": {summary}" if summary else "")
    if counts["in progress"]:
        title += f", {counts['in progress']} in progress"
    if counts["NO"]:
        title += f", {counts['NO']} DISAGREE"
    table = Table(title=title)
    table.add_column("session", no_wrap=True, min_width=36)
    for column in ("choreography", *roles, "agree", "updated"):
        table.add_column(column, no_wrap=column != "choreography")
    for sid, at in rows[: max(limit, 1)]:
        first = next(iter(at.values()))
        cells = [at[role]["status"] if role in at else "-" for role in roles]
        updated = short_time(max(str(r["updated_at"]) for r in at.values()))
        agree = agreement([r["status"] for r in at.values()])
        table.add_row(sid, f"{first['choreography']} v{first['version']}", *cells, agree, updated)
    Console().print(table)
