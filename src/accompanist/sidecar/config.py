"""Sidecar configuration: one dataclass, filled from a TOML file, ``ACCOMPANIST_*`` environment
variables and command-line options (in rising precedence)."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accompanist.engine.config import CompensationOrder, EngineConfig, Mode, ReplayPolicy
from accompanist.errors import ConfigError
from accompanist.transport.tcp import PeerLimits

__all__ = ["SidecarConfig", "parse_address", "parse_peers"]

_ENV_PREFIX = "ACCOMPANIST_"


def parse_address(text: str, what: str = "address") -> tuple[str, int]:
    """``"host:port"`` -> ``(host, port)``.

    Raises:
        ConfigError: not of the form host:port with a port in 0..65535.
    """
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"invalid {what} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:7001")
    return host.strip("[]"), int(port)


def parse_peers(items: Any) -> dict[str, tuple[str, int]]:
    """Peers from ``["role=host:port", ...]``, a ``"role=host:port,..."`` string or a mapping.

    Raises:
        ConfigError: an entry is not ``role=host:port``.
    """
    if isinstance(items, Mapping):
        return {str(k): parse_address(v, f"address of peer '{k}'") for k, v in items.items()}
    if isinstance(items, str):
        items = [p for p in items.replace(",", " ").split() if p]
    peers: dict[str, tuple[str, int]] = {}
    for item in items or []:
        role, sep, address = str(item).partition("=")
        if not sep or not role:
            raise ConfigError(f"invalid peer {item!r}: expected ROLE=HOST:PORT, e.g. seller=127.0.0.1:7002")
        peers[role.strip()] = parse_address(address.strip(), f"address of peer '{role}'")
    return peers


_PEER = PeerLimits()  # the peer port's defaults, defined once in the transport


@dataclass
class SidecarConfig:
    """Everything a sidecar needs to run.

    Attributes:
        role: the role this sidecar plays.
        app: ``MODULE:ATTR`` of the ``ac.App`` (not needed when an App is passed in code).
        listen: peer endpoint, ``(host, port)``; port 0 picks a free port.
        api: service-facing HTTP endpoint, or None for none (embedded use).
        api_token: when set, every API path but ``/healthz`` and ``/metrics`` needs
            ``Authorization: Bearer <api_token>`` (an empty string is the same as None).
        peers: address of every other role's sidecar.
        mode: ``default`` or ``fault-tolerant``.
        store: store URL: ``memory:``, ``sqlite:///path.db`` or ``postgresql://...``;
            default ``memory:`` in default mode and ``sqlite:///./<role>.db`` in fault-tolerant mode.
        sqlite_synchronous: SQLite durability: ``FULL`` (default), ``NORMAL`` or ``OFF``.
        hmac_key: shared secret authenticating frames between sidecars (None: unsigned, warned).
        hmac_key_id: the id under which ``hmac_key`` signs.
        old_hmac_keys: ``{id: secret}`` still accepted while keys rotate.
        tls_cert: certificate (PEM) for mutual TLS between sidecars.
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
        insecure: allow a peer endpoint off loopback without hmac_key or TLS (anyone who can
            reach it can forge envelopes).
        ui: serve the web view on the API port under ``/ui``.
        ui_sidecars: other sidecars' API URLs the web view reads besides this one.
        engine: timeouts, bounds, retries and retention (see ``EngineConfig``).
    """

    role: str
    app: str | None = None
    listen: tuple[str, int] = ("127.0.0.1", 0)
    api: tuple[str, int] | None = None
    api_token: str | None = None
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
    ui: bool = False
    ui_sidecars: tuple[str, ...] = ()
    engine: EngineConfig = field(default_factory=EngineConfig)

    @property
    def mode(self) -> Mode:
        """The engine's mode."""
        return self.engine.mode

    @property
    def store_url(self) -> str:
        """The store URL, with the mode's default filled in."""
        if self.store:
            return self.store
        return f"sqlite:///./{self.role}.db" if self.mode is Mode.FAULT_TOLERANT else "memory:"

    @classmethod
    def load(
        cls,
        *,
        file: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> SidecarConfig:
        """Build a config from a TOML file, then environment variables, then ``overrides``.

        Keys are the attribute names above plus the engine's (``receive_timeout``,
        ``max_inflight``, ``mode`` ...). In TOML, ``[peers]`` is a table ``role = "host:port"``.
        Environment variables are ``ACCOMPANIST_<KEY>`` (``ACCOMPANIST_PEERS="a=h:p b=h:p"``).

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
        for key in _known_keys():
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
        known = _known_keys()
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown configuration key(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if not values.get("role"):
            raise ConfigError("the sidecar needs a role (--role or ACCOMPANIST_ROLE)")
        engine_fields = {f.name: f for f in dataclasses.fields(EngineConfig)}
        engine_kwargs: dict[str, Any] = {}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key in engine_fields:
                engine_kwargs[key] = _convert_engine(key, value, engine_fields[key].type)
            elif key == "listen":
                kwargs[key] = parse_address(value, "listen address")
            elif key == "api":
                kwargs[key] = None if value in ("", "none", None) else parse_address(value, "API address")
            elif key == "peers":
                kwargs[key] = parse_peers(value)
            elif key == "old_hmac_keys":
                kwargs[key] = dict(value) if isinstance(value, Mapping) else _pairs(value, key)
            elif key == "api_token":
                kwargs[key] = str(value) if value not in (None, "") else None
            elif key == "max_frame" or key in _PEER_INT_KEYS:
                kwargs[key] = _to_int(key, value)
            elif key in _PEER_FLOAT_KEYS:
                kwargs[key] = _to_float(key, value)
            elif key in ("insecure", "ui"):
                kwargs[key] = _to_bool(key, value)
            elif key == "ui_sidecars":
                kwargs[key] = tuple(value.split() if isinstance(value, str) else (str(v) for v in value or ()))
            else:
                kwargs[key] = None if value is None else str(value)
        sync = str(kwargs.get("sqlite_synchronous", "FULL")).upper()
        if sync not in ("FULL", "NORMAL", "OFF"):
            raise ConfigError(f"sqlite_synchronous must be FULL, NORMAL or OFF, got {sync!r}")
        kwargs["sqlite_synchronous"] = sync
        if bool(kwargs.get("tls_cert")) != bool(kwargs.get("tls_key")):
            raise ConfigError("tls_cert and tls_key must be given together")
        try:
            engine = EngineConfig(**engine_kwargs)
        except (TypeError, ValueError) as exc:  # pragma: no cover - conversions above catch these
            raise ConfigError(str(exc)) from exc
        return cls(engine=engine, **kwargs)


_PEER_INT_KEYS = frozenset(
    {"peer_max_connections", "peer_max_connections_per_address", "peer_unauth_frame_limit", "peer_unauth_budget"}
)
_PEER_FLOAT_KEYS = frozenset({"peer_first_frame_timeout", "peer_frame_timeout", "peer_idle_timeout"})


def _to_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{key} must be true or false, got {value!r}")


def _known_keys() -> set[str]:
    own = {f.name for f in dataclasses.fields(SidecarConfig)} - {"engine"}
    return own | {f.name for f in dataclasses.fields(EngineConfig)}


def _to_int(key: str, value: Any) -> int:
    try:
        if isinstance(value, bool):
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be an integer, got {value!r}") from None


def _to_float(key: str, value: Any) -> float:
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if result < 0:
        raise ConfigError(f"{key} must not be negative, got {value!r}")
    return result


def _convert_engine(key: str, value: Any, annotation: Any) -> Any:
    text = str(annotation)
    if key == "mode":
        try:
            return Mode(str(value))
        except ValueError:
            raise ConfigError(f"mode must be 'default' or 'fault-tolerant', got {value!r}") from None
    if key == "compensation":
        try:
            return CompensationOrder(str(value))
        except ValueError:
            raise ConfigError(f"compensation must be 'ordered' or 'parallel', got {value!r}") from None
    if key == "replay_policy":
        try:
            return ReplayPolicy(str(value))
        except ValueError:
            raise ConfigError(f"replay_policy must be 'journal' or 'rerun', got {value!r}") from None
    if "str" in text:
        return str(value) or None
    if "int" in text:
        number = _to_int(key, value)
        if number < 1:
            raise ConfigError(f"{key} must be at least 1, got {value!r}")
        return number
    return _to_float(key, value)


def _pairs(value: Any, key: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in str(value).replace(",", " ").split():
        k, sep, v = item.partition("=")
        if not sep:
            raise ConfigError(f"{key}: expected ID=SECRET pairs, got {item!r}")
        out[k] = v
    return out
