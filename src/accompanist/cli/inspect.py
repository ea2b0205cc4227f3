"""``accompanist sessions`` and ``accompanist show``: look at sessions across sidecars.

Why: one session lives at many sidecars; whether its roles agree, and what each of them saw,
is the first question after anything goes wrong. Both commands read running sidecars over
their HTTP APIs (``--sidecar URL``, repeated) or, for a post-mortem, their stores directly
(``--store ROLE=URL``, repeated: nothing is written), and put the roles side by side.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from accompanist.errors import AccompanistError

__all__ = ["sessions", "show"]

_TERMINAL = {"completed", "compensated", "failed", "cancelled"}
SidecarOpt = Annotated[
    list[str] | None,
    typer.Option("--sidecar", help="A sidecar's API URL, or unix:/path/api.sock (repeat)."),
]
StoreOpt = Annotated[list[str] | None, typer.Option("--store", help="ROLE=STORE_URL, read offline (repeat).")]


async def _from_sidecar(url: str, path: str) -> Any:
    import aiohttp

    connector, base = None, url.rstrip("/")
    if url.startswith("unix:"):  # the API on a Unix socket (--api unix:/path)
        connector, base = aiohttp.UnixConnector(path=url.removeprefix("unix:")), "http://sidecar"
    token = os.environ.get("ACCOMPANIST_API_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with aiohttp.ClientSession(
        connector=connector, headers=headers, timeout=aiohttp.ClientTimeout(total=30)
    ) as http:
        try:
            async with http.get(base + path) as r:
                if r.status == 404:
                    return None
                body = await r.json()
                if r.status != 200:
                    raise AccompanistError(f"{url}: {r.status} {body.get('error', body)}")
                return body
        except aiohttp.ClientError as exc:
            raise AccompanistError(f"cannot reach the sidecar at {url}: {exc}") from None


def _record_json(record: Any) -> dict[str, Any]:
    import msgspec

    data: dict[str, Any] = msgspec.to_builtins(record)
    for key in ("created_at", "updated_at"):
        value = data.get(key)
        data[key] = dt.datetime.fromtimestamp(value, dt.UTC).isoformat() if value else None
    if record.failure:
        from accompanist.failure import Failure

        data["failure"] = msgspec.to_builtins(Failure.decode(record.failure))
    for key in ("args", "result", "seed", "state"):
        data.pop(key, None)
    return data


async def _from_store(spec: str, session_id: str | None, status: str | None, limit: int) -> Any:
    from accompanist.store.url import open_store

    role, sep, url = spec.partition("=")
    if not sep or not role or not url:
        raise AccompanistError(f"--store takes ROLE=STORE_URL, got {spec!r}")
    store = open_store(url, role)
    await store.open()
    try:
        if session_id is None:
            return {"sessions": [_record_json(r) for r in await store.list_sessions(status, limit)]}
        record = await store.get_session(session_id)
        if record is None:
            return None
        data = _record_json(record)
        data["steps"] = [
            {"step": j.step, "kind": str(j.kind), "name": j.name} for j in await store.journal_load(session_id)
        ]
        data["transactions"] = [
            {"name": t.name, "step": t.step, "status": t.status} for t in await store.txlog_load(session_id)
        ]
        return data
    finally:
        await store.close()


async def _collect(
    sidecars: Sequence[str], stores: Sequence[str], session_id: str | None, status: str | None, limit: int
) -> list[Any]:
    if not sidecars and not stores:
        raise AccompanistError("name at least one --sidecar URL or --store ROLE=URL")
    path = (
        f"/sessions/{session_id}"
        if session_id
        else f"/sessions?limit={limit}" + (f"&status={status}" if status else "")
    )
    jobs = [_from_sidecar(url, path) for url in sidecars] + [_from_store(s, session_id, status, limit) for s in stores]
    return list(await asyncio.gather(*jobs))


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except AccompanistError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _short(iso: str) -> str:
    """``2026-12-02T20:04:33.824117+00:00`` -> ``2026-12-02 20:04:33.824`` (UTC)."""
    return iso[:23].replace("T", " ")


def _agreement(statuses: list[str]) -> str:
    if any(s not in _TERMINAL for s in statuses):
        return "in progress"
    return "yes" if len(set(statuses)) == 1 else "NO"


def sessions(
    sidecar: SidecarOpt = None,
    store: StoreOpt = None,
    status: Annotated[str | None, typer.Option(help="Only sessions with this status (at some role).")] = None,
    choreography: Annotated[str | None, typer.Option(help="Only sessions of this choreography.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many per sidecar.")] = 100,
) -> None:
    """List sessions with one status column per role, and whether the roles agree."""
    answers = _run(_collect(sidecar or [], store or [], None, None, max(limit, 1) * 4))
    by_session: dict[str, dict[str, Any]] = {}
    roles: list[str] = []
    for answer in answers:
        for record in answer["sessions"]:
            if record["role"] not in roles:
                roles.append(record["role"])
            by_session.setdefault(record["session_id"], {})[record["role"]] = record
    table = Table(title=f"{len(by_session)} sessions")
    table.add_column("session", no_wrap=True, min_width=36)
    for column in ("choreography", *roles, "agree", "updated"):
        table.add_column(column, no_wrap=column != "choreography")
    rows = sorted(by_session.items(), key=lambda kv: max(str(r["updated_at"]) for r in kv[1].values()), reverse=True)
    shown = 0
    for sid, at in rows:
        first = next(iter(at.values()))
        if choreography and first["choreography"] != choreography:
            continue
        if status and all(r["status"] != status for r in at.values()):
            continue
        statuses = [r["status"] for r in at.values()]
        cells = [at[role]["status"] if role in at else "-" for role in roles]
        updated = _short(max(str(r["updated_at"]) for r in at.values()))
        table.add_row(sid, f"{first['choreography']} v{first['version']}", *cells, _agreement(statuses), updated)
        shown += 1
        if shown >= limit:
            break
    Console().print(table)


def show(
    session_id: Annotated[str, typer.Argument(help="The session to show.")],
    sidecar: SidecarOpt = None,
    store: StoreOpt = None,
) -> None:
    """Show one session at every role: status, failure, attempts and (from stores) its steps."""
    answers = [a for a in _run(_collect(sidecar or [], store or [], session_id, None, 1)) if a is not None]
    if not answers:
        typer.echo(f"error: no sidecar or store knows session {session_id}", err=True)
        raise typer.Exit(1)
    console = Console()
    first = answers[0]
    console.print(f"session [bold]{session_id}[/bold]: {first['choreography']} v{first['version']}")
    table = Table()
    for column in ("role", "status", "attempts", "created", "updated", "failure"):
        table.add_column(column)
    for a in answers:
        failure = a.get("failure") or {}
        why = f"{failure.get('error_type')} at {failure.get('role')}: {failure.get('message')}" if failure else ""
        table.add_row(
            a["role"], a["status"], str(a.get("attempts", 0)), str(a["created_at"]), str(a["updated_at"]), why
        )
    console.print(table)
    console.print(f"roles agree: {_agreement([a['status'] for a in answers])}")
    for a in answers:
        if a.get("steps") or a.get("transactions"):
            steps = Table(title=f"steps at {a['role']} (from its store)")
            for column in ("step", "kind", "name", "transaction"):
                steps.add_column(column)
            txs = {t["step"]: t["status"] for t in a.get("transactions", [])}
            for s in a.get("steps", []):
                steps.add_row(str(s["step"]), s["kind"], s["name"], txs.get(s["step"], ""))
            console.print(steps)
