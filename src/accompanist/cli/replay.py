"""``accompanist export`` and ``accompanist replay``: check recorded sessions against new code.

Why: before deploying a changed choreography, a team wants to know whether the sessions in
flight (or a sample from production) would replay on it. ``export`` writes one session's rows
from a role's store as JSON (read-only: nothing is written to the store); ``replay`` runs
them through the current code without side effects and exits non-zero at the first step
where code and record differ (see :mod:`accompanist.testing.replay`).
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Annotated

import typer

from accompanist.errors import AccompanistError, ConfigError
from accompanist.sidecar.loader import load_app
from accompanist.store.url import open_store
from accompanist.testing.replay import SessionExport, export_session, load_export, replay_session

__all__ = ["export", "replay"]

StoreOpt = Annotated[
    str | None, typer.Option("--store", help="The role's store URL (sqlite:///..., postgresql://...).")
]
RoleOpt = Annotated[
    str | None, typer.Option("--role", help="The store's role (read from a SQLite store when not given).")
]


def _role_of(url: str, role: str | None) -> str:
    if role:
        return role
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                row = db.execute("SELECT value FROM acc_meta WHERE key = 'role'").fetchone()
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot read the role of the store {url}: {exc}; give --role") from None
        if row is not None:
            return str(row[0])
    raise ConfigError(f"give --role: the role of the store {url} cannot be read from it")


async def _export(session_id: str, url: str, role: str | None) -> SessionExport:
    store = open_store(url, _role_of(url, role))
    await store.open()
    try:
        return await export_session(store, session_id)
    finally:
        await store.close()


def export(
    session_id: Annotated[str, typer.Argument(metavar="SESSION", help="The session's id.")],
    store: StoreOpt = None,
    role: RoleOpt = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
) -> None:
    """Write one session's stored rows (record, journal, inbox, outbox, transaction log) as JSON."""
    if store is None:
        typer.echo("error: --store URL is required", err=True)
        raise typer.Exit(2)
    try:
        data = asyncio.run(_export(session_id, store, role)).to_json()
    except AccompanistError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if output is None:
        typer.echo(data.decode())
    else:
        output.write_bytes(data + b"\n")
        typer.echo(f"wrote {output}", err=True)


def replay(
    session_id: Annotated[str, typer.Argument(metavar="SESSION", help="The session's id.")],
    app: Annotated[str, typer.Option("--app", help="The current code: MODULE:APP (or MODULE:CHOREOGRAPHY).")],
    store: StoreOpt = None,
    role: RoleOpt = None,
    file: Annotated[Path | None, typer.Option("--file", help="An export written by 'accompanist export'.")] = None,
) -> None:
    """Replay one recorded session on the current code without side effects; exit 1 if they differ."""
    if (store is None) == (file is None):
        typer.echo("error: give exactly one of --store URL and --file export.json", err=True)
        raise typer.Exit(2)
    try:
        if file is not None:
            try:
                recorded = load_export(file.read_bytes(), str(file))
            except OSError as exc:
                raise ConfigError(f"cannot read {file}: {exc}") from None
            if recorded.record.session_id != session_id:
                raise ConfigError(f"{file} holds session {recorded.record.session_id}, not {session_id}")
        else:
            assert store is not None
            recorded = asyncio.run(_export(session_id, store, role))
        report = asyncio.run(replay_session(recorded, load_app(app)))
    except AccompanistError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(str(report))
    if not report.ok:
        raise typer.Exit(1)
