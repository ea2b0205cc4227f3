"""``accompanist diagram SESSION``: the whole session as a sequence diagram across its roles.

Why three formats: Mermaid pastes into a ticket or a wiki that renders it; SVG is a picture
that needs nothing; HTML is one self-contained page (the diagram, each role's status, every
step in a table) that opens anywhere, offline.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from accompanist.cli.targets import ClusterOpt, SidecarOpt, StoreOpt, TokenOpt, open_sources, run_reading
from accompanist.diagram import mermaid_session, render_html, render_svg
from accompanist.inspection.sources import Source, session_view
from accompanist.inspection.view import SessionView

__all__ = ["DiagramFormat", "diagram"]


class DiagramFormat(enum.StrEnum):
    """What ``accompanist diagram`` writes."""

    MERMAID = "mermaid"
    SVG = "svg"
    HTML = "html"


def diagram(
    session_id: Annotated[str, typer.Argument(help="The session to draw.")],
    sidecar: SidecarOpt = None,
    store: StoreOpt = None,
    cluster: ClusterOpt = None,
    api_token: TokenOpt = None,
    format: Annotated[DiagramFormat, typer.Option("--format", "-f", help="mermaid, svg or html.")] = (
        DiagramFormat.MERMAID
    ),
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
) -> None:
    """Draw a session as a sequence diagram across roles (failures and compensations marked)."""

    async def read(sources: list[Source]) -> SessionView | None:
        return await session_view(sources, session_id)

    view = run_reading(lambda: open_sources(sidecar, store, cluster, api_token), read)
    if view is None:
        typer.echo(f"error: no sidecar or store knows session {session_id}", err=True)
        raise typer.Exit(1)
    render = {DiagramFormat.MERMAID: mermaid_session, DiagramFormat.SVG: render_svg, DiagramFormat.HTML: render_html}
    text = render[format](view)
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        typer.echo(f"error: cannot write {output}: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {output} ({format}, {len(view.events)} steps across {len(view.roles)} roles)", err=True)
