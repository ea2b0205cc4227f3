"""Turning one configuration value (a TOML value, an environment string, a keyword) into its type.

Why apart from :mod:`accompanist.sidecar.config`: the same conversions serve the TOML file, the
``ACCOMPANIST_*`` variables and the embedded keywords, and every one of them must name the
setting it refuses, so a user can fix it without reading code.
"""

from __future__ import annotations

import enum
import ipaddress
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from accompanist.errors import ConfigError

__all__ = [
    "UNIX_PREFIX",
    "ApiAddress",
    "is_loopback",
    "listen_address",
    "parse_address",
    "parse_api_address",
    "parse_peers",
    "to_bool",
    "to_choice",
    "to_file_mode",
    "to_float",
    "to_int",
    "to_pairs",
]

UNIX_PREFIX = "unix:"

# The API listens on TCP (host, port) or on a Unix socket (its path).
ApiAddress = tuple[str, int] | Path

_E = TypeVar("_E", bound=enum.Enum)


def parse_address(text: Any, what: str = "address") -> tuple[str, int]:
    """``"host:port"`` (or a ``(host, port)`` pair) -> ``(host, port)``.

    Raises:
        ConfigError: not of the form host:port with a port in 0..65535.
    """
    if isinstance(text, tuple | list) and len(text) == 2:
        host, port = text
        if isinstance(host, str) and host and type(port) is int and 0 <= port <= 65535:
            return host.strip("[]"), port
        raise ConfigError(f"invalid {what} {tuple(text)!r}: expected (HOST, PORT) with a port in 0..65535")
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"invalid {what} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:7001")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP address or ``localhost``) is only reachable from this machine.

    A name other than ``localhost`` counts as not loopback: it may resolve to anything.
    """
    if host.lower() in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def listen_address(value: Any, peers: Mapping[str, tuple[str, int]]) -> tuple[str, int]:
    """The peer endpoint: ``value`` parsed, its host decided from ``peers`` when not given.

    A host left out (``":7001"``, ``("", 7001)``, the default) means: loopback when every
    peer is on loopback (or there are none), every interface (``0.0.0.0``) as soon as one
    peer is on another host, since peers there could never reach a loopback port. (A
    sidecar that listens beyond loopback must then have ``hmac_key`` or TLS: it says so.)

    Raises:
        ConfigError: not of the form [HOST]:PORT with a port in 0..65535.
    """
    if isinstance(value, tuple | list) and len(value) == 2 and value[0] == "":
        value = f":{value[1]}"
    if isinstance(value, str) and value.startswith(":"):
        remote = any(not is_loopback(host) for host, _ in peers.values())
        value = ("0.0.0.0" if remote else "127.0.0.1") + value
    return parse_address(value, "listen address")


def parse_api_address(value: Any) -> ApiAddress | None:
    """The API's address: ``HOST:PORT``, ``(host, port)``, ``unix:/path/api.sock``, a ``Path``, or none.

    Raises:
        ConfigError: malformed, or a Unix socket path that is empty or relative to nothing.
    """
    if value is None or value in ("", "none"):
        return None
    if isinstance(value, Path):
        return _socket_path(str(value))
    if isinstance(value, str) and value.startswith(UNIX_PREFIX):
        return _socket_path(value[len(UNIX_PREFIX) :])
    return parse_address(value, "API address")


def _socket_path(text: str) -> Path:
    if not text or text.endswith("/"):
        raise ConfigError(f"invalid API socket path {text!r}: expected unix:/path/to/api.sock")
    if len(text.encode()) > 107:  # sun_path holds 108 bytes with the final NUL
        raise ConfigError(f"the API socket path {text!r} is longer than the 107 bytes a Unix socket path may have")
    return Path(text)


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


def to_bool(key: str, value: Any) -> bool:
    """``true/false``, ``1/0``, ``yes/no``, ``on/off`` -> bool.

    Raises:
        ConfigError: anything else.
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{key} must be true or false, got {value!r}")


def to_int(key: str, value: Any, *, minimum: int | None = None) -> int:
    """An integer (from an int or its decimal text), at least ``minimum``.

    Raises:
        ConfigError: not an integer (a bool or a float is not one either), or too small.
    """
    try:
        if isinstance(value, bool | float):
            raise ValueError
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ConfigError(f"{key} must be at least {minimum}, got {value!r}")
    return number


def to_float(key: str, value: Any) -> float:
    """A finite number of seconds (or bytes), not negative.

    Raises:
        ConfigError: not a number, negative, NaN or infinite.
    """
    try:
        if isinstance(value, bool):
            raise ValueError
        result = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if not math.isfinite(result):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    if result < 0:
        raise ConfigError(f"{key} must not be negative, got {value!r}")
    return result


def to_choice(key: str, value: Any, kind: type[_E]) -> _E:
    """One of an enum's values, by value (``"fault-tolerant"`` -> ``Mode.FAULT_TOLERANT``).

    Raises:
        ConfigError: not one of them; the message lists them.
    """
    if isinstance(value, kind):
        return value
    try:
        return kind(str(value))
    except ValueError:
        choices = " or ".join(repr(m.value) for m in kind)
        raise ConfigError(f"{key} must be {choices}, got {value!r}") from None


def to_file_mode(key: str, value: Any) -> int:
    """File permission bits from an int (``0o600``) or octal text (``"0600"``, ``"600"``).

    Raises:
        ConfigError: not octal, or bits beyond ``0o777``.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        text = str(value).strip().lower().removeprefix("0o")
        if not text or any(c not in "01234567" for c in text):
            raise ConfigError(f"{key} must be octal permission bits like 0600, got {value!r}")
        mode = int(text, 8)
    if not 0 <= mode <= 0o777:
        raise ConfigError(f"{key} must be permission bits between 0000 and 0777, got {value!r}")
    return mode


def to_pairs(key: str, value: Any) -> dict[str, str]:
    """``{id: secret}`` from a mapping or ``"ID=SECRET ID=SECRET"`` text.

    Raises:
        ConfigError: an item is not ``ID=SECRET``.
    """
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    out: dict[str, str] = {}
    for number, item in enumerate(str(value).replace(",", " ").split(), 1):
        k, sep, v = item.partition("=")
        if not sep or not k:  # the item is not echoed: it may be a secret
            raise ConfigError(f"{key}: item {number} is not of the form ID=SECRET")
        out[k] = v
    return out
