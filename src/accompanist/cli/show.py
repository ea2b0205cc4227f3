"""``accompanist show SESSION``: one session at every role, its steps merged in causal order.

Why: after an incident the question is what happened, in which order, where it failed and what
was undone; each sidecar knows only its own part. The command reads every role's steps (from
running sidecars or their stores), merges them so that a send comes before its receive, and
prints them with their timings, retries, compensations and the failure.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from accompanist.cli.targets import ClusterOpt, SidecarOpt, StoreOpt, TokenOpt, open_sources, run_reading, short_time
from accompanist.inspection.sources import Source, session_view
from accompanist.inspection.view import SessionView, seconds

__all__ = ["print_view", "show"]

_STATE_STYLE = {"failed": "bold red", "parked": "cyan", "stopped": "dim"}


def _ms(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.1f} ms" if value < 1000 else f"{value / 1000:.2f} s"


def _steps_table(view: SessionView) -> Table:
    base = view.started
    table = Table(title="steps, in causal order")
    names = [str(e.step["name"]) for e in view.events]
    fixed = {  # columns kept whole: the value and the state give way when the terminal is narrow
        "role": max([len(r) for r in view.roles] + [4]),
        "kind": 12,
        "name": min(max([len(n) for n in names] + [4]), 26),
        "at": 9,
        "took": 8,
        "transaction": 11,
    }
    for column, justify in (
        ("#", "right"), ("role", "left"), ("step", "right"), ("kind", "left"), ("name", "left"),
        ("value", "left"), ("at", "right"), ("took", "right"), ("tries", "right"), ("transaction", "left"),
        ("state", "left"),
    ):  # fmt: skip
        table.add_column(
            column,
            justify=justify,  # type: ignore[arg-type]
            no_wrap=column in ("value", "state"),
            min_width=fixed.get(column),
            max_width={"value": 22, "state": 28}.get(column),
            overflow="ellipsis" if column in ("value", "state") else "fold",
        )
    for order, event in enumerate(view.events):
        s: dict[str, Any] = event.step
        at = seconds(s.get("started_at")) or seconds(s.get("ended_at"))
        state = str(s.get("state") or "done")
        text = Text(state + (f": {s['error']}" if s.get("error") else ""), style=_STATE_STYLE.get(state, ""))
        kind = Text(s["kind"], style="dark_orange" if s["kind"] == "compensation" else "")
        table.add_row(
            str(order + 1),
            event.role,
            "" if s.get("index") is None else str(s["index"]),
            kind,
            s["name"],
            "" if s.get("value") is None else str(s["value"]),
            f"+{_ms((at - base) * 1e3)}" if at is not None and base is not None else "",
            _ms(s.get("duration_ms")),
            "" if not s.get("attempts") else str(s["attempts"]),
            s.get("transaction") or "",
            text,
        )
    return table


def print_view(view: SessionView, console: Console) -> None:
    """Print a session: its outcome, each role's record and what it waits for, its steps."""
    console.print(
        f"session [bold]{view.session_id}[/bold]: {view.choreography} v{view.version}, [bold]{view.status}[/bold]"
    )
    failure = view.failure
    if failure is not None and view.status != "completed":
        where = ", ".join(
            p for p in (f"transaction {failure['transaction']}" if failure.get("transaction") else "",
                        f"step {failure['step']}" if failure.get("step") is not None else "") if p
        )  # fmt: skip
        console.print(
            f"failure: [bold red]{failure['error_type']}[/bold red] at {failure['role']}"
            f"{' (' + where + ')' if where else ''}: {failure['message']}"
        )
    roles = Table()
    for column in ("role", "status", "attempts", "created", "updated", "waiting"):
        roles.add_column(column)
    for role in view.roles:
        record = view.records.get(role)
        waiting = view.waiting.get(role)
        if record is None:
            roles.add_row(role, "(not read)", "", "", "", "")
            continue
        roles.add_row(
            role,
            str(record["status"]),
            str(record.get("attempts", 0)),
            short_time(record.get("created_at")),
            short_time(record.get("updated_at")),
            waiting["text"] if waiting else "",
        )
    console.print(roles)
    if view.events:
        console.print(_steps_table(view))
    console.print(f"roles agree: {view.agree}")


def show(
    session_id: Annotated[str, typer.Argument(help="The session to show.")],
    sidecar: SidecarOpt = None,
    store: StoreOpt = None,
    cluster: ClusterOpt = None,
    api_token: TokenOpt = None,
) -> None:
    """Show one session at every role: its steps in causal order, timings, retries,
    compensations and the failure."""

    async def read(sources: list[Source]) -> SessionView | None:
        return await session_view(sources, session_id)

    view = run_reading(lambda: open_sources(sidecar, store, cluster, api_token), read)
    if view is None:
        typer.echo(f"error: no sidecar or store knows session {session_id}", err=True)
        raise typer.Exit(1)
    print_view(view, Console())
