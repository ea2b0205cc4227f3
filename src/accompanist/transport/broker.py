"""Naming a broker transport in the configuration, without importing its client library.

Why apart from :mod:`accompanist.transport.jetstream`: the sidecar's configuration checks
these values (and refuses bad ones with a :class:`~accompanist.errors.ConfigError` naming them)
whether or not the optional ``nats`` extra is installed; only starting the transport needs it.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import urlsplit

from accompanist.errors import ConfigError

__all__ = ["BROKER_SCHEMES", "DEFAULT_STREAM", "TCP", "broker_hosts", "check_stream_name", "parse_transport"]

TCP: Final = "tcp"
DEFAULT_STREAM: Final = "ACCOMPANIST"
BROKER_SCHEMES: Final = ("nats", "tls")
_STREAM_NAME: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def parse_transport(value: object) -> str:
    """``"tcp"``, or a NATS broker: ``nats://host:port`` (comma-separated for a cluster).

    Returns the value normalised: ``"tcp"``, or the URLs joined by ``,`` without spaces.

    Raises:
        ConfigError: anything else, named.
    """
    text = str(value).strip() if value is not None else TCP
    if text.lower() in ("", TCP):
        return TCP
    urls = [u.strip() for u in text.split(",") if u.strip()]
    for url in urls:
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme not in BROKER_SCHEMES or not parts.hostname or port is None:
            raise ConfigError(
                f"transport {value!r}: expected 'tcp' or a NATS JetStream broker as nats://HOST:PORT "
                "(several separated by commas), e.g. nats://127.0.0.1:4222"
            )
    return ",".join(urls)


def broker_hosts(transport: str) -> list[str]:
    """The host names of a broker ``transport`` (empty for ``tcp``)."""
    if transport == TCP:
        return []
    return [urlsplit(url).hostname or "" for url in transport.split(",")]


def check_stream_name(name: object) -> str:
    """``name`` if it can name a JetStream stream and prefix its subjects.

    Raises:
        ConfigError: other characters than letters, digits, ``_`` and ``-``, or longer than 64.
    """
    if not isinstance(name, str) or not _STREAM_NAME.match(name):
        raise ConfigError(
            f"jetstream_stream {name!r} cannot name a JetStream stream: use 1 to 64 letters, digits, '_' or '-'"
        )
    return name
