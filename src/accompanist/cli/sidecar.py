"""``accompanist sidecar``: run one role's sidecar as a process until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from typing import Annotated, Any

import typer

from accompanist.errors import AccompanistError

__all__ = ["sidecar"]

_ENV = "ACCOMPANIST_"

# The cyclic garbage collector's thresholds for a running sidecar (Python's default: 700, 10,
# 10). See _tune_gc.
GC_THRESHOLDS = (50_000, 20, 10)


def _opt(env: str, help_text: str) -> Any:
    return typer.Option(envvar=_ENV + env, help=help_text, show_default=False)


def sidecar(
    app: Annotated[str | None, _opt("APP", "MODULE:APP, the ac.App of choreographies to serve.")] = None,
    role: Annotated[str | None, _opt("ROLE", "The role this sidecar plays.")] = None,
    listen: Annotated[str | None, _opt("LISTEN", "Peer endpoint HOST:PORT (other sidecars connect here).")] = None,
    api: Annotated[
        str | None, _opt("API", "Service-facing HTTP API: HOST:PORT, or unix:/path/api.sock (mode 0600).")
    ] = None,
    api_socket_mode: Annotated[
        str | None, _opt("API_SOCKET_MODE", "Permission bits of the API's Unix socket (default 0600).")
    ] = None,
    api_token: Annotated[
        str | None, _opt("API_TOKEN", "Bearer token the API requires (all but /healthz, /metrics).")
    ] = None,
    peer: Annotated[list[str] | None, _opt("PEERS", "ROLE=HOST:PORT of another sidecar (repeat).")] = None,
    transport: Annotated[
        str | None, _opt("TRANSPORT", "'tcp' (to --peer addresses, default) or a JetStream broker nats://HOST:PORT.")
    ] = None,
    jetstream_stream: Annotated[
        str | None, _opt("JETSTREAM_STREAM", "The mesh's JetStream stream (default ACCOMPANIST).")
    ] = None,
    jetstream_ack_wait: Annotated[
        float | None, _opt("JETSTREAM_ACK_WAIT", "Seconds the broker waits for an accept before redelivering.")
    ] = None,
    config: Annotated[str | None, _opt("CONFIG", "TOML file with any of these settings.")] = None,
    mode: Annotated[str | None, _opt("MODE", "'default' (in memory) or 'fault-tolerant' (durable).")] = None,
    store: Annotated[str | None, _opt("STORE", "memory:, sqlite:///path/role.db or postgresql://...")] = None,
    receive_timeout: Annotated[float | None, _opt("RECEIVE_TIMEOUT", "Seconds a receive waits.")] = None,
    max_inflight: Annotated[int | None, _opt("MAX_INFLIGHT", "Sessions run at once before 429.")] = None,
    buffer_limit: Annotated[int | None, _opt("BUFFER_LIMIT", "Early envelopes held per session.")] = None,
    replay_policy: Annotated[str | None, _opt("REPLAY_POLICY", "'journal' or 'rerun' local steps.")] = None,
    compensation: Annotated[
        str | None, _opt("COMPENSATION", "'ordered' (global reverse order, default) or 'parallel'.")
    ] = None,
    sqlite_synchronous: Annotated[
        str | None, _opt("SQLITE_SYNCHRONOUS", "SQLite durability: FULL (default), NORMAL or OFF.")
    ] = None,
    hmac_key: Annotated[str | None, _opt("HMAC_KEY", "Shared secret signing frames between sidecars.")] = None,
    tls_cert: Annotated[str | None, _opt("TLS_CERT", "PEM certificate for mutual TLS.")] = None,
    tls_key: Annotated[str | None, _opt("TLS_KEY", "PEM private key for mutual TLS.")] = None,
    tls_ca: Annotated[str | None, _opt("TLS_CA", "PEM CA bundle peers' certificates chain to.")] = None,
    grace: Annotated[float | None, _opt("GRACE", "Seconds in-flight sessions get on SIGTERM.")] = None,
    loop: Annotated[
        str | None, _opt("LOOP", "Event loop: 'auto' (uvloop when installed), 'uvloop' or 'asyncio'.")
    ] = None,
    insecure: Annotated[
        bool | None,
        typer.Option(
            "--insecure",
            envvar=_ENV + "INSECURE",
            help="Allow a peer endpoint off loopback without --hmac-key or TLS (unauthenticated).",
            show_default=False,
        ),
    ] = None,
    ui: Annotated[
        bool | None,
        typer.Option(
            "--ui", envvar=_ENV + "UI", help="Serve the web view on the API port under /ui.", show_default=False
        ),
    ] = None,
    ui_sidecars: Annotated[
        list[str] | None,
        typer.Option(
            "--ui-sidecar",
            envvar=_ENV + "UI_SIDECARS",
            help="Another sidecar's API URL the web view reads (repeat).",
            show_default=False,
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(envvar=_ENV + "LOG_LEVEL", help="Logging level.")] = "INFO",
    log_format: Annotated[
        str, typer.Option(envvar=_ENV + "LOG_FORMAT", help="'text' or 'json' (one object per line).")
    ] = "text",
) -> None:
    """Run a sidecar: serve one role of every session of the app's choreographies."""
    from accompanist.sidecar.config import SidecarConfig

    if log_format not in ("text", "json"):
        typer.echo(f"error: --log-format must be 'text' or 'json', got {log_format!r}", err=True)
        raise typer.Exit(2)
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        from accompanist.logs import JsonFormatter

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO), handlers=[handler])
    overrides: dict[str, Any] = {
        "app": app,
        "role": role,
        "listen": listen,
        "api": api,
        "api_token": api_token,
        "api_socket_mode": api_socket_mode,
        "peers": peer or None,
        "transport": transport,
        "jetstream_stream": jetstream_stream,
        "jetstream_ack_wait": jetstream_ack_wait,
        "mode": mode,
        "store": store,
        "receive_timeout": receive_timeout,
        "max_inflight": max_inflight,
        "buffer_limit": buffer_limit,
        "replay_policy": replay_policy,
        "compensation": compensation,
        "sqlite_synchronous": sqlite_synchronous,
        "hmac_key": hmac_key,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "tls_ca": tls_ca,
        "grace": grace,
        "loop": loop,
        "insecure": insecure,
        "ui": ui,
        "ui_sidecars": ui_sidecars or None,
    }
    try:
        # Precedence: options (typer also reads their ACCOMPANIST_* variables), then the
        # environment for settings without an option, then the file, then defaults.
        cfg = SidecarConfig.load(file=config, overrides=overrides)
    except AccompanistError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        runner, which = event_loop(cfg.loop)
    except AccompanistError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    logging.getLogger("accompanist").info("event loop: %s (loop=%s)", which, cfg.loop)
    try:
        runner(_serve(cfg))
    except AccompanistError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


async def _serve(cfg: Any) -> None:
    from accompanist.sidecar.sidecar import Sidecar

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    sidecar = Sidecar(cfg)
    await sidecar.start()
    # One line on stdout that scripts and tests can wait for.
    print(
        f"accompanist sidecar ready role={cfg.role} "
        f"peer={_addr(sidecar.peer_address)} api={_addr(sidecar.api_address)}",
        flush=True,
    )
    _tune_gc()
    await stop.wait()
    logging.getLogger("accompanist").info("stopping: finishing in-flight sessions")
    await sidecar.stop()


def _tune_gc() -> None:
    """Keep the cyclic garbage collector off the hot path of a started sidecar.

    Why: measured on the chain benchmark, Python's default thresholds made the collector take
    10-15% of a sidecar's CPU per session, most of it traversing, again and again, the objects
    created at start (modules, the app, the web server) that live as long as the process. They
    are frozen (moved where the collector never looks) once the sidecar is up, and the young
    generation is collected every 50,000 allocations instead of every 700, so the many
    short-lived objects of a session are mostly freed by reference counting before a
    collection looks at them. This sidecar process is ours to tune; an embedding application
    keeps its own settings.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def event_loop(choice: str) -> tuple[Any, str]:
    """The runner of the event loop ``choice`` names, and which loop it is.

    ``auto`` takes uvloop when it is installed (``pip install 'accompanist[fast]'``): measured
    here, a round trip between sidecars costs about a third of asyncio's (see
    ``benchmarks/transport_rtt.py``).

    Raises:
        ConfigError: ``uvloop`` was asked for but is not installed, or an unknown choice.
    """
    from accompanist.errors import ConfigError

    if choice not in ("auto", "uvloop", "asyncio"):
        raise ConfigError(f"loop must be 'auto', 'uvloop' or 'asyncio', got {choice!r}")
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise ConfigError("loop=uvloop, but uvloop is not installed: pip install 'accompanist[fast]'") from None
        else:
            return uvloop.run, f"uvloop {getattr(uvloop, '__version__', '?')}"
    return asyncio.run, "asyncio"


def _addr(address: Any) -> str:
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    return f"unix:{address}" if address else "-"
