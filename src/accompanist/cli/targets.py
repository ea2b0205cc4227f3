"""Which sidecars and stores the inspection commands read: options, the cluster file, times.

Why shared: ``sessions``, ``show``, ``diagram`` and ``ui`` all read the same places, named the
same way: ``--sidecar URL`` (repeated) for running sidecars, ``--store ROLE=URL`` (repeated)
for stores after the fact, or ``--cluster FILE``, a TOML file listing both by role::

    token = "..."                       # the sidecars' API token (or ACCOMPANIST_API_TOKEN)

    [sidecars]
    warehouse = "http://127.0.0.1:8001"
    payment = "http://127.0.0.1:8002"

    [stores]
    warehouse = "sqlite:///var/lib/accompanist/warehouse.db"
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import tomllib
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from accompanist.errors import AccompanistError
from accompanist.inspection.sources import HttpSource, Source, StoreSource

__all__ = [
    "ClusterOpt",
    "SidecarOpt",
    "StoreOpt",
    "TokenOpt",
    "load_cluster",
    "open_sources",
    "parse_time",
    "run_reading",
    "short_time",
]

T = TypeVar("T")

SidecarOpt = Annotated[
    list[str] | None, typer.Option("--sidecar", help="A sidecar's API URL, or unix:/path/api.sock (repeat).")
]
StoreOpt = Annotated[list[str] | None, typer.Option("--store", help="ROLE=STORE_URL, read offline (repeat).")]
ClusterOpt = Annotated[
    Path | None, typer.Option("--cluster", help="TOML file: \\[sidecars] and/or \\[stores] by role, token.")
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--api-token", envvar="ACCOMPANIST_API_TOKEN", help="The sidecars' API token, if they need one."),
]

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str, now: float | None = None) -> float:
    """A point in time as UNIX seconds: ISO 8601 (``2026-12-02T20:00``, UTC unless it says
    otherwise) or an age (``30s``, ``10m``, ``2h``, ``1d`` ago).

    Raises:
        AccompanistError: neither.
    """
    found = _RELATIVE.match(text.strip())
    if found is not None:
        return (now if now is not None else dt.datetime.now(dt.UTC).timestamp()) - float(found[1]) * _UNITS[found[2]]
    try:
        stamp = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise AccompanistError(
            f"cannot read the time {text!r}: use ISO 8601 (2026-12-02T20:00) or an age (30s, 10m, 2h, 1d)"
        ) from None
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)).timestamp()


def load_cluster(path: Path) -> tuple[dict[str, str], dict[str, str], str | None]:
    """``(sidecars by role, stores by role, token)`` from a cluster file.

    Raises:
        AccompanistError: the file cannot be read, is not TOML, or has the wrong shape.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise AccompanistError(f"cannot read the cluster file {path}: {exc}") from None
    unknown = sorted(set(data) - {"sidecars", "stores", "token"})
    if unknown:
        raise AccompanistError(f"{path}: unknown key(s) {', '.join(unknown)}; expected [sidecars], [stores], token")
    tables: list[dict[str, str]] = []
    for key in ("sidecars", "stores"):
        table = data.get(key, {})
        if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
            raise AccompanistError(f'{path}: [{key}] must map each role to a URL string (a = "...")')
        tables.append(dict(table))
    token = data.get("token")
    if token is not None and not isinstance(token, str):
        raise AccompanistError(f"{path}: token must be a string")
    if not tables[0] and not tables[1]:
        raise AccompanistError(f"{path}: lists no [sidecars] and no [stores]")
    return tables[0], tables[1], token


def open_sources(
    sidecars: Sequence[str] | None, stores: Sequence[str] | None, cluster: Path | None, token: str | None
) -> list[Source]:
    """The sources the options name.

    Raises:
        AccompanistError: none is named, or one is malformed.
    """
    urls, specs = list(sidecars or []), list(stores or [])
    if cluster is not None:
        by_role, stored, cluster_token = load_cluster(cluster)
        urls += list(by_role.values())
        specs += [f"{role}={url}" for role, url in stored.items()]
        token = token or cluster_token
    if not urls and not specs:
        raise AccompanistError("name at least one --sidecar URL, --store ROLE=URL or --cluster FILE")
    return [*(HttpSource(u, token) for u in urls), *(StoreSource(s) for s in specs)]


def run_reading(sources: Callable[[], list[Source]], work: Callable[[list[Source]], Awaitable[T]]) -> T:
    """Run ``work`` over the sources and close them; an error is one line and exit code 2."""

    async def go() -> T:
        opened = sources()
        try:
            return await work(opened)
        finally:
            await asyncio.gather(*(s.close() for s in opened), return_exceptions=True)

    try:
        return asyncio.run(go())
    except AccompanistError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def short_time(iso: Any) -> str:
    """``2026-12-02T20:04:33.824117+00:00`` -> ``2026-12-02 20:04:33.824`` (UTC)."""
    return str(iso or "")[:23].replace("T", " ")
