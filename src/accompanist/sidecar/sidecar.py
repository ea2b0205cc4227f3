"""The sidecar: store, transport, engine and API wired together for one role."""

from __future__ import annotations

import contextlib
import logging
from types import TracebackType
from typing import Any

from aiohttp import web

from accompanist.engine.engine import Engine
from accompanist.errors import ConfigError
from accompanist.language.choreography import App
from accompanist.otel_metrics import MetricsExport, setup_metrics_export
from accompanist.sidecar.api import build_api
from accompanist.sidecar.api_serve import serve
from accompanist.sidecar.config import SidecarConfig
from accompanist.sidecar.config_values import ApiAddress, is_loopback
from accompanist.store.base import SessionRecord, Store
from accompanist.store.url import open_store
from accompanist.transport.broker import TCP, broker_hosts
from accompanist.transport.tcp import TcpTransport, tls_contexts

__all__ = ["Sidecar"]


class Sidecar:
    """Runs one role of the choreographies in ``app`` beside a service.

    Use it as a process (``accompanist sidecar ...``) or embedded in a Python service::

        async with ac.Sidecar(SidecarConfig(role="buyer", peers=...), app) as sc:
            result = await sc.run("bookseller", "SICP")

    Args:
        config: the sidecar's settings.
        app: the choreographies served (default: imported from ``config.app``).
        store: a store to use instead of the one ``config.store`` names (tests).
        transport: a transport to use instead of the one ``config.transport`` names (tests:
            ``MemoryNetwork``).

    Raises:
        ConfigError: the role is not in any served choreography, or no app is given.
    """

    def __init__(
        self,
        config: SidecarConfig,
        app: App | None = None,
        *,
        store: Store | None = None,
        transport: Any | None = None,
    ) -> None:
        if app is None:
            if not config.app:
                raise ConfigError("no app: pass an ac.App or set app = 'module:attr' in the config")
            from accompanist.sidecar.loader import load_app

            app = load_app(config.app)
        roles = {r.name for c in app for r in c.roles}
        if config.role not in roles:
            raise ConfigError(f"role '{config.role}' is in none of the served choreographies (roles: {sorted(roles)})")
        self.config = config
        self.app = app
        self.log = logging.getLogger(f"accompanist.sidecar.{config.role}")
        self._store = store
        self._transport = transport
        self.engine: Engine | None = None
        self._api_runner: web.AppRunner | None = None
        self._metrics_export: MetricsExport | None = None
        self.api_address: ApiAddress | None = None
        self._hooks_started = False  # the app's startup hooks ran: its shutdown hooks are owed

    def _make_transport(self) -> Any:
        c = self.config
        keys: dict[str, bytes] | None = None
        tls = bool(c.tls_cert and c.tls_key)
        if c.hmac_key:
            keys = {c.hmac_key_id: c.hmac_key.encode()}
            keys.update({k: v.encode() for k, v in c.old_hmac_keys.items()})
        elif not tls:
            self.log.warning(
                "no hmac_key configured: frames between sidecars are not authenticated "
                "(fine for local development only)"
            )
        if c.transport != TCP:
            return self._broker_transport(keys)
        ssl_server = ssl_client = None
        if c.tls_cert and c.tls_key and c.tls_ca:
            ssl_server, ssl_client = tls_contexts(c.tls_cert, c.tls_key, c.tls_ca, role=c.role)
        return TcpTransport(
            c.role,
            c.listen,
            dict(c.peers),
            keys=keys,
            current_key_id=c.hmac_key_id,
            ssl_server=ssl_server,
            ssl_client=ssl_client,
            max_frame=c.max_frame,
            limits=c.peer_limits,
        )

    def _broker_transport(self, keys: dict[str, bytes] | None) -> Any:
        c = self.config
        try:
            from accompanist.transport.jetstream import JetStreamTransport
        except ImportError as exc:
            raise ConfigError(
                f"transport={c.transport!r} needs the NATS client: pip install 'accompanist[nats]' ({exc})"
            ) from None
        return JetStreamTransport(
            c.role,
            c.transport.split(","),
            stream=c.jetstream_stream,
            keys=keys,
            current_key_id=c.hmac_key_id,
            max_frame=c.max_frame,
            ack_wait=c.jetstream_ack_wait,
            send_timeout=c.engine.deliver_timeout,
        )

    def _check_peer_security(self) -> None:
        """Refuse an unauthenticated peer endpoint, or broker, off loopback unless ``insecure`` says so."""
        c = self.config
        if c.transport != TCP:
            remote = [h for h in broker_hosts(c.transport) if not is_loopback(h)]
            if remote and not c.hmac_key and not c.insecure:
                raise ConfigError(
                    f"refusing to exchange envelopes through the broker at {remote[0]} without hmac_key: anyone "
                    "who can publish to it could forge envelopes; set --hmac-key, or pass --insecure "
                    "(ACCOMPANIST_INSECURE=1)"
                )
            return
        if c.hmac_key or (c.tls_cert and c.tls_key) or c.insecure or is_loopback(c.listen[0]):
            return
        raise ConfigError(
            f"refusing to listen for peers on {c.listen[0]}:{c.listen[1]} without hmac_key or TLS: anyone "
            "who can reach it could forge envelopes; set --hmac-key or --tls-cert/--tls-key/--tls-ca, "
            "listen on 127.0.0.1, or pass --insecure (ACCOMPANIST_INSECURE=1)"
        )

    async def start(self) -> None:
        """Open the store, start the engine (replaying unfinished sessions) and the API.

        Raises:
            StoreCorruptError: the store cannot be used.
            StoreError: the store cannot be opened (permissions, a missing directory).
            TransportError: the peer endpoint cannot listen (its port is taken).
            ConfigError: a malformed setting, or the API port cannot be bound.
            LifecycleError: one of the app's startup hooks failed.

        The app's startup hooks run first (a recovered session may call its service at once).
        A failed start releases what it opened (store, peer port, the hooks' clients) before
        raising.
        """
        c = self.config
        if self._transport is None:
            self._check_peer_security()  # before anything is opened
        self._metrics_export = setup_metrics_export(c.role, self._metrics_text, c.engine.metrics_file)
        # The app's clients open before the engine: a recovered session may call a service
        # at once. A failed hook has closed what the earlier ones opened.
        await self.app.lifecycle.start([c.role])
        try:
            await self._start_engine_and_api()
        except BaseException:
            await self.app.lifecycle.stop([c.role], raise_errors=False)
            raise
        self._hooks_started = True
        if self._metrics_export is not None:
            self._metrics_export.start()
        self.log.info(
            "sidecar '%s' (%s mode) peers on %s, API on %s, store %s",
            c.role,
            c.engine.mode,
            self.peer_address,
            self.api_address,
            c.store_url,
        )

    async def _start_engine_and_api(self) -> None:
        c = self.config
        store = self._store or open_store(c.store_url, c.role, synchronous=c.sqlite_synchronous)
        transport = self._transport or self._make_transport()
        self.engine = Engine(self.app, c.role, store=store, transport=transport, config=c.engine)
        await self.engine.start()  # a failed start releases what it opened (store, peer port)
        if c.api_address is not None:
            api = build_api(
                self.engine, mode=str(c.engine.mode), extra_metrics=self._transport_metrics, token=c.api_token
            )
            if c.ui:
                self._add_ui(api)
            try:
                self._api_runner, self.api_address = await serve(api, c.api_address, socket_mode=c.api_socket_mode)
            except BaseException:
                with contextlib.suppress(Exception):
                    await self.engine.stop(grace=0)  # no writer thread or peer port left behind
                raise

    def _add_ui(self, api: web.Application) -> None:
        """The web view under ``/ui``: this engine, read in process, and the other sidecars named."""
        from accompanist.inspection.sources import HttpSource, Source
        from accompanist.ui.local import EngineSource
        from accompanist.ui.server import add_ui_routes

        assert self.engine is not None
        sources: list[Source] = [EngineSource(self.engine)]
        sources += [HttpSource(url, self.config.api_token) for url in self.config.ui_sidecars]
        add_ui_routes(api, sources)

        async def close(app: web.Application) -> None:
            for source in sources:
                await source.close()

        api.on_cleanup.append(close)

    async def stop(self, grace: float | None = None) -> None:
        """Stop the API, let running sessions finish within ``grace``, close everything, then
        run the app's shutdown hooks (no session uses a client any more).

        Raises:
            LifecycleError: a shutdown hook failed (the others ran; everything else is closed).
        """
        if self._api_runner is not None:
            await self._api_runner.cleanup()
            self._api_runner = None
        try:
            if self.engine is not None:
                await self.engine.stop(grace)
            if self._metrics_export is not None:
                await self._metrics_export.stop()  # the last numbers too
                self._metrics_export = None
        finally:
            if self._hooks_started:
                self._hooks_started = False
                await self.app.lifecycle.stop([self.config.role])

    async def __aenter__(self) -> Sidecar:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def peer_address(self) -> tuple[str, int] | None:
        """The bound peer endpoint (useful with port 0)."""
        transport = self.engine.transport if self.engine else None
        return getattr(transport, "address", None)

    def _engine(self) -> Engine:
        if self.engine is None:
            raise ConfigError("the sidecar is not started: use 'async with Sidecar(...)' or await start()")
        return self.engine

    async def run(self, choreography: str, *args: Any, version: int | None = None, timeout: float | None = None) -> Any:
        """Run a session as the initiator and return its result.

        Raises:
            SessionFailedError: the session did not complete.
        """
        return await self._engine().run(choreography, *args, version=version, timeout=timeout)

    async def start_session(
        self, choreography: str, *args: Any, version: int | None = None, session_id: str | None = None
    ) -> str:
        """Start a session as the initiator; return its id at once (``session_id``: idempotent)."""
        return await self._engine().start_session(choreography, args, version, session_id)

    async def wait(self, session_id: str, timeout: float | None = None) -> SessionRecord:
        """Wait for a session to end at this role; return its record."""
        return await self._engine().wait(session_id, timeout)

    def _metrics_text(self) -> bytes:
        """What ``/metrics`` serves: the engine's metrics and the transport's."""
        return (self.engine.metrics.render() if self.engine else b"") + self._transport_metrics()

    def _transport_metrics(self) -> bytes:
        stats = getattr(self.engine.transport if self.engine else None, "stats", None)
        if stats is None:
            return b""
        lines = [
            "# HELP accompanist_frames_rejected_total Frames rejected by the peer endpoint, by reason",
            "# TYPE accompanist_frames_rejected_total counter",
        ]
        for reason, count in sorted(stats.rejected.items()):
            safe = str(reason).replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'accompanist_frames_rejected_total{{reason="{safe}"}} {count}')
        lines.append("# TYPE accompanist_transport_reconnects_total counter")
        lines.append(f"accompanist_transport_reconnects_total {stats.reconnects}")
        closed = getattr(stats, "closed", None)
        if closed is not None:
            lines.append(
                "# HELP accompanist_peer_connections_closed_total Incoming peer connections refused or "
                "closed by a bound of the peer port, by reason"
            )
            lines.append("# TYPE accompanist_peer_connections_closed_total counter")
            for reason, count in sorted(closed.items()):
                lines.append(f'accompanist_peer_connections_closed_total{{reason="{reason}"}} {count}')
            lines.append("# HELP accompanist_peer_connections Incoming peer connections open now")
            lines.append("# TYPE accompanist_peer_connections gauge")
            lines.append(f"accompanist_peer_connections {getattr(stats, 'connections', 0)}")
            lines.append("# HELP accompanist_peer_unauth_bytes Bytes of large frames being read before authentication")
            lines.append("# TYPE accompanist_peer_unauth_bytes gauge")
            lines.append(f"accompanist_peer_unauth_bytes {getattr(stats, 'unauth_bytes', 0)}")
        tls_failed = getattr(stats, "tls_failed", None)
        if tls_failed is not None:
            lines.append(
                "# HELP accompanist_tls_handshakes_failed_total TLS connections between sidecars that failed or "
                "were refused for their identity, by direction (in: to this sidecar, out: to a peer) and reason"
            )
            lines.append("# TYPE accompanist_tls_handshakes_failed_total counter")
            for (direction, reason), count in sorted(tls_failed.items()):
                lines.append(
                    f'accompanist_tls_handshakes_failed_total{{direction="{direction}",reason="{reason}"}} {count}'
                )
        return ("\n".join(lines) + "\n").encode()
