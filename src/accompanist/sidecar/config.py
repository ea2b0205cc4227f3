"""Sidecar configuration: one dataclass, filled from a TOML file, ``ACCOMPANIST_*`` environment
variables and command-line options (in rising precedence), or built in code.

Every key of the TOML file is a keyword of :class:`SidecarConfig` and the other way round, so
an embedded sidecar can say everything a process can. Values are normalised in one place
(``__post_init__``), whichever way they came, and combinations that make no sense are refused
there with a :class:`~accompanist.errors.ConfigError` naming them.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

from accompanist.engine.config import CompensationOrder, EngineConfig, Mode, ReplayPolicy
from accompanist.errors import ConfigError
from accompanist.sidecar.config_checks import check_combinations, normalise_engine
from accompanist.sidecar.config_values import (
    ApiAddress,
    listen_address,
    parse_address,
    parse_api_address,
    parse_peers,
    to_bool,
    to_file_mode,
    to_float,
    to_int,
    to_pairs,
)
from accompanist.transport.broker import DEFAULT_STREAM, check_stream_name, parse_transport
from accompanist.transport.tcp import PeerLimits

__all__ = ["SidecarConfig", "parse_address", "parse_api_address", "parse_peers"]

_ENV_PREFIX = "ACCOMPANIST_"
_PEER = PeerLimits()  # the peer port's defaults, defined once in the transport
_LOOPS = ("auto", "uvloop", "asyncio")
_SYNCHRONOUS = ("FULL", "NORMAL", "OFF")
_PEER_INT_KEYS = (
    "peer_max_connections",
    "peer_max_connections_per_address",
    "peer_unauth_frame_limit",
    "peer_unauth_budget",
)
_PEER_FLOAT_KEYS = ("peer_first_frame_timeout", "peer_frame_timeout", "peer_idle_timeout")
_OPTIONAL_TEXT = ("app", "store", "hmac_key", "tls_cert", "tls_key", "tls_ca", "api_token")


@dataclass
class SidecarConfig:
    """Everything a sidecar needs to run.

    Attributes:
        role: the role this sidecar plays.
        app: ``MODULE:ATTR`` of the ``ac.App`` (not needed when an App is passed in code).
        listen: peer endpoint, ``(host, port)`` (or ``"host:port"``); port 0 picks a free port.
            Without a host (``":7001"``; the default is ``("", 0)``) it listens on loopback
            when every peer is on loopback, and on every interface when a peer is not.
        api: service-facing HTTP endpoint: ``(host, port)``, ``"host:port"``,
            ``"unix:/path/api.sock"`` (or a ``Path``) for a Unix socket, or None for none.
        api_token: when set, every API path but ``/healthz`` and ``/metrics`` needs
            ``Authorization: Bearer <api_token>`` (an empty string is the same as None).
        api_socket_mode: permission bits of the API's Unix socket (default ``0o600``: only
            the sidecar's user may connect; ``0o660`` lets its group in too).
        peers: address of every other role's sidecar.
        store: store URL: ``memory:``, ``sqlite:///path.db`` or ``postgresql://...``;
            default ``memory:`` in default mode and ``sqlite:///./<role>.db`` in fault-tolerant mode.
        sqlite_synchronous: SQLite durability: ``FULL`` (default), ``NORMAL`` or ``OFF``.
        hmac_key: shared secret authenticating frames between sidecars (None: unsigned, warned).
        hmac_key_id: the id under which ``hmac_key`` signs.
        old_hmac_keys: ``{id: secret}`` still accepted while keys rotate.
        tls_cert: certificate (PEM) for mutual TLS between sidecars; it must name this role
            (URI SAN ``accompanist://role/<role>``).
        tls_key: its private key.
        tls_ca: CA bundle that peers' certificates must chain to.
        max_frame: largest accepted frame in bytes.
        loop: the event loop of ``accompanist sidecar``: ``auto`` (uvloop when installed,
            the faster one), ``uvloop`` or ``asyncio``.
        peer_max_connections: incoming peer connections open at once (more are closed at once).
        peer_max_connections_per_address: the same, per remote IP address.
        peer_first_frame_timeout: seconds a new peer connection has to send its first frame
            header (and to finish its TLS handshake).
        peer_frame_timeout: seconds the rest of a frame may take once its header arrived.
        peer_idle_timeout: seconds a peer connection may stay silent when no answer is owed.
        peer_unauth_frame_limit: largest frame read freely from a connection that has not sent
            a verified frame yet (always so without hmac_key or TLS), in bytes.
        peer_unauth_budget: bytes all such connections together may be reading in larger frames.
        insecure: allow a peer endpoint (or a broker) off loopback without hmac_key or TLS
            (anyone who can reach it can forge envelopes).
        ui: serve the web view on the API port under ``/ui``.
        ui_sidecars: other sidecars' API URLs the web view reads besides this one.
        transport: how envelopes travel between sidecars: ``tcp`` (direct connections to
            ``peers``, the default) or a NATS JetStream broker, ``nats://host:port`` (several
            separated by commas), which every sidecar of the mesh names instead of peers.
        jetstream_stream: the JetStream stream of the mesh (broker transport only).
        jetstream_ack_wait: seconds the broker waits for this sidecar to accept an envelope
            before delivering it again (broker transport only).
        engine: the engine's settings as one ``EngineConfig``; each of its fields is also a
            keyword of its own (``mode=``, ``receive_timeout=`` ...), which wins over it.

    The keyword-only attributes after ``engine`` are ``EngineConfig``'s fields (``mode``,
    ``receive_timeout``, ``buffer_limit``, ``max_inflight``, ``replay_policy``, ``retry_min``,
    ``retry_max``, ``deliver_timeout``, ``delivery_concurrency``, ``relay_interval``,
    ``retention``, ``tombstone_retention``, ``prune_interval``, ``grace``, ``compensation``,
    ``outcome_query_after``, ``max_payload``, ``store_retry_max``, ``ack_linger``,
    ``memory_keep``, ``memory_retention``, ``lazy_interval``, ``steps_kept``, ``traces_file``,
    ``metrics_file``, ``sleep_in_task``); None takes
    ``engine``'s value, and after construction each holds the value in force.

    Raises:
        ConfigError: a malformed value or a combination that makes no sense, named.
    """

    role: str
    app: str | None = None
    listen: tuple[str, int] = ("", 0)
    api: ApiAddress | str | None = None
    api_token: str | None = None
    api_socket_mode: int = 0o600
    peers: dict[str, tuple[str, int]] = field(default_factory=dict)
    store: str | None = None
    sqlite_synchronous: str = "FULL"
    hmac_key: str | None = None
    hmac_key_id: str = "k1"
    old_hmac_keys: dict[str, str] = field(default_factory=dict)
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    max_frame: int = 4 * 1024 * 1024
    loop: str = "auto"
    peer_max_connections: int = _PEER.max_connections
    peer_max_connections_per_address: int = _PEER.max_connections_per_address
    peer_first_frame_timeout: float = _PEER.first_frame_timeout
    peer_frame_timeout: float = _PEER.frame_timeout
    peer_idle_timeout: float = _PEER.idle_timeout
    peer_unauth_frame_limit: int = _PEER.unauth_frame_limit
    peer_unauth_budget: int = _PEER.unauth_budget
    insecure: bool = False
    transport: str = "tcp"
    jetstream_stream: str = DEFAULT_STREAM
    jetstream_ack_wait: float = 30.0
    ui: bool = False
    ui_sidecars: tuple[str, ...] = ()
    engine: EngineConfig = field(default_factory=EngineConfig)
    _: KW_ONLY
    mode: Mode | str | None = None
    receive_timeout: float | None = None
    buffer_limit: int | None = None
    max_inflight: int | None = None
    replay_policy: ReplayPolicy | str | None = None
    retry_min: float | None = None
    retry_max: float | None = None
    deliver_timeout: float | None = None
    delivery_concurrency: int | None = None
    relay_interval: float | None = None
    retention: float | None = None
    tombstone_retention: float | None = None
    prune_interval: float | None = None
    grace: float | None = None
    compensation: CompensationOrder | str | None = None
    outcome_query_after: float | None = None
    max_payload: int | None = None
    store_retry_max: float | None = None
    ack_linger: float | None = None
    memory_keep: int | None = None
    memory_retention: float | None = None
    lazy_interval: float | None = None
    steps_kept: int | None = None
    traces_file: str | None = None
    metrics_file: str | None = None
    sleep_in_task: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.role, str) or not self.role:
            raise ConfigError("the sidecar needs a role (--role or ACCOMPANIST_ROLE)")
        for key in _OPTIONAL_TEXT:
            value = getattr(self, key)
            setattr(self, key, None if value is None or value == "" else str(value))
        self.api = parse_api_address(self.api)
        self.api_socket_mode = to_file_mode("api_socket_mode", self.api_socket_mode)
        self.peers = parse_peers(self.peers)
        self.listen = listen_address(self.listen, self.peers)
        self.old_hmac_keys = to_pairs("old_hmac_keys", self.old_hmac_keys)
        self.hmac_key_id = str(self.hmac_key_id)
        sync = str(self.sqlite_synchronous).upper()
        if sync not in _SYNCHRONOUS:
            raise ConfigError(f"sqlite_synchronous must be FULL, NORMAL or OFF, got {self.sqlite_synchronous!r}")
        self.sqlite_synchronous = sync
        if self.loop not in _LOOPS:
            raise ConfigError(f"loop must be 'auto', 'uvloop' or 'asyncio', got {self.loop!r}")
        self.max_frame = to_int("max_frame", self.max_frame, minimum=64)
        for key in _PEER_INT_KEYS:
            setattr(self, key, to_int(key, getattr(self, key)))
        for key in _PEER_FLOAT_KEYS:
            setattr(self, key, to_float(key, getattr(self, key)))
        self.insecure = to_bool("insecure", self.insecure)
        self.transport = parse_transport(self.transport)
        self.jetstream_stream = check_stream_name(self.jetstream_stream)
        self.jetstream_ack_wait = to_float("jetstream_ack_wait", self.jetstream_ack_wait)
        if self.jetstream_ack_wait <= 0:
            raise ConfigError(f"jetstream_ack_wait must be greater than 0, got {self.jetstream_ack_wait!r}")
        self.ui = to_bool("ui", self.ui)
        sidecars: Any = self.ui_sidecars
        self.ui_sidecars = tuple(sidecars.split() if isinstance(sidecars, str) else (str(u) for u in sidecars or ()))
        if not isinstance(self.engine, EngineConfig):
            raise ConfigError(f"engine must be an ac.EngineConfig, got {type(self.engine).__name__}")
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(EngineConfig)}
        self.engine = normalise_engine(self.engine, given)
        for name in given:  # every keyword now shows the value in force
            setattr(self, name, getattr(self.engine, name))
        check_combinations(self)

    @property
    def peer_limits(self) -> PeerLimits:
        """The peer port's bounds as the transport takes them."""
        return PeerLimits(
            max_connections=self.peer_max_connections,
            max_connections_per_address=self.peer_max_connections_per_address,
            first_frame_timeout=self.peer_first_frame_timeout,
            frame_timeout=self.peer_frame_timeout,
            idle_timeout=self.peer_idle_timeout,
            unauth_frame_limit=self.peer_unauth_frame_limit,
            unauth_budget=self.peer_unauth_budget,
        )

    @property
    def api_address(self) -> ApiAddress | None:
        """Where the API listens: ``(host, port)``, a Unix socket's ``Path``, or None."""
        api = self.api
        assert not isinstance(api, str), "normalised in __post_init__"
        return api

    @property
    def store_url(self) -> str:
        """The store URL, with the mode's default filled in."""
        if self.store:
            return self.store
        return f"sqlite:///./{self.role}.db" if self.engine.mode is Mode.FAULT_TOLERANT else "memory:"

    @classmethod
    def load(
        cls,
        *,
        file: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> SidecarConfig:
        """Build a config from a TOML file, then environment variables, then ``overrides``.

        Keys are the attribute names above (``role``, ``receive_timeout``, ``mode`` ...). In
        TOML, ``[peers]`` is a table ``role = "host:port"``. Environment variables are
        ``ACCOMPANIST_<KEY>`` (``ACCOMPANIST_PEERS="a=h:p b=h:p"``).

        Raises:
            ConfigError: unreadable file, unknown key, or a malformed value (named).
        """
        merged: dict[str, Any] = {}
        if file is not None:
            try:
                merged.update(tomllib.loads(Path(file).read_text()))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"cannot read config file {file}: {exc}") from exc
            section = merged.pop("sidecar", None)  # keys may also sit under a [sidecar] table
            if isinstance(section, dict):
                merged.update(section)
        env = os.environ if env is None else env
        for key in known_keys():
            value = env.get(_ENV_PREFIX + key.upper())
            if value is not None and value != "":
                merged[key] = value
        for key, value in (overrides or {}).items():
            if value is not None:
                merged[key] = value
        return cls.from_mapping(merged)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> SidecarConfig:
        """Build from already merged ``key -> value`` pairs (strings are parsed).

        Raises:
            ConfigError: unknown key or malformed value.
        """
        known = known_keys()
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown configuration key(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if not values.get("role"):
            raise ConfigError("the sidecar needs a role (--role or ACCOMPANIST_ROLE)")
        return cls(**values)


def known_keys() -> set[str]:
    """Every key of the TOML file, ``ACCOMPANIST_<KEY>`` variable and keyword of :class:`SidecarConfig`."""
    return {f.name for f in dataclasses.fields(SidecarConfig)} - {"engine"}
