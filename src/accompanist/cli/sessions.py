"""``accompanist sessions``: every session across sidecars or stores, one column per role.

Why: one session lives at many sidecars; whether its roles agree is the first question after
anything goes wrong, and the table answers it for many sessions at once.
"""

from __future__ import annotations

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
from accompanist.inspection.listing import filter_sessions, session_counts
from accompanist.inspection.sources import Source, collect_sessions
from accompanist.inspection.view import agreement

__all__ = ["sessions"]

_FETCH = 10_000  # sessions read per sidecar before the filters apply (the API's largest page)


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
    counts = session_counts(rows)
    outcomes = [f"{n} {s}" for s, n in counts.items() if s not in ("in progress", "disagree")]
    title = f"{len(rows)} sessions" + (f": {', '.join(outcomes)}" if outcomes else "")
    if counts.get("in progress"):
        title += f", {counts['in progress']} in progress"
    if counts.get("disagree"):
        title += f", {counts['disagree']} DISAGREE"
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
