"""Settings that are each valid but make no sense together, refused before anything starts.

Why: a sidecar that starts with such a combination does something else than its operator
meant, silently (a durable store in default mode that is never read after a crash, a key too
short to resist guessing, a certificate without its key). A :class:`ConfigError` at
construction names both settings and what to do, before any port or file is opened.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from accompanist.engine.config import CompensationOrder, EngineConfig, Mode, ReplayPolicy
from accompanist.errors import ConfigError
from accompanist.sidecar.config_values import ApiAddress, to_choice, to_float, to_int
from accompanist.store.url import parse_postgres_url
from accompanist.transport.broker import DEFAULT_STREAM, TCP
from accompanist.transport.frames import MIN_KEY_BYTES
from accompanist.transport.tcp import PeerLimits

__all__ = ["CheckedConfig", "check_combinations", "normalise_engine"]

_CHOICES: dict[str, type[Mode] | type[ReplayPolicy] | type[CompensationOrder]] = {
    "mode": Mode,
    "replay_policy": ReplayPolicy,
    "compensation": CompensationOrder,
}
# Engine settings that may be 0 (retention 0 prunes at the next pass, grace 0 stops at once);
# every other number must be positive.
_MAY_BE_ZERO = frozenset(
    {"retention", "tombstone_retention", "memory_retention", "grace", "ack_linger", "steps_kept", "sleep_in_task"}
)
_PATHS = frozenset({"traces_file", "metrics_file"})
_DEFAULTS = EngineConfig()
# Room an envelope needs in a frame besides its payload (ids, headers, the MAC).
FRAME_OVERHEAD = 4096


class CheckedConfig(Protocol):
    """What the checks read of a ``SidecarConfig`` (a protocol: the config imports this module)."""

    role: str
    listen: tuple[str, int]
    api: ApiAddress | str | None
    api_socket_mode: int
    peers: dict[str, tuple[str, int]]
    store: str | None
    sqlite_synchronous: str
    hmac_key: str | None
    hmac_key_id: str
    old_hmac_keys: dict[str, str]
    tls_cert: str | None
    tls_key: str | None
    tls_ca: str | None
    max_frame: int
    transport: str
    jetstream_stream: str
    jetstream_ack_wait: float
    engine: EngineConfig

    @property
    def store_url(self) -> str:
        """The store URL in force."""
        ...

    @property
    def peer_limits(self) -> PeerLimits:
        """The peer port's bounds."""
        ...


def _engine_value(name: str, value: Any) -> Any:
    if name in _CHOICES:
        return to_choice(name, value, _CHOICES[name])
    if name in _PATHS:
        return None if value is None or value == "" else str(value)
    if isinstance(getattr(_DEFAULTS, name), int):
        return to_int(name, value, minimum=0 if name in _MAY_BE_ZERO else 1)
    number = to_float(name, value)
    if number == 0 and name not in _MAY_BE_ZERO:
        raise ConfigError(f"{name} must be greater than 0, got {value!r}")
    return number


def normalise_engine(engine: EngineConfig, given: Mapping[str, Any]) -> EngineConfig:
    """``engine`` with the keywords given (not None) folded in, every value checked.

    Raises:
        ConfigError: a malformed value, or a keyword that contradicts a value ``engine`` sets
            explicitly (``mode="default"`` with ``engine=EngineConfig(mode=FAULT_TOLERANT)``).
    """
    changes: dict[str, Any] = {}
    for name, value in given.items():
        if value is None:
            continue
        wanted = _engine_value(name, value)
        current = getattr(engine, name)
        if current != getattr(_DEFAULTS, name) and current != wanted:
            raise ConfigError(
                f"{name}={_show(wanted)} contradicts engine=EngineConfig({name}={_show(current)}): give it once"
            )
        changes[name] = wanted
    result = dataclasses.replace(engine, **changes) if changes else engine
    for f in dataclasses.fields(EngineConfig):  # an EngineConfig built in code is checked too
        value = getattr(result, f.name)
        if value is not None and name_is_number(f.name):
            _engine_value(f.name, value)
    if result.retry_min > result.retry_max:
        raise ConfigError(f"retry_min ({result.retry_min:g}s) must not exceed retry_max ({result.retry_max:g}s)")
    return result


def name_is_number(name: str) -> bool:
    """Whether the engine setting ``name`` is a number (not a choice or a path)."""
    return name not in _CHOICES and name not in _PATHS


def _show(value: Any) -> str:
    return repr(value.value) if isinstance(value, Mode | ReplayPolicy | CompensationOrder) else repr(value)


def check_combinations(cfg: CheckedConfig) -> None:
    """Refuse settings that contradict each other; each message names them and the fix.

    Raises:
        ConfigError: the first contradiction found.
    """
    _check_store(cfg)
    _check_keys(cfg)
    _check_tls(cfg)
    _check_addresses(cfg)
    _check_transport(cfg)
    try:
        cfg.peer_limits  # noqa: B018 - PeerLimits checks its own ranges
    except ConfigError as exc:
        raise ConfigError(f"peer port limits: {exc}") from None
    if cfg.engine.max_payload > cfg.max_frame - FRAME_OVERHEAD:
        raise ConfigError(
            f"max_payload ({cfg.engine.max_payload} bytes) leaves no room for the envelope in a frame of "
            f"max_frame ({cfg.max_frame} bytes): set max_payload to at most {cfg.max_frame - FRAME_OVERHEAD}"
        )


def _check_store(cfg: CheckedConfig) -> None:
    url = cfg.store or ""
    durable = url.startswith(("sqlite:", "postgresql:", "postgres:"))
    if url.startswith(("postgresql:", "postgres:")):
        parse_postgres_url(url)  # ?schema= and ?pool_max= are checked before anything opens
    if durable and cfg.engine.mode is Mode.DEFAULT:
        raise ConfigError(
            f"store={url!r} is durable but mode is 'default', which keeps sessions in memory and never replays "
            "them from it: set mode='fault-tolerant' (--mode fault-tolerant) to use it, or drop store"
        )
    if url.startswith("memory:") and cfg.engine.mode is Mode.FAULT_TOLERANT:
        raise ConfigError(
            "store='memory:' keeps nothing across a restart, so mode='fault-tolerant' could recover nothing: "
            "give a durable store (sqlite:///path.db or postgresql://...), or use mode='default'"
        )
    if cfg.sqlite_synchronous != "FULL" and not cfg.store_url.startswith("sqlite:"):
        raise ConfigError(
            f"sqlite_synchronous={cfg.sqlite_synchronous} applies to SQLite stores only, but the store is "
            f"{cfg.store_url!r}: drop sqlite_synchronous"
        )


def _check_keys(cfg: CheckedConfig) -> None:
    if not cfg.hmac_key_id:
        raise ConfigError("hmac_key_id must not be empty")
    if cfg.hmac_key is None:
        if cfg.old_hmac_keys:
            raise ConfigError(
                "old_hmac_keys are accepted only beside a current hmac_key: set hmac_key (the key new frames "
                "are signed with), or drop old_hmac_keys"
            )
        return
    _check_key_length("hmac_key", cfg.hmac_key)
    for key_id, secret in cfg.old_hmac_keys.items():
        _check_key_length(f"old_hmac_keys[{key_id!r}]", secret)
    if cfg.hmac_key_id in cfg.old_hmac_keys:
        raise ConfigError(
            f"hmac_key_id {cfg.hmac_key_id!r} is also in old_hmac_keys: a key id names one secret; give the "
            "old key another id"
        )


def _check_key_length(what: str, secret: str) -> None:
    size = len(secret.encode())
    if size < MIN_KEY_BYTES:
        raise ConfigError(
            f"{what} is {size} bytes, shorter than the {MIN_KEY_BYTES} bytes allowed: use a long random secret "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )


def _check_tls(cfg: CheckedConfig) -> None:
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        given, missing = ("tls_cert", "tls_key") if cfg.tls_cert else ("tls_key", "tls_cert")
        raise ConfigError(f"{given} is set without {missing}: tls_cert and tls_key must be given together")
    if cfg.tls_cert and not cfg.tls_ca:
        raise ConfigError("tls_cert needs tls_ca: mutual TLS trusts only peers whose certificates chain to it")
    if cfg.tls_ca and not cfg.tls_cert:
        raise ConfigError("tls_ca is set without tls_cert and tls_key: TLS needs this sidecar's certificate too")


def _check_addresses(cfg: CheckedConfig) -> None:
    if cfg.role in cfg.peers:
        raise ConfigError(f"peers names this sidecar's own role {cfg.role!r}: list only the other roles' sidecars")
    api = cfg.api
    if isinstance(api, tuple) and api[1] != 0 and api == cfg.listen:
        raise ConfigError(f"the API and the peer endpoint both want {api[0]}:{api[1]}: give them different ports")
    if not isinstance(api, Path) and cfg.api_socket_mode != 0o600:
        raise ConfigError(
            f"api_socket_mode {cfg.api_socket_mode:04o} applies to a Unix socket API only (api='unix:/path'), "
            f"but the API is {api!r}"
        )


_DEFAULT_LISTEN = ("127.0.0.1", 0)
_DEFAULT_ACK_WAIT = 30.0


def _check_transport(cfg: CheckedConfig) -> None:
    """Settings of one transport given to the other would be ignored: refuse them."""
    if cfg.transport == TCP:
        if cfg.jetstream_stream != DEFAULT_STREAM or cfg.jetstream_ack_wait != _DEFAULT_ACK_WAIT:
            raise ConfigError(
                "jetstream_stream and jetstream_ack_wait apply to a broker transport only, but transport is 'tcp': "
                "set transport='nats://HOST:PORT' (--transport), or drop them"
            )
        return
    broker = f"transport={cfg.transport!r}"
    if cfg.peers:
        raise ConfigError(
            f"peers ({', '.join(sorted(cfg.peers))}) are not used with {broker}: every sidecar reaches the "
            "others through the broker; drop peers (--peer), or use transport='tcp'"
        )
    if tuple(cfg.listen) != _DEFAULT_LISTEN:
        host, port = cfg.listen
        raise ConfigError(
            f"listen={host}:{port} opens no port with {broker}: envelopes arrive through the broker; drop "
            "listen (--listen), or use transport='tcp'"
        )
    if cfg.tls_cert or cfg.tls_ca:
        raise ConfigError(
            f"tls_cert/tls_key/tls_ca secure direct TCP links between sidecars, which {broker} does not use: "
            "frames through the broker are authenticated with hmac_key; drop the TLS settings"
        )
