"""``accompanist versions``: which versions each sidecar serves, and which old ones are still needed.

Why: during a rolling upgrade an operator must know when an old version can be removed (no
unfinished session needs it any more), whether some sessions are blocked on a version a
sidecar no longer serves, and whether code changed under running sessions without a version
bump. Running sidecars answer ``GET /versions``; a store alone (``--store ROLE=URL``) tells the
unfinished sessions per version and the code fingerprints they started with, compared with
``--app`` (the code about to be deployed) when given.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from accompanist.cli.targets import ClusterOpt, SidecarOpt, StoreOpt, TokenOpt, open_sources, run_reading
from accompanist.errors import AccompanistError
from accompanist.inspection.sources import HttpSource, Source, StoreSource
from accompanist.language.choreography import App
from accompanist.sidecar.loader import load_app

__all__ = ["versions"]


def versions(
    sidecar: SidecarOpt = None,
    store: StoreOpt = None,
    cluster: ClusterOpt = None,
    api_token: TokenOpt = None,
    app: Annotated[
        str | None, typer.Option("--app", help="With --store: the code to compare with (MODULE:APP).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the reports as JSON.")] = False,
) -> None:
    """Show, per role and choreography: versions served, the version new sessions start at, the
    unfinished sessions per version, versions needed but not served, and changed code."""
    code: App | None = None
    if app is not None:
        try:
            code = load_app(app)
        except AccompanistError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    async def read(sources: list[Source]) -> list[dict[str, Any]]:
        reports = []
        for source in sources:
            if isinstance(source, HttpSource):
                reports.append(await source.versions())
            elif isinstance(source, StoreSource):
                reports.append(await source.versions(code))
        return reports

    reports = run_reading(lambda: open_sources(sidecar, store, cluster, api_token), read)
    if as_json:
        typer.echo(json.dumps(reports, indent=2))
        return
    console = Console()
    table = Table(title="versions")
    for column in ("role", "choreography", "served", "new sessions", "unfinished", "needed, not served"):
        table.add_column(column)
    warnings: list[str] = []
    for report in reports:
        for entry in report["choreographies"]:
            table.add_row(
                report["role"],
                entry["choreography"],
                _served(entry.get("served")),
                _next(entry),
                ", ".join(f"v{v}: {n}" for v, n in entry["unfinished"].items()) or "none",
                ", ".join(f"v{v}" for v in entry["needed_not_served"]) or "-",
            )
            for change in entry.get("code_changed", []):
                warnings.append(
                    f"{report['role']}: {entry['choreography']} v{change['version']} changed without a version bump "
                    f"({change['recorded']} -> {change['current']}) under {change['count']} unfinished session(s): "
                    f"{', '.join(change['sessions'])}"
                )
    console.print(table)
    for warning in warnings:
        console.print(f"[yellow]warning[/yellow] {warning}", highlight=False)


def _served(versions: list[int] | None) -> str:
    if versions is None:
        return "?"  # a store alone does not say
    return ", ".join(f"v{v}" for v in versions) or "none"


def _next(entry: dict[str, Any]) -> str:
    if "next_version" not in entry:
        return "?"
    if not entry.get("initiator"):
        return "- (not the initiator)"
    found = entry["next_version"]
    lacking = [role for role, peer in entry.get("peers", {}).items() if peer.get("served") is None]
    text = f"v{found}" if found is not None else "REFUSED (a role lacks every version)"
    return text + (f" ({', '.join(lacking)} unknown)" if lacking else "")
