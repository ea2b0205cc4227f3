"""Mutual TLS contexts for sidecar-to-sidecar connections."""

from __future__ import annotations

import ssl
from pathlib import Path

from accompanist.errors import ConfigError

__all__ = ["tls_contexts"]


def tls_contexts(
    cert: str | Path, key: str | Path, ca: str | Path, *, check_hostname: bool = True
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Build the ``(server, client)`` contexts of one sidecar for mutual TLS.

    Both sides present ``cert`` and trust only certificates issued by ``ca`` (the mesh's own
    CA, not the system store), and the server *requires* a client certificate: a peer without
    one cannot even complete the handshake, so no frame of it is ever read.

    Args:
        cert: this sidecar's certificate chain (PEM).
        key: its private key (PEM).
        ca: the CA bundle (PEM) that signed every sidecar's certificate.
        check_hostname: whether the client checks that the peer's certificate names the host
            it dialled (keep it on unless certificates carry no usable names).

    Raises:
        ConfigError: a file is missing or not a valid certificate/key.
    """
    try:
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca))
        server.verify_mode = ssl.CERT_REQUIRED
        server.load_cert_chain(str(cert), str(key))
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
        client.check_hostname = check_hostname
        client.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS material (cert={cert}, key={key}, ca={ca}): {exc}") from exc
    for ctx in (server, client):
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return server, client
